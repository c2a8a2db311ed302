"""CPU time per 640x480 image of ALIKE and ALIKED, against the original implementations.

Two comparisons, printed as tables:

1. against the original's times recorded in reference/{alike,aliked}/timings.json (quiet 2-core AMD
   EPYC VM; wall-clock of `ALike.__call__(img, sub_pixel=True)` / `ALIKED.run(img)`, 1 warm-up, median
   of 3). The other processes' CPU use during our runs is measured (as the recording harness did) and
   printed, because a busy machine makes the wall-clock meaningless: ratios against the recorded
   figures only hold on a quiet machine.
2. for ALIKE, against the ORIGINAL COMPUTATION PATH measured in the same run: the dense network with
   the full descriptor map (`extract_dense_map`), DKD with the full-map unfold, descriptors sampled from
   the normalised dense map. This ratio is robust to load. The post-processing (everything after the
   network's score map) is timed separately for both, for the ">= 1.4x where the original spends time
   outside the network" target.

    python benchmarks/bench_alike.py                       # all models whose weights exist offline
    python benchmarks/bench_alike.py --models alike-n aliked-n16 --runs 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import cv2
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("LOCALFEAT_SHARED_DATA", REPO.parent / "shared" / "data"))
MODELS = ["alike-t", "alike-s", "alike-n", "alike-l", "aliked-n16", "aliked-n16rot"]


def busy_jiffies() -> tuple[int, int]:
    """(busy jiffies of the whole machine, jiffies of this process) from /proc."""
    with open("/proc/stat") as f:
        cpu = [int(v) for v in f.readline().split()[1:]]
    busy = sum(cpu) - cpu[3] - cpu[4]  # minus idle and iowait
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return busy, int(fields[11]) + int(fields[12])


def timed(fn, runs: int) -> dict:
    """1 warm-up call, then `runs` calls: median wall-clock (s), median process CPU (s) and the mean
    number of cores other processes used during the calls."""
    fn()
    walls, cpus, others = [], [], []
    for _ in range(runs):
        b0, s0 = busy_jiffies()
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        b1, s1 = busy_jiffies()
        hz = os.sysconf("SC_CLK_TCK")
        walls.append(wall)
        cpus.append(cpu)
        others.append(max(0.0, ((b1 - b0) - (s1 - s0)) / hz / max(wall, 1e-9)))
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "others": statistics.mean(others)}


# ------------------------------------------------------------------------------------- original path
def original_dkd(scores_map: torch.Tensor, descriptor_map: torch.Tensor, radius: int = 2,
                 scores_th: float = 0.2, n_limit: int = 5000):
    """The computation path of the original ALIKE DKD (threshold mode, sub-pixel): NMS, full-map unfold,
    soft-argmax, score and descriptor sampling from the normalised dense map. Baseline only."""
    def pool(x):
        return torch.nn.functional.max_pool2d(x, kernel_size=2 * radius + 1, stride=1, padding=radius)

    b, _, h, w = scores_map.shape
    zeros = torch.zeros_like(scores_map)  # the original simple_nms, with max_pool2d
    max_mask = scores_map == pool(scores_map)
    for _ in range(2):
        supp_mask = pool(max_mask.float()) > 0
        supp_scores = torch.where(supp_mask, zeros, scores_map)
        max_mask = max_mask | ((supp_scores == pool(supp_scores)) & ~supp_mask)
    nms = torch.where(max_mask, scores_map, zeros)
    nms[:, :, :radius + 1] = 0
    nms[:, :, :, :radius + 1] = 0
    nms[:, :, h - radius:] = 0
    nms[:, :, :, w - radius:] = 0
    idx = (nms.reshape(-1) > scores_th).nonzero()[:, 0]
    if len(idx) > n_limit:
        idx = idx[scores_map.reshape(-1)[idx].sort(descending=True)[1][:n_limit]]
    k = 2 * radius + 1
    patches = F.unfold(scores_map, k, padding=radius)[0].t()[idx]
    r = torch.linspace(-radius, radius, k)
    grid = torch.stack(torch.meshgrid(r, r, indexing="ij")).view(2, -1).t()[:, [1, 0]]
    x_exp = ((patches - patches.max(1).values[:, None]) / 0.1).exp()
    xy = torch.stack([idx % w, idx // w], 1) + x_exp @ grid / x_exp.sum(1)[:, None]
    kpts = (xy / xy.new_tensor([w - 1, h - 1]) * 2 - 1).view(1, 1, -1, 2)
    scores = F.grid_sample(scores_map, kpts, mode="bilinear", align_corners=True)[0, 0, 0]
    desc = F.grid_sample(descriptor_map, kpts, mode="bilinear", align_corners=True)[0, :, 0]
    return xy, F.normalize(desc, dim=0).t(), scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--runs", type=int, default=3, help="counted runs per measurement (median)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared/data folder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("LOCALFEAT_WEIGHTS", os.pathsep.join(str(p) for p in sorted(args.data.glob("weights_*"))))
    import localfeat
    from localfeat.extractors.alike import pad_to_multiple
    from localfeat.ops import image_to_tensor

    bgr = cv2.imread(str(args.data / "hpatches_subset" / "v_dogman" / "1.ppm"))
    img = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (640, 480), interpolation=cv2.INTER_LINEAR)
    recorded = {}
    for family in ("alike", "aliked"):
        with open(args.data / "reference" / family / "timings.json") as f:
            recorded.update({k: v["median_s"] for k, v in json.load(f)["results"].items()})

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 640x480, median of {args.runs}")
    rows, rows_path, rows_dense = [], [], []
    for name in args.models:
        family = "aliked" if name.startswith("aliked") else "alike"
        model = localfeat.load_extractor(family, variant=name, device="cpu")
        ours = timed(lambda: model.extract(img), args.runs)
        n = len(model.extract(img))
        rows.append((name, n, ours, recorded.get(name)))
        if family == "alike":
            net = model.net

            @torch.inference_mode()
            def original_path():
                t = image_to_tensor(img)
                s, d = model.dense(t)  # extract_dense_map: dense descriptor map, normalised
                return original_dkd(s, d)

            @torch.inference_mode()
            def our_post(ctx, s):
                from localfeat.extractors._dkd import detect_keypoints
                from localfeat.extractors.alike import sample_normalized_bilinear
                kp, _ = detect_keypoints(s, 2, (3, 2), None, 0.2, 5000, True)
                return sample_normalized_bilinear(lambda yx: net.descriptors_at(ctx, yx), kp[0], (640, 480))

            with torch.inference_mode():
                s_dense, d_dense = model.dense(image_to_tensor(img))
                s_sparse, ctx = net.forward_sparse(pad_to_multiple(image_to_tensor(img), 32))
            orig = timed(original_path, args.runs)
            # post-processing alone: the original's includes normalising the dense descriptor map
            orig_post = timed(lambda: original_dkd(s_dense, F.normalize(d_dense, dim=1)), args.runs)
            post = timed(lambda: our_post(ctx, s_sparse), args.runs)
            rows_path.append((name, orig, ours, orig_post, post))
        else:
            from localfeat.extractors._dkd import detect_keypoints

            @torch.inference_mode()
            def dense_path():  # the original's structure: dense feature map, DKD, SDDH on the dense map
                s, fmap = model.dense(image_to_tensor(img))
                kp, _ = detect_keypoints(s, 2, (2, 2), None, 0.2, 5000, True)
                return model.net.desc_head(fmap, kp)

            rows_dense.append((name, timed(dense_path, args.runs), ours))

    print("\n1. against the original's recorded times (quiet machine)")
    print(f"{'model':<14}{'kpts':>6}{'ours wall s':>13}{'ours cpu s':>12}{'other cores':>13}"
          f"{'original s':>12}{'speed-up':>10}")
    for name, n, ours, rec in rows:
        ratio = f"{rec / ours['wall']:.2f}x" if rec else "-"
        print(f"{name:<14}{n:>6}{ours['wall']:>13.3f}{ours['cpu']:>12.3f}{ours['others']:>13.2f}"
              f"{rec if rec else float('nan'):>12.3f}{ratio:>10}")
    if rows_path:
        print("\n2. ALIKE against the original computation path, same run (s; wall-clock / process CPU)")
        print(f"{'model':<10}{'orig path':>15}{'ours':>15}{'speed-up':>16}{'orig post':>15}{'our post':>15}"
              f"{'post speed-up':>16}")
        for name, orig, ours, orig_post, post in rows_path:
            def pair(m):
                return f"{m['wall']:.3f}/{m['cpu']:.3f}"

            def ratio(a, b):
                return f"{a['wall'] / b['wall']:.2f}x/{a['cpu'] / b['cpu']:.2f}x"
            print(f"{name:<10}{pair(orig):>15}{pair(ours):>15}{ratio(orig, ours):>16}{pair(orig_post):>15}"
                  f"{pair(post):>15}{ratio(orig_post, post):>16}")
    if rows_dense:
        print("\n3. ALIKED against its dense computation path (the original's structure, with our deformable"
              " convolution), same run (s; wall-clock / process CPU)")
        print(f"{'model':<14}{'dense path':>15}{'ours':>15}{'speed-up':>16}")
        for name, dense, ours in rows_dense:
            print(f"{name:<14}{dense['wall']:>9.3f}/{dense['cpu']:.3f}{ours['wall']:>9.3f}/{ours['cpu']:.3f}"
                  f"{dense['wall'] / ours['wall']:>9.2f}x/{dense['cpu'] / ours['cpu']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
