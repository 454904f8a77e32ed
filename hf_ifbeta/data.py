"""Image-dataset plumbing shared by the teacher pass and the trainer.

How to feed a model travels with the model: transforms come from its timm data config
(`resolve_model_data_config`), so a teacher and a student with different input sizes or
normalisations each get their own.
"""

import functools
import io
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import datasets
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "CorruptImageError",
    "DecodedImageDataset",
    "DistillationCollator",
    "ImageBatchTransform",
    "PadCropFlip",
    "check_columns",
    "check_dataset",
    "decode_image",
    "decode_image_tensor",
    "decoded_images",
    "eval_transform",
    "find_image_column",
    "model_data_config",
    "prepare_image_dataset",
    "train_transform",
]

# Inputs at most this many pixels wide get CIFAR-style augmentation (pad-and-crop + flip) for training;
# larger inputs get timm's ImageNet training transform (random-resized crop + flip + colour jitter).
SMALL_INPUT_MAX = 64


class CorruptImageError(ValueError):
    """An image that cannot be decoded; the message names the row and the column."""


def model_data_config(model: nn.Module) -> Dict[str, Any]:
    """The timm data config of `model` (input size, interpolation, mean, std, crop)."""
    import timm.data

    return timm.data.resolve_model_data_config(model)


def eval_transform(model: nn.Module) -> Callable:
    """The model's own evaluation transform (`timm.data.create_transform(is_training=False)`)."""
    import timm.data

    return timm.data.create_transform(**model_data_config(model), is_training=False)


def train_transform(model: nn.Module, padding: int = 4) -> Callable:
    """Training augmentation for `model`.

    CIFAR-sized inputs (<= 64 px): `PadCropFlip`, random crop with `padding` zero pixels + horizontal
    flip + the model's normalisation, the standard CIFAR recipe; it also transforms whole uint8
    batches at once, which `ImageBatchTransform` uses. Larger inputs: timm's training transform for
    the model's data config (one PIL image at a time).
    """
    import timm.data

    cfg = model_data_config(model)
    size = cfg["input_size"][-1]
    if size <= SMALL_INPUT_MAX:
        return PadCropFlip(size, cfg["mean"], cfg["std"], padding=padding)
    return timm.data.create_transform(**cfg, is_training=True)


