"""Row access: read_rows on memory maps against plain indexing, a truncated file named, and streamed blocks
that do not depend on how many rows are read at once."""

import os
import re

import numpy as np
import pytest
import torch

from hf_ifbeta.arrays import BLOCK_ROWS, ProxyData, read_rows, scan


def saved(tmp_path, array, name="a.npy"):
    np.save(tmp_path / name, array)
    return np.load(tmp_path / name, mmap_mode="r")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int64])
def test_read_rows_of_a_memmap_equals_the_in_memory_array(tmp_path, dtype):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(500, 7)) * 100).astype(dtype)
    mm = saved(tmp_path, array)
    rows = np.unique(np.concatenate([rng.choice(500, 60, replace=False), np.arange(100, 120), [0, 499]]))
    out = read_rows(mm, rows)
    assert type(out) is np.ndarray and out.dtype == array.dtype  # a copy in memory, not a map
    np.testing.assert_array_equal(out, array[rows])
    np.testing.assert_array_equal(read_rows(array, rows), array[rows])  # in-memory source: plain indexing
    np.testing.assert_array_equal(read_rows(mm, np.arange(40, 90)), array[40:90])  # one run of rows
    np.testing.assert_array_equal(read_rows(mm[200:], rows[:10]), array[200:][rows[:10]])  # a view starting inside
    assert read_rows(mm, np.array([], dtype=np.int64)).shape == (0, 7)


def test_read_rows_of_a_1d_memmap(tmp_path):
    labels = np.arange(300, dtype=np.int64) * 7
    rows = np.array([0, 1, 2, 50, 299])
    np.testing.assert_array_equal(read_rows(saved(tmp_path, labels), rows), rows * 7)


def test_a_truncated_file_is_named(tmp_path):
    path = tmp_path / "features.bin"
    np.memmap(path, dtype=np.float32, mode="w+", shape=(100, 4)).flush()
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=(100, 4))
    os.truncate(path, 50 * 4 * 4)  # 50 of the 100 rows left
    np.testing.assert_array_equal(read_rows(mm, np.arange(10, 20)), np.zeros((10, 4), np.float32))
    with pytest.raises(EOFError, match=re.escape(f"{path} ended before row 60: the file is shorter than the array")):
        read_rows(mm, np.array([3, 60, 80]))


def test_streamed_blocks_do_not_depend_on_chunk_size(tmp_path):
    rng = np.random.default_rng(1)
    n = 2 * BLOCK_ROWS + 300
    h, z = rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=(n, 2)).astype(np.float32)
    y = rng.integers(0, 2, n)
    rows = np.sort(rng.choice(n, n - 100, replace=False))

    def blocks(chunk_size):
        data = ProxyData(saved(tmp_path, h, "h.npy"), z, y, chunk_size, torch.device("cpu"), torch.float64)
        scan(data, standardize=True)
        return data, [(chunk.x, chunk.z, chunk.y, chunk.index) for chunk in data.stream(rows)]

    data, small = blocks(1)  # rounded up to one block per read
    _, large = blocks(10**6)
    assert data.chunk_size == BLOCK_ROWS and len(small) == len(large) == 3
    for a, b in zip(small, large):
        for u, v in zip(a, b):
            assert np.array_equal(np.asarray(u), np.asarray(v))
    x = torch.cat([block[0] for block in small])
    expected = (torch.as_tensor(h[rows], dtype=torch.float64) - data.mean) / data.std
    torch.testing.assert_close(x[:, :-1], expected)
    assert bool((x[:, -1] == 1).all())
    np.testing.assert_allclose(data.mean.numpy(), h.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(data.std.numpy(), h.std(0), rtol=1e-6)


def test_scan_names_the_non_finite_row():
    h = np.zeros((10, 2), np.float32)
    h[7, 1] = np.inf
    data = ProxyData(h, np.zeros((10, 3), np.float32), np.zeros(10, np.int64), 4, torch.device("cpu"), torch.float64)
    with pytest.raises(ValueError, match="features of row 7 are not finite"):
        scan(data, standardize=False)
