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
