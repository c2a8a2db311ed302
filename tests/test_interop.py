"""What users of hloc, kornia and LightGlue expect (issue 20): each test first reproduces the failure a
user met, then checks the fixed behaviour."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import localfeat
from conftest import fetched_weights, shared
from localfeat.cli import main
from localfeat.io.h5 import FeatureStore, MatchStore, StoreError
from localfeat.io.images import list_images
from localfeat.pairs import read_pairs, write_pairs
from localfeat.pipeline import RunInterrupted

SIFT = {"max_keypoints": 300, "resize_max": 400}


# ----------------------------------------------------------------- hloc's readers, as hloc writes them
# Transcribed from cvg/Hierarchical-Localization (hloc/utils/io.py, hloc/utils/parsers.py,
# hloc/match_features.py FeaturePairsDataset), so the files are checked by hloc's own logic.
def hloc_names_to_pair(name0, name1, separator="/"):
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def hloc_list_h5_names(path):
    names = []
    with h5py.File(str(path), "r", libver="latest") as fd:
        def visit_fn(_, obj):
            if isinstance(obj, h5py.Dataset):
                names.append(obj.parent.name.strip("/"))
        fd.visititems(visit_fn)
    return list(set(names))


def hloc_get_keypoints(path, name):
    with h5py.File(str(path), "r", libver="latest") as hfile:
        return hfile[name]["keypoints"].__array__()


def hloc_feature_pair_data(path, name0, name1):
    """FeaturePairsDataset.__getitem__: every dataset of both groups as float tensors, plus an image
    placeholder shaped from `image_size`; hloc's LightGlue wrapper then transposes descriptors."""
    data = {}
    with h5py.File(str(path), "r") as fd:
        for suffix, name in (("0", name0), ("1", name1)):
            grp = fd[name]
            for k, v in grp.items():
                data[k + suffix] = torch.from_numpy(v.__array__()).float()
            data["image" + suffix] = torch.empty((1,) + tuple(grp["image_size"])[::-1])
    return data


def hloc_get_matches(path, name0, name1):
    with h5py.File(str(path), "r", libver="latest") as hfile:
        pair, reverse = hloc_names_to_pair(name0, name1), False
        if pair not in hfile:
            pair, reverse = hloc_names_to_pair(name1, name0), True
            if pair not in hfile:
                raise ValueError(f"Could not find pair {(name0, name1)}")
        matches = hfile[pair]["matches0"].__array__()
        scores = hfile[pair]["matching_scores0"].__array__()
    idx = np.where(matches != -1)[0]
    matches = np.stack([idx, matches[idx]], -1)
    if reverse:
        matches = np.flip(matches, -1)
    return matches, scores[idx]


def write_like_hloc(path, name, features: localfeat.Features, as_half=True):
    """What hloc's extract_features writes for one image (descriptors (D, N), float16 when as_half)."""
    pred = {"keypoints": features.keypoints, "scores": features.scores,
            "descriptors": features.descriptors.T, "image_size": np.array(features.image_size)}
    if as_half:
        pred = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in pred.items()}
    with h5py.File(str(path), "a", libver="latest") as fd:
        grp = fd.create_group(name)
        for k, v in pred.items():
            grp.create_dataset(k, data=v)


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    """Two HPatches images under names with a folder, a space and Unicode."""
    root = tmp_path_factory.mktemp("imgs")
    names = ["été/façade 1.ppm", "été/日本 2.ppm"]
    for src, name in zip(("1.ppm", "2.ppm"), names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared("hpatches_subset", "v_churchill", src), root / name)
    return root, names


