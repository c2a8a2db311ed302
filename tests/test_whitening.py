"""PCA whitening: identity covariance, agreement with a NumPy SVD reference, save/load, errors."""
import numpy as np
import pytest

from localfeat.whitening import PCAWhitening


def _data(n=500, d=24, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ a + rng.normal(size=d) * 3


def test_whitened_covariance_is_identity():
    x = _data()
    w = PCAWhitening.fit(x, dim=10)
    y = w.apply(x, normalize=False).astype(np.float64)
    assert y.shape == (500, 10)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(10), atol=1e-5)


def test_agrees_with_numpy_svd_reference():
    x = _data(seed=1)
    w = PCAWhitening.fit(x, dim=6)
    # reference: eigen-decomposition of the covariance matrix (a different route than the SVD of the data)
    c = np.cov(x, rowvar=False)
    vals, vecs = np.linalg.eigh(c)
    order = np.argsort(vals)[::-1][:6]
    np.testing.assert_allclose(w.variances, vals[order], rtol=1e-9)
    for i, j in enumerate(order):
        v = vecs[:, j] * np.sign(vecs[np.abs(vecs[:, j]).argmax(), j])
        np.testing.assert_allclose(w.components[i], v, atol=1e-8)
    ref = (x - x.mean(0)) @ np.stack([vecs[:, j] * np.sign(vecs[np.abs(vecs[:, j]).argmax(), j]) for j in order]).T
    ref /= np.sqrt(vals[order])
    np.testing.assert_allclose(w.apply(x, normalize=False), ref, atol=1e-5)
    ref_n = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(w.apply(x), ref_n, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(w.apply(x), axis=1), 1, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    x = _data(seed=2)
    w = PCAWhitening.fit(x, dim=5, eps=1e-3)
    w2 = PCAWhitening.load(w.save(tmp_path / "pca.npz"))
    assert w2.eps == 1e-3 and w2.dim == 5 and w2.input_dim == 24
    np.testing.assert_array_equal(w.apply(x), w2.apply(x))


def test_errors_name_the_problem(tmp_path):
    x = _data(n=5)
    with pytest.raises(ValueError, match="1..4"):
        PCAWhitening.fit(x, dim=10)
    w = PCAWhitening.fit(x, dim=3)
    with pytest.raises(ValueError, match="dimension 24"):
        w.apply(np.zeros((2, 7)))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        PCAWhitening.load(tmp_path / "nope.npz")


def test_cli_fit_pca_on_a_feature_store(tmp_path):
    from localfeat.cli import main
    from localfeat.io.h5 import FeatureStore
    from localfeat.types import Features

    x = _data(n=300, d=16, seed=3).astype(np.float32)
    with FeatureStore(tmp_path / "features.h5", mode="w", model="test", conf={}) as store:
        for i in range(3):
            part = x[i * 100:(i + 1) * 100]
            store.put(f"im{i}.jpg", Features(np.zeros((100, 2), np.float32), np.ones(100, np.float32),
                                              part, (10, 10)))
    assert main(["retrieve", "fit-pca", str(tmp_path), "-o", str(tmp_path / "pca.npz"), "--dim", "4"]) == 0
    w = PCAWhitening.load(tmp_path / "pca.npz")
    ref = PCAWhitening.fit(x, dim=4)
    np.testing.assert_allclose(w.components, ref.components, atol=1e-6)
