"""Weights lookup order, override, download with hash check, and the offline error."""
import hashlib

import pytest

from localfeat import hub
from localfeat.hub import WeightSpec, WeightsNotFoundError, find_weights


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    a, b, cache = tmp_path / "a", tmp_path / "b", tmp_path / "cache"
    for d in (a, b):
        d.mkdir()
    monkeypatch.setenv("LOCALFEAT_WEIGHTS", f"{a}{hub.os.pathsep}{b}")
    monkeypatch.setenv("LOCALFEAT_CACHE", str(cache))
    monkeypatch.delenv("LOCALFEAT_OFFLINE", raising=False)
    return a, b, cache


def test_lookup_order_env_dirs_then_cache(dirs):
    a, b, cache = dirs
    spec = WeightSpec("model.pth")
    cache.mkdir()
    (cache / "model.pth").write_bytes(b"c")
    assert find_weights(spec) == cache / "model.pth"
    (b / "model.pth").write_bytes(b"b")
    assert find_weights(spec) == b / "model.pth"
    (a / "model.pth").write_bytes(b"a")
    assert find_weights(spec) == a / "model.pth"
    other = a / "mine.pth"
    other.write_bytes(b"x")
    assert find_weights(spec, override=other) == other
    with pytest.raises(WeightsNotFoundError, match="weights=.*nope.pth: no such file"):
        find_weights(spec, override=a / "nope.pth")


def test_download_checks_sha256_and_lands_in_cache(dirs, tmp_path):
    _, _, cache = dirs
    payload = b"weights" * 1000
    src = tmp_path / "remote.bin"
    src.write_bytes(payload)
    good = WeightSpec("dl.pth", urls=(src.as_uri(),), sha256=hashlib.sha256(payload).hexdigest())
    assert find_weights(good) == cache / "dl.pth"
    assert (cache / "dl.pth").read_bytes() == payload
    bad = WeightSpec("bad.pth", urls=(src.as_uri(),), sha256="0" * 64)
    with pytest.raises(WeightsNotFoundError, match="'bad.pth' not found"):
        find_weights(bad)
    assert not (cache / "bad.pth").exists() and not (cache / "bad.pth.part").exists()


def test_offline_error_names_file_url_and_places(dirs, monkeypatch):
    a, b, cache = dirs
    monkeypatch.setenv("LOCALFEAT_OFFLINE", "1")
    spec = WeightSpec("x.pth", urls=("https://example.org/x.pth",))
    with pytest.raises(WeightsNotFoundError) as info:
        find_weights(spec)
    text = str(info.value)
    assert "'x.pth' not found" in text and "https://example.org/x.pth" in text
    assert str(a) in text and str(cache) in text and "LOCALFEAT_WEIGHTS" in text and "weights=PATH" in text
    assert hub.status(spec) == "missing: x.pth (licence unknown; sha256 NOT pinned)"


def test_non_commercial_notice_once(dirs, caplog):
    a, _, _ = dirs
    (a / "nc.pth").write_bytes(b"1")
    spec = WeightSpec("nc.pth", licence="CC BY-NC-SA 3.0", non_commercial=True)
    with caplog.at_level("WARNING"):
        find_weights(spec)
        find_weights(spec)
    assert sum("NON-COMMERCIAL" in r.message for r in caplog.records) == 1


def test_local_file_is_checked_against_the_pinned_hash(dirs):
    a, _, _ = dirs
    payload = b"official bytes" * 100
    spec = WeightSpec("pinned.pth", sha256=hashlib.sha256(payload).hexdigest())
    (a / "pinned.pth").write_bytes(payload)
    assert find_weights(spec) == a / "pinned.pth"
    (a / "pinned.pth").write_bytes(payload[:-1])  # truncated
    actual = hashlib.sha256(payload[:-1]).hexdigest()
    with pytest.raises(hub.WeightsHashError) as info:
        find_weights(spec)
    text = str(info.value)
    assert str(a / "pinned.pth") in text and f"expected {spec.sha256}" in text and f"sha256 {actual}" in text
    # weights=PATH is the user's own file: no hash.
    assert find_weights(spec, override=a / "pinned.pth") == a / "pinned.pth"


def test_unpinned_file_is_used_with_a_warning_once(dirs, caplog):
    a, _, _ = dirs
    (a / "free.pth").write_bytes(b"1")
    spec = WeightSpec("free.pth")
    with caplog.at_level("WARNING"):
        find_weights(spec)
        find_weights(spec)
    warnings = [r.message for r in caplog.records if "free.pth" in r.message]
    assert len(warnings) == 1 and "no sha256 is pinned" in warnings[0] and "UNVERIFIED" in warnings[0]


def test_models_listing_shows_licence_and_pinned_hash(capsys):
    from localfeat.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    blocks, name = {}, None
    for line in out.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            name = line.strip()
            blocks[name] = ""
        elif name is not None:
            blocks[name] += line + "\n"
    assert "depth-save.pth (licence Apache-2.0; sha256 pinned)" in blocks["disk"]
    assert "superpoint_v1.pth (licence Magic Leap SuperPoint licence" in blocks["superpoint"]
    assert "non-commercial; sha256 pinned)" in blocks["superpoint"]
    assert "d2_tf.pth (licence Clear BSD; sha256 NOT pinned)" in blocks["d2net"]
    assert "xfeat-lighterglue.pt (licence Apache-2.0; sha256 pinned)" in blocks["lighterglue"]
    assert "superpoint_lightglue.pth (licence Apache-2.0; sha256 pinned)" in blocks["lightglue"]
