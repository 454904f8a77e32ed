"""benchmarks/bench_solvers.py: the per-class keep that compares the two solvers' scores."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
spec = importlib.util.spec_from_file_location("bench_solvers", BENCHMARKS / "bench_solvers.py")
bench_solvers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_solvers)


def test_top_per_class_keeps_each_class_share_of_its_highest_scores():
    labels = np.array([0] * 10 + [1] * 4)
    scores = np.concatenate([np.arange(10.0), [5.0, 7.0, 6.0, 1.0]])
    kept = bench_solvers.top_per_class(scores, labels, 0.3)
    assert sorted(kept.tolist()) == [7, 8, 9, 11]  # 3 of class 0 (scores 9, 8, 7), 1 of class 1 (score 7)


def test_the_table_reads_the_stored_records():
    record = {
        "setting": "cifar10", "rows": 20000, "num_params": 650, "exact_over_kfac": 2.5, "spearman": 0.99999,
        "kept_overlap": 0.998, "solvers": {"exact": {"total_s": 10.0}, "kfac": {"total_s": 4.0, "cg_iterations": 33}},
    }  # fmt: skip
    row = bench_solvers.table({"cifar10|20000": record}).splitlines()[-1]
    assert row == "| cifar10 | 20,000 | 650 | 10.0 | 4.0 (33) | 2.50 | 0.999990 | 99.8000% |"
