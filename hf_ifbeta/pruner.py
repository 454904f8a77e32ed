"""`DatasetPruner`: a `datasets.Dataset` in, the rows worth distilling on out.

One teacher pass (cached, resumable, sharded), then cheap work on the cached arrays: the scores of
the configured method (IF-Beta: influence of each row on a validation KD loss of a proxy head) and
a selection at any ratio (IF-Beta: a Beta-distribution policy over score ranks, learned per ratio).
"""

import dataclasses
import os
import time
from typing import Any, Dict, Optional, Union

import datasets
import numpy as np
import torch
import torch.nn as nn

from . import __version__
from .config import PrunerConfig
from .data import check_dataset
from .distributed import from_main_process, resolve_device
from .features import TeacherOutputs, compute_teacher_outputs
from .models import load_model
from .result import RESULT_FILE, PruningResult, to_jsonable  # noqa: F401  (RESULT_FILE: importable from here)
from .scorers import ScoringContext, get_method
from .selection import check_ratio, num_kept

__all__ = ["DatasetPruner", "PruningResult", "resolve_device", "to_jsonable", "validation_split"]


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
            coverage_stage=args.coverage_stage,
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
        if len(dataset):  # an empty one is refused by name in `score`
            num_kept(len(dataset), ratio)  # at least one row kept
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
            # "parquet" and the config "default", nothing to name the rows by.
            name = config = None
        return {
            "teacher": self.teacher_name,
            "dataset_fingerprint": getattr(dataset, "_fingerprint", None),
            # The Hub id, set by whoever knows it (the CLI, the recipes, `push_to_hub(source_dataset=...)`):
            # `datasets` keeps only the repo's name, snake-cased and without its namespace ("cifar10" for
            # uoft-cs/cifar10), which would load another dataset or none.
            "dataset_name": None,
            "dataset_info_name": name,
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