def test_hloc_layout_is_read_by_hlocs_own_code(tmp_path, two_images):
    root, names = two_images
    feats, matches = tmp_path / "features.h5", tmp_path / "matches.h5"
    # Before: localfeat's own layout is not hloc's (descriptors (N, D), image_size an attribute).
    localfeat.extract(root, tmp_path / "ours.h5", model="sift", conf=SIFT)
    with h5py.File(tmp_path / "ours.h5", "r") as f:
        assert "image_size" not in f[names[0]] and f[names[0]]["descriptors"].shape[1] == 128

    sift_args = ["--conf", "max_keypoints=300", "resize_max=400"]
    assert main(["extract", "--model", "sift", str(root), "-o", str(feats), "--layout", "hloc"] + sift_args) == 0
    pairs_file = tmp_path / "pairs.txt"
    write_pairs(pairs_file, [tuple(names)])
    assert main(["match", str(feats), "-o", str(matches), "--pairs", str(pairs_file), "--conf", "ratio=0.9",
                 "--layout", "hloc"]) == 0
    ours = FeatureStore(tmp_path / "ours.h5", mode="r")
    assert sorted(hloc_list_h5_names(feats)) == sorted(names)
    for name in names:
        expected = ours.get(name)
        np.testing.assert_array_equal(hloc_get_keypoints(feats, name), expected.keypoints)
    data = hloc_feature_pair_data(feats, *names)
    f0, f1 = ours.get(names[0]), ours.get(names[1])
    assert data["descriptors0"].shape == (128, len(f0))  # hloc's (D, N)
    np.testing.assert_array_equal(data["descriptors0"].numpy().T, f0.descriptors)
    np.testing.assert_array_equal(data["scores1"].numpy(), f1.scores)
    assert data["image0"].shape == (1, f0.image_size[1], f0.image_size[0])  # (1, H, W) from (W, H)
    reference = localfeat.load_matcher("nearest_neighbor", ratio=0.9).match(f0, f1)
    assert len(reference) > 20
    got, scores = hloc_get_matches(matches, *names)
    np.testing.assert_array_equal(got, reference.indices)
    np.testing.assert_allclose(scores, reference.scores, rtol=0, atol=0)
    flipped, _ = hloc_get_matches(matches, names[1], names[0])  # hloc's reversed lookup
    np.testing.assert_array_equal(flipped, reference.indices[:, ::-1])
    # And localfeat reads its hloc-layout files back unchanged.
    back = FeatureStore(feats, mode="r")
    assert back.file_layout() == "hloc" and back.get(names[0]).equals(f0)
    np.testing.assert_array_equal(MatchStore(matches, mode="r").get(*names).indices, reference.indices)


def test_extracting_into_an_hloc_file_is_refused_and_leaves_it_intact(tmp_path, two_images):
    root, names = two_images
    sift = localfeat.load_extractor("sift", **SIFT)
    path = tmp_path / "hloc_features.h5"
    original = sift.extract(root / names[0])
    write_like_hloc(path, names[0], original)
    before = path.read_bytes()
    # Before the fix: "0 done, 1 already present", then the file was stamped model=sift and unreadable.
    with pytest.raises(StoreError, match="was not written by localfeat .* does not append to it"):
        localfeat.extract(root, path, model="sift", conf=SIFT)
    assert path.read_bytes() == before and not path.with_name(path.name + ".journal").exists()
    got = FeatureStore(path, mode="r").get(names[0])  # still read: (D, N) float16 understood
    assert got.image_size == original.image_size
    np.testing.assert_allclose(got.keypoints, original.keypoints, rtol=1e-3, atol=0.25)  # float16
    np.testing.assert_allclose(got.descriptors, original.descriptors, rtol=0, atol=1e-3)
    # overwrite replaces it
    report = localfeat.extract(root, path, model="sift", conf=SIFT, overwrite=True)
    assert len(report.done) == 2


def test_appending_in_another_layout_is_refused(tmp_path, two_images):
    root, names = two_images
    localfeat.extract([root / names[0]], tmp_path / "f.h5", model="sift", conf=SIFT)
    with pytest.raises(StoreError, match="has the localfeat layout, not hloc"):
        localfeat.extract([root / names[1]], tmp_path / "f.h5", model="sift", conf=SIFT, layout="hloc")


def test_config_mismatch_lists_the_differing_keys(tmp_path, two_images):
    root, names = two_images
    localfeat.extract(root, tmp_path / "f.h5", model="sift", conf=SIFT)
    with pytest.raises(StoreError) as info:
        localfeat.extract(root, tmp_path / "f.h5", model="sift", conf={**SIFT, "max_keypoints": 100})
    assert "differing keys: max_keypoints (stored 300, now 100)" in str(info.value)
    assert "resize_max" not in str(info.value)


