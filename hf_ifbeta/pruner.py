"""`DatasetPruner`: a `datasets.Dataset` in, the rows worth distilling on out.

One teacher pass (cached, resumable, sharded), then cheap work on the cached arrays: the scores of
the configured method (IF-Beta: influence of each row on a validation KD loss of a proxy head) and
a selection at any ratio (IF-Beta: a Beta-distribution policy over score ranks, learned per ratio).
"""

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

import datasets
import numpy as np
import torch
import torch.nn as nn

from . import __version__
from .config import PrunerConfig, resolve_device
from .data import check_dataset, column_values
from .features import TeacherOutputs, compute_teacher_outputs
from .models import load_model
from .scorers import ScoringContext, Selection, get_method
from .selection import check_ratio

__all__ = ["DatasetPruner", "PruningResult", "resolve_device", "validation_split"]

RESULT_FILE = "pruning_result.json"


def from_main_process(obj: Any, accelerator: Any = None) -> Any:
    """`obj` as the main process has it, on every process: a collective when several processes run.

    The processes are those of `accelerator` (an `Accelerator` or `PartialState`), else of the initialised
    `torch.distributed` process group (`torchrun`, `accelerate launch`); one process returns `obj` unchanged.
    """
    if accelerator is None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return obj
        from accelerate import PartialState

        accelerator = PartialState()
    if getattr(accelerator, "num_processes", 1) <= 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=0)[0]


