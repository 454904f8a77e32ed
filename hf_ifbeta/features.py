"""The teacher pass: one forward of the teacher over a dataset, cached on disk.

For every row we keep the teacher's pre-logit features `h` (d), its logits `z` (C) and the label `y`;
everything downstream (influence, policy, baselines) works on these arrays and never runs the teacher
again. The pass uses the teacher's own evaluation transform, runs under `torch.inference_mode()`, and
is written to disk chunk by chunk as it goes, so an interrupted pass resumes where it stopped and a
finished one is loaded (memory-mapped) without touching the teacher.

```python
>>> from hf_ifbeta.features import compute_teacher_outputs
>>> outputs = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir="cache")
>>> outputs.features.shape, outputs.logits.shape  # (n, d), (n, C)
```

Cache layout, under `cache_dir/<key>/` (the key hashes everything that determines the arrays, so a
rerun with different arguments lands in another folder and never mixes):

- `meta.json`: the arguments that made the cache and `"complete"`;
- `chunk_00000.npz`, ...: rows `[k * chunk_size, (k + 1) * chunk_size)`, each written atomically as
  it finishes and removed once assembled;
- `features.npy` (n, d), `logits.npy` (n, C) float32, `labels.npy` (n,) int64, `head.npz`: the
  assembled arrays, the same layout as `TeacherOutputs.save`; `meta.json` records the size, sha256
  and modification time of each (`"files"`).

Beside the folder, `cache_dir/<key>.lock` is held while an entry is filled or repaired, so jobs that
share a cache take turns and a waiting job reuses what the other computed (see "Failure modes" in
docs/concepts.md for what the cache guarantees).
"""

import contextlib
import hashlib
import json
import logging
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import datasets
import numpy as np
import torch
import torch.nn as nn
from filelock import FileLock, Timeout

from .data import check_columns, check_dataset, column_values, decode_image, eval_transform

__all__ = ["CorruptCacheError", "TeacherOutputs", "compute_teacher_outputs", "default_cache_dir"]

logger = logging.getLogger(__name__)

FEATURES_DTYPES = ("float32", "float16")
PRECISIONS = ("auto", "bf16", "fp32")
# Bump when the cached arrays change meaning: old caches then get another key instead of being reused.
CACHE_VERSION = 1
META_FILE = "meta.json"
HEAD_FILE = "head.npz"
ARRAYS = ("features", "logits", "labels")  # each saved as <name>.npy
# A job waiting for another one's lock tries again this often; its ranks meet at every try.
LOCK_POLL_S = 5.0


class CorruptCacheError(RuntimeError):
    """A cached file that is missing, truncated or changed since it was written; the message names it."""


@dataclass
class TeacherOutputs:
    """What the teacher says about every row of a dataset.

    Args:
        features (`np.ndarray`): (n, d) pre-logit features, float32 or float16 (see
            `compute_teacher_outputs(features_dtype=...)`); possibly a read-only `np.memmap`.
        logits (`np.ndarray`): (n, C) float32 logits.
        labels (`np.ndarray`): (n,) int64 class ids from the label column.
        head (`Tuple[np.ndarray, np.ndarray]`, *optional*): the teacher's classifier `(W (C, d), b (C,))`
            when it is a linear layer on the features, so that `logits ~= features @ W.T + b`.
        meta (`Dict[str, Any]`): cache key, teacher identity, dataset fingerprint, transform, columns,
            features dtype and source (`"pre_logits"`, or `"logits"` for a teacher without
            `forward_features` / `forward_head`); after `load`, also `cache_path`, the folder the
            arrays are mapped from (`TeacherOutputs.load(meta["cache_path"])` gets them back).
    """

    features: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    head: Optional[Tuple[np.ndarray, np.ndarray]] = None
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        lengths = {"features": len(self.features), "logits": len(self.logits), "labels": len(self.labels)}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"features, logits and labels must have one row per example, got lengths {lengths}.")

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def num_features(self) -> int:
        return self.features.shape[1]

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    def save(self, save_directory: Union[str, os.PathLike]) -> None:
        """Write `features.npy`, `logits.npy`, `labels.npy`, `head.npz` (if any) and `meta.json`."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        for name in ARRAYS:
            _atomic_write(save_directory / f"{name}.npy", lambda f, a=getattr(self, name): np.save(f, a))
        if self.head is not None:
            weight, bias = self.head
            _atomic_write(save_directory / HEAD_FILE, lambda f: np.savez(f, weight=weight, bias=bias))
        meta = {k: v for k, v in self.meta.items() if k != "cache_path"}  # set again by `load`
        meta["complete"] = True
        meta["files"] = _file_records(save_directory, _array_files(save_directory))
        _atomic_write(save_directory / META_FILE, lambda f: f.write(json.dumps(meta, indent=2).encode()))

    @classmethod
    def load(cls, save_directory: Union[str, os.PathLike], mmap_mode: Optional[str] = "r") -> "TeacherOutputs":
        """Load what `save` wrote; arrays are memory-mapped read-only unless `mmap_mode=None`.

        Every file is first checked against the size recorded when it was written, and against its
        sha256 when its size or modification time changed since (see `_check_files`).

        Raises:
            CorruptCacheError: a file is missing, truncated or changed; the message names it and says how to clear it.
        """
        save_directory = Path(save_directory)
        meta = json.loads((save_directory / META_FILE).read_text())
        meta["cache_path"] = str(save_directory.resolve())
        try:
            _check_files(save_directory, meta)
            arrays = {name: _load_array(save_directory / f"{name}.npy", mmap_mode) for name in ARRAYS}
            head = None
            if (save_directory / HEAD_FILE).exists():
                with np.load(save_directory / HEAD_FILE) as npz:
                    head = (npz["weight"], npz["bias"])
        except CorruptCacheError as err:
            raise CorruptCacheError(
                f"{err} Delete the folder {save_directory} to clear it: compute_teacher_outputs (and "
                "DatasetPruner.score) then compute it again."
            ) from err
        meta.pop("files", None)  # records of this folder's files, not of the outputs (`save` writes new ones)
        return cls(**arrays, head=head, meta=meta)


def default_cache_dir() -> Path:
    """`$HF_HOME/hf_ifbeta` (by default `~/.cache/huggingface/hf_ifbeta`)."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hf_ifbeta"


