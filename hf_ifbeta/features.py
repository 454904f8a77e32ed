"""The teacher pass: one forward of the teacher over a dataset, cached on disk.

For every row we keep the teacher's pre-logit features `h` (d), its logits `z` (C) and the label `y`
(and, when asked, its middle feature stage pooled to 2 x 2: the "stage" view of the policy's coverage term);
everything downstream (influence, policy, baselines) works on these arrays and never runs the teacher
again. The pass uses the teacher's own evaluation transform, runs under `torch.inference_mode()`, and
is written to disk chunk by chunk as it goes, so an interrupted pass resumes where it stopped and a
finished one is loaded (memory-mapped) without touching the teacher.

```python
>>> from hf_ifbeta.features import compute_teacher_outputs
>>> outputs = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir="cache")
>>> outputs.features.shape, outputs.logits.shape  # (n, d), (n, C)
```

The cache (its layout, lock and checks, and `TeacherOutputs`, the arrays it holds) is
`hf_ifbeta.feature_cache`; its public names are importable from here too.
"""

import functools
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import datasets
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import check_columns, check_dataset, column_values
from .feature_cache import (
    ARRAYS,
    CACHE_VERSION,
    COVERAGE,
    HEAD_FILE,
    META_FILE,
    CorruptCacheError,
    TeacherOutputs,
    assemble,
    cache_key,
    check_shared,
    chunk_name,
    chunk_rows,
    drop_unusable_files,
    entry_lock,
    from_main,
    is_intact,
    read_meta,
    reuse_or_reset,
    start_entry,
    write_chunk,
)
from .files import default_cache_dir
from .images import decode_image
from .logit_cache import state_dict_digest
from .transforms import PadCropFlip, eval_transform

