"""Tests of the pruning-method registry: each method's rule on tiny synthetic teacher outputs."""

from types import SimpleNamespace

import numpy as np
import pytest

from hf_ifbeta import policy, policy_scale, scorers
from hf_ifbeta.config import PolicyArguments, PrunerConfig
from hf_ifbeta.features import TeacherOutputs
from hf_ifbeta.losses import ProxyLoss
from hf_ifbeta.selection import class_budgets
from hf_ifbeta.scorers import (
    PruningMethod,
    ScoringContext,
    Selection,
    ccs_bin_budgets,
    ccs_hard_cutoff,
    get_method,
    list_methods,
    register_method,
)

BUILTIN = ["ccs", "dual-beta", "el2n", "entropy", "if-beta", "influence", "moderate", "random", "self-influence"]
TEACHER_ONLY = ["random", "el2n", "entropy", "ccs", "moderate", "dual-beta"]


# ---------------------------------------------------------------------------------------------- fixtures


def make_outputs(features, logits, labels):
    """`hf_ifbeta.features.TeacherOutputs` when that module exists, else a duck-typed stand-in."""
    try:
        from hf_ifbeta.features import TeacherOutputs
    except ImportError:
        return SimpleNamespace(features=features, logits=logits, labels=labels, head=None, meta={})
    return TeacherOutputs(features=features, logits=logits, labels=labels, head=None, meta={})