def compute_teacher_outputs(
    teacher: nn.Module,
    dataset: datasets.Dataset,
    image_column: Optional[str],
    label_column: str,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    chunk_size: int = 4096,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    features_dtype: str = "float32",
    precision: str = "fp32",
    accelerator: Optional[Any] = None,
    progress: bool = True,
    device: Optional[Union[str, torch.device]] = None,
) -> TeacherOutputs:
    """Run the teacher once over `dataset` and return its features, logits and the labels.

    Images go through the teacher's own evaluation transform (`hf_ifbeta.data.eval_transform`); the
    teacher runs in eval mode under `torch.inference_mode()`. Features are
    `teacher.forward_head(teacher.forward_features(x), pre_logits=True)` for a timm-style teacher;
    a plain `nn.Module` only gives logits, which then serve as features (`meta["features"] == "logits"`).

    The result is cached under `cache_dir/<key>/` chunk by chunk: an interrupted pass resumes from the
    finished chunks, and a complete cache is loaded without running the teacher. Jobs sharing a cache
    take turns on an entry (a file lock beside it): a job that finds another one filling it waits, then
    loads the result. A cached file found damaged (missing, another size, or another sha256 than when
    it was written) is named in a warning and computed again.

    Args:
        teacher (`nn.Module`): the teacher; run on `device` (see below).
        dataset (`datasets.Dataset`): map-style dataset with an image and a label column.
        image_column (`str`, *optional*): image column; None picks the dataset's only `datasets.Image` column.
        label_column (`str`): integer / ClassLabel column, checked against the teacher's `num_classes`.
        batch_size (`int`): rows per forward, per process.
        num_workers (`int`): DataLoader workers decoding and transforming images; 0 decodes in the main process.
        chunk_size (`int`): rows per cached chunk, the unit of resumption and of sharding. Resuming an
            unfinished cache keeps the chunk size it was started with.
        cache_dir (`str` or `os.PathLike`, *optional*): cache root; default `$HF_HOME/hf_ifbeta`.
        features_dtype (`str`): `"float32"`, or `"float16"` to halve the features on disk and in memory
            (ImageNet scale: 1.28 M x 2048 features are 10.5 GB in float32). Logits stay float32.
        precision (`str`): the teacher's forward: `"fp32"`, `"bf16"` (autocast and channels_last; features and
            logits are still stored in float32), or `"auto"`: bf16 where the device computes it natively
            (CUDA with bf16, CPUs with AVX512-BF16 / AMX), else fp32.
        accelerator (`accelerate.Accelerator` or `accelerate.PartialState`, *optional*): with several
            processes, the main process lists the missing chunks and process r computes `missing[r::num_processes]`
            (an even split, also when resuming after one process failed); every process returns the same,
            complete outputs.
        progress (`bool`): show a progress bar (main process only).
        device (`str` or `torch.device`, *optional*): where the teacher runs (it is moved there); default
            `accelerator.device`, else where its parameters are.

    Returns:
        `TeacherOutputs` with memory-mapped arrays.

    Raises:
        ValueError: bad arguments, missing columns, a label outside the teacher's classes, or a non-finite
            feature or logit (naming the first bad row).
        hf_ifbeta.data.CorruptImageError: an image that cannot be decoded (naming its row).
        CorruptCacheError: a chunk of this pass was damaged on disk before it was assembled (named and
            removed: running again computes it).
    """
    check_dataset(dataset)
    if features_dtype not in FEATURES_DTYPES:
        raise ValueError(f"Unknown features_dtype {features_dtype!r}. Choose between {list(FEATURES_DTYPES)}.")
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}. Choose between {list(PRECISIONS)}.")
    minimums = {"batch_size": (batch_size, 1), "chunk_size": (chunk_size, 1), "num_workers": (num_workers, 0)}
    for name, (value, low) in minimums.items():
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")

    num_classes = _num_classes(teacher)
    image_column = check_columns(dataset, image_column, label_column, num_classes=num_classes)
    transform = eval_transform(teacher)

    num_processes = getattr(accelerator, "num_processes", 1)
    process_index = getattr(accelerator, "process_index", 0)
    is_main = process_index == 0

    if device is None:
        device = accelerator.device if accelerator is not None else _device_of(teacher)
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    identity = _identity(teacher, dataset, transform, image_column, label_column, features_dtype)
    if precision != "fp32":  # fp32 caches keep the key they had before the option existed
        identity["precision"] = precision
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    if num_processes > 1:
        # Every process must write to and read from the same folder, even if, say, a transform repr
        # with a memory address made the keys differ between processes.
        from accelerate.utils import broadcast_object_list

        key = broadcast_object_list([key])[0]
    cache = Path(cache_dir if cache_dir is not None else default_cache_dir()) / key

    # The main process decides for the whole job, so that its ranks never take different paths.
    if _from_main(is_main and _is_intact(cache), accelerator):
        _check_shared(cache, accelerator)
        logger.info("Teacher outputs loaded from the cache at %s.", cache)
        return TeacherOutputs.load(cache)

    with _entry_lock(cache, accelerator):
        # While this job waited, another one may have filled the entry.
        if _from_main(is_main and _reuse_or_reset(cache), accelerator):
            logger.info("Teacher outputs loaded from the cache at %s.", cache)
            return TeacherOutputs.load(cache)

        if is_main:
            _start_cache(cache, key, identity, teacher, chunk_size, batch_size, num_workers, num_processes)
            _drop_unusable_files(cache, len(dataset))
        _wait(accelerator)
        _check_shared(cache, accelerator)
        meta = json.loads((cache / META_FILE).read_text())
        chunk_size = meta["chunk_size"]  # an unfinished cache keeps the chunk size it was started with

        num_chunks = math.ceil(len(dataset) / chunk_size)
        # The main process's list, split evenly: after a crash of one rank, the others share its chunks.
        missing = _from_main([k for k in range(num_chunks) if not (cache / _chunk_name(k)).exists()], accelerator)
        todo = missing[process_index::num_processes]
        if is_main:
            logger.info(
                "Teacher pass over %d rows: %d of %d chunks to compute, cache at %s.",
                len(dataset), len(missing), num_chunks, cache,
            )
        if todo:
            _run_chunks(
                teacher, dataset, image_column, label_column, transform, todo, chunk_size, cache,
                batch_size=batch_size, num_workers=num_workers, features_dtype=features_dtype, device=device,
                bf16=precision == "bf16", progress=progress and is_main,
            )
        _wait(accelerator)
        if is_main:
            _assemble(cache, meta, num_chunks, len(dataset), features_dtype, teacher)
        _wait(accelerator)
        return TeacherOutputs.load(cache)


