"""Image-dataset plumbing shared by the teacher pass and the trainer.

How to feed a model travels with the model: transforms come from its timm data config
(`resolve_model_data_config`), so a teacher and a student with different input sizes or
normalisations each get their own.
"""

import io
from typing import Any, Callable, Dict, List, Optional

import datasets
import torch
import torch.nn as nn
from PIL import Image

__all__ = [
    "CorruptImageError",
    "DistillationCollator",
    "ImageBatchTransform",
    "check_columns",
    "decode_image",
    "eval_transform",
    "find_image_column",
    "model_data_config",
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

    CIFAR-sized inputs (<= 64 px): random crop with `padding` zero pixels + horizontal flip, the
    standard CIFAR recipe. Larger inputs: timm's training transform for the model's data config.
    """
    import timm.data
    from torchvision import transforms as T

    cfg = model_data_config(model)
    size = cfg["input_size"][-1]
    if size <= SMALL_INPUT_MAX:
        return T.Compose(
            [
                T.Resize(size),
                T.RandomCrop(size, padding=padding),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(cfg["mean"], cfg["std"]),
            ]
        )
    return timm.data.create_transform(**cfg, is_training=True)


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


def check_columns(
    dataset: datasets.Dataset, image_column: Optional[str], label_column: str, num_classes: Optional[int] = None
) -> str:
    """Validate the dataset before any work starts; returns the resolved image column.

    Raises a `ValueError` naming the problem: an empty dataset, a missing column, or (when
    `num_classes` is given) a label outside `[0, num_classes)` with the first offending row.
    """
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: there is nothing to score or prune.")
    image_column = find_image_column(dataset, image_column)
    if label_column not in dataset.column_names:
        raise ValueError(
            f"Label column {label_column!r} is not in the dataset; its columns are {dataset.column_names}. "
            "Pass label_column=..."
        )
    if num_classes is not None:
        labels = torch.as_tensor(dataset.with_format("numpy")[label_column])
        bad = ((labels < 0) | (labels >= num_classes)).nonzero().flatten()
        if len(bad):
            row = int(bad[0])
            raise ValueError(
                f"Row {row} has label {int(labels[row])} in column {label_column!r}, outside the teacher's "
                f"{num_classes} classes [0, {num_classes}) ({len(bad)} such rows). Does the teacher match the data?"
            )
    return image_column


def decode_image(value: Any, row: int, column: str) -> Image.Image:
    """Decode one cell of an image column (a PIL image, or `{"bytes", "path"}`) to RGB.

    Raises `CorruptImageError` naming `row` and `column` when the image cannot be read.
    """
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


class ImageBatchTransform:
    """A `Dataset.set_transform` callable: images -> `pixel_values`, labels -> `labels`.

    Args:
        transform (`Callable`): PIL image -> (3, H, W) tensor.
        image_column (`str`): column with the images.
        label_column (`str`, *optional*): column with the class ids; dropped when None.
    """

    def __init__(self, transform: Callable, image_column: str, label_column: Optional[str] = "label"):
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column

    def __call__(self, batch: Dict[str, List]) -> Dict[str, Any]:
        out = {"pixel_values": [self.transform(decode_image(v, -1, self.image_column)) for v in batch[self.image_column]]}
        if self.label_column is not None:
            out["labels"] = batch[self.label_column]
        return out


class DistillationCollator:
    """Stack `pixel_values` and `labels` (and `teacher_logits` when cached) into batch tensors."""

    def __call__(self, features: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        batch = {"pixel_values": torch.stack([f["pixel_values"] for f in features])}
        if "labels" in features[0]:
            batch["labels"] = torch.as_tensor([int(f["labels"]) for f in features], dtype=torch.long)
        if "teacher_logits" in features[0]:
            batch["teacher_logits"] = torch.stack([torch.as_tensor(f["teacher_logits"]) for f in features])
        return batch
