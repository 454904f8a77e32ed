import math

import pytest
import torch
import torch.nn.functional as F

from hf_ifbeta.losses import (
    ProxyLoss,
    apply_curvature,
    blended_target,
    classes_first_loss,
    curvature_terms,
    kd_loss,
    logit_grad,
    logit_grad_jvp,
    build_proxy_loss,
    row_terms,
    soft_target_kl,
    soft_targets,
)


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


# ---------------------------------------------------------------------------------------------------------
# The proxy-loss kernel, against kd_loss: value, autograd gradient and curvature, in both layouts
# ---------------------------------------------------------------------------------------------------------

KERNEL_CASES = [(0.9, 4.0), (0.5, 1.0), (1.0, 2.0), (0.0, 3.0)]


def kernel_problem(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    f = torch.randn(7, 4, generator=g, dtype=dtype) * 3
    z = torch.randn(7, 4, generator=g, dtype=dtype) * 3
    y = torch.randint(0, 4, (7,), generator=g)
    return f, z, y


def kd_rows(f, z, y, alpha, tau):
    """(m,) kd_loss of every row, differentiable in f (float32, as kd_loss computes)."""
    return kd_loss(f, z, y, alpha=alpha, temperature=tau, reduction="none")[0]


@pytest.mark.parametrize("alpha,tau", KERNEL_CASES)
def test_rows_first_kernel_matches_kd_loss_and_its_autograd(alpha, tau):
    f, z, y = kernel_problem()
    loss = ProxyLoss(alpha=alpha, temperature=tau)
    rows_loss, e, p, p_tau = row_terms(loss, f, y, soft_targets(loss, z))
    torch.testing.assert_close(rows_loss, kd_rows(f, z, y, alpha, tau).double(), rtol=1e-5, atol=1e-5)

    f32 = f.float().requires_grad_(True)
    (grad,) = torch.autograd.grad(kd_rows(f32, z.float(), y, alpha, tau).sum(), f32)
    torch.testing.assert_close(e, grad.double(), rtol=1e-4, atol=1e-5)

    # S_i = d^2 l_i / d f_i^2, applied through apply_curvature to the identity's columns
    terms = curvature_terms(loss, p, p_tau)
    for i in range(len(y)):
        hess = torch.autograd.functional.hessian(
            lambda row: kd_rows(row[None], z[i : i + 1].float(), y[i : i + 1], alpha, tau)[0], f[i].float()
        )
        row = [(w, q[i : i + 1]) for w, q in terms]
        S = torch.stack([apply_curvature(row, u[None])[0] for u in torch.eye(4, dtype=torch.float64)])
        torch.testing.assert_close(S, hess.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("alpha,tau", KERNEL_CASES)
def test_classes_first_kernel_matches_kd_loss_and_its_autograd(alpha, tau):
    f, z, y = kernel_problem()
    loss = ProxyLoss(alpha=alpha, temperature=tau)
    q = torch.softmax(z.T / tau, 0)  # (C, N)
    onehot = F.one_hot(y, 4).T.double()
    value = classes_first_loss(loss, f.T, q, torch.log_softmax(z.T / tau, 0), onehot)
    torch.testing.assert_close(value, kd_rows(f, z, y, alpha, tau).double(), rtol=1e-5, atol=1e-5)

    e, s_tau, s_1 = logit_grad(loss, f.T, blended_target(loss, q, onehot))
    f32 = f.float().requires_grad_(True)
    (grad,) = torch.autograd.grad(kd_rows(f32, z.float(), y, alpha, tau).sum(), f32)
    torch.testing.assert_close(e.T, grad.double(), rtol=1e-4, atol=1e-5)

    # The JVP of e along directions df (K, C, N) is the curvature applied to them: equal to the rows-first form.
    df = torch.randn(3, 4, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, _, p, p_tau = row_terms(loss, f, y, soft_targets(loss, z))
    expected = torch.stack([apply_curvature(curvature_terms(loss, p, p_tau), d.T).T for d in df])
    torch.testing.assert_close(logit_grad_jvp(loss, df, s_tau, s_1), expected, rtol=1e-10, atol=1e-12)


def test_proxy_loss_is_built_and_checked_in_one_place():
    assert build_proxy_loss() == ProxyLoss()
    assert build_proxy_loss(alpha=0.5, l2=None) == ProxyLoss(alpha=0.5)
    assert build_proxy_loss(ProxyLoss(temperature=2.0)).temperature == 2.0
    with pytest.raises(ValueError, match="either as proxy_loss="):
        build_proxy_loss(ProxyLoss(), alpha=0.5)
    with pytest.raises(TypeError, match=r"\['tau'\]. Choose between \['alpha', 'temperature', 'l2'\]"):
        build_proxy_loss(tau=2.0)
    for fields, match in ((dict(alpha=-0.1), "alpha"), (dict(temperature=0.0), "temperature"), (dict(l2=-1), "l2")):
        with pytest.raises(ValueError, match=match):
            build_proxy_loss(**fields)
