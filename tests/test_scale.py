"""ImageNet-scale code paths on problems small enough to check: the streamed EK-FAC-CG path on a fit subsample
against the exact in-memory path, chunk sizes that must not change the kept rows, bounded resident memory while
streaming a memory-mapped cache, and the reduced bilevel problem of `hf_ifbeta.policy_scale`."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from hf_ifbeta import policy_scale
from hf_ifbeta.config import PolicyArguments, PolicyReduction, PrunerConfig
from hf_ifbeta.features import TeacherOutputs
from hf_ifbeta.arrays import ProxyData as _Data, read_rows as _read_rows
from hf_ifbeta.influence import influence_scores
from hf_ifbeta.losses import ProxyLoss
from hf_ifbeta.policy import rank_positions
from hf_ifbeta.policy_learning import learn_beta_policy
from hf_ifbeta.policy_scale import learn_beta_policy_at_scale
from hf_ifbeta.pruner import validation_split
from hf_ifbeta.scorers import ScoringContext, get_method


# Small tensors on a shared CPU; also makes float32 reductions run in one fixed order.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def teacher_outputs(n=3000, d=24, num_classes=10, flip=0.1, seed=0):
    """ImageNet-like in miniature: relu'd class blobs, logits of a noisy linear teacher head, some flipped labels."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(num_classes, d)) * 0.8
    y = rng.integers(0, num_classes, n)
    h = np.maximum(0.5 + mu[y] + rng.normal(size=(n, d)), 0.0)
    weight, bias = 1.2 * mu, 0.1 * rng.normal(size=num_classes)
    z = h @ weight.T + bias + rng.normal(size=(n, num_classes))
    flipped = rng.random(n) < flip
    y = np.where(flipped, (y + rng.integers(1, num_classes, n)) % num_classes, y)
    return TeacherOutputs(
        features=h.astype(np.float32), logits=z.astype(np.float32), labels=y.astype(np.int64),
        head=(weight.astype(np.float32), bias.astype(np.float32)), meta={"features_dtype": "float32"},
    )  # fmt: skip


def on_disk(outputs: TeacherOutputs, path) -> TeacherOutputs:
    """The outputs as the teacher pass leaves them: float16 features, saved, then memory-mapped back."""
    TeacherOutputs(
        features=outputs.features.astype(np.float16), logits=outputs.logits, labels=outputs.labels,
        head=outputs.head, meta={"features_dtype": "float16"},
    ).save(path)  # fmt: skip
    loaded = TeacherOutputs.load(path)
    assert isinstance(loaded.features, np.memmap) and loaded.features.dtype == np.float16
    return loaded


# ---------------------------------------------------------------------------------------------------------
# Influence: the scale path against the exact path
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cross_fit", [True, False])
def test_streamed_kfac_on_a_fit_subsample_agrees_with_the_exact_in_memory_path(tmp_path, cross_fit):
    outputs = teacher_outputs(n=8000)
    val = validation_split(outputs.labels, 0.1, 2000, seed=0)
    exact = influence_scores(outputs.features, outputs.logits, outputs.labels, val, hessian="exact")
    cached = on_disk(outputs, tmp_path / "cache")
    scale = influence_scores(
        cached.features, cached.logits, cached.labels, val, hessian="kfac", fit_subsample=3000, chunk_size=256,
        init_head=cached.head, cross_fit=cross_fit,
    )  # fmt: skip
    assert exact.info["hessian"] == "exact" and exact.info["n_fit"] == 8000 - len(val)
    assert scale.info["hessian"] == "kfac" and scale.info["n_fit"] == 3000
    assert scale.info["residual"] <= 1e-4
    r = pearsonr(exact.scores, scale.scores)[0]
    assert r >= 0.9, f"Pearson {r:.3f} between the scale path and the exact path"


