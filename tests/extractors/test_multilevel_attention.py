"""Multi-level attention model: cell alignment of the dense maps, descriptors (3 x 64, unit norm), NMS/top-k,
auto-encoder pre-training, trainer adapter (losses of the training issue), weights round trip, heatmaps CLI."""
import numpy as np
import pytest
import torch

from conftest import shared
from localfeat import load_extractor
from localfeat.cli import main
from localfeat.extractors.multilevel_attention import MultiLevelAttentionNet, read_at_pixels
from localfeat.io.images import read_image, resize_max
from localfeat.registry import ConfigError
from localfeat.viz import draw_heatmaps


@pytest.fixture(scope="module")
def image():
    img, _ = resize_max(read_image(shared("sfm_sacre_coeur_hloc", "mapping", "02928139_3448003521.jpg")), 160)
    return img


def test_read_at_pixels_centres_cells_on_stride_multiples():
    m = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)
    out = read_at_pixels(m, 4, (12, 16))
    # cell (y=1, x=2) sits on pixel (4, 8); halfway between cells x=2 and x=3 is pixel x=10
    assert out[0, 0, 4, 8] == pytest.approx(6.0) and out[0, 0, 4, 10] == pytest.approx(6.5)
    assert out[0, 0, 0, 0] == pytest.approx(0.0, abs=1e-5) and out[0, 0, 11, 15] == pytest.approx(11.0)  # border


def test_network_shapes_match_the_resnet_depths():
    torch.manual_seed(0)
    net = MultiLevelAttentionNet("resnet18").eval()
    out = net(torch.randn(1, 3, 64, 96))
    assert [tuple(e.shape) for e in out["encoded"]] == [(1, 64, 16, 24), (1, 64, 8, 12), (1, 64, 4, 6)]
    assert [tuple(a.shape) for a in out["attention"]] == [(1, 1, 16, 24), (1, 1, 8, 12), (1, 1, 4, 6)]
    assert all(float(a.detach().min()) > 0 for a in out["attention"])       # softplus
    with torch.no_grad():
        d = net.dense(torch.randn(2, 3, 64, 96))
    assert d["descriptors"].shape == (2, 192, 64, 96) and d["scores"].shape == (2, 1, 64, 96)
    torch.testing.assert_close(d["descriptors"].norm(dim=1), torch.ones(2, 64, 96))
    assert float(d["scores"].max()) < 1 and float(d["scores"].min()) > 0
    with pytest.raises(ConfigError, match="levels"):
        MultiLevelAttentionNet("resnet18", ("layer1", "layer2"))


def test_extraction_keypoints_descriptors(image, tmp_path):
    torch.manual_seed(0)
    net = MultiLevelAttentionNet("resnet18")
    torch.save(net.state_dict(), tmp_path / "mla.pt")
    e = load_extractor("multilevel_attention", arch="resnet18", weights=str(tmp_path / "mla.pt"),
                       max_keypoints=50, nms_radius=4, device="cpu")
    f = e.extract(image)
    assert len(f) == 50 and f.descriptors.shape == (50, 192)
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-5)
    # each 64-D part is itself normalised: norm 1/sqrt(3)
    np.testing.assert_allclose(np.linalg.norm(f.descriptors[:, :64], axis=1), 3 ** -0.5, atol=1e-5)
    assert np.all(np.diff(f.scores) <= 0)
    d = np.abs(f.keypoints[:, None] - f.keypoints[None]).max(-1) + np.eye(50) * 99
    assert d.min() > 4                                          # NMS radius 4: peaks are > 4 px apart
    maps = e.dense_maps(image)
    assert list(maps) == ["attention layer1", "attention layer2", "attention layer3", "combined"]
    np.testing.assert_allclose(maps["combined"], (maps["attention layer1"] + maps["attention layer2"]
                                                  + maps["attention layer3"]) / 3, rtol=1e-5)
    # the keypoints are the strongest local maxima of the combined map
    kx, ky = f.keypoints[:, 0].astype(int), f.keypoints[:, 1].astype(int)
    np.testing.assert_allclose(maps["combined"][ky, kx], f.scores, rtol=1e-5)
    out = tmp_path / "heat.png"
    photo = shared("sfm_sacre_coeur_hloc", "mapping", "02928139_3448003521.jpg")
    assert main(["view", str(photo), "--heatmaps", "--model", "multilevel_attention", "--conf", "arch=resnet18",
                 f"weights={tmp_path / 'mla.pt'}", "--resize-max", "128", "-o", str(out)]) == 0
    # The picture: the image as the model saw it (longer side 128), then the 4 maps over it, 10-px gaps.
    shown, _ = resize_max(read_image(photo), 128)
    h, w = shown.shape[:2]
    picture = read_image(out)
    assert max(h, w) == 128 and picture.shape == (h, 5 * w + 4 * 10, 3)
    np.testing.assert_array_equal(picture[:, :w], shown)
    assert (picture[:, w:w + 10] == 255).all()
    small = load_extractor("multilevel_attention", arch="resnet18", weights=str(tmp_path / "mla.pt"), device="cpu")
    np.testing.assert_array_equal(picture, draw_heatmaps(shown, small.dense_maps(shown)))


def test_autoencoder_pretraining_lowers_reconstruction_loss(image):
    from localfeat.train.multilevel_attention import pretrain_autoencoder

    torch.manual_seed(0)
    net = MultiLevelAttentionNet("resnet18")
    losses = pretrain_autoencoder(net, [image], steps=15, crop_size=64, batch_size=2, lr=3e-3, device="cpu")
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_trainer_adapter_runs_and_weights_load(tmp_path, image):
    from localfeat.train.multilevel_attention import CPU_PRESET, train

    run = train(tmp_path / "run", overrides={
        "steps": 2, "batch_size": 2, "data.crop_size": 64, "data.base_size": 128, "validation.every": 0,
        "checkpoint_every": 2, "data.images": str(shared("sfm_sacre_coeur_hloc", "mapping"))})
    assert set(CPU_PRESET["losses"]) == {"distinctiveness", "d2net"}
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "distinctiveness/peaky" in rows[0] and "d2net/total" in rows[0]
    f = load_extractor("multilevel_attention", arch="resnet18", weights=str(run / "weights.pt"), max_keypoints=20,
                       device="cpu").extract(image)
    assert len(f) == 20
