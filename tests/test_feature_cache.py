"""hf_ifbeta.feature_cache: the teacher-output cache on disk, on tiny synthetic arrays (the teacher pass
that fills it is tested in test_features.py, its failure modes in test_reliability.py)."""

import logging
import os

import numpy as np
import pytest

from hf_ifbeta.feature_cache import (
    CorruptCacheError,
    TeacherOutputs,
    cache_key,
    chunk_name,
    read_chunk,
    start_entry,
    write_chunk,
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
