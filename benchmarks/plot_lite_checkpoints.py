"""Draw HPatches MMA@1/3 against the training step for the checkpoints of one or more lite runs.

Each CSV (columns step, mma@1, mma@3, mma@5, hom_acc@3) holds one run's checkpoints, each scored by
`python benchmarks/bench_lite.py --models lite --weights CHECKPOINT_WEIGHTS --skip-pose --rounds 1` (the validation
set's two real sequences, longer side 640, 2048 keypoints, mutual NN). Horizontal lines: reference models' MMA@3
from the same benchmark.

    python benchmarks/plot_lite_checkpoints.py docs/figures/lite_reproj_sweep_p01.csv:"peak 0.1" ... \
        --reference ALIKE-t=0.686 XFeat=0.510 -o docs/figures/lite_reproj_sweep.png
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path


def read_rows(path: Path) -> dict[str, list[float]]:
    """Columns of a checkpoint CSV, as floats, sorted by step."""
    with open(path, newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: int(r["step"]))
    if not rows:
        raise SystemExit(f"{path}: no rows (expected columns step, mma@1, mma@3, ...)")
    return {k: [float(r[k]) for r in rows] for k in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="CSV[:label] per run")
    parser.add_argument("--reference", nargs="*", default=[], help="NAME=MMA@3 horizontal lines")
    parser.add_argument("-o", "--output", required=True, help="PNG to write")
    args = parser.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from localfeat.io.atomic import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for spec in args.runs:
        path, _, label = spec.partition(":")
        cols = read_rows(Path(path))
        for ax, key in zip(axes, ("mma@3", "mma@1")):
            ax.plot(cols["step"], cols[key], marker="o", ms=3, label=label or Path(path).stem)
    for ref in args.reference:
        name, _, value = ref.partition("=")
        axes[0].axhline(float(value), ls="--", lw=1, color="grey")
        axes[0].annotate(name, (0, float(value)), textcoords="offset points", xytext=(2, 2), fontsize=8)
    for ax, key in zip(axes, ("MMA@3", "MMA@1")):
        ax.set_xlabel("step of the second run")
        ax.set_ylabel(f"HPatches {key} (validation set)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(args.output) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    print(args.output)


if __name__ == "__main__":
    main()
