"""Row access to the teacher's cached arrays: memory-mapped reads, and the proxy head's rows streamed in blocks.

`read_rows` copies rows of an array (a read-only `np.memmap` included) without leaving the map's pages in the
process. `ProxyData` holds the features, logits and labels with their standardisation and the compute device /
dtype; its `Stream` yields `Chunk`s of design rows `x = [(h - mean) / std, 1]`. Every pass computes block by
block (`BLOCK_ROWS`, blocks starting at multiples of it in the stream) and sums over rows in float64 in row
order, so no result depends on how many rows are read at once; `ieee_float32` keeps float32 products at full
precision whatever the caller's TF32 setting.
"""

import contextlib
import mmap
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from .losses import ProxyLoss, row_terms, soft_targets

__all__ = ["BLOCK_ROWS", "Chunk", "ProxyData", "Stream", "ieee_float32", "read_rows", "scan"]

# Rows per compute block: large enough that the matrix products run at full speed on wide features.
BLOCK_ROWS = 1024


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """float32 matrix products in IEEE float32 inside the block, the caller's setting restored after.

    `--tf32` (transformers' `enable_tf32`) or `torch.set_float32_matmul_precision("high")` put float32 products
    on TF32 (CUDA) or reduced-precision kernels (oneDNN), 10 mantissa bits: the float32 solves and hypergradients
    of the proxy head need the full 23. Set through the per-backend API, which reads back whichever API the caller
    used; a value equal to the parent backend's was inherited and is restored as inherited ("none"), so a later
    global setting still reaches it.
    """
    pairs = ((torch.backends.cuda.matmul, torch.backends.cudnn), (torch.backends.mkldnn.matmul, torch.backends.mkldnn))
    saved = ["none" if op.fp32_precision == parent.fp32_precision else op.fp32_precision for op, parent in pairs]
    for op, _ in pairs:
        op.fp32_precision = "ieee"
    try:
        yield
    finally:
        for (op, _), value in zip(pairs, saved):
            op.fp32_precision = value


def read_rows(array, rows: np.ndarray) -> np.ndarray:
    """An in-memory copy of `array[rows]` (rows: sorted ids) that leaves no page of a memory map resident.

    A page of a memory map that has been read stays in the process's resident set until the kernel needs the
    memory, and a fault maps a whole page-cache folio around the row, so reading a cache through `np.memmap`
    grows the resident set by up to the whole file, and even a sparse gather maps far more than its rows. A
    read-only `np.memmap` of a file is therefore read with plain file reads, one per run of consecutive rows,
    into a fresh buffer: the resident set grows by the copy only, and the page cache (reclaimable) does the
    caching. Any other array is indexed (a run of consecutive rows as a slice).

    Args:
        array (`np.ndarray`): the source, e.g. a `np.memmap` opened with `mmap_mode="r"`.
        rows (`np.ndarray`): sorted row ids.

    Raises:
        `EOFError` naming the file when it ends before a requested row.
    """
    rows = np.asarray(rows, dtype=np.int64)
    source = _file_rows(array)
    if source is None or len(rows) == 0:
        consecutive = len(rows) and rows[-1] - rows[0] + 1 == len(rows)
        out = np.array(array[slice(int(rows[0]), int(rows[-1]) + 1) if consecutive else rows])  # always a copy
        _release_pages(array)
        return out
    path, first, row_bytes = source
    out = np.empty((len(rows),) + tuple(array.shape[1:]), dtype=array.dtype)
    buffer = memoryview(out.reshape(-1).view(np.uint8))
    cuts = np.flatnonzero(np.diff(rows) != 1) + 1
    with open(path, "rb", buffering=0) as f:
        for s, e in zip([0, *cuts.tolist()], [*cuts.tolist(), len(rows)]):  # runs rows[s:e] of consecutive ids
            f.seek(first + int(rows[s]) * row_bytes)
            target, done = buffer[s * row_bytes : e * row_bytes], 0
            while done < len(target):
                got = f.readinto(target[done:])
                if not got:
                    raise EOFError(f"{path} ended before row {int(rows[e - 1])}: the file is shorter than the array.")
                done += got
    return out