__all__ = [
    "ARRAYS",
    "HEAD_FILE",
    "META_FILE",
    "CorruptCacheError",
    "TeacherOutputs",
    "compute_teacher_outputs",
    "default_cache_dir",
    "native_bf16",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

FEATURES_DTYPES = ("float32", "float16")
PRECISIONS = ("auto", "bf16", "fp32")
# The middle stage is average-pooled to STAGE_POOL x STAGE_POOL: a little of where in the image each channel
# fires, which a global pool would drop, at 4 x channels dimensions.
STAGE_POOL = 2


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
    coverage_stage: bool = False,
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
        features_dtype (`str`): `"float32"`, or `"float16"` to halve the features on disk and in memory,
            where they dominate at ImageNet scale. Logits stay float32.
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
        coverage_stage (`bool`): also keep `TeacherOutputs.coverage`, (n, 4 x channels): the output of the
            teacher's middle feature stage (the module `feature_info[len(feature_info) // 2]["module"]`, as timm
            lists a model's stages) average-pooled to 2 x 2, flattened channel by channel and stored in
            `features_dtype`. It is captured by a forward hook during the same forward. Such a cache has its own
            key, so that a pass without it keeps the key it has without the option.

    Returns:
        `TeacherOutputs` with memory-mapped arrays.

    Raises:
        ValueError: bad arguments, missing columns, a label outside the teacher's classes, a non-finite
            feature, logit or middle-stage value (naming the first bad row), or, with `coverage_stage`, a teacher
            without `feature_info` or whose middle stage does not give (B, C, H, W) maps (transformer tokens).
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
    stage = _middle_stage(teacher) if coverage_stage else None
    if stage is not None:  # likewise: only a cache with the view has it in its key
        identity[COVERAGE] = {"view": "stage", "module": stage.name, "pool": STAGE_POOL}
    # Every process must write to and read from the same folder, even if, say, a transform repr with a
    # memory address made the keys differ between processes.
    key = from_main(cache_key(identity), accelerator)
    cache = Path(cache_dir if cache_dir is not None else default_cache_dir()) / key

    # The main process decides for the whole job, so that its ranks never take different paths.
    if from_main(is_main and is_intact(cache), accelerator):
        check_shared(cache, accelerator)
        logger.info("Teacher outputs loaded from the cache at %s.", cache)
        return TeacherOutputs.load(cache)

    with entry_lock(cache, accelerator):
        # While this job waited, another one may have filled the entry.
        if from_main(is_main and reuse_or_reset(cache), accelerator):
            logger.info("Teacher outputs loaded from the cache at %s.", cache)
            return TeacherOutputs.load(cache)

        if is_main:
            _start_cache(cache, key, identity, teacher, chunk_size, batch_size, num_workers, num_processes)
            drop_unusable_files(cache, len(dataset))
        _wait(accelerator)
        check_shared(cache, accelerator)
        meta = read_meta(cache)
        chunk_size = meta["chunk_size"]  # an unfinished cache keeps the chunk size it was started with

        num_chunks = math.ceil(len(dataset) / chunk_size)
        # The main process's list, split evenly: after a crash of one rank, the others share its chunks.
        missing = from_main([k for k in range(num_chunks) if not (cache / chunk_name(k)).exists()], accelerator)
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
                bf16=precision == "bf16", progress=progress and is_main, stage=stage,
            )
        _wait(accelerator)
        if is_main:
            assemble(cache, meta, num_chunks, len(dataset), features_dtype, functools.partial(_linear_head, teacher))
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
    stage: Optional["_MiddleStage"] = None,
) -> None:
    """Compute the chunks `todo` and write each one to `cache` as soon as its last batch is done; with `stage`,
    also its pooled output of each forward."""
    from tqdm.auto import tqdm

    n = len(dataset)
    labels = column_values(dataset, label_column).astype(np.int64, copy=False)
    # (chunk, start, stop) of every batch of this process's chunks; a batch never straddles two chunks.
    spans = []
    for k in todo:
        first, last = chunk_rows(k, chunk_size, n)
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
    hook = stage.module.register_forward_hook(stage.capture) if stage is not None else None
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for (k, start, stop), (start_, pixels) in zip(spans, loader):
                assert start_ == start, "the loader must keep the order of its sampler"
                pixels = pixels.to(device, dtype=dtype, non_blocking=True).contiguous(memory_format=memory_format)
                features, logits = _forward(teacher, pixels)
                coverage = stage.take() if stage is not None else None
                if chunk is None:
                    widths = (features.shape[1], logits.shape[1], coverage.shape[1] if coverage is not None else None)
                    chunk = _Chunk(k, *chunk_rows(k, chunk_size, n), *widths)
                chunk.put(start, features, logits, coverage)
                if stop == chunk.stop:
                    chunk.write(cache, labels[chunk.start : chunk.stop], features_dtype)
                    chunk = None
                bar.update(stop - start)
    finally:
        bar.close()
        if hook is not None:
            hook.remove()
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
    """The rows [start, stop) of chunk `index`, filled batch by batch (the middle-stage view when it has a width)."""

    def __init__(
        self, index: int, start: int, stop: int, num_features: int, num_classes: int, num_coverage: Optional[int]
    ):
        self.index, self.start, self.stop = index, start, stop
        self.features = np.empty((stop - start, num_features), dtype=np.float32)
        self.logits = np.empty((stop - start, num_classes), dtype=np.float32)
        self.coverage = np.empty((stop - start, num_coverage), dtype=np.float32) if num_coverage is not None else None

    def put(self, start: int, features: np.ndarray, logits: np.ndarray, coverage: Optional[np.ndarray]) -> None:
        rows = slice(start - self.start, start - self.start + len(features))
        self.features[rows] = features
        self.logits[rows] = logits
        if self.coverage is not None:
            self.coverage[rows] = coverage

    def write(self, cache: Path, labels: np.ndarray, features_dtype: str) -> None:
        """Check that every value is finite, then write the chunk atomically."""
        features = self.features.astype(features_dtype, copy=False)
        coverage = self.coverage.astype(features_dtype, copy=False) if self.coverage is not None else None
        # (name, as stored, as computed in float32): stored in features_dtype, the features and the view may overflow.
        arrays = [("features", features, self.features), ("logits", self.logits, self.logits)]
        if coverage is not None:
            arrays.append(("middle-stage view", coverage, self.coverage))
        finite = [np.isfinite(stored).all(axis=1) for _, stored, _ in arrays]
        bad = ~np.logical_and.reduce(finite)
        if bad.any():
            row = int(np.argmax(bad))
            name, _, computed = next(array for array, ok in zip(arrays, finite) if not ok[row])
            if np.isfinite(computed[row]).all():
                what = f"{name} overflow {features_dtype} (pass features_dtype='float32')"
            else:
                what = f"{name} are NaN or infinite"
            raise ValueError(
                f"The teacher's {what} for row {self.start + row} ({int(bad.sum())} such rows among rows "
                f"{self.start}-{self.stop - 1}). Check that row's image and the teacher's weights."
            )
        write_chunk(cache, self.index, features, self.logits, labels, np.array([self.start, self.stop]), coverage)


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
        self.fast = PadCropFlip.from_eval_transform(transform)  # None: every image takes `transform`

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, span: Tuple[int, int]) -> Tuple[int, torch.Tensor]:
        start, stop = span
        values = self.raw[start:stop][self.column]
        images = [decode_image(value, start + i, self.column) for i, value in enumerate(values)]
        s = self.fast.size if self.fast is not None else None
        fits = [s is not None and image.mode == "RGB" and image.size == (s, s) for image in images]
        if not any(fits):
            return start, torch.stack([self.transform(image) for image in images])
        # Images at the input size in one batched op, bitwise equal to `transform`; the others one by one.
        batch = torch.empty((len(images), 3, s, s), dtype=torch.float32)
        rows = [i for i, fit in enumerate(fits) if fit]
        pixels = torch.from_numpy(np.stack([np.asarray(images[i], dtype=np.uint8) for i in rows]))  # (b, s, s, 3)
        batch[rows] = self.fast.normalize(pixels.permute(0, 3, 1, 2))
        for i, fit in enumerate(fits):
            if not fit:
                batch[i] = self.transform(images[i])
        return start, batch


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
    if start_entry(cache, identity, meta) and meta["features"] == "logits":
        logger.warning(
            "%s has no forward_features / forward_head: its logits are used as the features.", type(teacher).__name__
        )


