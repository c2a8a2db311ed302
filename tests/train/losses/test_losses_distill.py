"""The distillation loss family: hand-computed values, gradients only to the student, the on-disk cache."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from localfeat.config import ConfigError
from localfeat.extractors import lite
from localfeat.train.losses import build_loss
from localfeat.ops import sample_at_pixels
from localfeat.train.losses.distill import DistillLoss, random_grid_points, relational_kl, student_points


def test_relational_kl_hand_computed():
    # Teacher: e1, e1, e2 -> similarities t01 = 1, t02 = t12 = 0. Student: e1, e2, e2 -> s12 = 1, s01 = s02 = 0.
    # tau = 1, diagonal excluded, rows are softmaxes over the two other points:
    #   row 0: teacher [e/(1+e), 1/(1+e)], student [1/2, 1/2]
    #   row 1: teacher [e/(1+e), 1/(1+e)], student [1/(1+e), e/(1+e)]
    #   row 2: teacher [1/2, 1/2],          student [1/(1+e), e/(1+e)]
    t = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    e = math.e
    p, q = e / (1 + e), 1 / (1 + e)
    row0 = p * math.log(p / 0.5) + q * math.log(q / 0.5)
    row1 = p * math.log(p / q) + q * math.log(q / p)          # = (p - q) * 1
    row2 = 0.5 * math.log(0.5 / q) + 0.5 * math.log(0.5 / p)
    expected = (row0 + row1 + row2) / 3
    assert float(relational_kl(s, t, 1.0)) == pytest.approx(expected, rel=1e-5)
    assert row1 == pytest.approx(p - q)
    # Identical structures: zero, whatever the dimensions of the two sets.
    assert float(relational_kl(t, t, 0.1)) == pytest.approx(0.0, abs=1e-6)


def test_student_points_and_sampling_hand_case():
    scores = torch.zeros(1, 1, 32, 32)
    scores[0, 0, 10, 20] = 0.9      # (x=20, y=10)
    scores[0, 0, 25, 6] = 0.7       # (x=6, y=25)
    scores[0, 0, 1, 1] = 1.0        # inside the border: never chosen
    xy = student_points(scores, 2, nms=3, border=4)
    assert xy.tolist() == [[[20.0, 10.0], [6.0, 25.0]]]
    # A stride-4 map whose value is the x of the pixel centre 4j + 1.5: bilinear sampling is exact there.
    j = torch.arange(8, dtype=torch.float32) * 4 + 1.5
    dense = j.view(1, 1, 1, 8).expand(1, 1, 8, 8).contiguous()
    v = sample_at_pixels(dense, torch.tensor([[[9.5, 9.5], [13.5, 2.0]]]), stride=4)
    assert v[0, :, 0].tolist() == pytest.approx([9.5, 13.5])


def test_random_grid_points_are_distinct_cell_centres_inside_the_border():
    torch.manual_seed(0)
    # 32x24 image, stride 4: centres 1.5, 5.5, ..., 29.5 (x) and 1.5, ..., 21.5 (y); border 4 keeps
    # x in {5.5, ..., 25.5} (6 values) and y in {5.5, ..., 17.5} (4 values): 24 cells.
    xy = random_grid_points(3, 24, 32, 24, grid=4, border=4)
    assert xy.shape == (3, 24, 2)
    for pts in xy:
        cells = {(float(x), float(y)) for x, y in pts}
        assert len(cells) == 24
        assert cells == {(4 * j + 1.5, 4 * i + 1.5) for j in range(1, 7) for i in range(1, 5)}
    with pytest.raises(ConfigError, match="grid_points=25 exceeds the 24 grid cells of a 32x24 image"):
        random_grid_points(1, 24, 32, 25, grid=4, border=4)


def test_distill_grid_points_add_cells_to_the_relational_term():
    # A student equal to a 64-D dense teacher (ALIKE-t) scores 0 at any points; a random student does not,
    # and its term changes when random cells join its peaks.
    batch = _batch(32)
    plain = DistillLoss(teacher="alike:variant=alike-t", detection=0.0, num_points=8, grid=1)
    s, d = plain.teacher(torch.device("cpu")).targets(torch.cat([batch["image0"], batch["image1"]]))
    mixed = DistillLoss(teacher="alike:variant=alike-t", detection=0.0, num_points=8, grid_points=40, grid=1)
    perfect = ({"scores": s[:2], "descriptors": d[:2], "stride": 1}, {"scores": s[2:], "descriptors": d[2:], "stride": 1})
    torch.manual_seed(0)
    assert float(mixed(*perfect, batch)["descriptors"]) == pytest.approx(0.0, abs=1e-5)
    rnd = torch.nn.functional.normalize(torch.randn(4, 16, 32, 32), dim=1)
    student = ({"scores": s[:2], "descriptors": rnd[:2], "stride": 1}, {"scores": s[2:], "descriptors": rnd[2:], "stride": 1})
    torch.manual_seed(0)
    a = float(mixed(*student, batch)["descriptors"])
    b = float(plain(*student, batch)["descriptors"])
    assert a > 0 and b > 0 and abs(a - b) > 1e-4
    with pytest.raises(ConfigError, match="grid_points"):
        DistillLoss(grid_points=-1)


def _batch(size: int = 64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    im = torch.rand(2, 3, size, size, generator=g)
    im = torch.nn.functional.avg_pool2d(im, 3, 1, 1)   # some structure
    return {"image0": im, "image1": im.flip(-1)}


def test_distill_detection_term_is_the_bce_against_the_teacher_map(tmp_path):
    loss = DistillLoss(teacher="aliked:variant=aliked-t16", detection=1.0, descriptors=0.0)
    batch = _batch()
    p = torch.full((2, 1, 64, 64), 0.5)
    out = {"scores": p, "descriptors": torch.nn.functional.normalize(torch.ones(2, 8, 64, 64), dim=1), "stride": 1}
    terms = loss(out, out, batch)
    # BCE(0.5, T) = ln 2 for any target T: -(T ln 0.5 + (1 - T) ln 0.5).
    assert float(terms["detection"]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(terms["total"]) == pytest.approx(math.log(2), rel=1e-6)


def test_distill_gradients_reach_only_the_student_and_cache_hits_give_the_same_loss(tmp_path):
    torch.manual_seed(0)
    net = lite.LiteNet(32).train()
    spec = {"distill": {"teacher": "aliked:variant=aliked-t16", "num_points": 32, "cache": str(tmp_path / "c")}}
    crit = build_loss(spec)
    batch = _batch()

    def run():
        out0, out1 = lite.train_dense(net, batch["image0"]), lite.train_dense(net, batch["image1"])
        return crit(out0, out1, batch)

    first = run()
    first["total"].backward()
    dist = crit.parts["distill"]
    teacher_net = dist.teacher(torch.device("cpu")).extractor.net
    assert all(p.grad is None for p in teacher_net.parameters())
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert float(grads["head4.weight"].abs().sum()) > 0         # the detection head's path
    assert float(grads["desc16.weight"].abs().sum()) > 0          # the descriptor path
    assert dist.cache.misses == 4 and dist.cache.hits == 0
    assert len(list((tmp_path / "c").rglob("*.pt"))) == 4
    second = run()
    assert dist.cache.hits == 4 and dist.cache.misses == 4
    for key in ("total", "distill/detection", "distill/descriptors"):
        assert float(second[key].detach()) == float(first[key].detach())
    # A different teacher config never reuses the cached targets.
    other = DistillLoss(teacher="aliked:variant=aliked-t16,scores_th=0.3", num_points=32, cache=str(tmp_path / "c"))
    out0, out1 = lite.train_dense(net, batch["image0"]), lite.train_dense(net, batch["image1"])
    other(out0, out1, batch)
    assert other.cache.misses == 4 and other.cache.hits == 0


def test_distill_dense_teacher_and_cosine_term():
    # A dense teacher (ALIKE-t, 64-D like a 64-D student): cosine is defined; a perfect student scores 0.
    crit = DistillLoss(teacher="alike:variant=alike-t", detection=0.0, descriptors=0.0, cosine=1.0, num_points=16,
                       grid=1)
    batch = _batch(32)
    teacher = crit.teacher(torch.device("cpu"))
    s, d = teacher.targets(torch.cat([batch["image0"], batch["image1"]]))
    assert s.shape == (4, 1, 32, 32) and d.shape == (4, 64, 32, 32)
    assert torch.allclose(d.norm(dim=1), torch.ones(4, 32, 32), atol=1e-5)
    out0 = {"scores": s[:2], "descriptors": d[:2], "stride": 1}
    out1 = {"scores": s[2:], "descriptors": d[2:], "stride": 1}
    assert float(crit(out0, out1, batch)["cosine"]) == pytest.approx(0.0, abs=1e-5)
    wrong = {"scores": s[:2], "descriptors": torch.nn.functional.normalize(torch.randn(2, 32, 32, 32), dim=1),
             "stride": 1}
    with pytest.raises(ConfigError, match="cosine needs equal descriptor sizes"):
        crit(wrong, wrong, batch)


def test_distill_config_errors():
    with pytest.raises(ConfigError, match="unknown config key"):
        DistillLoss(teacher="aliked", temprature=0.1)
    with pytest.raises(ConfigError, match="num_points"):
        DistillLoss(num_points=0)
    with pytest.raises(ConfigError, match="temperature"):
        DistillLoss(temperature=0)
    assert np.isfinite(DistillLoss().conf["temperature"])
