"""Tests of `PrunerConfig.stages()`: the one place the user's config is split into the arguments of each stage."""

import dataclasses
import inspect

import numpy as np
import pytest

from hf_ifbeta.config import (
    PRESET_FIELDS,
    PRESETS,
    PolicyArguments,
    PolicyReduction,
    PrunerConfig,
    TeacherPassArguments,
    apply_preset,
)
from hf_ifbeta.influence import InfluenceArguments, influence_scores
from hf_ifbeta.losses import ProxyLoss
from hf_ifbeta.policy_learning import learn_beta_policy
from hf_ifbeta.policy_scale import learn_beta_policy_at_scale


def test_default_config_splits_into_the_default_stage_arguments():
    stages = PrunerConfig().stages()
    assert stages.teacher_pass == TeacherPassArguments()
    assert stages.loss == ProxyLoss()
    assert stages.influence == InfluenceArguments()
    assert stages.policy == PolicyArguments()
    for function in (learn_beta_policy, learn_beta_policy_at_scale):  # no second set of defaults
        parameters = inspect.signature(function).parameters
        assert parameters["loss"].default == ProxyLoss() and parameters["policy_args"].default == PolicyArguments()


def test_every_field_reaches_its_stage():
    changed = dict(
        batch_size=7, num_workers=2, chunk_size=9, cache_dir="c", features_dtype="float16", teacher_precision="fp32",
        alpha=0.5, temperature=2.0, l2=0.01, standardize=False, hessian="kfac", exact_max_params=5, cg_max_iter=6,
        cg_tol=1e-3, fit_max_iter=8, fit_subsample=100, stream_chunk_size=333, stratify=False, policy_max_ab=3.0,
        outer_steps=4, outer_lr=0.3, inner_epochs=2.0, inner_batch_size=16, inner_lr=0.05, policy_subsample=50,
        policy_objective="kd+coverage", policy_coverage_weight=0.5, policy_coverage_dim=4, policy_coverage_views=2,
        policy_coverage_view="stage", policy_entropy_weight=0.01,
    )  # fmt: skip
    stages = PrunerConfig(**changed).stages()
    assert stages.teacher_pass == TeacherPassArguments(7, 2, 9, "c", "float16", "fp32", coverage_stage=True)
    assert stages.loss == ProxyLoss(0.5, 2.0, 0.01)
    assert stages.influence == InfluenceArguments(
        standardize=False, hessian="kfac", exact_max_params=5, cg_max_iter=6, cg_tol=1e-3, fit_max_iter=8,
        fit_subsample=100, chunk_size=333,
    )  # fmt: skip
    assert stages.policy == dataclasses.replace(
        PolicyArguments(), outer_steps=4, outer_lr=0.3, inner_epochs=2.0, inner_batch_size=16, inner_lr=0.05,
        subsample=50, max_ab=3.0, stratify=False, chunk_size=333, objective="kd+coverage", coverage_weight=0.5,
        coverage_dim=4, coverage_views=2, coverage_view="stage", entropy_weight=0.01,
    )  # fmt: skip


@pytest.mark.parametrize(
    "objective, view, computed",
    [("kd", "projection", False), ("kd", "stage", False), ("kd+coverage", "projection", False),
     ("kd+coverage", "stage", True)],
)  # fmt: skip
def test_the_teacher_pass_computes_the_stage_view_only_when_the_objective_uses_it(objective, view, computed):
    stages = PrunerConfig(policy_objective=objective, policy_coverage_view=view).stages()
    assert stages.teacher_pass.coverage_stage is computed
    assert stages.policy.coverage_view == view
    assert PrunerConfig().policy_coverage_view == "projection" and not PrunerConfig().stages().teacher_pass.coverage_stage


def test_an_unknown_coverage_view_names_the_choices():
    with pytest.raises(ValueError, match=r"Unknown policy coverage view 'layer2'. Choose between \['projection', 'stage'\]"):
        PrunerConfig(policy_coverage_view="layer2")
    with pytest.raises(ValueError, match="Choose between"):
        PolicyArguments(coverage_view="pixels")


def test_influence_stage_is_what_influence_scores_takes():
    """The config's influence and loss stages go to `influence_scores` as they are, equal to the keyword call."""
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    features = rng.standard_normal((60, 5)).astype(np.float32)
    logits = features @ rng.standard_normal((5, 3)).astype(np.float32)
    stages = PrunerConfig(hessian="exact", fit_max_iter=20, l2=0.01).stages()
    assert isinstance(stages.influence, InfluenceArguments)
    staged = influence_scores(features, logits, labels, np.arange(10), proxy_loss=stages.loss, args=stages.influence)
    keywords = influence_scores(features, logits, labels, np.arange(10), hessian="exact", fit_max_iter=20, l2=0.01)
    np.testing.assert_array_equal(staged.scores, keywords.scores)


