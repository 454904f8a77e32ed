"""Sharing on the Hugging Face Hub: pruned subsets (indices + scores + a dataset card) and students.

A pruned subset is shared light by default: the kept row ids, every row's score and a card that
points at the source dataset and revision, so the source's licence and hosting are respected and
`hf_ifbeta.load_pruned_dataset` rebuilds the rows with one call. `materialize=True` uploads the rows too.
The card embeds the pruning report's figures (`figures/`): the policy plot and, when the scored rows
are given, the grid of the highest- and lowest-scored images of each class.
Uploads happen on the main process only; everything up to the upload is a local folder, so the
same code is tested offline by loading those folders back. A result is read through its attributes
and methods only, so that `PruningResult` (`hf_ifbeta.result`) can share itself with these functions.
"""

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union

import datasets
import torch.nn as nn
from huggingface_hub import DatasetCard, DatasetCardData, HfApi, ModelCard, ModelCardData, snapshot_download
from huggingface_hub.errors import HFValidationError

if TYPE_CHECKING:
    from .result import PruningResult

__all__ = [
    "local_or_download",
    "push_pruning_result",
    "push_student",
    "save_pruning_result_for_hub",
    "save_student_for_hub",
    "write_student_card",
]

SUBSET_DATA_DIR = "data"
SOURCE_FILE = "source.json"
FIGURES_DIR = "figures"

logger = logging.getLogger(__name__)


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


# ---------------------------------------------------------------------------- pruned subsets
def save_pruning_result_for_hub(
    result: "PruningResult",
    save_directory: Union[str, os.PathLike],
    source_dataset: Optional[str] = None,
    source_revision: Optional[str] = None,
    source_split: Optional[str] = None,
    source_config: Optional[str] = None,
    dataset: Optional[datasets.Dataset] = None,
    materialize: bool = False,
) -> Path:
    """Write the folder a push would upload: the saved result, a dataset card and (optionally) the rows.

    Args:
        result (`PruningResult`): a result with a selection (`result.indices`).
        save_directory (`str`): the folder to write.
        source_dataset (`str`, *optional*): Hub id of the scored dataset (default: from the result's provenance).
        source_revision (`str`, *optional*): its revision (commit sha or tag) the row ids refer to.
        source_split (`str`, *optional*): its split (default: from provenance, else "train").
        source_config (`str`, *optional*): its config name.
        dataset (`datasets.Dataset`, *optional*): the scored dataset: gives the card its grid of the highest- and
            lowest-scored images of each class; required with `materialize=True`.
        materialize (`bool`): also write the kept rows as parquet under `data/`.
    """
    if result.indices is None:
        raise ValueError("The result has no selection: call result.select_indices(ratio) before sharing it.")
    path = Path(save_directory)
    result.save(path)
    for stale in (SUBSET_DATA_DIR, FIGURES_DIR):  # rows and figures of a selection written here before
        shutil.rmtree(path / stale, ignore_errors=True)
    prov = result.provenance
    source = {
        "dataset": source_dataset or prov.get("dataset_name"),
        "revision": source_revision,
        "split": source_split or prov.get("dataset_split") or "train",
        "config": source_config or prov.get("dataset_config"),
        "fingerprint": prov.get("dataset_fingerprint"),
        "num_rows": result.num_rows,
    }
    if source["dataset"] is None and not materialize:
        logger.warning("No source_dataset given: the card names no Hub source, and load_pruned_dataset will need "
                       "dataset=<the scored split>. Pass source_dataset=<Hub id> for a subset loadable by its id.")  # fmt: skip
    (path / SOURCE_FILE).write_text(json.dumps(source, indent=2))
    if materialize:
        if dataset is None:
            raise ValueError("materialize=True needs dataset=<the scored datasets.Dataset>.")
        (path / SUBSET_DATA_DIR).mkdir()
        result.select(dataset).to_parquet(str(path / SUBSET_DATA_DIR / f"{source['split']}-00000-of-00001.parquet"))
    _dataset_card(result, source, materialize, _card_figures(result, dataset, path)).save(path / "README.md")
    return path


def _card_figures(result: "PruningResult", dataset: Optional[datasets.Dataset], path: Path) -> Dict[str, str]:
    """The pruning report's figures under `figures/`: {name: path relative to the card}."""
    if importlib.util.find_spec("matplotlib") is None:
        logger.warning("matplotlib is not installed (pip install 'hf_ifbeta[plot]'): the dataset card has no figures.")
        return {}
    from .report import write_figures

    paths = write_figures(result, dataset, path / FIGURES_DIR)
    return {name: f"{FIGURES_DIR}/{p.name}" for name, p in paths.items()}


