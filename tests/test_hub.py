"""Hub sharing, offline: the folders a push would upload are written, loaded back and checked; the
upload calls are exercised up to the network with `HfApi` replaced by a recorder."""

import json
import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import hf_ifbeta  # noqa: F401
from hf_ifbeta import DatasetPruner, load_pruned_dataset
from hf_ifbeta import hub as hub_mod
from hf_ifbeta.hub import push_pruning_result, push_student, save_pruning_result_for_hub, save_student_for_hub
from hf_ifbeta.result import load_pruning_result

from factories import tiny_image_dataset


@pytest.fixture(scope="module")
def tiny_ds():
    return tiny_image_dataset(n=60)


@pytest.fixture(scope="module")
def result(tiny_ds, tmp_path_factory):
    torch.manual_seed(0)
    teacher = timm.create_model("cifar10_resnet20", num_classes=4, pretrained_cfg_overlay=dict(input_size=(3, 16, 16)))
    pruner = DatasetPruner(teacher, method="el2n", cache_dir=str(tmp_path_factory.mktemp("cache")))
    res = pruner.score(tiny_ds)
    res.select_indices(0.5, seed=3)
    return res


class RecordingApi:
    """Stands in for `huggingface_hub.HfApi`: records what would be uploaded, touches no network."""

    calls = []

    def __init__(self, token=None, **kwargs):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        RecordingApi.calls.append(("create_repo", repo_id, kwargs))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def create_branch(self, repo_id, branch, **kwargs):
        RecordingApi.calls.append(("create_branch", repo_id, {"branch": branch, **kwargs}))

    def upload_folder(self, repo_id, folder_path, **kwargs):
        files = sorted(p.name for p in __import__("pathlib").Path(folder_path).rglob("*") if p.is_file())
        readme = (__import__("pathlib").Path(folder_path) / "README.md").read_text()
        RecordingApi.calls.append(("upload_folder", repo_id, {**kwargs, "files": files, "readme": readme}))
        return "commit-info"


def test_light_subset_folder_loads_back_into_the_kept_rows(result, tiny_ds, tmp_path):
    folder = save_pruning_result_for_hub(result, tmp_path / "subset", source_dataset="me/tiny", source_revision="abc123")
    card = (folder / "README.md").read_text()
    assert "me/tiny" in card and "abc123" in card and "el2n" in card and "source_datasets" in card
    assert json.loads((folder / "source.json").read_text())["revision"] == "abc123"
    subset = load_pruned_dataset(folder, dataset=tiny_ds)
    assert subset["row_id"] == tiny_ds.select(result.indices)["row_id"]
    loaded = load_pruning_result(folder)
    assert np.array_equal(loaded.indices, result.indices) and loaded.seed == 3


def test_materialised_subset_loads_without_the_source(result, tiny_ds, tmp_path):
    folder = save_pruning_result_for_hub(result, tmp_path / "subset", dataset=tiny_ds, materialize=True)
    subset = load_pruned_dataset(folder)
    assert len(subset) == len(result.indices) == 30
    assert subset["row_id"] == tiny_ds.select(result.indices)["row_id"]


def test_loading_against_the_wrong_source_is_refused(result, tiny_ds, tmp_path):
    folder = save_pruning_result_for_hub(result, tmp_path / "subset")
    with pytest.raises(ValueError, match="60 rows"):
        load_pruned_dataset(folder, dataset=tiny_ds.select(range(50)))
    with pytest.raises(ValueError, match="pass dataset="):
        load_pruned_dataset(folder)  # scored on local data: no Hub source to fetch


def test_a_folder_shared_again_holds_only_the_latest_selection(result, tiny_ds, tmp_path):
    folder = tmp_path / "subset"
    result.select_indices(0.3)
    save_pruning_result_for_hub(result, folder, dataset=tiny_ds, materialize=True)
    assert len(load_pruned_dataset(folder)) == len(result.indices)
    result.select_indices(0.7)
    save_pruning_result_for_hub(result, folder, dataset=tiny_ds)
    assert not (folder / "data").exists()
    assert len(load_pruned_dataset(folder, dataset=tiny_ds)) == len(result.indices) == 18
    result.select_indices(0.5, seed=3)  # the module's selection, for the tests after this one


