"""CPU time per 640x480 image of the DISK, SuperPoint and D2-Net extractors (issue 6).

Weights do not change the run time, so the parity fixtures' random state_dicts are used for DISK and
SuperPoint, and a random-init state_dict (written to a temporary file) for D2-Net. The baseline is
OpenCV SIFT on the same image in the same run: the table gives each model's time and its ratio to SIFT,
plus the share of the time spent in the network forward pass.

example:
  .venv/bin/python benchmarks/bench_extractors_issue6.py --repeats 3
  .venv/bin/python benchmarks/bench_extractors_issue6.py --models superpoint d2net_multiscale --threads 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from localfeat import load_extractor
from localfeat.extractors.d2net import MULTISCALE, D2NetModel, preprocess
from localfeat.ops import image_to_tensor

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOCALFEAT_SHARED_DATA", REPO.parent / "shared" / "data"))
MODELS = ("disk", "superpoint", "superpoint_lightglue", "d2net", "d2net_multiscale")


def test_image(path: str | None, size=(640, 480)) -> np.ndarray:
    """RGB uint8 of `size` (W, H): the given file, else HPatches v_dogman/1.ppm, else scikit-image's astronaut."""
    if path is None:
        candidate = SHARED / "hpatches_subset" / "v_dogman" / "1.ppm"
        path = str(candidate) if candidate.is_file() else None
    if path is not None:
        img = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    else:
        from skimage import data
        img = data.astronaut()
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median (wall seconds, CPU seconds of this process summed over its threads) of `repeats` runs.

    On a shared machine the wall time grows with the other processes' load; the CPU time much less.
    """
    fn()  # warm-up (allocations, oneDNN kernels)
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def build(name: str, tmp: Path):
    ref = SHARED / "reference"
    if name == "disk":
        return load_extractor("disk", weights=str(ref / "disk" / "disk_random_state_dict.pth"), device="cpu")
    if name.startswith("superpoint"):
        style = "lightglue" if name.endswith("lightglue") else "magicleap"
        return load_extractor("superpoint", weights=str(ref / "superpoint" / "superpoint_random_state_dict.pth"),
                              device="cpu", style=style,
                              detection_threshold=0.0005 if style == "lightglue" else 0.015)
    path = tmp / "d2net_random.pth"
    if not path.exists():
        torch.manual_seed(0)
        torch.save({"model": D2NetModel("test").state_dict()}, path)
    return load_extractor("d2net", weights=str(path), device="cpu", multiscale=name.endswith("multiscale"))


def network_only(name: str, ex, image: np.ndarray):
    if name == "disk":
        return lambda: ex.net(image_to_tensor(image))
    if name.startswith("superpoint"):
        return lambda: ex.net(image_to_tensor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)))
    x = torch.from_numpy(preprocess(image))[None]
    scales = MULTISCALE if ex.conf["multiscale"] else (1.0,)
    levels = [F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=True) for s in scales]
    return lambda: [ex.net(level) for level in levels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("example:")[1].join(["example:", ""]))
    parser.add_argument("--models", nargs="+", default=["disk", "superpoint", "superpoint_lightglue", "d2net"],
                        choices=MODELS)
    parser.add_argument("--image", default=None, help="image file (resized to 640x480)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per model (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    image = test_image(args.image)
    sift = load_extractor("sift")
    base = timed(lambda: sift.extract(image), args.repeats)
    rows = [("sift (baseline)", base, None, len(sift.extract(image)))]
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name in args.models:
            ex = build(name, Path(tmp))
            total = timed(lambda: ex.extract(image), args.repeats)
            net = timed(network_only(name, ex, image), args.repeats)
            rows.append((name, total, net, len(ex.extract(image))))
    print(f"640x480 image, CPU, torch threads={torch.get_num_threads()}, median of {args.repeats} runs; "
          "ratios use CPU seconds")
    print(f"{'model':<22}{'wall s':>9}{'CPU s':>9}{'x SIFT':>9}{'net CPU s':>11}{'net %':>7}{'keypoints':>11}")
    for name, (wall, cpu), net, n in rows:
        net_s = f"{net[1]:11.3f}{100 * net[1] / cpu:6.0f}%" if net is not None else f"{'-':>11}{'-':>7}"
        print(f"{name:<22}{wall:9.3f}{cpu:9.3f}{cpu / base[1]:9.1f}{net_s}{n:11d}")

if __name__ == "__main__":
    main()
