"""Fuzzing, bounded in time (hypothesis, derandomized): damaged images, stores and npz files, and random
config values, only ever end in the library's own clean errors (issue 19) - never another exception type,
a crash, or memory beyond the pixel budget."""
import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localfeat.config import ConfigError, parse_value
from localfeat.io.h5 import FeatureStore, StoreError
from localfeat.io.images import ImageReadError, read_image
from localfeat.io.npz import read_npz, write_npz
from localfeat.registry import load_extractor, load_matcher
from localfeat.types import Features

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
edits = st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), min_size=1, max_size=6)
cuts = st.integers(0, 2**31)


def damage(data: bytes, changes, cut: int, keep_cut: bool) -> bytes:
    """`data` with bytes overwritten at `changes` (positions modulo its length), optionally truncated."""
    out = bytearray(data)
    for pos, value in changes:
        out[pos % len(out)] = value
    return bytes(out[: 1 + cut % len(out)] if keep_cut else out)


def _texture(h=40, w=56):
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 2)
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


# TIFF is left out: its headers are checked after decoding (see image_size_from_header), so a damaged one
# may make OpenCV allocate up to its own limit, more memory than a test should take.
ENCODED = {ext: cv2.imencode(ext, _texture())[1].tobytes() for ext in (".png", ".jpg", ".ppm", ".bmp", ".webp")}


@FUZZ
@given(ext=st.sampled_from(sorted(ENCODED)), changes=edits, cut=cuts, truncate=st.booleans())
def test_damaged_images_read_or_raise_image_read_error(tmp_path_factory, ext, changes, cut, truncate):
    path = tmp_path_factory.mktemp("img") / f"damaged{ext}"
    path.write_bytes(damage(ENCODED[ext], changes, cut, truncate))
    try:
        image = read_image(path, max_pixels=1_000_000)
    except ImageReadError as exc:
        assert str(path) in str(exc)
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] * image.shape[1] <= 1_000_000


@pytest.fixture(scope="module")
def store_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "features.h5"
    rng = np.random.default_rng(1)
    with FeatureStore(path, "w", model="sift", conf={}, conf_hash="h") as store:
        for i in range(3):
            desc = rng.normal(size=(12, 8))
            store.put(f"dir/im{i}.png", Features(rng.uniform(0, 50, (12, 2)), rng.uniform(size=12),
                                                 desc / np.linalg.norm(desc, axis=1)[:, None], (64, 48)))
    return path.read_bytes()


@FUZZ
@given(changes=edits, cut=cuts, truncate=st.booleans())
def test_damaged_stores_raise_store_error(tmp_path_factory, store_bytes, changes, cut, truncate):
    path = tmp_path_factory.mktemp("fuzz") / "features.h5"
    path.write_bytes(damage(store_bytes, changes, cut, truncate))
    try:
        store = FeatureStore(path, "r")
        for name in store.names():
            feats = store.get(name)
            assert len(feats.keypoints) == len(feats.descriptors)
    except StoreError as exc:
        assert str(path) in str(exc)


@pytest.fixture(scope="module")
def npz_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("npz") / "a.png.r2d2"
    rng = np.random.default_rng(2)
    desc = rng.normal(size=(7, 4))
    write_npz(path, Features(rng.uniform(0, 30, (7, 2)), np.ones(7), desc / np.linalg.norm(desc, axis=1)[:, None],
                             (32, 32), scales=np.ones(7)))
    return path.read_bytes()


@FUZZ
@given(changes=edits, cut=cuts, truncate=st.booleans())
def test_damaged_npz_files_raise_value_error(tmp_path_factory, npz_bytes, changes, cut, truncate):
    path = tmp_path_factory.mktemp("fuzz") / "a.png.r2d2"
    path.write_bytes(damage(npz_bytes, changes, cut, truncate))
    try:
        read_npz(path)
    except ValueError as exc:  # ContractError and StoreError are ValueErrors too
        assert str(path) in str(exc)


values = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.text(max_size=6),
                   st.floats(allow_nan=True, allow_infinity=True), st.floats(-20, 20))
IMAGE = cv2.cvtColor(_texture(48, 48), cv2.COLOR_BGR2GRAY)


@settings(FUZZ, max_examples=30)
@given(conf=st.dictionaries(st.sampled_from(["max_keypoints", "rootsift", "n_octave_layers", "contrast_threshold",
                                             "edge_threshold", "sigma", "resize_max"]), values, max_size=4))
def test_sift_configs_work_or_raise_config_error(conf):
    try:
        extractor = load_extractor("sift", **conf)
    except ConfigError as exc:
        assert "sift" in str(exc) and len(str(exc)) < 300
        return
    feats = extractor.extract(IMAGE)  # an accepted config runs
    assert feats.image_size == (48, 48)


@FUZZ
@given(conf=st.dictionaries(st.sampled_from(["mutual", "ratio", "max_distance", "block_rows"]), values,
                            max_size=3))
def test_matcher_configs_work_or_raise_config_error(conf):
    try:
        matcher = load_matcher("nearest_neighbor", **conf)
    except ConfigError as exc:
        assert "nearest_neighbor" in str(exc) and len(str(exc)) < 300
        return
    rng = np.random.default_rng(3)
    desc = rng.normal(size=(20, 8)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    feats = Features(rng.uniform(0, 30, (20, 2)), np.ones(20), desc, (32, 32))
    m = matcher.match(feats, feats)
    assert len(m) <= 20 and (m.indices < 20).all()


@FUZZ
@given(text=st.text(max_size=200))
def test_command_line_values_parse_or_raise_config_error(text):
    try:
        parse_value(text)
    except ConfigError as exc:
        assert len(str(exc)) < 300
