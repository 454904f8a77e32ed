"""Tiny seeded fixture factories for fast tests."""

import datasets
import numpy as np
from PIL import Image


def tiny_image_dataset(n=120, num_classes=4, seed=0, size=16):
    """`n` random RGB images whose mean colour depends on the class, with a ClassLabel and an extra column."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    images = []
    for y in labels:
        base = np.zeros((size, size, 3)) + 40 * y
        images.append(Image.fromarray(np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)))
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=num_classes), "row_id": datasets.Value("int64")}
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels.tolist(), "row_id": list(range(n))}, features=features)
