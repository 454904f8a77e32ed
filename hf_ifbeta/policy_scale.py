"""Bilevel policy learning for large proxy heads (ImageNet: 2,048-d features x 1,000 classes).

`hf_ifbeta.policy.learn_beta_policy` unrolls `T = inner_epochs * m / inner_batch_size` full-batch steps of a linear
head, and carries two tangents through them. One step costs about `6 C (d + 1) N` multiply-adds plus some
`30 C N` element-wise operations on N rows. With a ResNet-50 teacher on ImageNet (d = 2,048, C = 1,000, a
2.05 M-parameter head) and N = 4,000 rows, a hypergradient takes minutes on a CPU core and the 20 outer steps
hours. Above a head size of `max_head_params`, `learn_beta_policy_at_scale` therefore solves the same bilevel
problem on a reduced copy, and hands the learned (a, b) back for the full data:

1. **Classes**: at most `max_classes` classes drawn at random (seeded); their rows, the teacher logits
   restricted to them (the teacher's softmax renormalised over the kept classes) and their labels. The policy
   acts on rank positions *within a class*, so a random subset of classes poses the same question with more
   rows per class: 4,000 rows over 1,000 classes would leave 4 rows (2.8 kept) per class. The cost of an inner
   step falls with the classes (C x N softmax work and C x d x N products): 100 of 1,000 classes cut it 10x.
2. **Rows**: a class-stratified subsample of `subsample` training rows and `val_subsample` validation rows
   of those classes, read from the (memory-mapped) cache chunk by chunk: memory O(subsample d), not O(n d).
3. **Features** (optional, off by default): standardised (mean / std of the subsample), then multiplied by a
   fixed random orthonormal matrix Q (d, k), k = `projection_dim`, with the inner learning rate scaled by d / k
   and the L2 penalty by k / d. A random projection keeps inner products up to the factor k / d and a relative
   error of about 1 / sqrt(k) (Johnson-Lindenstrauss), and gradient descent on a linear head from zeros sees the
   features only through inner products. But when the class signal is a small part of the feature norm, that
   error swamps it: on the synthetic ImageNet-shaped features of benchmarks/bench_scale.py the outer loss with
   k = 128 ranked a grid of policies differently from the full features (docs/scale.md). Hence off by default:
   the reduced problem keeps the full features and is the same objective on fewer classes and rows.

Everything else is `learn_beta_policy` unchanged: the same KD-aligned inner objective, inner budget rule, outer
loss, hypergradient, discrete check against uniform and fallback. On the reduced path the inner fits run on
CUDA when it is available and no device is given (as `influence_scores` does). Below the threshold (CIFAR-10
with a ResNet-56 teacher: 650 parameters) the call is passed straight to `learn_beta_policy`.

Cost, measured with `PolicyObjective` on one shared CPU core of this project's machine (d = 2,048): 100 classes
and 2,000 rows take 0.15 s per inner step (24 s per hypergradient), 4,000 rows 0.29 s (96 s: the steps grow with
the rows too); 1,000 classes and 2,000 rows even projected to k = 128 take 0.20 s. docs/scale.md gives the whole
policy stage as measured by benchmarks/bench_scale.py.
"""

import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch

from . import policy
from .policy import PolicyLearningResult, class_budgets

__all__ = ["ReducedPolicyProblem", "learn_beta_policy_at_scale", "random_projection", "reduce_policy_problem"]

logger = logging.getLogger(__name__)

# Head size C (d + 1) above which the bilevel problem is solved on the reduced copy.
MAX_HEAD_PARAMS = 50_000
PROJECTION_DIM: Optional[int] = None  # no projection (see the module docstring)
MAX_CLASSES = 100


def random_projection(d: int, k: int, seed: int) -> np.ndarray:
    """(d, k) float32 matrix with orthonormal columns (QR of a Gaussian matrix), fixed by `seed`."""
    if not 1 <= k <= d:
        raise ValueError(f"projection dimension k must be in [1, d={d}], got {k}.")
    gaussian = np.random.default_rng([seed, 7]).standard_normal((d, k))
    q, r = np.linalg.qr(gaussian)
    return (q * np.sign(np.diag(r))).astype(np.float32)  # sign fix: a unique Q for the seed


