"""Bilevel policy learning for large proxy heads (ImageNet-sized: thousands of features x a thousand classes).

`hf_ifbeta.policy_learning.learn_beta_policy` unrolls `T = inner_epochs * m / inner_batch_size` full-batch steps
of a linear head, and carries two tangents through them. One step costs about `6 C (d + 1) N` multiply-adds plus
some `30 C N` element-wise operations on N rows, so with a head of millions of parameters the outer loop takes
hours on a CPU.
Above a head size of `PolicyReduction.max_head_params`, `learn_beta_policy_at_scale` therefore solves the same
bilevel problem on a reduced copy, and hands the learned (a, b) back for the full data:

1. **Classes**: at most `max_classes` classes drawn at random (seeded); their rows, the teacher logits
   restricted to them (the teacher's softmax renormalised over the kept classes) and their labels. The policy
   acts on rank positions *within a class*, so a random subset of classes poses the same question with more
   rows per class (a row budget spread over a thousand classes leaves a handful per class), and the cost of an
   inner step falls with the classes (C x N softmax work and C x d x N products).
2. **Rows**: a class-stratified subsample of `subsample` training rows and `val_subsample` validation rows
   of those classes, read from the (memory-mapped) cache chunk by chunk: memory O(subsample d), not O(n d).
3. **Features**: standardised with the mean / std of the training subsample. Optionally (`projection_dim`, off by
   default) multiplied by a fixed random orthonormal matrix Q (d, k), with the inner learning rate scaled by
   d / k and the L2 penalty by k / d: gradient descent on a linear head from zeros sees the features only through
   inner products, which a random projection keeps up to the factor k / d and a relative error of about
   1 / sqrt(k). Off by default because, when the class signal is a small part of the feature norm, that error
   swamps it and the projected problem ranks policies unlike the full one.

A fixed coverage view (`coverage`, the "stage" view of the "kd+coverage" objective) is read for the same rows and
left as it is (`learn_beta_policy` standardises it over them).

Everything else is `learn_beta_policy` unchanged: the same KD-aligned inner objective, inner budget rule, outer
loss, hypergradient, discrete check against uniform and fallback. Below the threshold (a CIFAR-10 head) the call
is passed straight to `learn_beta_policy`. Both paths run on the device of `config.resolve_device`.
"""

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from .config import PolicyArguments
from .distributed import resolve_device
from .losses import ProxyLoss
from .policy_learning import PolicyLearningResult, learn_beta_policy
from .selection import stratified_subsample

__all__ = ["ReducedPolicyProblem", "learn_beta_policy_at_scale", "reduce_policy_problem"]

logger = logging.getLogger(__name__)


