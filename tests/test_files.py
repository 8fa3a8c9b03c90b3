"""Tests for xmodal.files: listings, missing-file errors, atomic writes, value scans,
the demo cache folder, JSON-able conversion. References are plain NumPy / hashlib."""

import hashlib
import json
import pathlib
import pickle

import numpy as np
import pytest

from xmodal import files


def test_listing_and_require_file(tmp_path):
    assert files.listing(tmp_path) == "(empty)"
    assert files.listing(tmp_path / "nope") == "(does not exist)"
    (tmp_path / "b.npy").write_bytes(b"")
    (tmp_path / "a.pkl").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    assert files.listing(tmp_path) == "a.pkl, b.npy, sub/"
    assert files.listing(tmp_path, pattern="*.pkl") == "a.pkl"
    assert files.listing(tmp_path / "a.pkl") == "(not a folder)"
    for i in range(40):
        (tmp_path / "sub" / f"f{i:02d}").write_bytes(b"")
    assert files.listing(tmp_path / "sub").endswith("f29 ... and 10 more")

    assert files.require_file(tmp_path / "a.pkl", "x") == tmp_path / "a.pkl"
    with pytest.raises(FileNotFoundError) as e:
        files.require_file(tmp_path / "c.pkl", "labels")
    msg = str(e.value)
    assert "\n" not in msg and "c.pkl [labels]: file not found" in msg
    assert "holds: a.pkl, b.npy, sub/" in msg
    with pytest.raises(FileNotFoundError, match=r"\[labels\]: expected a file, got a"):
        files.require_file(tmp_path, "labels")
    with pytest.raises(FileNotFoundError, match=r"folder .*nope does not exist"):
        files.require_file(tmp_path / "nope" / "x.pkl", "labels")


def test_atomic_writes_replace_and_leave_nothing_behind(tmp_path):
    target = tmp_path / "deep" / "out.json"
    files.atomic_write_text(target, "one")
    files.atomic_write_text(target, "two")
    assert target.read_text() == "two"
    files.atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    obj = {"a": np.arange(3), "b": (1, "x")}
    files.atomic_write_pickle(tmp_path / "o.pkl", obj)
    assert (tmp_path / "o.pkl").read_bytes() == pickle.dumps(obj, protocol=4)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        files.atomic_write_pickle(tmp_path / "o.pkl", Unpicklable())
    assert (tmp_path / "o.pkl").read_bytes() == pickle.dumps(obj, protocol=4)
    leftovers = [p.name for p in tmp_path.rglob(".*")]
    assert leftovers == [], leftovers


def test_scan_values_matches_numpy_in_small_blocks():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 4, 3)).astype(np.float32)
    x[[2, 9, 30]] = 0.0
    x[5, 1, 2], x[5, 0, 0], x[21, 3, 1] = np.nan, np.inf, -np.inf
    for block_bytes in (1, 100, 10**9):  # one row, a few rows, everything
        scan = files.scan_values(x, block_bytes=block_bytes)
        flat = x.reshape(37, -1)
        assert scan.rows == 37 and scan.nonfinite == 3
        assert scan.first_nonfinite_row == 5
        assert scan.zero_rows == int((~flat.any(axis=1)).sum()) == 3
        assert not scan.all_zero
    assert files.scan_values(np.zeros((4, 2))).all_zero
    assert not files.scan_values(np.zeros((0, 2))).all_zero
    ok = files.scan_values(np.ones((3, 2)))
    assert ok.first_nonfinite_row == -1 and ok.nonfinite == 0


def test_check_finite_and_finite_blocks_name_file_field_row():
    x = np.ones((10, 3), np.float16)
    assert files.check_finite(x, "f.npy", "images").zero_rows == 0
    x[7, 1] = np.nan
    with pytest.raises(ValueError) as e:
        files.check_finite(x, "f.npy", "images", block_bytes=6)
    assert str(e.value) == (
        "f.npy [images]: expected finite values, got NaN/Inf in row 7 (of 10)"
    )
    seen = []
    with pytest.raises(ValueError, match="row 7"):
        for start, block in files.finite_blocks(x, "f.npy", "images", block_bytes=12):
            seen.append((start, block.shape[0]))
    assert seen == [(0, 2), (2, 2), (4, 2)]  # the bad block is never yielded


def test_jsonable_cache_dir_and_sha256(tmp_path, monkeypatch):
    value = {
        1: np.float32(0.5),
        "a": (np.int64(3), {2, 1}),
        "p": pathlib.Path("x/y"),
        "n": float("nan"),
        "arr": np.arange(4).reshape(2, 2),
        "b": b"z",
    }
    got = files.jsonable(value)
    assert got == {
        "1": 0.5,
        "a": [3, [1, 2]],
        "p": "x/y",
        "n": None,
        "arr": [[0, 1], [2, 3]],
        "b": "z",
    }
    json.dumps(got, allow_nan=False)
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "c"))
    assert files.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("XMODAL_CACHE")
    assert files.cache_dir() == pathlib.Path("~/.cache/xmodal").expanduser()
    data = bytes(range(256)) * 1000
    (tmp_path / "f").write_bytes(data)
    digest = files.sha256_file(tmp_path / "f", chunk_bytes=1000)
    assert digest == hashlib.sha256(data).hexdigest()
