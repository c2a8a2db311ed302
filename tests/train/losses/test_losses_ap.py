"""AP loss: quantised AP on hand-computed cases, the five similarities, gradient checks, rankings."""
from __future__ import annotations

import math

import pytest
import torch

from localfeat.registry import ConfigError
from localfeat.train.losses import build_loss
from localfeat.train.losses.ap import (SIMILARITIES, APLoss, nonnegative, pairwise_similarity, quantized_ap,
                                       rowwise_similarity)


def test_quantized_ap_on_bin_centres_is_the_exact_ap():
    # nq = 5: centres 1, .75, .5, .25, 0. Ranking: pos (1.0), neg (0.75), pos (0.5): AP = (1/1 + 2/3) / 2.
    scores = torch.tensor([[1.0, 0.75, 0.5]])
    labels = torch.tensor([[1, 0, 1]])
    ap = quantized_ap(scores, labels, nq=5)
    assert ap.item() == pytest.approx((1 + 2 / 3) / 2, abs=1e-6)
    # Positives ranked first: AP 1; positive last of three: AP 1/3.
    assert quantized_ap(torch.tensor([[1.0, 0.5, 0.25]]), torch.tensor([[1, 0, 0]]), nq=5).item() == pytest.approx(1.0)
    last = quantized_ap(torch.tensor([[0.25, 1.0, 0.5]]), torch.tensor([[1, 0, 0]]), nq=5)
    assert last.item() == pytest.approx(1 / 3)


def test_quantized_ap_between_centres_and_outside_the_range():
    # x = 0.875 lies half in bin 0 (centre 1) and half in bin 1 (centre .75); x = 1.3 is all in bin 0,
    # x = -0.4 all in the last bin. Positive 0.875, negatives 1.3 and -0.4 (nq = 5):
    # n = [1.5, .5, 0, 0, 1], p = [.5, .5, 0, 0, 0] -> prec = [.5/1.5, 1/2, ...], rec = [.5, .5]
    ap = quantized_ap(torch.tensor([[0.875, 1.3, -0.4]]), torch.tensor([[1, 0, 0]]), nq=5)
    assert ap.item() == pytest.approx(0.5 * (0.5 / 1.5) + 0.5 * (1.0 / 2.0), abs=1e-6)


def test_quantized_ap_mask_ignores_entries():
    scores = torch.tensor([[1.0, 0.75, 0.5]])
    labels = torch.tensor([[1, 0, 1]])
    mask = torch.tensor([[True, False, True]])
    assert quantized_ap(scores, labels, nq=5, mask=mask).item() == pytest.approx(1.0)


def test_quantized_ap_gradcheck():
    scores = torch.tensor([[0.91, 0.33, 0.62, 0.08], [0.47, 0.73, 0.21, 0.55]], dtype=torch.float64,
                          requires_grad=True)
    labels = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]])
    assert torch.autograd.gradcheck(lambda s: quantized_ap(s, labels, nq=7), (scores,))


def _hand_similarity(name, a, b):
    """Straight from the formulas of the docstring, one pair at a time, in plain Python."""
    if name == "cosine":
        return sum(x * y for x, y in zip(a, b))
    u = [max(x, 0) for x in a] + [max(-x, 0) for x in a]
    v = [max(x, 0) for x in b] + [max(-x, 0) for x in b]
    p = [x / sum(u) for x in u]
    q = [x / sum(v) for x in v]
    dot = sum(x * y for x, y in zip(p, q))
    pp, qq = sum(x * x for x in p), sum(x * x for x in q)
    if name == "dice":
        return 2 * dot / (pp + qq)
    if name == "jaccard":
        return dot / (pp + qq - dot)
    if name == "czekanowski":
        return 2 * sum(min(x, y) for x, y in zip(p, q)) / sum(x + y for x, y in zip(p, q))
    return 1 - sum((math.sqrt(x) - math.sqrt(y)) ** 2 for x, y in zip(p, q)) / 2


def test_similarity_hand_values():
    a = [0.6, -0.8, 0.0]
    b = [0.0, -0.6, 0.8]
    # Worked by hand: p = [.6, 0, 0, 0, .8, 0] / 1.4, q = [0, 0, .8, 0, .6, 0] / 1.4
    p_dot_q = 0.48 / 1.96
    pp = qq = 1.0 / 1.96
    expected = {"cosine": 0.48, "dice": 2 * p_dot_q / (pp + qq), "jaccard": p_dot_q / (pp + qq - p_dot_q),
                "czekanowski": 0.6 / 1.4, "squared_chord": math.sqrt(0.8 * 0.6) / 1.4}
    ta, tb = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    for name in SIMILARITIES:
        assert _hand_similarity(name, a, b) == pytest.approx(expected[name], abs=1e-9), name
        assert pairwise_similarity(name, ta, tb).item() == pytest.approx(expected[name], abs=1e-6), name
        assert rowwise_similarity(name, ta, tb[:, None]).item() == pytest.approx(expected[name], abs=1e-6), name


def test_similarity_pairwise_equals_rowwise_and_identity_is_maximal():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(torch.randn(7, 8, generator=g, dtype=torch.float64), dim=1)
    for name in SIMILARITIES:
        pw = pairwise_similarity(name, a, b)
        rw = rowwise_similarity(name, a, b[None].expand(5, 7, 8))
        torch.testing.assert_close(pw, rw)
        self_sim = pairwise_similarity(name, a, a).diagonal()
        torch.testing.assert_close(self_sim, torch.ones(5, dtype=torch.float64), atol=1e-5, rtol=0)
        assert (pw <= 1 + 1e-9).all()