class PadCropFlip:
    """Random crop of a zero-padded image + random horizontal flip + normalisation (the CIFAR recipe).

    Works on one PIL image (`__call__`, like a torchvision transform) or on a list of uint8 image
    tensors at once (`batch`), which is about 5x faster than PIL for 32x32 JPEGs: the decode of a
    batch with `torchvision.io` and a few tensor ops replace per-image PIL calls, so the data
    pipeline keeps ahead of a CPU KD step (measured in `benchmarks/bench_trainer_throughput.py`).
    Images that are not `size` x `size` are first resized (shorter side to `size`, bilinear,
    antialiased) and centre-cropped to a square. Randomness comes from torch's global generator,
    as in torchvision transforms (DataLoader workers get distinct seeds). `padding=0, flip=False` is
    the evaluation transform of a small input (timm's resize + centre crop at `crop_pct=1`).

    Args:
        size (`int`): output height and width.
        mean (`Sequence[float]`), std (`Sequence[float]`): per-channel normalisation of [0, 1] pixels.
        padding (`int`): zero pixels added on each side before the random crop.
        flip (`bool`): random horizontal flip with probability 1/2.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], padding: int = 4, flip: bool = True):
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}.")
        self.size = int(size)
        self.padding = int(padding)
        self.flip = flip
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(v) for v in std)
        # uint8 -> normalised float in one fused op: (x - 255 mean) / (255 std)
        self._shift = torch.tensor(self.mean).view(1, 3, 1, 1) * 255.0
        self._scale = torch.tensor(self.std).view(1, 3, 1, 1) * 255.0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, padding={self.padding}, flip={self.flip}, "
            f"mean={self.mean}, std={self.std})"
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from torchvision.transforms.functional import pil_to_tensor

        return self.batch([pil_to_tensor(image.convert("RGB"))])[0]

    def batch(self, images: List[torch.Tensor]) -> torch.Tensor:
        """uint8 images, each (3, h, w) -> augmented, normalised float batch (B, 3, size, size)."""
        x = torch.stack([self._to_size(im) for im in images])  # (B, 3, S, S) uint8
        b, p = x.shape[0], self.padding
        offsets = torch.randint(0, 2 * p + 1, (b, 2)).tolist()
        flips = (torch.rand(b) < 0.5).tolist() if self.flip else [False] * b
        return self.apply(x, offsets, flips)

    def params(self, seed: int, epoch: int, num_rows: int) -> Tuple[np.ndarray, np.ndarray]:
        """Crop offsets (num_rows, 2) and flips (num_rows,) of every row at `epoch`: a seeded stream, so the
        augmented view of row i depends only on (seed, epoch, i), never on batching or worker order."""
        rng = np.random.default_rng([seed, epoch])
        offsets = rng.integers(0, 2 * self.padding + 1, (num_rows, 2))
        flips = rng.random(num_rows) < 0.5 if self.flip else np.zeros(num_rows, dtype=bool)
        return offsets, flips

    def apply(self, x: torch.Tensor, offsets: Sequence, flips: Sequence) -> torch.Tensor:
        """Crop each of the uint8 images `x` (B, 3, size, size) at its (dy, dx) after zero padding, flip where
        asked, normalise: (B, 3, size, size) float32."""
        s, p = self.size, self.padding
        offsets, flips = np.asarray(offsets).tolist(), np.asarray(flips).tolist()  # Python ints slice fastest
        if p == 0 and not any(flips):
            return x.float().sub_(self._shift).div_(self._scale)
        padded = F.pad(x, (p, p, p, p))  # (B, 3, S + 2p, S + 2p), zeros = black, as T.RandomCrop(padding=p)
        out = torch.empty_like(x)
        # A Python loop over B slices beats gather-based indexing here: each copy is one small memcpy.
        for i, ((dy, dx), flip) in enumerate(zip(offsets, flips)):
            crop = padded[i, :, dy : dy + s, dx : dx + s]
            out[i] = crop.flip(-1) if flip else crop
        return out.float().sub_(self._shift).div_(self._scale)

    def _to_size(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-2:] == (self.size, self.size):
            return image
        from torchvision.transforms.v2 import functional as TF

        image = TF.resize(image, self.size, antialias=True)  # shorter side -> size
        return TF.center_crop(image, [self.size, self.size])


def find_image_column(dataset: datasets.Dataset, image_column: Optional[str] = None) -> str:
    """`image_column` if given and present, else the dataset's only `datasets.Image` column."""
    if image_column is not None:
        if image_column not in dataset.column_names:
            raise ValueError(
                f"Image column {image_column!r} is not in the dataset; its columns are {dataset.column_names}."
            )
        return image_column
    candidates = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    if len(candidates) != 1:
        raise ValueError(
            f"Cannot tell which column holds the images (Image columns: {candidates}; all columns: "
            f"{dataset.column_names}). Pass image_column=..."
        )
    return candidates[0]


def column_values(dataset: datasets.Dataset, column: str):
    """One column of `dataset` as a NumPy array, read in one Arrow slice.

    `dataset.with_format("numpy")[column]` is a lazy `Column` whose conversion formats the rows one by one
    (2.4 s for 50,000 labels; 24 s through `torch.as_tensor`); slicing the one-column dataset takes 15 ms.
    """
    return np.asarray(dataset.select_columns([column]).with_format("numpy")[:][column])


def check_dataset(dataset: Any) -> None:
    """Raise unless `dataset` is one map-style split (`datasets.Dataset`); a `DatasetDict` gets its splits named."""
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        splits = list(dataset)
        pick = "train" if "train" in splits else splits[0] if splits else "<split>"
        raise ValueError(
            f"Got a {type(dataset).__name__} with splits {splits}: pass one split, the training rows, "
            f"e.g. dataset[{pick!r}] (never the split you evaluate on)."
        )
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(
            f"Expected a map-style `datasets.Dataset`, got {type(dataset).__name__}"
            + (": load it without streaming=True." if isinstance(dataset, datasets.IterableDataset) else ".")
        )


