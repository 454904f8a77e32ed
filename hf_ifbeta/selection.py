"""Choosing rows: ratio checks, per-class budgets, class rows, stratified subsamples and top-k / Gumbel-top-k picks.

Every pruning method and the Beta policy select through `select_per_class`: it splits the rows into classes with
budgets proportional to the class sizes (`class_budgets`), or takes all rows at once, applies the method's
`pick(rows, k) -> kept rows` to each group, and checks that exactly `m = num_kept(n, ratio)` unique rows come back.

```python
>>> labels = np.array([0, 0, 0, 1, 1, 2])
>>> m = num_kept(len(labels), ratio=0.5)  # 3
>>> select_per_class(labels, m, stratify=True, pick=top_k(np.array([3.0, 1.0, 2.0, 0.0, 5.0, 4.0])))
array([0, 2, 4])
```
"""

from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np

__all__ = [
    "Pick",
    "check_labels",
    "check_ratio",
    "class_budgets",
    "class_rows",
    "gumbel_top_k",
    "num_kept",
    "select_per_class",
    "stratified_subsample",
    "top_k",
]

# `pick(rows, k)`: the k rows of `rows` (row ids of one group) to keep.
Pick = Callable[[np.ndarray, int], np.ndarray]
GUMBEL_DRAWS = ("rows", "groups")


def check_ratio(ratio) -> float:
    """`ratio` as a float, or a `ValueError` naming it unless it is a number in (0, 1)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating, np.integer)):
        raise ValueError(f"ratio must be a float in (0, 1) (the fraction of rows to remove), got {ratio!r}.")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1) (the fraction of rows to remove), got {ratio}.")
    return float(ratio)


def num_kept(n: int, ratio: float) -> int:
    """Rows kept when `ratio` of `n` rows are pruned: `round((1 - ratio) * n)`; a `ValueError` when that is 0.

    Args:
        n (`int`): number of rows.
        ratio (`float`): fraction of rows to remove, in (0, 1).
    """
    ratio = check_ratio(ratio)
    m = int(round((1.0 - ratio) * n))
    if m < 1:
        raise ValueError(f"ratio={ratio} keeps {m} of {n} rows; lower the ratio so at least one row is kept.")
    return m


def check_labels(labels, n: Optional[int] = None) -> np.ndarray:
    """`labels` as a (n,) int64 array of class ids >= 0, or a `ValueError` saying what is wrong with them.

    Float labels with integer values are accepted (a column read as float); `n`, when given, is the row count
    they must match.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}.")
    if n is not None and labels.size != n:
        raise ValueError(f"labels has {labels.size} rows but u / scores have {n}.")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        else:
            raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}.")
    if labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {labels.min()}.")
    return labels.astype(np.int64, copy=False)


def class_budgets(labels: np.ndarray, m: int) -> np.ndarray:
    """Per-class keep counts proportional to class sizes, summing exactly to `m`.

    Largest-remainder rounding: each class gets `floor(m * n_c / n)`, and the rows left go one each
    to the classes with the largest remainders (ties: lower class id first). No class gets more
    than its size.

    Args:
        labels (`np.ndarray`): (n,) non-negative integer class ids.
        m (`int`): total rows to keep, in [0, n].

    Returns:
        `np.ndarray`: (C,) int64 with C = labels.max() + 1; entry c is the budget of class c.
    """
    labels = check_labels(labels)
    n = labels.size
    if isinstance(m, bool) or not float(m).is_integer() or not 0 <= m <= n:
        raise ValueError(f"m must be an integer in [0, {n}] (the number of rows), got {m}.")
    m = int(m)
    counts = np.bincount(labels).astype(np.int64)
    base, remainder = np.divmod(m * counts, n)  # exact integer arithmetic
    left = m - int(base.sum())
    # largest remainder first; stable sort keeps lower class ids first among ties
    order = np.argsort(-remainder, kind="stable")
    base[order[:left]] += 1
    return base


def class_rows(labels: np.ndarray) -> List[np.ndarray]:
    """Row ids of each class 0..C-1 (ascending; empty for absent ids), in one O(n log n) pass."""
    order = np.argsort(labels, kind="stable")
    bounds = np.cumsum(np.bincount(labels))[:-1]
    return np.split(order, bounds)