def test_cross_fit_scores_the_fit_subsample_with_a_head_that_did_not_see_it():
    # 300 fit rows for a 1,300-parameter head: it nearly interpolates them, so their own gradients are small.
    outputs = teacher_outputs(n=3000, d=64, num_classes=20)
    val = validation_split(outputs.labels, 0.1, 2000, seed=0)
    args = (outputs.features, outputs.logits, outputs.labels, val)
    kwargs = dict(hessian="kfac", fit_subsample=300, init_head=outputs.head, seed=0)
    plain = influence_scores(*args, cross_fit=False, **kwargs)
    crossed = influence_scores(*args, **kwargs)  # cross_fit=True is the default
    sub = np.zeros(3000, bool)
    sub[np.random.default_rng(0).choice(np.setdiff1d(np.arange(3000), val), 300, replace=False)] = True

    def in_over_out(scores):
        return np.median(np.abs(scores[sub])) / np.median(np.abs(scores[~sub]))

    assert in_over_out(plain.scores) < 0.3  # the bias cross-fitting removes
    assert 0.6 < in_over_out(crossed.scores) < 1.6
    np.testing.assert_array_equal(crossed.scores[~sub], plain.scores[~sub])  # the first head scores the rest
    assert crossed.info["cross_fit"]["n_fit"] == 300 and "cross_fit" in crossed.info["timings_s"]
    assert "cross_fit" not in influence_scores(*args, hessian="kfac").info  # no subsample, nothing to cross


@pytest.mark.parametrize("method", ["influence", "if-beta", "if-beta-reduced"])
def test_chunk_size_does_not_change_the_kept_rows(tmp_path, method):
    method_kwargs = {}
    if method == "if-beta-reduced":  # force the reduced bilevel problem: 5 of 10 classes, features 24 -> 8
        method_kwargs["reduction"] = PolicyReduction(max_head_params=0, projection_dim=8, max_classes=5)
    outputs = on_disk(teacher_outputs(n=5000), tmp_path / "cache")
    kept = []
    for chunk_size in (97, 3072):  # read 1,024 rows at a time (the minimum) or 3,072
        config = PrunerConfig(
            method=method.replace("-reduced", ""), hessian="kfac", fit_subsample=1200, stream_chunk_size=chunk_size,
            outer_steps=3, policy_subsample=600,
        )  # fmt: skip
        val = validation_split(outputs.labels, config.val_fraction, config.val_max_per_class, config.seed)
        influence = influence_scores(
            outputs.features, outputs.logits, outputs.labels, val, hessian="kfac", fit_subsample=1200,
            chunk_size=chunk_size, init_head=outputs.head,
        )  # fmt: skip
        pruning = get_method(config.method, **method_kwargs)
        context = ScoringContext(config=config, val_indices=val, influence=influence)
        selection = pruning.select(outputs, pruning.score(outputs, context), 0.3, context, seed=0)
        if method != "influence":
            reduced = selection.policy["info"].get("reduced")
            assert (reduced is not None) == (method == "if-beta-reduced")
        kept.append(selection.indices)
    assert len(kept[0]) == 3500
    np.testing.assert_array_equal(kept[0], kept[1])


# ---------------------------------------------------------------------------------------------------------
# Memory: streaming a memory-mapped cache
# ---------------------------------------------------------------------------------------------------------


