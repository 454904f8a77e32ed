"""Knowledge-distillation losses as pure functions of logits."""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["ProxyLoss", "kd_loss", "soft_target_kl"]


@dataclass(frozen=True)
class ProxyLoss:
    """The proxy head's training loss: `alpha * tau^2 * KL(teacher_tau || head_tau) + (1 - alpha) * CE + l2/2 |W|^2`."""

    alpha: float = 0.9
    temperature: float = 4.0
    l2: float = 1e-3


def soft_target_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, reduction: str = "mean"
) -> torch.Tensor:
    """`tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))` (Hinton et al., 2015).

    Args:
        student_logits (`torch.Tensor`): (N, C).
        teacher_logits (`torch.Tensor`): (N, C), no gradient flows into them.
        temperature (`float`): tau > 0.
        reduction (`str`): "mean" over rows, "sum", or "none" for a (N,) tensor.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * temperature**2  # (N,)
    return _reduce(kl, reduction)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: Optional[torch.Tensor],
    alpha: float = 0.9,
    temperature: float = 4.0,
    reduction: str = "mean",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`alpha * tau^2 * KL(teacher || student) + (1 - alpha) * CE(student, labels)`.

    Args:
        student_logits (`torch.Tensor`): (N, C).
        teacher_logits (`torch.Tensor`): (N, C).
        labels (`torch.Tensor`, *optional*): (N,) class ids; required unless `alpha == 1`.
        alpha (`float`): weight of the distillation term, in [0, 1].
        temperature (`float`): softmax temperature tau > 0.
        reduction (`str`): "mean", "sum" or "none".

    Returns:
        `(loss, kd, ce)`: the total and its two unweighted parts, each reduced the same way.

    Example:
    ```python
    >>> s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    >>> loss, kd, ce = kd_loss(s, t, y, alpha=0.9, temperature=4.0)
    ```
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ in shape: do the two models predict the same classes?"
        )
    kd = soft_target_kl(student_logits, teacher_logits, temperature, reduction="none")
    if labels is None:
        if alpha < 1.0:
            raise ValueError(f"labels are required when alpha < 1 (the cross-entropy term), got alpha={alpha}.")
        ce = torch.zeros_like(kd)
    else:
        ce = F.cross_entropy(student_logits.float(), labels, reduction="none")
    loss = alpha * kd + (1.0 - alpha) * ce
    return _reduce(loss, reduction), _reduce(kd, reduction), _reduce(ce, reduction)


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"Unknown reduction: {reduction}. Choose between ['mean', 'sum', 'none'].")


# ---------------------------------------------------------------------------------------------------------
# The proxy head's kernel: `ProxyLoss` in closed form on logits, for the influence solve and the policy's
# inner fit. With `p = softmax(f)`, `p_tau = softmax(f / tau)` and the teacher's `q = softmax(z / tau)`:
#
#     l = alpha * tau^2 * KL(q || p_tau) + (1 - alpha) * CE(f, y),
#     e = d l / d f = alpha * tau * (p_tau - q) + (1 - alpha) * (p - onehot(y)),
#     S = d^2 l / d f^2 = alpha * Cov(p_tau) + (1 - alpha) * Cov(p),     Cov(p) = diag(p) - p p^T.
#
# It comes in two layouts. Rows first (m, C) serves the influence solve, which streams rows and needs the loss
# value as well; classes first (C, N) serves the policy's unrolled inner steps, where a softmax over the leading
# dimension is the fast one. Each layout keeps its own order of floating-point operations because its caller's
# results depend on that order bit for bit.
# ---------------------------------------------------------------------------------------------------------


def build_proxy_loss(loss: Optional[ProxyLoss] = None, **fields) -> ProxyLoss:
    """The checked `ProxyLoss`, given whole or as its fields (`alpha`, `temperature`, `l2`; None leaves the default).

    Args:
        loss (`ProxyLoss`, *optional*): the loss; default `ProxyLoss()`.
        **fields: `alpha`, `temperature` or `l2`, instead of `loss`.
    """
    given = {name: value for name, value in fields.items() if value is not None}
    unknown = sorted(set(given) - set(ProxyLoss.__dataclass_fields__))
    if unknown:
        choices = list(ProxyLoss.__dataclass_fields__)
        raise TypeError(f"Unknown proxy-loss field(s) {unknown}. Choose between {choices}.")
    if loss is not None and given:
        raise ValueError(f"Pass the proxy loss either as proxy_loss={loss} or as its fields {given}, not both.")
    loss = ProxyLoss(**given) if loss is None else loss
    if not 0.0 <= loss.alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {loss.alpha}.")
    if loss.temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {loss.temperature}.")
    if loss.l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {loss.l2}.")
    return loss


def soft_targets(loss: ProxyLoss, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows first: the teacher's soft targets `q = softmax(z / tau)` (m, C) and `sum_c q log q` (m,)."""
    log_q = F.log_softmax(z / loss.temperature, dim=1)
    q = log_q.exp()
    return q, (q * log_q).sum(1)