def check_columns(
    dataset: datasets.Dataset, image_column: Optional[str], label_column: str, num_classes: Optional[int] = None
) -> str:
    """Validate the dataset before any work starts; returns the resolved image column.

    Raises a `ValueError` naming the problem: a `DatasetDict` (see `check_dataset`), an empty dataset, a
    missing column, a label column of strings, or (when `num_classes` is given) a label outside
    `[0, num_classes)` with the first offending row.
    """
    check_dataset(dataset)
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: there is nothing to score or prune.")
    image_column = find_image_column(dataset, image_column)
    if label_column not in dataset.column_names:
        raise ValueError(
            f"Label column {label_column!r} is not in the dataset; its columns are {dataset.column_names}. "
            "Pass label_column=..."
        )
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        # A ClassLabel column is stored as class ids, so strings carry no class order: the user must give it.
        first = dataset.select_columns([label_column]).with_format(None)[0][label_column]
        raise ValueError(
            f"Label column {label_column!r} holds strings (row 0: {first!r}), not class ids. "
            f"Encode it first: dataset.class_encode_column({label_column!r}) numbers the classes in sorted "
            f"order; dataset.cast_column({label_column!r}, datasets.ClassLabel(names=[...])) in the teacher's order."
        )
    if num_classes is not None:
        labels = torch.as_tensor(column_values(dataset, label_column))
        bad = ((labels < 0) | (labels >= num_classes)).nonzero().flatten()
        if len(bad):
            row = int(bad[0])
            raise ValueError(
                f"Row {row} has label {int(labels[row])} in column {label_column!r}, outside the teacher's "
                f"{num_classes} classes [0, {num_classes}) ({len(bad)} such rows). Does the teacher match the data?"
            )
    return image_column


def decode_image(value: Any, row: int, column: str) -> Image.Image:
    """Decode one cell of an image column (a PIL image, `{"bytes", "path"}`, or a local file path) to RGB.

    Raises `CorruptImageError` naming `row` and `column` when the image cannot be read.
    """
    value = _as_image_dict(value)
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict) and value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = Image.open(value["path"])
        else:
            raise ValueError(f"unsupported image value of type {type(value).__name__}")
        return image.convert("RGB")
    except Exception as err:  # PIL raises several types for truncated or foreign bytes
        raise CorruptImageError(f"Cannot decode the image in row {row}, column {column!r}: {err}") from err