def _rss_file_bytes() -> int:
    """Memory-mapped file pages resident in this process (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    pytest.skip("/proc/self/status has no RssFile (not Linux)")


def test_streaming_a_memmap_keeps_its_pages_out_of_the_resident_set(tmp_path):
    n, d = 16384, 2048  # 64 MiB of float16
    mm = np.lib.format.open_memmap(tmp_path / "features.npy", "w+", np.float16, (n, d))
    for s in range(0, n, 4096):
        mm[s : s + 4096] = np.random.default_rng(s).standard_normal((4096, d)).astype(np.float16)
    mm.flush()
    del mm
    features = np.load(tmp_path / "features.npy", mmap_mode="r")
    logits = np.zeros((n, 3), np.float32)
    data = _Data(features, logits, np.zeros(n, np.int64), 1024, torch.device("cpu"), torch.float32)

    before = _rss_file_bytes()
    peak, total = before, 0.0
    for s in range(0, n, 1024):
        total += float(data.load(np.arange(s, s + 1024)).x[:, :-1].sum())
        peak = max(peak, _rss_file_bytes())
    assert peak - before < 16 * 2**20, f"streaming grew the mapped resident set by {(peak - before) / 2**20:.0f} MiB"
    assert np.isfinite(total)

    # The check can fail: plain reads of the same memmap keep every page resident.
    features = np.load(tmp_path / "features.npy", mmap_mode="r")
    before = _rss_file_bytes()
    for s in range(0, n, 1024):
        np.array(features[s : s + 1024])
    assert _rss_file_bytes() - before > 48 * 2**20

    # Sparse gathers (sorted row ids, runs of neighbours included) map nothing either, and equal plain indexing,
    # also on views of the map (a slice starts inside the file) and on 1-D arrays.
    features = np.load(tmp_path / "features.npy", mmap_mode="r")
    rows = np.sort(np.random.default_rng(0).choice(n, 3000, replace=False))
    rows = np.unique(np.concatenate([rows, np.arange(500, 530)]))
    before = _rss_file_bytes()
    gathered = _read_rows(features, rows)
    assert _rss_file_bytes() - before < 4 * 2**20
    np.testing.assert_array_equal(gathered, np.asarray(features[rows]))
    view = features[1000:]
    np.testing.assert_array_equal(_read_rows(view, rows[:100]), np.asarray(view[rows[:100]]))
    np.save(tmp_path / "labels.npy", np.arange(n, dtype=np.int64) * 7)
    labels = np.load(tmp_path / "labels.npy", mmap_mode="r")
    np.testing.assert_array_equal(_read_rows(labels, rows), rows * 7)


# ---------------------------------------------------------------------------------------------------------
# The reduced bilevel problem
# ---------------------------------------------------------------------------------------------------------


def policy_problem(n=1500, d=16, num_classes=6, seed=0):
    outputs = teacher_outputs(n=n, d=d, num_classes=num_classes, seed=seed)
    u = rank_positions(np.random.default_rng(seed).normal(size=n), outputs.labels)
    val = validation_split(outputs.labels, 0.15, 2000, seed=0)
    return outputs, u, val


def test_reduced_path_without_reduction_is_the_plain_path():
    outputs, u, val = policy_problem()
    args = PolicyArguments(outer_steps=4, subsample=None, val_subsample=None)
    plain = learn_beta_policy(outputs.features, outputs.logits, outputs.labels, u, 0.5, val, policy_args=args, seed=1)
    reduction = PolicyReduction(max_head_params=0, projection_dim=16, max_classes=6)
    reduced = learn_beta_policy_at_scale(
        outputs.features, outputs.logits, outputs.labels, u, 0.5, val, seed=1,
        policy_args=dataclasses.replace(args, reduction=reduction),
    )  # fmt: skip
    info = reduced.info["reduced"]
    assert (info["classes"], info["projection_dim"], info["inner_lr"]) == (6, 16, 0.1)
    assert info["train_rows"] == 1500 - len(val) and info["val_rows"] == len(val)
    for p, r in zip(plain.history, reduced.history):
        np.testing.assert_allclose([r["a"], r["b"], r["loss"]], [p["a"], p["b"], p["loss"]], rtol=1e-3)


def test_reduced_path_reads_only_its_classes_and_rows(tmp_path):
    outputs, u, val = policy_problem(n=3000, d=32, num_classes=12)
    cached = on_disk(outputs, tmp_path / "cache")
    args = PolicyArguments(
        outer_steps=3, subsample=400, val_subsample=100,
        reduction=PolicyReduction(max_head_params=100, projection_dim=8, max_classes=4),
    )  # fmt: skip
    data = (cached.features, cached.logits, cached.labels, u, 0.3, val)
    first = learn_beta_policy_at_scale(*data, policy_args=args, seed=0)
    again = learn_beta_policy_at_scale(*data, policy_args=dataclasses.replace(args, chunk_size=7), seed=0)
    info = first.info["reduced"]
    assert (info["classes"], info["of_classes"], info["projection_dim"], info["of_features"]) == (4, 12, 8, 32)
    assert (info["train_rows"], info["val_rows"]) == (400, 100)
    assert info["inner_lr"] == pytest.approx(0.1 * 32 / 8) and info["l2"] == pytest.approx(1e-3 * 8 / 32)
    assert first.info["num_train_rows"] == 400 and first.info["num_kept_rows"] == 280
    assert (first.policy.a, first.policy.b) == (again.policy.a, again.policy.b)  # the read chunking is invisible
    assert first.history == again.history


def test_reduced_path_keeps_the_features_by_default():
    outputs, u, val = policy_problem(n=1200, d=16, num_classes=6)
    reduction = PolicyReduction(max_head_params=0, max_classes=3)  # reduce even this small head
    args = PolicyArguments(outer_steps=2, subsample=300, reduction=reduction)
    result = learn_beta_policy_at_scale(outputs.features, outputs.logits, outputs.labels, u, 0.3, val, policy_args=args)
    info = result.info["reduced"]
    assert (info["classes"], info["projection_dim"]) == (3, 16)
    assert (info["inner_lr"], info["l2"]) == (args.inner_lr, ProxyLoss().l2)  # unmapped: no projection


def test_random_projection_is_orthonormal_and_seeded():
    q = policy_scale._random_projection(64, 16, seed=3)
    np.testing.assert_allclose(q.T @ q, np.eye(16), atol=1e-5)
    np.testing.assert_array_equal(q, policy_scale._random_projection(64, 16, seed=3))
    assert not np.allclose(q, policy_scale._random_projection(64, 16, seed=4))
    with pytest.raises(ValueError, match="projection dimension"):
        policy_scale._random_projection(8, 9, seed=0)


def test_reduced_path_reads_the_coverage_view_of_its_rows(tmp_path, monkeypatch):
    outputs, u, val = policy_problem(n=1200, d=16, num_classes=6)
    view = np.random.default_rng(3).normal(size=(1200, 12)).astype(np.float32)
    np.save(tmp_path / "coverage.npy", view)
    on_disk_view = np.load(tmp_path / "coverage.npy", mmap_mode="r")
    reduction = PolicyReduction(max_head_params=0, max_classes=3)
    args = PolicyArguments(
        outer_steps=2, subsample=300, reduction=reduction, objective="kd+coverage", coverage_view="stage", chunk_size=7,
    )  # fmt: skip
    data = (outputs.features, outputs.logits, outputs.labels, u, val)
    problem = policy_scale.reduce_policy_problem(*data, policy_args=args, seed=0, coverage=on_disk_view)
    np.testing.assert_array_equal(problem.coverage, view[problem.rows])  # the rows of the reduced problem, as given
    assert policy_scale.reduce_policy_problem(*data, policy_args=args, seed=0).coverage is None
    seen = []

    def spy(*args, coverage=None, **kwargs):
        seen.append(coverage)
        return learn_beta_policy(*args, coverage=coverage, **kwargs)

    monkeypatch.setattr(policy_scale, "learn_beta_policy", spy)
    result = learn_beta_policy_at_scale(*data[:4], 0.3, val, policy_args=args, coverage=on_disk_view)
    np.testing.assert_array_equal(seen[0], problem.coverage)
    assert result.info["reduced"]["classes"] == 3 and len(result.history) == 2
    plain = dataclasses.replace(args, reduction=PolicyReduction())  # below the threshold: the view as it is
    learn_beta_policy_at_scale(*data[:4], 0.3, val, policy_args=plain, coverage=on_disk_view)
    assert seen[1] is on_disk_view
    with pytest.raises(ValueError, match=r"coverage_view='stage'.*got None"):
        learn_beta_policy_at_scale(*data[:4], 0.3, val, policy_args=plain)
