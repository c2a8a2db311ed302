"""How work is run: the local engine (this process; `localfeat.pipeline`) or Ray (`localfeat.engines.ray`,
an optional extra: ``pip install 'localfeat[ray]'``). Both write the same stores through the same loops
(`pipeline.extract_into`, `pipeline.match_into`), so their outputs hold the same arrays in the same order."""
from __future__ import annotations

ENGINES = ("local", "ray")


class EngineError(RuntimeError):
    """An engine cannot run (Ray missing, no cluster at the address) or gave up on a shard."""


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")


def run_engine_extract(engine: str, items, output, **kwargs):
    """`pipeline.extract` on another engine than "local" (see `localfeat.engines.ray.extract`)."""
    check_engine(engine)
    from .ray import extract

    return extract(items, output, **kwargs)


def run_engine_match(engine: str, features, output, pairs, **kwargs):
    """`pipeline.match` on another engine than "local" (see `localfeat.engines.ray.match`)."""
    check_engine(engine)
    from .ray import match

    return match(features, output, pairs, **kwargs)
