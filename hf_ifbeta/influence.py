"""Influence of every training row on a validation KD loss, through a linear proxy head on teacher features.

The proxy head `f(h) = W h + b` acts on (optionally standardised) teacher features and is trained with the
student's own objective, the `ProxyLoss`,

    l_i = alpha * tau^2 * KL(softmax(z_i / tau) || softmax(f_i / tau)) + (1 - alpha) * CE(f_i, y_i),
    L(theta) = mean_{i in fit rows} l_i + l2 / 2 * ||W||^2 + BIAS_DAMPING / 2 * ||b||^2.

With `theta = [W | b]` (C, d + 1) and `x_i = [h_i; 1]`, everything the influence function needs is closed form
(`hf_ifbeta.losses`): `grad l_i = e_i x_i^T` with `e_i = d l_i / d f_i`, and `H = mean_i S_i (x) x_i x_i^T + reg`.
The score of row i is `s_i = g_V^T H^{-1} grad l_i`: the first-order *decrease* of the validation loss when row i
is up-weighted, so higher = more helpful. One solve `v = H^{-1} g_V` and one pass `s_i = e_i^T V x_i` give every
score in O(n C d).

This module runs the stages: check the inputs, scan and standardise the rows (`hf_ifbeta.arrays`), fit the head
with L-BFGS, build the solver chosen by `InfluenceArguments.hessian` (`hf_ifbeta.solvers`), solve for `g_V` and
score every row in one streamed pass. Every pass streams chunks of `chunk_size` rows, so features may be a
float16 `np.memmap` larger than memory.
"""

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Type

import numpy as np
import torch

from .arrays import ProxyData, Stream, ieee_float32, scan
from .distributed import resolve_device
from .losses import ProxyLoss, build_proxy_loss, row_terms, soft_targets
from .solvers import Solver, get_solver, resolve_solver

__all__ = ["InfluenceArguments", "InfluenceOutput", "influence_scores"]

logger = logging.getLogger(__name__)

# Max |grad| of the fitted proxy loss below which an out-of-budget L-BFGS fit is not worth a warning.
FIT_WARN_GRAD = 1e-5

# Damping on the bias: the objective has no L2 on b, and this keeps H positive definite along the
# bias-shift direction without changing the solution in any measurable way.
BIAS_DAMPING = 1e-8


