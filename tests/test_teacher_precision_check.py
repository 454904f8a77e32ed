"""benchmarks/teacher_precision_check.py: how far two sets of teacher logits' soft labels are apart."""

import importlib.util
from pathlib import Path

import pytest
import torch

spec = importlib.util.spec_from_file_location(
    "teacher_precision_check", Path(__file__).resolve().parents[1] / "benchmarks" / "teacher_precision_check.py"
)
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def test_identical_logits_are_zero_apart_and_a_flipped_row_is_counted():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    same = check.compare(z, z.clone(), temperature=4.0)
    assert same["kl_mean"] == pytest.approx(0.0, abs=1e-7) and same["top1_agreement"] == 1.0
    other = z.clone()
    other[1] = torch.tensor([1.0, 0.0, 0.5])  # row 1's top class moves
    apart = check.compare(z, other, temperature=4.0)
    assert apart["top1_agreement"] == 0.5 and apart["kl_max"] > apart["kl_mean"] > 0
    assert apart["mean_abs_logit_gap"] == pytest.approx(2.0 / 6)
