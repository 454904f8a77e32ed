"""Registry of pruning methods: each one scores rows from the cached teacher outputs and picks the kept rows.

Every method works from one `TeacherOutputs` (features (n, d), logits (n, C), labels (n,)) and never re-runs
the teacher. A method is one class registered under a string, as models are in timm's registry:

```python
>>> import numpy as np
>>> from hf_ifbeta.scorers import PruningMethod, get_method, register_method
>>> @register_method("margin")
... class Margin(PruningMethod):
...     '''Teacher logit margin; keep the smallest margins.'''
...     def score(self, outputs, context):
...         top2 = np.sort(outputs.logits, axis=1)[:, -2:]
...         return top2[:, 0] - top2[:, 1]  # (n,) minus the margin: higher = harder
>>> get_method("margin").name
'margin'
```

The default `PruningMethod.select` keeps the highest scores, within each class when `config.stratify`
(class budgets that preserve the class proportions), so a "score, keep the highest" method only
writes `score`. Every selection goes through `selection.select_per_class`: it keeps exactly
`m = round((1 - ratio) * n)` rows, returns them as sorted unique row ids and is a deterministic function of
(scores, ratio, seed).
"""

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple, Type

import numpy as np
from scipy.special import betaln, logsumexp

from .config import MAX_AB, MIN_AB, PolicyReduction, PrunerConfig, PrunerStages
from .policy import BetaPolicy, rank_positions
from .policy_scale import learn_beta_policy_at_scale
from .selection import check_ratio, class_rows, gumbel_top_k, num_kept, select_per_class, top_k

if TYPE_CHECKING:  # pragma: no cover
    from .features import TeacherOutputs
    from .influence import InfluenceOutput

__all__ = [
    "PruningMethod",
    "ScoringContext",
    "Selection",
    "register_method",
    "get_method",
    "list_methods",
    "ccs_bin_budgets",
    "ccs_hard_cutoff",
]

logger = logging.getLogger(__name__)

_METHODS: Dict[str, Type["PruningMethod"]] = {}


# --------------------------------------------------------------------------------------------------------------
# Data passed between the pruner and the methods
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ScoringContext:
    """What a method may use besides the teacher outputs; built once per `DatasetPruner.score()` call.

    Args:
        config (`PrunerConfig`): the pruner's configuration (`stratify`, policy settings, chunk sizes, ...).
        val_indices (`np.ndarray`): (n_val,) row ids of the validation slice V held out from the training rows.
        influence (`InfluenceOutput`, *optional*): influence scores, computed once by the pruner when the
            method has `needs_influence` (with self-influence when `method.needs_self_influence(config)`).
        device (`str`, *optional*): the pruner's one device (`DatasetPruner.device`), for methods that compute
            with torch (the if-beta policy).

    Attributes:
        stages (`PrunerStages`): `config.stages()`, the arguments of each stage (the policy's for if-beta).
    """

    config: PrunerConfig
    val_indices: np.ndarray
    influence: Optional["InfluenceOutput"] = None
    device: Optional[str] = None
    stages: PrunerStages = field(init=False, repr=False)

    def __post_init__(self):
        self.stages = self.config.stages()


@dataclass
class Selection:
    """The rows a method keeps.

    Args:
        indices (`np.ndarray`): (m,) sorted unique int64 row ids of the kept rows.
        policy (`Dict`, *optional*): the parameters of the selection rule, when it has any: `a`, `b` (and for
            if-beta the outer-loop `history`, validation losses, `fell_back_to_uniform` and `on_bound`) for the Beta
            methods, the hard cutoff `beta` for ccs. JSON-serialisable.
    """

    indices: np.ndarray
    policy: Optional[Dict[str, Any]] = None


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------


def register_method(name: str) -> Callable[[Type["PruningMethod"]], Type["PruningMethod"]]:
    """Class decorator that registers a `PruningMethod` subclass under `name` (sets `cls.name`).

    Raises `ValueError` when `name` is taken, so two methods cannot silently shadow each other.
    """

    def decorator(cls: Type["PruningMethod"]) -> Type["PruningMethod"]:
        if not (isinstance(cls, type) and issubclass(cls, PruningMethod)):
            raise TypeError(f"@register_method({name!r}) expects a PruningMethod subclass, got {cls!r}.")
        if name in _METHODS:
            raise ValueError(f"Pruning method {name!r} is already registered (by {_METHODS[name].__qualname__}).")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return decorator


