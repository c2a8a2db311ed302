"""How work is run: the local engine (this process; `localfeat.engines.local`, driven by
`localfeat.pipeline`) or Ray (`localfeat.engines.ray`, an optional extra: ``pip install 'localfeat[ray]'``).
Both write the same stores through the same loops (`engines.local.extract_into` / `match_into`), so their
outputs hold the same arrays in the same order."""
from __future__ import annotations

ENGINES = ("local", "ray")


class EngineError(RuntimeError):
    """An engine cannot run (Ray missing, no cluster at the address) or gave up on a shard."""


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
