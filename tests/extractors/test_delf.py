"""DeLF: extraction on a real image (top-k, box IoU after NMS, pyramid scales, PCA), checkpoint round trip,
and a short stage-1 + stage-2 training run on a class-per-folder set built from the shared photos."""
import json

import numpy as np
import pytest
import torch

from conftest import shared
from localfeat import load_extractor
from localfeat.extractors.delf import DELF_SCALES, DelfNet, fit_pca, receptive_boxes
from localfeat.io.images import read_image, resize_max
from localfeat.ops import box_iou_nms
from localfeat.registry import ConfigError
from localfeat.train.delf import DelfTrainConf, build_class_folders, save_delf_checkpoint, train_delf


def _pairwise_iou(b):
    x0 = np.maximum(b[:, None, 0], b[None, :, 0]); y0 = np.maximum(b[:, None, 1], b[None, :, 1])
    x1 = np.minimum(b[:, None, 2], b[None, :, 2]); y1 = np.minimum(b[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iou = inter / (area[:, None] + area[None] - inter)
    np.fill_diagonal(iou, 0)
    return iou


@pytest.fixture(scope="module")
def image():
    img, _ = resize_max(read_image(shared("phototourism_aliked", "st_pauls_cathedral", "1.jpg")), 112)
    return img


@pytest.fixture(scope="module")
def delf18(tmp_path_factory):
    torch.manual_seed(0)
    path = save_delf_checkpoint(DelfNet("resnet18"), "resnet18", tmp_path_factory.mktemp("delf") / "delf18.pt")
    return path


def test_receptive_boxes_are_delfs():
    b = receptive_boxes(2, 3, 0.5, 291, 16, 145)
    # cell (x=2, y=1): DeLF box [y*16-145, x*16-145, y*16+145, x*16+145] (y, x order) / scale
    np.testing.assert_allclose(b[1 * 3 + 2], np.array([32 - 145, 16 - 145, 32 + 145, 16 + 145]) / 0.5)


def test_box_iou_nms_hand_case():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.5]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # IoU(3, 0) = 100/105 = 0.952; IoU(3, 1) = 90/115 = 0.78; IoU(0, 1) = 90/110 = 0.818
    assert box_iou_nms(boxes, scores, 0.92).tolist() == [3, 1, 2]
    assert box_iou_nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert box_iou_nms(boxes, scores, 0.92, max_keep=2).tolist() == [3, 1]
    assert box_iou_nms(boxes, scores, 1.0).tolist() == [3, 0, 1, 2]


def test_extraction_topk_iou_scales(image, delf18):
    e = load_extractor("delf", arch="resnet18", weights=str(delf18), score_threshold=None, iou_threshold=0.5,
                       max_keypoints=60, device="cpu")
    f = e.extract(image)
    assert 10 <= len(f) < 60 and f.descriptors.shape == (len(f), 256)   # big boxes on a small image: NMS bites
    top = load_extractor("delf", arch="resnet18", weights=str(delf18), score_threshold=None, iou_threshold=1.0,
                         max_keypoints=60, device="cpu").extract(image)
    assert len(top) == 60                                               # no NMS: exactly top-k
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-5)
    levels = 290 / f.scales
    assert np.all(np.min(np.abs(levels[:, None] - np.array(DELF_SCALES)[None]), 1) < 1e-4)
    assert len(np.unique(np.round(levels, 4))) >= 3
    boxes = e.boxes_of(f)
    assert _pairwise_iou(boxes).max() <= 0.5 + 1e-9
    assert np.all(np.diff(f.scores) <= 0)
    # the box centre is the keypoint (DeLF's 16x/s mapped to pixel-centre coordinates)
    np.testing.assert_allclose((boxes[:, :2] + boxes[:, 2:]) / 2 + 0.5 / levels[:, None] - 0.5, f.keypoints,
                               atol=1e-3)
    # default NMS (0.92) and a threshold: fewer than top-k when few cells pass, all scores >= threshold
    thr = float(np.median(f.scores))
    g = load_extractor("delf", arch="resnet18", weights=str(delf18), score_threshold=thr, max_keypoints=1000,
                       device="cpu").extract(image)
    assert 0 < len(g) <= 1000 and g.scores.min() >= thr
    assert _pairwise_iou(e.boxes_of(g)).max() <= 0.92 + 1e-9


