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


def test_product_policy_reads_the_seed_and_ratio_and_is_uniform_after_a_fallback(tmp_path):
    path = tmp_path / "landscape.json"
    by_seed = {"0.7": {"0": {"a": 1.8, "b": 0.6, "fell_back_to_uniform": False},
                       "1": {"a": 3.0, "b": 0.4, "fell_back_to_uniform": True}}}  # fmt: skip
    path.write_text(json.dumps({"product": {"run": {"by_seed": by_seed}}}))
    assert landscape.product_policy("run", 0.7, 0, path) == (1.8, 0.6)
    assert landscape.product_policy("run", 0.7, 1, path) == (1.0, 1.0)  # what the pruner would have used
    with pytest.raises(KeyError, match="did not learn ratio 0.3, seed 0"):
        landscape.product_policy("run", 0.3, 0, path)
    with pytest.raises(KeyError, match=r"No --product run 'other'.*\['run'\]"):
        landscape.product_policy("other", 0.7, 0, path)