# ----------------------------------------------------------------------------------------------------
# The teacher


class _MiddleStage:
    """The teacher's middle feature stage and a forward hook that keeps its pooled output of the last forward."""

    def __init__(self, teacher: nn.Module, name: str, module: nn.Module, num_chs: Optional[int]):
        self.teacher, self.name, self.module, self.num_chs = type(teacher).__name__, name, module, num_chs
        self.pooled: Optional[torch.Tensor] = None

    def capture(self, module: nn.Module, inputs: Any, output: Any) -> None:
        """Forward hook: (B, C, H, W) -> (B, C * STAGE_POOL ** 2), pooled while the batch is on the device."""
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        if not isinstance(output, torch.Tensor) or output.ndim != 4 or self.num_chs not in (None, output.shape[1]):
            raise ValueError(
                f"The 'stage' coverage view (policy_coverage_view='stage') pools (B, C, H, W) maps, but the middle "
                f"feature stage {self.name!r} of {self.teacher} gives {shape} (channels per feature_info: "
                f"{self.num_chs}); channels-last maps and transformer tokens (B, N, C) are not supported: use "
                "policy_coverage_view='projection'."
            )
        self.pooled = F.adaptive_avg_pool2d(output, STAGE_POOL).flatten(1)

    def take(self) -> np.ndarray:
        """The pooled output of the forward just run, float32 NumPy."""
        if self.pooled is None:
            raise RuntimeError(f"The teacher's forward did not run its middle feature stage {self.name!r}.")
        pooled, self.pooled = self.pooled, None
        return pooled.float().cpu().numpy()


def _middle_stage(teacher: nn.Module) -> _MiddleStage:
    """The module named by `feature_info[len(feature_info) // 2]["module"]` (timm's list of a model's stages)."""
    info = getattr(teacher, "feature_info", None)
    info = getattr(info, "info", info)  # a `timm.models.FeatureInfo` keeps its list of dicts in `.info`
    if not info:
        raise ValueError(
            f"{type(teacher).__name__} has no `feature_info` listing its feature stages, so the 'stage' coverage view "
            "(policy_coverage_view='stage', compute_teacher_outputs(coverage_stage=True)) cannot find its middle "
            "stage: use a timm model, or policy_coverage_view='projection'."
        )
    entry = list(info)[len(info) // 2]
    try:
        module = teacher.get_submodule(entry["module"])
    except (AttributeError, KeyError, TypeError) as err:
        raise ValueError(
            f"The middle entry of {type(teacher).__name__}.feature_info, {entry}, names no module of the model "
            f"({err}): the 'stage' coverage view (policy_coverage_view='stage') needs it."
        ) from err
    return _MiddleStage(teacher, entry["module"], module, entry.get("num_chs"))


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


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 in hardware (a CUDA GPU that supports it; a CPU with AVX512-BF16 or
    AMX): elsewhere bf16 autocast is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """`"auto"` -> `"bf16"` where `device` computes bfloat16 natively, else `"fp32"`; other values unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def _device_of(teacher: nn.Module) -> torch.device:
    param = next(teacher.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _wait(accelerator: Optional[Any]) -> None:
    if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
        accelerator.wait_for_everyone()
