"""Tests of `hf_ifbeta.selection`: ratios, class budgets, stratified subsamples and top-k / Gumbel-top-k picks."""

import numpy as np
import pytest

from hf_ifbeta.selection import (
    check_ratio,
    class_budgets,
    class_rows,
    gumbel_top_k,
    num_kept,
    select_per_class,
    stratified_subsample,
    top_k,
)


def unbalanced_labels(n=300, seed=0):
    """Five classes of very different sizes (one absent id), shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.choice([0, 1, 2, 4, 5], size=n, p=[0.5, 0.25, 0.15, 0.07, 0.03])
    return labels.astype(np.int64)


# --------------------------------------------------------------------------- ratios
@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5, float("nan"), "0.5", True, None])
def test_bad_ratio_names_the_argument(ratio):
    with pytest.raises(ValueError, match=r"^ratio must be .*\(the fraction of rows to remove\)"):
        check_ratio(ratio)
    with pytest.raises(ValueError, match="^ratio must be"):
        num_kept(10, ratio)


def test_num_kept_rounds_and_refuses_an_empty_selection():
    assert check_ratio(np.float32(0.25)) == pytest.approx(0.25) and isinstance(check_ratio(np.float32(0.25)), float)
    assert [num_kept(10, r) for r in (0.3, 0.35, 0.5, 0.9)] == [round(0.7 * 10), round(0.65 * 10), 5, 1]
    with pytest.raises(ValueError, match="ratio=0.96 keeps 0 of 10 rows"):
        num_kept(10, 0.96)


# --------------------------------------------------------------------------- class budgets and rows
@pytest.mark.parametrize("n,m", [(10, 0), (10, 10), (37, 5), (1000, 333), (7, 6)])
def test_class_budgets_sum_exactly_and_stay_proportional(n, m):
    rng = np.random.default_rng(n + m)
    labels = rng.integers(0, 5, n)
    counts = np.bincount(labels, minlength=5)
    budgets = class_budgets(labels, m)
    assert budgets.sum() == m
    assert np.all(budgets <= counts[: len(budgets)]) and np.all(budgets >= 0)
    assert np.all(np.abs(budgets - m * counts[: len(budgets)] / n) < 1.0)


def test_class_budgets_largest_remainder():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 2)  # quotas at m = 5: 2.5, 1.5, 1.0
    np.testing.assert_array_equal(class_budgets(labels, 5), [3, 1, 1])  # tie 0.5 / 0.5: lower class id first
    np.testing.assert_array_equal(class_budgets(labels, 7), [4, 2, 1])  # 3.5, 2.1, 1.4
    with pytest.raises(ValueError, match="m must be"):
        class_budgets(labels, 11)
    with pytest.raises(ValueError, match="m must be"):
        class_budgets(labels, 2.5)


@pytest.mark.parametrize("m", [0, 1, 17, 150, 299, 300])
def test_class_budgets_respect_class_sizes_on_unbalanced_classes(m):
    labels = unbalanced_labels()
    counts = np.bincount(labels)
    budgets = class_budgets(labels, m)
    assert budgets.sum() == m and np.all((0 <= budgets) & (budgets <= counts))
    assert budgets[3] == 0  # an absent class id gets nothing


def test_class_rows_lists_each_class_in_row_order():
    labels = np.array([2, 0, 2, 2, 0, 4])
    rows = class_rows(labels)
    assert [r.tolist() for r in rows] == [[1, 4], [], [0, 2, 3], [], [5]]


# --------------------------------------------------------------------------- stratified subsamples
@pytest.mark.parametrize("size", [1, 40, 123, 199])
def test_stratified_subsample_keeps_class_shares(size):
    labels = unbalanced_labels()
    rows = np.flatnonzero(np.arange(len(labels)) % 3 != 0)  # a subset of the rows, as the non-validation rows
    sub = stratified_subsample(rows, labels, size, np.random.default_rng(size))
    assert len(sub) == size and np.all(np.diff(sub) > 0) and np.isin(sub, rows).all()
    expected = class_budgets(labels[rows], size)
    np.testing.assert_array_equal(np.bincount(labels[sub], minlength=len(expected)), expected)
    again = stratified_subsample(rows, labels, size, np.random.default_rng(size))
    np.testing.assert_array_equal(sub, again)


def test_stratified_subsample_of_none_or_more_is_all_rows():
    labels = unbalanced_labels()
    rows = np.arange(0, 300, 2)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert stratified_subsample(rows, labels, None, rng) is rows
    assert stratified_subsample(rows, labels, len(rows), rng) is rows
    assert rng.bit_generator.state == state  # nothing drawn


# --------------------------------------------------------------------------- picks
def test_top_k_keeps_the_largest_keys_per_class_ties_to_the_lower_row():
    labels = np.array([0, 0, 0, 1, 1, 2])
    keys = np.array([3.0, 1.0, 3.0, 0.0, 5.0, 4.0])
    assert select_per_class(labels, 3, True, top_k(keys)).tolist() == [0, 2, 4]
    assert select_per_class(labels, 2, False, top_k(keys)).tolist() == [4, 5]
    assert select_per_class(labels, 1, False, top_k(np.zeros(6))).tolist() == [0]


def test_select_per_class_checks_what_the_pick_returns():
    labels = np.array([0, 0, 1, 1])
    with pytest.raises(RuntimeError, match="kept 4 rows .* expected 2"):
        select_per_class(labels, 2, True, lambda rows, k: rows)
    with pytest.raises(RuntimeError, match="kept 2 rows \\(1 unique\\)"):
        select_per_class(labels, 2, False, lambda rows, k: rows[:1].repeat(k))


def reference_gumbel_top_k(log_w, labels, m, stratify, seed, draw):
    """Gumbel-top-k written from its definition, one group and one row at a time."""
    rng = np.random.default_rng(seed)
    n = len(log_w)
    noise = rng.gumbel(size=n) if draw == "rows" else np.full(n, np.nan)
    groups = [(np.arange(n), m)]
    if stratify:
        budgets = class_budgets(labels, m)
        groups = [(np.flatnonzero(labels == c), budgets[c]) for c in range(len(budgets)) if budgets[c] > 0]
    kept = []
    for rows, k in groups:
        if draw == "groups":
            noise[rows] = rng.gumbel(size=len(rows))
        keyed = sorted(rows, key=lambda i: (-(log_w[i] + noise[i]), i))
        kept += keyed[:k]
    return np.sort(np.array(kept, dtype=np.int64))


@pytest.mark.parametrize("draw", ["rows", "groups"])
@pytest.mark.parametrize("stratify", [True, False])
@pytest.mark.parametrize("seed", [0, 7])
def test_gumbel_top_k_with_a_seed_equals_the_reference(draw, stratify, seed):
    labels = unbalanced_labels(n=200, seed=seed)
    log_w = np.random.default_rng(100 + seed).normal(size=200) * 2.0
    kept = select_per_class(labels, 83, stratify, gumbel_top_k(log_w, np.random.default_rng(seed), draw=draw))
    np.testing.assert_array_equal(kept, reference_gumbel_top_k(log_w, labels, 83, stratify, seed, draw))


def test_gumbel_top_k_draws_in_proportion_to_the_weights():
    weights = np.array([1.0, 2.0, 3.0, 4.0])
    rng = np.random.default_rng(0)
    first = [gumbel_top_k(np.log(weights), rng, draw="rows")(np.arange(4), 1)[0] for _ in range(20_000)]
    share = np.bincount(first, minlength=4) / len(first)
    p = weights / weights.sum()
    assert np.all(np.abs(share - p) < 4 * np.sqrt(p * (1 - p) / len(first)))  # 4 standard errors
    with pytest.raises(ValueError, match="Unknown Gumbel draw order: 'cols'. Choose between"):
        gumbel_top_k(np.log(weights), rng, draw="cols")
