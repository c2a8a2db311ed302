"""The run log of RUN_DIR: metrics.csv / validation.csv (appended row by row, cut back on resume) and
curve.png (the loss and validation curves)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import numpy as np

from ..io.atomic import atomic_path


def truncate_csv(path: Path, before_step: int) -> None:
    """Keep the header and the rows with step < before_step (rows of steps that will be redone go)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) < before_step]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(keep)


class CsvLog:
    def __init__(self, path: Path, columns: Optional[list] = None):
        self.path, self.columns = path, columns
        if path.exists() and path.stat().st_size:
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
            self.columns = header or columns

    def write(self, row: dict) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        if self.columns is None:
            self.columns = list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(self.columns)
            w.writerow([_fmt(row.get(c, "")) for c in self.columns])
            f.flush()


def _fmt(v) -> str:
    if isinstance(v, float):
        return repr(v)
    return str(v)


def plot_curves(run_dir) -> Path:
    """RUN_DIR/curve.png: total loss per step (and a moving average), validation MMA@3 when logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps = np.array([int(r["step"]) for r in rows])
    total = np.array([float(r["total"]) for r in rows])
    val = run_dir / "validation.csv"
    fig, ax = plt.subplots(1, 2 if val.exists() else 1, figsize=(11 if val.exists() else 6, 4), squeeze=False)
    ax[0, 0].plot(steps, total, lw=0.5, alpha=0.5, label="total")
    k = max(1, len(total) // 15)
    if len(total) > k:
        ma = np.convolve(total, np.ones(k) / k, mode="valid")
        ax[0, 0].plot(steps[k - 1:], ma, lw=1.5, label=f"moving average ({k})")
    ax[0, 0].set_xlabel("step")
    ax[0, 0].set_ylabel("loss")
    ax[0, 0].legend()
    if val.exists():
        with open(val, newline="") as f:
            vr = list(csv.DictReader(f))
        for key in ("mma@1", "mma@3", "mma@5"):
            ax[0, 1].plot([int(r["step"]) for r in vr], [float(r[key]) for r in vr], marker="o", label=key)
        ax[0, 1].set_xlabel("step")
        ax[0, 1].set_ylabel("validation MMA")
        ax[0, 1].set_ylim(0, 1)
        ax[0, 1].legend()
    fig.tight_layout()
    out = run_dir / "curve.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out
