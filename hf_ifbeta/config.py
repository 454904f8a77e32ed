"""Configuration dataclasses. Every field has `help` metadata, so `HfArgumentParser` gives `--help`.

`PrunerConfig` is what a user sets; `PrunerConfig.stages()` splits it, in this one place, into the small frozen
argument objects each stage of the pruner takes (`TeacherPassArguments`, `losses.ProxyLoss`,
`InfluenceArguments`, `PolicyArguments`), and their defaults are the config's defaults.
"""

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .influence import InfluenceArguments
from .losses import ProxyLoss
from .solvers import HESSIAN_MODES

__all__ = [
    "DistillationTrainingArguments",
    "InfluenceArguments",
    "PolicyArguments",
    "PolicyReduction",
    "PrunerConfig",
    "PrunerStages",
    "TeacherPassArguments",
    "PRESETS",
    "apply_preset",
]

SCORE_TYPES = ("influence", "self-influence")
# Box of the outer policy search on a and b: Beta(0.1, .) is already an extreme two-tailed policy, Beta(50, 1)
# keeps essentially the top of each class.
MIN_AB, MAX_AB = 0.1, 50.0


# --------------------------------------------------------------------------------------------------------------
# Arguments of one stage each
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherPassArguments:
    """How the teacher pass batches, decodes, caches and computes (`features.compute_teacher_outputs`).

    Args:
        batch_size (`int`): batch size per process.
        num_workers (`int`, *optional*): DataLoader workers; None lets the pruner choose from the CPU cores.
        chunk_size (`int`): rows per cached chunk (the unit of resumption).
        cache_dir (`str`, *optional*): cache folder; None is `$HF_HOME/hf_ifbeta`.
        features_dtype (`str`): float32 or float16 storage of the features.
        precision (`str`): fp32, bf16 or auto.
        coverage_stage (`bool`): also keep, per row, the teacher's middle feature stage average-pooled to 2 x 2
            (`TeacherOutputs.coverage`), the "stage" view of the "kd+coverage" policy objective.
    """

    batch_size: int = 256
    num_workers: Optional[int] = None
    chunk_size: int = 4096
    cache_dir: Optional[str] = None
    features_dtype: str = "float32"
    precision: str = "auto"
    coverage_stage: bool = False