def learn_beta_policy_at_scale(
    features: np.ndarray,
    logits: np.ndarray,
    labels: np.ndarray,
    u: np.ndarray,
    ratio: float,
    val_indices: np.ndarray,
    *,
    l2: float = 1e-3,
    inner_lr: float = 0.1,
    subsample: Optional[int] = 4_000,
    val_subsample: Optional[int] = 2_000,
    seed: int = 0,
    max_head_params: Optional[int] = None,
    projection_dim: Optional[int] = None,
    max_classes: Optional[int] = None,
    chunk_size: int = 65_536,
    **kwargs: Any,
) -> PolicyLearningResult:
    """`learn_beta_policy`, on a reduced copy of the problem when the proxy head has more than `max_head_params`.

    Args:
        features (`np.ndarray`): (n, d) teacher features, float16 or float32; may be a `np.memmap` (only the
            subsampled rows are read).
        logits (`np.ndarray`): (n, C) teacher logits; may be a `np.memmap`.
        labels (`np.ndarray`): (n,) class ids.
        u (`np.ndarray`): (n,) rank positions in (0, 1) (`hf_ifbeta.policy.rank_positions`).
        ratio (`float`): fraction of rows to remove, in (0, 1).
        val_indices (`np.ndarray`): validation rows (held out of the training set).
        l2 (`float`), inner_lr (`float`): as in `learn_beta_policy`; on the reduced path they act on the full
            features' scale (they are mapped to the projection, see the module docstring).
        subsample (`int`, *optional*): training rows of the bilevel problem (stratified); None = all rows of
            the kept classes (then memory grows with n).
        val_subsample (`int`, *optional*): validation rows used (stratified); None = all of the kept classes.
        seed (`int`): seed of the class subset, the subsamples, the projection and the discrete checks.
        max_head_params (`int`, *optional*): C (d + 1) above which the reduced path is taken; default
            `MAX_HEAD_PARAMS` (50,000).
        projection_dim (`int`, *optional*): k, the projected feature dimension (no projection when d <= k);
            default `PROJECTION_DIM` (None: no projection).
        max_classes (`int`, *optional*): classes kept on the reduced path; default `MAX_CLASSES` (100).
        chunk_size (`int`): rows per read from the (memory-mapped) arrays.
        kwargs: the other arguments of `learn_beta_policy` (alpha, temperature, outer_steps, outer_lr,
            inner_epochs, inner_batch_size, stratify, device, eval_seeds, num_threads).

    Returns:
        `PolicyLearningResult`; on the reduced path `info["reduced"]` records the classes, rows, projection and
        the mapped inner learning rate and L2.

    Example:
    ```python
    >>> u = rank_positions(influence.scores, labels)
    >>> result = learn_beta_policy_at_scale(outputs.features, outputs.logits, labels, u, 0.3, val_indices)
    >>> kept = result.policy.select(u, 0.3, labels, seed=0)
    ```
    """
    # Module constants read at call time, so that they can be changed globally (and in tests).
    max_head_params = MAX_HEAD_PARAMS if max_head_params is None else max_head_params
    projection_dim = PROJECTION_DIM if projection_dim is None else projection_dim
    max_classes = MAX_CLASSES if max_classes is None else max_classes
    d = features.shape[1]
    C = logits.shape[1]
    if C * (d + 1) <= max_head_params:
        return policy.learn_beta_policy(  # looked up at call time (tests may replace it)
            features, logits, labels, u, ratio, val_indices, l2=l2, inner_lr=inner_lr, subsample=subsample,
            val_subsample=val_subsample, seed=seed, **kwargs,
        )  # fmt: skip
    if kwargs.get("device") is None and torch.cuda.is_available():
        kwargs["device"] = "cuda"  # the reduced problem is still large: as influence_scores, default to the GPU
    start = time.perf_counter()
    problem = reduce_policy_problem(
        features, logits, labels, u, val_indices, l2=l2, inner_lr=inner_lr, subsample=subsample,
        val_subsample=val_subsample, seed=seed, projection_dim=projection_dim, max_classes=max_classes,
        chunk_size=chunk_size,
    )  # fmt: skip
    result = policy.learn_beta_policy(
        problem.features, problem.logits, problem.labels, problem.u, ratio, problem.val_indices, l2=problem.l2,
        inner_lr=problem.inner_lr, subsample=None, val_subsample=None, seed=seed, **kwargs,
    )  # fmt: skip
    result.info["reduced"] = {**problem.info, "total_seconds": time.perf_counter() - start}
    logger.info(
        "Beta policy learned on a reduced problem: %d of %d classes, %d + %d rows, features projected %d -> %d.",
        *(problem.info[k] for k in ("classes", "of_classes", "train_rows", "val_rows", "of_features", "projection_dim")),
    )  # fmt: skip
    return result


@dataclass
class ReducedPolicyProblem:
    """The bilevel problem on a class subset and projected features (`reduce_policy_problem`).

    Args:
        features (`np.ndarray`): (N, k) standardised, projected features: training rows first, then validation rows.
        logits (`np.ndarray`): (N, C') teacher logits restricted to the kept classes.
        labels (`np.ndarray`): (N,) class ids in [0, C') (position in `classes`).
        u (`np.ndarray`): (N,) rank positions of these rows (ranked within their class over all n rows).
        val_indices (`np.ndarray`): positions of the validation rows in these arrays.
        rows (`np.ndarray`): (N,) their row ids in the full arrays.
        classes (`np.ndarray`): (C',) the kept class ids.
        inner_lr (`float`), l2 (`float`): the inner learning rate and L2 mapped to the projection.
        info (`Dict`): sizes and mapped settings, JSON-friendly.
    """

    features: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    u: np.ndarray
    val_indices: np.ndarray
    rows: np.ndarray
    classes: np.ndarray
    inner_lr: float
    l2: float
    info: Dict[str, Any]


