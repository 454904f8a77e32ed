"""How to feed a model travels with the model: its transforms, from its timm data config.

`model_data_config` / `eval_transform` / `train_transform` resolve a model's input size and
normalisation (`timm.data.resolve_model_data_config`), so a teacher and a student with different
inputs each get their own. `PadCropFlip` is the one batched path from uint8 pixels to a normalised
float batch: the CIFAR training augmentation, the evaluation transform of small inputs, and
(`PadCropFlip.from_eval_transform`) timm's evaluation transform of the teacher pass, batched.
"""

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

__all__ = ["PadCropFlip", "eval_transform", "model_data_config", "resize_to_square", "train_transform"]

# Inputs at most this many pixels wide get CIFAR-style augmentation (pad-and-crop + flip) for training;
# larger inputs get timm's ImageNet training transform (random-resized crop + flip + colour jitter).
SMALL_INPUT_MAX = 64
# The two arithmetic orders of `(x / 255 - mean) / std` (see `PadCropFlip`).
ORDERS = ("fused", "torchvision")


def model_data_config(model: nn.Module) -> dict:
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
    tensors at once (`batch`): a few tensor ops on the whole batch replace per-image PIL calls, so the
    data pipeline keeps ahead of a KD step on CPU. Images that are not `size` x `size` are first
    resized (shorter side to `size`, bilinear, antialiased) and centre-cropped to a square. Randomness
    comes from torch's global generator, as in torchvision transforms (DataLoader workers get distinct
    seeds). `padding=0, flip=False` is the evaluation transform of a small input (timm's resize +
    centre crop at `crop_pct=1`).

    The normalisation `(x / 255 - mean) / std` is computed in one of two float32 orders, which round
    differently, each kept bit for bit by what was computed with it:
    `"fused"` (the default), `(x - 255 mean) / (255 std)`, one operation fewer, which the students'
    pixels and the teacher logits cached for them were made with; `"torchvision"`, `x / 255 - mean`
    then `/ std` as `ToTensor` + `Normalize` do, which `from_eval_transform` uses so that the teacher
    pass equals timm's per-image transform named in its cache key.

    Args:
        size (`int`): output height and width.
        mean (`Sequence[float]`), std (`Sequence[float]`): per-channel normalisation of [0, 1] pixels.
        padding (`int`): zero pixels added on each side before the random crop.
        flip (`bool`): random horizontal flip with probability 1/2.
        order (`str`): arithmetic order of the normalisation, `"fused"` or `"torchvision"`.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        padding: int = 4,
        flip: bool = True,
        order: str = "fused",
    ):
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}.")
        if order not in ORDERS:
            raise ValueError(f"Unknown order {order!r}. Choose between {list(ORDERS)}.")
        self.size = int(size)
        self.padding = int(padding)
        self.flip = flip
        self.order = order
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(v) for v in std)
        mean_, std_ = torch.tensor(self.mean).view(1, 3, 1, 1), torch.tensor(self.std).view(1, 3, 1, 1)
        # fused: (x - 255 mean) / (255 std); torchvision: (x / 255 - mean) / std
        self._shift, self._scale = (mean_ * 255.0, std_ * 255.0) if order == "fused" else (mean_, std_)

    @classmethod
    def from_eval_transform(cls, transform: Callable) -> Optional["PadCropFlip"]:
        """timm's evaluation transform `Resize(s) -> CenterCrop(s) -> ToTensor -> Normalize` as a batched
        transform of s x s images, bitwise equal to it; None for a transform of any other shape.

        On an s x s RGB image the resize and the crop are the identity (PIL returns a copy at the same
        size), so the transform is its normalisation, in torchvision's order. Images of other sizes
        still need `transform` itself.
        """
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
        return cls(size, mean.tolist(), std.tolist(), padding=0, flip=False, order="torchvision")

    def __repr__(self) -> str:
        order = f", order={self.order!r}" if self.order != "fused" else ""  # the default keeps its repr
        return (
            f"{type(self).__name__}(size={self.size}, padding={self.padding}, flip={self.flip}, "
            f"mean={self.mean}, std={self.std}{order})"
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
            return self.normalize(x)
        padded = F.pad(x, (p, p, p, p))  # (B, 3, S + 2p, S + 2p), zeros = black, as T.RandomCrop(padding=p)
        out = torch.empty_like(x)
        # A Python loop over B slices beats gather-based indexing here: each copy is one small memcpy.
        for i, ((dy, dx), flip) in enumerate(zip(offsets, flips)):
            crop = padded[i, :, dy : dy + s, dx : dx + s]
            out[i] = crop.flip(-1) if flip else crop
        return self.normalize(out)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 3, H, W) -> float32 `(x / 255 - mean) / std`, in this transform's order."""
        x = x.float()
        if self.order == "torchvision":
            x = x.div_(255)
        return x.sub_(self._shift).div_(self._scale)

    def _to_size(self, image: torch.Tensor) -> torch.Tensor:
        return resize_to_square(image, self.size)


def resize_to_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """A uint8 image (3, h, w) at `size` x `size`: unchanged when it is, else its shorter side resized to
    `size` (bilinear, antialiased) and centre-cropped."""
    if image.shape[-2:] == (size, size):
        return image
    from torchvision.transforms.v2 import functional as TF

    image = TF.resize(image, size, antialias=True)  # shorter side -> size
    return TF.center_crop(image, [size, size])
