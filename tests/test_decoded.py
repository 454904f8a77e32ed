"""hf_ifbeta.decoded: small images decoded once, served with a seeded augmentation stream."""

from factories import tiny_image_dataset


def _decoded(tmp_path, rows=None, seed=5, train=True, n=40):
    import timm

    import hf_ifbeta  # noqa: F401  (registers the CIFAR ResNets)
    from hf_ifbeta.data import prepare_image_dataset

    ds = tiny_image_dataset(n=n, num_classes=4, size=16)
    model = timm.create_model("cifar10_resnet20", num_classes=4)
    return ds, prepare_image_dataset(ds, model, "image", "label", train=train, rows=rows, seed=seed, cache_dir=str(tmp_path))


def test_decoded_rows_are_a_function_of_seed_epoch_and_source_row(tmp_path):
    import torch

    from hf_ifbeta.decoded import DecodedImageDataset

    ds, full = _decoded(tmp_path)
    _, subset = _decoded(tmp_path, rows=[30, 3, 17])
    assert isinstance(full, DecodedImageDataset) and len(subset) == 3
    full.set_epoch(2)
    subset.set_epoch(2)
    rows = full.__getitems__([3, 17, 30])
    by_row = {r["row_ids"]: r for r in rows}
    for k, source in enumerate([30, 3, 17]):
        one = subset[k]  # another batch composition, another subset: the same view
        assert one["row_ids"] == source and one["epoch"] == 2 and one["labels"] == ds[source]["label"]
        torch.testing.assert_close(one["pixel_values"], by_row[source]["pixel_values"], rtol=0, atol=0)
    full.set_epoch(3)
    assert not all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(full.__getitems__([3, 17, 30]), rows))
    _, other_seed = _decoded(tmp_path, seed=6)
    other_seed.set_epoch(2)
    assert not all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(other_seed.__getitems__([3, 17, 30]), rows))


def test_decoded_eval_rows_are_the_models_eval_transform(tmp_path):
    import timm
    import torch

    from hf_ifbeta.transforms import eval_transform

    ds, decoded = _decoded(tmp_path, train=False)
    reference = eval_transform(timm.create_model("cifar10_resnet20", num_classes=4))
    # (16 px images; the transform resizes them to the model's 32 px as timm's does, up to interpolation rounding)
    for row in (0, 7):
        expected = reference(ds[row]["image"].convert("RGB"))
        torch.testing.assert_close(decoded[row]["pixel_values"], expected, atol=0.1, rtol=0)


def test_decoded_image_cache_is_reused_and_a_damaged_file_is_decoded_again(tmp_path, caplog):
    import numpy as np

    _, first = _decoded(tmp_path)
    path = first.images.filename
    before = np.array(first.images)
    _, again = _decoded(tmp_path)
    assert again.images.filename == path
    with open(path, "r+b") as f:  # a killed copy: the file stops halfway
        f.truncate(len(before.tobytes()) // 2)
    _, repaired = _decoded(tmp_path)
    assert "decoding again" in caplog.text
    np.testing.assert_array_equal(np.array(repaired.images), before)


def test_decoded_dataset_answers_slices_with_columns(tmp_path):
    import torch

    _, decoded = _decoded(tmp_path, rows=[5, 9, 1, 30])
    batch = decoded[1:3]
    assert batch["row_ids"] == [9, 1] and batch["pixel_values"].shape == (2, 3, 32, 32)
    torch.testing.assert_close(batch["pixel_values"][1], decoded[2]["pixel_values"], rtol=0, atol=0)
    assert decoded[[3]]["row_ids"] == [30]


def test_decoded_dataset_gives_workers_the_epoch_set_in_the_main_process(tmp_path):
    import torch

    from hf_ifbeta.data import DistillationCollator

    _, decoded = _decoded(tmp_path)
    loader = torch.utils.data.DataLoader(
        decoded, batch_size=8, num_workers=2, persistent_workers=True, collate_fn=DistillationCollator()
    )
    for epoch in (1, 4):  # persistent workers: the epoch reaches them through shared memory, not a copy
        decoded.set_epoch(epoch)
        batches = list(loader)
        assert all(batch["epoch"].eq(epoch).all() for batch in batches)
        expected = DistillationCollator()(decoded.__getitems__(list(range(8))))
        torch.testing.assert_close(batches[0]["pixel_values"], expected["pixel_values"], rtol=0, atol=0)