def reduce_policy_problem(
    features: np.ndarray,
    logits: np.ndarray,
    labels: np.ndarray,
    u: np.ndarray,
    val_indices: np.ndarray,
    *,
    l2: float = 1e-3,
    inner_lr: float = 0.1,
    subsample: Optional[int] = 4_000,
    val_subsample: Optional[int] = 2_000,
    seed: int = 0,
    projection_dim: Optional[int] = None,
    max_classes: Optional[int] = None,
    chunk_size: int = 65_536,
) -> ReducedPolicyProblem:
    """Steps 1-3 of the module docstring: class subset, stratified rows read in chunks, standardised projection.

    Arguments as in `learn_beta_policy_at_scale`; `projection_dim` None (the default `PROJECTION_DIM`) or >= d
    keeps the standardised features as they are (then the learning rate and L2 are unchanged), `max_classes >= C`
    keeps every class.
    """
    projection_dim = PROJECTION_DIM if projection_dim is None else projection_dim
    max_classes = MAX_CLASSES if max_classes is None else max_classes
    for name, value in (("projection_dim", projection_dim), ("max_classes", max_classes), ("chunk_size", chunk_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    n, d = features.shape
    C = logits.shape[1]
    labels = np.asarray(labels, dtype=np.int64)
    u = np.asarray(u, dtype=np.float64)
    val_indices = np.asarray(val_indices, dtype=np.int64)
    if labels.shape != (n,) or u.shape != (n,):
        raise ValueError(f"labels {labels.shape} and u {u.shape} must have one entry per row ({n}).")
    rng = np.random.default_rng([seed, 31])

    # 1. Classes: at most max_classes of those present, sorted.
    present = np.flatnonzero(np.bincount(labels, minlength=C))
    classes = np.sort(rng.choice(present, size=max_classes, replace=False)) if len(present) > max_classes else present
    in_classes = np.isin(labels, classes)
    is_val = np.zeros(n, dtype=bool)
    is_val[val_indices] = True

    # 2. Rows: stratified subsamples of the training and validation rows of those classes.
    train = _stratified(np.flatnonzero(in_classes & ~is_val), labels, subsample, rng)
    val = _stratified(np.flatnonzero(in_classes & is_val), labels, val_subsample, rng)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"the {len(classes)} classes drawn for the reduced policy problem have {len(train)} training and "
            f"{len(val)} validation rows: both must be non-empty (check val_indices)."
        )
    rows = np.concatenate([train, val])
    order = np.argsort(rows, kind="stable")
    h = np.empty((len(rows), d), dtype=np.float32)
    z = np.empty((len(rows), len(classes)), dtype=np.float32)
    for s in range(0, len(rows), chunk_size):
        block = order[s : s + chunk_size]  # read in increasing row order: sequential on a memmap
        h[block] = _read(features, rows[block])
        z[block] = _read(logits, rows[block])[:, classes]

    # 3. Features: standardise with the training rows' statistics, project to k dims.
    k = d if projection_dim is None else min(projection_dim, d)
    mean = h[: len(train)].mean(0, dtype=np.float64)
    std = h[: len(train)].std(0, dtype=np.float64)
    std = np.where(std > 1e-12, std, 1.0)
    h -= mean.astype(np.float32)
    h /= std.astype(np.float32)
    x = h @ random_projection(d, k, seed) if k < d else h  # (N, k)
    # Gradient descent from zeros sees the features only through x_i . x_j, which the projection scales by
    # about k / d: the inner step and the L2 penalty are rescaled so that the logits follow the same path.
    scale = d / k
    info = {
        "classes": int(len(classes)),
        "of_classes": int(C),
        "train_rows": int(len(train)),
        "val_rows": int(len(val)),
        "projection_dim": int(k),
        "of_features": int(d),
        "inner_lr": float(inner_lr * scale),
        "l2": float(l2 / scale),
    }
    return ReducedPolicyProblem(
        features=x, logits=z, labels=np.searchsorted(classes, labels[rows]), u=u[rows],
        val_indices=np.arange(len(train), len(rows)), rows=rows, classes=classes, inner_lr=info["inner_lr"],
        l2=info["l2"], info=info,
    )  # fmt: skip


def _stratified(rows: np.ndarray, labels: np.ndarray, size: Optional[int], rng: np.random.Generator) -> np.ndarray:
    """Sorted random subset of `rows` of `size` rows (all when None or larger), class proportions kept."""
    if size is None or size >= len(rows):
        return rows
    row_labels = labels[rows]
    budgets = class_budgets(row_labels, size)
    order = np.argsort(row_labels, kind="stable")
    groups = np.split(rows[order], np.cumsum(np.bincount(row_labels))[:-1])
    picked = [rng.choice(g, size=budgets[c], replace=False) for c, g in enumerate(groups) if budgets[c] > 0]
    return np.sort(np.concatenate(picked))


def _read(array, rows: np.ndarray) -> np.ndarray:
    """`array[rows]` (sorted ids) as float32 in memory, read without keeping a memory map's pages resident."""
    from .arrays import read_rows as _read_rows

    return _read_rows(array, rows).astype(np.float32, copy=False)
