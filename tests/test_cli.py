"""`hf-ifbeta-prune` on a tiny local parquet dataset with a local teacher checkpoint."""

import json

import numpy as np
import pytest
import timm
import torch

import hf_ifbeta  # noqa: F401
from hf_ifbeta.cli import prune_main
from hf_ifbeta.pruner import PruningResult

from factories import tiny_image_dataset


@pytest.fixture(scope="module")
def parquet_and_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ds = tiny_image_dataset(n=80, num_classes=10, size=32)
    ds.to_parquet(str(root / "train.parquet"))
    torch.manual_seed(0)
    torch.save({"state_dict": timm.create_model("cifar10_resnet20").state_dict()}, root / "teacher.pt")
    return root


def test_one_scoring_pass_several_ratios(parquet_and_checkpoint, tmp_path, monkeypatch):
    root = parquet_and_checkpoint
    out = tmp_path / "pruned"
    calls = []
    original = hf_ifbeta.pruner.DatasetPruner.teacher_outputs
    monkeypatch.setattr(hf_ifbeta.pruner.DatasetPruner, "teacher_outputs", lambda self, ds: calls.append(1) or original(self, ds))
    prune_main([
        "--teacher", "cifar10_resnet20", "--teacher_checkpoint", str(root / "teacher.pt"),
        "--dataset", "parquet", "--data_files", str(root / "train.parquet"), "--image_column", "image",
        "--method", "el2n", "--ratio", "0.25", "0.5", "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
        "--no_plot",
    ])
    assert calls == [1]  # one teacher pass for both ratios
    summary = json.loads((out / "summary.json").read_text())
    assert [s["kept"] for s in summary] == [60, 40]
    result = PruningResult.load(out / "el2n-r0.5")
    assert len(result.indices) == 40 and result.ratio == 0.5 and result.method == "el2n"
    assert result.provenance["dataset_name"] is None  # local files: no Hub source to name
    assert np.array_equal(np.sort(result.indices), result.indices)


def test_report_flag_writes_the_page_next_to_each_result(parquet_and_checkpoint, tmp_path):
    pytest.importorskip("matplotlib")
    root = parquet_and_checkpoint
    out = tmp_path / "pruned"
    prune_main([
        "--teacher", "cifar10_resnet20", "--teacher_checkpoint", str(root / "teacher.pt"),
        "--dataset", "parquet", "--data_files", str(root / "train.parquet"), "--image_column", "image",
        "--method", "el2n", "--ratio", "0.5", "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
        "--no_plot", "--report",
    ])
    (summary,) = json.loads((out / "summary.json").read_text())
    page = out / "el2n-r0.5" / "report.html"
    assert summary["report"] == str(page)
    html = page.read_text()
    result = PruningResult.load(out / "el2n-r0.5")
    for c in np.unique(result.labels):  # every class of the scored rows has its section
        assert f'id="class-{c}"' in html
    assert f"<b>{len(result.indices)}</b> of {result.num_rows} rows" in html
    assert {p.name for p in (out / "el2n-r0.5").glob("*.png")} == {"policy.png", "class_kept.png", "class_grid.png"}


def test_report_column_missing_fails_before_the_teacher_pass(parquet_and_checkpoint, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    root = parquet_and_checkpoint
    monkeypatch.setattr(hf_ifbeta.pruner.DatasetPruner, "teacher_outputs", lambda self, ds: pytest.fail("teacher pass started"))
    with pytest.raises(SystemExit):
        prune_main([
            "--teacher", "cifar10_resnet20", "--teacher_checkpoint", str(root / "teacher.pt"), "--dataset", "parquet",
            "--data_files", str(root / "train.parquet"), "--image_column", "image", "--report",
            "--noisy_column", "is_noisy", "--output_dir", str(tmp_path / "x"),
        ])
    assert "'is_noisy' is not a column" in capsys.readouterr().err


def test_bad_ratio_fails_before_the_teacher_pass(parquet_and_checkpoint, tmp_path, monkeypatch):
    root = parquet_and_checkpoint
    monkeypatch.setattr(hf_ifbeta.pruner.DatasetPruner, "teacher_outputs", lambda self, ds: pytest.fail("teacher pass started"))
    with pytest.raises(ValueError, match="ratio"):
        prune_main([
            "--teacher", "cifar10_resnet20", "--teacher_checkpoint", str(root / "teacher.pt"), "--dataset", "parquet",
            "--data_files", str(root / "train.parquet"), "--ratio", "1.5", "--output_dir", str(tmp_path / "x"),
        ])


def test_several_ratios_pushed_to_one_repo_fail_before_the_teacher_pass(parquet_and_checkpoint, tmp_path, monkeypatch, capsys):
    root = parquet_and_checkpoint
    monkeypatch.setattr(hf_ifbeta.pruner.DatasetPruner, "teacher_outputs", lambda self, ds: pytest.fail("teacher pass started"))
    with pytest.raises(SystemExit):
        prune_main([
            "--teacher", "cifar10_resnet20", "--teacher_checkpoint", str(root / "teacher.pt"), "--dataset", "parquet",
            "--data_files", str(root / "train.parquet"), "--ratio", "0.3", "0.5", "--push_to_hub", "--repo_id", "me/subset",
            "--output_dir", str(tmp_path / "x"),
        ])
    assert "--repo_id 'me/subset' would get every ratio's subset in turn" in capsys.readouterr().err


def test_preset_sets_the_policy_fields_and_flags_given_win(parquet_and_checkpoint, tmp_path, monkeypatch, capsys):
    from hf_ifbeta.config import PRESETS

    root = parquet_and_checkpoint
    seen = []

    def stop(self, ds):
        seen.append(self.config)
        raise KeyboardInterrupt  # stop before the teacher pass: the config is what is checked

    monkeypatch.setattr(hf_ifbeta.pruner.DatasetPruner, "teacher_outputs", stop)
    common = ["--teacher", "cifar10_resnet20", "--teacher_checkpoint", str(root / "teacher.pt"), "--dataset", "parquet",
              "--data_files", str(root / "train.parquet"), "--output_dir", str(tmp_path / "x")]  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        prune_main([*common, "--preset", "stage-coverage", "--policy_max_ab", "8"])
    config = seen[-1]
    assert config.policy_max_ab == 8.0
    assert {k: getattr(config, k) for k in PRESETS["stage-coverage"] if k != "policy_max_ab"} == {
        k: v for k, v in PRESETS["stage-coverage"].items() if k != "policy_max_ab"
    }
    with pytest.raises(SystemExit):
        prune_main([*common, "--preset", "box3"])
    assert "Unknown preset 'box3'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prune_main([*common, "--preset", "box2", "--preset", "box2"])
    assert "--preset given 2 times" in capsys.readouterr().err