# ------------------------------------------------------------------------------------- Python API
def test_extract_takes_a_list_of_paths_and_names_like_the_folder(tmp_path, two_images):
    root, names = two_images
    # Before: localfeat.extract(["a.jpg", "b.jpg"], ...) -> "too many values to unpack".
    localfeat.extract([str(root / n) for n in names], tmp_path / "list.h5", model="sift", conf=SIFT)
    assert FeatureStore(tmp_path / "list.h5", mode="r").names() == ["façade 1.ppm", "日本 2.ppm"]
    localfeat.extract([root / n for n in names], tmp_path / "rooted.h5", model="sift", conf=SIFT, root=root)
    assert FeatureStore(tmp_path / "rooted.h5", mode="r").names() == sorted(names)
    # A list file of absolute paths names images as the folder does (before: '../../...' names).
    listing = tmp_path / "lists" / "images.txt"
    listing.parent.mkdir()
    listing.write_text("".join(f"{root / n}\n" for n in names), encoding="utf-8")
    assert list_images(listing) == (root / "été", ["façade 1.ppm", "日本 2.ppm"])
    assert list_images(listing, root=root) == (root, names)
    assert list_images(root) == (root, sorted(names))
    with pytest.raises(ValueError, match="outside the image root"):
        list_images(listing, root=tmp_path / "lists")


def test_pairs_files_with_spaces_unicode_and_hloc_files(tmp_path, two_images):
    root, names = two_images
    feats = tmp_path / "f.h5"
    localfeat.extract(root, feats, model="sift", conf=SIFT)
    # Before: the line `été/façade 1.ppm été/日本 2.ppm` gave "no features for ['été/façade', '1.ppm']".
    pairs_file = tmp_path / "pairs.txt"
    write_pairs(pairs_file, [tuple(names)])
    assert pairs_file.read_text(encoding="utf-8") == "été/façade 1.ppm\tété/日本 2.ppm\n"
    assert read_pairs(pairs_file) == [tuple(names)]
    # Before: localfeat.match(..., pairs="pairs.txt") -> "not enough values to unpack".
    report = localfeat.match(feats, tmp_path / "m.h5", pairs=pairs_file)
    assert report.done == [f"{names[0]} {names[1]}"] and not report.failed
    assert len(MatchStore(tmp_path / "m.h5", mode="r").get(*names)) > 20
    # hloc's files (space separated, extra columns, comments) keep working.
    (tmp_path / "hloc_pairs.txt").write_text("# from hloc\na.jpg b.jpg\nsub/c.jpg  d.jpg 0.5\n")
    assert read_pairs(tmp_path / "hloc_pairs.txt") == [("a.jpg", "b.jpg"), ("sub/c.jpg", "d.jpg")]
    with pytest.raises(ValueError, match="holds a tab"):
        write_pairs(tmp_path / "bad.txt", [("a\tb", "c")])


def test_extractors_take_kornia_tensors_and_float_images_by_a_range_rule():
    image = (np.random.default_rng(0).random((96, 128, 3)) * 255).round().astype(np.uint8)
    sift = localfeat.load_extractor("sift", max_keypoints=200)
    expected = sift.extract(image)
    assert len(expected) > 20
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255  # kornia: (C, H, W) in [0, 1]
    assert sift.extract(tensor).equals(expected)
    assert sift.extract(tensor[None]).equals(expected)  # (1, C, H, W)
    batch = sift.extract(torch.stack([tensor, tensor.flip(-1)]))  # (B, C, H, W) -> B Features
    assert isinstance(batch, list) and len(batch) == 2 and batch[0].equals(expected)
    assert batch[1].equals(sift.extract(np.ascontiguousarray(image[:, ::-1])))
    # Before: a float image in 0-255 was clipped to [0, 1] (all white) without a word.
    assert sift.extract(image.astype(np.float32)).equals(expected)
    assert sift.extract(image.astype(np.float64) / 255).equals(expected)
    with pytest.raises(ValueError, match=r"values span \[-1, 255\]; expected \[0, 1\] or \[0, 255\]"):
        negative = image.astype(np.float32)
        negative[0, 0, 0] = -1
        sift.extract(negative)
    with pytest.raises(ValueError, match=r"image tensor has shape \(2, 96, 128\)"):
        sift.extract(tensor[:2])


