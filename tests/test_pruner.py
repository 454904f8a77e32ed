import datasets
import numpy as np
import pytest
import timm
import torch

import hf_ifbeta  # noqa: F401
from hf_ifbeta import DatasetPruner, PrunerConfig, PruningResult
from hf_ifbeta.pruner import validation_split

from factories import tiny_image_dataset


@pytest.fixture(scope="module")
def tiny_ds():
    return tiny_image_dataset()


@pytest.fixture(scope="module")
def tiny_teacher():
    torch.manual_seed(0)
    return timm.create_model("cifar10_resnet20", num_classes=4, pretrained_cfg_overlay=dict(input_size=(3, 16, 16))).eval()


@pytest.fixture
def make_pruner(tiny_teacher, tmp_path):
    def make(**kwargs):
        kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
        kwargs.setdefault("batch_size", 64)
        kwargs.setdefault("policy_subsample", None)
        kwargs.setdefault("outer_steps", 3)
        return DatasetPruner(tiny_teacher, **kwargs)

    return make


@pytest.mark.parametrize("method", ["random", "el2n", "influence", "if-beta"])
def test_prune_keeps_every_column_and_the_exact_budget(make_pruner, tiny_ds, method):
    pruner = make_pruner(method=method)
    pruned = pruner.prune(tiny_ds, ratio=0.3)
    result = pruner.last_result
    assert len(pruned) == round(0.7 * len(tiny_ds)) == len(result.indices)
    assert pruned.column_names == tiny_ds.column_names
    assert pruned["row_id"] == tiny_ds.select(result.indices)["row_id"]
    assert len(result.scores) == len(tiny_ds)
    assert np.all(np.diff(result.indices) > 0)
    if method == "if-beta":
        assert result.policy["a"] > 0 and result.policy["b"] > 0


def test_score_once_select_at_several_ratios_without_a_second_teacher_pass(make_pruner, tiny_ds, monkeypatch):
    pruner = make_pruner(method="el2n")
    result = pruner.score(tiny_ds)
    calls = []
    monkeypatch.setattr(pruner.teacher, "forward", lambda *a, **k: calls.append(1))
    sizes = {ratio: len(result.select(tiny_ds, ratio)) for ratio in (0.1, 0.5, 0.9)}
    assert sizes == {0.1: 108, 0.5: 60, 0.9: 12}
    assert calls == []


def test_same_seed_same_rows_other_seed_other_rows(make_pruner, tiny_ds):
    result = make_pruner(method="random").score(tiny_ds)
    a = result.select_indices(0.5, seed=1).copy()
    assert np.array_equal(a, result.select_indices(0.5, seed=1))
    assert not np.array_equal(a, result.select_indices(0.5, seed=2))


def test_save_load_roundtrip_and_reselect(make_pruner, tiny_ds, tmp_path):
    result = make_pruner(method="el2n").score(tiny_ds)
    result.select_indices(0.4)
    result.save(tmp_path / "res")
    loaded = PruningResult.load(tmp_path / "res")
    assert np.array_equal(loaded.indices, result.indices)
    assert np.allclose(loaded.scores, result.scores, atol=1e-6)
    assert loaded.config == result.config and loaded.ratio == 0.4
    assert loaded.provenance["dataset_fingerprint"] == tiny_ds._fingerprint
    # scores travel with the result: selecting at another ratio needs no teacher
    assert len(loaded.select(tiny_ds, 0.75)) == 30


def test_plot_writes_a_figure(make_pruner, tiny_ds, tmp_path):
    pytest.importorskip("matplotlib")
    pruner = make_pruner(method="if-beta")
    pruner.prune(tiny_ds, ratio=0.5)
    pruner.last_result.plot(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_validation_split_is_stratified_and_from_training_rows():
    labels = np.repeat(np.arange(5), [100, 50, 20, 10, 2])
    val = validation_split(labels, 0.1, max_per_class=6, seed=0)
    counts = np.bincount(labels[val], minlength=5)
    assert counts.tolist() == [6, 5, 2, 1, 1]
    assert np.array_equal(val, validation_split(labels, 0.1, 6, seed=0))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5, "0.3"])
def test_ratio_outside_open_interval_fails_before_the_teacher_pass(make_pruner, tiny_ds, ratio, monkeypatch):
    pruner = make_pruner(method="random")
    monkeypatch.setattr(pruner, "teacher_outputs", lambda ds: pytest.fail("teacher pass started"))
    with pytest.raises(ValueError, match="ratio"):
        pruner.prune(tiny_ds, ratio=ratio)


def test_bad_input_is_named(make_pruner, tiny_ds):
    with pytest.raises(ValueError, match="empty"):
        make_pruner().prune(tiny_ds.select([]), ratio=0.3)
    with pytest.raises(ValueError, match="'nolabel'"):
        make_pruner(label_column="nolabel").prune(tiny_ds, ratio=0.3)
    with pytest.raises(ValueError, match="'pixels'"):
        make_pruner(image_column="pixels").prune(tiny_ds, ratio=0.3)
    with pytest.raises(ValueError, match="Choose between|valid"):
        PrunerConfig(method="kmeans")
    with pytest.raises(TypeError, match="ratioo"):
        make_pruner(ratioo=0.3)


def test_teacher_with_other_classes_is_refused(make_pruner, tiny_ds):
    ds = tiny_ds.cast_column("label", datasets.ClassLabel(num_classes=7))
    with pytest.raises(ValueError, match="4 classes but column 'label' has 7"):
        make_pruner().prune(ds, ratio=0.3)


def test_labels_outside_teacher_classes_name_the_row(make_pruner, tiny_ds):
    labels = list(tiny_ds["label"])
    labels[17] = 9
    ds = tiny_ds.cast_column("label", datasets.Value("int64")).remove_columns("label").add_column("label", labels)
    with pytest.raises(ValueError, match="Row 17"):
        make_pruner().prune(ds, ratio=0.3)


@pytest.mark.slow
def test_end_to_end_on_2000_cifar_rows(cifar_train_2k, teacher56, tmp_path):
    pruner = DatasetPruner(teacher56, image_column="img", cache_dir=str(tmp_path), outer_steps=5)
    pruned = pruner.prune(cifar_train_2k, ratio=0.3)
    result = pruner.last_result
    assert len(pruned) == 1400
    assert pruned.column_names == cifar_train_2k.column_names
    expected = cifar_train_2k.select(result.indices)
    assert pruned["label"] == expected["label"]
    assert pruned[5]["img"].tobytes() == expected[5]["img"].tobytes()
    counts = np.bincount(pruned["label"], minlength=10)
    full = np.bincount(cifar_train_2k["label"], minlength=10)
    assert np.all(np.abs(counts - 0.7 * full) <= 1)  # class proportions kept
    assert result.provenance["teacher"].startswith("cifar10_resnet56")
