"""Offline teacher logits: the teacher's logits for every (epoch, row) of a seeded augmentation stream, on disk.

With `DecodedImageDataset` the augmented view of a row at an epoch is a function of (seed, epoch, source
row), so the teacher's logits for it can be computed once and read back by every later run on any
subset of the same source rows: other ratios, other pruning methods, reruns. `DistillationTrainer`
uses it when `DistillationTrainingArguments(teacher_logit_cache=True)`.

Layout, under `cache_dir/<key>/` (the key hashes the teacher's weights, the source dataset's
fingerprint, the transform and the seed, so nothing made differently is ever read):

- `meta.json`: what made the entry;
- `epoch_00000.npy`, ...: (n, C + 1) float32 per epoch, the logits of each source row and, in the last
  column, 1 once the row's logits are written (0 = still to compute). One file per epoch holds both,
  so a file created by one process and replaced by another never pairs flags with foreign logits.
"""

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import numpy as np
import torch
import torch.nn as nn

from .files import atomic_write, temporary_name

__all__ = ["TeacherLogitCache", "state_dict_digest"]

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
META_FILE = "meta.json"


def state_dict_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes): the identity of its weights."""
    state = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        state.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        state.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return state.hexdigest()


class TeacherLogitCache:
    """Teacher logits per (epoch, source row), filled as the teacher runs and reused on later runs.

    Args:
        cache_dir (`str` or `os.PathLike`): root folder; the entry is `cache_dir/<key>/`.
        identity (`Dict[str, Any]`): what determines the logits (teacher digest, the dataset's
            `augmentation_identity()`, the teacher's precision); hashed into the key.
        num_rows (`int`): rows of the source dataset.

    Example:
    ```python
    >>> cache = TeacherLogitCache("cache", identity, num_rows=50_000)
    >>> logits = cache.get(epoch, row_ids, lambda missing: teacher(pixels[missing]))  # (B, C)
    ```
    """

    def __init__(self, cache_dir: Union[str, os.PathLike], identity: Dict[str, Any], num_rows: int):
        identity = {"version": CACHE_VERSION, **identity, "num_rows": int(num_rows)}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
        self.path = Path(cache_dir) / key
        self.identity, self.num_rows = identity, int(num_rows)
        self.path.mkdir(parents=True, exist_ok=True)
        meta = self.path / META_FILE
        if meta.exists():
            found = json.loads(meta.read_text()).get("identity")
            if found != identity:
                raise ValueError(f"The teacher-logit cache at {self.path} was made by {found}, not {identity}. Delete it.")
        else:
            atomic_write(meta, lambda f: f.write(json.dumps({"identity": identity}, indent=2).encode()))
        self._epochs: Dict[int, np.ndarray] = {}
        self.computed = 0  # rows the teacher ran on through this object
        self.reused = 0  # rows read from the cache

    def get(self, epoch: int, rows: torch.Tensor, teacher: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Logits (B, C) float32 of source `rows` (B,) at `epoch`; `teacher(mask)` gives the logits of the
        batch rows where the boolean (B,) `mask` is set, the rows not cached yet."""
        rows_np = rows.detach().cpu().numpy()
        table = self._table(int(epoch))
        filled = table is not None and bool(table[rows_np, -1].all())
        if filled:
            self.reused += len(rows_np)
            return torch.from_numpy(np.ascontiguousarray(table[rows_np, :-1])).to(rows.device)
        missing = np.ones(len(rows_np), dtype=bool) if table is None else table[rows_np, -1] == 0
        fresh = teacher(torch.from_numpy(missing).to(rows.device)).float()  # (b, C)
        if table is None:
            table = self._table(int(epoch), num_classes=fresh.shape[-1])
        table[rows_np[missing], :-1] = fresh.detach().cpu().numpy()
        table[rows_np[missing], -1] = 1.0  # after the logits: a crash in between leaves the row to recompute
        self.computed += int(missing.sum())
        self.reused += int((~missing).sum())
        return torch.from_numpy(np.ascontiguousarray(table[rows_np, :-1])).to(rows.device)

    def flush(self) -> None:
        for table in self._epochs.values():
            table.flush()

    def _table(self, epoch: int, num_classes: Optional[int] = None) -> Optional[np.ndarray]:
        """The (n, C + 1) memory map of `epoch`; None when it does not exist and `num_classes` is not given."""
        if epoch in self._epochs:
            return self._epochs[epoch]
        path = self.path / f"epoch_{epoch:05d}.npy"
        if not path.exists():
            if num_classes is None:
                return None
            tmp = temporary_name(path)
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(self.num_rows, num_classes + 1)).flush()
            try:
                os.link(tmp, path)  # create-if-absent: another process may have created it meanwhile
            except FileExistsError:
                pass
            tmp.unlink()
        try:
            table = np.load(path, mmap_mode="r+")
        except ValueError as err:  # truncated: numpy cannot map the header's shape
            raise ValueError(f"The teacher-logit cache file {path} is damaged ({err}). Delete it; it is recomputed.") from err
        if table.ndim != 2 or table.shape[0] != self.num_rows or table.dtype != np.float32:
            raise ValueError(
                f"The teacher-logit cache file {path} holds {table.dtype} {table.shape}, expected float32 "
                f"({self.num_rows}, C + 1). Delete it; it is recomputed."
            )
        self._epochs[epoch] = table
        return table
