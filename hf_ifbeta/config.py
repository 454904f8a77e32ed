"""Configuration dataclasses. Every field has `help` metadata, so `HfArgumentParser` gives `--help`."""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = ["DistillationTrainingArguments", "PrunerConfig"]

HESSIAN_MODES = ("auto", "exact", "kfac")
SCORE_TYPES = ("influence", "self-influence")


@dataclass
class PrunerConfig:
    """How `DatasetPruner` scores and selects rows. Defaults follow the IF-Beta method description.

    The fields fall in four groups: the teacher pass (columns, batching, cache), the proxy head and
    its influence scores, the Beta policy and its bilevel learning, and reproducibility (`seed`).
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
    batch_size: int = field(default=256, metadata={"help": "Teacher-pass batch size per process."})
    num_workers: Optional[int] = field(
        default=None,
        metadata={
            "help": "DataLoader workers decoding images in the teacher pass; None: this process's share of the CPU "
            "cores less one, at most 8 (0 decodes in the main process)."
        },
    )
    chunk_size: int = field(
        default=4096,
        metadata={"help": "Rows per cached chunk of the teacher pass (the unit of resumption and of streaming)."},
    )
    cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Where teacher outputs are cached; default `$HF_HOME/hf_ifbeta` (~/.cache/huggingface/hf_ifbeta)."},
    )
    features_dtype: str = field(
        default="float32",
        metadata={"help": "Storage dtype of cached features: float32, or float16 to halve disk and memory at ImageNet scale."},
    )
    teacher_precision: str = field(
        default="auto",
        metadata={
            "help": "The teacher pass's forward: fp32, bf16 (autocast + channels_last; features and logits stored "
            "in float32) or auto (bf16 where the GPU or CPU computes it natively, else fp32)."
        },
    )

    # Proxy head and influence
    alpha: float = field(default=0.9, metadata={"help": "Weight of the KD term in the proxy loss, in [0, 1]."})
    temperature: float = field(default=4.0, metadata={"help": "KD temperature tau of the proxy loss, > 0."})
    l2: float = field(default=1e-3, metadata={"help": "L2 regularisation lambda of the proxy head weights (mean loss scale)."})
    standardize: bool = field(default=True, metadata={"help": "Standardise teacher features before the proxy head."})
    hessian: str = field(
        default="auto",
        metadata={"help": "Inverse-Hessian path: exact (dense), kfac (Kronecker-factored preconditioned CG) or auto (by size)."},
    )
    exact_max_params: int = field(
        default=20_000, metadata={"help": "With hessian=auto, use the dense Hessian while C * (d + 1) is at most this."}
    )
    cg_max_iter: int = field(default=200, metadata={"help": "Max conjugate-gradient iterations on the kfac path."})
    cg_tol: float = field(default=1e-6, metadata={"help": "Relative residual at which conjugate gradients stop."})
    fit_max_iter: int = field(default=200, metadata={"help": "Max L-BFGS iterations of the proxy-head fit."})
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
        default=65_536, metadata={"help": "Rows per chunk when scoring streams cached features (bounds peak memory)."}
    )

    # Beta policy
    stratify: bool = field(
        default=True, metadata={"help": "Rank within each class and keep each class's share of the budget."}
    )
    policy_a: Optional[float] = field(
        default=None, metadata={"help": "Fix the Beta policy's a (with policy_b) instead of learning it."}
    )
    policy_b: Optional[float] = field(
        default=None, metadata={"help": "Fix the Beta policy's b (with policy_a) instead of learning it."}
    )
    policy_max_ab: float = field(
        default=2.0,
        metadata={
            "help": "The learned a and b stay in [max(0.1, 1 / policy_max_ab), policy_max_ab]. 2 allows only mild leans "
            "from uniform (at most Beta(2, 0.5) towards the top); 50 reaches keep-the-top, which the proxy always "
            "prefers and distilled students punish when few rows are kept (docs/results.md)."
        },
    )
    outer_steps: int = field(default=20, metadata={"help": "Outer (hypergradient) steps of the bilevel policy learning."})
    outer_lr: float = field(default=0.2, metadata={"help": "Adam learning rate on (log a, log b)."})
    inner_epochs: float = field(
        default=15.0,
        metadata={"help": "Epochs of the from-scratch inner proxy fit over the kept rows: mirror the student's budget."},
    )
    inner_batch_size: int = field(
        default=128, metadata={"help": "Batch size that turns inner epochs into inner steps (steps = epochs * m / batch)."}
    )
    inner_lr: float = field(default=0.1, metadata={"help": "Learning rate of the inner proxy fit."})
    policy_subsample: Optional[int] = field(
        default=4_000,
        metadata={"help": "Rows (stratified) the bilevel problem is solved on; cost grows with its square. None: all rows."},
    )

    seed: int = field(default=0, metadata={"help": "Seed of the validation split, subsamples and sampling."})

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if not 1.0 < self.policy_max_ab <= 50.0:
            raise ValueError(f"policy_max_ab must be in (1, 50], got {self.policy_max_ab}.")
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}.")
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
        positive = ("batch_size", "chunk_size", "inner_batch_size", "stream_chunk_size", "val_max_per_class", "outer_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("num_workers", "fit_max_iter"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("fit_subsample", "policy_subsample"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None (all rows), got {value}.")
        for name in ("inner_epochs", "inner_lr", "outer_lr", "cg_tol"):
            if not getattr(self, name) > 0:  # also rejects NaN
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        from .scorers import get_method  # late import: the registry imports this module

        get_method(self.method)  # raises with the list of valid methods

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
            if not self.temperature > 0:  # also rejects NaN
                raise ValueError(f"temperature must be > 0, got {self.temperature}.")
            if not 0.0 <= self.alpha <= 1.0:
                raise ValueError(f"alpha must be in [0, 1], got {self.alpha}.")
            super().__post_init__()

    DistillationTrainingArguments.__qualname__ = "DistillationTrainingArguments"
    return DistillationTrainingArguments


def __getattr__(name):
    if name == "DistillationTrainingArguments":
        cls = globals()[name] = _define_distillation_training_arguments()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