def test_features_and_matches_have_a_short_repr():
    f = localfeat.Features(np.zeros((3, 2)), np.ones(3), np.eye(3, 4), (640, 480), scales=np.ones(3))
    assert repr(f) == "Features(3 keypoints, descriptors 4-D float32, image_size=(640, 480), scales)"
    assert repr(localfeat.Matches(np.array([[0, 1], [2, 0]]), np.array([0.5, 1.0]))) == \
        "Matches(2 matches, mean score 0.75)"


def test_lightglue_uses_the_extractor_recorded_in_the_store(tmp_path):
    fetched_weights("aliked_lightglue.pth")
    images = [shared("pairs_lightglue", n) for n in ("sacre_coeur1.jpg", "sacre_coeur2.jpg")]
    feats = tmp_path / "aliked.h5"
    localfeat.extract(images, feats, model="aliked", conf={"resize_max": 640, "n_limit": 1024})
    pairs = [("sacre_coeur1.jpg", "sacre_coeur2.jpg")]
    # Before: lightglue defaulted to features=superpoint and asked for superpoint_lightglue.pth.
    report = localfeat.match(feats, tmp_path / "m.h5", pairs, matcher="lightglue")
    assert len(report.done) == 1
    explicit = localfeat.load_matcher("lightglue", features="aliked")
    store = FeatureStore(feats, mode="r")
    expected = explicit.match(store.get(pairs[0][0]), store.get(pairs[0][1]))
    got = MatchStore(tmp_path / "m.h5", mode="r").get(*pairs[0])
    assert len(expected) > 20
    np.testing.assert_array_equal(got.indices, expected.indices)
    # A store of an extractor without LightGlue weights: a clear error.
    localfeat.extract(images, tmp_path / "sift.h5", model="sift", conf=SIFT)
    with pytest.raises(localfeat.ConfigError, match="lightglue has no official weights for sift features"):
        localfeat.match(tmp_path / "sift.h5", tmp_path / "m2.h5", pairs, matcher="lightglue")


# ------------------------------------------------------------------------------ ordinary mistakes
def _unwritable_folder(tmp_path) -> Path:
    """A folder this process cannot write in: a read-only one when not root, else /sys (read-only for root)."""
    import os

    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    return Path("/sys")


def test_read_only_output_folder_fails_before_any_work(tmp_path, two_images):
    root, _ = two_images
    folder = _unwritable_folder(tmp_path)
    calls = []

    class Counting:  # fails the test if extraction started
        name, conf, conf_hash, input_mode = "sift", {}, "x", "rgb"

        def extract(self, image):
            calls.append(1)

    with pytest.raises(StoreError, match=f"cannot write {folder}/f.h5: its folder {folder} is not writable"):
        localfeat.extract(root, folder / "f.h5", extractor=Counting())
    assert calls == []


def test_ctrl_c_saves_what_was_done_and_a_rerun_resumes(tmp_path, two_images):
    root, names = two_images
    sift = localfeat.load_extractor("sift", **SIFT)

    class InterruptedSecond:
        name, conf, conf_hash, input_mode = sift.name, sift.conf, sift.conf_hash, "rgb"
        count = 0

        def extract(self, image):
            self.count += 1
            if self.count == 2:
                raise KeyboardInterrupt
            return sift.extract(image)

    with pytest.raises(RunInterrupted) as info:
        localfeat.extract(root, tmp_path / "f.h5", extractor=InterruptedSecond())
    assert info.value.report.done == [names[0]]
    assert "1 done" in str(info.value)
    assert FeatureStore(tmp_path / "f.h5", mode="r").names() == [names[0]]  # saved, readable
    report = localfeat.extract(root, tmp_path / "f.h5", model="sift", conf=SIFT)
    assert [n for n, _ in report.skipped] == [names[0]] and report.done == [names[1]]