def decode_image_tensor(value: Any, row: int, column: str) -> torch.Tensor:
    """Decode one cell of an image column to a (3, H, W) uint8 RGB tensor.

    Encoded bytes go through `torchvision.io.decode_image` (libjpeg-turbo / libpng, no PIL object:
    about 4x faster than PIL on 32x32 JPEGs); formats it cannot read, and torchvision builds without
    it, fall back to PIL. Raises `CorruptImageError` naming `row` and `column` when neither can read
    the image.
    """
    from torchvision.transforms.functional import pil_to_tensor

    value = _as_image_dict(value)
    data = None
    if isinstance(value, dict) and value.get("bytes") is not None:
        data = value["bytes"]
    elif isinstance(value, dict) and value.get("path"):
        try:
            with open(value["path"], "rb") as f:
                data = f.read()
        except OSError as err:
            raise CorruptImageError(f"Cannot decode the image in row {row}, column {column!r}: {err}") from err
    if data is not None:
        decoder = _torchvision_decoder()
        if decoder is not None:
            try:
                with warnings.catch_warnings():
                    # torchvision 0.29 deprecates its image decoders in favour of torchcodec (not a dependency
                    # here); until they go, they are the fast path, and the PIL fallback below covers their removal.
                    warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision")
                    return decoder(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            except (RuntimeError, ValueError):
                pass  # e.g. BMP, TIFF: let PIL try
        value = {"bytes": data, "path": None}
    return pil_to_tensor(decode_image(value, row, column))


def _as_image_dict(value: Any) -> Any:
    """A file path (a column of strings) as `datasets.Image` encodes it: `{"bytes": None, "path": path}`."""
    if isinstance(value, (str, os.PathLike)):
        return {"bytes": None, "path": os.fspath(value)}
    return value


@functools.lru_cache(maxsize=None)
def _torchvision_decoder() -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """`torchvision.io.decode_image` as encoded bytes (uint8 tensor) -> (3, H, W) RGB, or None if unavailable."""
    try:
        from torchvision.io import ImageReadMode, decode_image as tv_decode_image
    except ImportError:
        return None
    return functools.partial(tv_decode_image, mode=ImageReadMode.RGB)


class ImageBatchTransform:
    """A `Dataset.set_transform` callable: images -> `pixel_values`, labels -> `labels`.

    Transforms with a `batch` method (`PadCropFlip`) get the whole batch as uint8 tensors decoded by
    `decode_image_tensor`, and `pixel_values` is one (B, 3, H, W) tensor; other transforms get one
    PIL image at a time, and `pixel_values` is a list of (3, H, W) tensors.

    Args:
        transform (`Callable`): PIL image -> (3, H, W) tensor, optionally with `batch(list of uint8 images)`.
        image_column (`str`): column with the images.
        label_column (`str`, *optional*): column with the class ids; dropped when None.
        teacher_logits_column (`str`, *optional*): column with cached teacher logits (C floats per row),
            passed on as `teacher_logits`.
    """

    def __init__(
        self,
        transform: Callable,
        image_column: str,
        label_column: Optional[str] = "label",
        teacher_logits_column: Optional[str] = None,
    ):
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column
        self.teacher_logits_column = teacher_logits_column

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(transform={self.transform!r}, image_column={self.image_column!r}, "
            f"label_column={self.label_column!r}, teacher_logits_column={self.teacher_logits_column!r})"
        )

    def __call__(self, batch: Dict[str, List]) -> Dict[str, Any]:
        values = batch[self.image_column]
        # The transform sees one batch, not dataset row ids: errors name the position in the batch (row=-1).
        if hasattr(self.transform, "batch"):
            pixel_values = self.transform.batch([decode_image_tensor(v, -1, self.image_column) for v in values])
        else:
            pixel_values = [self.transform(decode_image(v, -1, self.image_column)) for v in values]
        out = {"pixel_values": pixel_values}
        if self.label_column is not None:
            out["labels"] = batch[self.label_column]
        if self.teacher_logits_column is not None:
            out["teacher_logits"] = batch[self.teacher_logits_column]
        return out


def prepare_image_dataset(
    dataset: datasets.Dataset,
    model: nn.Module,
    image_column: Optional[str] = None,
    label_column: Optional[str] = "label",
    train: bool = True,
    teacher_logits_column: Optional[str] = None,
    padding: int = 4,
    rows: Optional[Sequence[int]] = None,
    seed: Optional[int] = None,
    cache_dir: Optional[str] = None,
):
    """Make an image-classification dataset ready for `DistillationTrainer`.

    Rows come out as `{"pixel_values", "labels"[, "teacher_logits"]}`. Two pipelines, chosen by the
    model's input size:

    - inputs up to 64 px (CIFAR, Tiny-ImageNet): the images are decoded once into a uint8 array,
      cached on disk under `cache_dir` (keyed on the dataset's fingerprint, the column and the size),
      and a `DecodedImageDataset` serves batches of them: `PadCropFlip` augmentation when `train`
      (a seeded stream: the view of row i at epoch e depends only on (seed, e, i), which is what lets
      `DistillationTrainingArguments(teacher_logit_cache=True)` reuse teacher logits across runs),
      else the evaluation transform (normalisation only). Rows also carry `row_ids` and `epoch`.
    - larger inputs (ImageNet): a lazy `datasets.Dataset.with_transform` that decodes each batch where
      it is read (use DataLoader workers): timm's training transform for `train`, else the model's
      evaluation transform.

    Args:
        dataset (`datasets.Dataset`): rows with an image and (unless `label_column=None`) a class id.
        model (`nn.Module`): the model the pixels are for (the student): its timm data config gives
            size and normalisation.
        image_column (`str`, *optional*): defaults to the dataset's only `datasets.Image` column.
        label_column (`str`, *optional*): class ids; None for unlabelled data (pure KD, `alpha=1`).
        train (`bool`): training augmentation (True) or the evaluation transform (False).
        teacher_logits_column (`str`, *optional*): precomputed teacher logits to pass on as
            `teacher_logits`; they must be the teacher's logits for the very pixels the student sees.
        padding (`int`): zero padding of the random crop for inputs up to 64 px.
        rows (`Sequence[int]`, *optional*): train on these rows of `dataset` only (e.g. a
            `PruningResult`'s `indices`). Prefer this to passing `dataset.select(rows)`: the decoded
            images and the teacher-logit cache then belong to the whole dataset and are shared by every
            subset of it.
        seed (`int`, *optional*): seed of the augmentation stream; None takes the trainer's `args.seed`.
        cache_dir (`str`, *optional*): where decoded images are kept; default `$HF_HOME/hf_ifbeta/decoded`.

    Returns:
        A `DecodedImageDataset` (inputs up to 64 px) or a `datasets.Dataset` with the transform set;
        the input dataset is unchanged.

    Example:
    ```python
    >>> train_ds = prepare_image_dataset(ds["train"], student, "img", "label", rows=result.indices)
    >>> eval_ds = prepare_image_dataset(ds["test"], student, "img", "label", train=False)
    ```
    """
    if label_column is None:
        if len(dataset) == 0:
            raise ValueError("The dataset is empty: there is nothing to train or evaluate on.")
        image_column = find_image_column(dataset, image_column)
    else:
        image_column = check_columns(dataset, image_column, label_column)
    if teacher_logits_column is not None and teacher_logits_column not in dataset.column_names:
        raise ValueError(
            f"Teacher-logits column {teacher_logits_column!r} is not in the dataset; its columns are "
            f"{dataset.column_names}."
        )
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or len(rows) == 0 or rows.min() < 0 or rows.max() >= len(dataset):
            raise ValueError(
                f"rows must be a non-empty list of row indices in [0, {len(dataset)}), got {len(rows)} values "
                f"in [{rows.min() if rows.size else None}, {rows.max() if rows.size else None}]."
            )
    cfg = model_data_config(model)
    size = cfg["input_size"][-1]
    if size <= SMALL_INPUT_MAX and (train or cfg.get("crop_pct", 1.0) == 1.0):
        # Without augmentation the transform is `eval_transform` (resize, centre crop at crop_pct 1, normalise).
        transform = PadCropFlip(size, cfg["mean"], cfg["std"], padding=padding if train else 0, flip=train)
        images = decoded_images(dataset, image_column, size, cache_dir)
        labels = None if label_column is None else column_values(dataset, label_column).astype(np.int64)
        logits = None
        if teacher_logits_column is not None:
            logits = np.asarray(column_values(dataset, teacher_logits_column).tolist(), dtype=np.float32)
        return DecodedImageDataset(
            images, transform, labels=labels, teacher_logits=logits, rows=rows, seed=seed,
            fingerprint=dataset._fingerprint,
        )
    if rows is not None:
        dataset = dataset.select(rows)
    feature = dataset.features[image_column]
    if isinstance(feature, datasets.Image) and feature.decode:
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    transform = train_transform(model, padding=padding) if train else eval_transform(model)
    columns = [c for c in (image_column, label_column, teacher_logits_column) if c is not None]
    return dataset.with_transform(
        ImageBatchTransform(transform, image_column, label_column, teacher_logits_column), columns=columns
    )


def decoded_images(
    dataset: datasets.Dataset, image_column: str, size: int, cache_dir: Optional[str] = None
) -> np.ndarray:
    """Every image of `dataset[image_column]` as uint8 RGB at `size` x `size`: (n, 3, size, size), memory-mapped.

    Decoded once (`decode_image_tensor`; other sizes are resized on the shorter side and centre-cropped)
    and kept under `cache_dir/<key>.npy`, the key hashing the dataset's fingerprint, the column and the
    size; a file of the wrong shape (a killed copy) is decoded again with a warning.
    """
    import hashlib
    import json
    import logging
    import os
    from pathlib import Path

    from .features import default_cache_dir

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
        logging.getLogger(__name__).warning("Decoded-image cache %s %s, expected uint8 %s: decoding again.", path, problem, shape)
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    raw = dataset.select_columns([image_column])
    if isinstance(raw.features[image_column], datasets.Image):
        raw = raw.cast_column(image_column, datasets.Image(decode=False))
    resize = PadCropFlip(size, (0.0,) * 3, (1.0,) * 3)._to_size
    start = 0
    for batch in raw.iter(batch_size=1024):
        for i, value in enumerate(batch[image_column]):
            out[start + i] = resize(decode_image_tensor(value, start + i, image_column)).numpy()
        start += len(batch[image_column])
    out.flush()
    del out
    os.replace(tmp, path)
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


class DistillationCollator:
    """Stack `pixel_values` and `labels` (and `teacher_logits` when cached) into batch tensors.

    Rows come from `DecodedImageDataset` or `ImageBatchTransform`: `pixel_values` (3, H, W) float,
    `labels` an int, `teacher_logits` (C,) floats, `row_ids` and `epoch` ints. The batch holds
    `pixel_values` (B, 3, H, W), `labels`, `row_ids` and `epoch` (B,) int64 and `teacher_logits` (B, C) float32.
    """

    def __call__(self, features: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        batch = {"pixel_values": torch.stack([torch.as_tensor(f["pixel_values"]) for f in features])}
        for key in ("labels", "row_ids", "epoch"):
            if key in features[0]:
                batch[key] = torch.as_tensor([int(f[key]) for f in features], dtype=torch.long)
        if "teacher_logits" in features[0]:
            batch["teacher_logits"] = torch.stack(
                [torch.as_tensor(f["teacher_logits"], dtype=torch.float32) for f in features]
            )
        return batch
