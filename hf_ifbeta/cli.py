"""Console entry points.

    hf-ifbeta-prune --teacher cifar10_resnet56 --teacher_checkpoint ../shared/models/cifar10_resnet56.pt \\
        --dataset parquet --data_files ../shared/data/cifar10/train.parquet --image_column img \\
        --ratio 0.3 --output_dir out/cifar10 --report    # + out/cifar10/if-beta-r0.3/report.html to open in a browser

`--preset NAME` starts from a named configuration of the policy's learning (`hf_ifbeta.config.PRESETS`).
"""

import importlib.util
import json
import logging
import sys
from dataclasses import dataclass, field
from typing import List, Optional

from .config import PRESET_HELP, PrunerConfig, apply_preset

__all__ = ["PruneArguments", "load_image_dataset", "prune_main"]

logger = logging.getLogger(__name__)


@dataclass
class PruneArguments:
    """What to prune and where to write it (the method's settings are `PrunerConfig`)."""

    teacher: str = field(metadata={"help": "Teacher: a timm name (cifar10_resnet56), a Hub id or a local folder."})
    dataset: str = field(metadata={"help": "Dataset: a Hub id (uoft-cs/cifar10), or a builder such as parquet with --data_files."})
    ratio: List[float] = field(
        default_factory=lambda: [0.3], metadata={"help": "Fraction(s) of rows to remove, each in (0, 1): one scoring pass, one selection per ratio."}
    )
    output_dir: str = field(default="pruned", metadata={"help": "Folder for the results (one sub-folder per ratio)."})
    teacher_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "Local weights file for a timm registry teacher."}
    )
    data_files: Optional[List[str]] = field(default=None, metadata={"help": "Data files for a builder dataset (parquet, imagefolder, ...)."})
    dataset_config: Optional[str] = field(default=None, metadata={"help": "Dataset config name."})
    split: str = field(default="train", metadata={"help": "Split to prune."})
    revision: Optional[str] = field(default=None, metadata={"help": "Dataset revision (recorded in the result)."})
    max_samples: Optional[int] = field(default=None, metadata={"help": "Prune only the first N rows (for a quick try)."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push each subset (indices + scores + card) to the Hub."})
    repo_id: Optional[str] = field(default=None, metadata={"help": "Hub dataset repo for --push_to_hub; '{ratio}' is filled in."})
    private: Optional[bool] = field(
        default=None, metadata={"help": "--private true / false: visibility of a new Hub repo; unset, the namespace's default."}
    )
    token: Optional[str] = field(
        default=None, metadata={"help": "Hub token for loading the dataset and pushing; unset, the logged-in one."}
    )
    plot: bool = field(default=True, metadata={"help": "Save plot.png (scores, policy, kept rows) next to each result."})
    report: bool = field(
        default=False,
        metadata={"help": "Write report.html next to each result: a page to open in a browser (provenance, scores and "
                  "policy, kept share and highest- / lowest-scored images per class), its figures as PNGs beside it."},
    )  # fmt: skip
    noisy_column: Optional[str] = field(
        default=None, metadata={"help": "For --report: a column of known-noisy flags; their kept share is compared with the rest's."}
    )
    other_label_column: Optional[str] = field(
        default=None, metadata={"help": "For --report: a second label column; rows whose labels differ are compared with the rest."}
    )


def load_image_dataset(
    dataset: str, split: str = "train", data_files=None, config=None, revision=None, max_samples=None, token=None
):
    """`datasets.load_dataset` for a Hub id or a builder with data files; optionally the first N rows."""
    import datasets

    if data_files:
        ds = datasets.load_dataset(
            dataset, config, data_files={split: data_files}, split=split, revision=revision, token=token
        )
    else:
        ds = datasets.load_dataset(dataset, config, split=split, revision=revision, token=token)
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    return ds


def prune_main(argv: Optional[List[str]] = None) -> None:
    """`hf-ifbeta-prune`: score a dataset once, select at each ratio, save (and optionally push) the subsets.

    Under `accelerate launch` / `torchrun` the teacher pass is sharded over the processes; the main process
    writes the results.
    """
    from pathlib import Path

    from accelerate import PartialState
    from transformers import HfArgumentParser

    from .models import load_model
    from .selection import check_ratio
    from .pruner import DatasetPruner

    parser = HfArgumentParser((PruneArguments, PrunerConfig), epilog=PRESET_HELP)
    argv = apply_preset(parser, sys.argv[1:] if argv is None else argv)
    args, config = parser.parse_args_into_dataclasses(args=argv)
    # Fail before the teacher pass, not after it.
    if args.push_to_hub and not args.repo_id:
        parser.error("--push_to_hub needs --repo_id (e.g. me/cifar10-ifbeta-r{ratio}).")
    if args.push_to_hub and len(set(args.ratio)) > 1 and "{ratio}" not in args.repo_id:
        parser.error(f"--repo_id {args.repo_id!r} would get every ratio's subset in turn, each over the last: "
                     "put {ratio} in it (e.g. me/cifar10-ifbeta-r{ratio}).")  # fmt: skip
    for ratio in args.ratio:
        check_ratio(ratio)
    report_options = None
    if args.report:
        if importlib.util.find_spec("matplotlib") is None:
            parser.error("--report needs matplotlib: pip install 'hf_ifbeta[plot]'.")
        from .report import ReportOptions

        report_options = ReportOptions(noisy_column=args.noisy_column, other_label_column=args.other_label_column)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        logger.warning("matplotlib is not installed (pip install 'hf_ifbeta[plot]'): no plot.png is written.")
        args.plot = False
    state = PartialState()
    ds = load_image_dataset(
        args.dataset, args.split, args.data_files, args.dataset_config, args.revision, args.max_samples, args.token
    )
    for column in (args.noisy_column, args.other_label_column):
        if report_options is not None and column and column not in ds.column_names:
            parser.error(f"--noisy_column / --other_label_column {column!r} is not a column of the dataset: {ds.column_names}.")
    teacher = load_model(args.teacher, checkpoint=args.teacher_checkpoint)
    pruner = DatasetPruner(teacher, config, accelerator=state)
    result = pruner.score(ds)
    if args.teacher_checkpoint is None:  # else the pruner's name, which names the checkpoint file
        result.provenance["teacher"] = args.teacher
    if not args.data_files:
        result.provenance["dataset_name"] = args.dataset
    summary = []
    for ratio in args.ratio:
        result.select_indices(ratio)
        if not state.is_main_process:
            continue
        out = Path(args.output_dir) / f"{config.method}-r{ratio}"
        result.save(out)
        if args.plot:
            result.plot(out / "plot.png")
        if report_options is not None:
            result.report(ds, out / "report.html", report_options)
        policy = result.policy or {}
        line = {
            "ratio": ratio,
            "kept": int(len(result.indices)),
            "of": result.num_rows,
            "method": config.method,
            "a": policy.get("a"),
            "b": policy.get("b"),
            "output": str(out),
            **({"report": str(out / "report.html")} if report_options is not None else {}),
            "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
        }
        summary.append(line)
        print(json.dumps(line))
        if args.push_to_hub:
            result.push_to_hub(
                args.repo_id.format(ratio=ratio), source_dataset=None if args.data_files else args.dataset,
                source_revision=args.revision, source_split=args.split, source_config=args.dataset_config,
                dataset=ds, private=args.private, token=args.token,
            )
    if state.is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    prune_main(sys.argv[1:])
