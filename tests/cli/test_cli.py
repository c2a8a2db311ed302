"""The CLI end to end on the 10 real Sacre Coeur photos (issue 2 acceptance)."""
import itertools

import cv2
import h5py
import numpy as np
import pytest

from localfeat.cli import main
from localfeat.io.h5 import FeatureStore, MatchStore
from localfeat.io.images import read_image
from localfeat.viz import side_by_side
from conftest import shared


@pytest.fixture(scope="module")
def sacre_coeur_run(tmp_path_factory):
    images = shared("sfm_sacre_coeur_hloc", "mapping")
    out = tmp_path_factory.mktemp("cli")
    assert main(["extract", str(images), "-o", str(out / "features.h5"), "--model", "sift",
                 "--conf", "max_keypoints=1024", "--resize-max", "800"]) == 0
    assert main(["match", str(out / "features.h5"), "-o", str(out / "matches.h5"), "--exhaustive",
                 "--conf", "ratio=0.9"]) == 0
    return images, out


def test_extract_and_match_files_follow_the_contract(sacre_coeur_run):
    images, out = sacre_coeur_run
    names = sorted(p.name for p in images.glob("*.jpg"))
    feats = FeatureStore(out / "features.h5", "r")
    assert feats.names() == names
    for name in names:
        f = feats.get(name)
        w, h = f.image_size
        assert (h, w) == read_image(images / name).shape[:2]  # original size, not the resized one
        assert 0 < len(f) <= 1024 and f.descriptors.shape == (len(f), 128)
        assert f.keypoints[:, 0].max() <= w - 0.5 and f.keypoints[:, 1].max() <= h - 0.5
        assert f.keypoints.min() >= -0.5
    with h5py.File(out / "features.h5", "r") as hf:
        assert hf[names[0]].attrs["model"] == "sift"
    matches = MatchStore(out / "matches.h5", "r")
    assert sorted(matches.pairs()) == sorted(itertools.combinations(names, 2))
    counts = []
    for a, b in matches.pairs():
        m = matches.get(a, b)
        assert m.indices.dtype == np.int64 and m.scores.dtype == np.float32
        m.check_against(feats.get(a), feats.get(b))
        assert len(np.unique(m.indices[:, 0])) == len(m) and len(np.unique(m.indices[:, 1])) == len(m)  # mutual
        counts.append(len(m))
    assert max(counts) > 100


def test_view_writes_a_match_picture_that_differs_from_the_plain_images(sacre_coeur_run):
    images, out = sacre_coeur_run
    names = sorted(p.name for p in images.glob("*.jpg"))[:2]
    png = out / "pair.png"
    assert main(["view", str(images / names[0]), str(images / names[1]), "--features", str(out / "features.h5"),
                 "--matches", str(out / "matches.h5"), "-o", str(png)]) == 0
    picture = read_image(png)
    plain, _ = side_by_side(read_image(images / names[0]), read_image(images / names[1]))
    header = len(picture) - len(plain)  # title and legend above the pair
    assert 40 <= header <= 200 and picture.shape[1:] == plain.shape[1:]
    picture = picture[header:]
    changed = np.any(picture != plain, axis=2).mean()
    assert changed > 0.01  # lines drawn over at least 1% of the pixels

    inliers = out / "inliers.npy"
    n = len(MatchStore(out / "matches.h5", "r").get(names[0], names[1]))
    np.save(inliers, np.arange(n) % 2 == 0)
    assert main(["view", str(images / names[0]), str(images / names[1]), "--features", str(out / "features.h5"),
                 "--matches", str(out / "matches.h5"), "--inliers", str(inliers), "-o", str(out / "in.png")]) == 0
    colored = read_image(out / "in.png")
    assert (np.all(colored == [230, 40, 40], axis=2).sum() > 50) and (np.all(colored == [40, 200, 60], axis=2).sum() > 50)

    kp_png = out / "kp.png"
    assert main(["view", str(images / names[0]), "--features", str(out / "features.h5"), "-o", str(kp_png)]) == 0
    drawn, plain = read_image(kp_png), read_image(images / names[0])
    assert drawn.shape[1:] == plain.shape[1:] and 40 <= len(drawn) - len(plain) <= 200  # a title above
    assert np.any(drawn[len(drawn) - len(plain):] != plain)


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["extract", str(tmp_path / "nowhere"), "-o", str(tmp_path / "f.h5")]) == 2
    assert "no such folder, image, image list or pattern" in capsys.readouterr().err
    (tmp_path / "imgs").mkdir()
    assert "no images in folder" not in capsys.readouterr().err
    assert main(["extract", str(tmp_path / "imgs"), "-o", str(tmp_path / "f.h5")]) == 2
    assert "no images in folder" in capsys.readouterr().err
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), np.zeros((8, 8), np.uint8))
    assert main(["extract", str(tmp_path / "imgs"), "-o", str(tmp_path / "f.h5"), "--conf", "nope=1"]) == 2
    assert "unknown config key(s) ['nope']" in capsys.readouterr().err


def test_every_verb_help_shows_an_example(capsys):
    for verb in (["extract"], ["match"], ["view"], ["models"], ["export", "npz"], ["import", "npz"], ["demo"]):
        with pytest.raises(SystemExit):
            main(verb + ["--help"])
        assert "example:\n  localfeat " in capsys.readouterr().out


def test_view_heatmaps_of_r2d2_at_the_resized_size(tmp_path):
    image = shared("hpatches_subset", "v_dogman", "1.ppm")  # 788 x 522
    png = tmp_path / "maps.png"
    assert main(["view", str(image), "--heatmaps", "--model", "r2d2", "--conf", "variant=faster2d2_WASF_N16",
                 "--resize-max", "200", "-o", str(png)]) == 0
    picture = read_image(png)
    # image + reliability + repeatability panels of the 200 x 132 image, 10 px gaps
    assert picture.shape == (132, 3 * 200 + 2 * 10, 3)
    assert np.any(picture[:, 210:410] != picture[:, :200])


def test_threads_option_sets_torch_threads(tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "models"]) == 0
        assert torch.get_num_threads() == 1
        assert main(["--threads", "0", "models"]) == 2
        assert "--threads must be >= 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
