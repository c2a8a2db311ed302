"""The three-panel MMA-vs-threshold figure of the D2-Net and R2D2 papers (overall, illumination, viewpoint)."""
from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

PANELS = (("mma_overall", "Overall"), ("mma_illumination", "Illumination"), ("mma_viewpoint", "Viewpoint"))


def visible_panels(results: dict) -> list[tuple[str, str]]:
    """(key, title) of the panels to draw: those where one of our methods has a curve (a subset without
    illumination sequences has no Illumination panel); with no method of ours, those of the published."""
    ours = list(results.get("methods", {}).values()) or list(results.get("published", {}).values())
    return [(key, title) for key, title in PANELS if any(m.get(key) is not None for m in ours)]


def figure_title(results: dict) -> str:
    """What set the curves are on: ours (sequences, pairs) and, when shown, the published curves' own set."""
    ds = results.get("dataset", {})
    seq = ds.get("sequences", {})
    lines = []
    if seq:
        pairs = f", {ds['n_pairs']} pairs" if "n_pairs" in ds else ""
        lines.append(f"HPatches MMA of our runs (solid): {seq.get('i', 0)} illumination + {seq.get('v', 0)} "
                     f"viewpoint sequences{pairs}")
    published = results.get("published", {})
    if published:
        counts = sorted({int(m.get("n_pairs", {}).get("overall", 0)) for m in published.values()})
        their = " / ".join(str(c) for c in counts if c) or "unknown"
        lines.append(f"published (dashed): from each paper's own run on its HPatches set ({their} pairs), "
                     "not on these images; compare with care")
    return "\n".join(lines)


def plot_mma(results: dict, path, max_threshold: int = 10) -> Path:
    """Draw MMA(t), t = 1..max_threshold, of every method (solid) and published curve (dashed) to a PNG.

    results: the dict of results.json ('methods' and optional 'published', each with `thresholds`
    and the curves `mma_overall`, `mma_illumination`, `mma_viewpoint`; None curves are skipped).
    Panels without data of ours are left out (`visible_panels`); the title says which set each kind of
    curve is on (`figure_title`). The file is written atomically. Returns the path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..io.atomic import atomic_path

    path = Path(path)
    curves = [(label, m, "-") for label, m in results.get("methods", {}).items()]
    curves += [(f"{label} (published)", m, "--") for label, m in results.get("published", {}).items()]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = visible_panels(results) or list(PANELS[:1])
    title = figure_title(results)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6 + 0.25 * title.count("\n")),
                             sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (key, panel_title) in zip(axes, panels):
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
        ax.set_title(panel_title, fontsize=14)
        ax.set_xlim(1, max_threshold)
        ax.set_ylim(0, 1)
        ax.set_xticks(range(1, max_threshold + 1))
        ax.set_xlabel("threshold [px]", fontsize=12)
        ax.grid(True, alpha=0.4)
    axes[0].set_ylabel("MMA", fontsize=12)
    if title:
        fig.suptitle(title, fontsize=11)
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
