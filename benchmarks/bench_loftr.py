"""LoFTR / EfficientLoFTR speed and memory on CPU: localfeat's networks against the original forward, timed in
the same process with the calls interleaved, plus bf16 and the peak memory of a 1600 x 1200 pair.

What runs (full official architectures, outdoor configs, random weights from torch.manual_seed(0); the SAME
state_dict is loaded into the original, so both compute the same function; its outputs are compared):
  ours fp32 / ours bf16      localfeat's LoFTRNet / EfficientLoFTRNet (bf16 = torch.autocast bfloat16)
  original                   zju3dv/LoFTR (df7ca80) and zju3dv/EfficientLoFTR (ffd4a46) src.loftr.LoFTR, when
                             --loftr-src / --eloftr-src point at checkouts (the folder holding `src/`); they
                             need einops, kornia, loguru, yacs importable (e.g. PYTHONPATH=deps, installed with
                             `pip install --target deps einops kornia loguru yacs --no-deps`). kornia 0.9 lost
                             `kornia.utils.grid` and EfficientLoFTR imports pytorch_lightning and joblib for
                             training helpers only: this script aliases / stubs those three, editing no file.
  EfficientLoFTR `reparameterize`: ours after fusing the RepVGG branches, and the original's `reparameter`.

The 640 x 480 pair is reference/loftr's sacre_coeur input. Rounds: every variant once per round (interleaved),
after one warm-up each; medians and ratios original / ours (> 1 = ours faster). The coarse threshold is the
official one, so with random weights hardly any match reaches the fine stage (as in reference/loftr/timings.json);
`--thr` lowers it to exercise the fine stage.

--memory: our outdoor LoFTR and EfficientLoFTR on a 1600 x 1200 pair (the 640 x 480 pair resized), each in a
fresh subprocess; prints the peak resident memory (ru_maxrss) and the time.

  PYTHONPATH=/tmp/benchdeps python benchmarks/bench_loftr.py --loftr-src /tmp/LoFTR --eloftr-src /tmp/EfficientLoFTR
  python benchmarks/bench_loftr.py --memory
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np
import torch

from localfeat.matchers.efficientloftr import DEFAULT_CONFIG as ELOFTR_CONFIG
from localfeat.matchers.efficientloftr import EfficientLoFTRNet
from localfeat.matchers.loftr import LoFTRNet, resolve_config

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOCALFEAT_SHARED_DATA", REPO.parent / "shared" / "data"))


def load_pair(size=None):
    data = np.load(SHARED / "reference" / "loftr" / "inputs_sacre_coeur.npz")
    ims = [data["image0_u8"], data["image1_u8"]]
    if size is not None:
        ims = [cv2.resize(im, size, interpolation=cv2.INTER_LINEAR) for im in ims]
    return [torch.from_numpy(im.astype(np.float32) / 255)[None, None] for im in ims]


def import_original(root: str, alias: str):
    """Import <root>/src as the package `alias` (the two originals are both called `src`)."""
    if "kornia.utils.grid" not in sys.modules:
        import kornia.geometry.grid
        sys.modules["kornia.utils.grid"] = kornia.geometry.grid
    for name, attrs in (("pytorch_lightning", {}), ("pytorch_lightning.utilities", {"rank_zero_only": lambda f: f}),
                        ("joblib", {})):
        if name not in sys.modules:
            sys.modules[name] = types.SimpleNamespace(**attrs) if attrs else types.ModuleType(name)
    spec = importlib.util.spec_from_file_location(alias, Path(root) / "src" / "__init__.py",
                                                  submodule_search_locations=[str(Path(root) / "src")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{alias}.loftr")


def tupled(config: dict) -> dict:
    out = json.loads(json.dumps(config))
    out["resolution"] = tuple(out["resolution"])
    return out


def ours_variants(thr):
    torch.manual_seed(0)
    lcfg = resolve_config("outdoor_ds", {"match_coarse": {"thr": thr}} if thr is not None else None)
    loftr = LoFTRNet(lcfg).eval()
    ecfg = json.loads(json.dumps(ELOFTR_CONFIG))
    ecfg["backbone"]["num_blocks"] = [2, 4, 14]
    if thr is not None:
        ecfg["match_coarse"]["thr"] = thr
    torch.manual_seed(0)
    eloftr = EfficientLoFTRNet(ecfg).eval()
    return lcfg, loftr, ecfg, eloftr


@torch.inference_mode()
def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run_timing(args):
    torch.set_num_threads(args.threads)
    im0, im1 = load_pair()
    lcfg, loftr, ecfg, eloftr = ours_variants(args.thr)
    eloftr_fused = EfficientLoFTRNet(ecfg).eval()
    eloftr_fused.load_state_dict(eloftr.state_dict())
    eloftr_fused.reparameterize()
    variants = {
        "loftr ours fp32": lambda: loftr(im0, im1),
        "loftr ours bf16": lambda: _bf16(loftr, im0, im1),
        "eloftr ours fp32": lambda: eloftr(im0, im1),
        "eloftr ours fp32 reparameterized": lambda: eloftr_fused(im0, im1),
        "eloftr ours bf16 reparameterized": lambda: _bf16(eloftr_fused, im0, im1),
    }
    if args.loftr_src:
        orig = import_original(args.loftr_src, "loftr_original_src")
        cfg = tupled(lcfg)
        net = orig.LoFTR(config=cfg).eval()
        net.load_state_dict(loftr.state_dict(), strict=True)
        variants["loftr original fp32"] = lambda: _original(net, im0, im1)
    if args.eloftr_src:
        orig_e = import_original(args.eloftr_src, "eloftr_original_src")
        cfg = tupled(ecfg)   # the original builds the official [2, 4, 14] RepVGG whatever the config says
        net_e = orig_e.LoFTR(config=cfg).eval()
        net_e.load_state_dict(eloftr.state_dict(), strict=True)
        variants["eloftr original fp32"] = lambda: _original(net_e, im0, im1)
        net_ef = orig_e.LoFTR(config=cfg).eval()
        net_ef.load_state_dict(eloftr.state_dict(), strict=True)
        orig_e.reparameter(net_ef)
        variants["eloftr original fp32 reparameterized"] = lambda: _original(net_ef, im0, im1)
    variants = {k: v for k, v in variants.items() if k.split()[0] in args.models}
    outputs = {}
    for name, fn in variants.items():   # warm-up, and the outputs to compare
        t, outputs[name] = timed(fn)
        print(f"  warm-up {name}: {t:.2f} s", flush=True)
    times = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn)[0])
        print(f"  round {r + 1}: " + ", ".join(f"{n} {t[-1]:.2f}" for n, t in times.items()), flush=True)
    print(f"640x480 pair, {args.threads} thread(s), {args.rounds} interleaved rounds; medians (s), 1-min load "
          f"average {os.getloadavg()[0]:.1f}:")
    med = {name: statistics.median(t) for name, t in times.items()}
    for name in variants:
        n = len(_matches(outputs[name]))
        print(f"  {name:40s} {med[name]:7.3f} s   ({n} matches)")
    for fam, ours in (("loftr", "loftr ours fp32"), ("eloftr", "eloftr ours fp32"),
                      ("eloftr", "eloftr ours fp32 reparameterized")):
        base = f"{fam} original fp32" + (" reparameterized" if "reparameterized" in ours else "")
        if base in med and ours in med:
            print(f"  ratio {base} / {ours}: {med[base] / med[ours]:.2f}")
            a, b = outputs[ours], outputs[base]
            diff = _compare(a, b)
            print(f"    same function: {diff}")
    for fam in ("loftr", "eloftr"):
        fp32 = f"{fam} ours fp32" + (" reparameterized" if fam == "eloftr" else "")
        bf = f"{fam} ours bf16" + (" reparameterized" if fam == "eloftr" else "")
        if fp32 in med and bf in med:
            print(f"  ratio {fp32} / {bf}: {med[fp32] / med[bf]:.2f}")


def _bf16(net, im0, im1):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return net(im0, im1)


def _original(net, im0, im1):
    data = {"image0": im0, "image1": im1}
    net(data)
    return data


def _matches(out):
    return out["mkpts0_f"] if "mkpts0_f" in out else out["keypoints0"]


def _compare(ours, original) -> str:
    """Match counts, and the largest keypoint difference when the counts agree."""
    k0, k1 = _matches(ours), _matches(original)
    text = f"{len(k0)} vs {len(k1)} matches"
    if len(k0) == len(k1) and len(k0):
        text += f", max keypoint difference {float((ours['keypoints1'] - original['mkpts1_f']).abs().max()):.2e} px"
    return text


def run_memory(args):
    for which in ("loftr", "efficientloftr"):
        cmd = [sys.executable, __file__, "--memory-child", which, "--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        print(res.stdout.strip() or res.stderr.strip()[-2000:], flush=True)


def memory_child(which, threads):
    torch.set_num_threads(threads)
    im0, im1 = load_pair((1600, 1200))
    _, loftr, _, eloftr = ours_variants(None)
    net = loftr if which == "loftr" else eloftr.reparameterize()
    del loftr, eloftr
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    if which == "efficientloftr":  # its backbone needs multiples of 32: bottom rows padded as match_images does
        im0, im1 = (torch.nn.functional.pad(im, (0, 0, 0, 16)) for im in (im0, im1))
    with torch.inference_mode():
        t, out = timed(lambda: net(im0, im1))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    size = "x".join(str(v) for v in im0.shape[:-3:-1])
    print(f"{which} {size} (L = S = {im0.shape[-1] // 8 * (im0.shape[-2] // 8)} coarse cells): {t:.1f} s, peak RSS {peak:.2f} GiB "
          f"(model loaded: {before:.2f} GiB), {len(out['keypoints0'])} matches")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--loftr-src", help="checkout of zju3dv/LoFTR (folder holding src/)")
    p.add_argument("--eloftr-src", help="checkout of zju3dv/EfficientLoFTR (folder holding src/)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["loftr", "eloftr"], choices=["loftr", "eloftr"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--thr", type=float, default=None, help="coarse threshold (default: the official 0.2)")
    p.add_argument("--memory", action="store_true", help="peak memory of a 1600x1200 pair (subprocesses)")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.threads)
    elif args.memory:
        run_memory(args)
    else:
        run_timing(args)


if __name__ == "__main__":
    main()