def test_pca_whitening_to_40d(image, delf18, tmp_path):
    e = load_extractor("delf", arch="resnet18", weights=str(delf18), score_threshold=None, max_keypoints=200,
                       scales=[0.7071, 1.0, 1.4142], device="cpu")
    pca = fit_pca(e, [image, image[:, ::-1].copy()], tmp_path / "pca.npz", dim=40)
    assert pca.dim == 40 and pca.input_dim == 256
    e2 = load_extractor("delf", arch="resnet18", weights=str(delf18), score_threshold=None, max_keypoints=200,
                        scales=[0.7071, 1.0, 1.4142], pca=str(tmp_path / "pca.npz"), device="cpu")
    f, f2 = e.extract(image), e2.extract(image)
    assert f2.descriptors.shape == (len(f), 40)
    np.testing.assert_allclose(np.linalg.norm(f2.descriptors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(f2.descriptors, pca.apply(f.descriptors), atol=1e-5)
    np.testing.assert_array_equal(f.keypoints, f2.keypoints)


def test_config_errors():
    with pytest.raises(ConfigError, match="max_keypoints"):
        load_extractor("delf", arch="resnet18", max_keypoints=0)
    with pytest.raises(ConfigError, match="arch"):
        load_extractor("delf", arch="vgg16")


def test_two_stage_training_lowers_loss(tmp_path):
    sources = {}
    for cls, files in (("sacre_coeur", sorted(shared("sfm_sacre_coeur_hloc", "mapping").glob("*.jpg"))[:6]),
                       ("kitti", sorted(shared("kitti_seq_alike").glob("*.png"))[::4])):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for f in files:
            (tmp_path / "src" / cls / f.name).symlink_to(f)
        sources[cls] = tmp_path / "src" / cls
    root = build_class_folders(sources, tmp_path / "classes")
    conf = DelfTrainConf(arch="resnet18", steps1=12, steps2=12, batch_size=6, crop_size=64, base_size=96,
                         lr1=3e-4, lr2=1e-2, device="cpu")
    s = train_delf(root, tmp_path / "run", conf)
    assert s["images"] == 11 and s["classes"] == ["kitti", "sacre_coeur"]
    assert s["stage1_after"]["loss"] < s["stage1_before"]["loss"]
    assert s["stage2_after"]["loss"] < s["stage2_before"]["loss"]
    # attention.png: one row per picked image (4 spread over the data set): the image as trained on, a 10-px
    # white gap, its attention map over it; rows padded white to the widest
    from localfeat.train.delf import ClassFolder

    data = ClassFolder(root, conf.base_size)
    picks = [data.images[i] for i in np.linspace(0, len(data) - 1, 4).round().astype(int)]
    picture = read_image(tmp_path / "run" / "attention.png")
    widths = [2 * p.shape[1] + 10 for p in picks]
    assert picture.shape == (sum(p.shape[0] for p in picks), max(widths), 3)
    y = 0
    for p, w in zip(picks, widths):
        h, pw = p.shape[:2]
        np.testing.assert_array_equal(picture[y:y + h, :pw], p)
        assert (picture[y:y + h, pw:pw + 10] == 255).all() and (picture[y:y + h, w:] == 255).all()
        assert picture[y:y + h, pw + 10:w].std() > 10       # a heat map over the image, not a blank panel
        y += h
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stage2_steps"] == 12
    # the trained checkpoint loads into the extractor
    f = load_extractor("delf", arch="resnet18", weights=s["checkpoint"], score_threshold=None, max_keypoints=10,
                       scales=[1.0], device="cpu").extract(read_image(shared("kitti_seq_alike", "000100.png")))
    assert len(f) == 10


def test_torchvision_backbone_file_loads_unchanged(tmp_path):
    from localfeat.extractors._resnet import ResNet
    from localfeat.hub import WeightsNotFoundError

    torch.manual_seed(3)
    tv = ResNet("resnet18")                       # a torchvision-format file: full ResNet with its fc
    torch.save(tv.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    e = load_extractor("delf", arch="resnet18", backbone_weights=str(tmp_path / "resnet18-f37072fd.pth"),
                       device="cpu")
    sd = e.net.backbone.state_dict()
    assert all(torch.equal(v, tv.state_dict()[k]) for k, v in sd.items())
    assert not any(k.startswith(("layer4", "fc")) for k in sd)
    with pytest.raises(WeightsNotFoundError, match="resnet18-f37072fd.pth"):
        load_extractor("delf", arch="resnet18", backbone_weights="imagenet", device="cpu")
