"""Tests of `learn_beta_policy`: the learned (a, b) on synthetic teacher outputs, its box, fallback and inputs."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from hf_ifbeta.config import PolicyArguments, PrunerConfig
from hf_ifbeta.losses import ProxyLoss
from hf_ifbeta.policy import BetaPolicy, PolicyObjective, rank_positions
from hf_ifbeta.policy_learning import PolicyLearningResult, bounds_reached, learn_beta_policy

from test_policy import blobs, teacher_confidence

# The learning tests below search the full box (a, b up to 50), where the direction of the lean is plain to see.
FULL_BOX = PolicyArguments(max_ab=50.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_flipped_labels_learned_policy_drops_them(seed):
    """20 % flipped labels that the teacher partly memorised, real influence scores on a clean validation
    slice: the flipped rows rank low, and the learned policy leans to the top and keeps fewer of them."""
    influence = pytest.importorskip("hf_ifbeta.influence")
    x, z, y, flipped = blobs(flip=0.2, memorised=3.0, seed=seed)
    train, val = np.arange(1200), np.arange(1200, 1600)
    scores = influence.influence_scores(x, z, y, val).scores
    u = rank_positions(scores, y)
    assert u[flipped].mean() < 0.3
    result = learn_beta_policy(x, z, y, u, 0.5, val, policy_args=FULL_BOX, seed=seed)
    assert isinstance(result, PolicyLearningResult) and not result.fell_back_to_uniform
    assert result.policy.a > result.policy.b
    assert result.val_loss_learned < result.val_loss_uniform
    kept = result.policy.select(u[train], 0.5, y[train], seed=0)
    random = BetaPolicy().select(u[train], 0.5, y[train], seed=0)
    assert flipped[train][kept].mean() < 0.6 * flipped[train][random].mean()


@pytest.mark.parametrize("seed", [0, 1])
def test_learned_direction_flips_with_the_ratio(seed):
    """Same data (20 % flipped labels, clean teacher), same score (teacher confidence in the label), two ratios.

    Ratio 0.3 (99 inner steps): the policy leans to the top and drops the mislabelled rows. Ratio 0.9 (15
    inner steps): the proxy is budget-bound and prefers the low-confidence end. Measured on 6 data seeds:
    mean a / (a + b) 0.72-0.95 at 0.3, 0.16-0.35 at 0.9; with 150 inner epochs at 0.9 the lean goes back to
    the top: which end pays depends on the budget.
    """
    x, z, y, flipped = blobs(flip=0.2, seed=seed)
    val = np.arange(1200, 1600)
    u = rank_positions(teacher_confidence(z, y), y)
    low = learn_beta_policy(x, z, y, u, 0.3, val, policy_args=FULL_BOX, seed=seed)
    high = learn_beta_policy(x, z, y, u, 0.9, val, policy_args=FULL_BOX, seed=seed)
    for result in (low, high):
        assert not result.fell_back_to_uniform and result.val_loss_learned < result.val_loss_uniform
    assert low.policy.a > low.policy.b and low.policy.mean() > 0.6
    assert high.policy.b > high.policy.a and high.policy.mean() < 0.4
    assert low.info["inner_steps"] > 5 * high.info["inner_steps"]


def test_learning_records_history_and_stays_in_the_box():
    x, z, y, _ = blobs(n=800, num_classes=3, seed=5)
    u = rank_positions(teacher_confidence(z, y), y)
    args = PolicyArguments(outer_steps=6, outer_lr=2.0, subsample=300, max_ab=50.0)
    result = learn_beta_policy(x, z, y, u, 0.5, np.arange(600, 800), policy_args=args)
    assert len(result.history) == 6
    assert result.history[0]["a"] == 1.0 and result.history[0]["b"] == 1.0
    for h in result.history:
        assert 0.1 - 1e-9 <= h["a"] <= 50 + 1e-9 and 0.1 - 1e-9 <= h["b"] <= 50 + 1e-9
        assert np.isfinite(h["loss"]) and len(h["grad"]) == 2
    assert result.info["num_train_rows"] == 300 and result.info["num_kept_rows"] == 150
    assert result.info["soft_loss_learned"] == min(h["loss"] for h in result.history)
    summary = result.to_dict()
    assert set(summary) >= {"a", "b", "history", "val_loss_learned", "val_loss_uniform", "fell_back_to_uniform"}


def test_bounds_reached_names_each_parameter_on_the_box():
    box = (math.log(0.5), math.log(2.0))
    assert bounds_reached((2.0, 0.5), box) == {"a": "upper", "b": "lower"}
    assert bounds_reached((math.exp(math.log(2.0)), 1.3), box) == {"a": "upper"}
    assert bounds_reached((1.999, 0.501), box) == {}


@pytest.mark.parametrize("max_ab, expected", [(2.0, {"a": "upper", "b": "lower"}), (50.0, {})])
def test_learning_records_whether_the_policy_ends_on_the_box(monkeypatch, max_ab, expected):
    """An outer signal that always asks for a stronger top lean drives a small box to its corner; in the full box
    the same 8 steps end inside it. The record names the box and the bounds reached."""
    x, z, y, _ = blobs(n=800, num_classes=3, seed=5)
    u = rank_positions(teacher_confidence(z, y), y)

    def toward_the_top(self, log_ab):
        return float(log_ab[1] - log_ab[0]), np.array([-1.0, 1.0])

    monkeypatch.setattr(PolicyObjective, "hypergradient", toward_the_top)
    args = PolicyArguments(outer_steps=8, outer_lr=0.2, subsample=300, max_ab=max_ab, eval_seeds=1)
    result = learn_beta_policy(x, z, y, u, 0.5, np.arange(600, 800), policy_args=args)
    assert result.info["box"] == pytest.approx([max(0.1, 1 / max_ab), max_ab])  # never below MIN_AB
    assert result.info["on_bound"] == expected
    if expected:
        assert (result.info["learned_a"], result.info["learned_b"]) == pytest.approx((2.0, 0.5))


def test_falls_back_to_uniform_when_the_learned_policy_loses(monkeypatch):
    """A misleading outer signal drives the policy to keep the mislabelled rows; the discrete check catches it."""
    x, z, y, _ = blobs(flip=0.3, seed=0)
    val = np.arange(1200, 1600)
    u = rank_positions(teacher_confidence(z, y), y)  # flipped rows at the bottom

    def misleading(self, log_ab):  # "loss" falls as the policy leans to the bottom
        return -float(log_ab[1] - log_ab[0]), np.array([1.0, -1.0])

    monkeypatch.setattr(PolicyObjective, "hypergradient", misleading)
    result = learn_beta_policy(x, z, y, u, 0.5, val, policy_args=PolicyArguments(outer_steps=10, max_ab=50.0))
    assert result.info["learned_b"] > 5 * result.info["learned_a"]
    assert result.val_loss_learned > result.val_loss_uniform
    assert result.fell_back_to_uniform and result.policy == BetaPolicy(1.0, 1.0)


def test_tf32_is_off_while_learning(monkeypatch):
    """`--tf32` set before pruning must not put the float32 inner fits and hypergradients on TF32."""
    x, z, y, _ = blobs(n=400, num_classes=3, seed=6)
    u = rank_positions(teacher_confidence(z, y), y)
    seen = []
    hypergradient = PolicyObjective.hypergradient

    def spy(self, log_ab):
        seen.append((torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision))
        return hypergradient(self, log_ab)

    monkeypatch.setattr(PolicyObjective, "hypergradient", spy)
    previous = torch.backends.fp32_precision
    torch.backends.fp32_precision = "tf32"
    try:
        args = PolicyArguments(outer_steps=2, subsample=200, eval_seeds=1)
        learn_beta_policy(x, z, y, u, 0.5, np.arange(300, 400), policy_args=args)
        after = torch.backends.cuda.matmul.fp32_precision
    finally:
        torch.backends.fp32_precision = previous
    assert seen == [("ieee", "ieee")] * 2 and after == "tf32"


def test_learn_beta_policy_bad_inputs():
    x, z, y, _ = blobs(n=200, num_classes=3, seed=0)
    u = rank_positions(teacher_confidence(z, y), y)
    val = np.arange(150, 200)
    with pytest.raises(ValueError, match="ratio"):
        learn_beta_policy(x, z, y, u, 1.0, val)
    with pytest.raises(ValueError, match="labels has 199 rows"):
        learn_beta_policy(x, z, y[:-1], u, 0.5, val)
    with pytest.raises(ValueError, match="logits must be"):
        learn_beta_policy(x, z[:-1], y, u, 0.5, val)
    with pytest.raises(ValueError, match="u has 199 rows"):
        learn_beta_policy(x, z, y, u[:-1], 0.5, val)
    with pytest.raises(ValueError, match="u must lie in the open interval"):
        learn_beta_policy(x, z, y, np.linspace(0, 1, 200), 0.5, val)
    with pytest.raises(ValueError, match="val_indices"):
        learn_beta_policy(x, z, y, u, 0.5, np.array([0, 200]))


def test_max_ab_bounds_the_learned_policy():
    """Every outer iterate stays in the box (and the search does reach its edge); a box of 1 is refused."""
    rng = np.random.default_rng(0)
    n, d, c = 900, 6, 3
    labels = rng.integers(0, c, n)
    centers = rng.normal(0, 2, (c, d))
    features = centers[labels] + rng.normal(0, 1.5, (n, d))
    logits = features @ centers.T
    u = rank_positions(-np.abs(rng.normal(size=n)) + 0.5 * (logits.argmax(1) == labels), labels)
    val = np.arange(0, n, 6)
    args = PolicyArguments(outer_steps=6, outer_lr=0.5, inner_epochs=5, subsample=None, max_ab=1.5)
    narrow = learn_beta_policy(features, logits, labels, u, 0.5, val, policy_args=args, seed=0)
    for h in narrow.history:
        assert 1 / 1.5 - 1e-9 <= h["a"] <= 1.5 + 1e-9 and 1 / 1.5 - 1e-9 <= h["b"] <= 1.5 + 1e-9
    assert any(max(abs(math.log(h["a"])), abs(math.log(h["b"]))) > math.log(1.5) - 1e-6 for h in narrow.history)
    with pytest.raises(ValueError, match="max_ab must be in"):
        PolicyArguments(max_ab=1.0)


def test_outer_objective_mix_is_relative_to_uniform_and_its_hypergradient_is_its_derivative():
    from hf_ifbeta.policy import beta_entropy
    from hf_ifbeta.policy_learning import OuterObjective, coverage_features

    x, z, y, _ = blobs(n=600, num_classes=3, seed=2)
    u = rank_positions(teacher_confidence(z, y), y)
    train, val = np.arange(400), np.arange(400, 600)
    weak = coverage_features(x, 2, seed=0)
    assert weak.shape == (600, 2) and np.allclose(weak, coverage_features(x, 2, seed=0))

    def proxy(f):
        return PolicyObjective(f[train], z[train], y[train], u[train], 0.5, f[val], z[val], y[val], inner_epochs=2.0,
                               dtype=torch.float64)  # fmt: skip

    mix = OuterObjective([(0.25, proxy(x)), (0.75, proxy(weak))], entropy_weight=1e-2)
    assert mix.loss(np.zeros(2)) == pytest.approx(1.0)  # each part is 1 at uniform, and H(uniform) = 0
    theta, h = np.log([2.0, 0.7]), 1e-5
    value, grad = mix.hypergradient(theta)
    assert value == pytest.approx(mix.loss(theta))
    numeric = [(mix.loss(theta + h * e) - mix.loss(theta - h * e)) / (2 * h) for e in np.eye(2)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-7)
    entropy, _ = beta_entropy(theta)
    assert entropy < 0 and mix.subset_loss(np.arange(200)) > 0


def test_coverage_objective_with_tie_break_runs_in_the_box_and_is_not_the_default():
    x, z, y, _ = blobs(n=800, num_classes=3, seed=5)
    u = rank_positions(teacher_confidence(z, y), y)
    args = PolicyArguments(outer_steps=8, subsample=300, max_ab=16.0, objective="kd+coverage", coverage_dim=2,
                           entropy_weight=1e-2)  # fmt: skip
    result = learn_beta_policy(x, z, y, u, 0.5, np.arange(600, 800), policy_args=args)
    assert np.isfinite(result.val_loss_learned) and np.isfinite(result.val_loss_uniform)
    assert all(1 / 16 - 1e-9 <= h[k] <= 16 + 1e-9 for h in result.history for k in ("a", "b"))
    assert result.history[0]["loss"] == pytest.approx(1.0)  # the mixture is relative to uniform, H(uniform) = 0
    default = learn_beta_policy(x, z, y, u, 0.5, np.arange(600, 800), policy_args=PolicyArguments(outer_steps=8,
                                subsample=300, max_ab=16.0))  # fmt: skip
    assert default.history[0]["loss"] < 0.5  # the plain proxy KD loss, not a ratio to itself
    too_wide = PolicyArguments(outer_steps=2, subsample=300, objective="kd+coverage", coverage_dim=8)
    with pytest.raises(ValueError, match="coverage_dim=8 must be below the teacher's 8 features"):
        learn_beta_policy(x, z, y, u, 0.5, np.arange(600, 800), policy_args=too_wide)


def test_unknown_policy_objective_lists_the_choices():
    with pytest.raises(ValueError, match=r"Unknown policy objective 'coverage'.*kd\+coverage"):
        PolicyArguments(objective="coverage")
    with pytest.raises(ValueError, match="coverage_weight must be in"):
        PrunerConfig(policy_coverage_weight=1.5)  # checked when the config is made, not when it is used
    with pytest.raises(ValueError, match="entropy_weight must be finite"):
        PrunerConfig(policy_entropy_weight=float("inf"))


def test_coverage_views_average_independent_projections():
    from hf_ifbeta.policy_learning import _outer_objective, coverage_features

    x, z, y, _ = blobs(n=600, num_classes=3, seed=2)
    assert not np.allclose(coverage_features(x, 2, seed=0, view=0), coverage_features(x, 2, seed=0, view=1))
    u = rank_positions(teacher_confidence(z, y), y)
    args = PolicyArguments(objective="kd+coverage", coverage_dim=2, coverage_views=3, coverage_weight=0.6)
    mix = _outer_objective(x, z, y, u, 0.5, np.arange(400), np.arange(400, 600), ProxyLoss(), args, 0, "cpu")
    assert [round(w, 12) for w, _, _ in mix.parts] == [0.4, 0.2, 0.2, 0.2]
    assert mix.loss(np.zeros(2)) == pytest.approx(1.0)


def test_a_given_coverage_view_replaces_the_random_projections():
    """The coverage term trains the proxy on the given view (standardised over the subsampled rows), one part of
    weight `coverage_weight`, whatever `coverage_views` says; the view must have a row per row."""
    from hf_ifbeta.policy_learning import _outer_objective

    x, z, y, _ = blobs(n=600, num_classes=3, seed=2)
    u = rank_positions(teacher_confidence(z, y), y)
    view = 100.0 + 5.0 * x[:, :3]  # an offset, scaled 3-dim view
    args = PolicyArguments(objective="kd+coverage", coverage_views=3, coverage_weight=0.6)
    train, val = np.arange(400), np.arange(400, 600)
    mix = _outer_objective(x, z, y, u, 0.5, train, val, ProxyLoss(), args, 0, "cpu", coverage=view)
    assert [round(w, 12) for w, _, _ in mix.parts] == [0.4, 0.6]
    seen = mix.parts[1][1].x[:, :-1].cpu().numpy()  # the coverage proxy's training rows, without the bias column
    assert seen.shape == (400, 3) and abs(seen.mean()) < 0.1 and seen.std() == pytest.approx(1.0, abs=0.1)
    alone = _outer_objective(x, z, y, u, 0.5, train, val, ProxyLoss(), dataclasses.replace(args, coverage_weight=1.0),
                             0, "cpu", coverage=view)  # fmt: skip
    assert len(alone.parts) == 1

    learned = learn_beta_policy(x, z, y, u, 0.5, val, policy_args=dataclasses.replace(args, outer_steps=3,
                                subsample=300), coverage=view)  # fmt: skip
    assert np.isfinite(learned.val_loss_learned) and learned.history[0]["loss"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"coverage must be an \(n, k\) array with n = 600 rows"):
        learn_beta_policy(x, z, y, u, 0.5, val, policy_args=args, coverage=view[:10])
    stage = dataclasses.replace(args, coverage_view="stage")
    with pytest.raises(ValueError, match=r"coverage_view='stage'.*got None"):  # never the projections instead
        learn_beta_policy(x, z, y, u, 0.5, val, policy_args=stage)
    with pytest.raises(ValueError, match="coverage is the view of the 'kd\\+coverage' objective"):
        learn_beta_policy(x, z, y, u, 0.5, val, policy_args=PolicyArguments(), coverage=view)
