"""Reliability families of issue 19, rerun as a user and an attacker would, and counted.

Every case runs the `localfeat` command (or, for pure file readers, the library) in a child process
with a time limit and is classified as one of:
  ok         the right result, or a clean error: exit code 1/2, at most two lines on stderr, no traceback
  traceback  a Python traceback reached the user
  crash      killed by a signal (segfault, ...)
  hang       ran past the time limit
  wrong      finished without an error but the result is wrong (silently)
  lost       finished without an error but entries are missing

    .venv/bin/python benchmarks/reliability.py            # the full run (about 15 min on 2 busy cores)
    .venv/bin/python benchmarks/reliability.py --quick    # fewer trials

The disk-full family uses a real 8 MiB tmpfs, filled up to a headroom, when this process may mount one
(root), else a file-size limit (RLIMIT_FSIZE), which fails writes the same way (EFBIG instead of ENOSPC).
(A merge reserves twice the journal plus 1 MiB before writing, so the tmpfs must hold more than 1 MiB.)
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import h5py
import numpy as np

from localfeat.io.h5 import FeatureStore, MatchStore, StoreError
from localfeat.pipeline import extract
from localfeat.types import ContractError, Features, Matches

OUTCOMES = ("ok", "traceback", "crash", "hang", "wrong", "lost")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
results: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
notes: dict[str, list[str]] = collections.defaultdict(list)


def cli(*args, timeout=300, preexec_fn=None):
    """Run `localfeat ARGS`; returns (returncode or 'hang', stdout, stderr)."""
    try:
        proc = subprocess.run([sys.executable, "-m", "localfeat.cli", *map(str, args)], capture_output=True,
                              text=True, timeout=timeout, env=ENV, preexec_fn=preexec_fn)
    except subprocess.TimeoutExpired:
        return "hang", "", ""
    return proc.returncode, proc.stdout, proc.stderr


def classify_error(rc, stderr) -> str:
    """Outcome of a case that must end in a clean error."""
    if rc == "hang":
        return "hang"
    if rc < 0:
        return "crash"
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
    if "Traceback" in stderr or len(lines) > 2:
        return "traceback"
    return "ok" if rc in (1, 2) else "wrong"


def record(family: str, outcome: str, label: str) -> None:
    results[family][outcome] += 1
    if outcome != "ok":
        notes[family].append(f"{label}: {outcome}")


def texture(seed, h=96, w=96):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 2)
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def make_images(folder: Path, count: int, size=96) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:04d}.png"), texture(i, size, size))
        names.append(f"{i:04d}.png")
    return names


# --------------------------------------------------------------------------------- concurrent writers
STORE_WRITER = """
import sys, time, random
import numpy as np
from localfeat.io.h5 import FeatureStore
from localfeat.types import Features
path, names = sys.argv[1], sys.argv[2:]
random.seed(hash(tuple(names)))
with FeatureStore(path, "a", model="m", conf={}, conf_hash="h", flush_every=2) as store:
    for name in names:
        if name not in store:
            rng = np.random.default_rng(int(name[4:8]))
            desc = rng.normal(size=(50, 32))
            store.put(name, Features(rng.uniform(0, 90, (50, 2)), rng.uniform(size=50),
                                     desc / np.linalg.norm(desc, axis=1)[:, None], (96, 96)))
            time.sleep(random.uniform(0, 0.004))
