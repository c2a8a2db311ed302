"""Seconds per training step of a preset: this tree against a baseline commit, in the same run.

Each version runs in its own process (the baseline from a `git worktree` of --baseline, imported first on
PYTHONPATH), on the same batches (the preset's seed and data, teacher targets from the shared cache under
the current folder), with the preset's threads. Rounds alternate baseline / current; the table gives each
version's median s/step over its rounds, the ratio, and the losses of the first step of both (the same
weights on the same batch: they agree up to rounding when the change is a faster path to the same function).

    LOCALFEAT_WEIGHTS=../shared/data/weights_aliked .venv/bin/python benchmarks/bench_train_step.py \\
        --config lite_scratch --baseline db8c8ba [--steps 8 --rounds 3]

Needs the preset's training photos (`localfeat dataset gather-photos -o data/train_photos`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(config: str, steps: int, warmup: int) -> None:
    """Time `steps` training steps after `warmup` ones; print one JSON line."""
    import torch

    from localfeat.train.config import resolve_config
    from localfeat.train.pairs import make_loader
    from localfeat.train.trainer import Trainer

    conf = resolve_config(config)
    conf["validation"]["every"] = 0
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(conf, run_dir)
        batches = iter(make_loader(trainer.dataset, int(conf["batch_size"]), 0, warmup + steps, 0))
        first = trainer.train_step(next(batches))
        for _ in range(warmup - 1):
            trainer.train_step(next(batches))
        times = []
        for _ in range(steps):
            batch = next(batches)
            t0 = time.perf_counter()
            trainer.train_step(batch)
            times.append(time.perf_counter() - t0)
    import localfeat

    print(json.dumps({"seconds": times, "first_step": first, "module": localfeat.__file__,
                      "threads": torch.get_num_threads()}))


def run_worker(tree: Path, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--config", args.config,
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    out = subprocess.run(cmd, env=env, cwd=os.getcwd(), capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"worker for {tree} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not res["module"].startswith(str(tree)):
        raise SystemExit(f"worker for {tree} imported {res['module']}: the baseline was not the one imported")
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="lite_scratch", help="preset name or YAML file")
    parser.add_argument("--baseline", required="--worker" not in sys.argv, help="git commit to compare with")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first one's losses are shown)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup, --steps and --rounds must be at least 1 (the first warm-up step's losses are shown)")
    if args.worker:
        worker(args.config, args.steps, args.warmup)
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), args.baseline],
                       check=True)
        try:
            versions = {f"baseline {args.baseline}": base, "current tree": ROOT}
            results = {name: [] for name in versions}
            for r in range(args.rounds):
                for name, tree in versions.items():
                    results[name].append(run_worker(tree, args))
                    print(f"round {r + 1}/{args.rounds} {name}: "
                          f"{statistics.median(results[name][-1]['seconds']):.3f} s/step", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    medians = {name: statistics.median(t for res in runs for t in res["seconds"]) for name, runs in results.items()}
    ref = medians[f"baseline {args.baseline}"]
    print(f"\n{args.config}: {args.steps} steps x {args.rounds} rounds per version, "
          f"{results['current tree'][0]['threads']} threads\n")
    print("| version | s/step (median) | vs baseline |")
    print("|---|---|---|")
    for name, m in medians.items():
        print(f"| {name} | {m:.3f} | {m / ref:.2f}x |")
    print("\nfirst step's losses (same weights, same batch):")
    keys = sorted(results["current tree"][0]["first_step"])
    for k in keys:
        vals = [runs[0]["first_step"].get(k, float("nan")) for runs in results.values()]
        print(f"  {k:24s} " + "  ".join(f"{v:.6f}" for v in vals))


if __name__ == "__main__":
    main()
