"""Retrieval: voting (hand case, memory-bounded blocks), AP, and real photos (ALIKED official weights, KITTI
distractors) through the Python API and the CLI; untrained DeLF end to end."""
import json

import cv2
import numpy as np
import pytest
import torch

from conftest import shared
from localfeat.cli import main
from localfeat.io.images import read_image
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
    # the picture: one 360-px row per result (query, 10-px gap, result), each followed by 6 white rows
    picture = read_image(tmp_path / "r.png")
    assert picture.shape[0] == 3 * (360 + 6)
    query_img = read_image(q)
    for k, item in enumerate(out):
        row = picture[k * 366:k * 366 + 360]
        a = cv2.resize(query_img, (round(query_img.shape[1] * 360 / query_img.shape[0]), 360),
                       interpolation=cv2.INTER_AREA)
        other = read_image(photos / item["image"])
        b = cv2.resize(other, (round(other.shape[1] * 360 / other.shape[0]), 360), interpolation=cv2.INTER_AREA)
        # lines and the caption cover a part of each image: most pixels are the images themselves
        left, right = row[:, :a.shape[1]].astype(int), row[:, a.shape[1] + 10:a.shape[1] + 10 + b.shape[1]]
        assert np.median(np.abs(left - a).max(-1)) <= 2 and np.median(np.abs(right.astype(int) - b).max(-1)) <= 2
        assert (picture[k * 366 + 360:(k + 1) * 366] == 255).all()
    assert main(["retrieve", "query", str(tmp_path / "nope"), str(q)]) == 2   # missing index: a clear error


def test_untrained_delf_runs_end_to_end(photos, tmp_path):
    torch.manual_seed(0)
    conf = {"arch": "resnet18", "score_threshold": None, "scales": [0.5, 1.0], "max_keypoints": 100,
            "resize_max": 160, "device": "cpu"}
    index = build_index(photos, tmp_path / "idx", model="delf", conf=conf)
    r = Retriever(index, device="cpu")
    assert r.database.shape[1] == 256 and len(r.names) == 9
    feats = [r.features(name) for name in r.names]
    assert all(0 < len(f) <= 100 for f in feats) and len(r.database) == sum(len(f) for f in feats)
    np.testing.assert_allclose(r.database.norm(dim=1).numpy(), 1, atol=1e-5)
    query = photos / "kitti" / "000100.png"
    res = r.query(query, top=None, method="homography")
    names = [x.image for x in res]
    assert sorted(names) == sorted(n for n in r.names if n != "kitti/000100.png")   # every image but the query
    # the votes, recomputed by brute force: each query descriptor votes once for each image among its
    # 5 most similar database descriptors (the query's own rows left out)
    q = r.extractor.extract(query).descriptors
    owner = r.owner.numpy()
    sim = q @ r.database.numpy().T
    sim[:, owner == r.names.index("kitti/000100.png")] = -np.inf
    top5 = np.argsort(-sim, axis=1, kind="stable")[:, :5]
    expected = {name: int(sum(i in set(owner[row]) for row in top5)) for i, name in enumerate(r.names)}
    assert {x.image: x.votes for x in res} == {n: expected[n] for n in names}
    # ranked by inliers, then votes; score = inliers + votes / (1 + most votes)
    assert [(x.inliers, x.votes) for x in res] == sorted(((x.inliers, x.votes) for x in res), reverse=True)
    vmax = max(x.votes for x in res)
    for x in res:
        assert x.score == pytest.approx(x.inliers + x.votes / (1 + vmax), abs=1e-12)
        assert x.inliers == 0 or 15 <= x.inliers <= min(len(q), 100)
