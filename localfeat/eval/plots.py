"""The three-panel MMA-vs-threshold figure of the D2-Net and R2D2 papers (overall, illumination, viewpoint)."""
from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

PANELS = (("mma_overall", "Overall"), ("mma_illumination", "Illumination"), ("mma_viewpoint", "Viewpoint"))


def plot_mma(results: dict, path, max_threshold: int = 10) -> Path:
    """Draw MMA(t), t = 1..max_threshold, of every method (solid) and published curve (dashed) to a PNG.

    results: the dict of results.json ('methods' and optional 'published', each with `thresholds`
    and the curves `mma_overall`, `mma_illumination`, `mma_viewpoint`; None curves are skipped).
    The file is written atomically. Returns the path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..io.atomic import atomic_path

    path = Path(path)
    curves = [(label, m, "-") for label, m in results.get("methods", {}).items()]
    curves += [(f"{label} (published)", m, "--") for label, m in results.get("published", {}).items()]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True)
    for ax, (key, title) in zip(axes, PANELS):
        drawn = 0
        for idx, (label, m, style) in enumerate(curves):
            ys = m.get(key)
            if ys is None:
                continue
            drawn += 1
            ts = [t for t in m["thresholds"] if t <= max_threshold]
            ax.plot(ts, ys[:len(ts)], style, color=colors[idx % len(colors)], linewidth=2, marker="o",
                    markersize=3, label=label)
        if not drawn:
            ax.text(0.5, 0.5, "no sequences of this kind", transform=ax.transAxes, ha="center", color="gray")
        ax.set_title(title, fontsize=14)
        ax.set_xlim(1, max_threshold)
        ax.set_ylim(0, 1)
        ax.set_xticks(range(1, max_threshold + 1))
        ax.set_xlabel("threshold [px]", fontsize=12)
        ax.grid(True, alpha=0.4)
    axes[0].set_ylabel("MMA", fontsize=12)
    ds = results.get("dataset", {}).get("sequences", {})
    if ds:
        fig.suptitle(f"HPatches MMA: {ds.get('i', 0)} illumination + {ds.get('v', 0)} viewpoint sequences",
                     fontsize=12)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        for ax in axes[1:]:
            handles, labels = ax.get_legend_handles_labels()
            if handles:
                break
    if handles:
        axes[0].legend(handles, labels, loc="lower right", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
