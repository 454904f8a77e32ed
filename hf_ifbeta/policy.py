"""Beta sampling policy over influence rank positions, and the bilevel objective that learns its (a, b).

Row i sits at rank position `u_i in (0, 1)` of its class (0 = least helpful, 1 = most helpful).
The policy `Beta(a, b)` gives it the weight `w_i = BetaPDF(u_i; a, b)` and keeps m rows drawn
without replacement in proportion to `w` (Gumbel-top-k), with per-class budgets. The family covers
uniform random (a = b = 1), keep-the-top (a >> b), keep-the-bottom (b >> a), keep-the-middle
(a, b > 1) and keep-both-tails (a, b < 1).

`PolicyObjective` is the loss by which `policy_learning.learn_beta_policy` picks (a, b): the validation KD
loss of a linear proxy head in teacher-feature space trained on the rows the policy keeps. The inner fit mirrors
the student's budget: from scratch, a number of steps proportional to the kept rows. The discrete subset is
relaxed into soft inclusion weights `q_i = min(1, c * w_i)` with `sum q_i = m`, and the hypergradient with
respect to (log a, log b) is the exact derivative of the unrolled inner steps, computed in forward mode (two
tangent directions carried through the loop: no stored trajectory, cost about 3 inner fits).
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .losses import ProxyLoss, blended_target, build_proxy_loss, classes_first_loss, logit_grad, logit_grad_jvp
from .selection import check_labels, check_ratio, class_budgets, class_rows, gumbel_top_k, num_kept, select_per_class

__all__ = ["BetaPolicy", "PolicyObjective", "beta_entropy", "rank_positions"]

# Weights below exp(-700) of the largest are floored there: every row keeps a positive weight,
# so the soft budget is always reachable (float64 exp underflows at about -745).
_LOG_WEIGHT_FLOOR = -700.0


def rank_positions(
    scores: Union[np.ndarray, Sequence[float]], labels: Optional[np.ndarray] = None, stratify: bool = True
) -> np.ndarray:
    """Rank positions `u_i = (rank_i + 0.5) / n_c` in (0, 1): 0 = least helpful, 1 = most helpful.

    Args:
        scores (`np.ndarray`): (n,) finite scores, higher = more helpful.
        labels (`np.ndarray`, *optional*): (n,) class ids; with `stratify`, rows are ranked within their class.
        stratify (`bool`): rank within each class (needs `labels`); otherwise over all rows.

    Returns:
        `np.ndarray`: (n,) float64. Ties are broken by row index (the earlier row ranks lower).

    Example:
    ```python
    >>> rank_positions(np.array([0.3, -1.0, 2.0, 0.0]), labels=np.array([0, 0, 1, 1]))
    array([0.75, 0.25, 0.75, 0.25])
    ```
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {scores.shape}.")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"scores must be finite; found {int((~np.isfinite(scores)).sum())} NaN / inf values.")
    n = scores.size
    if stratify and labels is not None:
        labels = check_labels(labels, n)
        # lexsort is stable: sorted by label, then by score, ties by row index
        order = np.lexsort((scores, labels))
        counts = np.bincount(labels)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        sorted_labels = labels[order]
        rank = np.arange(n) - starts[sorted_labels]  # (n,) rank within the class, in sorted order
        u = np.empty(n)
        u[order] = (rank + 0.5) / counts[sorted_labels]
        return u
    order = np.argsort(scores, kind="stable")
    u = np.empty(n)
    u[order] = (np.arange(n) + 0.5) / n
    return u


def beta_entropy(log_ab) -> Tuple[float, np.ndarray]:
    """Differential entropy of Beta(a, b) and its gradient in (log a, log b); 0 at the uniform policy, its maximum."""
    from scipy.special import betaln, digamma, polygamma

    a, b = np.exp(np.asarray(log_ab, dtype=np.float64))
    entropy = betaln(a, b) - (a - 1) * digamma(a) - (b - 1) * digamma(b) + (a + b - 2) * digamma(a + b)
    common = (a + b - 2) * polygamma(1, a + b)
    grad = np.array([a * (common - (a - 1) * polygamma(1, a)), b * (common - (b - 1) * polygamma(1, b))])
    return float(entropy), grad