_FIGURE_CAPTIONS = {
    "policy": "Scores of every row and of the kept ones, the policy density over rank positions, the kept share per rank decile",
    "class_grid": "The highest- (left) and lowest-scored (right) images of each class; frame: kept (blue) or removed (red)",
    "class_kept": "Kept share per class",
    "flagged_kept": "Kept share of the flagged rows and of the rest",
}


def _dataset_card(
    result: "PruningResult", source: Dict[str, Any], materialize: bool, figures: Optional[Dict[str, str]] = None
) -> DatasetCard:
    policy = result.policy or {}
    card_data = DatasetCardData(
        source_datasets=[source["dataset"]] if source["dataset"] else None,
        task_categories=["image-classification"],
        tags=["hf_ifbeta", "data-pruning", "knowledge-distillation", result.method],
    )
    policy_line = (
        f"Beta(a={policy['a']:.3f}, b={policy['b']:.3f}) over class-wise score ranks"
        if "a" in policy
        else "the method's fixed selection rule"
    )
    if policy.get("on_bound"):
        low, high = policy["info"]["box"]
        policy_line += f" (on the bound of its search box [{low:g}, {high:g}]: the box set it, not the objective)"
    load = (
        f'ds = datasets.load_dataset("<this repo>", split="{source["split"]}")'
        if materialize
        else 'ds = load_pruned_dataset("<this repo>")  # fetches the source rows and selects the kept ones'
    )
    content = f"""---
{card_data.to_yaml()}
---

# Pruned subset: {source['dataset'] or 'local dataset'} ({result.method}, ratio {result.ratio})

Made with `hf_ifbeta` {result.provenance.get('hf_ifbeta_version')}: the teacher
`{result.provenance.get('teacher')}` scored every row, and {len(result.indices):,} of {result.num_rows:,} rows
(ratio removed {result.ratio}) were kept by {policy_line}, seed {result.seed}.

| | |
| --- | --- |
| source dataset | `{source['dataset']}` (config `{source['config']}`, split `{source['split']}`, revision `{source['revision']}`) |
| source fingerprint | `{source['fingerprint']}` |
| method | `{result.method}` |
| ratio removed | {result.ratio} |
| rows kept | {len(result.indices)} / {result.num_rows} |
| seed | {result.seed} |
| teacher | `{result.provenance.get('teacher')}` |

Files: `indices.npy` (kept row ids of the source split), `scores.npy` (a score per source row),
`pruning_result.json` (policy, configuration, provenance, timings), `source.json`{", `figures/` (the plots below)" if figures else ""}.
{"The kept rows are materialised under `data/`." if materialize else "The rows themselves stay in the source dataset (and under its licence)."}

```python
from hf_ifbeta import load_pruned_dataset
{load}
```
"""
    if figures:
        content += "\n## What was kept\n\n" + "".join(
            f"![{_FIGURE_CAPTIONS[name]}]({figures[name]})\n\n" for name in _FIGURE_CAPTIONS if name in figures
        )
    return DatasetCard(content)


def push_pruning_result(
    result: "PruningResult",
    repo_id: str,
    *,
    source_dataset: Optional[str] = None,
    source_revision: Optional[str] = None,
    source_split: Optional[str] = None,
    source_config: Optional[str] = None,
    dataset: Optional[datasets.Dataset] = None,
    materialize: bool = False,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    commit_message: str = "Add pruned subset",
):
    """Push a pruned subset to a Hub dataset repo (main process only).

    Args:
        result (`PruningResult`): a result with a selection (`result.indices`).
        repo_id (`str`): the Hub dataset repo to create or update.
        source_dataset, source_revision, source_split, source_config, dataset, materialize: as in
            `save_pruning_result_for_hub`.
        private (`bool`, *optional*): create the repo private.
        token (`str`, *optional*): Hub token (default: the logged-in one).
        revision (`str`, *optional*): branch to commit to.
        commit_message (`str`): the commit message.

    Returns:
        The commit info of the upload, or None on the other processes.
    """
    if not _is_main_process():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        save_pruning_result_for_hub(
            result, tmp, source_dataset, source_revision, source_split, source_config,
            dataset=dataset, materialize=materialize,
        )  # fmt: skip
        api = HfApi(token=token)
        repo_id = _create_repo_and_branch(api, repo_id, "dataset", private, revision)
        # The repo may hold an earlier selection: its rows, figures and optional files go unless uploaded again.
        return api.upload_folder(
            repo_id=repo_id, repo_type="dataset", folder_path=tmp, revision=revision, commit_message=commit_message,
            delete_patterns=[f"{SUBSET_DATA_DIR}/*", f"{FIGURES_DIR}/*", "indices.npy", "scores_*.npy"],
        )


def _create_repo_and_branch(api: HfApi, repo_id: str, repo_type: str, private: Optional[bool], revision: Optional[str]) -> str:
    """Create the repo (and the branch `revision`, as `Dataset.push_to_hub` does) unless they exist; the full repo id."""
    repo_id = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True).repo_id
    if revision is not None:
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    return repo_id


