import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import timm
import torch

import hf_ifbeta  # noqa: F401
from hf_ifbeta import DatasetPruner, PrunerConfig, PruningResult
from hf_ifbeta.pruner import resolve_device, validation_split

from factories import tiny_image_dataset

REPO = Path(__file__).resolve().parents[1]


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


def test_the_stage_coverage_view_reaches_the_policy_learner(make_pruner, tiny_ds, monkeypatch):
    from hf_ifbeta import policy_scale

    seen = []
    learn = policy_scale.learn_beta_policy

    def spy(*args, coverage=None, **kwargs):
        seen.append((np.array(coverage) if coverage is not None else None, kwargs["policy_args"]))
        return learn(*args, coverage=coverage, **kwargs)

    monkeypatch.setattr(policy_scale, "learn_beta_policy", spy)
    pruner = make_pruner(
        method="if-beta", policy_objective="kd+coverage", policy_coverage_view="stage", outer_steps=2, inner_epochs=1.0
    )  # fmt: skip
    pruned = pruner.prune(tiny_ds, ratio=0.5)
    outputs = pruner.last_result._teacher_outputs()
    (coverage, args), = seen
    assert coverage.shape == (len(tiny_ds), 4 * 32)  # cifar10_resnet20's layer2: 32 channels, pooled to 2 x 2
    np.testing.assert_array_equal(coverage, outputs.coverage)
    assert args.objective == "kd+coverage" and args.coverage_view == "stage"
    assert len(pruned) == 60 and len(pruner.last_result.policy["history"]) == 2
    default = make_pruner(method="if-beta", outer_steps=2, inner_epochs=1.0)
    default.prune(tiny_ds, ratio=0.5)
    assert seen[1][0] is None and default.last_result._teacher_outputs().coverage is None
    assert default.last_result.provenance["teacher_outputs_dir"] != pruner.last_result.provenance["teacher_outputs_dir"]


def test_same_seed_same_rows_other_seed_other_rows(make_pruner, tiny_ds):
    result = make_pruner(method="random").score(tiny_ds)
    a = result.select_indices(0.5, seed=1).copy()
    assert np.array_equal(a, result.select_indices(0.5, seed=1))
    assert not np.array_equal(a, result.select_indices(0.5, seed=2))


def test_the_provenance_names_no_hub_source_it_cannot_know(make_pruner, tiny_ds):
    import datasets

    # what `datasets` records for load_dataset("MyOrg/MyData"): the repo's name, snake-cased, no namespace
    info = datasets.DatasetInfo(dataset_name="my_data", builder_name="parquet", config_name="default")
    named = datasets.Dataset(tiny_ds.data, info=info, fingerprint=tiny_ds._fingerprint)
    prov = make_pruner(method="random").score(named).provenance
    assert prov["dataset_name"] is None and prov["dataset_info_name"] == "my_data" and prov["dataset_config"] == "default"


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


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5, "0.3", 0.999])  # 0.999 keeps none of the rows
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
    with pytest.raises(ValueError, match="Unknown pruning method: 'kmeans'. Choose between") as err:
        DatasetPruner("no-such-teacher", method="kmeans")  # checked before the teacher is loaded
    assert "'if-beta'" in str(err.value) and "'moderate'" in str(err.value)
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


def test_one_device_rule():
    state = type("State", (), {"device": torch.device("cpu")})()
    assert resolve_device("cpu", state) == torch.device("cpu")
    assert resolve_device(None, state) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device() == torch.device(expected)


def test_every_stage_runs_on_the_resolved_device(make_pruner, tiny_ds, monkeypatch, tmp_path):
    """On a CUDA machine (faked: each stage records the device it is handed, then runs on the CPU) the teacher pass,
    influence and policy all get CUDA, and so does the policy of a result loaded from disk."""
    import hf_ifbeta.influence
    import hf_ifbeta.pruner
    import hf_ifbeta.scorers

    seen = []

    def spy(stage, function):
        def run(*args, **kwargs):
            if "args" in kwargs:  # influence_scores: the device travels in its InfluenceArguments
                seen.append((stage, str(kwargs["args"].device)))
                return function(*args, **{**kwargs, "args": dataclasses.replace(kwargs["args"], device="cpu")})
            seen.append((stage, str(kwargs.get("device"))))
            return function(*args, **{**kwargs, "device": "cpu"})

        return run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hf_ifbeta.pruner, "compute_teacher_outputs", spy("teacher pass", hf_ifbeta.pruner.compute_teacher_outputs))
    monkeypatch.setattr(hf_ifbeta.influence, "influence_scores", spy("influence", hf_ifbeta.influence.influence_scores))
    policy = hf_ifbeta.scorers.learn_beta_policy_at_scale
    monkeypatch.setattr(hf_ifbeta.scorers, "learn_beta_policy_at_scale", spy("policy", policy))
    pruner = make_pruner(method="if-beta")
    pruner.prune(tiny_ds, ratio=0.5)
    assert seen == [("teacher pass", "cuda"), ("influence", "cuda"), ("policy", "cuda")]
    assert pruner.last_result.provenance["device"] == "cuda"

    pruner.last_result.save(tmp_path / "result")
    seen.clear()
    PruningResult.load(tmp_path / "result").select_indices(0.3)
    assert seen == [("policy", "cuda")]
    assert make_pruner(device="cpu").device == torch.device("cpu")  # an explicit device wins


def test_teacher_pass_workers_follow_the_cpu_count(make_pruner, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    pruner = make_pruner(batch_size=10)
    assert pruner.config.num_workers is None
    assert pruner._num_workers(10_000) == 8  # 15 free cores, capped at 8
    assert pruner._num_workers(25) == 3  # no more workers than batches
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 processes on this node share the cores
    assert pruner._num_workers(10_000) == 3
    assert make_pruner(num_workers=0).config.num_workers == 0


@pytest.mark.slow
def test_two_processes_keep_the_same_rows(tmp_path):
    """Process 1's scores are reversed before it selects again: alone it would keep other rows; synchronised, both
    processes keep the main process's rows and policy, from the pruner's result and from a loaded one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "tests" / "scripts" / "prune_2proc.py"), "--out", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert first["world_size"] == second["world_size"] == 2
    assert torch.device(first["device"]).type == torch.device(second["device"]).type == "cpu"
    for key in ("pruned_row_ids", "prune", "policy", "reselect", "loaded", "loaded_policy"):
        assert first[key] == second[key], key
    assert len(first["reselect"]) == 60 and first["reselect"] == first["prune"]
    assert second["alone"] != second["reselect"]  # without the broadcast the ranks would disagree


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
