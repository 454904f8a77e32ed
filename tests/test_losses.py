import math

import pytest
import torch

from hf_ifbeta.losses import kd_loss, soft_target_kl


def naive_kd(s, t, y, alpha, tau):
    """Row-by-row reference written from the definition."""
    total = 0.0
    for i in range(s.shape[0]):
        pt = [math.exp(v / tau) for v in t[i].tolist()]
        ps = [math.exp(v / tau) for v in s[i].tolist()]
        pt = [v / sum(pt) for v in pt]
        ps = [v / sum(ps) for v in ps]
        kl = sum(a * math.log(a / b) for a, b in zip(pt, ps))
        e = [math.exp(v) for v in s[i].tolist()]
        ce = -math.log(e[y[i]] / sum(e))
        total += alpha * tau**2 * kl + (1 - alpha) * ce
    return total / s.shape[0]


@pytest.mark.parametrize("alpha,tau", [(0.9, 4.0), (0.5, 1.0), (1.0, 2.0), (0.0, 3.0)])
def test_kd_loss_matches_naive_reference(alpha, tau):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    y = torch.randint(0, 5, (6,), generator=g)
    loss, kd, ce = kd_loss(s, t, y, alpha=alpha, temperature=tau)
    assert loss.item() == pytest.approx(naive_kd(s, t, y.tolist(), alpha, tau), rel=1e-5)
    assert loss.item() == pytest.approx(alpha * kd.item() + (1 - alpha) * ce.item(), rel=1e-6)


def test_kd_loss_gradient_flows_to_student_only():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    kd_loss(s, t, torch.tensor([0, 1, 2, 0]))[0].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_kl_is_zero_for_identical_logits_and_positive_otherwise():
    x = torch.randn(5, 4)
    assert soft_target_kl(x, x, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_target_kl(x, x.flip(1), 4.0).item() > 0


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(alpha=1.5), "alpha"), (dict(temperature=0.0), "temperature"), (dict(reduction="avg"), "reduction")],
)
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]), **kwargs)


def test_class_count_mismatch_is_reported():
    with pytest.raises(ValueError, match="same classes"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 4), torch.tensor([0, 1]))