def stratified_subsample(
    rows: np.ndarray, labels: np.ndarray, size: Optional[int], rng: np.random.Generator
) -> np.ndarray:
    """Sorted random subset of `size` of `rows` (all of them when `size` is None or larger), class shares kept.

    Args:
        rows (`np.ndarray`): row ids to draw from.
        labels (`np.ndarray`): (n,) class ids of all rows; `labels[rows]` are the ones that count.
        size (`int`, *optional*): rows to draw; each class gets its `class_budgets` share.
        rng (`np.random.Generator`): drawn from class by class, in class-id order.
    """
    if size is None or size >= len(rows):
        return rows
    row_labels = labels[rows]
    budgets = class_budgets(row_labels, size)
    picked = [rng.choice(members, budgets[c], replace=False) for c, members in enumerate(class_rows(row_labels))]
    return np.sort(rows[np.concatenate(picked)])


def _groups(labels: np.ndarray, m: int, stratify: bool) -> Iterator[Tuple[np.ndarray, int]]:
    """(rows, k) pairs: each class with a positive budget when `stratify`, else all rows with m."""
    if not stratify:
        yield np.arange(len(labels)), m
        return
    for rows, k in zip(class_rows(labels), class_budgets(labels, m)):
        if k > 0:
            yield rows, int(k)


def select_per_class(labels: np.ndarray, m: int, stratify: bool, pick: Pick) -> np.ndarray:
    """Apply `pick(rows, k) -> kept rows` to each class with its budget (or to all rows), return sorted ids.

    Args:
        labels (`np.ndarray`): (n,) class ids.
        m (`int`): rows to keep in all (`num_kept`).
        stratify (`bool`): per class with `class_budgets`; otherwise one group of all n rows.
        pick (`Pick`): the method's rule, e.g. `top_k(scores)` or `gumbel_top_k(log_weights, rng)`.

    Returns:
        `np.ndarray`: (m,) sorted unique int64 row ids; a `RuntimeError` when the picks do not add up to that.
    """
    kept = [np.asarray(pick(rows, k), dtype=np.int64) for rows, k in _groups(np.asarray(labels), m, stratify)]
    indices = np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
    if len(indices) != m or (m > 1 and np.any(np.diff(indices) == 0)):
        raise RuntimeError(f"selection kept {len(indices)} rows ({len(np.unique(indices))} unique), expected {m}.")
    return indices


def top_k(keys: np.ndarray) -> Pick:
    """`pick` that keeps the k largest `keys` of a group; ties go to the lower row id."""

    def pick(rows: np.ndarray, k: int) -> np.ndarray:
        return rows[np.argsort(-keys[rows], kind="stable")[:k]]

    return pick


def gumbel_top_k(log_weights: np.ndarray, rng: np.random.Generator, draw: str = "groups") -> Pick:
    """`pick` that draws k rows of a group without replacement with probability proportional to `exp(log_weights)`.

    Gumbel-top-k: the k largest `log w_i + G_i`, `G_i ~ Gumbel(0, 1)` i.i.d., are distributed as k successive
    draws without replacement in proportion to w (Kool et al., 2019), i.e. `rng.choice(p=w / sum(w),
    replace=False)` within the group.

    Args:
        log_weights (`np.ndarray`): (n,) log weights of all rows (up to a constant).
        rng (`np.random.Generator`): the noise's source.
        draw (`str`): the order the noise is drawn in, which decides the rows a seed keeps (both are exact
            samples): `"rows"`, one variate per row of all n rows in row order, drawn now (`BetaPolicy.select`);
            `"groups"`, one per row of each group as it is picked, in group order (the dual-beta method).
    """
    if draw not in GUMBEL_DRAWS:
        raise ValueError(f"Unknown Gumbel draw order: {draw!r}. Choose between {list(GUMBEL_DRAWS)}.")
    if draw == "rows":
        return top_k(log_weights + rng.gumbel(size=len(log_weights)))

    def pick(rows: np.ndarray, k: int) -> np.ndarray:
        keys = log_weights[rows] + rng.gumbel(size=len(rows))
        return rows[np.argsort(-keys, kind="stable")[:k]]

    return pick