def tiny_outputs(n_per_class=(60, 40, 20), d=4, seed=0):
    """Three unbalanced classes, random features, logits that lean to the label with varying confidence."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(n_per_class)), n_per_class)
    labels = labels[rng.permutation(len(labels))].astype(np.int64)
    n, c = len(labels), len(n_per_class)
    logits = rng.normal(size=(n, c)).astype(np.float32)
    logits[np.arange(n), labels] += rng.uniform(-1.0, 6.0, size=n).astype(np.float32)
    features = (rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=(n, 1))).astype(np.float32)
    return make_outputs(features, logits, labels)


def context(method="random", influence=None, **config):
    return ScoringContext(config=PrunerConfig(method=method, **config), val_indices=np.arange(5), influence=influence)


def stub_influence(n, seed=1, with_self=True):
    rng = np.random.default_rng(seed)
    return SimpleNamespace(scores=rng.normal(size=n), self_influence=rng.gamma(2.0, size=n) if with_self else None)


def run(name, outputs, ratio, seed=0, method_kwargs=None, **ctx):
    method = get_method(name, **(method_kwargs or {}))
    if method.needs_influence and "influence" not in ctx:
        ctx["influence"] = stub_influence(len(outputs.labels))
    ctx = context(name, **ctx)
    scores = method.score(outputs, ctx)
    return method.select(outputs, scores, ratio, ctx, seed=seed), scores


def naive_softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


# ---------------------------------------------------------------------------------------------- registry


def test_registry_lists_builtin_methods():
    assert set(BUILTIN) <= set(list_methods())
    assert list_methods() == sorted(list_methods())
    for name in BUILTIN:
        method = get_method(name)
        assert isinstance(method, PruningMethod) and method.name == name
    assert get_method("el2n") is not get_method("el2n")  # a new instance each call
    assert [n for n in BUILTIN if get_method(n).needs_influence] == ["if-beta", "influence", "self-influence"]


def test_unknown_method_lists_choices():
    with pytest.raises(ValueError, match="Unknown pruning method: 'el3n'") as err:
        get_method("el3n")
    for name in BUILTIN:
        assert repr(name) in str(err.value)


def test_registering_a_method_is_one_class():
    outputs = tiny_outputs()
    try:

        @register_method("test-feature-norm")
        class FeatureNorm(PruningMethod):
            def score(self, outputs, context):
                return np.linalg.norm(outputs.features, axis=1)

        assert "test-feature-norm" in list_methods() and FeatureNorm.name == "test-feature-norm"
        PrunerConfig(method="test-feature-norm")  # the config accepts it at once
        selection, scores = run("test-feature-norm", outputs, ratio=0.5)
        assert isinstance(selection, Selection) and len(selection.indices) == 60
        with pytest.raises(ValueError, match="already registered"):
            register_method("test-feature-norm")(type("Other", (PruningMethod,), {}))
    finally:
        scorers._METHODS.pop("test-feature-norm", None)
    with pytest.raises(TypeError, match="PruningMethod subclass"):
        register_method("test-not-a-method")(object)


# ---------------------------------------------------------------------------------------------- shared contract


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7, 0.9])
def test_exact_budget_sorted_unique_and_stratified(name, ratio, monkeypatch):
    if name == "if-beta":
        monkeypatch.setattr(policy_scale, "learn_beta_policy", lambda *a, **k: pytest.fail("fixed: must not learn"))
    outputs = tiny_outputs()
    ctx = dict(policy_a=2.0, policy_b=1.0) if name == "if-beta" else {}
    selection, scores = run(name, outputs, ratio, seed=3, **ctx)
    m = round((1 - ratio) * 120)
    idx = selection.indices
    assert scores.shape == (120,)
    assert len(idx) == m and idx.dtype == np.int64
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < 120
    kept_per_class = np.bincount(outputs.labels[idx], minlength=3)
    np.testing.assert_array_equal(kept_per_class, class_budgets(outputs.labels, m))  # stratify=True by default
    again, _ = run(name, outputs, ratio, seed=3, **ctx)
    np.testing.assert_array_equal(again.indices, idx)  # deterministic for a seed


@pytest.mark.parametrize("name", TEACHER_ONLY)
def test_unstratified_exact_budget(name):
    selection, _ = run(name, tiny_outputs(), 0.6, stratify=False)
    assert len(selection.indices) == 48 and len(np.unique(selection.indices)) == 48


@pytest.mark.parametrize("name", TEACHER_ONLY + ["influence"])
@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_outside_unit_interval_is_rejected(name, ratio):
    with pytest.raises(ValueError, match="ratio"):
        run(name, tiny_outputs(), ratio)


def test_a_ratio_that_keeps_no_row_is_rejected():
    with pytest.raises(ValueError, match="keeps 0 of 3 rows"):
        run("el2n", make_outputs(np.zeros((3, 2)), np.zeros((3, 2)), np.array([0, 1, 1])), 0.9)


def test_mismatched_scores_are_rejected():
    outputs, ctx = tiny_outputs(), context("el2n")
    with pytest.raises(ValueError, match=r"expected \(120,\)"):
        get_method("el2n").select(outputs, np.zeros(7), 0.5, ctx)
    with pytest.raises(ValueError, match="NaN"):
        get_method("el2n").select(outputs, np.full(120, np.nan), 0.5, ctx)


# ---------------------------------------------------------------------------------------------- the rules


def assert_keeps_highest_per_class(outputs, scores, idx):
    kept = np.zeros(len(scores), bool)
    kept[idx] = True
    for c in np.unique(outputs.labels):
        in_c = outputs.labels == c
        assert scores[in_c & kept].min() >= scores[in_c & ~kept].max()


def test_random_is_stratified_uniform_and_seeded():
    outputs = tiny_outputs()
    a, _ = run("random", outputs, 0.5, seed=0)
    b, _ = run("random", outputs, 0.5, seed=1)
    assert not np.array_equal(a.indices, b.indices)
    counts = np.zeros(120)
    for seed in range(400):
        counts[run("random", outputs, 0.5, seed=seed)[0].indices] += 1
    freq = counts / 400
    # each row is kept with probability 1/2 (every class budget is exactly half): 5 sd of a binomial frequency
    assert np.abs(freq - 0.5).max() < 5 * np.sqrt(0.25 / 400)


def test_el2n_is_the_teacher_error_norm_and_keeps_the_highest():
    outputs = tiny_outputs()
    selection, scores = run("el2n", outputs, 0.7)
    onehot = np.eye(3)[outputs.labels]
    naive = [np.linalg.norm(naive_softmax(z.astype(np.float64)) - e) for z, e in zip(outputs.logits, onehot)]
    np.testing.assert_allclose(scores, naive, rtol=1e-6)
    assert_keeps_highest_per_class(outputs, scores, selection.indices)
    flat, _ = run("el2n", outputs, 0.7, stratify=False)
    np.testing.assert_array_equal(flat.indices, np.sort(np.argsort(-scores, kind="stable")[:36]))


def test_entropy_is_the_teacher_softmax_entropy_and_keeps_the_highest():
    outputs = tiny_outputs()
    selection, scores = run("entropy", outputs, 0.5)
    naive = [-(p * np.log(p)).sum() for p in (naive_softmax(z.astype(np.float64)) for z in outputs.logits)]
    np.testing.assert_allclose(scores, naive, rtol=1e-6)
    assert_keeps_highest_per_class(outputs, scores, selection.indices)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.8])
def test_moderate_keeps_the_middle_band_of_distances_to_the_class_median(ratio):
    outputs = tiny_outputs()
    selection, scores = run("moderate", outputs, ratio)
    kept = np.zeros(120, bool)
    kept[selection.indices] = True
    for c in range(3):
        rows = np.flatnonzero(outputs.labels == c)
        median = np.median(outputs.features[rows], axis=0)
        np.testing.assert_allclose(scores[rows], np.linalg.norm(outputs.features[rows] - median, axis=1), rtol=1e-5)
        d_kept, d_drop = scores[rows][kept[rows]], scores[rows][~kept[rows]]
        below, above = (d_drop < d_kept.min()).sum(), (d_drop > d_kept.max()).sum()
        assert below + above == len(d_drop)  # every dropped row lies outside the kept band
        assert abs(int(below) - int(above)) <= 1  # and the band is centred: as many dropped on each side


def test_ccs_bin_budgets_follow_the_published_allocation():
    # visit sizes 1, 2, 5, 10 with 10 to give: min(1, 10//4)=1, min(2, 9//3)=2, min(5, 7//2)=3, min(10, 4//1)=4
    np.testing.assert_array_equal(ccs_bin_budgets([1, 5, 10, 2], 10), [1, 3, 4, 2])
    np.testing.assert_array_equal(ccs_bin_budgets([0, 7, 7], 6), [0, 3, 3])
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 30, size=50)
        m = int(rng.integers(0, sizes.sum() + 1))
        budgets = ccs_bin_budgets(sizes, m)
        assert budgets.sum() == m and np.all(budgets <= sizes)
    with pytest.raises(ValueError, match="rows in the bins"):
        ccs_bin_budgets([1, 2], 4)


def test_ccs_hard_cutoff_schedule():
    assert ccs_hard_cutoff(0.3) == 0.0 and ccs_hard_cutoff(0.5) == 0.0
    assert ccs_hard_cutoff(0.7) == 0.1 and ccs_hard_cutoff(0.9) == 0.3  # 0.3 at 90 %: the authors' CIFAR-10 command
    assert ccs_hard_cutoff(0.95) == 0.3
    with pytest.raises(ValueError, match="ratio"):
        ccs_hard_cutoff(1.0)
    with pytest.raises(ValueError, match="beta"):
        get_method("ccs", beta=1.0)


@pytest.mark.parametrize("stratify", [True, False])
def test_ccs_drops_the_hardest_beta_fraction_and_covers_the_score_bins(stratify):
    outputs = tiny_outputs(n_per_class=(300, 200, 100), seed=2)
    beta, ratio = 0.2, 0.6
    selection, scores = run("ccs", outputs, ratio, method_kwargs=dict(beta=beta), stratify=stratify)
    assert selection.policy == {"beta": beta, "num_bins": 50}
    idx, n = selection.indices, 600
    m = round((1 - ratio) * n)
    groups = [(np.flatnonzero(outputs.labels == c), k) for c, k in enumerate(class_budgets(outputs.labels, m))]
    for rows, k in groups if stratify else [(np.arange(n), m)]:
        order = rows[np.argsort(-scores[rows], kind="stable")]
        cut = round(beta * len(rows))
        assert not np.isin(order[:cut], idx).any()  # the hardest beta fraction is gone
        pool = order[cut:]
        s = scores[pool]
        bins = np.minimum(((s - s.min()) / ((s.max() - s.min()) / 50)).astype(int), 49)
        kept_per_bin = np.bincount(bins[np.isin(pool, idx)], minlength=50)
        np.testing.assert_array_equal(kept_per_bin, ccs_bin_budgets(np.bincount(bins, minlength=50), k))
        assert np.all(kept_per_bin[np.bincount(bins, minlength=50) > 0] > 0)  # every occupied bin is covered
    default, _ = run("ccs", outputs, 0.9)
    assert default.policy["beta"] == 0.3


def test_dual_beta_schedule_is_dual_s():
    method = get_method("dual-beta")
    for ratio in (0.1, 0.3, 0.5, 0.7, 0.9):
        for anchor in (0.0, 0.2):
            a, b = method.schedule(ratio, anchor)
            assert b == pytest.approx(15 * (1 - anchor) * (1 - ratio**4)) and a + b == pytest.approx(16)
    # the schedule moves the density from hard rows (small p) to easy rows as the ratio grows
    modes = [(a - 1) / (a + b - 2) for a, b in (method.schedule(r, 0.0) for r in (0.3, 0.5, 0.7, 0.9))]
    assert modes == sorted(modes)


def test_dual_beta_draws_in_proportion_to_its_beta_weights():
    # one kept row (m = round(0.05 * 20) = 1): P(row i) = BetaPDF(p_i; a, b) * (1 - p_i) / sum, p_i the teacher's p_y
    p = np.linspace(0.05, 0.99, 20)
    logits = np.log(np.stack([p, 1 - p], axis=1)).astype(np.float64)
    outputs = make_outputs(np.zeros((20, 2), np.float32), logits, np.zeros(20, np.int64))
    ratio, draws = 0.95, 3000
    first, scores = run("dual-beta", outputs, ratio, stratify=False)
    np.testing.assert_allclose(scores, 1 - p, rtol=1e-9)
    anchor = p[np.argsort(-(1 - p), kind="stable")[:10]].mean()
    a, b = get_method("dual-beta").schedule(ratio, anchor)
    assert first.policy["anchor"] == pytest.approx(anchor)
    assert (first.policy["a"], first.policy["b"]) == pytest.approx((a, b))
    w = p ** (a - 1) * (1 - p) ** (b - 1) * (1 - p)
    expected = w / w.sum()
    counts = np.zeros(20)
    for seed in range(draws):
        counts[run("dual-beta", outputs, ratio, seed=seed, stratify=False)[0].indices] += 1
    freq = counts / draws
    assert np.all(np.abs(freq - expected) <= 4 * np.sqrt(expected * (1 - expected) / draws) + 2e-3)


def test_dual_beta_leans_to_hard_rows_then_moves_to_easier_ones_as_the_ratio_grows():
    outputs = tiny_outputs(n_per_class=(200, 200, 200), seed=4)
    p_y = np.array([naive_softmax(z.astype(np.float64))[y] for z, y in zip(outputs.logits, outputs.labels)])
    kept_p = {r: p_y[run("dual-beta", outputs, r)[0].indices].mean() for r in (0.3, 0.7, 0.9)}
    assert kept_p[0.3] < p_y.mean() and kept_p[0.7] < p_y.mean()  # b >> a: the hard rows are favoured
    assert kept_p[0.9] > kept_p[0.7] + 0.2  # at 90 % the Beta mode has moved up to p ~ 0.7


def test_scoring_leaves_the_teacher_outputs_untouched():
    base = tiny_outputs()
    # float64 logits: no dtype conversion, so no implicit copy when a method reads them
    outputs = make_outputs(base.features, base.logits.astype(np.float64), base.labels)
    before = [outputs.features.copy(), outputs.logits.copy(), outputs.labels.copy()]
    for name in TEACHER_ONLY:
        run(name, outputs, 0.5)
    for old, new in zip(before, [outputs.features, outputs.logits, outputs.labels]):
        np.testing.assert_array_equal(old, new)


def test_dual_beta_keeps_confident_rows_finite():
    # p_y == 1 in float32 for a huge logit gap: log(1 - p) still comes exactly from the logits
    logits = np.array([[80.0, 0.0], [2.0, 0.0], [0.0, 1.0], [5.0, 0.0]], np.float32)
    outputs = make_outputs(np.zeros((4, 2), np.float32), logits, np.zeros(4, np.int64))
    log_p, log_1mp = scorers._teacher_log_probs(outputs, chunk_size=3)
    assert np.all(np.isfinite(log_1mp)) and log_1mp[0] == pytest.approx(-80.0)
    np.testing.assert_allclose(np.exp(log_p) + np.exp(log_1mp), 1.0)


def test_influence_methods_keep_the_highest_scores_per_class():
    outputs = tiny_outputs()
    infl = stub_influence(120)
    selection, scores = run("influence", outputs, 0.5, influence=infl)
    np.testing.assert_array_equal(scores, infl.scores)
    assert_keeps_highest_per_class(outputs, scores, selection.indices)
    selection, scores = run("self-influence", outputs, 0.5, influence=infl)
    np.testing.assert_array_equal(scores, infl.self_influence)
    assert_keeps_highest_per_class(outputs, scores, selection.indices)


def test_influence_methods_say_what_they_need():
    outputs, config = tiny_outputs(), PrunerConfig(method="influence")
    assert not get_method("influence").needs_self_influence(config)
    assert get_method("self-influence").needs_self_influence(config)
    assert get_method("if-beta").needs_self_influence(PrunerConfig(score_type="self-influence"))
    with pytest.raises(ValueError, match="needs context.influence"):
        get_method("influence").score(outputs, context("influence"))
    with pytest.raises(ValueError, match="self_influence=True"):
        ctx = context("self-influence", influence=stub_influence(120, with_self=False))
        get_method("self-influence").score(outputs, ctx)


def test_if_beta_with_a_fixed_policy(monkeypatch):
    monkeypatch.setattr(policy_scale, "learn_beta_policy", lambda *a, **k: pytest.fail("a fixed policy is not learned"))
    outputs, infl = tiny_outputs(), stub_influence(120)
    selection, scores = run("if-beta", outputs, 0.7, seed=5, influence=infl, policy_a=8.0, policy_b=1.0)
    np.testing.assert_array_equal(scores, infl.scores)
    u = policy.rank_positions(infl.scores, outputs.labels, stratify=True)
    expected = policy.BetaPolicy(8.0, 1.0).select(u, 0.7, labels=outputs.labels, stratify=True, seed=5)
    np.testing.assert_array_equal(selection.indices, expected)
    assert selection.policy["a"] == 8.0 and selection.policy["b"] == 1.0 and selection.policy["learned"] is False
    assert u[selection.indices].mean() > 0.6  # Beta(8, 1) leans to the most helpful rows
    fixed = dict(influence=infl, policy_a=8.0, policy_b=1.0)
    _, self_scores = run("if-beta", outputs, 0.7, score_type="self-influence", **fixed)
    np.testing.assert_array_equal(self_scores, infl.self_influence)


def test_if_beta_learns_the_policy_for_the_ratio(monkeypatch):
    calls = []

    def fake_learn(features, logits, labels, u, ratio, val_indices, **kwargs):
        calls.append(dict(u=u, ratio=ratio, val_indices=val_indices, **kwargs))
        history = [{"step": 0, "a": 1.0, "b": 1.0, "val_loss": 0.9}, {"step": 1, "a": 2.5, "b": 1.5, "val_loss": 0.8}]
        return SimpleNamespace(
            policy=policy.BetaPolicy(2.5, 1.5), history=history, val_loss_learned=0.8, val_loss_uniform=0.9,
            fell_back_to_uniform=False, info={"steps": 3},
        )

    monkeypatch.setattr(policy_scale, "learn_beta_policy", fake_learn)
    outputs = tiny_outputs()
    selection, _ = run("if-beta", outputs, 0.5, seed=2, outer_steps=7, policy_subsample=64, temperature=3.0)
    assert len(calls) == 1
    call = calls[0]
    assert call["ratio"] == 0.5 and call["seed"] == 2
    assert call["policy_args"] == PolicyArguments(outer_steps=7, subsample=64)  # the config's, everything else default
    assert call["loss"] == ProxyLoss(temperature=3.0)
    np.testing.assert_array_equal(call["val_indices"], np.arange(5))
    assert call["u"].shape == (120,) and np.all((call["u"] > 0) & (call["u"] < 1))
    record = dict(selection.policy)
    assert [h["step"] for h in record.pop("history")] == [0, 1]
    assert record == {
        "a": 2.5, "b": 1.5, "learned": True, "val_loss_learned": 0.8, "val_loss_uniform": 0.9,
        "fell_back_to_uniform": False, "on_bound": False, "info": {"steps": 3},
    }
    assert len(selection.indices) == 60


@pytest.mark.parametrize(
    "objective, view, passed", [("kd+coverage", "stage", True), ("kd+coverage", "projection", False), ("kd", "stage", False)]
)
def test_if_beta_hands_the_stage_view_to_the_learner_only_when_its_objective_uses_it(monkeypatch, objective, view, passed):
    calls = []

    def fake_learn(*args, **kwargs):
        calls.append(kwargs["coverage"])
        return SimpleNamespace(
            policy=policy.BetaPolicy(1.0, 1.0), history=[], val_loss_learned=0.8, val_loss_uniform=0.9,
            fell_back_to_uniform=False, info={},
        )  # fmt: skip

    monkeypatch.setattr(policy_scale, "learn_beta_policy", fake_learn)
    plain = tiny_outputs()
    view_of_rows = np.random.default_rng(0).normal(size=(plain.n, 8)).astype(np.float32)
    outputs = TeacherOutputs(plain.features, plain.logits, plain.labels, coverage=view_of_rows)
    run("if-beta", outputs, 0.5, policy_objective=objective, policy_coverage_view=view)
    assert (calls[0] is view_of_rows) if passed else calls[0] is None


def test_if_beta_with_the_stage_view_and_outputs_without_it_says_what_to_compute():
    with pytest.raises(ValueError, match=r"coverage_view='stage'.*compute_teacher_outputs\(coverage_stage=True\)"):
        run("if-beta", tiny_outputs(), 0.5, policy_objective="kd+coverage", policy_coverage_view="stage")


@pytest.mark.parametrize("max_ab, on_bound, advice", [
    (2.0, {"a": "upper", "b": "lower"}, "A larger policy_max_ab"),
    (16.0, {"b": "lower"}, "the package's limit (a and b in [0.1, 50])"),  # 1 / 16 is below the floor 0.1
    (16.0, {"a": "upper"}, "A larger policy_max_ab"),
    (50.0, {"a": "upper"}, "the package's limit"),
])  # fmt: skip
def test_the_on_bound_warning_suggests_a_wider_box_only_when_the_box_set_the_bound(monkeypatch, caplog, max_ab,
                                                                                 on_bound, advice):  # fmt: skip
    def fake_learn(*args, **kwargs):
        return SimpleNamespace(
            policy=policy.BetaPolicy(2.0, 0.5), history=[], val_loss_learned=0.8, val_loss_uniform=0.9,
            fell_back_to_uniform=False, info={"box": [max(0.1, 1 / max_ab), max_ab], "on_bound": on_bound},
        )  # fmt: skip

    monkeypatch.setattr(policy_scale, "learn_beta_policy", fake_learn)
    with caplog.at_level("WARNING", logger="hf_ifbeta.scorers"):
        run("if-beta", tiny_outputs(), 0.5, policy_max_ab=max_ab)
    (message,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert advice in message


@pytest.mark.parametrize("on_bound, fell_back, warned", [({"b": "lower"}, False, True), ({}, False, False),
                                                          ({"a": "upper"}, True, False)])  # fmt: skip
def test_if_beta_warns_when_the_learned_policy_sits_on_its_box(monkeypatch, caplog, on_bound, fell_back, warned):
    """The record says whether the policy used is on a bound of the search box, and the pruner warns then; a
    policy that fell back to uniform is not on a bound, whatever the learned one was."""

    def fake_learn(*args, **kwargs):
        return SimpleNamespace(
            policy=policy.BetaPolicy(1.0, 1.0) if fell_back else policy.BetaPolicy(2.0, 0.5), history=[],
            val_loss_learned=0.8, val_loss_uniform=0.9, fell_back_to_uniform=fell_back,
            info={"box": [0.5, 2.0], "on_bound": on_bound},
        )  # fmt: skip

    monkeypatch.setattr(policy_scale, "learn_beta_policy", fake_learn)
    with caplog.at_level("WARNING", logger="hf_ifbeta.scorers"):
        selection, _ = run("if-beta", tiny_outputs(), 0.5)
    assert selection.policy["on_bound"] is warned
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if warned:
        assert len(messages) == 1 and "[0.5, 2]" in messages[0] and "b lower" in messages[0]
        assert "policy_max_ab" in messages[0]
    else:
        assert not messages


def test_influence_methods_with_the_real_influence_module():
    influence = pytest.importorskip("hf_ifbeta.influence")
    outputs = tiny_outputs()
    val = np.arange(0, 120, 6)
    infl = influence.influence_scores(
        outputs.features, outputs.logits, outputs.labels, val, self_influence=True, fit_max_iter=50
    )
    for name in ("influence", "self-influence"):
        method = get_method(name)
        ctx = ScoringContext(config=PrunerConfig(method=name), val_indices=val, influence=infl)
        scores = method.score(outputs, ctx)
        selection = method.select(outputs, scores, 0.6, ctx, seed=0)
        assert len(selection.indices) == 48
        assert_keeps_highest_per_class(outputs, scores, selection.indices)
    ctx = ScoringContext(config=PrunerConfig(policy_a=4.0, policy_b=1.0), val_indices=val, influence=infl)
    selection = get_method("if-beta").select(outputs, infl.scores, 0.6, ctx, seed=0)
    assert len(selection.indices) == 48 and selection.policy["a"] == 4.0


def test_if_beta_end_to_end_with_the_real_influence_and_policy_learner():
    influence = pytest.importorskip("hf_ifbeta.influence")
    outputs = tiny_outputs(n_per_class=(80, 80, 80), seed=5)
    val = np.arange(0, 240, 8)
    infl = influence.influence_scores(outputs.features, outputs.logits, outputs.labels, val, fit_max_iter=50)
    config = PrunerConfig(outer_steps=2, inner_epochs=1.0, inner_batch_size=32, policy_subsample=None)
    ctx = ScoringContext(config=config, val_indices=val, influence=infl)
    method = get_method("if-beta")
    selection = method.select(outputs, method.score(outputs, ctx), 0.5, ctx, seed=0)
    assert len(selection.indices) == 120
    record = selection.policy
    assert record["learned"] is True and len(record["history"]) >= 1
    assert record["a"] > 0 and record["b"] > 0 and isinstance(record["fell_back_to_uniform"], bool)
    assert np.isfinite(record["val_loss_learned"]) and np.isfinite(record["val_loss_uniform"])
