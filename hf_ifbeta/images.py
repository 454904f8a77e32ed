"""Reading one cell of an image column: to a PIL image, or to a uint8 tensor without PIL.

Errors name the row and the column of the image that cannot be read (`CorruptImageError`).
"""

import functools
import io
import os
import warnings
from typing import Any, Callable, Optional

import torch
from PIL import Image

__all__ = ["CorruptImageError", "decode_image", "decode_image_tensor"]


class CorruptImageError(ValueError):
    """An image that cannot be decoded; the message names the row and the column."""


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

    Encoded bytes go through `torchvision.io.decode_image` (libjpeg-turbo / libpng straight into a
    tensor: no PIL object per image, whose overhead dominates for small images); formats it cannot
    read, and torchvision builds without it, fall back to PIL. Raises `CorruptImageError` naming `row` and `column` when neither can read
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
                    # torchvision deprecates its image decoders in favour of torchcodec (not a dependency
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
