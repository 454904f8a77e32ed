"""Image datasets in, model-ready rows out: the checks every entry point runs first, column reads, and
the pipelines that turn an image column into `pixel_values` for `DistillationTrainer`.

How to feed a model travels with the model: transforms come from its timm data config
(`hf_ifbeta.transforms`), so a teacher and a student with different input sizes or normalisations each
get their own. Small inputs are decoded once (`hf_ifbeta.decoded`); images are read by
`hf_ifbeta.images`. Their public names are importable from here too.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence

import datasets
import numpy as np
import torch
import torch.nn as nn

from .decoded import DecodedImageDataset, decoded_images
from .images import CorruptImageError, decode_image, decode_image_tensor
from .transforms import SMALL_INPUT_MAX, PadCropFlip, eval_transform, model_data_config, train_transform

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

    `dataset.with_format("numpy")[column]` is a lazy `Column` whose conversion formats the rows one by one;
    slicing the one-column dataset converts the whole Arrow column at once.
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