def learn_beta_policy_at_scale(
    features: np.ndarray,
    logits: np.ndarray,
    labels: np.ndarray,
    u: np.ndarray,
    ratio: float,
    val_indices: np.ndarray,
    *,
    loss: ProxyLoss = ProxyLoss(),
    policy_args: PolicyArguments = PolicyArguments(),
    seed: int = 0,
    device=None,
    coverage: Optional[np.ndarray] = None,
) -> PolicyLearningResult:
    """`learn_beta_policy`, on a reduced copy of the problem when the head has more than `max_head_params`.

    Args:
        features (`np.ndarray`): (n, d) teacher features, float16 or float32; may be a `np.memmap` (only the
            subsampled rows are read).
        logits (`np.ndarray`): (n, C) teacher logits; may be a `np.memmap`.
        labels (`np.ndarray`): (n,) class ids.
        u (`np.ndarray`): (n,) rank positions in (0, 1) (`hf_ifbeta.policy.rank_positions`).
        ratio (`float`): fraction of rows to remove, in (0, 1).
        val_indices (`np.ndarray`): validation rows (held out of the training set).
        loss (`ProxyLoss`): the proxy's loss; on the reduced path its `l2` acts on the full features' scale (it is
            mapped to the projection, see the module docstring).
        policy_args (`PolicyArguments`): as in `learn_beta_policy`, with `reduction` (when and how to reduce)
            and `chunk_size` (rows per read from the memory-mapped arrays). On the reduced path `subsample` and
            `val_subsample` draw from the kept classes (None: all of their rows, then memory grows with n) and
            `inner_lr` is mapped to the projection like `l2`.
        seed (`int`): seed of the class subset, the subsamples, the projection and the discrete checks.
        device: torch device of the inner fits; default as `config.resolve_device`.
        coverage (`np.ndarray`, *optional*): (n, k) the fixed weak view of the "kd+coverage" objective's coverage
            term (`TeacherOutputs.coverage`), passed to `learn_beta_policy`; may be a `np.memmap`. Required when
            `policy_args.coverage_view` is "stage" with that objective.

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
    device = resolve_device(device)
    d = features.shape[1]
    C = logits.shape[1]
    if C * (d + 1) <= policy_args.reduction.max_head_params:
        return learn_beta_policy(
            features, logits, labels, u, ratio, val_indices, loss=loss, policy_args=policy_args, seed=seed,
            device=device, coverage=coverage,
        )  # fmt: skip
    start = time.perf_counter()
    problem = reduce_policy_problem(features, logits, labels, u, val_indices, loss, policy_args, seed, coverage)
    result = learn_beta_policy(
        problem.features, problem.logits, problem.labels, problem.u, ratio, problem.val_indices,
        loss=dataclasses.replace(loss, l2=problem.l2),
        policy_args=dataclasses.replace(policy_args, inner_lr=problem.inner_lr, subsample=None, val_subsample=None),
        seed=seed, device=device, coverage=problem.coverage,
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
        coverage (`np.ndarray`, *optional*): (N, k) float32 the coverage view of these rows, as given (not
            standardised or projected); None without one.
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
    coverage: Optional[np.ndarray] = None


def reduce_policy_problem(
    features: np.ndarray,
    logits: np.ndarray,
    labels: np.ndarray,
    u: np.ndarray,
    val_indices: np.ndarray,
    loss: ProxyLoss = ProxyLoss(),
    policy_args: PolicyArguments = PolicyArguments(),
    seed: int = 0,
    coverage: Optional[np.ndarray] = None,
) -> ReducedPolicyProblem:
    """Steps 1-3 of the module docstring: class subset, stratified rows read in chunks, standardised features,
    and the same rows of `coverage` when given.

    Arguments as in `learn_beta_policy_at_scale`; `policy_args.reduction.projection_dim` None or >= d keeps the
    standardised features as they are (then the learning rate and L2 are unchanged), `max_classes >= C` keeps
    every class.
    """
    max_classes = policy_args.reduction.max_classes
    projection_dim = policy_args.reduction.projection_dim
    chunk_size = policy_args.chunk_size
    n, d = features.shape
    C = logits.shape[1]
    labels = np.asarray(labels, dtype=np.int64)
    u = np.asarray(u, dtype=np.float64)
    val_indices = np.asarray(val_indices, dtype=np.int64)
    if labels.shape != (n,) or u.shape != (n,):
        raise ValueError(f"labels {labels.shape} and u {u.shape} must have one entry per row ({n}).")
    if coverage is not None and (coverage.ndim != 2 or coverage.shape[0] != n):
        raise ValueError(f"coverage must be an (n, k) array with n = {n} rows, got shape {coverage.shape}.")
    rng = np.random.default_rng([seed, 31])

    # 1. Classes: at most max_classes of those present, sorted.
    present = np.flatnonzero(np.bincount(labels, minlength=C))
    classes = np.sort(rng.choice(present, size=max_classes, replace=False)) if len(present) > max_classes else present
    in_classes = np.isin(labels, classes)
    is_val = np.zeros(n, dtype=bool)
    is_val[val_indices] = True

    # 2. Rows: stratified subsamples of the training and validation rows of those classes.
    train = stratified_subsample(np.flatnonzero(in_classes & ~is_val), labels, policy_args.subsample, rng)
    val = stratified_subsample(np.flatnonzero(in_classes & is_val), labels, policy_args.val_subsample, rng)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"the {len(classes)} classes drawn for the reduced policy problem have {len(train)} training and "
            f"{len(val)} validation rows: both must be non-empty (check val_indices)."
        )
    rows = np.concatenate([train, val])
    order = np.argsort(rows, kind="stable")
    h = np.empty((len(rows), d), dtype=np.float32)
    z = np.empty((len(rows), len(classes)), dtype=np.float32)
    view = np.empty((len(rows), coverage.shape[1]), dtype=np.float32) if coverage is not None else None
    for s in range(0, len(rows), chunk_size):
        block = order[s : s + chunk_size]  # read in increasing row order: sequential on a memmap
        h[block] = _read(features, rows[block])
        z[block] = _read(logits, rows[block])[:, classes]
        if view is not None:
            view[block] = _read(coverage, rows[block])

    # 3. Features: standardise with the training rows' statistics, project to k dims when asked.
    k = d if projection_dim is None else min(projection_dim, d)
    mean = h[: len(train)].mean(0, dtype=np.float64)
    std = h[: len(train)].std(0, dtype=np.float64)
    std = np.where(std > 1e-12, std, 1.0)
    h -= mean.astype(np.float32)
    h /= std.astype(np.float32)
    x = h @ _random_projection(d, k, seed) if k < d else h  # (N, k)
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
        "inner_lr": float(policy_args.inner_lr * scale),
        "l2": float(loss.l2 / scale),
    }
    return ReducedPolicyProblem(
        features=x, logits=z, labels=np.searchsorted(classes, labels[rows]), u=u[rows],
        val_indices=np.arange(len(train), len(rows)), rows=rows, classes=classes, inner_lr=info["inner_lr"],
        l2=info["l2"], info=info, coverage=view,
    )  # fmt: skip


def _random_projection(d: int, k: int, seed: int) -> np.ndarray:
    """(d, k) float32 matrix with orthonormal columns (QR of a Gaussian matrix), fixed by `seed`."""
    if not 1 <= k <= d:
        raise ValueError(f"projection dimension k must be in [1, d={d}], got {k}.")
    gaussian = np.random.default_rng([seed, 7]).standard_normal((d, k))
    q, r = np.linalg.qr(gaussian)
    return (q * np.sign(np.diag(r))).astype(np.float32)  # sign fix: a unique Q for the seed


def _read(array, rows: np.ndarray) -> np.ndarray:
    """`array[rows]` (sorted ids) as float32 in memory, read without keeping a memory map's pages resident."""
    from .arrays import read_rows as _read_rows

    return _read_rows(array, rows).astype(np.float32, copy=False)