def validation_split(labels: np.ndarray, fraction: float, max_per_class: int, seed: int) -> np.ndarray:
    """Stratified validation rows held out *from the training set* (never the test set).

    Takes `round(fraction * n_c)` rows of each class c (at most `max_per_class`, at least one when the
    class has two rows or more). Returns sorted row ids.
    """
    rng = np.random.default_rng([seed, 1234])
    picked = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = min(max_per_class, int(round(fraction * len(rows))))
        if len(rows) >= 2:
            k = max(k, 1)
        picked.append(rng.choice(rows, size=min(k, len(rows) - 1) if len(rows) > 1 else 0, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


@dataclass
class PruningResult:
    """Scores of every row and, once a ratio is chosen, the kept rows.

    Attributes:
        method (`str`): the registry name of the pruning method.
        scores (`np.ndarray`): (n,) one score per row of the scored dataset (higher = more worth keeping
            for the score-ranking methods).
        labels (`np.ndarray`): (n,) class ids.
        ratio (`float`, *optional*): fraction removed by the last selection.
        seed (`int`, *optional*): seed of the last selection.
        indices (`np.ndarray`, *optional*): sorted kept row ids of the last selection: `ds.select(indices)`.
        policy (`dict`, *optional*): the selection's policy (IF-Beta: learned `a`, `b`, outer-loss history,
            proxy validation losses of the learned and the uniform policy).
        config (`dict`): the `PrunerConfig` that made the scores.
        provenance (`dict`): teacher, dataset fingerprint and size, package version, cache folder.
        timings (`dict`): seconds spent in the teacher pass, scoring and selection.
    """

    method: str
    scores: np.ndarray
    labels: np.ndarray
    config: Dict[str, Any]
    provenance: Dict[str, Any]
    val_indices: np.ndarray
    ratio: Optional[float] = None
    seed: Optional[int] = None
    indices: Optional[np.ndarray] = None
    policy: Optional[Dict[str, Any]] = None
    timings: Dict[str, float] = field(default_factory=dict)
    extra_scores: Dict[str, np.ndarray] = field(default_factory=dict)
    _outputs: Optional[TeacherOutputs] = field(default=None, repr=False, compare=False)
    _context: Optional[ScoringContext] = field(default=None, repr=False, compare=False)
    _accelerator: Any = field(default=None, repr=False, compare=False)

    @property
    def num_rows(self) -> int:
        return len(self.scores)

    # ------------------------------------------------------------------ selection
    def select_indices(self, ratio: float, seed: Optional[int] = None) -> np.ndarray:
        """Choose the rows to keep at `ratio` from these scores; no teacher pass is repeated.

        Args:
            ratio (`float`): fraction of rows to remove, in (0, 1).
            seed (`int`, *optional*): sampling seed (default: the config's seed). The same seed gives the same rows.

        Returns:
            `np.ndarray`: sorted row ids of the `round((1 - ratio) * n)` kept rows; also stored in `self.indices`.

        With several processes (the pruner's accelerator, or an initialised `torch.distributed` group) every
        process must call this: each selects, then all keep the main process's rows and policy, so that ranks
        whose devices round differently never train on different subsets.
        """
        ratio = check_ratio(ratio)
        seed = self.config["seed"] if seed is None else int(seed)
        method = get_method(self.method)
        t0 = time.perf_counter()
        selection: Selection = method.select(self._teacher_outputs(), self.scores, ratio, self._scoring_context(), seed)
        indices = np.asarray(selection.indices, dtype=np.int64)
        self.indices, self.policy = from_main_process((indices, selection.policy), self._accelerator)
        self.timings["selection_s"] = time.perf_counter() - t0
        self.ratio, self.seed = ratio, seed
        return self.indices

    def select(self, dataset: datasets.Dataset, ratio: Optional[float] = None, seed: Optional[int] = None) -> datasets.Dataset:
        """The kept rows of `dataset` (every column kept). Selects first when `ratio` is given.

        Args:
            dataset (`datasets.Dataset`): the scored rows, in the scored order. A copy with another format or
                transform (`with_format`, `with_transform`, `cast_column`, `prepare_image_dataset`) has a new
                fingerprint; it is accepted when its labels equal the scored ones row by row.
            ratio (`float`, *optional*): fraction of rows to remove, in (0, 1); None keeps the last selection.
            seed (`int`, *optional*): sampling seed (default: the config's seed).

        Raises:
            ValueError: no selection yet, or `dataset` is not the scored one (another length, or another
                fingerprint and other labels: a shuffle, another split).
        """
        self._check_same_rows(dataset)  # before selecting: learning a policy may take a while
        if ratio is not None:
            self.select_indices(ratio, seed)
        if self.indices is None:
            raise ValueError("No selection yet: pass ratio=... (or call select_indices(ratio) first).")
        return dataset.select(self.indices)

    def _check_same_rows(self, dataset: datasets.Dataset) -> None:
        check_dataset(dataset)
        if len(dataset) != self.num_rows:
            raise ValueError(
                f"These scores are for a dataset of {self.num_rows} rows, got one of {len(dataset)} rows."
            )
        fingerprint = self.provenance.get("dataset_fingerprint")
        current = getattr(dataset, "_fingerprint", None)
        if not fingerprint or current in (None, fingerprint):
            return
        # datasets gives a new fingerprint to every format, transform or cast of the same rows; a shuffle or
        # another split of the same length changes the labels too, so compare those row by row.
        label_column = self.config.get("label_column", "label")
        if label_column in dataset.column_names:
            labels = column_values(dataset, label_column)
            differ = np.flatnonzero(labels != self.labels)
            if differ.size == 0:
                return
            where = f"row {int(differ[0])} has label {labels[differ[0]]}, scored as {self.labels[differ[0]]}"
        else:
            where = f"it has no label column {label_column!r} to compare"
        raise ValueError(
            f"The dataset's fingerprint {current} differs from the scored one ({fingerprint}) and {where}: "
            "select on the dataset that was scored (rows in the same order)."
        )

    def _teacher_outputs(self) -> TeacherOutputs:
        if self._outputs is None:
            cache = self.provenance.get("teacher_outputs_dir")
            if cache and Path(cache).exists():
                self._outputs = TeacherOutputs.load(cache)
            else:
                raise ValueError(
                    "Selecting again needs the teacher outputs, and their cache "
                    f"({cache}) is gone: score the dataset again with DatasetPruner.score."
                )
        return self._outputs

    def _scoring_context(self) -> ScoringContext:
        if self._context is None:
            # A loaded result keeps its scores, so re-selection works without the influence output.
            self._context = ScoringContext(
                config=PrunerConfig(**self.config), val_indices=self.val_indices, influence=None,
                device=str(resolve_device(None, self._accelerator)),
            )
        return self._context

    # ------------------------------------------------------------------ persistence
    def save(self, save_directory: Union[str, os.PathLike]) -> None:
        """Write `scores.npy`, `indices.npy` (when selected) and `pruning_result.json` (everything else)."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "scores.npy", np.asarray(self.scores))  # in their own dtype: a reload selects the same rows
        np.save(path / "labels.npy", np.asarray(self.labels, dtype=np.int64))
        np.save(path / "val_indices.npy", self.val_indices)
        if self.indices is not None:
            np.save(path / "indices.npy", self.indices)
        meta = {
            "method": self.method,
            "ratio": self.ratio,
            "seed": self.seed,
            "num_rows": self.num_rows,
            "num_kept": None if self.indices is None else int(len(self.indices)),
            "policy": to_jsonable(self.policy),
            "config": self.config,
            "provenance": self.provenance,
            "timings": self.timings,
            "extra_scores": sorted(self.extra_scores),
        }
        for name, values in self.extra_scores.items():
            np.save(path / f"scores_{name}.npy", np.asarray(values))
        (path / RESULT_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, save_directory: Union[str, os.PathLike]) -> "PruningResult":
        """Load a result written by `save` (or downloaded from the Hub by `hub.load_pruning_result`)."""
        path = Path(save_directory)
        if not (path / RESULT_FILE).exists():
            raise FileNotFoundError(f"{path} has no {RESULT_FILE}: not a saved PruningResult.")
        meta = json.loads((path / RESULT_FILE).read_text())
        indices = np.load(path / "indices.npy") if (path / "indices.npy").exists() else None
        return cls(
            method=meta["method"],
            scores=np.load(path / "scores.npy"),
            labels=np.load(path / "labels.npy"),
            config=meta["config"],
            provenance=meta["provenance"],
            val_indices=np.load(path / "val_indices.npy"),
            ratio=meta["ratio"],
            seed=meta["seed"],
            indices=indices,
            policy=meta["policy"],
            timings=meta.get("timings", {}),
            extra_scores={k: np.load(path / f"scores_{k}.npy") for k in meta.get("extra_scores", [])},
        )

    def push_to_hub(self, repo_id: str, **kwargs):
        """Share the subset on the Hub as indices + scores + a dataset card; see `hub.push_pruning_result`."""
        from .hub import push_pruning_result

        return push_pruning_result(self, repo_id, **kwargs)

    # ------------------------------------------------------------------ plots
    def plot(self, path: Optional[Union[str, os.PathLike]] = None):
        """Score histogram (all rows vs kept), the policy density over rank positions, and the kept
        fraction per rank decile. Returns the matplotlib figure; saves it when `path` is given.

        Needs matplotlib (`pip install hf_ifbeta[plot]`). With a `path`, the figure is drawn without pyplot: no
        backend is chosen or changed (a notebook keeps its own) and no figure is left open in pyplot.
        """
        try:
            import matplotlib  # noqa: F401
        except ImportError as err:
            raise ImportError("PruningResult.plot needs matplotlib: pip install 'hf_ifbeta[plot]'.") from err
        from .policy import BetaPolicy

        if path is None:
            import matplotlib.pyplot as plt

            fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        else:
            from matplotlib.figure import Figure

            fig = Figure(figsize=(13, 3.6))
            axes = fig.subplots(1, 3)
        ax = axes[0]
        lo, hi = np.percentile(self.scores, 0.5), np.percentile(self.scores, 99.5)
        bins = np.linspace(lo, hi, 60) if hi > lo else np.linspace(lo - 0.5, lo + 0.5, 2)  # constant scores (random)
        ax.hist(self.scores, bins=bins, color="0.75", label="all rows")
        if self.indices is not None:
            ax.hist(self.scores[self.indices], bins=bins, color="C0", alpha=0.8, label="kept")
        ax.set(title=f"{self.method} scores", xlabel="score", ylabel="rows")
        ax.legend()
        ax = axes[1]
        grid = np.linspace(0.005, 0.995, 199)
        if self.policy and "a" in self.policy:
            a, b = self.policy["a"], self.policy["b"]
            ax.plot(grid, np.exp(BetaPolicy(a, b).log_weights(grid)), color="C1", label=f"Beta({a:.2f}, {b:.2f})")
        ax.plot(grid, np.ones_like(grid), "k--", lw=1, label="uniform (random)")
        ax.set(title="policy density over rank position", xlabel="rank position u (1 = most helpful)")
        ax.legend()
        ax = axes[2]
        if self.indices is not None:
            from .report import kept_share_per_rank_decile

            ax.bar(np.arange(10) / 10 + 0.05, kept_share_per_rank_decile(self), width=0.09)
            ax.axhline(1 - self.ratio, color="k", ls="--", lw=1, label=f"keep rate {1 - self.ratio:.2f}")
            ax.legend()
        ax.set(title="kept fraction per rank decile", xlabel="rank position u", ylim=(0, 1.05))
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig

    def report(self, dataset: datasets.Dataset, path: Union[str, os.PathLike], options=None, **kwargs) -> Path:
        """Write a pruning report a person opens in a browser: one self-contained HTML file (provenance, scores
        and policy, kept share and highest- / lowest-scored images per class) with its figures as PNGs beside
        it. `options` (`report.ReportOptions`) or its fields as keyword arguments (e.g. `noisy_column="is_noisy"`);
        see `report.write_report`.
        """
        from .report import write_report

        return write_report(self, dataset, path, options, **kwargs)


class DatasetPruner:
    """Scores the rows of an image classification dataset with a teacher and keeps the best ones.

    Args:
        teacher (`nn.Module` or `str`): a timm model (or any module returning logits), a timm registry
            name, a Hub id (`"timm/resnet50.a1_in1k"`) or a local folder.
        config (`PrunerConfig`, *optional*): all settings; keyword arguments override its fields.
        accelerator (`accelerate.Accelerator` or `PartialState`, *optional*): shards the teacher pass
            over processes. Every process gets the main process's scores and kept rows.
        device (`str` or `torch.device`, *optional*): where every stage runs (teacher pass, influence, policy,
            baselines); default `accelerator.device`, else CUDA when available, else CPU. Recorded in the
            result's `provenance["device"]`.
        kwargs: `PrunerConfig` fields, e.g. `image_column="img"`, `method="random"`, `seed=1`.

    Example:
    ```python
    >>> import datasets, timm
    >>> from hf_ifbeta import DatasetPruner
    >>> ds = datasets.load_dataset("parquet", data_files={"train": "../shared/data/cifar10/train.parquet"})["train"]
    >>> teacher = timm.create_model("cifar10_resnet56", pretrained=True,
    ...                             pretrained_cfg_overlay=dict(file="../shared/models/cifar10_resnet56.pt"))
    >>> pruner = DatasetPruner(teacher, image_column="img", label_column="label")
    >>> pruned = pruner.prune(ds, ratio=0.3)          # 35,000 rows, every column kept
    >>> pruner.last_result.policy["a"], pruner.last_result.policy["b"]
    ```
    """

    def __init__(
        self,
        teacher: Union[nn.Module, str],
        config: Optional[PrunerConfig] = None,
        accelerator=None,
        device: Optional[Union[str, torch.device]] = None,
        **kwargs,
    ):
        config = config or PrunerConfig()
        unknown = set(kwargs) - {f.name for f in dataclasses.fields(PrunerConfig)}
        if unknown:
            raise TypeError(f"Unknown PrunerConfig fields: {sorted(unknown)}. See `PrunerConfig` for the valid ones.")
        self.config = dataclasses.replace(config, **kwargs) if kwargs else config
        self.method = get_method(self.config.method)  # the one check of the name, before the teacher loads
        self.stages = self.config.stages()
        self.teacher_name = teacher if isinstance(teacher, str) else _teacher_name(teacher)
        self.teacher = load_model(teacher).eval()
        self.accelerator = accelerator
        self.device = resolve_device(device, accelerator)
        self.last_result: Optional[PruningResult] = None

    def teacher_outputs(self, dataset: datasets.Dataset) -> TeacherOutputs:
        """The teacher pass over `dataset`: features, logits and labels per row (cached, resumable)."""
        args = self.stages.teacher_pass
        return compute_teacher_outputs(
            self.teacher, dataset, self.config.image_column, self.config.label_column,
            batch_size=args.batch_size,
            num_workers=args.num_workers if args.num_workers is not None else self._num_workers(len(dataset)),
            chunk_size=args.chunk_size, cache_dir=args.cache_dir, features_dtype=args.features_dtype,
            precision=args.precision, accelerator=self.accelerator, device=self.device,
        )  # fmt: skip

    def _num_workers(self, num_rows: int) -> int:
        """Decoding workers of the teacher pass: this process's share of the CPU cores less one (which runs the
        forward), at most 8 and at most the process's batches."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        local = int(os.environ.get("LOCAL_WORLD_SIZE", getattr(self.accelerator, "num_processes", 1)))
        batches = -(-num_rows // (self.config.batch_size * getattr(self.accelerator, "num_processes", 1)))
        return max(0, min(8, cores // max(local, 1) - 1, batches))

    def score(self, dataset: datasets.Dataset) -> PruningResult:
        """Teacher pass + scores for every row; select afterwards at any ratio with `result.select(ds, ratio)`."""
        check_dataset(dataset)
        self._check_classes(dataset)
        t0 = time.perf_counter()
        outputs = self.teacher_outputs(dataset)
        t1 = time.perf_counter()
        labels = np.asarray(outputs.labels)
        val_indices = validation_split(labels, self.config.val_fraction, self.config.val_max_per_class, self.config.seed)
        influence = None
        if getattr(self.method, "needs_influence", False):
            influence = self._influence(outputs, val_indices)
        context = ScoringContext(
            config=self.config, val_indices=val_indices, influence=influence, device=str(self.device)
        )
        scores = from_main_process(np.asarray(self.method.score(outputs, context), dtype=np.float64), self.accelerator)
        t2 = time.perf_counter()
        extra = {}
        if influence is not None and influence.self_influence is not None:
            extra["self_influence"] = influence.self_influence
        result = PruningResult(
            method=self.config.method,
            scores=scores,
            labels=labels,
            config=self.config.to_dict(),
            provenance=self._provenance(dataset, outputs),
            val_indices=val_indices,
            timings={"teacher_pass_s": t1 - t0, "scoring_s": t2 - t1},
            extra_scores=extra,
            _outputs=outputs,
            _context=context,
            _accelerator=self.accelerator,
        )
        if influence is not None:
            result.provenance["influence"] = to_jsonable(influence.info)
        self.last_result = result
        return result

    def prune(self, dataset: datasets.Dataset, ratio: float, seed: Optional[int] = None) -> datasets.Dataset:
        """Remove a fraction `ratio` of the rows of `dataset`.

        Args:
            dataset (`datasets.Dataset`): an image classification dataset.
            ratio (`float`): fraction of rows to remove, in (0, 1).
            seed (`int`, *optional*): selection seed (default: the config's seed).

        Returns:
            `datasets.Dataset`: `dataset.select(result.indices)`, every column kept. The scores, kept
            indices and policy are in `self.last_result`.
        """
        check_dataset(dataset)  # fail before the teacher pass
        check_ratio(ratio)
        result = self.score(dataset)
        result.select_indices(ratio, seed)  # the main process's rows on every process
        return result.select(dataset)

    def _check_classes(self, dataset: datasets.Dataset) -> None:
        feature = dataset.features.get(self.config.label_column) if dataset.features else None
        teacher_classes = getattr(self.teacher, "num_classes", None)
        if isinstance(feature, datasets.ClassLabel) and teacher_classes and feature.num_classes != teacher_classes:
            raise ValueError(
                f"The teacher predicts {teacher_classes} classes but column {self.config.label_column!r} has "
                f"{feature.num_classes} ({feature.names[:5]}...): the teacher does not match the data."
            )

    def _influence(self, outputs: TeacherOutputs, val_indices: np.ndarray):
        from .influence import influence_scores

        args = dataclasses.replace(
            self.stages.influence, self_influence=self.method.needs_self_influence(self.config),
            seed=self.config.seed, device=self.device,
        )  # fmt: skip
        return influence_scores(
            outputs.features, outputs.logits, outputs.labels, val_indices,
            proxy_loss=self.stages.loss, args=args, init_head=outputs.head,
        )  # fmt: skip

    def _provenance(self, dataset: datasets.Dataset, outputs: TeacherOutputs) -> Dict[str, Any]:
        info = getattr(dataset, "info", None)
        name, config = getattr(info, "dataset_name", None), getattr(info, "config_name", None)
        if name is not None and name == getattr(info, "builder_name", None):
            # Local files through a packaged builder (`load_dataset("parquet", data_files=...)`): the name is
            # "parquet" and the config "default", not a dataset the Hub card or `load_pruned_dataset` can load.
            name = config = None
        return {
            "teacher": self.teacher_name,
            "dataset_fingerprint": getattr(dataset, "_fingerprint", None),
            "dataset_name": name,
            "dataset_config": config,
            "dataset_split": str(dataset.split) if getattr(dataset, "split", None) is not None else None,
            "num_rows": len(dataset),
            "num_classes": outputs.num_classes,
            "num_features": outputs.num_features,
            "teacher_outputs_dir": outputs.meta.get("cache_path"),
            "device": str(self.device),
            "hf_ifbeta_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }


def _teacher_name(teacher: nn.Module) -> str:
    cfg = getattr(teacher, "pretrained_cfg", None) or {}
    name = cfg.get("hf_hub_id") or cfg.get("architecture") or type(teacher).__name__
    if cfg.get("tag"):
        name = f"{name}.{cfg['tag']}"
    if cfg.get("file"):
        name = f"{name} ({os.path.basename(cfg['file'])})"
    return name


def to_jsonable(x):
    """`x` with numpy arrays and scalars turned into lists and numbers (for JSON files and cards)."""
    if x is None:
        return None
    return json.loads(json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