def test_nonnegative_is_a_probability_vector():
    x = torch.tensor([[0.5, -0.5, 0.0, 1.0]])
    torch.testing.assert_close(nonnegative(x), torch.tensor([[0.25, 0.0, 0.0, 0.5, 0.0, 0.25, 0.0, 0.0]]))


@pytest.mark.parametrize("name", SIMILARITIES)
def test_similarity_gradcheck(name):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: pairwise_similarity(name, x, y), (a, b))


@pytest.mark.parametrize("name", SIMILARITIES)
def test_better_ranking_of_positives_gives_lower_loss(name):
    """A query, 2 positives and 6 negatives; moving the positives closer to the query lowers 1 - AP."""
    g = torch.Generator().manual_seed(2)
    dim = 16
    q = torch.nn.functional.normalize(torch.randn(1, dim, generator=g, dtype=torch.float64), dim=1)
    negs = torch.nn.functional.normalize(torch.randn(6, dim, generator=g, dtype=torch.float64), dim=1)
    noise = torch.nn.functional.normalize(torch.randn(2, dim, generator=g, dtype=torch.float64), dim=1)
    labels = torch.tensor([[1, 1] + [0] * 6])
    losses = []
    for alpha in (0.2, 0.5, 0.8, 0.95):   # positives = normalise(alpha q + (1 - alpha) noise)
        pos = torch.nn.functional.normalize(alpha * q + (1 - alpha) * noise, dim=1)
        cand = torch.cat([pos, negs])
        s = pairwise_similarity(name, q, cand)
        losses.append(1 - quantized_ap(s, labels, nq=20).item())
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:])), (name, losses)
    assert losses[-1] < losses[0] - 0.2, (name, losses)
    assert losses[-1] == pytest.approx(0.0, abs=1e-6), (name, losses)


def _identity_pair(dim=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    desc = torch.nn.functional.normalize(torch.randn(1, dim, size, size, generator=g), dim=1)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    flow = torch.stack([xs, ys], -1).float()[None]
    return desc, {"flow": flow, "valid": torch.ones(1, size, size, dtype=torch.bool)}


@pytest.mark.parametrize("name", SIMILARITIES)
def test_ap_loss_on_identical_maps_is_zero_and_on_unrelated_maps_is_high(name):
    desc, batch = _identity_pair()
    conf = {"similarity": name, "border": 4}
    torch.manual_seed(0)
    out = APLoss(**conf)({"descriptors": desc}, {"descriptors": desc}, batch)
    assert out["total"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["ap"].item() == pytest.approx(1.0, abs=1e-6)
    other = torch.nn.functional.normalize(torch.randn(desc.shape, generator=torch.Generator().manual_seed(5)), dim=1)
    out = APLoss(**conf)({"descriptors": desc}, {"descriptors": other}, batch)
    # The best of the 29 positives of a random map is often similar by chance: AP ~0.5, not ~0.
    assert out["total"].item() > 0.4


def test_ap_loss_config_is_strict():
    with pytest.raises(ConfigError, match="nq_bins"):
        APLoss(nq_bins=10)
    with pytest.raises(ConfigError, match="hamming"):
        APLoss(similarity="hamming")
    with pytest.raises(ConfigError, match="unknown loss 'apl'"):
        build_loss({"apl": 1.0})


def test_ap_loss_in_a_batch_reads_each_pairs_own_image():
    """Three pairs with different maps, image 1 = image 0: every query's positive is itself (AP 1), so a
    positive, ring or distractor read from another pair's image would show. pixel_ap also equals the AP
    assembled from one gather per part (positives, ring, distractors)."""
    from localfeat.train.losses._sampling import gather, sample_pixels
    from localfeat.train.losses.ap import AP_DEFAULTS, pixel_ap

    g = torch.Generator().manual_seed(3)
    desc = torch.nn.functional.normalize(torch.randn(3, 8, 32, 32, generator=g), dim=1)
    _, one = _identity_pair()
    batch = {"flow": one["flow"].expand(3, -1, -1, -1), "valid": one["valid"].expand(3, -1, -1)}
    conf = {**AP_DEFAULTS, "border": 4}
    torch.manual_seed(0)
    ap, s = pixel_ap({"descriptors": desc}, {"descriptors": desc}, batch, conf)
    assert len(ap) == 3 * len(s.b[s.b == 0]) and ap.min().item() == pytest.approx(1.0, abs=1e-6)

    other = torch.nn.functional.normalize(torch.randn(3, 8, 32, 32, generator=g), dim=1)
    torch.manual_seed(0)
    ap, s = pixel_ap({"descriptors": desc}, {"descriptors": other}, batch, conf)
    q = gather(desc, s.b, s.qy, s.qx)
    pos = rowwise_similarity("cosine", q, gather(other, s.b[:, None], s.pos_y, s.pos_x))
    pos = torch.where(s.pos_valid, pos, torch.full_like(pos, -1e4)).max(dim=1, keepdim=True).values
    ring = rowwise_similarity("cosine", q, gather(other, s.b[:, None], s.ring_y, s.ring_x))
    dis = pairwise_similarity("cosine", q, gather(other, s.dis_b, s.dis_y, s.dis_x))
    scores = torch.cat([pos, ring, dis], dim=1)
    labels = torch.zeros_like(scores, dtype=torch.bool)
    labels[:, 0] = True
    mask = torch.cat([torch.ones_like(pos, dtype=torch.bool), s.ring_valid, s.far], dim=1)
    assert torch.allclose(ap, quantized_ap(scores, labels, conf["nq"], mask=mask), atol=1e-6)
    assert ap.max().item() < 0.99
