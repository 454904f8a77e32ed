"""hf_ifbeta.data: column reads and up-front checks on tiny synthetic datasets."""

import numpy as np
import pytest

from hf_ifbeta.data import check_columns, column_values
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
