"""Bilevel learning of the Beta policy's (a, b) for one pruning ratio: `learn_beta_policy`.

The outer problem is Adam on (log a, log b) inside a box, from the uniform policy, on the proxy validation KD loss
of `policy.PolicyObjective` (or the `OuterObjective` mixture `PolicyArguments.objective` asks for); the learned policy is then checked on discrete subsets against uniform, and uniform is
kept when it is not beaten. `policy_scale.learn_beta_policy_at_scale` runs the same learning on a reduced copy of the
problem for large heads.
"""

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .arrays import ieee_float32
from .config import MIN_AB, PolicyArguments
from .distributed import resolve_device
from .losses import ProxyLoss
from .policy import BetaPolicy, PolicyObjective, _check_arrays, _check_positions, beta_entropy
from .selection import check_ratio, stratified_subsample

__all__ = [
    "OuterObjective", "PolicyLearningResult", "bounds_reached", "coverage_features", "learn_beta_policy",
]

logger = logging.getLogger(__name__)


@dataclass
class PolicyLearningResult:
    """What `learn_beta_policy` found.

    Args:
        policy (`BetaPolicy`): the policy to use (uniform when the learned one did not beat it).
        history (`List[Dict]`): per outer step: `step`, `a`, `b`, soft outer `loss`, `grad` (on log a, log b).
        val_loss_learned (`float`): mean proxy validation loss of discrete subsets of the learned policy.
        val_loss_uniform (`float`): the same for the uniform policy (same seeds, same budget).
        fell_back_to_uniform (`bool`): the learned policy did not beat uniform on discrete subsets.
        info (`Dict`): sizes, inner steps, the learned (a, b) before any fallback, the search's `box` and which of
            the learned a and b sit on it (`on_bound`, e.g. `{"b": "lower"}`; empty inside the box), timings.
    """

    policy: BetaPolicy
    history: List[Dict] = field(default_factory=list)
    val_loss_learned: float = float("nan")
    val_loss_uniform: float = float("nan")
    fell_back_to_uniform: bool = False
    info: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly summary (policy, history, both validation losses, fallback flag, info)."""
        return {
            **self.policy.to_dict(),
            "history": self.history,
            "val_loss_learned": self.val_loss_learned,
            "val_loss_uniform": self.val_loss_uniform,
            "fell_back_to_uniform": self.fell_back_to_uniform,
            "info": self.info,
        }



def learn_beta_policy(
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
    """Learn the Beta policy's (a, b) by minimising the outer objective (bilevel, hypergradient): by default the
    proxy validation KD loss, else the `OuterObjective` of `policy_args.objective` and `policy_args.entropy_weight`.

    The problem is solved on a stratified random subsample of the non-validation rows. Adam on
    (log a, log b) starts from the uniform policy (0, 0), stays in the box of `policy_args.max_ab` and returns
    the iterate with the lowest soft outer loss. That policy is then checked on discrete subsets
    (`eval_seeds` draws of `BetaPolicy.select`, the head trained on each hard subset with the same
    budget) against uniform on the same seeds; if it is not better, the result is uniform
    (a = b = 1, `fell_back_to_uniform=True`): a policy that cannot beat random learns to be random.

    Args:
        features (`np.ndarray`): (n, d) teacher features (may be a memmap; only the subsample is read).
        logits (`np.ndarray`): (n, C) teacher logits.
        labels (`np.ndarray`): (n,) class ids.
        u (`np.ndarray`): (n,) rank positions in (0, 1) (`rank_positions`).
        ratio (`float`): fraction of rows to remove, in (0, 1).
        val_indices (`np.ndarray`): validation rows (held out of the training set, never the test set).
        loss (`ProxyLoss`): the proxy's KD-aligned loss.
        policy_args (`PolicyArguments`): the outer search (steps, learning rate, box `max_ab`), the inner budget,
            the subsamples (their cost grows with the square of `subsample`), `stratify`, the discrete check's
            `eval_seeds` and the CPU threads.
        seed (`int`): seed of the subsamples and of the discrete checks.
        device: torch device of the inner fits; default as `config.resolve_device`. Float32 products run in IEEE
            float32 whatever the TF32 setting (`hf_ifbeta.arrays.ieee_float32`).
        coverage (`np.ndarray`, *optional*): (n, k) a fixed weak view of every row for the "kd+coverage" objective's
            coverage term (e.g. pooled features of an earlier teacher stage), standardised over the subsampled
            rows; None uses `coverage_views` random projections of `features`. Only the subsampled rows are read.

    Returns:
        `PolicyLearningResult`.

    Example:
    ```python
    >>> u = rank_positions(influence.scores, labels)
    >>> result = learn_beta_policy(features, logits, labels, u, ratio=0.5, val_indices=val,
    ...                            policy_args=PolicyArguments(outer_steps=10))
    >>> kept = result.policy.select(u, 0.5, labels, seed=0)  # sorted ids of the kept rows, as if-beta does
    ```
    """
    previous_threads = torch.get_num_threads()
    if policy_args.num_threads is not None:
        torch.set_num_threads(policy_args.num_threads)
    try:
        with ieee_float32():  # the float32 inner fits and tangents, whatever the TF32 setting
            return _learn_beta_policy(
                features, logits, labels, u, ratio, val_indices, loss, policy_args, seed, resolve_device(device),
                coverage,
            )
    finally:
        torch.set_num_threads(previous_threads)


def bounds_reached(ab: Tuple[float, float], log_box: Tuple[float, float]) -> Dict[str, str]:
    """Which of a and b sit on the box (`{"a": "upper", "b": "lower"}`); empty when both are inside."""
    out = {}
    for name, value in zip("ab", ab):
        for side, bound in zip(("lower", "upper"), log_box):
            if abs(math.log(value) - bound) < 1e-9:  # Adam's iterate is clipped onto the bound exactly
                out[name] = side
    return out


def standardised(f: np.ndarray) -> np.ndarray:
    """Each column at mean 0 and standard deviation 1 over the rows (constant columns stay 0)."""
    return (f - f.mean(0)) / (f.std(0) + 1e-6)


def coverage_features(features: np.ndarray, dim: int, seed: int, view: int = 0) -> np.ndarray:
    """Standardised `features` times a fixed Gaussian (d, dim) matrix, one per (seed, view): features from which
    a linear head can no longer reproduce the teacher, so that its fit depends on which rows it sees."""
    f = standardised(np.asarray(features, dtype=np.float32))
    rng = np.random.default_rng([seed, dim] if view == 0 else [seed, dim, view])
    gaussian = rng.standard_normal((f.shape[1], dim)) / math.sqrt(f.shape[1])
    return f @ gaussian.astype(np.float32)


class OuterObjective:
    """`sum_k w_k * objective_k / objective_k(uniform) - entropy_weight * H(Beta(a, b))` over (log a, log b).

    Each part is a `PolicyObjective` (they share their rows, so the caller reads sizes from the first). A hard
    subset has no Beta, so `subset_loss` is the weighted sum alone. Its values are relative (1 at the uniform
    policy without the tie-break), and so are the `history` losses of a `learn_beta_policy` run with it.
    """

    def __init__(self, parts: List, entropy_weight: float = 0.0):
        self.parts = [(float(w), obj, float(obj.loss(np.zeros(2)))) for w, obj in parts]
        self.entropy_weight = float(entropy_weight)
        first = self.parts[0][1]
        self.u, self.labels, self.n, self.m = first.u, first.labels, first.n, first.m
        self.num_steps, self.device = first.num_steps, first.device

    def loss(self, log_ab) -> float:
        value = sum(w * float(obj.loss(log_ab)) / base for w, obj, base in self.parts)
        return float(value - self.entropy_weight * beta_entropy(log_ab)[0]) if self.entropy_weight else float(value)

    def hypergradient(self, log_ab) -> Tuple[float, np.ndarray]:
        value, grad = 0.0, np.zeros(2)
        for w, obj, base in self.parts:
            v, g = obj.hypergradient(log_ab)
            value, grad = value + w * v / base, grad + w * np.asarray(g) / base
        if self.entropy_weight:
            h, dh = beta_entropy(log_ab)
            value, grad = value - self.entropy_weight * h, grad - self.entropy_weight * dh
        return float(value), grad

    def subset_loss(self, rows: np.ndarray) -> float:
        return float(sum(w * obj.subset_loss(rows) / base for w, obj, base in self.parts))


def _outer_objective(
    features, logits, labels, u, ratio, train, val, loss: ProxyLoss, args: PolicyArguments, seed, device, coverage=None
):
    """The proxy KD objective alone (the default), or the mixture `args.objective` / `args.entropy_weight` ask for."""

    def proxy(f):
        return PolicyObjective(
            f[train], logits[train], labels[train], u[train], ratio, f[val], logits[val], labels[val],
            alpha=loss.alpha, temperature=loss.temperature, l2=loss.l2, inner_epochs=args.inner_epochs,
            inner_batch_size=args.inner_batch_size, inner_lr=args.inner_lr, stratify=args.stratify, device=device,
        )  # fmt: skip

    kd = proxy(features)
    if args.objective == "kd" and not args.entropy_weight:
        return kd
    parts = [(1.0, kd)]
    if args.objective == "kd+coverage" and args.coverage_weight > 0 and coverage is not None:
        rows = np.union1d(train, val)
        view = np.zeros((features.shape[0], coverage.shape[1]), dtype=np.float32)
        view[rows] = standardised(np.asarray(coverage[rows], dtype=np.float32))
        parts = [(1.0 - args.coverage_weight, kd), (args.coverage_weight, proxy(view))]
        parts = parts[1:] if args.coverage_weight == 1 else parts
    elif args.objective == "kd+coverage" and args.coverage_weight > 0:
        if args.coverage_dim >= features.shape[1]:
            raise ValueError(
                f"coverage_dim={args.coverage_dim} must be below the teacher's {features.shape[1]} features: a proxy "
                "on as many dimensions can still reproduce the teacher, so it would not measure coverage."
            )
        rows = np.union1d(train, val)  # sorted: one pass over a memory map
        kept_features = features[rows]
        coverage = []
        for view in range(args.coverage_views):
            projected = np.zeros((features.shape[0], args.coverage_dim), dtype=np.float32)
            projected[rows] = coverage_features(kept_features, args.coverage_dim, seed, view)
            coverage.append((args.coverage_weight / args.coverage_views, proxy(projected)))
        parts = coverage if args.coverage_weight == 1 else [(1.0 - args.coverage_weight, kd), *coverage]
    return OuterObjective(parts, args.entropy_weight)


def _learn_beta_policy(
    features, logits, labels, u, ratio, val_indices, loss: ProxyLoss, args: PolicyArguments, seed: int, device,
    coverage=None,
) -> PolicyLearningResult:
    start = time.perf_counter()
    features, logits, labels = _check_arrays(features, logits, labels)
    n = features.shape[0]
    u = _check_positions(u, n)
    ratio = check_ratio(ratio)
    val_indices = np.asarray(val_indices)
    if val_indices.ndim != 1 or val_indices.size == 0 or val_indices.dtype.kind not in "iu":
        raise ValueError(
            f"val_indices must be a non-empty 1-D integer array, got {val_indices.dtype} of shape {val_indices.shape}."
        )
    if val_indices.min() < 0 or val_indices.max() >= n or np.unique(val_indices).size != val_indices.size:
        raise ValueError(f"val_indices must be distinct row ids in [0, {n}).")

    rng = np.random.default_rng(seed)
    is_val = np.zeros(n, dtype=bool)
    is_val[val_indices] = True
    train = stratified_subsample(np.flatnonzero(~is_val), labels, args.subsample, rng)
    val = stratified_subsample(np.sort(val_indices), labels, args.val_subsample, rng)
    if coverage is not None and (coverage.ndim != 2 or coverage.shape[0] != n):
        raise ValueError(f"coverage must be an (n, k) array with n = {n} rows, got shape {coverage.shape}.")
    if coverage is None and args.uses_stage_view:
        raise ValueError(
            "coverage_view='stage' (policy_coverage_view) needs the teacher's middle-stage view of every row as "
            "`coverage`: `TeacherOutputs.coverage`, computed by `compute_teacher_outputs(coverage_stage=True)` (the "
            "pruner asks for it with policy_objective='kd+coverage', policy_coverage_view='stage'); got None."
        )
    if coverage is not None and args.objective != "kd+coverage":
        raise ValueError(f"coverage is the view of the 'kd+coverage' objective; policy_args.objective is {args.objective!r}.")
    objective = _outer_objective(features, logits, labels, u, ratio, train, val, loss, args, seed, device, coverage)

    # Outer loop: Adam on (log a, log b), from the uniform policy.
    log_box = (max(math.log(MIN_AB), -math.log(args.max_ab)), math.log(args.max_ab))
    theta = np.zeros(2)
    m1, m2 = np.zeros(2), np.zeros(2)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    history: List[Dict] = []
    for step in range(args.outer_steps):
        outer_loss, grad = objective.hypergradient(theta)
        history.append(
            {"step": step, "a": math.exp(theta[0]), "b": math.exp(theta[1]), "loss": outer_loss, "grad": grad.tolist()}
        )
        if step == args.outer_steps - 1:
            break
        m1 = beta1 * m1 + (1 - beta1) * grad
        m2 = beta2 * m2 + (1 - beta2) * grad**2
        theta = theta - args.outer_lr * (m1 / (1 - beta1 ** (step + 1))) / (
            np.sqrt(m2 / (1 - beta2 ** (step + 1))) + eps
        )
        theta = np.clip(theta, *log_box)
    best = min(history, key=lambda h: h["loss"])
    learned = BetaPolicy(best["a"], best["b"])
    learn_time = time.perf_counter() - start

    # Discrete check against uniform: same seeds, same budget, the head trained on each hard subset.
    u_train, labels_train = objective.u, objective.labels
    seeds = [seed + k for k in range(args.eval_seeds)]

    def discrete(policy: BetaPolicy) -> List[float]:
        subsets = [policy.select(u_train, ratio, labels_train, stratify=args.stratify, seed=s) for s in seeds]
        return [objective.subset_loss(rows) for rows in subsets]

    uniform_losses = discrete(BetaPolicy(1.0, 1.0))
    is_uniform = learned.a == 1.0 and learned.b == 1.0  # the best iterate was the starting point
    learned_losses = uniform_losses if is_uniform else discrete(learned)
    val_loss_uniform, val_loss_learned = float(np.mean(uniform_losses)), float(np.mean(learned_losses))
    fell_back = not is_uniform and not val_loss_learned < val_loss_uniform
    policy = BetaPolicy(1.0, 1.0) if fell_back else learned
    info = {
        "learned_a": learned.a,
        "learned_b": learned.b,
        "box": [math.exp(log_box[0]), math.exp(log_box[1])],
        "on_bound": bounds_reached((learned.a, learned.b), log_box),
        "best_step": best["step"],
        "soft_loss_uniform": history[0]["loss"],
        "soft_loss_learned": best["loss"],
        "val_losses_learned": learned_losses,
        "val_losses_uniform": uniform_losses,
        "eval_seeds": seeds,
        "num_train_rows": objective.n,
        "num_kept_rows": objective.m,
        "num_val_rows": int(val.size),
        "inner_steps": objective.num_steps,
        "learn_seconds": learn_time,
        "total_seconds": time.perf_counter() - start,
        "device": str(objective.device),
    }
    logger.info(
        "Beta policy at ratio %.2f: learned %r (soft loss %.4f vs uniform %.4f; discrete %.4f vs %.4f)%s in %.1fs",
        ratio, learned, best["loss"], history[0]["loss"], val_loss_learned, val_loss_uniform,
        ", fell back to uniform" if fell_back else "", info["total_seconds"],
    )  # fmt: skip
    return PolicyLearningResult(
        policy=policy,
        history=history,
        val_loss_learned=val_loss_learned,
        val_loss_uniform=val_loss_uniform,
        fell_back_to_uniform=fell_back,
        info=info,
    )
