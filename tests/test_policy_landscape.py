"""benchmarks/policy_landscape.py: the objectives' mix and the entropy tie-break on a saved grid."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location(
    "policy_landscape", Path(__file__).resolve().parents[1] / "benchmarks" / "policy_landscape.py"
)
landscape = importlib.util.module_from_spec(spec)
spec.loader.exec_module(landscape)


def test_tie_break_picks_the_most_uniform_policy_on_a_flat_ridge():
    grid = {f"{a:g},{b:g}": 1.0 for a, b in landscape.GRID2}
    grid["8,0.25"] = grid["16,0.25"] = 0.9999  # a ridge the objective can hardly tell apart
    assert landscape.tie_break_argmin(grid, 0.0) in ((8.0, 0.25), (16.0, 0.25))
    # a small entropy bonus decides within the ridge, but does not outweigh a real 1e-4 gain over uniform
    assert landscape.tie_break_argmin(grid, 1e-6) == (8.0, 0.25)
    assert landscape.tie_break_argmin(grid, 1.0) == (1.0, 1.0)


class _Quadratic:
    """An objective with its minimum at (log a, log b) = centre."""

    def __init__(self, centre):
        self.centre = np.asarray(centre, dtype=float)

    def loss(self, log_ab):
        return float(1.0 + np.sum((np.asarray(log_ab) - self.centre) ** 2))

    def hypergradient(self, log_ab):
        return self.loss(log_ab), 2.0 * (np.asarray(log_ab) - self.centre)


def test_learn_finds_an_inside_optimum_and_reports_a_bound():
    inside, outside = _Quadratic(np.log([2.0, 0.5])), _Quadratic(np.log([100.0, 0.01]))
    learned = landscape.learn(inside, steps=200, lr=0.1)
    assert learned["a"] == pytest.approx(2.0, rel=0.05) and learned["b"] == pytest.approx(0.5, rel=0.05)
    assert not learned["on_bound"]
    clipped = landscape.learn(outside, steps=200, lr=0.1)
    assert clipped["on_bound"] and clipped["a"] == pytest.approx(16.0) and clipped["b"] == pytest.approx(0.25)


def test_run_knn_grids_each_objective_on_hard_subsets_and_saves_per_ratio(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    n, c = 1200, 3
    labels = np.arange(n) % c
    features = rng.standard_normal((n, 8)).astype(np.float32) + 3.0 * np.eye(c, 8, dtype=np.float32)[labels]
    inputs = {"features": features, "logits": features[:, :c] * 2.0, "labels": labels,
              "val_indices": np.sort(rng.choice(n, 120, replace=False))}  # fmt: skip
    monkeypatch.setattr(landscape, "load_stages", lambda inputs: {"layer2_2x2": rng.standard_normal((n, 16))})
    path = tmp_path / "landscape.json"
    path.write_text('{"product": {"kept": true}}')
    u = (np.arange(n) % 400 + 0.5) / 400
    landscape.run_knn(inputs, u, path, epochs=2)
    saved = json.loads(path.read_text())
    assert saved["product"] == {"kept": True}  # the other runs' entries stay
    for ratio in landscape.RATIOS:
        row = saved["knn"][str(ratio)]
        assert set(row) == {"knn_train", "knn_train_2x2", "default", *landscape.KNN_MIXES}
        for mix in landscape.KNN_MIXES:
            assert row[mix]["grid"]["1,1"] == pytest.approx(1.0)  # each term relative to the uniform policy
        for entry in row.values():
            assert len(entry["grid"]) == len(landscape.GRID2)
            assert entry["grid"][",".join(f"{x:g}" for x in entry["grid_argmin"])] == min(entry["grid"].values())
