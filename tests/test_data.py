"""hf_ifbeta.data: column reads, up-front checks and the public names it gathers, on tiny synthetic datasets."""

import datasets
import numpy as np
import pytest

from hf_ifbeta.data import check_columns, check_dataset, column_values
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


def test_decoded_dataset_rejects_rows_outside_the_dataset(tmp_path):
    import timm

    import hf_ifbeta  # noqa: F401  (registers the CIFAR ResNets)
    from hf_ifbeta.data import prepare_image_dataset

    ds = tiny_image_dataset(n=40, num_classes=4, size=16)
    model = timm.create_model("cifar10_resnet20", num_classes=4)
    with pytest.raises(ValueError, match=r"row indices in \[0, 40\)"):
        prepare_image_dataset(ds, model, "image", "label", rows=[0, 40], seed=5, cache_dir=str(tmp_path))