def list_methods() -> List[str]:
    """Names of the registered pruning methods, sorted."""
    return sorted(_METHODS)


def get_method(name: str, **kwargs) -> "PruningMethod":
    """A new instance of the method registered as `name`; `kwargs` go to its constructor (e.g. `beta` for ccs).

    Raises `ValueError` listing the valid names when `name` is unknown.
    """
    if name not in _METHODS:
        raise ValueError(f"Unknown pruning method: {name!r}. Choose between {list_methods()}.")
    return _METHODS[name](**kwargs)


# --------------------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------------------


def _check_scores(method: str, outputs: "TeacherOutputs", scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores)
    n = len(outputs.labels)
    if scores.shape != (n,):
        raise ValueError(f"{method}: scores have shape {scores.shape}, expected ({n},) (one per row).")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{method}: {int((~np.isfinite(scores)).sum())} scores are NaN or infinite.")
    return scores


def _chunks(n: int, chunk_size: int) -> Iterator[slice]:
    for start in range(0, n, chunk_size):
        yield slice(start, min(start + chunk_size, n))


def _teacher_log_probs(outputs: "TeacherOutputs", chunk_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """`(log p_y, log(1 - p_y))` of the teacher's softmax at the true label, each (n,) float64.

    Both come from log-sum-exps of the logits, so rows the teacher is sure of (p_y == 1 in float32) keep a finite
    `log(1 - p_y)`. Streams the (n, C) logits in row chunks (they may be memory-mapped).
    """
    labels = np.asarray(outputs.labels)
    n = len(labels)
    log_p, log_1mp = np.empty(n), np.empty(n)
    for sl in _chunks(n, chunk_size):
        z = np.array(outputs.logits[sl], dtype=np.float64)  # (b, C), a copy: the label column is masked below
        y = labels[sl]
        rows = np.arange(len(y))
        lse = logsumexp(z, axis=1)  # (b,)
        log_p[sl] = z[rows, y] - lse
        z[rows, y] = -np.inf
        log_1mp[sl] = logsumexp(z, axis=1) - lse
    return log_p, log_1mp


# --------------------------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------------------------


class PruningMethod:
    """A pruning method: `score` every row, then `select` the kept rows at a pruning ratio.

    Subclasses register with `@register_method("name")`. The default `select` keeps the highest scores
    (within each class when `context.config.stratify`); override it for any other rule.

    Attributes:
        name (`str`): the registry key, set by `register_method`.
        needs_influence (`bool`): the pruner computes `InfluenceOutput` once and passes it in the context.
    """

    name: str = ""
    needs_influence: bool = False

    def needs_self_influence(self, config: "PrunerConfig") -> bool:
        """Whether the pruner must ask `influence_scores` for self-influence too (`self_influence=True`)."""
        return False

    def score(self, outputs: "TeacherOutputs", context: ScoringContext) -> np.ndarray:
        """(n,) float scores of every row."""
        raise NotImplementedError(f"{type(self).__name__} must implement score().")

    def select(
        self,
        outputs: "TeacherOutputs",
        scores: np.ndarray,
        ratio: float,
        context: ScoringContext,
        seed: int = 0,
    ) -> Selection:
        """Keep the `round((1 - ratio) * n)` highest-scoring rows (per class when `config.stratify`).

        Args:
            outputs (`TeacherOutputs`): the cached teacher pass.
            scores (`np.ndarray`): (n,) from `score`.
            ratio (`float`): fraction of rows to remove, in (0, 1).
            context (`ScoringContext`): config, validation rows, influence.
            seed (`int`): seed of any randomness in the rule.
        """
        scores = _check_scores(self.name, outputs, scores)
        m = num_kept(len(scores), ratio)
        return Selection(select_per_class(outputs.labels, m, context.config.stratify, top_k(scores)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# --------------------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------------------


@register_method("random")
class RandomMethod(PruningMethod):
    """Uniform random selection, class-stratified when `config.stratify`. No score (zeros)."""

    def score(self, outputs, context):
        return np.zeros(len(outputs.labels))

    def select(self, outputs, scores, ratio, context, seed=0):
        m = num_kept(len(outputs.labels), ratio)
        rng = np.random.default_rng(seed)
        pick = lambda rows, k: rng.choice(rows, size=k, replace=False)  # noqa: E731
        return Selection(select_per_class(outputs.labels, m, context.config.stratify, pick))


@register_method("el2n")
class EL2N(PruningMethod):
    """EL2N of the teacher, `||softmax(z) - onehot(y)||_2` (Paul et al., 2021); keep the highest (hardest)."""

    def score(self, outputs, context):
        labels = np.asarray(outputs.labels)
        out = np.empty(len(labels))
        for sl in _chunks(len(labels), context.config.stream_chunk_size):
            z = np.asarray(outputs.logits[sl], dtype=np.float64)  # (b, C)
            p = np.exp(z - logsumexp(z, axis=1, keepdims=True))
            p[np.arange(len(p)), labels[sl]] -= 1.0
            out[sl] = np.linalg.norm(p, axis=1)
        return out


@register_method("entropy")
class Entropy(PruningMethod):
    """Entropy of the teacher's softmax, `-sum_c p_c log p_c` (Coleman et al., 2020); keep the highest."""

    def score(self, outputs, context):
        n = len(outputs.labels)
        out = np.empty(n)
        for sl in _chunks(n, context.config.stream_chunk_size):
            z = np.asarray(outputs.logits[sl], dtype=np.float64)  # (b, C)
            log_p = z - logsumexp(z, axis=1, keepdims=True)
            out[sl] = -(np.exp(log_p) * log_p).sum(axis=1)
        return out


# CCS hard-cutoff rates beta by pruning ratio, CIFAR-10 (see `ccs_hard_cutoff`).
CCS_HARD_CUTOFF = ((0.0, 0.0), (0.7, 0.1), (0.8, 0.1), (0.9, 0.3))
CCS_NUM_BINS = 50


def ccs_hard_cutoff(ratio: float) -> float:
    """Default CCS hard-cutoff rate beta (fraction of the hardest rows dropped first) at a pruning ratio.

    A step function over `CCS_HARD_CUTOFF`: the beta of the largest tabulated ratio <= `ratio`, i.e.
    0 below 0.7, 0.1 for [0.7, 0.9), 0.3 from 0.9. Provenance: beta = 0.3 at 90 % pruning on CIFAR-10 is the
    authors' published command (`--mis-ratio 0.3`, README of haizhongzheng/Coverage-centric-coreset-selection);
    beta = 0 at low ratios follows the paper's finding that the cutoff only pays at high pruning rates; the
    0.1 at 70-80 % is read from the paper's CIFAR-10 hyper-parameter table. Pass `get_method("ccs", beta=...)`
    to set it explicitly.
    """
    ratio = check_ratio(ratio)
    beta = 0.0
    for threshold, value in CCS_HARD_CUTOFF:
        if ratio >= threshold - 1e-12:
            beta = value
    return beta


def ccs_bin_budgets(bin_sizes: np.ndarray, m: int) -> np.ndarray:
    """CCS budget allocation over score bins (Zheng et al., 2023, `bin_allocate`).

    Visit the bins from the smallest to the largest; each gets `min(size, remaining // bins_left)`. Small bins
    are kept whole and what they leave spreads evenly over the larger ones; the sum is exactly m whenever
    `m <= bin_sizes.sum()`.

    Args:
        bin_sizes (`np.ndarray`): (B,) rows per bin.
        m (`int`): rows to keep.

    Returns:
        `np.ndarray`: (B,) int64 per-bin budgets, `budget <= bin_sizes`.
    """
    bin_sizes = np.asarray(bin_sizes, dtype=np.int64)
    if not 0 <= m <= int(bin_sizes.sum()):
        raise ValueError(f"m must be in [0, {int(bin_sizes.sum())}] (rows in the bins), got {m}.")
    budgets = np.zeros_like(bin_sizes)
    remaining = m
    order = np.argsort(bin_sizes, kind="stable")
    for visited, b in enumerate(order):
        budgets[b] = min(int(bin_sizes[b]), remaining // (len(order) - visited))
        remaining -= int(budgets[b])
    return budgets


@register_method("ccs")
class CCS(PruningMethod):
    """Coverage-centric coreset selection (Zheng et al., ICLR 2023) on the teacher's EL2N score.

    Rule, as in the authors' `CoresetSelection.mislabel_mask` + `stratified_sampling`: drop the hardest
    `beta` fraction of the rows (highest EL2N: likely mislabeled or ambiguous), split the remaining score range
    into 50 equal-width bins, give the bins budgets with `ccs_bin_budgets`, and draw each bin's budget
    uniformly at random. With `config.stratify` (our default) this runs within each class on the class's
    budget, the cutoff and bins taken on the class's own scores; the paper runs it once over all rows
    (`stratify=False`). The cutoff never removes so many rows of a group that its budget cannot be met.

    Args:
        beta (`float`, *optional*): hard-cutoff rate in [0, 1); default `ccs_hard_cutoff(ratio)`.
        num_bins (`int`): number of equal-width score bins (50 in the paper).
    """

    def __init__(self, beta: Optional[float] = None, num_bins: int = CCS_NUM_BINS):
        if beta is not None and not 0.0 <= beta < 1.0:
            raise ValueError(f"ccs beta (hard-cutoff rate) must be in [0, 1), got {beta}.")
        if num_bins < 1:
            raise ValueError(f"ccs num_bins must be >= 1, got {num_bins}.")
        self.beta, self.num_bins = beta, num_bins

    def score(self, outputs, context):
        return EL2N().score(outputs, context)

    def select(self, outputs, scores, ratio, context, seed=0):
        scores = _check_scores(self.name, outputs, scores)
        m = num_kept(len(scores), ratio)
        beta = ccs_hard_cutoff(ratio) if self.beta is None else self.beta
        rng = np.random.default_rng(seed)

        def pick(rows: np.ndarray, k: int) -> np.ndarray:
            order = np.argsort(-scores[rows], kind="stable")  # hardest first
            cut = min(int(round(beta * len(rows))), len(rows) - k)
            pool = rows[order[cut:]]
            s = scores[pool]
            lo, hi = float(s.min()), float(s.max())
            width = (hi - lo) / self.num_bins
            # (p,) ids of the equal-width bins over [lo, hi]; the maximum falls in the last bin
            bins = np.zeros(len(s), np.int64)
            if width > 0:
                bins = np.minimum(((s - lo) / width).astype(np.int64), self.num_bins - 1)
            budgets = ccs_bin_budgets(np.bincount(bins, minlength=self.num_bins), k)
            kept = [rng.permutation(pool[bins == b])[:budget] for b, budget in enumerate(budgets) if budget > 0]
            return np.concatenate(kept) if kept else np.zeros(0, np.int64)

        indices = select_per_class(outputs.labels, m, context.config.stratify, pick)
        logger.info("ccs: ratio %.3f, hard cutoff beta %.3f, %d bins", ratio, beta, self.num_bins)
        return Selection(indices, policy={"beta": float(beta), "num_bins": self.num_bins})


@register_method("moderate")
class Moderate(PruningMethod):
    """Moderate coreset (Xia et al., ICLR 2023) on teacher features.

    Score: Euclidean distance of each row's feature to its class median (the per-dimension median of the
    class's features, as in the authors' `get_median`). Selection: the middle band of the sorted distances,
    the `k` rows around the median distance, dropping the nearest and the farthest rows equally. Within each
    class by default (`config.stratify`); the paper bands all rows at once.
    """

    def score(self, outputs, context):
        labels = np.asarray(outputs.labels)
        out = np.empty(len(labels))
        for rows in class_rows(labels):
            if len(rows) == 0:
                continue
            h = np.asarray(outputs.features[rows], dtype=np.float32)  # (n_c, d)
            out[rows] = np.linalg.norm(h - np.median(h, axis=0), axis=1)
        return out

    def select(self, outputs, scores, ratio, context, seed=0):
        scores = _check_scores(self.name, outputs, scores)
        m = num_kept(len(scores), ratio)

        def pick(rows: np.ndarray, k: int) -> np.ndarray:
            order = np.argsort(scores[rows], kind="stable")  # nearest to the median first
            start = (len(rows) - k) // 2
            return rows[order[start : start + k]]

        return Selection(select_per_class(outputs.labels, m, context.config.stratify, pick))


@register_method("dual-beta")
class DualBeta(PruningMethod):
    """DUAL's pruning-ratio-adaptive Beta sampling (Cho et al., ICML 2025), teacher-only.

    Published (authors' code, `beta_sampling` in behaapyy/dual-pruning `exp_cifar/data_subset.py`): with
    `p_i` the mean predicted probability of row i's label over the early epochs, `s_i` the DUAL score and r
    the pruning ratio,
        anchor = mean of p over the 10 rows of highest s
        b = 15 * (1 - anchor) * (1 - r ** c_D),  a = 16 - b
        keep (1 - r) n rows drawn without replacement with probability proportional to BetaPDF(p_i; a, b) * s_i
    with c_D = 4 (the code's default and the authors' CIFAR command). As r grows the density moves from the
    hard rows (small p) to the easy ones.

    Filled in for the KD setting (no training dynamics, one teacher): p_i is the teacher's softmax probability
    of the label, and the score is the teacher difficulty s_i = 1 - p_i (DUAL's score is a windowed
    std(p) * (1 - mean p); one teacher has no spread over epochs, so the difficulty factor is what remains).
    Both log p_i and log(1 - p_i) come exactly from the logits. Draws are class-stratified when
    `config.stratify` (the paper draws over all rows); the budget is `round`, not `int`, of (1 - r) n.

    Args:
        c_d (`float`): the schedule's exponent c_D.
        num_anchor (`int`): rows of highest score whose mean p is the anchor.
    """

    def __init__(self, c_d: float = 4.0, num_anchor: int = 10):
        if c_d <= 0:
            raise ValueError(f"dual-beta c_d must be > 0, got {c_d}.")
        if num_anchor < 1:
            raise ValueError(f"dual-beta num_anchor must be >= 1, got {num_anchor}.")
        self.c_d, self.num_anchor = c_d, num_anchor

    def schedule(self, ratio: float, anchor: float) -> Tuple[float, float]:
        """DUAL's (a, b) at pruning ratio r: `b = 15 (1 - anchor)(1 - r^c_D)`, `a = 16 - b`."""
        b = 15.0 * (1.0 - anchor) * (1.0 - ratio**self.c_d)
        return 16.0 - b, b

    def score(self, outputs, context):
        _, log_1mp = _teacher_log_probs(outputs, context.config.stream_chunk_size)
        return np.exp(log_1mp)  # (n,) teacher difficulty 1 - p_y

    def select(self, outputs, scores, ratio, context, seed=0):
        scores = _check_scores(self.name, outputs, scores)
        m = num_kept(len(scores), ratio)
        log_p, log_1mp = _teacher_log_probs(outputs, context.config.stream_chunk_size)
        hardest = np.argsort(-scores, kind="stable")[: self.num_anchor]
        anchor = float(np.exp(log_p[hardest]).mean())
        a, b = self.schedule(ratio, anchor)
        # log(BetaPDF(p; a, b) * s): the Beta normaliser is a constant and does not change the draw
        with np.errstate(divide="ignore"):
            log_w = (a - 1.0) * log_p + (b - 1.0) * log_1mp - betaln(a, b) + np.log(scores)
        pick = gumbel_top_k(log_w, np.random.default_rng(seed), draw="groups")
        indices = select_per_class(outputs.labels, m, context.config.stratify, pick)
        logger.info("dual-beta: ratio %.3f, anchor p %.4f, Beta(a=%.3f, b=%.3f)", ratio, anchor, a, b)
        return Selection(indices, policy={"a": a, "b": b, "anchor": anchor, "c_d": self.c_d})


def _influence(context: ScoringContext, method: str) -> "InfluenceOutput":
    if context.influence is None:
        raise ValueError(
            f"method {method!r} needs context.influence: compute it with hf_ifbeta.influence.influence_scores "
            "(DatasetPruner does so when method.needs_influence is True)."
        )
    return context.influence


def _self_influence(context: ScoringContext, method: str) -> np.ndarray:
    values = _influence(context, method).self_influence
    if values is None:
        raise ValueError(
            f"method {method!r} needs self-influence: call influence_scores(..., self_influence=True) "
            "(DatasetPruner does so when method.needs_self_influence(config) is True)."
        )
    return np.asarray(values)


@register_method("influence")
class Influence(PruningMethod):
    """IF-Beta's influence score `g_V^T H^-1 grad l_i` of the converged proxy head; keep the most helpful."""

    needs_influence = True

    def score(self, outputs, context):
        return np.asarray(_influence(context, self.name).scores)


@register_method("self-influence")
class SelfInfluence(PruningMethod):
    """Self-influence `grad l_i^T H^-1 grad l_i` (how atypical a row is to the proxy head); keep the highest."""

    needs_influence = True

    def needs_self_influence(self, config):
        return True

    def score(self, outputs, context):
        return _self_influence(context, self.name)


@register_method("if-beta")
class IFBeta(PruningMethod):
    """IF-Beta: influence scores, ranked to positions u in (0, 1), sampled with a learned Beta(a, b) policy.

    Scores are the influence (`config.score_type == "influence"`) or self-influence. `rank_positions` turns
    them into u (within each class when `config.stratify`); (a, b) is learned for this ratio by
    `learn_beta_policy` (bilevel, on the proxy head's validation KD loss), or fixed to
    `(config.policy_a, config.policy_b)` when both are set; `BetaPolicy.select` draws the kept rows. Above
    `PolicyReduction.max_head_params` head parameters (ImageNet) the bilevel problem is solved on a reduced copy
    (a class subset and row subsample): `hf_ifbeta.policy_scale.learn_beta_policy_at_scale`.
    `Selection.policy` records a, b, whether they were learned, the outer-loop history, the validation losses
    of the learned and uniform policies and whether the learner fell back to uniform.

    Args:
        reduction (`PolicyReduction`, *optional*): when and how to reduce the bilevel problem of a large head;
            default the config's (`PolicyArguments.reduction`).
    """

    needs_influence = True

    def __init__(self, reduction: Optional[PolicyReduction] = None):
        self.reduction = reduction

    def needs_self_influence(self, config):
        return config.score_type == "self-influence"

    def score(self, outputs, context):
        if context.config.score_type == "self-influence":
            return _self_influence(context, self.name)
        return np.asarray(_influence(context, self.name).scores)

    def select(self, outputs, scores, ratio, context, seed=0):
        scores = _check_scores(self.name, outputs, scores)
        num_kept(len(scores), ratio)  # validates the ratio before any work
        config, policy_args = context.config, context.stages.policy
        if self.reduction is not None:
            policy_args = dataclasses.replace(policy_args, reduction=self.reduction)
        u = rank_positions(scores, outputs.labels, stratify=policy_args.stratify)  # (n,) in (0, 1), 1 = most helpful
        if config.policy_a is not None and config.policy_b is not None:
            policy = BetaPolicy(float(config.policy_a), float(config.policy_b))
            record = dict(
                learned=False, history=[], val_loss_learned=None, val_loss_uniform=None, fell_back_to_uniform=False,
                on_bound=False, info={},
            )
        else:
            result = learn_beta_policy_at_scale(
                outputs.features, outputs.logits, outputs.labels, u, ratio, context.val_indices,
                loss=context.stages.loss, policy_args=policy_args, seed=seed, device=context.device,
                coverage=outputs.coverage if policy_args.uses_stage_view else None,
            )  # fmt: skip
            policy = result.policy
            record = dict(
                learned=True,
                history=list(result.history),
                val_loss_learned=_float_or_none(result.val_loss_learned),
                val_loss_uniform=_float_or_none(result.val_loss_uniform),
                fell_back_to_uniform=bool(result.fell_back_to_uniform),
                on_bound=bool(result.info.get("on_bound")) and not result.fell_back_to_uniform,
                info=dict(result.info),
            )
            if record["on_bound"]:
                sides = set(result.info["on_bound"].values())
                # The box is [1 / max_ab, max_ab] within the package's limits [MIN_AB, MAX_AB].
                widen = ("upper" in sides and policy_args.max_ab < MAX_AB) or (
                    "lower" in sides and 1 / policy_args.max_ab > MIN_AB
                )
                logger.warning(
                    "if-beta: the learned policy Beta(%.3g, %.3g) at ratio %.3f sits on the bound of its search box "
                    "[%.3g, %.3g] (%s): the box chose it, not the outer objective. %s", policy.a, policy.b, ratio,
                    *result.info["box"], ", ".join(f"{k} {v}" for k, v in result.info["on_bound"].items()),
                    "A larger policy_max_ab lets the objective decide." if widen
                    else f"That bound is the package's limit (a and b in [{MIN_AB:g}, {MAX_AB:g}]).",
                )  # fmt: skip
        indices = policy.select(u, ratio, labels=outputs.labels, stratify=policy_args.stratify, seed=seed)
        logger.info("if-beta: ratio %.3f, Beta(%.3f, %.3f), learned=%s", ratio, policy.a, policy.b, record["learned"])
        return Selection(indices, policy={"a": float(policy.a), "b": float(policy.b), **record})


def _float_or_none(x: Any) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
