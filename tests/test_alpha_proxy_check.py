"""benchmarks/alpha_proxy_check.py: the proxy head's label loss on V after a fit at each KD weight alpha."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location(
    "alpha_proxy_check", Path(__file__).resolve().parents[1] / "benchmarks" / "alpha_proxy_check.py"
)
alpha_proxy_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(alpha_proxy_check)


def synthetic(n=600, d=6, C=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % C
    features = rng.normal(size=(n, d)).astype(np.float32)
    features[np.arange(n), labels] += 3.0  # each class shifts its own coordinate
    logits = np.zeros((n, C), dtype=np.float32)
    logits[np.arange(n), labels] = 4.0
    return features, logits, labels


def test_the_subsets_keep_the_share_of_every_class_from_the_pool_only():
    labels = np.repeat([0, 1, 2], [100, 60, 40])
    pool = np.arange(20, 200)
    size = alpha_proxy_check.num_kept(len(pool), 0.5)
    kept = alpha_proxy_check.stratified_subsample(pool, labels, size, np.random.default_rng(0))
    assert np.isin(kept, pool).all() and len(np.unique(kept)) == len(kept)
    assert np.bincount(labels[kept]).tolist() == [40, 30, 20]


def test_head_on_val_learns_the_classes_and_its_loss_depends_on_alpha():
    features, logits, labels = synthetic()
    kept, val = np.arange(0, 450), np.arange(450, 600)
    ce_hard, err_hard = alpha_proxy_check.head_on_val(features, logits, labels, kept, val, alpha=0.0)
    ce_soft, err_soft = alpha_proxy_check.head_on_val(features, logits, labels, kept, val, alpha=1.0)
    assert err_hard < 10 and err_soft < 10  # chance is 67 %
    # soft targets at tau 4 from logits 4 apart are far from one-hot: the head fitted to them is less sure
    assert ce_soft > ce_hard + 0.05


def test_main_writes_every_cell(tmp_path, monkeypatch):
    features, logits, labels = synthetic(n=6000)
    stages = tmp_path / "stages.npz"
    np.savez(stages, labels=labels, logits=logits, layer3=features, layer2_2x2=features[:, :4])
    monkeypatch.setattr(alpha_proxy_check, "STAGES", stages)
    monkeypatch.setattr(alpha_proxy_check.kd_sweep, "RESULTS", tmp_path)
    alpha_proxy_check.main(["--seeds", "1"])
    cells = json.loads((tmp_path / "alpha_proxy_check_cpu.json").read_text())["cells"]
    assert len(cells) == 2 * 3 * 4
    assert {c["kept"] for c in cells if c["ratio"] == 0.7} == {300}  # 30 % of the 1,000 rows outside V


def test_a_missing_stage_file_names_the_script_that_builds_it(tmp_path, monkeypatch):
    monkeypatch.setattr(alpha_proxy_check, "STAGES", tmp_path / "nope.npz")
    with pytest.raises(SystemExit, match="stage_features.py"):
        alpha_proxy_check.main([])