@dataclass(frozen=True)
class PolicyReduction:
    """When and how the bilevel policy problem is solved on a reduced copy (`policy_scale`), for large heads.

    Args:
        max_head_params (`int`): head size C (d + 1) above which the reduced copy is solved.
        max_classes (`int`): classes drawn for the reduced copy.
        projection_dim (`int`, *optional*): project the standardised features to this many dimensions; None keeps
            them, since a projection blurs a class signal that is a small part of the feature norm and then ranks
            policies unlike the full features do.
    """

    max_head_params: int = 50_000
    max_classes: int = 100
    projection_dim: Optional[int] = None

    def __post_init__(self):
        if self.max_head_params < 0:
            raise ValueError(f"max_head_params must be >= 0, got {self.max_head_params}.")
        for name in ("max_classes", "projection_dim"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")


OUTER_OBJECTIVES = ("kd", "kd+coverage")
# The weak view of the "kd+coverage" coverage term: random projections of the features, or the teacher's middle
# feature stage pooled to 2 x 2 (computed by the teacher pass when asked).
COVERAGE_VIEWS = ("projection", "stage")


@dataclass(frozen=True)
class PolicyArguments:
    """How `policy_learning.learn_beta_policy` learns the Beta policy's (a, b) (the proxy loss aside).

    Args:
        outer_steps (`int`): outer (hypergradient) steps.
        outer_lr (`float`): Adam learning rate on (log a, log b).
        inner_epochs (`float`): epochs of the inner fit over the kept rows, `T = ceil(inner_epochs * m /
            inner_batch_size)` steps: the student's budget.
        inner_batch_size (`int`): the student's batch size, which turns epochs into steps.
        inner_lr (`float`): learning rate of the inner full-batch steps (momentum 0.9).
        subsample (`int`, *optional*): training rows of the bilevel problem (stratified); None = all. The cost
            grows with its square (rows per step x steps).
        val_subsample (`int`, *optional*): validation rows used (stratified); None = all.
        max_ab (`float`): a and b stay in [max(MIN_AB, 1 / max_ab), max_ab], at most `MAX_AB`. A small box allows
            only mild leans from uniform; the largest reaches keep-the-top.
        stratify (`bool`): per-class budgets.
        eval_seeds (`int`): discrete subsets per policy in the final check against uniform.
        num_threads (`int`, *optional*): torch CPU threads while learning (restored after); None leaves torch's
            setting. The inner ops are small, and more threads than free cores stall them.
        chunk_size (`int`): rows per read of (memory-mapped) arrays on the reduced path.
        reduction (`PolicyReduction`): when and how a large head's problem is reduced.
        objective (`str`): the outer loss. "kd": the proxy's validation KD loss (rewards informative rows).
            "kd+coverage": that loss mixed with the same proxy's on features randomly projected to `coverage_dim`
            dimensions, which cannot reproduce the teacher and so loses accuracy where the kept rows cover the data
            badly; each term is taken relative to its value under the uniform policy.
        coverage_weight (`float`): share of the coverage term in "kd+coverage", in [0, 1]; ignored with "kd".
        coverage_dim (`int`): dimensions of the coverage proxy's projected features, fewer than the teacher's.
        coverage_views (`int`): independent random projections the coverage term averages over, so that the
            answer does not hang on one draw.
        coverage_view (`str`): the coverage term's view: "projection" (the random projections above) or "stage"
            (the teacher's middle feature stage average-pooled to 2 x 2, `TeacherOutputs.coverage`, a fixed view
            nearer to what a student trained from pixels sees); `coverage_dim` and `coverage_views` then do not apply.
        entropy_weight (`float`): weight of `-H(Beta(a, b))` added to the (relative) outer loss: a maximum-entropy
            tie-break between policies the loss finds almost equally good, so that the answer is not wherever
            Adam drifts along a flat ridge.
    """

    outer_steps: int = 20
    outer_lr: float = 0.2
    inner_epochs: float = 15.0
    inner_batch_size: int = 128
    inner_lr: float = 0.1
    subsample: Optional[int] = 4_000
    val_subsample: Optional[int] = 2_000
    max_ab: float = 2.0
    stratify: bool = True
    eval_seeds: int = 3
    num_threads: Optional[int] = 1
    chunk_size: int = 65_536
    reduction: PolicyReduction = PolicyReduction()
    objective: str = "kd"
    coverage_weight: float = 0.75
    coverage_dim: int = 16
    coverage_views: int = 1
    coverage_view: str = "projection"
    entropy_weight: float = 0.0

    @property
    def uses_stage_view(self) -> bool:
        """Whether the outer objective has a coverage term on the teacher's middle-stage view."""
        return self.objective == "kd+coverage" and self.coverage_view == "stage" and self.coverage_weight > 0

    def __post_init__(self):
        if self.objective not in OUTER_OBJECTIVES:
            raise ValueError(f"Unknown policy objective {self.objective!r}. Choose between {list(OUTER_OBJECTIVES)}.")
        if self.coverage_view not in COVERAGE_VIEWS:
            raise ValueError(f"Unknown policy coverage view {self.coverage_view!r}. Choose between {list(COVERAGE_VIEWS)}.")
        if not 0.0 <= self.coverage_weight <= 1.0:
            raise ValueError(f"coverage_weight must be in [0, 1], got {self.coverage_weight}.")
        if not 0.0 <= self.entropy_weight < float("inf"):  # also rejects NaN
            raise ValueError(f"entropy_weight must be finite and >= 0, got {self.entropy_weight}.")
        for name in ("outer_steps", "eval_seeds", "chunk_size", "coverage_dim", "coverage_views"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not 1.0 < self.max_ab <= MAX_AB:
            raise ValueError(f"max_ab must be in (1, {MAX_AB:g}], got {self.max_ab}.")
        for name in ("subsample", "val_subsample", "num_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}.")


@dataclass(frozen=True)
class PrunerStages:
    """A `PrunerConfig` split by stage (`PrunerConfig.stages()`): what each stage of the pruner is handed."""

    teacher_pass: TeacherPassArguments
    loss: ProxyLoss
    influence: InfluenceArguments
    policy: PolicyArguments


# --------------------------------------------------------------------------------------------------------------
# Named configurations
# --------------------------------------------------------------------------------------------------------------

# The fields that tell the presets apart: how the outer objective judges a policy and how far the search may go.
# Every preset sets each of them; the budget (inner_epochs, inner_batch_size) stays the user's or the recipe's.
PRESET_FIELDS = (
    "policy_objective", "policy_max_ab", "policy_coverage_view", "policy_coverage_weight", "policy_entropy_weight",
)  # fmt: skip
PRESETS: Dict[str, Dict[str, Any]] = {
    # The proxy's validation KD loss inside a, b in [0.5, 2]: the search ends on the box's corner Beta(2, 0.5).
    "box2": dict(
        policy_objective="kd", policy_max_ab=2.0, policy_coverage_view="projection", policy_coverage_weight=0.75,
        policy_entropy_weight=0.0,
    ),
    # That loss mixed half and half with a coverage term on the teacher's middle stage, in a, b in [1/16, 16].
    "stage-coverage": dict(
        policy_objective="kd+coverage", policy_max_ab=16.0, policy_coverage_view="stage", policy_coverage_weight=0.5,
        policy_entropy_weight=3e-4,
    ),
}  # fmt: skip


def _preset(name: str) -> Dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Choose between {sorted(PRESETS)}.")
    return dict(PRESETS[name])


def apply_preset(parser: argparse.ArgumentParser, argv: Sequence[str]) -> List[str]:
    """Take `--preset NAME` (or `--preset=NAME`) out of `argv` and make that preset's fields `parser`'s defaults,
    so that fields given on the command line still win over it, and the preset over defaults set earlier.

    Returns the other arguments. A missing, unknown or repeated preset is a usage error of `parser`; with `-h`
    the preset is left out, so help always prints.
    """
    names, rest, args = [], [], list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--preset":
            if not args or args[0].startswith("-"):
                parser.error(f"--preset needs a name: one of {sorted(PRESETS)}.")
            names.append(args.pop(0))
        elif arg.startswith("--preset="):
            names.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    if not names or "-h" in rest or "--help" in rest:
        return rest
    if len(names) > 1:
        parser.error(f"--preset given {len(names)} times ({', '.join(names)}): give one.")
    try:
        parser.set_defaults(**_preset(names[0]))
    except ValueError as err:
        parser.error(str(err))
    return rest


PRESET_HELP = (
    f"--preset {{{','.join(sorted(PRESETS))}}}: start from a named configuration of the policy's learning "
    "(`hf_ifbeta.config.PRESETS`); fields given on the command line override it."
)


# --------------------------------------------------------------------------------------------------------------
# The user's entry point
# --------------------------------------------------------------------------------------------------------------


@dataclass
class PrunerConfig:
    """How `DatasetPruner` scores and selects rows. Defaults follow the IF-Beta method description.

    The fields fall in four groups: the teacher pass (columns, batching, cache), the proxy head and
    its influence scores, the Beta policy and its bilevel learning, and reproducibility (`seed`).
    `stages()` hands each stage its part. The method name is checked against the registry by
    `DatasetPruner` (the registry imports the methods, which this module must not).
    """

    method: str = field(
        default="if-beta",
        metadata={"help": "Pruning method from the registry (`hf_ifbeta.list_methods()`), e.g. if-beta, influence, random."},
    )
    image_column: Optional[str] = field(
        default=None, metadata={"help": "Image column; None picks the dataset's only `datasets.Image` column."}
    )
    label_column: str = field(default="label", metadata={"help": "Integer / ClassLabel column with the class ids."})

    # Teacher pass
    batch_size: int = field(
        default=TeacherPassArguments.batch_size, metadata={"help": "Teacher-pass batch size per process."}
    )
    num_workers: Optional[int] = field(
        default=None,
        metadata={
            "help": "DataLoader workers decoding images in the teacher pass; None: this process's share of the CPU "
            "cores less one, at most 8 (0 decodes in the main process)."
        },
    )
    chunk_size: int = field(
        default=TeacherPassArguments.chunk_size,
        metadata={"help": "Rows per cached chunk of the teacher pass (the unit of resumption and of streaming)."},
    )
    cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Where teacher outputs are cached; default `$HF_HOME/hf_ifbeta` (~/.cache/huggingface/hf_ifbeta)."},
    )
    features_dtype: str = field(
        default=TeacherPassArguments.features_dtype,
        metadata={"help": "Storage dtype of cached features: float32, or float16 to halve disk and memory at ImageNet scale."},
    )
    teacher_precision: str = field(
        default=TeacherPassArguments.precision,
        metadata={
            "help": "The teacher pass's forward: fp32, bf16 (autocast + channels_last; features and logits stored "
            "in float32) or auto (bf16 where the GPU or CPU computes it natively, else fp32)."
        },
    )

    # Proxy head and influence
    alpha: float = field(
        default=ProxyLoss.alpha, metadata={"help": "Weight of the KD term in the proxy loss, in [0, 1]."}
    )
    temperature: float = field(
        default=ProxyLoss.temperature, metadata={"help": "KD temperature tau of the proxy loss, > 0."}
    )
    l2: float = field(
        default=ProxyLoss.l2, metadata={"help": "L2 regularisation lambda of the proxy head weights (mean loss scale)."}
    )
    standardize: bool = field(
        default=InfluenceArguments.standardize, metadata={"help": "Standardise teacher features before the proxy head."}
    )
    hessian: str = field(
        default=InfluenceArguments.hessian,
        metadata={"help": "Inverse-Hessian path: exact (dense), kfac (Kronecker-factored preconditioned CG) or auto (by size)."},
    )
    exact_max_params: int = field(
        default=InfluenceArguments.exact_max_params,
        metadata={"help": "With hessian=auto, use the dense Hessian while C * (d + 1) is at most this."}
    )
    cg_max_iter: int = field(
        default=InfluenceArguments.cg_max_iter, metadata={"help": "Max conjugate-gradient iterations on the kfac path."}
    )
    cg_tol: float = field(
        default=InfluenceArguments.cg_tol, metadata={"help": "Relative residual at which conjugate gradients stop."}
    )
    fit_max_iter: int = field(
        default=InfluenceArguments.fit_max_iter, metadata={"help": "Max L-BFGS iterations of the proxy-head fit."}
    )
    fit_subsample: Optional[int] = field(
        default=None, metadata={"help": "Fit the proxy head on at most this many random rows (None: all rows)."}
    )
    score_type: str = field(
        default="influence",
        metadata={"help": "Score the policy ranks by: influence (on the validation KD loss) or self-influence."},
    )
    val_fraction: float = field(
        default=0.1, metadata={"help": "Fraction of the training rows held out (stratified) as the validation slice V."}
    )
    val_max_per_class: int = field(default=2000, metadata={"help": "Cap on validation rows per class."})
    stream_chunk_size: int = field(
        default=InfluenceArguments.chunk_size,
        metadata={"help": "Rows per chunk when scoring streams cached features (bounds peak memory)."}
    )

    # Beta policy
    stratify: bool = field(
        default=PolicyArguments.stratify,
        metadata={"help": "Rank within each class and keep each class's share of the budget."}
    )
    policy_a: Optional[float] = field(
        default=None, metadata={"help": "Fix the Beta policy's a (with policy_b) instead of learning it."}
    )
    policy_b: Optional[float] = field(
        default=None, metadata={"help": "Fix the Beta policy's b (with policy_a) instead of learning it."}
    )
    policy_max_ab: float = field(
        default=PolicyArguments.max_ab,
        metadata={
            "help": "The learned a and b stay in [max(0.1, 1 / policy_max_ab), policy_max_ab]. 2 allows only mild leans "
            "from uniform (at most Beta(2, 0.5) towards the top); 50 reaches keep-the-top."
        },
    )
    outer_steps: int = field(
        default=PolicyArguments.outer_steps,
        metadata={"help": "Outer (hypergradient) steps of the bilevel policy learning."},
    )
    outer_lr: float = field(
        default=PolicyArguments.outer_lr, metadata={"help": "Adam learning rate on (log a, log b)."}
    )
    inner_epochs: float = field(
        default=PolicyArguments.inner_epochs,
        metadata={"help": "Epochs of the from-scratch inner proxy fit over the kept rows: mirror the student's budget."},
    )
    inner_batch_size: int = field(
        default=PolicyArguments.inner_batch_size,
        metadata={"help": "Batch size that turns inner epochs into inner steps (steps = epochs * m / batch)."}
    )
    inner_lr: float = field(
        default=PolicyArguments.inner_lr, metadata={"help": "Learning rate of the inner proxy fit."}
    )
    policy_subsample: Optional[int] = field(
        default=PolicyArguments.subsample,
        metadata={"help": "Rows (stratified) the bilevel problem is solved on; cost grows with its square. None: all rows."},
    )
    policy_objective: str = field(
        default=PolicyArguments.objective,
        metadata={
            "help": "Outer loss of the policy: 'kd' (the proxy's validation KD loss) or 'kd+coverage' (mixed with a "
            "proxy on randomly projected features, which feels the rows a subset leaves out).",
            "choices": list(OUTER_OBJECTIVES),
        },
    )
    policy_coverage_weight: float = field(
        default=PolicyArguments.coverage_weight, metadata={"help": "Share of the coverage term in 'kd+coverage'."}
    )
    policy_coverage_dim: int = field(
        default=PolicyArguments.coverage_dim, metadata={"help": "Dimensions of the coverage proxy's features."}
    )
    policy_coverage_views: int = field(
        default=PolicyArguments.coverage_views,
        metadata={"help": "Random projections the coverage term averages over."},
    )
    policy_coverage_view: str = field(
        default=PolicyArguments.coverage_view,
        metadata={
            "help": "View of the coverage term in 'kd+coverage': 'projection' (random projections of the features) or "
            "'stage' (the teacher's middle feature stage pooled to 2 x 2, computed by the teacher pass; needs a "
            "teacher with timm's `feature_info`).",
            "choices": list(COVERAGE_VIEWS),
        },
    )
    policy_entropy_weight: float = field(
        default=PolicyArguments.entropy_weight,
        metadata={"help": "Weight of the maximum-entropy tie-break -H(Beta(a, b)) in the outer loss (0: none)."},
    )

    seed: int = field(default=0, metadata={"help": "Seed of the validation split, subsamples and sampling."})

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}.")
        if not 0 < self.temperature < math.inf:  # also rejects NaN
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}.")
        if not 1.0 < self.policy_max_ab <= MAX_AB:
            raise ValueError(f"policy_max_ab must be in (1, {MAX_AB:g}], got {self.policy_max_ab}.")
        if not 0 <= self.l2 < math.inf:
            raise ValueError(f"l2 must be finite and >= 0, got {self.l2}.")
        if self.hessian not in HESSIAN_MODES:
            raise ValueError(f"Unknown hessian mode: {self.hessian}. Choose between {list(HESSIAN_MODES)}.")
        if self.score_type not in SCORE_TYPES:
            raise ValueError(f"Unknown score_type: {self.score_type}. Choose between {list(SCORE_TYPES)}.")
        if self.teacher_precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"Unknown teacher_precision: {self.teacher_precision}. Choose between ['auto', 'bf16', 'fp32'].")
        if self.features_dtype not in ("float32", "float16"):
            raise ValueError(f"features_dtype must be float32 or float16, got {self.features_dtype}.")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}.")
        if (self.policy_a is None) != (self.policy_b is None):
            raise ValueError(
                f"Set both policy_a and policy_b to fix the policy, or neither to learn it; got policy_a={self.policy_a}, "
                f"policy_b={self.policy_b}."
            )
        for name in ("policy_a", "policy_b"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}.")
        # Checked here, not where they are used: that is after the teacher pass.
        positive = (
            "batch_size", "chunk_size", "inner_batch_size", "stream_chunk_size", "val_max_per_class", "outer_steps", "cg_max_iter",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("num_workers", "fit_max_iter", "exact_max_params"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("fit_subsample", "policy_subsample"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None (all rows), got {value}.")
        for name in ("inner_epochs", "inner_lr", "outer_lr", "cg_tol"):
            if not getattr(self, name) > 0:  # also rejects NaN
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        self.stages()  # the stage arguments check the rest (the policy objective's fields among them)

    def stages(self) -> PrunerStages:
        """This config split into the arguments of each stage: the one place where its fields are unpacked."""
        policy = PolicyArguments(
            outer_steps=self.outer_steps, outer_lr=self.outer_lr, inner_epochs=self.inner_epochs,
            inner_batch_size=self.inner_batch_size, inner_lr=self.inner_lr, subsample=self.policy_subsample,
            max_ab=self.policy_max_ab, stratify=self.stratify, chunk_size=self.stream_chunk_size,
            objective=self.policy_objective, coverage_weight=self.policy_coverage_weight,
            coverage_dim=self.policy_coverage_dim, coverage_views=self.policy_coverage_views,
            coverage_view=self.policy_coverage_view, entropy_weight=self.policy_entropy_weight,
        )  # fmt: skip
        return PrunerStages(
            teacher_pass=TeacherPassArguments(
                batch_size=self.batch_size, num_workers=self.num_workers, chunk_size=self.chunk_size,
                cache_dir=self.cache_dir, features_dtype=self.features_dtype, precision=self.teacher_precision,
                coverage_stage=policy.uses_stage_view,
            ),
            loss=ProxyLoss(alpha=self.alpha, temperature=self.temperature, l2=self.l2),
            influence=InfluenceArguments(
                standardize=self.standardize, hessian=self.hessian, exact_max_params=self.exact_max_params,
                cg_max_iter=self.cg_max_iter, cg_tol=self.cg_tol, fit_max_iter=self.fit_max_iter,
                fit_subsample=self.fit_subsample, chunk_size=self.stream_chunk_size,
            ),
            policy=policy,
        )  # fmt: skip

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PrunerConfig":
        """The config of a named configuration (`PRESETS`), with `overrides` applied to any field.

        Example: `PrunerConfig.from_preset("box2", image_column="img")`.
        """
        return cls(**{**_preset(name), **overrides})

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _define_distillation_training_arguments():
    """Build `DistillationTrainingArguments` on first use.

    It subclasses `transformers.TrainingArguments`, and importing transformers costs about a second;
    defining the class lazily keeps `PrunerConfig` (used by the pruner and the CLI) cheap to import.
    The class still lives at `hf_ifbeta.config.DistillationTrainingArguments`, so it pickles (the
    Trainer saves its arguments with `torch.save`) and `HfArgumentParser` reads its help.
    """
    from transformers import TrainingArguments

    @dataclass
    class DistillationTrainingArguments(TrainingArguments):
        """`transformers.TrainingArguments` plus the knowledge-distillation loss of `DistillationTrainer`.

        The loss is `alpha * tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)) + (1 - alpha) * CE`
        (`hf_ifbeta.losses.kd_loss`). Defaults differ from `TrainingArguments` where image
        classification needs it: `remove_unused_columns=False` (a timm model's `forward(x)` names no
        column, so the Trainer would drop them all), `label_names=["labels"]` and
        `ddp_find_unused_parameters=False`.

        Example:
        ```python
        >>> args = DistillationTrainingArguments(output_dir="out", temperature=4.0, alpha=0.9,
        ...                                      per_device_train_batch_size=128, num_train_epochs=15)
        ```
        """

        temperature: float = field(
            default=4.0, metadata={"help": "KD softmax temperature tau, > 0 (the KL term is scaled by tau^2)."}
        )
        alpha: float = field(
            default=0.9,
            metadata={"help": "Weight of the KD term in [0, 1]; the cross-entropy on the labels gets 1 - alpha."},
        )
        channels_last: bool = field(
            default=True,
            metadata={
                "help": "Run student and teacher in channels_last memory format (faster convolutions under "
                "autocast on GPUs and bf16 CPUs; no effect on models without 4-D activations)."
            },
        )
        teacher_logit_cache: bool = field(
            default=False,
            metadata={
                "help": "Store the teacher's logits of every (epoch, row) on disk and reuse them in later runs, on "
                "any subset of the same rows (other ratios, other methods), so the teacher runs once per view. "
                "Needs a training set from `prepare_image_dataset` with inputs up to 64 px (a seeded augmentation "
                "stream). Costs rows x classes x 4 bytes per epoch on disk."
            },
        )
        teacher_logit_cache_dir: Optional[str] = field(
            default=None,
            metadata={"help": "Folder of the teacher-logit cache; default `$HF_HOME/hf_ifbeta/teacher_logits`."},
        )
        remove_unused_columns: bool = field(
            default=False,
            metadata={
                "help": "Drop dataset columns the model's forward does not name. Off: image datasets feed "
                "`pixel_values` through a transform, and timm models take a positional input."
            },
        )
        label_names: Optional[List[str]] = field(
            default_factory=lambda: ["labels"],
            metadata={"help": "Keys of the batch that hold the labels (the collator writes `labels`)."},
        )
        ddp_find_unused_parameters: Optional[bool] = field(
            default=False,
            metadata={
                "help": "DDP's find_unused_parameters. Off: an image classifier uses all its parameters, and the "
                "Trainer would otherwise turn it on for every non-transformers model (an extra graph traversal "
                "per step)."
            },
        )

        def __post_init__(self):
            if not 0 < self.temperature < math.inf:  # also rejects NaN; the recipes hand it to PrunerConfig unchecked
                raise ValueError(f"temperature must be finite and > 0, got {self.temperature}.")
            if not 0.0 <= self.alpha <= 1.0:
                raise ValueError(f"alpha must be in [0, 1], got {self.alpha}.")
            if self.label_names not in (None, ["labels"]):
                raise ValueError(f"label_names must be ['labels'], the key the collator writes the labels under; got "
                                 f"{self.label_names}. Name the dataset's label column in prepare_image_dataset instead.")  # fmt: skip
            super().__post_init__()

    DistillationTrainingArguments.__qualname__ = "DistillationTrainingArguments"
    return DistillationTrainingArguments


def __getattr__(name):
    if name == "DistillationTrainingArguments":
        cls = globals()[name] = _define_distillation_training_arguments()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
