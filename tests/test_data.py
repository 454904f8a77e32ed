"""hf_ifbeta.data: column reads and up-front checks on tiny synthetic datasets."""

import datasets
import numpy as np
import pytest
import torch

from hf_ifbeta.data import CorruptImageError, check_columns, check_dataset, column_values, decode_image, decode_image_tensor
from factories import tiny_image_dataset


def test_column_values_follows_selections_and_formats():
    ds = tiny_image_dataset(n=50, num_classes=4)
    expected = np.array(ds["label"])
    view = ds.shuffle(seed=3).select(range(5, 45)).with_format("torch")
    order = np.array(view.with_format(None)["row_id"])
    values = column_values(view, "label")
    assert isinstance(values, np.ndarray) and values.shape == (40,)
    np.testing.assert_array_equal(values, expected[order])
    # the dataset's own format and transform are left alone
    assert view.format["type"] == "torch"


def test_check_columns_names_the_first_label_outside_the_classes():
    ds = tiny_image_dataset(n=20, num_classes=4)
    assert check_columns(ds, None, "label", num_classes=4) == "image"
    with pytest.raises(ValueError, match=r"Row \d+ has label 3 .* outside the teacher's 3 classes"):
        check_columns(ds, "image", "label", num_classes=3)
    with pytest.raises(ValueError, match="Label column 'y' is not in the dataset"):
        check_columns(ds, "image", "y")


def test_check_columns_refuses_string_labels_and_dataset_dicts_even_without_a_class_count():
    ds = tiny_image_dataset(n=20, num_classes=4)
    named = ds.cast_column("label", datasets.Value("string"))
    with pytest.raises(ValueError, match=r"Label column 'label' holds strings \(row 0: '\d'\).*class_encode_column"):
        check_columns(named, "image", "label")  # the trainer's path: no teacher class count
    with pytest.raises(ValueError, match=r"splits \['train'\]: pass one split.*dataset\['train'\]"):
        check_columns(datasets.DatasetDict({"train": ds}), "image", "label")
    with pytest.raises(TypeError, match="without streaming=True"):
        check_dataset(ds.to_iterable_dataset())


def test_file_paths_decode_like_their_bytes(tmp_path):
    image = tiny_image_dataset(n=1)["image"][0]
    path = tmp_path / "0.png"
    image.save(path)
    as_bytes = {"bytes": path.read_bytes(), "path": None}
    for value in (str(path), path):
        assert decode_image(value, 0, "img").tobytes() == decode_image(as_bytes, 0, "img").tobytes()
        assert torch.equal(decode_image_tensor(value, 0, "img"), decode_image_tensor(as_bytes, 0, "img"))
    with pytest.raises(CorruptImageError, match=r"row 3, column 'img'.*missing.png"):
        decode_image_tensor(str(tmp_path / "missing.png"), 3, "img")