@dataclass(frozen=True)
class InfluenceArguments:
    """How `influence_scores` fits, solves and streams; the loss itself is a `ProxyLoss`."""

    standardize: bool = field(
        default=True, metadata={"help": "Fit on features standardised with their mean / std over all rows."}
    )
    hessian: str = field(
        default="auto",
        metadata={
            "help": "Solver of H v = g_V (`hf_ifbeta.solvers.HESSIAN_MODES`): 'exact' (dense H, Cholesky), 'kfac' "
            "(EK-FAC-preconditioned CG on exact Hessian-vector products) or 'auto' (exact while "
            "C (d + 1) <= exact_max_params)."
        },
    )
    # Assembling the dense H costs n P^2 / 2 against about 4 n P per CG iteration, so past a few thousand
    # parameters the exact path is far dearer for the same scores (docs/concepts.md).
    exact_max_params: int = field(default=2_000, metadata={"help": "Size limit of the exact solver under 'auto'."})
    cg_max_iter: int = field(default=200, metadata={"help": "CG iterations of the kfac solver."})
    cg_tol: float = field(default=1e-6, metadata={"help": "Relative-residual target of the kfac solver."})
    fit_max_iter: int = field(default=200, metadata={"help": "L-BFGS iterations of the fit."})
    fit_subsample: Optional[int] = field(
        default=None, metadata={"help": "Fit (and take H) on this many random training rows; None: all of them."}
    )
    cross_fit: bool = field(
        default=True,
        metadata={
            "help": "With fit_subsample, score the subsample's own rows with a second head fitted (and solved) on a "
            "disjoint random subsample of the same size. A head fitted on a subsample nearly interpolates its own "
            "rows when it has many more parameters than they constrain, so their gradients, hence scores, are "
            "systematically small and depend on the subsample's seed; cross-fitting gives every row a score from a "
            "head that did not see it, at twice the cost of the fit and the solve."
        },
    )
    self_influence: bool = field(
        default=False, metadata={"help": "Also return grad l_i^T H^-1 grad l_i (EK-FAC approximation on kfac)."}
    )
    chunk_size: int = field(
        default=65_536,
        metadata={
            "help": "Rows read from the arrays at once (rounded down to a multiple of the compute block); bounds peak "
            "memory and does not change any result."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of fit_subsample."})
    device: Optional[Any] = field(
        default=None, metadata={"help": "Compute device; None: CUDA when available, else CPU."}
    )

    def __post_init__(self):
        if self.hessian != "auto":
            get_solver(self.hessian)  # an unknown name raises, listing the choices
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}.")
        if self.fit_subsample is not None and self.fit_subsample < 1:
            raise ValueError(f"fit_subsample must be >= 1 or None, got {self.fit_subsample}.")


@dataclass
class InfluenceOutput:
    """Influence scores of every row, and the fitted proxy head they come from.

    Args:
        scores (`np.ndarray`): (n,) `g_V^T H^{-1} grad l_i`, the first-order decrease of the validation loss
            when row i is up-weighted; higher = more helpful. Rows of the validation slice get scores too.
        self_influence (`np.ndarray`, *optional*): (n,) `grad l_i^T H^{-1} grad l_i` (EK-FAC approximation on
            the kfac path), when asked for.
        weight (`np.ndarray`): (C, d) fitted `W` in the standardised feature space.
        bias (`np.ndarray`): (C,) fitted `b`.
        mean (`np.ndarray`): (d,) feature mean of the standardisation (zeros when off).
        std (`np.ndarray`): (d,) feature std of the standardisation (ones when off).
        info (`Dict[str, Any]`): hessian path, fit and CG diagnostics, timings in seconds.
    """

    scores: np.ndarray
    self_influence: Optional[np.ndarray]
    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    info: Dict[str, Any] = field(default_factory=dict)

    def head_logits(self, features: np.ndarray) -> np.ndarray:
        """Proxy-head logits (n, C) of raw `features` (n, d), standardised as in the fit."""
        h = (np.asarray(features, dtype=np.float64) - self.mean) / self.std
        return h @ self.weight.T + self.bias


# ---------------------------------------------------------------------------------------------------------
# Fit
# ---------------------------------------------------------------------------------------------------------


def _reg_diag(d: int, l2: float, device) -> torch.Tensor:
    """(d + 1,) the regulariser's diagonal on one class row of theta: l2 on W, BIAS_DAMPING on b."""
    reg = torch.full((d + 1,), float(l2), dtype=torch.float64, device=device)
    reg[-1] = BIAS_DAMPING
    return reg


def _loss_and_grad(stream: Stream, theta: torch.Tensor, loss: ProxyLoss, reg) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean loss over the stream's rows plus the regulariser, and its gradient (C, d + 1), both float64."""
    total = torch.zeros((), dtype=torch.float64, device=theta.device)
    grad = torch.zeros_like(theta, dtype=torch.float64)
    for chunk in stream:
        rows_loss, e, _, _ = chunk.terms(loss, theta)
        total += rows_loss.sum(dtype=torch.float64)
        grad += (e.T @ chunk.x).to(torch.float64)  # (C, d + 1): sum_i e_i x_i^T
    total, grad = total / len(stream), grad / len(stream)
    theta64 = theta.to(torch.float64)
    return total + 0.5 * (reg * theta64**2).sum(), grad + reg * theta64


def _fit_head(
    stream: Stream, theta0, loss: ProxyLoss, reg, max_iter, grad_tol, change_tol
) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Full-batch L-BFGS (strong Wolfe) on the streamed objective, from theta0 (C, d + 1) float64."""
    # Class-centred: softmax ignores a shift shared by all classes (see `hf_ifbeta.solvers`).
    theta = (theta0 - theta0.mean(0, keepdim=True)).clone().requires_grad_(True)

    def closure():
        value, grad = _loss_and_grad(stream, theta.detach(), loss, reg)
        theta.grad = grad
        return value

    optimizer = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=max_iter,
        max_eval=int(max_iter * 1.5) + 10,
        tolerance_grad=grad_tol,
        tolerance_change=change_tol,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    if max_iter > 0:
        optimizer.step(closure)
    theta = theta.detach()
    theta = theta - theta.mean(0, keepdim=True)
    value, grad = _loss_and_grad(stream, theta, loss, reg)
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    iterations, evaluations = int(state.get("n_iter", 0)), int(state.get("func_evals", 0))
    grad_max = float(grad.abs().max())
    # L-BFGS also stops when the loss stops changing at working precision: converged as far as it can tell.
    out_of_budget = iterations >= max_iter or evaluations >= optimizer.param_groups[0]["max_eval"]
    info = {
        "fit_loss": float(value),
        "fit_grad_max": grad_max,
        "fit_iterations": iterations,
        "fit_evaluations": evaluations,
        # Below FIT_WARN_GRAD the scores no longer move: converged for our purpose even when L-BFGS spent its
        # budget chasing the float64 tolerance.
        "fit_converged": grad_max <= max(grad_tol, FIT_WARN_GRAD) or not out_of_budget,
    }
    if not info["fit_converged"]:
        logger.warning(
            f"Proxy head fit used its budget of {max_iter} L-BFGS iterations and stopped at max |grad| = "
            f"{grad_max:.3g}: raise fit_max_iter (or l2) for scores at a converged head."
        )
    return theta, info


def _initial_head(init_head, C, d, mean, std, device) -> torch.Tensor:
    """theta0 (C, d + 1) float64: zeros, or the teacher head (W, b) on raw features moved to the standardised space."""
    theta = torch.zeros(C, d + 1, dtype=torch.float64, device=device)
    if init_head is None:
        return theta
    W, b = (torch.as_tensor(np.asarray(a), dtype=torch.float64, device=device) for a in init_head)
    if W.shape != (C, d) or b.shape != (C,):
        raise ValueError(
            f"init_head must be (W ({C}, {d}), b ({C},)) for {C} classes and {d} features, "
            f"got W {tuple(W.shape)} and b {tuple(b.shape)}."
        )
    # W h + b = W (std * x + mean) + b  =>  W_std = W * std, b_std = b + W mean.
    theta[:, :d] = W * std
    theta[:, d] = b + W @ mean
    return theta


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------


def _check_inputs(features, logits, labels, val_indices):
    if not hasattr(features, "shape"):
        features = np.asarray(features)
    if not hasattr(logits, "shape"):
        logits = np.asarray(logits)
    labels = np.asarray(labels)
    if len(features.shape) != 2:
        raise ValueError(f"features must be 2-D (n, d), got shape {tuple(features.shape)}.")
    if len(logits.shape) != 2:
        raise ValueError(f"logits must be 2-D (n, C), got shape {tuple(logits.shape)}.")
    n, C = features.shape[0], logits.shape[1]
    if logits.shape[0] != n:
        raise ValueError(f"features {tuple(features.shape)} and logits {tuple(logits.shape)} differ in rows.")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) like the features' rows, got {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}.")
    if n and (labels.min() < 0 or labels.max() >= C):
        bad = int(np.flatnonzero((labels < 0) | (labels >= C))[0])
        raise ValueError(f"label {labels[bad]} of row {bad} is outside [0, {C}) (the logits have {C} classes).")
    val = np.asarray(val_indices)
    if val.ndim != 1 or len(val) == 0 or not np.issubdtype(val.dtype, np.integer):
        raise ValueError(
            f"val_indices must be a non-empty 1-D array of row ids, got {val.dtype} of shape {val.shape}."
        )
    if val.min() < 0 or val.max() >= n:
        raise ValueError(f"val_indices must lie in [0, {n}), got min {val.min()} and max {val.max()}.")
    if len(np.unique(val)) != len(val):
        raise ValueError("val_indices contain duplicates: the validation slice is a set of rows.")
    if len(val) >= n:
        raise ValueError(f"val_indices hold all {n} rows: nothing is left to fit the proxy head on.")
    # labels: one int64 per row in memory (8 bytes x n), so that memory-mapped labels need no paging.
    return features, logits, np.array(labels, dtype=np.int64), np.sort(val.astype(np.int64))


def _arguments(
    loss: Optional[ProxyLoss], args: Optional[InfluenceArguments], keywords: Dict[str, Any]
) -> Tuple[ProxyLoss, InfluenceArguments]:
    """The one place where `influence_scores`' keywords become a `ProxyLoss` and `InfluenceArguments`."""
    loss_fields = {k: keywords.pop(k) for k in list(keywords) if k in ProxyLoss.__dataclass_fields__}
    unknown = sorted(set(keywords) - set(InfluenceArguments.__dataclass_fields__))
    if unknown:
        choices = [*ProxyLoss.__dataclass_fields__, *InfluenceArguments.__dataclass_fields__, "init_head"]
        raise TypeError(f"influence_scores() got unknown keyword(s) {unknown}. Choose between {choices}.")
    if args is not None and keywords:
        raise ValueError(f"Pass the settings either as args={args} or as its fields {keywords}, not both.")
    return build_proxy_loss(loss, **loss_fields), args if args is not None else InfluenceArguments(**keywords)


def influence_scores(
    features: np.ndarray,
    logits: np.ndarray,
    labels: np.ndarray,
    val_indices: np.ndarray,
    *,
    proxy_loss: Optional[ProxyLoss] = None,
    args: Optional[InfluenceArguments] = None,
    init_head: Optional[Tuple[np.ndarray, np.ndarray]] = None,
    **keywords,
) -> InfluenceOutput:
    """Influence of every row on the validation KD loss of a linear proxy head on teacher features.

    Fits `theta* = [W | b]` on every row outside `val_indices` (or a random `fit_subsample` of them) with
    full-batch L-BFGS, then scores all n rows: `s_i = g_V^T H^{-1} grad l_i(theta*)`, where `g_V` is the
    gradient of the mean loss over the validation slice and H the Hessian of the fitted objective. With a
    `fit_subsample` (and `cross_fit`), the subsample's own rows are scored by a second head.

    Args:
        features (`np.ndarray`): (n, d) teacher pre-logit features, float32 or float16; may be a `np.memmap`.
        logits (`np.ndarray`): (n, C) teacher logits.
        labels (`np.ndarray`): (n,) class ids in [0, C).
        val_indices (`np.ndarray`): ids of the validation slice V: held out of the fit, defines `g_V`.
        proxy_loss (`ProxyLoss`, *optional*): the head's loss (alpha, temperature, l2 on the standardised-space
            weights); default `ProxyLoss()`.
        args (`InfluenceArguments`, *optional*): fit, solver and streaming settings; default
            `InfluenceArguments()`. Float32 products run in IEEE float32 whatever the TF32 setting.
        init_head (`Tuple[np.ndarray, np.ndarray]`, *optional*): warm start (W (C, d), b (C,)) acting on raw
            features, e.g. the teacher's own classifier.
        **keywords: the fields of `ProxyLoss` (`alpha`, `temperature`, `l2`) and of `InfluenceArguments`
            (`hessian`, `fit_subsample`, ...) one by one, in place of `proxy_loss` / `args`.

    Returns:
        [`InfluenceOutput`]

    Example:
    ```python
    >>> loss = ProxyLoss(alpha=0.9, temperature=4.0, l2=1e-3)
    >>> out = influence_scores(outputs.features, outputs.logits, outputs.labels, val_indices, proxy_loss=loss)
    >>> keep = np.argsort(-out.scores)[: len(out.scores) // 2]  # the most helpful half
    ```
    """
    loss, args = _arguments(proxy_loss, args, keywords)
    with ieee_float32():
        return _influence_scores(features, logits, labels, val_indices, loss, args, init_head)


def _influence_scores(features, logits, labels, val_indices, loss: ProxyLoss, args: InfluenceArguments,
                      init_head) -> InfluenceOutput:  # fmt: skip
    timings: Dict[str, float] = {}
    clock = time.perf_counter()
    features, logits, labels, val = _check_inputs(features, logits, labels, val_indices)
    device = resolve_device(args.device)
    n, d = features.shape
    C = logits.shape[1]
    P = C * (d + 1)
    solver = resolve_solver(args.hessian, P, args.exact_max_params)
    dtype = solver.dtype

    data = ProxyData(features, logits, labels, args.chunk_size, device, dtype)
    scan(data, args.standardize)
    timings["scan"] = time.perf_counter() - clock

    clock = time.perf_counter()
    train_rows = np.setdiff1d(np.arange(n, dtype=np.int64), val, assume_unique=True)
    fit_rows, second_rows = train_rows, None
    if args.fit_subsample is not None and args.fit_subsample < len(train_rows):
        rng = np.random.default_rng(args.seed)
        fit_rows = np.sort(rng.choice(train_rows, size=args.fit_subsample, replace=False))
        if args.cross_fit:
            # A second head on a disjoint subsample scores the first subsample's rows (see `cross_fit`).
            rest = np.setdiff1d(train_rows, fit_rows, assume_unique=True)
            second_rows = np.sort(rng.choice(rest, size=min(args.fit_subsample, len(rest)), replace=False))
    timings["gather"] = time.perf_counter() - clock

    head = _solve_head(data, fit_rows, val, loss, args, solver, init_head, timings)
    info: Dict[str, Any] = {
        "hessian": solver.name,
        "num_params": P,
        "n_rows": n,
        "n_fit": len(fit_rows),
        "n_val": len(val),
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(device),
        **head.info,
    }
    second = None
    if second_rows is not None and len(second_rows):
        clock = time.perf_counter()
        second_timings: Dict[str, float] = {}
        second = _solve_head(data, second_rows, val, loss, args, solver, init_head, second_timings)
        timings["cross_fit"] = time.perf_counter() - clock
        info["cross_fit"] = {"n_fit": len(second_rows), **second.info, "timings_s": second_timings}

    # Scores (and self-influence) of every row in one streamed pass: s_i = e_i^T V x_i; then the first fit
    # subsample's rows again, with the second head, when cross-fitting.
    clock = time.perf_counter()
    scores = np.empty(n, dtype=np.float64)
    self_inf = np.empty(n, dtype=np.float64) if args.self_influence else None
    _score_rows(data, np.arange(n, dtype=np.int64), head, scores, self_inf, loss)
    if second is not None:
        _score_rows(data, fit_rows, second, scores, self_inf, loss)
    timings["scores"] = time.perf_counter() - clock
    info["timings_s"] = timings

    theta = head.theta
    return InfluenceOutput(
        scores=scores,
        self_influence=self_inf,
        weight=theta[:, :d].cpu().numpy(),
        bias=theta[:, d].cpu().numpy(),
        mean=data.mean.cpu().numpy(),
        std=data.std.cpu().numpy(),
        info=info,
    )


@dataclass
class _Head:
    """A fitted head theta (C, d + 1), v = H^-1 g_V (C, d + 1), and its solver (for self-influence)."""

    theta: torch.Tensor
    v: torch.Tensor
    solver: Solver
    info: Dict[str, Any]


def _solve_head(data: ProxyData, fit_rows: np.ndarray, val: np.ndarray, loss: ProxyLoss, args: InfluenceArguments,
                solver: Type[Solver], init_head, timings) -> _Head:  # fmt: skip
    """Fit the head on `fit_rows`, take g_V on `val` and solve H v = g_V with H on `fit_rows`."""
    C, D, dtype, device = data.num_classes, data.d + 1, data.dtype, data.device
    reg = _reg_diag(data.d, loss.l2, device)
    clock = time.perf_counter()
    if len(fit_rows) < len(data.labels) - len(val):
        # A subsample is read from disk once and kept in memory with its per-row terms: the fit, the Hessian
        # and every CG iteration pass over it many times. Memory O(fit_subsample (d + 5 C)), not O(n).
        fit = data.subset(fit_rows).stream(np.arange(len(fit_rows)), keep=True)
    else:
        # All training rows: streamed from the (memory-mapped) arrays at every pass; kept only if one chunk.
        fit = data.stream(fit_rows, keep=len(fit_rows) <= data.chunk_size)
    timings["gather"] = timings.get("gather", 0.0) + time.perf_counter() - clock

    clock = time.perf_counter()
    theta0 = _initial_head(init_head, C, data.d, data.mean, data.std, device)
    # Tolerances at the working precision of the per-row maths (float64 or float32).
    grad_tol, change_tol = (1e-10, 1e-15) if dtype == torch.float64 else (1e-6, 1e-9)
    theta, info = _fit_head(fit, theta0, loss, reg, args.fit_max_iter, grad_tol, change_tol)
    timings["fit"] = time.perf_counter() - clock

    # g_V: gradient of the mean validation loss (no regulariser: it measures the validation objective).
    clock = time.perf_counter()
    g_val = torch.zeros(C, D, dtype=torch.float64, device=device)
    val_loss = 0.0
    for chunk in data.stream(val):
        rows_loss, e, _, _ = chunk.terms(loss, theta)
        g_val += (e.T @ chunk.x).to(torch.float64)
        val_loss += float(rows_loss.sum(dtype=torch.float64))
    g_val /= len(val)
    info["val_loss"] = val_loss / len(val)
    timings["val_grad"] = time.perf_counter() - clock

    clock = time.perf_counter()
    head_solver = solver(fit, theta, loss, reg, tol=args.cg_tol, max_iter=args.cg_max_iter)
    timings["hessian"] = time.perf_counter() - clock
    clock = time.perf_counter()
    v = head_solver.solve(g_val)
    info.update(head_solver.info)
    head_solver.release()  # the kept fit rows (and a dense H) are freed here
    timings["solve"] = time.perf_counter() - clock
    return _Head(theta=theta, v=v, solver=head_solver, info=info)


def _score_rows(data: ProxyData, rows: np.ndarray, head: _Head, scores, self_inf, loss: ProxyLoss) -> None:
    """`scores[rows] = e_i^T V x_i` (and self-influence) at `head`, streamed in chunks of the sorted `rows`."""
    C, dtype = data.num_classes, data.dtype
    theta_v = torch.cat([head.theta.to(dtype), head.v.to(dtype)])  # (2 C, d + 1): one matmul gives f_i and V x_i
    for chunk in data.stream(rows):
        ids = rows[chunk.index]
        f_and_vx = chunk.x @ theta_v.T  # (m, 2 C)
        chunk.targets = soft_targets(loss, chunk.z)
        _, e, _, _ = row_terms(loss, f_and_vx[:, :C], chunk.y, chunk.targets)
        scores[ids] = (e * f_and_vx[:, C:]).sum(1).cpu().numpy()
        del f_and_vx
        if self_inf is not None:
            self_inf[ids] = head.solver.self_influence(e, chunk.x).cpu().numpy()