def test_sfm_registers_photos_with_spaces_and_unicode_in_their_names(tmp_path):
    import pycolmap
    from localfeat.sfm import reconstruct

    photos = sorted(shared("sfm_sacre_coeur_hloc", "mapping").glob("*.jpg"))
    root = tmp_path / "photos"
    # Names sort in the order of the originals, so COLMAP sees the same problem as with plain names.
    names = [f"été à Paris/{i:02d} façade 日本.jpg" for i in range(len(photos))]
    for src, name in zip(photos, names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / name)
    # Before: COLMAP's pairs-file reader split "été à Paris/00 façade 日本.jpg" at the first space
    # ("Image été does not exist") and no image was registered.
    summary = reconstruct(root, tmp_path / "out", model="sift", conf={"max_keypoints": 2048, "resize_max": 1024},
                          seed=0, num_threads=1)  # one thread: COLMAP's mapping is deterministic
    assert summary["num_images"] == 10
    assert sorted(summary["registered_images"]) == names
    assert read_pairs(tmp_path / "out" / "pairs.txt")[0] == (names[0], names[1])
    rec = pycolmap.Reconstruction(str(tmp_path / "out" / "sparse"))
    assert sorted(im.name for im in rec.images.values()) == names


# ------------------------------------------------------------------------- the command line's answers
def _one_line_error(capsys, verb: str, *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"localfeat {verb}: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_cli_conf_items_leave_the_positional_argument_alone(tmp_path, two_images):
    root, names = two_images
    # Before: `--conf max_keypoints=200 IMAGES` took IMAGES as a config item ("the following arguments
    # are required: images").
    assert main(["extract", "--model", "sift", "--conf", "max_keypoints=200", "resize_max=400", str(root), "-o",
                 str(tmp_path / "f.h5")]) == 0
    store = FeatureStore(tmp_path / "f.h5", mode="r")
    assert store.names() == sorted(names) and store.stored_conf()["max_keypoints"] == 200
    assert max(len(store.get(n)) for n in names) == 200
    from localfeat.cli.args import attach_key_values

    assert attach_key_values(["x", "--conf", "a=1", "b=[1,2]", "IMG", "--conf", "c=3", "-o", "o"]) == \
        ["x", "--conf=a=1", "--conf=b=[1,2]", "IMG", "--conf=c=3", "-o", "o"]


def test_cli_failed_images_give_exit_code_3_and_keep_the_rest(tmp_path, two_images, capsys):
    root, names = two_images
    images = tmp_path / "imgs"
    shutil.copytree(root, images)
    (images / "broken.png").write_bytes(b"not an image")
    # Before: `--on-error skip` exited 0 although an image had failed.
    assert main(["extract", "--model", "sift", str(images), "-o", str(tmp_path / "f.h5"),
                 "--conf", "max_keypoints=100"]) == 3
    assert "1 failed" in capsys.readouterr().out
    assert FeatureStore(tmp_path / "f.h5", mode="r").names() == sorted(names)


def test_cli_ordinary_mistakes_are_one_line_errors(tmp_path, two_images, capsys):
    root, names = two_images
    feats = tmp_path / "f.h5"
    assert main(["extract", "--model", "sift", str(root), "-o", str(feats), "--conf", "max_keypoints=100"]) == 0
    capsys.readouterr()
    # ratio=1.5 was accepted (every distance passes a ratio above 1).
    assert main(["match", str(feats), "-o", str(tmp_path / "m.h5"), "--exhaustive", "--conf", "ratio=1.5"]) == 2
    _one_line_error(capsys, "match", "ratio", "1.5")
    # `view` of an image that is not in the store: was a KeyError traceback.
    other = tmp_path / "other.ppm"
    shutil.copy(root / names[0], other)
    assert main(["view", str(other), "--features", str(feats), "-o", str(tmp_path / "v.png")]) == 2
    _one_line_error(capsys, "view", "has no image named 'other.ppm'", "--root")
    # A second `train -o` into an existing run: was a TrainError traceback.
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,loss\n1,0.5\n")
    assert main(["train", "--config", "smoke", "-o", str(run)]) == 2
    _one_line_error(capsys, "train", "already holds a run", "--resume")
    # Output in a folder that cannot be written: was a PermissionError traceback after the first image.
    folder = _unwritable_folder(tmp_path)
    assert main(["extract", "--model", "sift", str(root), "-o", str(folder / "f.h5")]) == 2
    _one_line_error(capsys, "extract", "is not writable", "choose another output path")
    # Extracting into the store with another config: the differing keys are named.
    assert main(["extract", "--model", "sift", str(root), "-o", str(feats), "--conf", "max_keypoints=50"]) == 2
    _one_line_error(capsys, "extract", "differing keys: max_keypoints (stored 100, now 50)")


def test_cli_ctrl_c_says_what_was_saved_and_how_to_resume(tmp_path, two_images, capsys, monkeypatch):
    import localfeat.pipeline as pipeline

    root, names = two_images
    real = pipeline.load_extractor

    def interrupted_after_one(name, **conf):
        extractor = real(name, **conf)
        calls = []
        original = extractor.extract_prepared  # the network step the batch pipeline runs in the main thread

        def extract(prepared):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt  # what Ctrl-C raises in the main thread
            return original(prepared)

        extractor.extract_prepared = extract
        return extractor

    monkeypatch.setattr(pipeline, "load_extractor", interrupted_after_one)
    out = tmp_path / "f.h5"
    # Before: 12 frames of KeyboardInterrupt traceback and no word on what was kept.
    assert main(["extract", "--model", "sift", str(root), "-o", str(out), "--conf", "max_keypoints=100"]) == 130
    _one_line_error(capsys, "extract", "interrupted: 1 done", f"saved in {out}", "rerun the same command to resume")
    monkeypatch.setattr(pipeline, "load_extractor", real)
    assert main(["extract", "--model", "sift", str(root), "-o", str(out), "--conf", "max_keypoints=100"]) == 0
    assert "1 done, 1 already present" in capsys.readouterr().out


def test_view_draws_title_legend_ransac_inliers_in_the_requested_format(tmp_path, two_images, capsys):
    import cv2

    root, names = two_images
    feats, matches = tmp_path / "f.h5", tmp_path / "m.h5"
    assert main(["extract", "--model", "sift", str(root), "-o", str(feats), "--conf", "max_keypoints=500"]) == 0
    assert main(["match", str(feats), "-o", str(matches), "--exhaustive"]) == 0
    capsys.readouterr()
    out = tmp_path / "pair.jpg"
    assert main(["view", str(root / names[0]), str(root / names[1]), "--root", str(root), "--features",
                 str(feats), "--matches", str(matches), "--ransac", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    # Before: PNG bytes in a .jpg file, no title, no legend, every line drawn, no inlier colouring.
    assert out.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG
    m = MatchStore(matches, mode="r").get(*names)
    f0, f1 = (FeatureStore(feats, mode="r").get(n) for n in names)
    from localfeat.geometry import fundamental_inliers

    inliers = fundamental_inliers(f0.keypoints[m.indices[:, 0]], f1.keypoints[m.indices[:, 1]], 1.0)
    assert 0 < inliers.sum() < len(m) and len(m) > 300
    assert f"500 / 500 keypoints, {len(m)} matches, {int(inliers.sum())} RANSAC inliers" in printed
    picture = cv2.imread(str(out))[..., ::-1]
    h = max(cv2.imread(str(root / n)).shape[0] for n in names)
    header = picture[: picture.shape[0] - h]
    assert 40 <= len(header) <= 200  # title lines and legend above the images
    from localfeat.viz import GREEN, RED

    for colour in (GREEN, RED):  # legend swatches (JPEG: within a small tolerance)
        assert (np.abs(header.astype(int) - colour).max(axis=2) < 40).sum() > 50
    assert (header.min(axis=2) < 60).sum() > 200  # black title text
    with pytest.raises(ValueError, match="cannot tell the image format from the extension '.pgx'"):
        from localfeat.viz import save_image

        save_image(tmp_path / "x.pgx", picture)


def test_every_extractor_downscales_huge_images_by_default():
    import cv2

    from localfeat.extractors.base import DEFAULT_RESIZE_MAX
    from localfeat.registry import model_classes

    # Before: no default resize (ALIKED on a 6000 x 4000 photo peaked at 7.4 GB; see
    # benchmarks/bench_default_resize_memory.py for the figures with the default).
    assert DEFAULT_RESIZE_MAX == 1600
    assert {name: cls.all_defaults()["resize_max"] for name, cls in model_classes("extractor").items()} == \
        {name: 1600 for name in model_classes("extractor")}
    photo = cv2.imread(str(shared("hpatches_subset", "v_churchill", "1.ppm")))[..., ::-1]
    huge = np.ascontiguousarray(cv2.resize(photo, (2400, 1800), interpolation=cv2.INTER_CUBIC))
    default = localfeat.load_extractor("sift", max_keypoints=500).extract(huge)
    explicit = localfeat.load_extractor("sift", max_keypoints=500, resize_max=1600).extract(huge)
    full = localfeat.load_extractor("sift", max_keypoints=500, resize_max=None).extract(huge)
    assert default.equals(explicit) and default.image_size == full.image_size == (2400, 1800)
    assert not np.array_equal(default.keypoints, full.keypoints)
    assert (default.keypoints.max(axis=0) <= [2399.5, 1799.5]).all() and default.keypoints[:, 0].max() > 1600


# ------------------------------------------------------------------------------------------- kornia
def test_kornia_lafs_follow_kornias_conventions_and_round_trip(two_images):
    import math

    from localfeat.kornia import from_kornia, to_kornia

    # One keypoint by hand: centre (10, 20), patch diameter 8 -> LAF scale 4 (the radius); orientation
    # pi/2 -> kornia angle -90 deg -> A = 4 R(-90) = 4 [[0, -1], [1, 0]].
    f = localfeat.Features([[10.0, 20.0]], [0.5], [[0.6, 0.8]], (64, 48), scales=[8.0], orientations=[math.pi / 2])
    lafs, responses, descs = to_kornia(f)
    assert lafs.shape == (1, 1, 2, 3) and responses.shape == (1, 1) and descs.shape == (1, 1, 2)
    torch.testing.assert_close(lafs[0, 0], torch.tensor([[0.0, -4.0, 10.0], [4.0, 0.0, 20.0]]), atol=1e-6, rtol=0)
    # kornia's own readers (transcribed from kornia.feature.laf) give back centre, scale and angle.
    scale = (lafs[..., 0:1, 0:1] * lafs[..., 1:2, 1:2] - lafs[..., 1:2, 0:1] * lafs[..., 0:1, 1:2]).abs().sqrt()
    angle = torch.rad2deg(torch.atan2(lafs[..., 0, 1], lafs[..., 0, 0]))
    assert float(scale) == pytest.approx(4.0) and float(angle) == pytest.approx(-90.0)
    # Real SIFT features: to kornia and back, and OpenCV's keypoint as kornia-moons converts ORB's
    # (size = LAF scale / 0.5, angle = -LAF angle).
    root, names = two_images
    sift = localfeat.load_extractor("sift", **SIFT).extract(root / names[0])
    back = from_kornia(*to_kornia(sift), image_size=sift.image_size)
    np.testing.assert_allclose(back.keypoints, sift.keypoints, atol=1e-3, rtol=0)
    np.testing.assert_allclose(back.scales, sift.scales, rtol=1e-5)
    diff = np.remainder(back.orientations - sift.orientations + math.pi, 2 * math.pi) - math.pi
    assert np.abs(diff).max() < 1e-5
    np.testing.assert_array_equal(back.descriptors, sift.descriptors)
    np.testing.assert_array_equal(back.scores, sift.scores)
    lafs, _, _ = to_kornia(sift)
    cv_size = 2 * (lafs[0, :, 0, 0] * lafs[0, :, 1, 1] - lafs[0, :, 0, 1] * lafs[0, :, 1, 0]).abs().sqrt()
    cv_angle = np.remainder(-np.degrees(torch.atan2(lafs[0, :, 0, 1], lafs[0, :, 0, 0]).numpy()), 360)
    np.testing.assert_allclose(cv_size.numpy(), sift.scales, rtol=1e-5)
    np.testing.assert_allclose(np.radians(cv_angle), np.remainder(sift.orientations, 2 * math.pi), atol=1e-4)
    # A batch of two images with the same N; a ragged batch is refused.
    two = to_kornia([sift, sift.select(np.arange(len(sift))[::-1])])
    assert two[0].shape == (2, len(sift), 2, 3)
    assert [len(x) for x in from_kornia(*two, image_size=[sift.image_size] * 2)] == [len(sift)] * 2
    with pytest.raises(ValueError, match="same number of keypoints"):
        to_kornia([sift, sift.select(np.arange(3))])
    with pytest.raises(localfeat.ContractError, match=r"lafs has shape \(1, 5, 2, 2\)"):
        from_kornia(torch.zeros(1, 5, 2, 2), None, torch.zeros(1, 5, 8), (10, 10))


# ------------------------------------------------------------------------------------ eval pictures
def test_hpatches_plot_says_what_set_each_curve_is_on_and_hides_empty_panels(tmp_path):
    import cv2

    from localfeat.eval.plots import figure_title, plot_mma, visible_panels

    curve = [0.2, 0.5, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96]
    results = {
        "dataset": {"sequences": {"i": 0, "v": 2}, "n_pairs": 10},
        "methods": {"sift": {"thresholds": list(range(1, 11)), "mma_overall": curve, "mma_illumination": None,
                             "mma_viewpoint": curve}},
        "published": {"r2d2": {"thresholds": list(range(1, 11)), "mma_overall": curve, "mma_illumination": curve,
                               "mma_viewpoint": curve,
                               "n_pairs": {"overall": 540, "illumination": 260, "viewpoint": 280}}},
    }
    # Before: an Illumination panel with no data of ours, and no word that the published curves are on
    # the full HPatches set while ours are on a 10-pair subset.
    assert visible_panels(results) == [("mma_overall", "Overall"), ("mma_viewpoint", "Viewpoint")]
    title = figure_title(results)
    assert "0 illumination + 2 viewpoint sequences, 10 pairs" in title
    assert "published (dashed): from each paper's own run on its HPatches set (540 pairs), not on these" in title
    path = plot_mma(results, tmp_path / "mma.png")
    assert cv2.imread(str(path)).shape[1] == 1000  # two 5-inch panels at 100 dpi (three were 1500 px)
    results["methods"]["sift"]["mma_illumination"] = curve
    assert len(visible_panels(results)) == 3


def test_every_verb_and_verb_group_help_ends_with_an_example():
    import argparse

    from localfeat.cli.main import build_parser

    def sub_verbs(parser):
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return actions[0].choices if actions else {}

    checked = 0
    for verb, parser in sub_verbs(build_parser()).items():
        for name, p in [(verb, parser)] + [(f"{verb} {k}", v) for k, v in sub_verbs(parser).items()]:
            last = p.format_help().rstrip().splitlines()
            # Before: `localfeat export --help` (and the other groups) ended with the option list.
            assert last[-1].startswith("  localfeat "), (name, last[-3:])
            assert any(line in ("example:", "examples:") for line in last[-12:]), name
            checked += 1
    assert checked >= 25


def test_docs_link_only_files_of_the_repository_and_cite_no_internal_issues():
    import re

    repo = Path(__file__).resolve().parents[1]
    pages = [repo / "README.md"] + sorted((repo / "docs").glob("*.md"))
    for page in pages:
        text = page.read_text(encoding="utf-8")
        # Before: docs/lightglue.md and docs/hpatches.md pointed at a DESIGN.md that is not in the
        # repository, and docs cited "the note of issue 6".
        assert not re.search(r"\bissues? #?\d+", text, re.IGNORECASE), page.name
        assert "DESIGN.md" not in text and "STYLE.md" not in text, page.name
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.name} links {target}, which is not in the repository"


def test_sfm_pairs_file_names_may_hold_spaces(tmp_path):
    from localfeat.sfm import resolve_pairs

    names = ["été/façade 1.jpg", "été/日本 2.jpg", "c.jpg"]
    path = tmp_path / "my  pairs.txt"  # two spaces: was read as 'my pairs.txt' (not found)
    write_pairs(path, [(names[0], names[1]), (names[1], names[2])])
    assert resolve_pairs(str(path), names) == [(names[0], names[1]), (names[1], names[2])]
    assert resolve_pairs(path, names) == [(names[0], names[1]), (names[1], names[2])]  # was a TypeError
    assert resolve_pairs("exhaustive", names)[0] == (names[0], names[1])
