"""hf_ifbeta.images: one cell of an image column, decoded, or an error naming its row and column."""

import pytest
import torch

from factories import tiny_image_dataset
from hf_ifbeta.images import CorruptImageError, decode_image, decode_image_tensor


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