@dataclass
class BetaPolicy:
    """Sampling policy `w_i = BetaPDF(u_i; a, b)` over rank positions `u_i in (0, 1)`.

    Args:
        a (`float`): > 0; a > b leans towards the most helpful rows (u near 1).
        b (`float`): > 0; b > a leans towards the least helpful rows (u near 0).

    Example:
    ```python
    >>> u = rank_positions(scores, labels)
    >>> kept = BetaPolicy(a=4.0, b=1.0).select(u, ratio=0.7, labels=labels, seed=0)  # sorted row ids
    ```
    """

    a: float = 1.0
    b: float = 1.0

    def __post_init__(self):
        for name in ("a", "b"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise ValueError(f"{name} must be a positive number, got {value!r}.")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}.")
            setattr(self, name, float(value))

    def log_weights(self, u: np.ndarray) -> np.ndarray:
        """`log BetaPDF(u; a, b)`, (n,) float64, computed with `lgamma` (stable for a, b in [0.05, 100])."""
        u = _check_positions(u)
        log_beta_fn = math.lgamma(self.a) + math.lgamma(self.b) - math.lgamma(self.a + self.b)
        return (self.a - 1.0) * np.log(u) + (self.b - 1.0) * np.log1p(-u) - log_beta_fn

    def mean(self) -> float:
        """Mean rank position of the Beta distribution, `a / (a + b)` (0.5 = no lean)."""
        return self.a / (self.a + self.b)

    def select(
        self,
        u: np.ndarray,
        ratio: float,
        labels: Optional[np.ndarray] = None,
        stratify: bool = True,
        seed: int = 0,
    ) -> np.ndarray:
        """Keep `m = round((1 - ratio) * n)` rows drawn without replacement in proportion to the weights.

        Gumbel-top-k (`selection.gumbel_top_k`): row i gets the key `log w_i + G_i` with `G_i ~ Gumbel(0, 1)`
        i.i.d., and the m largest keys are kept (per class, with `class_budgets`, when stratified). This is
        exactly sequential sampling without replacement proportional to `w`.

        Args:
            u (`np.ndarray`): (n,) rank positions in (0, 1).
            ratio (`float`): fraction of rows to remove, in (0, 1).
            labels (`np.ndarray`, *optional*): (n,) class ids, needed for per-class budgets.
            stratify (`bool`): keep each class's share of the budget (needs `labels`).
            seed (`int`): the same seed gives the same rows.

        Returns:
            `np.ndarray`: sorted int64 ids of the kept rows.
        """
        u = _check_positions(u)
        n = u.size
        m = num_kept(n, ratio)
        stratify = stratify and labels is not None
        labels = check_labels(labels, n) if stratify else np.zeros(n, dtype=np.int64)
        pick = gumbel_top_k(self.log_weights(u), np.random.default_rng(seed), draw="rows")
        return select_per_class(labels, m, stratify, pick)

    def to_dict(self) -> Dict[str, float]:
        return {"a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BetaPolicy":
        missing = [k for k in ("a", "b") if k not in d]
        if missing:
            raise ValueError(f"a BetaPolicy dict needs keys 'a' and 'b'; missing {missing} in {d}.")
        return cls(a=d["a"], b=d["b"])

    def __repr__(self) -> str:
        return f"BetaPolicy(a={self.a:.4g}, b={self.b:.4g})"


class PolicyObjective:
    """The outer objective of the bilevel problem as a function of `log_ab = (log a, log b)`.

    `loss(log_ab)` = mean KD loss on the validation rows of a linear head `f(h) = W h + b` trained
    from zeros on the training rows with soft inclusion weights `q(a, b)`:
    `sum_i q_i l_i / sum_i q_i + l2/2 ||W||^2`, for `T = ceil(inner_epochs * m / inner_batch_size)`
    full-batch gradient steps with heavy-ball momentum 0.9. Full-batch steps make the objective
    deterministic: the soft weights stand in for minibatch sampling, and T still counts the
    student's epochs over the kept rows, so it grows with m.

    Args:
        features (`np.ndarray`): (n, d) teacher features of the training rows (standardised here).
        logits (`np.ndarray`): (n, C) teacher logits.
        labels (`np.ndarray`): (n,) class ids.
        u (`np.ndarray`): (n,) rank positions in (0, 1).
        ratio (`float`): fraction of the rows to remove, in (0, 1).
        val_features, val_logits, val_labels (`np.ndarray`): the validation rows.
        proxy_loss (`ProxyLoss`, *optional*): the KD-aligned proxy loss; default `ProxyLoss()`.
        alpha, temperature, l2 (`float`, *optional*): the fields of `proxy_loss`, accepted one by one in its place.
        inner_epochs (`float`), inner_batch_size (`int`), inner_lr (`float`), momentum (`float`): the inner budget.
        stratify (`bool`): per-class soft budgets (`class_budgets`).
        standardize (`bool`): standardise features with the training rows' mean and std.
        dtype (`torch.dtype`): float32 for speed, float64 for derivative checks.
        device: torch device.
    """

    def __init__(
        self,
        features,
        logits,
        labels,
        u,
        ratio: float,
        val_features,
        val_logits,
        val_labels,
        *,
        proxy_loss: Optional[ProxyLoss] = None,
        alpha: Optional[float] = None,
        temperature: Optional[float] = None,
        l2: Optional[float] = None,
        inner_epochs: float = 15.0,
        inner_batch_size: int = 128,
        inner_lr: float = 0.1,
        momentum: float = 0.9,
        stratify: bool = True,
        standardize: bool = True,
        dtype: torch.dtype = torch.float32,
        device=None,
    ):
        features, logits, labels = _check_arrays(features, logits, labels)
        val_features, val_logits, val_labels = _check_arrays(val_features, val_logits, val_labels, prefix="val_")
        if val_features.shape[1] != features.shape[1] or val_logits.shape[1] != logits.shape[1]:
            raise ValueError(
                f"validation rows have {val_features.shape[1]} features / {val_logits.shape[1]} classes, training "
                f"rows {features.shape[1]} / {logits.shape[1]}: they must match."
            )
        self.u = _check_positions(u, features.shape[0])
        self.ratio = check_ratio(ratio)
        proxy_loss = build_proxy_loss(proxy_loss, alpha=alpha, temperature=temperature, l2=l2)
        budget = {"inner_epochs": inner_epochs, "inner_batch_size": inner_batch_size, "inner_lr": inner_lr}
        for name, value in budget.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}.")
        self.proxy_loss = ProxyLoss(float(proxy_loss.alpha), float(proxy_loss.temperature), float(proxy_loss.l2))
        self.lr, self.momentum = float(inner_lr), float(momentum)
        self.dtype, self.device = dtype, torch.device(device) if device is not None else torch.device("cpu")

        n, C = logits.shape
        self.n, self.num_classes = n, max(C, int(labels.max()) + 1, int(val_labels.max()) + 1)
        if self.num_classes != C:
            raise ValueError(f"labels go up to {self.num_classes - 1} but the logits have only {C} classes.")
        self.m = num_kept(n, self.ratio)
        self.num_steps = int(math.ceil(inner_epochs * self.m / inner_batch_size))
        self.labels = labels

        # Soft-budget groups: per class (class_budgets) or all rows.
        if stratify:
            budgets = class_budgets(labels, self.m)
            self.groups = [(rows, int(budgets[c])) for c, rows in enumerate(class_rows(labels)) if rows.size]
        else:
            self.groups = [(np.arange(n), self.m)]
        self.stratify = stratify

        if standardize:
            mean = features.mean(0)
            std = features.std(0)
            std = np.where(std > 1e-12, std, 1.0)
        else:
            mean, std = np.zeros(features.shape[1]), np.ones(features.shape[1])
        # classes-first layout throughout: (d + 1, n) features with a row of ones (bias), (C, n) targets
        self.xt = self._design(features, mean, std)
        self.x = self.xt.T.contiguous()  # (n, d + 1) too: reductions over rows are faster on it
        self.xt_val = self._design(val_features, mean, std)
        p_teacher, onehot = self._targets(logits, labels)
        self.target = blended_target(self.proxy_loss, p_teacher, onehot)  # (C, n)
        self.p_teacher_val, self.onehot_val = self._targets(val_logits, val_labels)
        self.target_val = blended_target(self.proxy_loss, self.p_teacher_val, self.onehot_val)
        self.log_p_teacher_val = torch.log_softmax(self._t(val_logits).T / self.proxy_loss.temperature, 0)
        # L2 acts on W only, not on the bias column
        self.reg_mask = torch.ones(1, self.xt.shape[0], dtype=dtype, device=self.device)
        self.reg_mask[0, -1] = 0.0
        # d log w_i / d (log a, log b) = (a log u_i, b log(1 - u_i)); the log-normaliser cancels in q
        self._log_u = torch.as_tensor(np.log(self.u), dtype=torch.float64)
        self._log_1mu = torch.as_tensor(np.log1p(-self.u), dtype=torch.float64)

    # ---------------------------------------------------------------- data
    def _t(self, x) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=self.dtype, device=self.device)

    def _design(self, features, mean, std) -> torch.Tensor:
        x = (np.asarray(features, dtype=np.float64) - mean) / std
        return self._t(np.concatenate([x, np.ones((x.shape[0], 1))], axis=1).T.copy())  # (d + 1, n)

    def _targets(self, logits, labels) -> Tuple[torch.Tensor, torch.Tensor]:
        p = torch.softmax(self._t(logits).T / self.proxy_loss.temperature, 0)  # (C, n)
        onehot = torch.nn.functional.one_hot(torch.as_tensor(labels, device=self.device), self.num_classes)
        return p.contiguous(), onehot.T.to(self.dtype).contiguous()

    # ---------------------------------------------------------------- soft weights
    def soft_weights(self, log_ab) -> torch.Tensor:
        """`q_i = min(1, c_g * w_i)` with `sum_{i in g} q_i = m_g` per group g, (n,) float64.

        Differentiable (torch autograd) in `log_ab` when it is a tensor that requires grad. The
        saturated rows (q = 1) are found without grad; on the others `q = (m_g - |S_g|) *
        softmax(log w)`, the closed form of c_g.
        """
        log_ab = torch.as_tensor(log_ab, dtype=torch.float64)
        a, b = log_ab.exp().unbind()
        log_w = (a - 1.0) * self._log_u + (b - 1.0) * self._log_1mu  # (n,) up to the Beta normaliser
        q = torch.zeros(self.n, dtype=torch.float64)
        for rows, budget in self.groups:
            saturated, free = _saturation(log_w.detach().numpy()[rows], budget)
            q = q.index_put((torch.as_tensor(rows[saturated]),), torch.ones(saturated.size, dtype=torch.float64))
            if free.size:
                rows_free = torch.as_tensor(rows[free])
                q = q.index_put((rows_free,), (budget - saturated.size) * torch.softmax(log_w[rows_free], 0))
        return q

    def soft_weights_and_jacobian(self, log_ab) -> Tuple[np.ndarray, np.ndarray]:
        """`q` (n,) and its Jacobian `dq / d(log a, log b)` (n, 2), analytically, in float64."""
        log_a, log_b = (float(v) for v in np.asarray(log_ab, dtype=np.float64))
        a, b = math.exp(log_a), math.exp(log_b)
        log_u, log_1mu = self._log_u.numpy(), self._log_1mu.numpy()
        log_w = (a - 1.0) * log_u + (b - 1.0) * log_1mu
        g = np.stack([a * log_u, b * log_1mu], axis=1)  # (n, 2) d log w / d log_ab
        q, jac = np.zeros(self.n), np.zeros((self.n, 2))
        for rows, budget in self.groups:
            saturated, free = _saturation(log_w[rows], budget)
            q[rows[saturated]] = 1.0
            if free.size:
                rf = rows[free]
                p = np.exp(log_w[rf] - log_w[rf].max())
                p /= p.sum()  # softmax over the unsaturated rows
                q[rf] = (budget - saturated.size) * p
                # d q_i = q_i (g_i - sum_j p_j g_j) on the unsaturated rows; saturated rows stay at 1
                jac[rf] = q[rf, None] * (g[rf] - p @ g[rf])
        return q, jac

    # ---------------------------------------------------------------- inner fit
    def inner_fit(
        self, q: torch.Tensor, dq: Optional[torch.Tensor] = None, rows: Optional[np.ndarray] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Train the head from zeros on the q-weighted loss for `num_steps` steps.

        Args:
            q (`torch.Tensor`): (N,) row weights (N = n, or len(rows)); autograd flows through it.
            dq (`torch.Tensor`, *optional*): (N, K) tangents of q; then the tangents of W are carried along.
            rows (`np.ndarray`, *optional*): train on these rows only (a hard subset), q over them.

        Returns:
            `(W, dW)`: (C, d + 1) weights (last column = bias) and (K, C, d + 1) tangents (or None).
        """
        if rows is None:
            x, xt, target = self.x, self.xt, self.target
        else:
            rows = torch.as_tensor(rows, device=self.device)
            x, xt, target = self.x[rows], self.xt[:, rows], self.target[:, rows]
        N, D = x.shape
        C = self.num_classes
        q = q.to(self.dtype)
        total = q.sum()
        qn = q / total  # (N,) normalised weights, fixed over the steps
        xq = x * qn[:, None]  # (N, D): the gradient of the weighted mean loss is e @ xq
        reg = self.proxy_loss.l2 * self.reg_mask  # (1, D)
        w = torch.zeros(C, D, dtype=self.dtype, device=self.device)
        v = torch.zeros_like(w)
        if dq is not None:
            K = dq.shape[1]
            dq = dq.to(self.dtype)
            # d(q / sum q) = dq / Q - q dQ / Q^2, laid out (K, 1, N)
            dqn = (dq / total - qn[:, None] * (dq.sum(0) / total)).T.contiguous()[:, None, :]
            dw = torch.zeros(K, C, D, dtype=self.dtype, device=self.device)
            dv = torch.zeros_like(dw)
        mu, lr = self.momentum, self.lr
        for _ in range(self.num_steps):
            f = w @ xt  # (C, N) logits
            e, s_tau, s_1 = logit_grad(self.proxy_loss, f, target)  # classes first: (C, N) each
            grad = e @ xq + reg * w  # (C, D)
            if dq is not None:
                df = (dw.view(K * C, D) @ xt).view(K, C, N)
                de = logit_grad_jvp(self.proxy_loss, df, s_tau, s_1)  # (K, C, N)
                r = dqn * e + qn * de  # (K, C, N): tangent of qn * e
                dgrad = (r.view(K * C, N) @ x).view(K, C, D) + reg * dw
                dv = mu * dv + dgrad
                dw = dw - lr * dv
            v = mu * v + grad
            w = w - lr * v
        return w, (dw if dq is not None else None)

    def validation_loss(self, w: torch.Tensor, dw: Optional[torch.Tensor] = None):
        """Mean validation KD loss of the head `w` (C, d + 1), and its tangents (K,) along `dw`."""
        f = w @ self.xt_val  # (C, V)
        rows_loss = classes_first_loss(self.proxy_loss, f, self.p_teacher_val, self.log_p_teacher_val, self.onehot_val)
        loss = rows_loss.mean()
        if dw is None:
            return loss, None
        e, _, _ = logit_grad(self.proxy_loss, f, self.target_val)  # (C, V)
        df = dw @ self.xt_val  # (K, C, V)
        return loss, (df * e).sum((1, 2)) / f.shape[1]

    # ---------------------------------------------------------------- the outer objective
    def loss(self, log_ab) -> Union[float, torch.Tensor]:
        """The outer loss at `log_ab`; a tensor differentiable by autograd when `log_ab` requires grad."""
        if isinstance(log_ab, torch.Tensor) and log_ab.requires_grad:
            w, _ = self.inner_fit(self.soft_weights(log_ab).to(self.device))
            return self.validation_loss(w)[0]
        with torch.no_grad():
            w, _ = self.inner_fit(self.soft_weights(log_ab).to(self.device))
            return float(self.validation_loss(w)[0])

    def hypergradient(self, log_ab) -> Tuple[float, np.ndarray]:
        """`(loss, d loss / d(log a, log b))`: exact derivative of the unrolled inner steps (forward mode)."""
        q, jac = self.soft_weights_and_jacobian(log_ab)
        with torch.no_grad():
            w, dw = self.inner_fit(self._t(q), self._t(jac))
            loss, dloss = self.validation_loss(w, dw)
        return float(loss), dloss.double().cpu().numpy()

    def subset_loss(self, rows: np.ndarray) -> float:
        """Validation loss of the head trained on a hard subset (row ids into the training rows), same budget."""
        rows = np.asarray(rows, dtype=np.int64)
        with torch.no_grad():
            w, _ = self.inner_fit(torch.ones(rows.size, dtype=self.dtype, device=self.device), rows=rows)
            return float(self.validation_loss(w)[0])


# -------------------------------------------------------------------- helpers
def _saturation(log_w: np.ndarray, budget: int) -> Tuple[np.ndarray, np.ndarray]:
    """Split a group's rows into saturated (q = 1) and free ones for `q = min(1, c w)`, `sum q = budget`.

    With weights sorted descending and k rows saturated, `c_k = (budget - k) / sum_{j >= k} w_(j)`;
    the solution is the smallest k with `c_k w_(k) <= 1` (then `c_k w_(k-1) > 1` holds too, so the
    split is consistent, and it is unique).

    Returns:
        `(saturated, free)`: positions into `log_w`.
    """
    size = log_w.size
    if budget >= size:
        return np.arange(size), np.arange(0)
    if budget <= 0:  # a class too small for a share of the budget: every q stays 0
        return np.arange(0), np.arange(0)
    order = np.argsort(-log_w, kind="stable")
    w = np.exp(np.maximum(log_w[order] - log_w[order[0]], _LOG_WEIGHT_FLOOR))  # (size,) descending, w[0] = 1
    tail = np.cumsum(w[::-1])[::-1]  # tail[k] = sum_{j >= k} w[j]
    k = np.arange(budget)
    fits = (budget - k) * w[:budget] <= tail[:budget]  # c_k w_(k) <= 1
    num_saturated = int(np.argmax(fits))  # fits[budget - 1] is always true
    return order[:num_saturated], order[num_saturated:]


def _check_positions(u, n: Optional[int] = None) -> np.ndarray:
    u = np.asarray(u, dtype=np.float64)
    if u.ndim != 1 or u.size == 0:
        raise ValueError(f"u must be a non-empty 1-D array of rank positions, got shape {u.shape}.")
    if n is not None and u.size != n:
        raise ValueError(f"u has {u.size} rows but the data has {n}.")
    if not np.all((u > 0.0) & (u < 1.0)):
        raise ValueError(
            f"u must lie in the open interval (0, 1) (use rank_positions); got values in [{u.min()}, {u.max()}]."
        )
    return u


def _check_arrays(features, logits, labels, prefix: str = ""):
    features = np.asarray(features)
    logits = np.asarray(logits)
    if features.ndim != 2:
        raise ValueError(f"{prefix}features must be (n, d), got shape {features.shape}.")
    if logits.ndim != 2 or logits.shape[0] != features.shape[0]:
        raise ValueError(f"{prefix}logits must be (n, C) with n = {features.shape[0]}, got shape {logits.shape}.")
    labels = check_labels(labels)
    if labels.size != features.shape[0]:
        raise ValueError(f"{prefix}labels has {labels.size} rows but {prefix}features has {features.shape[0]}.")
    return features, logits, labels
