"""`PruningResult`: the scores of every row and the kept rows, saved with the arguments that made them.

A result is made by `DatasetPruner.score` and selects again at any ratio without a second teacher pass.
It is saved to a folder (`save` / `load`), shared on the Hub (`push_to_hub`, `load_pruning_result`,
`load_pruned_dataset`) and shown (`plot`, `report`). The sharing and the report are
`hf_ifbeta.hub` and `hf_ifbeta.report`, which read a result without importing this module.
"""

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

import datasets
import numpy as np

from .config import PrunerConfig
from .data import check_dataset, column_values
from .distributed import from_main_process, resolve_device
from .feature_cache import TeacherOutputs
from .files import to_jsonable
from .hub import SOURCE_FILE, SUBSET_DATA_DIR, local_or_download, push_pruning_result
from .policy import BetaPolicy, check_ratio
from .report import kept_share_per_rank_decile, write_report
from .scorers import ScoringContext, Selection, get_method

__all__ = ["RESULT_FILE", "PruningResult", "load_pruned_dataset", "load_pruning_result", "to_jsonable"]

RESULT_FILE = "pruning_result.json"


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
            proxy validation losses of the learned and the uniform policy, and `on_bound`: whether the learned
            policy sits on the bound of its search box, which `info["box"]` and `info["on_bound"]` detail; after a
            fallback to uniform it is False, while `info["on_bound"]` still describes the discarded learned policy).
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
        else:  # a selection saved here before is not this result's
            (path / "indices.npy").unlink(missing_ok=True)
        for stale in set(path.glob("scores_*.npy")) - {path / f"scores_{name}.npy" for name in self.extra_scores}:
            stale.unlink()
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
        """Load a result written by `save` (or downloaded from the Hub by `load_pruning_result`)."""
        path = Path(save_directory)
        if not (path / RESULT_FILE).exists():
            raise FileNotFoundError(f"{path} has no {RESULT_FILE}: not a saved PruningResult.")
        meta = json.loads((path / RESULT_FILE).read_text())
        n = meta["num_rows"]
        arrays = {name: np.load(path / f"{name}.npy") for name in ("scores", "labels", "val_indices")}
        arrays.update({f"scores_{k}": np.load(path / f"scores_{k}.npy") for k in meta.get("extra_scores", [])})
        if meta.get("num_kept") is not None:
            arrays["indices"] = np.load(path / "indices.npy")
        for name, values in arrays.items():
            rows = meta["num_kept"] if name == "indices" else None if name == "val_indices" else n
            if values.ndim != 1 or (rows is not None and len(values) != rows):
                raise ValueError(f"{path / (name + '.npy')} holds shape {values.shape}, but {RESULT_FILE} records "
                                 f"{rows} rows: the saved result is damaged or mixed with another one.")  # fmt: skip
            if name in ("indices", "val_indices") and len(values) and not (0 <= values.min() and values.max() < n):
                raise ValueError(f"{path / (name + '.npy')} holds row indices outside [0, {n}): the saved result is "
                                 "damaged or mixed with another one.")  # fmt: skip
        return cls(
            method=meta["method"],
            scores=arrays["scores"],
            labels=arrays["labels"],
            config=meta["config"],
            provenance=meta["provenance"],
            val_indices=arrays["val_indices"],
            ratio=meta["ratio"],
            seed=meta["seed"],
            indices=arrays.get("indices"),
            policy=meta["policy"],
            timings=meta.get("timings", {}),
            extra_scores={k: arrays[f"scores_{k}"] for k in meta.get("extra_scores", [])},
        )

    def push_to_hub(self, repo_id: str, **kwargs):
        """Share the subset on the Hub as indices + scores + a dataset card; see `hub.push_pruning_result`."""
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
        return write_report(self, dataset, path, options, **kwargs)


def load_pruning_result(repo_id_or_path: Union[str, os.PathLike], revision=None, token=None) -> PruningResult:
    """The `PruningResult` stored in a local folder or a Hub dataset repo."""
    return PruningResult.load(local_or_download(repo_id_or_path, "dataset", RESULT_FILE, revision, token))


def load_pruned_dataset(
    repo_id_or_path: Union[str, os.PathLike],
    dataset: Optional[datasets.Dataset] = None,
    revision: Optional[str] = None,
    token: Optional[str] = None,
) -> datasets.Dataset:
    """The kept rows of a shared pruned subset, in one call.

    Args:
        repo_id_or_path (`str`): a Hub dataset repo id or a local folder written by `push_pruning_result` /
            `save_pruning_result_for_hub`.
        dataset (`datasets.Dataset`, *optional*): the source split, when it is not on the Hub (e.g. local
            parquet). By default the source named in the card is loaded at its recorded revision.
        revision (`str`, *optional*): revision of the subset repo.
        token (`str`, *optional*): Hub token.

    Raises:
        FileNotFoundError: `repo_id_or_path` is no existing folder and no valid Hub repo id (both are said).
        ValueError: `dataset` holds other rows than the scored split (another length, a shuffle, another split).
    """
    path = local_or_download(repo_id_or_path, "dataset", RESULT_FILE, revision, token)
    if not (path / RESULT_FILE).exists():
        raise FileNotFoundError(f"{repo_id_or_path} holds no {RESULT_FILE}: not a pruned subset made by hf_ifbeta.")
    source = json.loads((path / SOURCE_FILE).read_text()) if (path / SOURCE_FILE).exists() else {}
    data_dir = path / SUBSET_DATA_DIR
    if dataset is None and data_dir.is_dir():
        files = sorted(str(p) for p in data_dir.glob("*.parquet"))
        return datasets.load_dataset("parquet", data_files={"train": files}, split="train")
    result = PruningResult.load(path)
    if dataset is None:
        if not source.get("dataset"):
            raise ValueError(
                "The subset does not name a Hub source dataset (it was scored on local data): pass dataset=<the source split>."
            )
        dataset = datasets.load_dataset(
            source["dataset"], source.get("config"), split=source.get("split", "train"), revision=source.get("revision"), token=token
        )
    return result.select(dataset)  # refuses other rows: another length, a shuffle, another split
