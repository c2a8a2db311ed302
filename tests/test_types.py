"""Features and Matches validate the data contract and name the offending field."""
import numpy as np
import pytest

from localfeat.types import ContractError, Features, Matches


def _feats(n=4, d=8):
    rng = np.random.default_rng(0)
    desc = rng.normal(size=(n, d))
    return dict(keypoints=rng.uniform(0, 50, (n, 2)), scores=rng.uniform(size=n),
                descriptors=desc / np.linalg.norm(desc, axis=1, keepdims=True), image_size=(64, 48))


def test_features_are_cast_to_contract_dtypes():
    f = Features(**_feats())
    assert f.keypoints.dtype == np.float32 and f.scores.dtype == np.float32
    assert f.descriptors.dtype == np.float32 and f.image_size == (64, 48) and len(f) == 4 and f.dim == 8


@pytest.mark.parametrize("field,value,message", [
    ("keypoints", np.zeros((4, 3)), r"keypoints has shape \(4, 3\), expected \(N, 2\)"),
    ("scores", np.zeros(3), r"scores has shape \(3,\), expected \(N,\) with N=4"),
    ("descriptors", np.zeros((8, 4)), r"descriptors has shape \(8, 4\), expected \(N, D\) with N=4"),
    ("image_size", (64,), r"image_size is \(64,\), expected \(W, H\)"),
    ("image_size", (0, 5), r"expected positive"),
])
def test_features_shape_errors_name_the_field(field, value, message):
    kwargs = _feats()
    kwargs[field] = value
    with pytest.raises(ContractError, match=message):
        Features(**kwargs)


def test_non_finite_values_are_rejected():
    kwargs = _feats()
    kwargs["keypoints"][1, 0] = np.nan
    with pytest.raises(ContractError, match="keypoints holds 1 non-finite"):
        Features(**kwargs)


def test_optional_fields_and_binary_descriptors():
    kwargs = _feats()
    f = Features(**kwargs, scales=np.ones(4), orientations=np.zeros(4))
    assert f.scales.dtype == np.float32
    with pytest.raises(ContractError, match=r"scales has shape \(3,\)"):
        Features(**kwargs, scales=np.ones(3))
    kwargs["descriptors"] = np.zeros((4, 32), np.uint8)
    assert Features(**kwargs).descriptors.dtype == np.uint8


def test_select_and_dict_round_trip():
    f = Features(**_feats(), scales=np.arange(4))
    g = f.select(np.array([2, 0]))
    assert np.array_equal(g.keypoints, f.keypoints[[2, 0]]) and np.array_equal(g.scales, [2, 0])
    assert Features.from_dict(f.to_dict()).equals(f)


def test_matches_validation():
    m = Matches(np.array([[0, 1], [2, 3]], np.int32), np.array([0.5, 0.25]))
    assert m.indices.dtype == np.int64 and m.scores.dtype == np.float32 and len(m) == 2
    assert len(Matches(np.zeros((0,), np.int64))) == 0
    with pytest.raises(ContractError, match=r"indices has shape \(2, 3\), expected \(M, 2\)"):
        Matches(np.zeros((2, 3), np.int64))
    with pytest.raises(ContractError, match="negative"):
        Matches(np.array([[0, -1]]))
    with pytest.raises(ContractError, match="expected integers"):
        Matches(np.array([[0.0, 1.0]]))
    with pytest.raises(ContractError, match=r"scores has shape \(1,\), expected \(M,\) with M=2"):
        Matches(np.array([[0, 1], [1, 0]]), np.array([1.0]))


def test_matches_index_range_is_checked_against_features():
    f = Features(**_feats())
    with pytest.raises(ContractError, match=r"indices\[:, 1\] reaches 4 but image 1 has only 4 keypoints"):
        Matches(np.array([[0, 4]])).check_against(f, f)