def _file_rows(array) -> Optional[Tuple[str, int, int]]:
    """`(path, file offset of row 0, bytes per row)` of a read-only `np.memmap` with C-contiguous rows, else None."""
    mm, path = getattr(array, "_mmap", None), getattr(array, "filename", None)
    if mm is None or path is None or getattr(array, "mode", None) != "r" or not array.flags.c_contiguous:
        return None
    try:
        base = np.frombuffer(mm, dtype=np.uint8).ctypes.data  # address of the map's first byte
    except (TypeError, ValueError, BufferError):
        return None
    # np.memmap maps from `offset` rounded down to the allocation granularity; views share the map.
    map_start = array.offset - array.offset % mmap.ALLOCATIONGRANULARITY
    return path, map_start + (array.ctypes.data - base), array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))


def _release_pages(array) -> None:
    """Drop the resident pages of a read-only `np.memmap` from this process (no-op for anything else)."""
    mm = getattr(array, "_mmap", None)
    if mm is None or getattr(array, "mode", None) != "r" or not hasattr(mm, "madvise"):
        return  # copy-on-write ("c") or writable maps: dropping pages could discard writes
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError, AttributeError):  # e.g. a platform without MADV_DONTNEED: memory is only larger
        pass


class Chunk:
    """One block of rows on the compute device: x (m, d + 1) standardised with a ones column, z (m, C), y (m,),
    and their positions `index` (m,) in the stream's rows."""

    __slots__ = ("x", "z", "y", "index", "targets", "memo")

    def __init__(self, x, z, y, index=None):
        self.x, self.z, self.y, self.index = x, z, y, index
        self.targets: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # soft_targets(z), computed on first use
        self.memo: Dict[str, Any] = {}

    def terms(self, loss: ProxyLoss, theta: torch.Tensor):
        """`row_terms` of the head theta (C, d + 1) on these rows: `(l, e, p, p_tau)`."""
        if self.targets is None:
            self.targets = soft_targets(loss, self.z)
        return row_terms(loss, self.x @ theta.to(self.x.dtype).T, self.y, self.targets)

    def terms_at(self, loss: ProxyLoss, theta: torch.Tensor, token: object):
        """`terms` memoised under `token` (one theta at a time), for the passes that revisit a fixed head."""
        if self.memo.get("token") is not token:
            self.memo = {"token": token, "terms": self.terms(loss, theta)}
        return self.memo["terms"]