def row_terms(
    loss: ProxyLoss, f: torch.Tensor, y: torch.Tensor, targets: Tuple[torch.Tensor, torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows first: loss, logit gradient and the two softmaxes of every row, in the dtype of `f`.

    `kd_loss` is the reference for the loss; it computes in float32, while the influence solve needs float64.

    Args:
        loss (`ProxyLoss`): alpha and temperature.
        f (`torch.Tensor`): (m, C) head logits.
        y (`torch.Tensor`): (m,) labels.
        targets (`Tuple[torch.Tensor, torch.Tensor]`): `soft_targets(loss, z)` of the teacher logits.

    Returns:
        `(l (m,), e (m, C), p (m, C), p_tau (m, C))`.
    """
    alpha, tau = loss.alpha, loss.temperature
    q, q_log_q = targets
    g = f - f.max(1, keepdim=True).values  # (m, C) <= 0: one shift serves both temperatures
    p = g.exp()
    norm = p.sum(1, keepdim=True)
    p /= norm
    if tau == 1.0:
        p_tau, norm_tau = p, norm
    else:
        p_tau = (g / tau).exp()
        norm_tau = p_tau.sum(1, keepdim=True)
        p_tau /= norm_tau
    # KL(q || p_tau) = sum q log q - sum q log p_tau, with log p_tau = g / tau - log norm_tau and sum q = 1.
    kl = q_log_q - (q * g).sum(1) / tau + norm_tau[:, 0].log()
    ce = norm[:, 0].log() - g.gather(1, y[:, None])[:, 0]
    rows_loss = alpha * tau**2 * kl + (1.0 - alpha) * ce
    e = alpha * tau * (p_tau - q) + (1.0 - alpha) * p
    e[torch.arange(len(y), device=y.device), y] -= 1.0 - alpha
    return rows_loss, e, p, p_tau


def curvature_terms(loss: ProxyLoss, p: torch.Tensor, p_tau: torch.Tensor):
    """Rows first: `S_i = sum_k w_k Cov(q_k)` as a list of `(w_k, q_k (m, C))`, dropping empty terms."""
    if loss.temperature == 1.0:
        return [(1.0, p)]
    return [(w, q) for w, q in ((loss.alpha, p_tau), (1.0 - loss.alpha, p)) if w > 0]


def apply_curvature(terms, u: torch.Tensor) -> torch.Tensor:
    """Rows first: `S_i u_i` for every row, u (m, C) -> (m, C), with `terms = curvature_terms(...)`."""
    out = torch.zeros_like(u)
    for w, q in terms:
        out += w * q * (u - (q * u).sum(1, keepdim=True))
    return out


def blended_target(loss: ProxyLoss, q: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """`alpha * tau * q + (1 - alpha) * onehot(y)`: the part of `e` that does not depend on the head (any layout)."""
    return loss.alpha * loss.temperature * q + (1.0 - loss.alpha) * onehot


def logit_grad(
    loss: ProxyLoss, f: torch.Tensor, target: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Classes first: `e` and the two softmaxes its derivative needs, all (C, N), from `blended_target`."""
    s_tau = torch.softmax(f / loss.temperature, 0)
    s_1 = torch.softmax(f, 0)
    e = torch.add(s_1 * (1.0 - loss.alpha), s_tau, alpha=loss.alpha * loss.temperature) - target
    return e, s_tau, s_1


def logit_grad_jvp(loss: ProxyLoss, df: torch.Tensor, s_tau: torch.Tensor, s_1: torch.Tensor) -> torch.Tensor:
    """Classes first: `S df`, the directional derivative of `e` along df (K, C, N), given the softmaxes (C, N)."""
    alpha = loss.alpha
    # d softmax(f / tau) . df = s (df - <s, df>) / tau; the 1 / tau cancels against alpha * tau
    mix = torch.add(s_1 * (1.0 - alpha), s_tau, alpha=alpha)  # (C, N)
    out = mix * df - s_tau * (alpha * (s_tau * df).sum(1, keepdim=True))
    if alpha < 1.0:
        out = out - s_1 * ((1.0 - alpha) * (s_1 * df).sum(1, keepdim=True))
    return out


def classes_first_loss(
    loss: ProxyLoss, f: torch.Tensor, q: torch.Tensor, log_q: torch.Tensor, onehot: torch.Tensor
) -> torch.Tensor:
    """Classes first: (N,) loss of every row from logits f (C, N), the teacher's `q` and `log q` and onehot(y)."""
    tau = loss.temperature
    log_s = torch.log_softmax(f / tau, 0)
    kd = (q * (log_q - log_s)).sum(0) * tau**2  # (N,)
    ce = -(onehot * torch.log_softmax(f, 0)).sum(0)
    return loss.alpha * kd + (1.0 - loss.alpha) * ce
