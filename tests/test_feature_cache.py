"""hf_ifbeta.feature_cache: the teacher-output cache on disk, on tiny synthetic arrays (the teacher pass
that fills it is tested in test_features.py, its failure modes in test_reliability.py)."""

import json
import logging
import os

import numpy as np
import pytest

from hf_ifbeta.feature_cache import (
    CorruptCacheError,
    TeacherOutputs,
    cache_key,
    chunk_name,
    drop_unusable_files,
    read_chunk,
    start_entry,
    write_chunk,
    write_meta,
)


def tiny_outputs(n=6, d=4, c=3, seed=0):
    rng = np.random.default_rng(seed)
    head = (rng.normal(size=(c, d)).astype(np.float32), rng.normal(size=c).astype(np.float32))
    return TeacherOutputs(
        rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, c)).astype(np.float32),
        np.arange(n, dtype=np.int64) % c, head=head, meta={"teacher": "tiny"},
    )  # fmt: skip


def test_saved_outputs_load_back_memory_mapped(tmp_path):
    out = tiny_outputs()
    out.save(tmp_path / "saved")
    loaded = TeacherOutputs.load(tmp_path / "saved")
    assert isinstance(loaded.features, np.memmap) and (loaded.n, loaded.num_features, loaded.num_classes) == (6, 4, 3)
    for name in ("features", "logits", "labels"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(out, name))
    np.testing.assert_array_equal(loaded.head[1], out.head[1])
    assert loaded.meta == {"teacher": "tiny", "complete": True, "cache_path": str((tmp_path / "saved").resolve())}


def test_a_changed_or_missing_file_is_named(tmp_path):
    tiny_outputs().save(tmp_path / "saved")
    path = tmp_path / "saved" / "logits.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # as any write leaves it, however soon
    with pytest.raises(CorruptCacheError, match=r"logits.npy does not match the sha256 .* Delete the folder"):
        TeacherOutputs.load(tmp_path / "saved")
    path.unlink()
    with pytest.raises(CorruptCacheError, match=r"logits.npy is missing"):
        TeacherOutputs.load(tmp_path / "saved")


def test_the_key_hashes_the_identity_whatever_its_order():
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": [1, 2], "a": 1})
    assert cache_key({"a": 1}) != cache_key({"a": 2}) and len(cache_key({"a": 1})) == 32


def test_an_entry_keeps_its_identity_and_chunk_size(tmp_path, caplog):
    identity = {"version": 1, "num_rows": 6}
    assert start_entry(tmp_path / "k", identity, {"identity": identity, "chunk_size": 4})
    with caplog.at_level(logging.WARNING):
        assert not start_entry(tmp_path / "k", identity, {"identity": identity, "chunk_size": 2})
    assert "with the chunk_size it started with, 4, not 2" in caplog.text
    with pytest.raises(ValueError, match=r"made with other arguments .* Delete that folder"):
        start_entry(tmp_path / "k", {**identity, "num_rows": 7}, {"identity": identity, "chunk_size": 4})


def test_a_chunk_reads_back_and_a_damaged_one_is_removed(tmp_path):
    out = tiny_outputs()
    write_chunk(tmp_path, 1, out.features, out.logits, out.labels, np.array([4, 10]))
    chunk = read_chunk(tmp_path / chunk_name(1), ("features", "logits", "labels"))
    np.testing.assert_array_equal(chunk["features"], out.features)
    assert chunk["rows"].tolist() == [4, 10]
    path = tmp_path / chunk_name(1)
    path.write_bytes(path.read_bytes()[:100])  # a truncated file
    with pytest.raises(CorruptCacheError, match=r"chunk_00001.npz is damaged .* removed"):
        read_chunk(path, ("features",))
    assert not path.exists()


def with_coverage(out, k=8, seed=1):
    coverage = np.random.default_rng(seed).normal(size=(out.n, k)).astype(np.float32)
    return TeacherOutputs(out.features, out.logits, out.labels, head=out.head, meta=out.meta, coverage=coverage)


def test_the_coverage_view_saves_and_loads_with_the_rest_and_is_none_without_it(tmp_path):
    plain = tiny_outputs()
    plain.save(tmp_path / "plain")
    assert TeacherOutputs.load(tmp_path / "plain").coverage is None
    assert not (tmp_path / "plain" / "coverage.npy").exists()
    out = with_coverage(plain)
    out.save(tmp_path / "saved")
    loaded = TeacherOutputs.load(tmp_path / "saved")
    assert isinstance(loaded.coverage, np.memmap)
    np.testing.assert_array_equal(loaded.coverage, out.coverage)
    with pytest.raises(ValueError, match=r"one row per example.*'coverage': 5"):
        TeacherOutputs(plain.features, plain.logits, plain.labels, coverage=out.coverage[:5])
    # Saved again over the same folder without a view (or a head), the earlier save's files do not come back.
    TeacherOutputs(plain.features, plain.logits, plain.labels).save(tmp_path / "saved")
    again = TeacherOutputs.load(tmp_path / "saved")
    assert again.coverage is None and again.head is None


def test_a_damaged_or_missing_coverage_file_is_named(tmp_path):
    with_coverage(tiny_outputs()).save(tmp_path / "saved")
    path = tmp_path / "saved" / "coverage.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(CorruptCacheError, match=r"coverage.npy does not match the sha256"):
        TeacherOutputs.load(tmp_path / "saved")
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CorruptCacheError, match=r"coverage.npy has \d+ bytes but"):
        TeacherOutputs.load(tmp_path / "saved")
    path.unlink()
    with pytest.raises(CorruptCacheError, match=r"coverage.npy is missing"):
        TeacherOutputs.load(tmp_path / "saved")


def test_an_entry_that_asks_for_the_view_misses_it_even_without_a_record(tmp_path):
    """The identity, not only the file records, says that the view belongs to the entry."""
    tiny_outputs().save(tmp_path / "saved")
    meta = json.loads((tmp_path / "saved" / "meta.json").read_text())
    write_meta(tmp_path / "saved", {**meta, "identity": {"coverage": {"view": "stage"}}})
    with pytest.raises(CorruptCacheError, match=r"coverage.npy is missing"):
        TeacherOutputs.load(tmp_path / "saved")


def test_a_chunk_without_the_view_its_entry_asks_for_is_removed(tmp_path, caplog):
    out = tiny_outputs()
    meta = {"chunk_size": 3, "identity": {"coverage": {"view": "stage"}}}
    write_meta(tmp_path, meta)
    write_chunk(tmp_path, 0, out.features[:3], out.logits[:3], out.labels[:3], np.array([0, 3]))
    write_chunk(tmp_path, 1, out.features[3:], out.logits[3:], out.labels[3:], np.array([3, 6]), np.ones((3, 2)))
    with caplog.at_level(logging.WARNING):
        drop_unusable_files(tmp_path, 6)
    assert not (tmp_path / chunk_name(0)).exists() and (tmp_path / chunk_name(1)).exists()
    assert "chunk_00000.npz is damaged" in caplog.text
    assert read_chunk(tmp_path / chunk_name(1), ("features", "coverage"))["coverage"].shape == (3, 2)