"""


def _expected_store_entry(name: str) -> Features:
    rng = np.random.default_rng(int(name[4:8]))
    desc = rng.normal(size=(50, 32))
    return Features(rng.uniform(0, 90, (50, 2)), rng.uniform(size=50), desc / np.linalg.norm(desc, axis=1)[:, None],
                    (96, 96))


def family_concurrent(work: Path, trials: int, cli_trials: int) -> None:
    """Writers of one store at once: `trials` runs of small writer processes (FeatureStore.put, flushing every
    2 entries, so that chunks and merges interleave), and `cli_trials` runs of `localfeat extract`."""
    images = work / "images"
    names = make_images(images, 40)
    if cli_trials:
        extract(images, work / "reference.h5", model="sift", overwrite=True)
    reference = FeatureStore(work / "reference.h5", "r") if cli_trials else None
    for writers in (2, 4):
        for overlap in (False, True):
            for trial in range(trials + cli_trials):
                use_cli = trial >= trials
                out = work / f"concurrent_{writers}_{overlap}_{trial}.h5"
                lists = []
                for w in range(writers):
                    if overlap:  # each writer shares half of its 20 images with the next one
                        chosen = [names[(w * 10 + i) % len(names)] for i in range(20)]
                    else:
                        chosen = names[w * (len(names) // writers):(w + 1) * (len(names) // writers)]
                    lists.append([f"img_{n}" for n in chosen] if not use_cli else chosen)
                if use_cli:
                    commands = []
                    for w, chosen in enumerate(lists):
                        listing = work / f"list_{w}.txt"
                        listing.write_text("".join(f"images/{n}\n" for n in chosen))
                        commands.append([sys.executable, "-m", "localfeat.cli", "extract", str(listing), "-o",
                                         str(out), "--model", "sift", "--root", str(images)])
                else:
                    commands = [[sys.executable, "-c", STORE_WRITER, str(out), *chosen] for chosen in lists]
                procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
                         for c in commands]
                outcome = "ok"
                for proc in procs:
                    try:
                        _, err = proc.communicate(timeout=600)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        outcome = "hang"
                        continue
                    if proc.returncode < 0:
                        outcome = "crash"
                    elif (proc.returncode != 0 or "Traceback" in err) and outcome == "ok":
                        outcome = "traceback"
                        notes["concurrent writers"].append(err.strip().splitlines()[-1][:200] if err.strip() else "")
                expected = sorted({n for chosen in lists for n in chosen})
                if outcome == "ok":
                    store = FeatureStore(out, "r")
                    if store.names() != expected:
                        outcome = "lost"
                    elif not all(store.get(n).equals(reference.get(n) if use_cli else _expected_store_entry(n))
                                 for n in expected):
                        outcome = "wrong"
                record("concurrent writers" + (" (localfeat extract)" if use_cli else " (store API)"), outcome,
                       f"{writers} writers, {'overlapping' if overlap else 'disjoint'}, trial {trial}")


# ------------------------------------------------------------------------------------------- bombs
def png_declaring(w, h) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64, 9)) + chunk(b"IEND", b""))


def bomb_files(folder: Path) -> dict[str, bytes]:
    jpeg = bytearray(cv2.imencode(".jpg", texture(0, 48, 64))[1].tobytes())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 20000, 50000)
    bmp = bytearray(cv2.imencode(".bmp", texture(0, 4, 4))[1].tobytes())
    bmp[18:26] = struct.pack("<ii", 40000, 40000)
    files = {"bomb_png.png": png_declaring(100000, 100000), "bomb_jpeg.jpg": bytes(jpeg),
             "bomb_pgm.pgm": b"P5\n30000 30000\n255\n" + bytes(16), "bomb_bmp.bmp": bytes(bmp)}
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def family_bombs(work: Path) -> None:
    folder = work / "bombs"
    files = bomb_files(folder)
    make_images(folder, 2)
    for name in files:  # one at a time: view must refuse with one line
        rc, _, err = cli("view", folder / name, "-o", work / "view.png", timeout=120)
        record("decompression bombs", classify_error(rc, err), f"view {name}")
    # The batch goes on: 2 done, every bomb named as failed; peak memory of the run bounded.
    rc, out, err = cli("extract", folder, "-o", work / "bombs.h5", "--model", "sift", "--on-error", "skip",
                       "--resize-max", "1024", timeout=300)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    # Exit code 3: the run finished, and some images failed (they are listed).
    ok = (rc == 3 and "Traceback" not in err and f"2 done, 0 already present, {len(files)} failed" in out
          and all(name in out for name in files))
    record("decompression bombs", "ok" if ok else ("crash" if rc != "hang" and rc < 0 else "traceback"),
           "batch extract --on-error skip")
    notes["decompression bombs"].append(f"largest peak RSS of any child so far (view x4, batch extract): "
                                        f"{peak_mb:.0f} MB")
    # OpenCV's own limit, without ours: still one clean line.
    env = dict(ENV, LOCALFEAT_MAX_IMAGE_PIXELS="none")
    proc = subprocess.run([sys.executable, "-m", "localfeat.cli", "view", str(folder / "bomb_png.png"), "-o",
                           str(work / "view.png")], capture_output=True, text=True, env=env, timeout=120)
    record("decompression bombs", classify_error(proc.returncode, proc.stderr), "view, budget lifted (cv2.error)")


# ----------------------------------------------------------------------------------------- disk full
def _mount_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def family_disk_full(work: Path) -> None:
    feats = work / "disk_features.h5"
    names = [f"im{i}.png" for i in range(30)]
    rng = np.random.default_rng(0)
    with FeatureStore(feats, "w") as store:
        for name in names:
            desc = rng.normal(size=(400, 128))
            store.put(name, Features(rng.uniform(0, 99, (400, 2)), np.ones(400), desc / np.linalg.norm(
                desc, axis=1)[:, None], (100, 100)))
    pairs = work / "disk_pairs.txt"
    pairs.write_text("".join(f"{a} {b}\n" for i, a in enumerate(names) for b in names[i + 1:]))
    old_pairs = work / "disk_pairs_old.txt"
    old_pairs.write_text("".join(f"{names[0]} {b}\n" for b in names[1:6]))
    mount = work / "full"
    use_tmpfs = _mount_tmpfs(mount)
    notes["disk full"].append("real 8 MiB tmpfs" if use_tmpfs else "RLIMIT_FSIZE (not root: no tmpfs)")
    try:
        for headroom in (0, 2_000, 8_000, 32_000, 128_000, 400_000):
            folder = mount if use_tmpfs else work / "fsize"
            folder.mkdir(exist_ok=True)
            for entry in folder.iterdir():  # empty it (a mount point itself stays)
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            out = folder / "matches.h5"
            rc, _, err = cli("match", feats, "--pairs", old_pairs, "-o", out)
            old = {pair: MatchStore(out, "r").get(*pair).indices.copy() for pair in MatchStore(out, "r").pairs()}
            preexec = None
            if use_tmpfs:
                free = shutil.disk_usage(folder).free
                with open(folder / "filler", "wb") as f:
                    f.write(b"\0" * max(0, free - headroom))
            else:
                limit = out.stat().st_size + headroom

                def preexec(limit=limit):
                    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            for verb in ("match", "extract"):
                if verb == "match":
                    rc, _, err = cli("match", feats, "--pairs", pairs, "-o", out, preexec_fn=preexec)
                else:
                    make_images(work / "disk_images", 6, 256)
                    rc, _, err = cli("extract", work / "disk_images", "-o", folder / "features.h5", "--model",
                                     "sift", preexec_fn=preexec)
                outcome = classify_error(rc, err) if rc != 0 else "ok"
                if verb == "match" and outcome == "ok":
                    store = MatchStore(out, "r")  # the old entries are intact
                    if any(not np.array_equal(store.get(*pair).indices, idx) for pair, idx in old.items()):
                        outcome = "lost"
                record("disk full", outcome, f"{verb}, {headroom} bytes free")
    finally:
        if use_tmpfs:
            subprocess.run(["umount", str(mount)], capture_output=True)


# ------------------------------------------------------------------------------- indices, hloc, stores
def _features(n, d=8, seed=0):
    rng = np.random.default_rng(seed)
    desc = rng.normal(size=(n, d))
    return Features(rng.uniform(0, 90, (n, 2)), rng.uniform(size=n), desc / np.linalg.norm(desc, axis=1)[:, None],
                    (96, 96))


def family_indices(work: Path) -> None:
    images = work / "idx_images"
    make_images(images, 2)
    feats = work / "idx_features.h5"
    with FeatureStore(feats, "w") as store:
        store.put("0000.png", _features(6))
        store.put("0001.png", _features(6, seed=1))
    for label, indices in (("index 10^6", np.array([[0, 1], [2, 1_000_000]], np.int64)),
                           ("uint64 2^64-1", np.array([[0, 1], [2, 2**64 - 1]], np.uint64)),
                           ("index = N", np.array([[0, 6]], np.int64))):
        matches = work / "idx_matches.h5"
        with h5py.File(matches, "w") as f:  # written by hand: the store itself refuses such indices
            f.attrs["localfeat_format"] = 1
            g = f.create_group("0000.png/0001.png")
            g["indices"] = indices
            g["scores"] = np.ones(len(indices), np.float32)
            g.attrs["name0"], g.attrs["name1"] = "0000.png", "0001.png"
        db = work / "idx.db"
        db.unlink(missing_ok=True)
        rc, _, err = cli("export", "colmap", "--features", feats, "--matches", matches, "--database", db)
        record("match indices", classify_error(rc, err) if not db.exists() else "wrong", f"export colmap, {label}")
        rc, _, err = cli("view", images / "0000.png", images / "0001.png", "--features", feats, "--matches",
                         matches, "-o", work / "idx.png")
        record("match indices", classify_error(rc, err), f"view, {label}")
        try:
            MatchStore(matches, "r").get("0000.png", "0001.png", num_keypoints=(6, 6))
            record("match indices", "wrong", f"MatchStore.get, {label}")
        except (StoreError, ContractError):
            record("match indices", "ok", f"MatchStore.get, {label}")
        except Exception as exc:  # noqa: BLE001 - counted, not hidden
            record("match indices", "traceback", f"MatchStore.get, {label}: {type(exc).__name__}")


def family_hloc(work: Path) -> None:
    for n in (1, 16, 64, 128, 256):
        feats = _features(n, d=n if n > 1 else 1, seed=n)
        path = work / f"hloc_{n}.h5"
        with h5py.File(path, "w") as h:  # hloc's extract_features layout
            g = h.create_group("a.jpg")
            g["keypoints"], g["scores"] = feats.keypoints, feats.scores
            g["descriptors"] = feats.descriptors.T
            g["image_size"] = np.array(feats.image_size)
        try:
            got = FeatureStore(path, "r").get("a.jpg")
            record("hloc N == D", "ok" if np.array_equal(got.descriptors, feats.descriptors) else "wrong",
                   f"hloc file, N = D = {n}")
        except StoreError:
            record("hloc N == D", "ok", f"hloc file, N = D = {n} (refused)")
        other = work / f"other_{n}.h5"  # another tool: (N, D), no hloc marker
        with h5py.File(other, "w") as h:
            g = h.create_group("a.jpg")
            g["keypoints"], g["descriptors"] = feats.keypoints, feats.descriptors
            g.attrs["image_size"] = np.array(feats.image_size)
        try:
            got = FeatureStore(other, "r").get("a.jpg")
            record("hloc N == D", "ok" if np.array_equal(got.descriptors, feats.descriptors) else "wrong",
                   f"unmarked file, N = D = {n}")
        except StoreError:
            record("hloc N == D", "ok", f"unmarked file, N = D = {n} (refused)")


def family_stores(work: Path) -> None:
    f = _features(10)
    cases = {
        "missing descriptors": dict(keypoints=f.keypoints, image_size=np.array([96, 96])),
        "scalar keypoints": dict(keypoints=np.float32(3), descriptors=f.descriptors, image_size=np.array([96, 96])),
        "keypoints (N, 3)": dict(keypoints=np.zeros((10, 3), np.float32), descriptors=f.descriptors,
                                 image_size=np.array([96, 96])),
        "declared (2e9, 2)": dict(keypoints=(2_000_000_000, 2), descriptors=f.descriptors,
                                  image_size=np.array([96, 96])),
        "string keypoints": dict(keypoints=np.array([b"ab"]), descriptors=f.descriptors,
                                 image_size=np.array([96, 96])),
        "dangling soft link": dict(keypoints=f.keypoints, descriptors=h5py.SoftLink("/nowhere"),
                                   image_size=np.array([96, 96])),
        "missing external file": dict(keypoints=f.keypoints, descriptors=h5py.ExternalLink("absent.h5", "/x"),
                                      image_size=np.array([96, 96])),
    }
    for label, datasets in cases.items():
        path = work / "malformed.h5"
        with h5py.File(path, "w") as h:
            g = h.create_group("a.jpg")
            for key, value in datasets.items():
                if isinstance(value, tuple):
                    g.create_dataset(key, shape=value, dtype="f4")
                else:
                    g[key] = value
        rc, _, err = cli("export", "colmap", "--features", path, "--database", work / "malformed.db", "--overwrite")
        record("malformed stores", classify_error(rc, err), f"export colmap, {label}")
    # Byte flips in the data of one entry (keypoints, descriptors, scores and their checksums).
    path = work / "flips.h5"
    with FeatureStore(path, "w") as store:
        store.put("a.jpg", f)
    with h5py.File(path, "r") as h:
        regions = [(h["a.jpg"][k].id.get_chunk_info(0).byte_offset, h["a.jpg"][k].id.get_chunk_info(0).size)
                   for k in ("keypoints", "descriptors", "scores")]
    data = bytearray(path.read_bytes())
    positions = [p for start, size in regions for p in range(start, start + size)]
    for pos in random.Random(0).sample(positions, min(300, len(positions))):
        data[pos] ^= 0xFF
        path.write_bytes(data)
        try:
            got = FeatureStore(path, "r").get("a.jpg")
            outcome = "ok" if got.equals(f) else "wrong"
        except StoreError:
            outcome = "ok"
        except Exception as exc:  # noqa: BLE001
            outcome = "traceback"
            notes["malformed stores"].append(f"flip {pos}: {type(exc).__name__}")
        record("byte flips (checksums)", outcome, f"byte {pos}")
        data[pos] ^= 0xFF


def family_npz(work: Path) -> None:
    from localfeat.io.npz import write_npz

    folder = work / "npz"
    folder.mkdir(exist_ok=True)
    good = folder / "good.png.r2d2"
    write_npz(good, _features(5))
    raw = good.read_bytes()
    for label, content in (("empty", b""), ("truncated", raw[: len(raw) // 2]), ("5 bytes", b"hello")):
        case = work / f"npz_{label.replace(' ', '_')}"
        shutil.rmtree(case, ignore_errors=True)
        case.mkdir()
        (case / "x.png.r2d2").write_bytes(content)
        rc, _, err = cli("import", "npz", case, "-o", work / "npz.h5", "--ext", "r2d2")
        record("npz import", classify_error(rc, err), label)


def family_configs(work: Path) -> None:
    images = work / "cfg_images"
    make_images(images, 1)
    feats = work / "cfg_features.h5"
    extract(images, feats, model="sift", overwrite=True)
    alias = "a: &a [x,x]\n" + "".join(f"{c}: &{c} [*{p},*{p}]\n" for p, c in zip("abcdefghijklmnop",
                                                                                  "bcdefghijklmnopq"))
    extractor_cases = ["sigma=0", "sigma=nan", "n_octave_layers=0", "n_octave_layers=100000", "rootsift=maybe",
                       "resize_max=0", "resize_max=-1", "device=cuda:7", "contrast_threshold=abc",
                       f"max_keypoints={alias}"]
    for item in extractor_cases:
        rc, _, err = cli("extract", images, "-o", work / "cfg_out.h5", "--model", "sift", "--conf", item,
                         "--overwrite", timeout=120)
        record("configs", classify_error(rc, err), f"sift {item[:30]!r}")
    for spec in ("affine_sim:phi_step=0", "affine_sim:tilts=[1000000000]"):
        rc, _, err = cli("extract", images, "-o", work / "cfg_out.h5", "--model", spec, "--overwrite", timeout=120)
        record("configs", classify_error(rc, err), spec)
    for item in ("ratio=-1", "ratio=nan", "max_distance=nan", "device=cuda:7", "mutual=maybe"):
        rc, _, err = cli("match", feats, "-o", work / "cfg_matches.h5", "--exhaustive", "--conf", item,
                         "--overwrite", timeout=120)
        record("configs", classify_error(rc, err), f"nearest_neighbor {item}")


# -------------------------------------------------------------------------------------------- SIGKILL
def family_sigkill(work: Path, kills: int) -> None:
    images = work / "kill_images"
    make_images(images, 150, 128)
    reference = work / "kill_reference.h5"
    extract(images, reference, model="sift", overwrite=True)
    ref = FeatureStore(reference, "r")
    rng = random.Random(0)
    for k in range(kills):
        out = work / f"killed_{k}.h5"
        proc = subprocess.Popen([sys.executable, "-m", "localfeat.cli", "extract", str(images), "-o", str(out),
                                 "--model", "sift"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        time.sleep(rng.uniform(2.0, 9.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rc, out_text, err = cli("extract", images, "-o", out, "--model", "sift")
        if rc != 0 or "Traceback" in err:
            record("SIGKILL then rerun", "traceback" if rc != "hang" else "hang", f"kill {k}")
            continue
        final = FeatureStore(out, "r")
        same = final.names() == ref.names() and all(final.get(n).equals(ref.get(n)) for n in ref.names())
        record("SIGKILL then rerun", "ok" if same else "wrong", f"kill {k}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 + 1 trials per concurrency setting, 3 kills")
    parser.add_argument("--trials", type=int, default=20, help="store-API trials per concurrency setting")
    parser.add_argument("--cli-trials", type=int, default=2, help="`localfeat extract` trials per setting")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--only", nargs="*", default=None, help="families to run (function suffixes)")
    args = parser.parse_args()
    trials, cli_trials, kills = (3, 1, 3) if args.quick else (args.trials, args.cli_trials, args.kills)
    families = {"bombs": family_bombs, "disk_full": family_disk_full, "indices": family_indices,
                "hloc": family_hloc, "stores": family_stores, "npz": family_npz, "configs": family_configs,
                "concurrent": lambda w: family_concurrent(w, trials, cli_trials),
                "sigkill": lambda w: family_sigkill(w, kills)}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lf_reliability_") as tmp:
        for name, run in families.items():
            if args.only and name not in args.only:
                continue
            t0 = time.monotonic()
            run(Path(tmp))
            print(f"{name}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    print(f"| family | cases | {' | '.join(OUTCOMES)} |")
    print("|---|---:|" + "---:|" * len(OUTCOMES))
    for family, counts in results.items():
        print(f"| {family} | {sum(counts.values())} | " + " | ".join(str(counts[o]) for o in OUTCOMES) + " |")
    total = collections.Counter()
    for counts in results.values():
        total.update(counts)
    print(f"| **all** | {sum(total.values())} | " + " | ".join(str(total[o]) for o in OUTCOMES) + " |")
    print(f"\n({time.monotonic() - start:.0f} s)")
    for family, lines in notes.items():
        for line in lines:
            print(f"- {family}: {line}")


if __name__ == "__main__":
    main()