def test_push_subset_stops_at_the_network(result, monkeypatch):
    RecordingApi.calls = []
    monkeypatch.setattr(hub_mod, "HfApi", RecordingApi)
    assert result.push_to_hub("me/tiny-el2n-r0.5", source_dataset="me/tiny", private=True) == "commit-info"
    (create, repo, kwargs), (upload, repo2, up) = RecordingApi.calls
    assert create == "create_repo" and kwargs["repo_type"] == "dataset" and kwargs["private"] is True
    assert upload == "upload_folder" and repo2 == "me/tiny-el2n-r0.5" and up["repo_type"] == "dataset"
    assert {"README.md", "indices.npy", "scores.npy", "pruning_result.json", "source.json"} <= set(up["files"])
    assert "data/*" in up["delete_patterns"]  # an earlier selection's rows in the repo go
    RecordingApi.calls = []
    result.push_to_hub("me/tiny-el2n-r0.5", source_dataset="me/tiny", revision="r0.5")
    assert [c[0] for c in RecordingApi.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert RecordingApi.calls[1][2] == {"branch": "r0.5", "repo_type": "dataset", "exist_ok": True}
    assert RecordingApi.calls[2][2]["revision"] == "r0.5"


def test_card_embeds_the_policy_plot_and_the_class_grid(result, tiny_ds, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    folder = save_pruning_result_for_hub(result, tmp_path / "subset", dataset=tiny_ds)
    card = (folder / "README.md").read_text()
    embedded = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card)
    assert {"figures/policy.png", "figures/class_grid.png"} <= set(embedded)
    for relative in embedded:  # every picture the card shows is a file of the repo folder
        assert Image.open(folder / relative).size[0] > 300
    # The grid has a row per class: taller with the 4 classes of the rows than one strip of thumbnails.
    assert Image.open(folder / "figures/class_grid.png").size[1] > 4 * 64
    RecordingApi.calls = []
    monkeypatch.setattr(hub_mod, "HfApi", RecordingApi)
    result.push_to_hub("me/tiny-el2n-r0.5", dataset=tiny_ds)
    uploaded = RecordingApi.calls[1][2]
    assert {"policy.png", "class_grid.png"} <= set(uploaded["files"]) and "figures/class_grid.png" in uploaded["readme"]


def test_card_says_when_the_policy_sits_on_its_box(result, tmp_path, monkeypatch):
    monkeypatch.setattr(result, "policy", {"a": 2.0, "b": 0.5, "on_bound": True, "info": {"box": [0.5, 2.0]}})
    card = (save_pruning_result_for_hub(result, tmp_path / "on") / "README.md").read_text()
    assert "Beta(a=2.000, b=0.500)" in card and "on the bound of its search box [0.5, 2]" in card
    monkeypatch.setattr(result, "policy", {"a": 2.7, "b": 0.4, "on_bound": False, "info": {"box": [0.0625, 16.0]}})
    card = (save_pruning_result_for_hub(result, tmp_path / "off") / "README.md").read_text()
    assert "Beta(a=2.700, b=0.400)" in card and "search box" not in card


def test_card_without_the_rows_has_the_policy_plot_only(result, tmp_path):
    pytest.importorskip("matplotlib")
    folder = save_pruning_result_for_hub(result, tmp_path / "subset")
    embedded = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (folder / "README.md").read_text())
    assert "figures/policy.png" in embedded and "figures/class_grid.png" not in embedded
    assert all((folder / relative).exists() for relative in embedded)


def test_push_happens_on_the_main_process_only(result, monkeypatch):
    RecordingApi.calls = []
    monkeypatch.setattr(hub_mod, "HfApi", RecordingApi)
    monkeypatch.setattr(hub_mod, "_is_main_process", lambda: False)
    assert push_pruning_result(result, "me/x") is None
    assert push_student(torch.nn.Linear(2, 2), "me/y") is None
    assert RecordingApi.calls == []


def test_student_folder_loads_back_with_timm(tmp_path, monkeypatch):
    torch.manual_seed(0)
    student = timm.create_model("cifar10_resnet20")
    folder = save_student_for_hub(
        student, tmp_path / "student", teacher="cifar10_resnet56", subset="me/cifar10-ifbeta-r0.3",
        kd_settings={"alpha": 0.9, "temperature": 4.0}, metrics={"accuracy": 0.8}, dataset="uoft-cs/cifar10",
    )
    card = (folder / "README.md").read_text()
    assert "cifar10_resnet56" in card and "me/cifar10-ifbeta-r0.3" in card and "temperature" in card
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded(x), student.eval()(x), atol=1e-6)
    RecordingApi.calls = []
    monkeypatch.setattr(hub_mod, "HfApi", RecordingApi)
    push_student(student, "me/resnet20-kd", teacher="cifar10_resnet56")
    assert {"README.md", "config.json", "model.safetensors"} <= set(RecordingApi.calls[1][2]["files"])
