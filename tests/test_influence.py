"""Influence scores of the proxy head: closed forms against autograd, scores against leave-one-out retraining,
the kfac path against the exact one, streaming, warm starts and bad input. Tiny seeded problems only."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, rankdata, spearmanr

from hf_ifbeta.arrays import ProxyData
from hf_ifbeta.influence import (
    BIAS_DAMPING,
    InfluenceArguments,
    InfluenceOutput,
    _loss_and_grad,
    _reg_diag,
    influence_scores,
)
from hf_ifbeta.losses import ProxyLoss


# Tiny tensors: on a shared CPU, OpenMP hand-offs cost more than the maths.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_problem(n=300, d=5, num_classes=3, flip=0.0, teacher_noise=1.0, clean_rows=None, seed=0):
    """Gaussian blobs, teacher logits from a noisy linear rule on the *clean* labels' blobs, and a fraction
    `flip` of the labels outside `clean_rows` moved to another class. Returns (features, logits, labels, flipped)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, d)) * 2.0
    clean = rng.integers(0, num_classes, n)
    h = centers[clean] + rng.normal(size=(n, d))
    z = 1.5 * h @ centers.T + teacher_noise * rng.normal(size=(n, num_classes))
    flippable = np.setdiff1d(np.arange(n), [] if clean_rows is None else clean_rows)
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(flippable, int(round(flip * len(flippable))), replace=False)] = True
    y = clean.copy()
    y[flipped] = (clean[flipped] + rng.integers(1, num_classes, flipped.sum())) % num_classes
    return h.astype(np.float32), z.astype(np.float32), y, flipped


def design(h, out: InfluenceOutput) -> torch.Tensor:
    """x_i = [standardised h_i; 1] (n, d + 1) float64, as the fit saw them."""
    x = (torch.as_tensor(h, dtype=torch.float64) - torch.as_tensor(out.mean)) / torch.as_tensor(out.std)
    return torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)


def theta_of(out: InfluenceOutput) -> torch.Tensor:
    return torch.as_tensor(np.concatenate([out.weight, out.bias[:, None]], 1))


def naive_losses(theta, x, z, y, alpha, tau):
    """(m,) l_i from the definition, float64."""
    f = x @ theta.T
    q = F.softmax(z / tau, 1)
    kl = (q * (q.log() - F.log_softmax(f / tau, 1))).sum(1) * tau**2
    ce = -F.log_softmax(f, 1)[torch.arange(len(y)), y]
    return alpha * kl + (1 - alpha) * ce


def naive_objective(theta, x, z, y, alpha, tau, l2, weights=None):
    """sum_i w_i l_i / m + l2 / 2 ||W||^2 + BIAS_DAMPING / 2 ||b||^2 (w = 1: the mean)."""
    losses = naive_losses(theta, x, z, y, alpha, tau)
    weights = torch.ones_like(losses) if weights is None else weights
    reg = 0.5 * l2 * (theta[:, :-1] ** 2).sum() + 0.5 * BIAS_DAMPING * (theta[:, -1] ** 2).sum()
    return (weights * losses).sum() / len(losses) + reg


def newton_fit(theta, objective, iterations=30):
    """Reference fit: Newton's method with autograd derivatives, to machine precision."""
    theta = theta.clone()
    for _ in range(iterations):
        flat = theta.reshape(-1)
        grad = torch.autograd.functional.jacobian(lambda t: objective(t.reshape(theta.shape)), flat)
        if grad.abs().max() < 1e-13:
            break
        hess = torch.autograd.functional.hessian(lambda t: objective(t.reshape(theta.shape)), flat)
        theta = theta - torch.linalg.solve(hess, grad).reshape(theta.shape)
    return theta


