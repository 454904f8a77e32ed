"""Small-image datasets decoded once into a uint8 array, served with a seeded augmentation stream.

`decoded_images` decodes an image column once and keeps it on disk (memory-mapped); a
`DecodedImageDataset` serves batches of it through `PadCropFlip`, where the augmented view of a row at
an epoch depends only on (seed, epoch, source row), so that every subset of the same source sees the
same pixels and `TeacherLogitCache` can reuse the teacher's logits across runs.
"""

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import datasets
import numpy as np
import torch

from .files import atomic_path, default_cache_dir
from .images import decode_image_tensor
from .transforms import PadCropFlip, resize_to_square

__all__ = ["DecodedImageDataset", "decoded_images"]

logger = logging.getLogger(__name__)


def decoded_images(
    dataset: datasets.Dataset, image_column: str, size: int, cache_dir: Optional[str] = None
) -> np.ndarray:
    """Every image of `dataset[image_column]` as uint8 RGB at `size` x `size`: (n, 3, size, size), memory-mapped.

    Decoded once (`decode_image_tensor`; other sizes are resized on the shorter side and centre-cropped)
    and kept under `cache_dir/<key>.npy`, the key hashing the dataset's fingerprint, the column and the
    size; a file of the wrong shape (a killed copy) is decoded again with a warning.
    """
    identity = {"version": 1, "fingerprint": dataset._fingerprint, "rows": len(dataset), "column": image_column, "size": size}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "decoded"
    path = root / f"{key}.npy"
    shape = (len(dataset), 3, size, size)
    if path.exists():
        try:
            images = np.load(path, mmap_mode="r")
            if images.shape == shape and images.dtype == np.uint8:
                return images
            problem = f"holds {images.dtype} {images.shape}"
        except ValueError as err:  # truncated: numpy cannot map the header's shape
            problem = f"cannot be read ({err})"
        logger.warning("Decoded-image cache %s %s, expected uint8 %s: decoding again.", path, problem, shape)
    root.mkdir(parents=True, exist_ok=True)
    raw = dataset.select_columns([image_column])
    if isinstance(raw.features[image_column], datasets.Image):
        raw = raw.cast_column(image_column, datasets.Image(decode=False))
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        start = 0
        for batch in raw.iter(batch_size=1024):
            for i, value in enumerate(batch[image_column]):
                out[start + i] = resize_to_square(decode_image_tensor(value, start + i, image_column), size).numpy()
            start += len(batch[image_column])
        out.flush()
        del out
    return np.load(path, mmap_mode="r")


class DecodedImageDataset(torch.utils.data.Dataset):
    """Rows of a small-image dataset decoded once, served in batches with a seeded augmentation stream.

    A map-style torch dataset with `__getitems__` (whole batches at once, as `DataLoader` asks for them)
    and `set_epoch` (called by the Trainer's dataloader each epoch). Row `k` is source row `rows[k]`;
    its view at epoch e is `transform.params(seed, e, n)` at that source row, so every subset of the
    same source sees the same augmented pixels for the same row. Rows are
    `{"pixel_values" (3, S, S) float32, "labels", "teacher_logits", "row_ids" (source row), "epoch"}`.

    Args:
        images (`np.ndarray`): (n, 3, S, S) uint8, possibly memory-mapped (`decoded_images`).
        transform (`PadCropFlip`): augmentation (or, with `padding=0, flip=False`, evaluation) transform.
        labels (`np.ndarray`, *optional*): (n,) int64 class ids.
        teacher_logits (`np.ndarray`, *optional*): (n, C) float32 precomputed teacher logits.
        rows (`np.ndarray`, *optional*): the source rows served, in order; default all.
        seed (`int`, *optional*): seed of the augmentation stream (`set_seed`); None means 0 until set.
        fingerprint (`str`, *optional*): the source dataset's fingerprint, part of `augmentation_identity`.
    """

    def __init__(
        self,
        images: np.ndarray,
        transform: PadCropFlip,
        labels: Optional[np.ndarray] = None,
        teacher_logits: Optional[np.ndarray] = None,
        rows: Optional[np.ndarray] = None,
        seed: Optional[int] = None,
        fingerprint: Optional[str] = None,
    ):
        self.images, self.transform, self.labels, self.teacher_logits = images, transform, labels, teacher_logits
        self.rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.seed, self.fingerprint = seed, fingerprint
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # seen by DataLoader workers too
        self._params = None  # (epoch, seed, offsets, flips) of the last epoch served

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rows={len(self)}, source_rows={len(self.images)}, transform={self.transform!r})"

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        if isinstance(self.images, np.memmap) and self.images.filename:  # workers map the file, not a copy
            state["images"] = (self.images.filename, self.images.offset, self.images.shape)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        if isinstance(state["images"], tuple):
            filename, offset, shape = state["images"]
            state["images"] = np.memmap(filename, dtype=np.uint8, mode="r", offset=offset, shape=shape)
        self.__dict__.update(state)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def set_seed(self, seed: int) -> None:
        self.seed = int(seed)

    def augmentation_identity(self) -> Dict[str, Any]:
        """What determines the pixels of (source row, epoch): the teacher-logit cache's key."""
        return {
            "fingerprint": self.fingerprint,
            "source_rows": len(self.images),
            "transform": repr(self.transform),
            "seed": self.seed or 0,
        }

    def __getitem__(self, index: Union[int, slice, Sequence[int]]) -> Dict[str, Any]:
        """One row; or, for a slice or a list of positions, their columns (`pixel_values` one (B, 3, S, S)
        tensor), as a `datasets.Dataset` with a transform answers."""
        if isinstance(index, (int, np.integer)):
            return self.__getitems__([int(index)])[0]
        positions = range(len(self))[index] if isinstance(index, slice) else index
        rows = self.__getitems__(list(positions))
        batch = {key: [row[key] for row in rows] for key in (rows[0] if rows else {})}
        if rows:
            batch["pixel_values"] = torch.stack(batch["pixel_values"])
        return batch

    def __getitems__(self, indices: Sequence[int]) -> List[Dict[str, Any]]:
        epoch = int(self._epoch)
        source = self.rows[np.asarray(indices, dtype=np.int64)]
        order = np.argsort(source, kind="stable")  # sorted reads of a memory map touch each page once
        x = np.empty((len(source), *self.images.shape[1:]), dtype=np.uint8)
        x[order] = self.images[source[order]]
        offsets, flips = self._augmentation(epoch)
        pixel_values = self.transform.apply(torch.from_numpy(x), offsets[source], flips[source])
        out = [{"pixel_values": pixel_values[i], "row_ids": int(row), "epoch": epoch} for i, row in enumerate(source)]
        if self.labels is not None:
            for row, label in zip(out, self.labels[source].tolist()):
                row["labels"] = label
        if self.teacher_logits is not None:
            for row, logits in zip(out, self.teacher_logits[source]):
                row["teacher_logits"] = logits
        return out

    def _augmentation(self, epoch: int) -> Tuple[np.ndarray, np.ndarray]:
        seed = self.seed or 0
        if self._params is None or self._params[:2] != (epoch, seed):
            self._params = (epoch, seed, *self.transform.params(seed, epoch, len(self.images)))
        return self._params[2], self._params[3]
