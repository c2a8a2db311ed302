"""Retrieval: voting (hand case, memory-bounded blocks), AP, and real photos (ALIKED official weights, KITTI
distractors) through the Python API and the CLI; untrained DeLF end to end."""
import json

import numpy as np
import pytest
import torch

from conftest import shared
from localfeat.cli import main
from localfeat.retrieval import Retriever, average_precision, build_index, vote
from localfeat.train.delf import build_class_folders


def test_vote_hand_case_and_blocks():
    db = torch.tensor([[1, 0], [0.8, 0.6], [0, 1], [-1, 0], [0.6, 0.8]], dtype=torch.float32)
    owner = torch.tensor([0, 0, 1, 2, 1])
    q = torch.tensor([[1, 0], [0, 1]], dtype=torch.float32)
    # knn=2: q0 -> rows 0, 1 (image 0 once); q1 -> rows 2, 4 (image 1 once)
    assert vote(q, db, owner, 3, knn=2).tolist() == [1, 1, 0]
    # knn=3: q0 -> rows 0, 1, 4 (images 0, 1); q1 -> rows 2, 4, 1 (images 1, 0)
    assert vote(q, db, owner, 3, knn=3).tolist() == [2, 2, 0]
    # exclude image 0: rows 2, 3, 4 remain, each query sees all three (images 1 and 2)
    assert vote(q, db, owner, 3, knn=3, exclude=0).tolist() == [0, 2, 2]
    assert vote(q, db, owner, 3, knn=1, exclude=0).tolist() == [0, 2, 0]
    rng = torch.Generator().manual_seed(0)
    big = torch.nn.functional.normalize(torch.randn(500, 16, generator=rng), dim=1)
    own = torch.randint(0, 7, (500,), generator=rng)
    qq = torch.nn.functional.normalize(torch.randn(40, 16, generator=rng), dim=1)
    np.testing.assert_array_equal(vote(qq, big, own, 7, knn=4, block=37), vote(qq, big, own, 7, knn=4, block=10_000))


def test_average_precision_hand_case():
    assert average_precision([True, False, True, False], 2) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([False, True], 3) == pytest.approx(0.5 / 3)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    sc = sorted(shared("sfm_sacre_coeur_hloc", "mapping").glob("*.jpg"))[:3]
    sp = [shared("phototourism_aliked", "st_pauls_cathedral", f"{i}.jpg") for i in (1, 3, 5)]
    kt = [shared("kitti_seq_alike", f"0001{i:02d}.png") for i in (0, 10, 19)]
    for scene, files in (("sacre_coeur", sc), ("st_pauls", sp), ("kitti", kt)):
        (root / scene).mkdir()
        for f in files:
            (root / scene / f.name).symlink_to(f)
    return root


def test_aliked_retrieval_on_real_photos(photos, tmp_path):
    index = build_index(photos, tmp_path / "index", model="aliked", conf={"resize_max": 320})
    r = Retriever(index, device="cpu")
    assert len(r.names) == 9
    for name in r.names:
        scene = name.split("/")[0]
        if scene == "kitti":
            continue
        res = r.query(photos / name, top=None, features=r.features(name))
        assert len(res) == 8 and name not in [x.image for x in res]          # the query itself is excluded
        assert [x.image.split("/")[0] for x in res[:2]] == [scene, scene]    # both same-scene images first
        distractor = max(x.inliers for x in res if not x.image.startswith(scene))
        assert res[1].inliers > distractor and res[0].inliers >= 30
        assert [x.score for x in res] == sorted((x.score for x in res), reverse=True)


def test_cli_query_json_and_picture(photos, tmp_path):
    assert main(["retrieve", "index", str(photos), "-o", str(tmp_path / "idx"), "--model", "sift",
                 "--resize-max", "320", "--conf", "max_keypoints=800"]) == 0
    q = photos / "st_pauls" / "1.jpg"
    assert main(["retrieve", "query", str(tmp_path / "idx"), str(q), "--top", "3", "--json", str(tmp_path / "r.json"),
                 "--picture", str(tmp_path / "r.png"), "--device", "cpu"]) == 0
    out = json.loads((tmp_path / "r.json").read_text())
    assert len(out) == 3 and set(out[0]) == {"image", "score", "inliers"}
    assert out[0]["image"].startswith("st_pauls/") and out[0]["image"] != "st_pauls/1.jpg"
    assert out[0]["score"] >= out[1]["score"] >= out[2]["score"] and out[0]["inliers"] >= 15
    assert (tmp_path / "r.png").stat().st_size > 10_000
    assert main(["retrieve", "query", str(tmp_path / "nope"), str(q)]) == 2   # missing index: a clear error


def test_untrained_delf_runs_end_to_end(photos, tmp_path):
    torch.manual_seed(0)
    conf = {"arch": "resnet18", "score_threshold": None, "scales": [0.5, 1.0], "max_keypoints": 100,
            "resize_max": 160, "device": "cpu"}
    index = build_index(photos, tmp_path / "idx", model="delf", conf=conf)
    r = Retriever(index, device="cpu")
    assert r.database.shape[1] == 256 and len(r.names) == 9
    res = r.query(photos / "kitti" / "000100.png", top=None, method="homography")
    assert len(res) == 8 and all(isinstance(x.inliers, int) for x in res)
