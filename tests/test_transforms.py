"""hf_ifbeta.transforms: the one batched uint8 -> normalised float path, against the per-image
torchvision transforms it stands for."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import hf_ifbeta  # noqa: F401  (registers the CIFAR ResNets)
from hf_ifbeta.transforms import PadCropFlip, eval_transform, resize_to_square, train_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return timm.create_model("cifar10_resnet20")


def random_images(sizes, seed=1):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)) for s in sizes]


def test_batched_eval_is_bitwise_the_per_image_timm_transform(teacher):
    transform = eval_transform(teacher)
    fast = PadCropFlip.from_eval_transform(transform)
    assert fast is not None and fast.size == 32 and (fast.padding, fast.flip, fast.order) == (0, False, "torchvision")
    images = random_images([32] * 16)
    expected = torch.stack([transform(image) for image in images])
    pixels = torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2)  # (B, 3, 32, 32)
    assert torch.equal(fast.normalize(pixels), expected)
    assert torch.equal(fast.apply(pixels, np.zeros((16, 2), dtype=int), np.zeros(16, dtype=bool)), expected)
    # A transform of another shape (training augmentation) gets no batched path.
    assert PadCropFlip.from_eval_transform(train_transform(teacher)) is None


def test_the_two_orders_are_the_same_map_rounded_differently():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16)
    fused = PadCropFlip(16, MEAN, STD, padding=0, flip=False).normalize(x)
    torchvision = PadCropFlip(16, MEAN, STD, padding=0, flip=False, order="torchvision").normalize(x)
    reference = (x.double() / 255 - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        STD, dtype=torch.float64
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(fused.double(), reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(torchvision.double(), reference, rtol=0, atol=1e-6)
    # Row by row, each order is its own formula in float32.
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.equal(fused, (x.float() - mean * 255.0) / (std * 255.0))
    assert torch.equal(torchvision, (x.float() / 255 - mean) / std)
    with pytest.raises(ValueError, match=r"Unknown order 'exact'. Choose between \['fused', 'torchvision'\]"):
        PadCropFlip(16, MEAN, STD, order="exact")


def test_the_default_repr_names_no_order():
    # The repr of the students' transform is part of the teacher-logit cache's key.
    assert repr(PadCropFlip(32, MEAN, STD, padding=0, flip=False)) == (
        "PadCropFlip(size=32, padding=0, flip=False, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))"
    )
    assert "order='torchvision'" in repr(PadCropFlip(32, MEAN, STD, order="torchvision"))


def test_pad_crop_flip_matches_the_pil_recipe_and_augments():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    from torchvision import transforms as T

    reference = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])(image)
    torch.testing.assert_close(PadCropFlip(32, MEAN, STD, padding=0, flip=False)(image), reference)
    torch.manual_seed(0)
    augmented = PadCropFlip(32, MEAN, STD, padding=4).batch([torch.as_tensor(np.array(image)).permute(2, 0, 1)] * 64)
    assert augmented.shape == (64, 3, 32, 32)
    assert len({tuple(x.flatten()[:200].tolist()) for x in augmented}) > 10  # random crops and flips differ
    # Crops of the zero-padded image: some corners are padding (black before normalisation).
    padded_zero = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.isclose(augmented[:, :, 0, 0], padded_zero).all(dim=1).any()


def test_resize_to_square_keeps_square_images_and_centre_crops_others():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    assert resize_to_square(image, 32) is image
    wide = torch.zeros((3, 16, 48), dtype=torch.uint8)
    wide[:, :, 16:32] = 255  # the centre third is white
    out = resize_to_square(wide, 8)
    assert out.shape == (3, 8, 8) and out.dtype == torch.uint8
    assert out[:, :, 2:6].float().mean() > 200 and out.float().mean() > 100  # the centre, not the dark sides