def local_or_download(
    repo_id_or_path: Union[str, os.PathLike], repo_type: str, expected_file: str, revision=None, token=None
) -> Path:
    """A local folder as it is, else a snapshot of the Hub repo; a name that is neither is said to be neither.

    `expected_file` is the file the folder should hold, named when a file is passed instead of it.
    """
    path = Path(repo_id_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file: pass the folder that holds {expected_file}, or a Hub repo id.")
    try:
        return Path(snapshot_download(str(repo_id_or_path), repo_type=repo_type, revision=revision, token=token))
    except HFValidationError as err:
        raise FileNotFoundError(
            f"The folder {path.resolve()} does not exist, and {str(repo_id_or_path)!r} is not a valid Hub "
            f"{repo_type} repo id either ({err})"
        ) from err
    except OSError as err:  # not found on the Hub, offline, no access: what the Hub said, plus the local side
        err.add_note(f"There is no local folder {path.resolve()} either.")
        raise


# ---------------------------------------------------------------------------- students
def write_student_card(
    model: nn.Module,
    save_directory: Union[str, os.PathLike],
    teacher: Optional[str] = None,
    subset: Optional[str] = None,
    kd_settings: Optional[Dict[str, Any]] = None,
    metrics: Optional[Dict[str, float]] = None,
    dataset: Optional[Union[str, List[str]]] = None,
    card_data: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write `README.md` (model card) and `distillation.json`: how the student was distilled.

    Args:
        model (`nn.Module`): the student.
        save_directory (`str`): the folder (already holding the weights, or about to).
        teacher (`str`, *optional*): the teacher's name or Hub id.
        subset (`str`, *optional*): the pruned subset it was trained on (Hub repo id or description).
        kd_settings (`dict`, *optional*): alpha, temperature, epochs, learning rate, ...
        metrics (`dict`, *optional*): evaluation results.
        dataset (`str` or `list[str]`, *optional*): the source dataset(s).
        card_data (`dict`, *optional*): more `ModelCardData` fields (`license`, `language`, `base_model`, extra
            `tags`), as `Trainer.push_to_hub(license=..., tags=...)` passes them.
    """
    path = Path(save_directory)
    path.mkdir(parents=True, exist_ok=True)
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
    datasets_ = [dataset] if isinstance(dataset, str) else list(dataset or []) or None
    extra = dict(card_data or {})
    extra_tags = extra.pop("tags", None) or []
    card_data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        tags=["image-classification", "timm", "knowledge-distillation", "hf_ifbeta"]
        + ([extra_tags] if isinstance(extra_tags, str) else list(extra_tags)),
        datasets=datasets_,
        **extra,
    )
    dataset = ", ".join(datasets_) if datasets_ else None
    rows = {"architecture": arch, "teacher": teacher, "training subset": subset, "dataset": dataset}
    rows.update({f"KD {k}": v for k, v in (kd_settings or {}).items()})
    rows.update({f"eval {k}": v for k, v in (metrics or {}).items()})
    table = "\n".join(f"| {k} | `{v}` |" for k, v in rows.items() if v is not None)
    content = f"""---
{card_data.to_yaml()}
---

# {arch} distilled with hf_ifbeta

A student trained by knowledge distillation (`alpha * tau^2 * KL(teacher || student) + (1 - alpha) * CE`)
from the teacher below, on the pruned subset below.

| | |
| --- | --- |
{table}

```python
import timm, hf_ifbeta  # hf_ifbeta registers the CIFAR ResNets
model = timm.create_model("hf-hub:<this repo>", pretrained=True)
```
"""
    ModelCard(content).save(path / "README.md")
    (path / "distillation.json").write_text(
        json.dumps({"teacher": teacher, "subset": subset, "kd": kd_settings, "metrics": metrics, "dataset": dataset}, indent=2, default=str)
    )
    return path


def save_student_for_hub(model: nn.Module, save_directory: Union[str, os.PathLike], **card_kwargs) -> Path:
    """Write a timm student as `config.json` + `model.safetensors` + a model card (`write_student_card`).

    The folder loads back with `timm.create_model("local-dir:<folder>")` (or `"hf-hub:<repo>"` once pushed).
    """
    from timm.models import save_for_hf

    save_for_hf(model, str(save_directory), safe_serialization=True)
    return write_student_card(model, save_directory, **card_kwargs)


def push_student(
    model: nn.Module,
    repo_id: str,
    *,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    commit_message: str = "Add distilled student",
    **card_kwargs,
):
    """Push a timm student and its model card to a Hub model repo (main process only)."""
    if not _is_main_process():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        save_student_for_hub(model, tmp, **card_kwargs)
        api = HfApi(token=token)
        repo_id = _create_repo_and_branch(api, repo_id, "model", private, revision)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message)