class ProxyData:
    """The cached arrays, the standardisation and where / in which dtype to compute.

    Args:
        features (`np.ndarray`): (n, d) teacher features; may be a `np.memmap`.
        logits (`np.ndarray`): (n, C) teacher logits.
        labels (`np.ndarray`): (n,) class ids.
        chunk_size (`int`): rows read at once, rounded down to whole compute blocks (at least one block).
        device (`torch.device`), dtype (`torch.dtype`): where and in which dtype the chunks live.
    """

    def __init__(self, features, logits, labels, chunk_size, device, dtype):
        self.features, self.logits, self.labels = features, logits, labels
        self.n, self.d = features.shape
        self.num_classes = logits.shape[1]
        self.device, self.dtype = device, dtype
        self.chunk_size = max(1, chunk_size // BLOCK_ROWS) * BLOCK_ROWS
        self.mean = torch.zeros(self.d, dtype=torch.float64, device=device)
        self.std = torch.ones(self.d, dtype=torch.float64, device=device)

    def load(self, rows: np.ndarray) -> Chunk:
        # x = [(h - mean) / std, 1] built in place: one (m, d + 1) buffer besides the stored-dtype copy of h.
        x = torch.empty(len(rows), self.d + 1, dtype=self.dtype, device=self.device)
        h = x[:, : self.d]
        h.copy_(torch.from_numpy(read_rows(self.features, rows)))  # (m, d), cast to the compute dtype
        h.sub_(self.mean.to(self.dtype)).div_(self.std.to(self.dtype))
        x[:, self.d] = 1.0
        z = torch.from_numpy(read_rows(self.logits, rows)).to(self.device, self.dtype)
        y = torch.from_numpy(read_rows(self.labels, rows)).to(self.device)
        return Chunk(x, z, y)

    def subset(self, rows: np.ndarray) -> "ProxyData":
        """The rows `rows` (sorted ids) copied into memory, in their stored dtypes, with this standardisation.

        Gathered `chunk_size` rows at a time, so a memory-mapped source never holds more than one chunk of pages.
        """
        out = []
        for array in (self.features, self.logits, self.labels):
            copy = np.empty((len(rows),) + tuple(array.shape[1:]), dtype=array.dtype)
            for start in range(0, len(rows), self.chunk_size):
                copy[start : start + self.chunk_size] = read_rows(array, rows[start : start + self.chunk_size])
            out.append(copy)
        data = ProxyData(*out, self.chunk_size, self.device, self.dtype)
        data.mean, data.std = self.mean, self.std
        return data

    def stream(self, rows: np.ndarray, keep: bool = False) -> "Stream":
        return Stream(self, rows, keep)


class Stream:
    """Chunks of `rows` (sorted ids). With `keep`, the chunks (and their memoised per-row terms) stay in memory
    after the first pass, so the fit, the Hessian and every solver iteration read the rows once: memory
    O(len(rows)), hence only for a bounded subsample or a single chunk."""

    def __init__(self, data: ProxyData, rows: np.ndarray, keep: bool):
        self.data, self.rows, self.keep = data, rows, keep
        self._kept: Optional[list] = None

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Chunk]:
        """Blocks of `BLOCK_ROWS` rows (views into chunks of `chunk_size` rows read at once)."""
        if self._kept is not None:
            yield from self._kept
            return
        kept = []
        for start in range(0, len(self.rows), self.data.chunk_size):
            chunk = self.data.load(self.rows[start : start + self.data.chunk_size])
            for s in range(0, len(chunk.y), BLOCK_ROWS):
                e = s + BLOCK_ROWS
                index = np.arange(start + s, start + s + len(chunk.y[s:e]))
                block = Chunk(chunk.x[s:e], chunk.z[s:e], chunk.y[s:e], index)
                if self.keep:
                    kept.append(block)
                yield block
        if self.keep:
            self._kept = kept  # only a completed pass is kept


def scan(data: ProxyData, standardize: bool) -> None:
    """One pass over every row: reject non-finite features / logits (naming the row) and set mean / std."""
    total = torch.zeros(data.d, dtype=torch.float64, device=data.device)
    total_sq = torch.zeros_like(total)
    shift = None
    for start in range(0, data.n, data.chunk_size):
        stop = min(start + data.chunk_size, data.n)
        for name, array in (("features", data.features), ("logits", data.logits)):
            chunk = torch.from_numpy(read_rows(array, np.arange(start, stop))).to(data.device, torch.float32)
            bad = ~torch.isfinite(chunk).all(1)
            if bad.any():
                row = start + int(bad.nonzero()[0, 0])
                raise ValueError(
                    f"{name} of row {row} are not finite (NaN or inf): {np.asarray(array[row])[:8]} ... "
                    "Check the teacher pass that produced them."
                )
            if name == "features" and standardize:
                shift = chunk[0].clone() if shift is None else shift  # shifted sums keep the variance accurate
                for s in range(0, len(chunk), BLOCK_ROWS):  # per-block sums: independent of chunk_size
                    diff = chunk[s : s + BLOCK_ROWS] - shift
                    total += diff.sum(0, dtype=torch.float64)
                    total_sq += (diff * diff).sum(0, dtype=torch.float64)
    if standardize:
        mean_shifted = total / data.n
        var = (total_sq / data.n - mean_shifted**2).clamp_min(0.0)
        data.mean = shift.to(torch.float64) + mean_shifted
        std = var.sqrt()
        # Constant features carry nothing: leave them unscaled instead of dividing by ~0.
        data.std = torch.where(std > 1e-8 * data.mean.abs().clamp_min(1.0), std, torch.ones_like(std))
