"""Peak memory of extraction from a 6000 x 4000 photo: the default `resize_max` (1600) against full resolution.

Each measurement runs in a fresh process (peak resident memory, `ru_maxrss`, of that process: Python,
torch and the decoded 72 MB photo included), so the figures are comparable within one run. The photo is
a Sacre Coeur picture of ../shared/data upscaled to 6000 x 4000 (JPEG, quality 95).

    python benchmarks/bench_default_resize_memory.py                 # aliked and sift, default resize
    python benchmarks/bench_default_resize_memory.py --full          # also at full resolution (slow, ~8 GB)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LOCALFEAT_SHARED_DATA", REPO.parent / "shared" / "data"))

CHILD = r"""
import json, resource, sys, time
import localfeat
model, resize, path = sys.argv[1], sys.argv[2], sys.argv[3]
conf = {} if resize == "default" else {"resize_max": None if resize == "none" else int(resize)}
extractor = localfeat.load_extractor(model, **conf)
start = time.perf_counter()
features = extractor.extract(path)
seconds = time.perf_counter() - start
print(json.dumps({"model": model, "resize_max": extractor.conf["resize_max"], "keypoints": len(features),
                  "image_size": features.image_size, "seconds": round(seconds, 2),
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(model: str, resize: str, photo: Path) -> dict:
    env = dict(os.environ, LOCALFEAT_WEIGHTS=os.pathsep.join(str(p) for p in sorted(DATA.glob("weights_*"))),
               LOCALFEAT_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", CHILD, model, resize, str(photo)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["aliked", "sift"])
    parser.add_argument("--full", action="store_true", help="also extract at full resolution (resize_max=None)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo_6000x4000.jpg"
        src = cv2.imread(str(DATA / "pairs_lightglue" / "sacre_coeur1.jpg"))
        cv2.imwrite(str(photo), cv2.resize(src, (6000, 4000), interpolation=cv2.INTER_CUBIC),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        print(f"photo: 6000 x 4000, {photo.stat().st_size / 2**20:.1f} MiB JPEG")
        print("| model | resize_max | keypoints | seconds | peak memory (GiB) | full / default |")
        print("|---|---|---|---|---|---|")
        for model in args.models:
            default = measure(model, "default", photo)
            rows = [default] + ([measure(model, "none", photo)] if args.full else [])
            for row in rows:
                ratio = row["peak_mib"] / default["peak_mib"]
                print(f"| {model} | {row['resize_max']} | {row['keypoints']} | {row['seconds']} | "
                      f"{row['peak_mib'] / 1024:.2f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
