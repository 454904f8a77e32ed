"""benchmarks/subset_overlap.py: the share of one method's kept rows that another keeps."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location(
    "subset_overlap", Path(__file__).resolve().parents[1] / "benchmarks" / "subset_overlap.py"
)
subset_overlap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(subset_overlap)


class FakePruning:
    def select(self, method, ratio, seed):
        keep = int(100 * (1 - ratio))
        start = 0 if method == "base" else 10 + seed  # the method's rows shifted by 10 + seed
        return np.arange(start, start + keep), {}, {}


def test_share_of_the_base_rows_kept_per_ratio_and_seed():
    out = subset_overlap.overlaps(FakePruning(), "other", "base", [(0.5, 0), (0.7, 1)])
    assert out["0.5|0"]["kept"] == 50 and out["0.5|0"]["shared"] == pytest.approx(40 / 50)
    assert out["0.7|1"]["shared"] == pytest.approx(19 / 30)
    assert subset_overlap.overlaps(FakePruning(), "base", "base", [(0.3, 2)])["0.3|2"]["shared"] == 1.0


def test_no_cells_of_the_method_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(subset_overlap.kd_sweep, "RESULTS", tmp_path)
    (tmp_path / "kd_sweep_cpu.jsonl").write_text("")
    with pytest.raises(SystemExit, match="No CIFAR-10 cells of 'nope'"):
        subset_overlap.main(["--method", "nope"])
