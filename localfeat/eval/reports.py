"""Reports of an HPatches evaluation: results.json, results.md, results.csv, per_sequence.csv, mma.png."""
from __future__ import annotations

import json
from pathlib import Path

from ..io.atomic import write_text_atomic
from . import metrics


SUMMARY_COLUMNS = ("MMA@1", "MMA@3", "MMA@5", "MMA@10", "MMA-i@3", "MMA-v@3", "MHA@1", "MHA@3", "MHA@5",
                   "AUC@1", "AUC@3", "AUC@5", "rep", "MS", "#feat", "#match")


def summary_row(m: dict) -> list:
    """The values of `SUMMARY_COLUMNS` for one method's result (None where undefined)."""
    thresholds = list(m.get("thresholds") or metrics.MMA_THRESHOLDS)

    def at(curve, t):
        if curve is None or t not in thresholds:
            return None
        return curve[thresholds.index(t)]

    hom = m.get("homography_accuracy") or {}
    auc = m.get("homography_auc") or {}
    return [at(m["mma_overall"], 1), at(m["mma_overall"], 3), at(m["mma_overall"], 5), at(m["mma_overall"], 10),
            at(m["mma_illumination"], 3), at(m["mma_viewpoint"], 3), hom.get("1"), hom.get("3"), hom.get("5"),
            auc.get("1"), auc.get("3"), auc.get("5"), m.get("repeatability"), m.get("matching_score"),
            m.get("n_features"), m.get("n_matches")]


def summary_at(m: dict, t: int):
    """MMA overall at threshold t, or '' when the curve does not reach t."""
    ts = list(m.get("thresholds") or [])
    return m["mma_overall"][ts.index(t)] if t in ts else ""


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v >= 10:
        return f"{v:.1f}"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def write_outputs(results: dict, out_dir, plot: bool = True) -> dict:
    """results.json, results.md, results.csv, per_sequence.csv and (plot) mma.png in `out_dir`; returns paths."""
    import csv
    import io

    out_dir = Path(out_dir)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md", "csv": out_dir / "results.csv",
             "per_sequence": out_dir / "per_sequence.csv"}
    light = json.loads(json.dumps(results))
    for m in light["methods"].values():
        m.pop("pairs", None)  # per-pair records stay in the cache file
    write_text_atomic(paths["json"], json.dumps(light, indent=1))
    rows = [(label, summary_row(m)) for label, m in results["methods"].items()]
    pub = [(f"{label} (published)", summary_row(p)) for label, p in results.get("published", {}).items()]
    ds = results["dataset"]
    lines = [f"# HPatches sequences: {ds['sequences'].get('i', 0)} illumination + {ds['sequences'].get('v', 0)} "
             f"viewpoint sequences, {ds['n_pairs']} pairs (dataset fingerprint {ds['fingerprint']})", ""]
    if ds.get("excluded"):
        lines += [f"Excluded as in the D2-Net protocol: {', '.join(ds['excluded'])}.", ""]
    r = results["settings"]["ransac"]
    lines += [f"MMA: mutual nearest neighbours, pair-weighted mean of mean(dist <= t). MHA / AUC: corner error of "
              f"a {r['method']} RANSAC homography (threshold {r['threshold']} px, {r['max_iters']} iterations, "
              f"confidence {r['confidence']}). rep / MS: repeatability / matching score at "
              f"{results['settings']['pixel_threshold']} px. #feat per image, #match per pair.", ""]
    lines.append("| method | " + " | ".join(SUMMARY_COLUMNS) + " |")
    lines.append("|---" * (len(SUMMARY_COLUMNS) + 1) + "|")
    for label, row in rows + pub:
        lines.append(f"| {label} | " + " | ".join(_fmt(v) for v in row) + " |")
    for label, m in results["methods"].items():
        lines += ["", f"## {label}", "", f"config hash {m['config_hash']}: `{json.dumps(m['config'], sort_keys=True)}`",
                  "", "| t (px) | " + " | ".join(str(t) for t in m["thresholds"]) + " |",
                  "|---" * (len(m["thresholds"]) + 1) + "|"]
        for key in ("mma_overall", "mma_illumination", "mma_viewpoint", "mma_refined_overall"):
            if m[key] is not None:
                lines.append(f"| {key} | " + " | ".join(f"{v:.3f}" for v in m[key]) + " |")
    write_text_atomic(paths["md"], "\n".join(lines) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", "config_hash"] + list(SUMMARY_COLUMNS) + [f"mma_overall_t{t}" for t in range(1, 16)])
    for label, m in results["methods"].items():
        writer.writerow([label, m["config_hash"]] + ["" if v is None else v for v in summary_row(m)]
                        + m["mma_overall"])
    for label, p in results.get("published", {}).items():
        writer.writerow([f"{label} (published)", ""] + ["" if v is None else v for v in summary_row(p)]
                        + [summary_at(p, t) for t in range(1, 16)])
    write_text_atomic(paths["csv"], buf.getvalue())
    buf = io.StringIO()
    writer = csv.writer(buf)
    cols = ["kind", "n_pairs", "mma@1", "mma@3", "mma@5", "mma@10", "n_matches", "homography_accuracy@3",
            "mean_corner_error"]
    writer.writerow(["method", "sequence"] + cols)
    for label, m in results["methods"].items():
        for seq, s in m["per_sequence"].items():
            writer.writerow([label, seq] + ["" if s[c] is None else s[c] for c in cols])
    write_text_atomic(paths["per_sequence"], buf.getvalue())
    if plot:
        from .plots import plot_mma

        paths["png"] = plot_mma(results, out_dir / "mma.png")
    return paths
