"""Inverse-Hessian solvers on a tiny dense problem: H and H V against autograd, every solver's solve(g) against
torch.linalg.solve, self-influence, and the registry of names."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_ifbeta.arrays import ProxyData
from hf_ifbeta.losses import ProxyLoss
from hf_ifbeta.solvers import (
    HESSIAN_MODES,
    SOLVERS,
    ExactSolver,
    KfacSolver,
    dense_hessian,
    get_solver,
    hvp,
    resolve_solver,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

C, d = 3, 4
D, P = d + 1, C * (d + 1)


def problem(dtype=torch.float64, n=60, seed=0):
    """Rows streamed in blocks of 16 rows (so several blocks), a random head theta (C, D) and the reg diagonal."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, d)).astype(np.float32)
    z = (h @ rng.normal(size=(d, C)) * 2).astype(np.float32)
    y = rng.integers(0, C, n)
    data = ProxyData(h, z, y, 16, torch.device("cpu"), dtype)
    theta = torch.as_tensor(rng.normal(size=(C, D)) * 0.5)
    reg = torch.full((D,), 0.05, dtype=torch.float64)
    reg[-1] = 1e-8
    x = torch.cat([torch.as_tensor(h, dtype=torch.float64), torch.ones(n, 1, dtype=torch.float64)], 1)
    return data.stream(np.arange(n)), theta, reg, (x, torch.as_tensor(z, dtype=torch.float64), torch.as_tensor(y))


def reference_hessian(theta, reg, rows, loss):
    """(P, P) Hessian of mean_i l_i + 1/2 sum reg theta^2 by autograd, from the definition of the loss."""
    x, z, y = rows
    tau, alpha = loss.temperature, loss.alpha

    def objective(flat):
        f = x @ flat.reshape(C, D).T
        q = F.softmax(z / tau, 1)
        kl = (q * (q.log() - F.log_softmax(f / tau, 1))).sum(1) * tau**2
        ce = -F.log_softmax(f, 1)[torch.arange(len(y)), y]
        return (alpha * kl + (1 - alpha) * ce).mean() + 0.5 * (reg * flat.reshape(C, D) ** 2).sum()

    return torch.autograd.functional.hessian(objective, theta.reshape(-1))


def gauged(hess, kappa=1.0):
    """H + kappa (1 1^T / C) (x) I: equal to H on class-centred vectors, and well conditioned off them, so the
    reference solve is not spoilt by the bias direction that only BIAS_DAMPING-sized reg lifts."""
    return hess + kappa * torch.kron(torch.full((C, C), 1.0 / C, dtype=hess.dtype), torch.eye(D, dtype=hess.dtype))


def centred(g, classes_dim=0):
    """A gradient-like direction: sums to zero over classes, like every gradient of the softmax loss."""
    return g - g.mean(classes_dim, keepdim=True)


@pytest.mark.parametrize("loss", [ProxyLoss(0.9, 4.0), ProxyLoss(0.3, 1.0)])
def test_dense_hessian_and_hvp_match_autograd(loss):
    stream, theta, reg, rows = problem()
    hess = reference_hessian(theta, reg, rows, loss)
    torch.testing.assert_close(dense_hessian(stream, theta, object(), loss, reg), hess, rtol=1e-10, atol=1e-12)
    V = torch.randn(C, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    hv = hvp(stream, theta, object(), V, loss, reg, kappa=0.0)
    torch.testing.assert_close(hv.reshape(-1), hess @ V.reshape(-1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_solver_solves_against_torch_linalg_solve(name):
    solver_class = get_solver(name)
    loss = ProxyLoss(0.9, 4.0)
    stream, theta, reg, rows = problem(solver_class.dtype)
    # The kfac solver's per-row maths are float32: its products, hence its residual, are exact to float32 only.
    tol = 1e-12 if solver_class.dtype == torch.float64 else 1e-6
    solver = solver_class(stream, theta, loss, reg, tol=tol, max_iter=200)
    g = centred(torch.randn(C, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    expected = torch.linalg.solve(gauged(reference_hessian(theta, reg, rows, loss)), g.reshape(-1)).reshape(C, D)
    v = solver.solve(g)
    rtol = 1e-9 if solver_class.dtype == torch.float64 else 1e-5
    torch.testing.assert_close(v, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))
    assert solver.info["residual"] <= max(tol, 1e-12)
    assert solver.info["cg_iterations"] == 0 if name == "exact" else solver.info["cg_iterations"] > 0

    # After release the fit rows are gone and the self-influence still works.
    solver.release()
    assert solver.rows is None
    e = centred(torch.randn(6, C, generator=torch.Generator().manual_seed(4), dtype=solver_class.dtype), 1)
    x = torch.randn(6, D, generator=torch.Generator().manual_seed(5), dtype=solver_class.dtype)
    influence = solver.self_influence(e, x)
    assert influence.shape == (6,) and bool((influence > 0).all())


def test_exact_self_influence_is_the_quadratic_form_of_the_inverse():
    loss = ProxyLoss(0.5, 2.0)
    stream, theta, reg, rows = problem()
    solver = ExactSolver(stream, theta, loss, reg, tol=0.0, max_iter=0)
    hess = gauged(reference_hessian(theta, reg, rows, loss))
    e = centred(torch.randn(5, C, generator=torch.Generator().manual_seed(6), dtype=torch.float64), 1)
    x = torch.randn(5, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    grads = (e[:, :, None] * x[:, None, :]).reshape(5, P)  # (m, P): grad l_i = e_i x_i^T
    expected = (grads * torch.linalg.solve(hess, grads.T).T).sum(1)
    torch.testing.assert_close(solver.self_influence(e, x), expected, rtol=1e-9, atol=1e-12)
    # The EK-FAC approximation on the same problem is of the same size, not equal.
    kfac = KfacSolver(problem(torch.float32)[0], theta, loss, reg, tol=1e-8, max_iter=100)
    ratio = kfac.self_influence(e.float(), x.float()).double() / expected
    assert bool(((ratio > 0.2) & (ratio < 5.0)).all()), ratio


def test_registry_names_and_unknown_name():
    assert HESSIAN_MODES == ("auto", "exact", "kfac")
    assert get_solver("exact") is ExactSolver and get_solver("kfac") is KfacSolver
    with pytest.raises(ValueError, match=r"Unknown hessian mode: newton\. Choose between \['auto', 'exact', 'kfac'\]"):
        get_solver("newton")
    assert resolve_solver("auto", num_params=100, exact_max_params=100) is ExactSolver
    assert resolve_solver("auto", num_params=101, exact_max_params=100) is KfacSolver
    assert resolve_solver("exact", num_params=10**9, exact_max_params=100) is ExactSolver


def test_the_default_size_limit_keeps_cifar10_heads_exact_and_sends_200_classes_to_kfac():
    """ResNet-56 features (64 + 1): 10 classes stay on the dense path, 202 (Tiny-ImageNet) take CG."""
    from hf_ifbeta.influence import InfluenceArguments

    limit = InfluenceArguments().exact_max_params
    assert resolve_solver("auto", num_params=10 * 65, exact_max_params=limit) is ExactSolver
    assert resolve_solver("auto", num_params=202 * 65, exact_max_params=limit) is KfacSolver