def auroc(scores, positives):
    """Probability that a positive row scores above a negative one (Mann-Whitney, ties count half)."""
    ranks = rankdata(scores)
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return (ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


# ---------------------------------------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------------------------------------


def tiny_data(chunk_size=7):
    h, z, y, _ = make_problem(n=40, d=3, num_classes=4, seed=3)
    data = ProxyData(h, z, y, chunk_size, torch.device("cpu"), torch.float64)
    x = torch.cat([torch.as_tensor(h, dtype=torch.float64), torch.ones(40, 1, dtype=torch.float64)], 1)
    return data, x, torch.as_tensor(z, dtype=torch.float64), torch.as_tensor(y)


@pytest.mark.parametrize("alpha,tau", [(0.9, 4.0), (0.3, 1.0)])
def test_streamed_loss_and_gradient_match_autograd(alpha, tau):
    data, x, z, y = tiny_data(chunk_size=7)  # 6 chunks, the last one short
    rows = np.arange(5, 40)
    stream = data.stream(rows)
    l2 = 0.05
    theta = torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reg = _reg_diag(3, l2, torch.device("cpu"))

    def objective(flat):
        return naive_objective(flat.reshape(4, 4), x[rows], z[rows], y[rows], alpha, tau, l2)

    loss, grad = _loss_and_grad(stream, theta, ProxyLoss(alpha, tau, l2), reg)
    assert float(loss) == pytest.approx(float(objective(theta.reshape(-1))), rel=1e-12)
    torch.testing.assert_close(grad.reshape(-1), torch.autograd.functional.jacobian(objective, theta.reshape(-1)))


def test_scores_and_self_influence_match_autograd_closed_form():
    h, z, y, _ = make_problem(seed=1)
    val = np.arange(0, 300, 5)
    alpha, tau, l2 = 0.9, 4.0, 1e-2
    out = influence_scores(h, z, y, val, alpha=alpha, temperature=tau, l2=l2, hessian="exact", self_influence=True)
    x, zt, yt = design(h, out), torch.as_tensor(z, dtype=torch.float64), torch.as_tensor(y)
    fit = np.setdiff1d(np.arange(300), val)
    theta = theta_of(out)
    shape = theta.shape

    def fit_objective(flat):
        return naive_objective(flat.reshape(shape), x[fit], zt[fit], yt[fit], alpha, tau, l2)

    def val_loss(flat):
        return naive_losses(flat.reshape(shape), x[val], zt[val], yt[val], alpha, tau).mean()

    flat = theta.reshape(-1)
    assert torch.autograd.functional.jacobian(fit_objective, flat).abs().max() < 1e-7  # theta* is the optimum
    hess = torch.autograd.functional.hessian(fit_objective, flat)
    g_val = torch.autograd.functional.jacobian(val_loss, flat)
    grads = torch.autograd.functional.jacobian(lambda t: naive_losses(t.reshape(shape), x, zt, yt, alpha, tau), flat)
    solved = torch.linalg.solve(hess, grads.T)  # (P, n) H^{-1} grad l_i
    np.testing.assert_allclose(out.scores, (g_val @ solved).numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out.self_influence, (grads.T * solved).sum(0).numpy(), rtol=1e-6, atol=1e-9)
    assert out.info["val_loss"] == pytest.approx(float(val_loss(flat)), rel=1e-10)


# ---------------------------------------------------------------------------------------------------------
# What the scores mean
# ---------------------------------------------------------------------------------------------------------


def test_scores_predict_exact_leave_one_out_retraining():
    h, z, y, _ = make_problem(seed=2)
    val = np.arange(0, 300, 5)
    alpha, tau, l2 = 0.9, 4.0, 1e-2
    out = influence_scores(h, z, y, val, alpha=alpha, temperature=tau, l2=l2)
    assert out.info["hessian"] == "exact"
    x, zt, yt = design(h, out), torch.as_tensor(z, dtype=torch.float64), torch.as_tensor(y)
    fit = np.setdiff1d(np.arange(300), val)
    m = len(fit)

    def retrain(weights):
        objective = lambda t: naive_objective(t, x[fit], zt[fit], yt[fit], alpha, tau, l2, weights)  # noqa: E731
        return newton_fit(theta_of(out), objective)

    def val_loss(theta):
        return float(naive_losses(theta, x[val], zt[val], yt[val], alpha, tau).mean())

    base = val_loss(retrain(torch.ones(m, dtype=torch.float64)))
    picked = np.random.default_rng(0).choice(m, 40, replace=False)
    deltas = []
    for j in picked:
        weights = torch.ones(m, dtype=torch.float64)
        weights[j] = 0.0  # removing row j = up-weighting it by -1/m
        deltas.append(val_loss(retrain(weights)) - base)
    # First order: removing row j changes the validation loss by +s_j / m (helpful rows hurt when removed).
    measured, predicted = m * np.array(deltas), out.scores[fit[picked]]
    assert spearmanr(measured, predicted)[0] >= 0.9
    slope = (measured @ predicted) / (predicted @ predicted)
    assert 0.8 <= slope <= 1.25, slope  # sign and scale, not only the order


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flipped_labels_get_markedly_lower_scores(seed):
    # 20 % of the training labels flipped, the teacher and the validation slice clean. (A validation slice with
    # the same noise as the fit rows has g_V ~ -l2 theta* + sampling noise, so it separates flipped rows weakly.)
    val = np.arange(0, 1200, 5)
    h, z, y, flipped = make_problem(n=1200, flip=0.2, clean_rows=val, seed=seed)
    fit = np.setdiff1d(np.arange(1200), val)
    out = influence_scores(h, z, y, val, alpha=0.5)
    assert auroc(-out.scores[fit], flipped[fit]) >= 0.8
    # At the default alpha = 0.9 the clean teacher dominates the loss and flipped labels matter less, still visibly.
    out = influence_scores(h, z, y, val)
    assert np.median(out.scores[flipped]) < np.median(out.scores[fit][~flipped[fit]])
    assert auroc(-out.scores[fit], flipped[fit]) >= 0.65


def test_no_signal_when_the_teacher_is_the_optimum():
    # alpha = 1, no L2 and a linear teacher: the teacher head is an exact optimum and every gradient vanishes.
    h, _, y, _ = make_problem(seed=5)
    W, b = np.random.default_rng(0).normal(size=(3, 5)), np.zeros(3)
    z = (h @ W.T + b).astype(np.float32)
    out = influence_scores(h, z, y, np.arange(50), alpha=1.0, l2=0.0, standardize=False)
    assert np.abs(out.scores).max() < 1e-6


# ---------------------------------------------------------------------------------------------------------
# Paths, streaming, warm starts
# ---------------------------------------------------------------------------------------------------------


def test_kfac_path_agrees_with_exact_path():
    h, z, y, _ = make_problem(n=400, d=8, num_classes=4, seed=6)
    val = np.arange(0, 400, 4)
    exact = influence_scores(h, z, y, val, hessian="exact", self_influence=True)
    kfac = influence_scores(h, z, y, val, hessian="kfac", self_influence=True)
    assert kfac.info["hessian"] == "kfac" and kfac.info["cg_iterations"] > 0
    assert kfac.info["residual"] <= 1e-5
    assert pearsonr(exact.scores, kfac.scores)[0] >= 0.999
    np.testing.assert_allclose(kfac.scores, exact.scores, atol=1e-3 * np.abs(exact.scores).max())
    # Self-influence on the kfac path is the EK-FAC approximation: same ordering, not the same numbers.
    assert spearmanr(exact.self_influence, kfac.self_influence)[0] >= 0.9


def test_auto_picks_the_path_by_size():
    h, z, y, _ = make_problem(n=120, seed=7)
    assert influence_scores(h, z, y, np.arange(20)).info["hessian"] == "exact"
    assert influence_scores(h, z, y, np.arange(20), exact_max_params=17).info["hessian"] == "kfac"  # 3 * 6 = 18


@pytest.mark.parametrize("hessian,rtol", [("exact", 1e-5), ("kfac", 1e-3)])  # fit tolerance / float32 maths
def test_chunk_size_does_not_change_scores(hessian, rtol):
    h, z, y, _ = make_problem(seed=8)
    val = np.arange(0, 300, 6)
    whole = influence_scores(h, z, y, val, hessian=hessian, self_influence=True)
    streamed = influence_scores(h, z, y, val, hessian=hessian, self_influence=True, chunk_size=17)
    scale = np.abs(whole.scores).max()
    np.testing.assert_allclose(streamed.scores, whole.scores, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(
        streamed.self_influence, whole.self_influence, rtol=rtol, atol=rtol * whole.self_influence.max()
    )


def test_float16_memmap_streams_like_an_array(tmp_path):
    h, z, y, _ = make_problem(seed=9)
    mm = np.memmap(tmp_path / "features.f16", dtype=np.float16, mode="w+", shape=h.shape)
    mm[:] = h
    mm.flush()
    mm = np.memmap(tmp_path / "features.f16", dtype=np.float16, mode="r", shape=h.shape)
    val = np.arange(0, 300, 6)
    in_memory = influence_scores(h.astype(np.float16), z, y, val)
    streamed = influence_scores(mm, z, y, val, chunk_size=64)
    np.testing.assert_allclose(streamed.scores, in_memory.scores, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("standardize", [True, False])
def test_warm_start_reaches_the_cold_start_optimum(standardize):
    h, z, y, _ = make_problem(seed=10)
    h = h * np.array([1, 10, 1, 0.5, 1], dtype=np.float32) + 3.0  # raw features on different scales
    val = np.arange(0, 300, 5)
    rng = np.random.default_rng(0)
    head = (rng.normal(size=(3, 5)), rng.normal(size=3))
    cold = influence_scores(h, z, y, val, standardize=standardize, l2=1e-2)
    warm = influence_scores(h, z, y, val, standardize=standardize, l2=1e-2, init_head=head)
    np.testing.assert_allclose(warm.weight, cold.weight, atol=1e-6)
    np.testing.assert_allclose(warm.bias, cold.bias, atol=1e-6)
    np.testing.assert_allclose(warm.scores, cold.scores, rtol=1e-5, atol=1e-5 * np.abs(cold.scores).max())
    # With no iterations the warm start is the given head, moved into the standardised space.
    start = influence_scores(h, z, y, val, standardize=standardize, init_head=head, fit_max_iter=0)
    np.testing.assert_allclose(
        F.softmax(torch.as_tensor(start.head_logits(h)), 1).numpy(),
        F.softmax(torch.as_tensor(h @ head[0].T + head[1]), 1).numpy(),
        atol=1e-10,
    )


def test_standardisation_is_a_reparametrisation_without_l2():
    # Influence is invariant to an affine change of features when nothing penalises the weights.
    h, z, y, _ = make_problem(seed=11)
    h = h * np.array([1, 10, 1, 0.5, 1], dtype=np.float32) + 3.0
    val = np.arange(0, 300, 5)
    std = influence_scores(h, z, y, val, l2=0.0, standardize=True)
    raw = influence_scores(h, z, y, val, l2=0.0, standardize=False, fit_max_iter=500)
    assert raw.info["fit_converged"] and std.info["fit_converged"]
    # Unpenalised and on raw scales the fit is ill-conditioned: L-BFGS stalls ~1e-6 above the optimum.
    assert std.info["fit_loss"] <= raw.info["fit_loss"] + 1e-12
    np.testing.assert_array_equal(raw.mean, np.zeros(5))
    np.testing.assert_array_equal(raw.std, np.ones(5))
    np.testing.assert_allclose(
        F.softmax(torch.as_tensor(std.head_logits(h)), 1).numpy(),
        F.softmax(torch.as_tensor(raw.head_logits(h)), 1).numpy(),
        atol=1e-4,
    )
    np.testing.assert_allclose(std.scores, raw.scores, rtol=1e-3, atol=1e-3 * np.abs(std.scores).max())


def test_fit_subsample_fits_on_that_many_random_rows():
    h, z, y, _ = make_problem(seed=12)
    val = np.arange(0, 300, 5)
    # cross_fit=False: every row scored by the head fitted on the subsample (tests/test_scale.py covers cross-fitting)
    out = influence_scores(h, z, y, val, standardize=False, fit_subsample=100, seed=3, cross_fit=False)
    assert out.info["n_fit"] == 100 and out.scores.shape == (300,) and np.isfinite(out.scores).all()
    again = influence_scores(h, z, y, val, standardize=False, fit_subsample=100, seed=3, cross_fit=False)
    np.testing.assert_array_equal(again.scores, out.scores)
    # The same head as a fit on exactly those rows (the subsample the seed draws, plus the validation slice).
    fit = np.setdiff1d(np.arange(300), val)
    sub = np.sort(np.random.default_rng(3).choice(fit, 100, replace=False))
    keep = np.sort(np.concatenate([sub, val]))
    alone = influence_scores(h[keep], z[keep], y[keep], np.searchsorted(keep, val), standardize=False)
    np.testing.assert_allclose(out.weight, alone.weight, atol=1e-7)
    np.testing.assert_allclose(out.scores[keep], alone.scores, rtol=1e-6, atol=1e-9)
    other = influence_scores(h, z, y, val, standardize=False, fit_subsample=100, seed=4, cross_fit=False)
    assert not np.allclose(other.weight, out.weight)


def test_output_contract():
    h, z, y, _ = make_problem(n=100, seed=13)
    out = influence_scores(h, z, y, np.arange(10))
    assert out.scores.shape == (100,) and out.scores.dtype == np.float64
    assert out.self_influence is None
    assert out.weight.shape == (3, 5) and out.bias.shape == (3,)
    assert out.mean.shape == (5,) and out.std.shape == (5,)
    for key in ("hessian", "cg_iterations", "residual", "fit_loss", "fit_converged", "n_fit", "n_val", "timings_s"):
        assert key in out.info
    assert out.info["n_fit"] == 90 and out.info["n_val"] == 10
    with_self = influence_scores(h, z, y, np.arange(10), self_influence=True)
    assert (with_self.self_influence >= 0).all()


def test_tf32_is_off_inside_and_restored_after(monkeypatch):
    """`--tf32` (transformers sets `torch.backends.fp32_precision = "tf32"`) must not reach the float32 solve."""
    import hf_ifbeta.influence as influence

    h, z, y, _ = make_problem(n=200, d=4, seed=15)
    seen = []
    solve = influence._solve_head

    def spy(*args, **kwargs):
        seen.append((torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision))
        return solve(*args, **kwargs)

    monkeypatch.setattr(influence, "_solve_head", spy)
    previous = torch.backends.fp32_precision
    torch.backends.fp32_precision = "tf32"
    try:
        influence_scores(h, z, y, np.arange(0, 200, 5), hessian="kfac")
        after = (torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision)
        torch.backends.fp32_precision = "ieee"  # inherited again after the block: a later global setting reaches it
        later = (torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision)
    finally:
        torch.backends.fp32_precision = previous
    assert seen == [("ieee", "ieee")]
    assert after == ("tf32", "tf32") and later == ("ieee", "ieee")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    h, z, y, _ = make_problem(n=400, d=8, num_classes=4, seed=14)
    val = np.arange(0, 400, 4)
    for hessian in ("exact", "kfac"):
        cpu = influence_scores(h, z, y, val, hessian=hessian, device="cpu")
        gpu = influence_scores(h, z, y, val, hessian=hessian, device="cuda")
        np.testing.assert_allclose(gpu.scores, cpu.scores, rtol=1e-3, atol=1e-3 * np.abs(cpu.scores).max())


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------


def test_non_finite_features_or_logits_name_the_row():
    h, z, y, _ = make_problem(n=50, seed=15)
    bad = h.copy()
    bad[17, 2] = np.nan
    with pytest.raises(ValueError, match="features of row 17"):
        influence_scores(bad, z, y, np.arange(5), chunk_size=8)
    bad = z.copy()
    bad[3, 0] = np.inf
    with pytest.raises(ValueError, match="logits of row 3"):
        influence_scores(h, bad, y, np.arange(5))


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(logits=lambda z: z[:-1]), "differ in rows"),
        (dict(features=lambda h: h[:, :, None]), "features must be 2-D"),
        (dict(labels=lambda y: y[:-1]), "labels must have shape"),
        (dict(labels=lambda y: np.where(np.arange(50) == 4, 3, y)), "label 3 of row 4 is outside"),
        (dict(labels=lambda y: y.astype(np.float32)), "integer class ids"),
        (dict(val_indices=lambda v: np.array([0, 50])), r"val_indices must lie in \[0, 50\)"),
        (dict(val_indices=lambda v: np.array([1, 1])), "duplicates"),
        (dict(val_indices=lambda v: np.array([], dtype=int)), "non-empty"),
        (dict(val_indices=lambda v: np.arange(50)), "nothing is left"),
        (dict(hessian="newton"), "Unknown hessian mode: newton"),
        (dict(alpha=1.5), "alpha"),
        (dict(temperature=0.0), "temperature"),
        (dict(l2=-1.0), "l2 must be >= 0"),
        (dict(fit_subsample=0), "fit_subsample"),
        (dict(proxy_loss=ProxyLoss(), alpha=0.5), "either as proxy_loss="),
        (dict(args=InfluenceArguments(), hessian="exact"), "either as args="),
        (dict(chunk_size=0), "chunk_size"),
        (dict(init_head=(np.zeros((3, 4)), np.zeros(3))), r"init_head must be \(W \(3, 5\)"),
    ],
)
def test_bad_arguments_are_reported_clearly(change, match):
    h, z, y, _ = make_problem(n=50, seed=16)
    args = dict(features=h, logits=z, labels=y, val_indices=np.arange(5))
    kwargs = {}
    for key, value in change.items():
        if key in args:
            args[key] = value(args[key])
        else:
            kwargs[key] = value
    with pytest.raises(ValueError, match=match):
        influence_scores(args["features"], args["logits"], args["labels"], args["val_indices"], **kwargs)


def test_unknown_keyword_lists_the_choices():
    h, z, y, _ = make_problem(n=50, seed=16)
    with pytest.raises(TypeError, match=r"unknown keyword\(s\) \['hesian'\]\. Choose between \['alpha', .*'hessian'"):
        influence_scores(h, z, y, np.arange(5), hesian="exact")


def test_argument_objects_and_keywords_give_the_same_scores():
    h, z, y, _ = make_problem(n=200, seed=17)
    val = np.arange(0, 200, 5)
    by_keywords = influence_scores(h, z, y, val, alpha=0.7, temperature=2.0, l2=1e-2, hessian="kfac", fit_subsample=80)
    by_objects = influence_scores(
        h, z, y, val, proxy_loss=ProxyLoss(alpha=0.7, temperature=2.0, l2=1e-2),
        args=InfluenceArguments(hessian="kfac", fit_subsample=80),
    )  # fmt: skip
    assert by_objects.scores.tobytes() == by_keywords.scores.tobytes()
    assert by_objects.info["hessian"] == "kfac" and by_objects.info["n_fit"] == 80