def test_stage_arguments_are_frozen_and_checked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PolicyArguments().max_ab = 50.0
    with pytest.raises(ValueError, match="outer_steps must be >= 1"):
        PolicyArguments(outer_steps=0)
    with pytest.raises(ValueError, match="subsample must be >= 1 or None"):
        PolicyArguments(subsample=0)
    with pytest.raises(ValueError, match="max_classes must be >= 1"):
        PolicyReduction(max_classes=0)
    with pytest.raises(ValueError, match="policy_max_ab must be in"):
        PrunerConfig(policy_max_ab=60.0)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("temperature", float("nan"), "temperature must be finite and > 0, got nan"),
        ("temperature", float("inf"), "temperature must be finite and > 0, got inf"),
        ("l2", float("nan"), "l2 must be finite and >= 0, got nan"),
        ("cg_max_iter", 0, "cg_max_iter must be >= 1, got 0"),
        ("exact_max_params", -1, "exact_max_params must be >= 0, got -1"),
    ],
)
def test_settings_that_would_fail_after_the_teacher_pass_are_refused_at_once(field, value, message):
    with pytest.raises(ValueError, match=message):
        PrunerConfig(**{field: value})


def test_an_unknown_method_is_left_to_the_pruner():
    assert PrunerConfig(method="not-registered").method == "not-registered"  # the registry is not imported here


def test_the_stage_view_is_computed_only_when_the_objective_weighs_it():
    stage = dict(policy_objective="kd+coverage", policy_coverage_view="stage")
    assert PrunerConfig(**stage).stages().teacher_pass.coverage_stage
    assert PrunerConfig(**stage).stages().policy.uses_stage_view
    weightless = PrunerConfig(**stage, policy_coverage_weight=0.0).stages()
    assert not weightless.teacher_pass.coverage_stage and not weightless.policy.uses_stage_view


# ----------------------------------------------------------------------------- named configurations
def test_box2_is_todays_default():
    assert PrunerConfig.from_preset("box2") == PrunerConfig()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_pins_every_field_that_defines_the_policy_learning(name):
    assert set(PRESETS[name]) == set(PRESET_FIELDS)
    config = PrunerConfig.from_preset(name)
    assert {k: getattr(config, k) for k in PRESET_FIELDS} == PRESETS[name]


def test_stage_coverage_preset_asks_the_teacher_pass_for_the_stage_view():
    stages = PrunerConfig.from_preset("stage-coverage").stages()
    assert stages.teacher_pass.coverage_stage and stages.policy.uses_stage_view
    assert stages.policy.max_ab == 16.0


def test_overrides_win_over_the_preset_and_the_preset_is_not_changed():
    config = PrunerConfig.from_preset("stage-coverage", policy_max_ab=8.0, image_column="img")
    assert (config.policy_max_ab, config.image_column, config.policy_coverage_view) == (8.0, "img", "stage")
    assert PRESETS["stage-coverage"]["policy_max_ab"] == 16.0


def test_an_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match=r"Unknown preset 'box3'.*'box2'"):
        PrunerConfig.from_preset("box3")


def parser():
    from transformers import HfArgumentParser

    return HfArgumentParser(PrunerConfig)


@pytest.mark.parametrize("argv", [["--outer_steps", "3", "--preset", "stage-coverage"], ["--preset=stage-coverage", "--outer_steps", "3"]])
def test_apply_preset_takes_the_preset_out_and_sets_it_as_the_defaults(argv):
    p = parser()
    rest = apply_preset(p, argv)
    assert rest == ["--outer_steps", "3"]
    (config,) = p.parse_args_into_dataclasses(args=rest + ["--policy_max_ab", "8"])
    assert (config.outer_steps, config.policy_max_ab, config.policy_coverage_view) == (3, 8.0, "stage")  # given flags win
    p = parser()
    assert apply_preset(p, ["--outer_steps", "3"]) == ["--outer_steps", "3"]
    assert p.parse_args_into_dataclasses(args=[])[0] == PrunerConfig()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "box3"], "Unknown preset 'box3'"),
        (["--preset"], "--preset needs a name"),
        (["--preset", "--outer_steps", "3"], "--preset needs a name"),
        (["--preset", "box2", "--preset=stage-coverage"], "--preset given 2 times"),
    ],
)
def test_a_bad_preset_is_a_usage_error_of_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit):
        apply_preset(parser(), argv)
    assert message in capsys.readouterr().err


def test_help_prints_whatever_the_preset():
    assert apply_preset(parser(), ["--preset", "box3", "-h"]) == ["-h"]