# ----------------------------------------------------------------------------------------------------
# The forward pass


def _run_chunks(
    teacher: nn.Module,
    dataset: datasets.Dataset,
    image_column: str,
    label_column: str,
    transform: Callable,
    todo: List[int],
    chunk_size: int,
    cache: Path,
    *,
    batch_size: int,
    num_workers: int,
    features_dtype: str,
    device: torch.device,
    bf16: bool,
    progress: bool,
) -> None:
    """Compute the chunks `todo` and write each one to `cache` as soon as its last batch is done."""
    from tqdm.auto import tqdm

    n = len(dataset)
    labels = column_values(dataset, label_column).astype(np.int64, copy=False)
    # (chunk, start, stop) of every batch of this process's chunks; a batch never straddles two chunks.
    spans = []
    for k in todo:
        first, last = _chunk_rows(k, chunk_size, n)
        spans += [(k, start, min(start + batch_size, last)) for start in range(first, last, batch_size)]
    # One loader over all these batches, so that workers start once; it yields them in this order.
    loader = torch.utils.data.DataLoader(
        _ImageBatches(dataset, image_column, transform),
        batch_size=None,
        sampler=[(start, stop) for _, start, stop in spans],
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    if device != _device_of(teacher):
        teacher.to(device)
    param = next(teacher.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = teacher.training
    teacher.eval()
    memory_format = torch.channels_last if bf16 else torch.contiguous_format
    if bf16:
        teacher.to(memory_format=torch.channels_last)
    total = sum(stop - start for _, start, stop in spans)
    bar = tqdm(total=total, desc="Teacher pass", unit="img", disable=not progress)
    chunk: Optional[_Chunk] = None
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for (k, start, stop), (start_, pixels) in zip(spans, loader):
                assert start_ == start, "the loader must keep the order of its sampler"
                pixels = pixels.to(device, dtype=dtype, non_blocking=True).contiguous(memory_format=memory_format)
                features, logits = _forward(teacher, pixels)
                if chunk is None:
                    chunk = _Chunk(k, *_chunk_rows(k, chunk_size, n), features.shape[1], logits.shape[1])
                chunk.put(start, features, logits)
                if stop == chunk.stop:
                    chunk.write(cache, labels[chunk.start : chunk.stop], features_dtype)
                    chunk = None
                bar.update(stop - start)
    finally:
        bar.close()
        teacher.train(was_training)
        if bf16:
            teacher.to(memory_format=torch.contiguous_format)


def _forward(teacher: nn.Module, pixels: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """(B, 3, H, W) -> features (B, d) and logits (B, C), both float32 NumPy."""
    if _has_timm_head(teacher):
        x = teacher.forward_features(pixels)
        features = teacher.forward_head(x, pre_logits=True).flatten(1)
        logits = teacher.forward_head(x)
    else:
        logits = _logits_of(teacher(pixels))
        features = logits
    return features.float().cpu().numpy(), logits.float().cpu().numpy()


def _logits_of(output: Any) -> torch.Tensor:
    """Logits from what a plain module returns: a tensor, an object with `.logits`, or a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"Cannot find logits in the teacher's output of type {type(output).__name__}.")


class _Chunk:
    """The rows [start, stop) of chunk `index`, filled batch by batch."""

    def __init__(self, index: int, start: int, stop: int, num_features: int, num_classes: int):
        self.index, self.start, self.stop = index, start, stop
        self.features = np.empty((stop - start, num_features), dtype=np.float32)
        self.logits = np.empty((stop - start, num_classes), dtype=np.float32)

    def put(self, start: int, features: np.ndarray, logits: np.ndarray) -> None:
        rows = slice(start - self.start, start - self.start + len(features))
        self.features[rows] = features
        self.logits[rows] = logits

    def write(self, cache: Path, labels: np.ndarray, features_dtype: str) -> None:
        """Check that every value is finite, then write the chunk atomically."""
        features = self.features.astype(features_dtype, copy=False)
        finite_features = np.isfinite(features).all(axis=1)
        finite_logits = np.isfinite(self.logits).all(axis=1)
        bad = ~(finite_features & finite_logits)
        if bad.any():
            row = int(np.argmax(bad))
            if not finite_features[row] and np.isfinite(self.features[row]).all():
                what = f"features overflow {features_dtype} (pass features_dtype='float32')"
            else:
                what = f"{'features' if not finite_features[row] else 'logits'} are NaN or infinite"
            raise ValueError(
                f"The teacher's {what} for row {self.start + row} ({int(bad.sum())} such rows among rows "
                f"{self.start}-{self.stop - 1}). Check that row's image and the teacher's weights."
            )
        rows = np.array([self.start, self.stop])
        _atomic_write(
            cache / _chunk_name(self.index),
            lambda f: np.savez(f, features=features, logits=self.logits, labels=labels, rows=rows),
        )


class _ImageBatches(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches: `(start, stop)` -> `(start, pixels (B, 3, H, W))`.

    Images are decoded here (not by `datasets`) so that a corrupt one raises `CorruptImageError`
    naming its row in the dataset.
    """

    def __init__(self, dataset: datasets.Dataset, image_column: str, transform: Callable):
        raw = dataset.with_format(None).select_columns([image_column])
        if isinstance(raw.features[image_column], datasets.Image):
            raw = raw.cast_column(image_column, datasets.Image(decode=False))  # {"bytes", "path"} per row
        self.raw = raw
        self.column = image_column
        self.transform = transform
        self.fast = _FastToTensor.from_transform(transform)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, span: Tuple[int, int]) -> Tuple[int, torch.Tensor]:
        start, stop = span
        values = self.raw[start:stop][self.column]
        images = [decode_image(value, start + i, self.column) for i, value in enumerate(values)]
        if self.fast is None:
            return start, torch.stack([self.transform(image) for image in images])
        return start, self.fast(images, self.transform)


class _FastToTensor:
    """Batched version of timm's eval transform for images already at the input size.

    timm's eval transform is `Resize(s) -> CenterCrop(s) -> ToTensor -> Normalize`. On an s x s RGB
    image the resize and the crop are the identity (PIL returns a copy at the same size), so the
    transform is `(uint8 / 255 - mean) / std`, done here in one torch op for the whole batch with the
    same float32 operations, hence bitwise equal (tested). Images of any other size take the full
    transform.
    """

    def __init__(self, size: int, mean: torch.Tensor, std: torch.Tensor):
        self.size = size
        self.mean = mean.view(1, -1, 1, 1)
        self.std = std.view(1, -1, 1, 1)

    @classmethod
    def from_transform(cls, transform: Callable) -> Optional["_FastToTensor"]:
        from torchvision import transforms as T

        steps = getattr(transform, "transforms", None)
        if type(transform) is not T.Compose or len(steps) != 4:
            return None
        resize, crop, to_tensor, normalize = steps
        if not (
            type(resize) is T.Resize
            and type(crop) is T.CenterCrop
            and isinstance(to_tensor, T.ToTensor)
            and type(normalize) is T.Normalize
            and not normalize.inplace
            and resize.max_size is None
        ):
            return None
        size = resize.size
        if isinstance(size, (list, tuple)):
            if len(size) not in (1, 2) or len(set(size)) != 1:
                return None
            size = size[0]
        if tuple(crop.size) != (size, size):
            return None
        mean = torch.as_tensor(normalize.mean, dtype=torch.float32)
        std = torch.as_tensor(normalize.std, dtype=torch.float32)
        if mean.shape != (3,) or std.shape != (3,):
            return None
        return cls(size, mean, std)

    def __call__(self, images: List, transform: Callable) -> torch.Tensor:
        s = self.size
        fits = [image.mode == "RGB" and image.size == (s, s) for image in images]
        if not any(fits):
            return torch.stack([transform(image) for image in images])
        batch = torch.empty((len(images), 3, s, s), dtype=torch.float32)
        rows = [i for i, fit in enumerate(fits) if fit]
        pixels = torch.from_numpy(np.stack([np.asarray(images[i], dtype=np.uint8) for i in rows]))  # (b, s, s, 3)
        batch[rows] = pixels.permute(0, 3, 1, 2).float().div(255).sub(self.mean).div(self.std)
        for i, fit in enumerate(fits):
            if not fit:
                batch[i] = transform(images[i])
        return batch


# ----------------------------------------------------------------------------------------------------
# The cache


def _identity(
    teacher: nn.Module,
    dataset: datasets.Dataset,
    transform: Callable,
    image_column: str,
    label_column: str,
    features_dtype: str,
) -> Dict[str, Any]:
    """Everything that determines the cached arrays; its hash is the cache key."""
    cfg = getattr(teacher, "pretrained_cfg", None) or {}
    from .logit_cache import state_dict_digest

    return {
        "version": CACHE_VERSION,
        "dataset_fingerprint": dataset._fingerprint,
        "num_rows": len(dataset),
        "teacher": {
            "class": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
            **{k: cfg.get(k) for k in ("architecture", "tag", "file", "hf_hub_id") if cfg.get(k)},
            "state_dict_sha256": state_dict_digest(teacher),
        },
        "transform": repr(transform),
        "image_column": image_column,
        "label_column": label_column,
        "features_dtype": features_dtype,
    }


def _start_cache(
    cache: Path,
    key: str,
    identity: Dict[str, Any],
    teacher: nn.Module,
    chunk_size: int,
    batch_size: int,
    num_workers: int,
    num_processes: int,
) -> None:
    """Create the cache folder and its `meta.json`; an unfinished cache keeps its meta (and chunk size)."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / META_FILE
    if path.exists():
        meta = json.loads(path.read_text())
        if meta.get("identity") != identity:
            raise ValueError(
                f"The teacher-output cache at {cache} was made with other arguments ({meta.get('identity')}) than "
                f"this call ({identity}). Delete that folder."
            )
        if meta["chunk_size"] != chunk_size:
            logger.warning("Resuming %s with the chunk_size it started with, %d, not %d.", cache, meta["chunk_size"], chunk_size)
        return
    cfg = getattr(teacher, "pretrained_cfg", None) or {}
    meta = {
        "key": key,
        "complete": False,
        "teacher": cfg.get("architecture") or type(teacher).__name__,
        "dataset_fingerprint": identity["dataset_fingerprint"],
        "num_rows": identity["num_rows"],
        "image_column": identity["image_column"],
        "label_column": identity["label_column"],
        "features_dtype": identity["features_dtype"],
        "transform": identity["transform"],
        "features": "pre_logits" if _has_timm_head(teacher) else "logits",
        "chunk_size": chunk_size,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "num_processes": num_processes,
        "identity": identity,
    }
    if meta["features"] == "logits":
        logger.warning(
            "%s has no forward_features / forward_head: its logits are used as the features.", type(teacher).__name__
        )
    _atomic_write(path, lambda f: f.write(json.dumps(meta, indent=2).encode()))


def _assemble(
    cache: Path, meta: Dict[str, Any], num_chunks: int, n: int, features_dtype: str, teacher: nn.Module
) -> None:
    """Stream the chunks into `features.npy`, `logits.npy`, `labels.npy`, then mark the cache complete."""
    missing = [k for k in range(num_chunks) if not (cache / _chunk_name(k)).exists()]
    if missing:
        raise RuntimeError(f"Chunks {missing} of the teacher pass are missing from {cache}; did a process fail?")
    with np.load(cache / _chunk_name(0)) as first:
        d, c = first["features"].shape[1], first["logits"].shape[1]
    targets = {
        "features": ((n, d), np.dtype(features_dtype)),
        "logits": ((n, c), np.dtype(np.float32)),
        "labels": ((n,), np.dtype(np.int64)),
    }
    tmp = {name: cache / f".{name}.npy.{os.getpid()}.tmp" for name in targets}
    out = {
        name: np.lib.format.open_memmap(tmp[name], mode="w+", dtype=dtype, shape=shape)
        for name, (shape, dtype) in targets.items()
    }
    chunk_size = meta["chunk_size"]
    try:
        for k in range(num_chunks):
            start, stop = _chunk_rows(k, chunk_size, n)
            chunk = _read_chunk(cache / _chunk_name(k), targets)
            if chunk["rows"].tolist() != [start, stop]:
                rows = chunk["rows"].tolist()
                raise RuntimeError(f"Chunk {k} in {cache} holds rows {rows}, expected [{start}, {stop}].")
            for name in targets:
                out[name][start:stop] = chunk[name]
    except BaseException:
        for path in tmp.values():
            path.unlink(missing_ok=True)
        raise
    for name in targets:
        out[name].flush()
        del out[name]
        os.replace(tmp[name], cache / f"{name}.npy")
    head = _linear_head(teacher, d)
    if head is not None:
        _atomic_write(cache / HEAD_FILE, lambda f: np.savez(f, weight=head[0], bias=head[1]))
    meta = {**meta, "complete": True, "num_features": d, "num_classes": c, "has_head": head is not None}
    meta["files"] = _file_records(cache, _array_files(cache))
    _atomic_write(cache / META_FILE, lambda f: f.write(json.dumps(meta, indent=2).encode()))
    for k in range(num_chunks):  # the assembled arrays replace the chunks (no double disk use)
        (cache / _chunk_name(k)).unlink()


def _is_complete(cache: Path) -> bool:
    try:
        return bool(json.loads((cache / META_FILE).read_text()).get("complete"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def _chunk_rows(k: int, chunk_size: int, n: int) -> Tuple[int, int]:
    """Chunk k holds the rows [start, stop)."""
    return k * chunk_size, min((k + 1) * chunk_size, n)


def _chunk_name(k: int) -> str:
    return f"chunk_{k:05d}.npz"


def _atomic_write(path: Path, write: Callable) -> None:
    """Write through `write(file)` to a temporary file, then rename it over `path` (readers never see half a file).

    A write that fails (a full disk) removes its temporary file: it leaves nothing behind, under any name.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------------
# Concurrent jobs and damaged files


def _from_main(value: Any, accelerator: Optional[Any]) -> Any:
    """`value` as the main process has it, on every process of the job."""
    if getattr(accelerator, "num_processes", 1) <= 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def _check_shared(cache: Path, accelerator: Optional[Any]) -> None:
    """Every process must see the main process's cache folder; raise on all of them, naming it, if one does not."""
    if getattr(accelerator, "num_processes", 1) <= 1:
        return
    from accelerate.utils import gather_object

    blind = [rank for rank, sees in enumerate(gather_object([(cache / META_FILE).exists()])) if not sees]
    if blind:
        raise RuntimeError(
            f"Processes {blind} cannot see the teacher-pass cache {cache} that process 0 wrote: on several nodes, "
            "cache_dir must be a folder every node shares (PrunerConfig(cache_dir=...), --cache_dir)."
        )


@contextlib.contextmanager
def _entry_lock(cache: Path, accelerator: Optional[Any]) -> Iterator[None]:
    """Hold `<cache>.lock` while this job fills or repairs the entry, so that jobs sharing a cache take turns.

    One lock per job, not per rank: the main process holds it and the job's other ranks, which share its
    chunks, never touch it. While another job holds it, the main process tries again every `LOCK_POLL_S`
    seconds and the other ranks meet it at every try, so that no collective idles past the process
    group's timeout however long the other job takes.
    """
    is_main = getattr(accelerator, "process_index", 0) == 0
    lock = None
    if is_main:
        cache.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(cache.with_name(cache.name + ".lock")))
    waiting = False
    while True:
        acquired = False
        if lock is not None:
            try:
                lock.acquire(timeout=LOCK_POLL_S if waiting else 0)
                acquired = True
            except Timeout:
                if not waiting:
                    logger.warning(
                        "Another job is writing the teacher outputs at %s: waiting for its lock %s, then "
                        "reusing what it computed.", cache, lock.lock_file,
                    )  # fmt: skip
        waiting = True
        if _from_main(acquired, accelerator):
            break
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _is_intact(cache: Path) -> bool:
    """A complete entry whose files have their recorded sizes and modification times (nothing is read)."""
    try:
        meta = json.loads((cache / META_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if not meta.get("complete"):
        return False
    try:
        return not _check_files(cache, meta, hash_changed=False)
    except CorruptCacheError:
        return False  # repaired under the lock, with a warning


def _reuse_or_reset(cache: Path) -> bool:
    """Under the lock: whether the entry is complete and intact.

    A file whose size or modification time changed is hashed; when it still matches, its new stats are
    recorded so that later loads skip that read. A damaged entry is marked incomplete, with a warning
    naming the file, and is then computed again.
    """
    if not _is_complete(cache):
        return False
    meta = json.loads((cache / META_FILE).read_text())
    try:
        refreshed = _check_files(cache, meta)
        for name in ARRAYS:  # files without a record (older caches): at least their header and length
            _load_array(cache / f"{name}.npy", "r")
    except CorruptCacheError as err:
        logger.warning("%s The teacher outputs in %s are computed again.", err, cache)
        meta = {k: v for k, v in meta.items() if k != "files"}
        _atomic_write(cache / META_FILE, lambda f: f.write(json.dumps({**meta, "complete": False}, indent=2).encode()))
        return False
    if refreshed:
        refreshed = {name: record or _file_record(cache / name) for name, record in refreshed.items()}
        meta["files"] = {**meta.get("files", {}), **refreshed}
        _atomic_write(cache / META_FILE, lambda f: f.write(json.dumps(meta, indent=2).encode()))
    return True


def _drop_unusable_files(cache: Path, n: int) -> None:
    """Under the lock, before a pass: remove what a rerun must not trust, naming each chunk removed.

    Temporary files are writes that never finished (a killed process). A chunk is kept only if its zip
    directory reads (a truncated file has none) and it holds its own rows; the CRC-32 of each array is
    checked later, as `_assemble` reads it.
    """
    for path in cache.glob(".*.tmp"):
        path.unlink(missing_ok=True)
    chunk_size = json.loads((cache / META_FILE).read_text())["chunk_size"]
    for path in sorted(cache.glob("chunk_*.npz")):
        expected = list(_chunk_rows(int(path.stem.split("_")[1]), chunk_size, n))
        try:
            with np.load(path) as chunk:
                if not {*ARRAYS, "rows"} <= set(chunk.files):
                    problem = f"it holds only {sorted(chunk.files)}"
                elif chunk["rows"].tolist() != expected:
                    problem = f"it holds rows {chunk['rows'].tolist()}, expected {expected}"
                else:
                    continue
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
            problem = str(err)
        logger.warning("Chunk file %s is damaged (%s): removed, it is computed again.", path, problem)
        path.unlink()


def _read_chunk(path: Path, names) -> Dict[str, np.ndarray]:
    """The arrays `names` and `rows` of a chunk file, read whole: zip checks each one's CRC-32, recorded
    when the chunk was written, as it reads it. A damaged chunk is removed so that a rerun computes it."""
    try:
        with np.load(path) as chunk:
            return {name: chunk[name] for name in (*names, "rows")}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        path.unlink(missing_ok=True)
        raise CorruptCacheError(
            f"Chunk file {path} is damaged ({err}); it was removed: run again to compute it anew."
        ) from err


def _array_files(directory: Path) -> List[str]:
    return [f"{name}.npy" for name in ARRAYS] + ([HEAD_FILE] if (directory / HEAD_FILE).exists() else [])


def _file_records(directory: Path, names: List[str]) -> Dict[str, Dict[str, Any]]:
    return {name: _file_record(directory / name) for name in names}


def _file_record(path: Path) -> Dict[str, Any]:
    """Size, modification time and sha256 of a file, to check it against later."""
    stat = path.stat()  # before the read: a write during it leaves the record stale, so checked again
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}


def _check_files(directory: Path, meta: Dict[str, Any], hash_changed: bool = True) -> Dict[str, Optional[Dict]]:
    """Check the arrays of a saved entry against the records in `meta["files"]`.

    Sizes are always compared: one stat per file. A sha256 costs a full read (seconds for ImageNet-sized
    features), so it is recomputed only for a file whose size or modification time differs from its
    record, which any write to the file changes.

    Returns:
        The files whose record is stale: their stats changed but not their content (each with a fresh
        record; None with `hash_changed=False`, nothing read), or they have no record (None).

    Raises:
        CorruptCacheError: a file is missing, or has another size or (when hashed) another sha256 than recorded.
    """
    records = meta.get("files") or {}
    stale = {}
    for name in sorted(set(records) | set(_array_files(directory))):
        path = directory / name
        record = records.get(name)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise CorruptCacheError(f"{path} is missing.") from None
        if record is not None and stat.st_size != record["size"]:
            raise CorruptCacheError(
                f"{path} has {stat.st_size:,} bytes but {record['size']:,} were written: it was truncated or overwritten."
            )
        if record is not None and stat.st_mtime_ns == record["mtime_ns"]:
            continue
        fresh = _file_record(path) if hash_changed and record is not None else None
        if fresh is not None and fresh["sha256"] != record["sha256"]:
            raise CorruptCacheError(
                f"{path} does not match the sha256 recorded when it was written: its content changed since."
            )
        stale[name] = fresh
    return stale


def _load_array(path: Path, mmap_mode: Optional[str]) -> np.ndarray:
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except (ValueError, OSError, EOFError) as err:  # e.g. numpy's "mmap length is greater than file size"
        raise CorruptCacheError(f"{path} cannot be read as an array ({err}).") from err


# ----------------------------------------------------------------------------------------------------
# The teacher


def _has_timm_head(teacher: nn.Module) -> bool:
    return callable(getattr(teacher, "forward_features", None)) and callable(getattr(teacher, "forward_head", None))


def _num_classes(teacher: nn.Module) -> Optional[int]:
    """The teacher's class count if it says (timm `num_classes`, or a linear classifier), else None."""
    num_classes = getattr(teacher, "num_classes", None)
    if isinstance(num_classes, int) and num_classes > 0:
        return num_classes
    get_classifier = getattr(teacher, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    return classifier.out_features if isinstance(classifier, nn.Linear) else None


def _linear_head(teacher: nn.Module, num_features: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """`(W (C, d), b (C,))` of the teacher's classifier when it is an `nn.Linear` on the d features."""
    get_classifier = getattr(teacher, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    if not isinstance(classifier, nn.Linear) or classifier.in_features != num_features:
        return None
    weight = classifier.weight.detach().float().cpu().numpy()
    bias = (
        classifier.bias.detach().float().cpu().numpy()
        if classifier.bias is not None
        else np.zeros(classifier.out_features, dtype=np.float32)
    )
    return weight, bias


def resolve_precision(precision: str, device: torch.device) -> str:
    """`"auto"` -> `"bf16"` where `device` computes bfloat16 natively, else `"fp32"`; other values unchanged."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "fp32"


def _device_of(teacher: nn.Module) -> torch.device:
    param = next(teacher.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _wait(accelerator: Optional[Any]) -> None:
    if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
        accelerator.wait_for_everyone()
