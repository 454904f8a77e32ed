"""hf_ifbeta.files: one atomic writer for every cache, and JSON of NumPy values."""

import json

import numpy as np
import pytest

from hf_ifbeta.files import atomic_path, atomic_write, temporary_name, to_jsonable


class DiskFull(OSError):
    pass


def test_a_write_failing_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "meta.json"
    atomic_write(path, lambda f: f.write(b'{"complete": true}'))

    def half_then_fail(f):
        f.write(b'{"comp')
        raise DiskFull("No space left on device")

    with pytest.raises(DiskFull):
        atomic_write(path, half_then_fail)
    assert json.loads(path.read_text()) == {"complete": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_a_new_file_appears_whole_or_not_at_all(tmp_path):
    path = tmp_path / "features.npy"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(4, 3))
            out[:2] = 1.0
            raise KeyboardInterrupt  # a killed job
    assert list(tmp_path.iterdir()) == []
    with atomic_path(path) as tmp:
        assert tmp == temporary_name(path) and tmp.parent == tmp_path and tmp.name.startswith(".features.npy.")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(4, 3))
        out[:] = 2.0
        out.flush()
        del out
        assert not path.exists()  # renamed only when the block ends
    np.testing.assert_array_equal(np.load(path), np.full((4, 3), 2.0, dtype=np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npy"]


def test_to_jsonable_turns_numpy_into_lists_and_numbers():
    value = {"a": np.float32(0.5), "history": np.arange(3), "nested": [np.int64(7), None], "other": object}
    out = to_jsonable(value)
    assert out["a"] == 0.5 and out["history"] == [0, 1, 2] and out["nested"] == [7, None]
    assert out["other"] == str(object)
    assert to_jsonable(None) is None
    json.dumps(out)
