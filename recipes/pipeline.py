"""Prune then distil: the pipeline shared by `distill_cifar.py` and `distill_imagenet.py`.

1. load the train / eval splits (Hub id, local parquet, or local image folders);
2. prune the training split with the teacher (`DatasetPruner`, any method of the registry);
3. distil the student on the kept rows (`DistillationTrainer`, the teacher online);
4. evaluate student and teacher on the eval split, write `results.json`, push when asked.

On N processes the global batch is N x `--per_device_train_batch_size` x `--gradient_accumulation_steps`, so
`--learning_rate` (the rate for one process's batch) is multiplied by N (`--scale_lr`, on by default), and the
policy's inner proxy fit gets the student's budget: `inner_batch_size` = the global batch, `inner_epochs` =
`--num_train_epochs`, or the passes over the kept rows that `--max_steps` makes (`--tie_policy_budget`, on by
default). The proxy's loss is the student's: `--alpha` and `--temperature` set both.
"""

import importlib.util
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import datasets
import torch
from transformers import HfArgumentParser

import hf_ifbeta
from hf_ifbeta import DatasetPruner, DistillationTrainer, DistillationTrainingArguments, PrunerConfig
from hf_ifbeta.config import PRESET_HELP, apply_preset
from hf_ifbeta.data import prepare_image_dataset
from hf_ifbeta.models import load_model
from hf_ifbeta.selection import num_kept
from hf_ifbeta.trainer import accuracy_metrics


@dataclass
class RecipeArguments:
    dataset: Optional[str] = field(default=None, metadata={"help": "Hub dataset id (uoft-cs/cifar10, ILSVRC/imagenet-1k); or local files below."})
    dataset_config: Optional[str] = field(default=None, metadata={"help": "Config name of the Hub dataset."})
    dataset_revision: Optional[str] = field(default=None, metadata={"help": "Revision of the Hub dataset (recorded with the subset)."})
    train_file: Optional[str] = field(default=None, metadata={"help": "Local parquet file with the training rows."})
    test_file: Optional[str] = field(default=None, metadata={"help": "Local parquet file with the evaluation rows."})
    train_dir: Optional[str] = field(default=None, metadata={"help": "Local ImageNet-style folder (one sub-folder per class) for training."})
    eval_dir: Optional[str] = field(default=None, metadata={"help": "Local ImageNet-style folder for evaluation."})
    train_split: str = field(default="train", metadata={"help": "Training split of the Hub dataset."})
    eval_split: str = field(default="test", metadata={"help": "Evaluation split of the Hub dataset (validation for ImageNet)."})
    image_column: Optional[str] = field(default=None, metadata={"help": "Image column (default: the only Image column)."})
    label_column: str = field(default="label", metadata={"help": "Label column."})
    teacher: str = field(default="cifar10_resnet56", metadata={"help": "Teacher: timm name (resnet50.a1_in1k), Hub id or local folder."})
    teacher_checkpoint: Optional[str] = field(default=None, metadata={"help": "Local weights file for the teacher."})
    student: str = field(default="cifar10_resnet20", metadata={"help": "Student: timm name (trained from scratch unless --student_checkpoint)."})
    student_checkpoint: Optional[str] = field(default=None, metadata={"help": "Local weights file to start the student from."})
    prune_method: str = field(default="if-beta", metadata={"help": "Pruning method (hf_ifbeta.list_methods()), or 'none'."})
    prune_ratio: float = field(default=0.5, metadata={"help": "Fraction of the training rows to remove, in (0, 1)."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Evaluate on the first N test rows."})
    push_subset_to: Optional[str] = field(default=None, metadata={"help": "Hub dataset repo to push the pruned subset to."})
    report: bool = field(default=False, metadata={"help": "Write pruning/report.html: what was kept, to open in a browser (needs matplotlib)."})
    scale_lr: bool = field(
        default=True,
        metadata={
            "help": "Multiply --learning_rate by the number of processes: it is the rate for one process's batch "
            "(per_device_train_batch_size x gradient_accumulation_steps images), and N processes make the global batch "
            "N times larger (the linear scaling rule). --no_scale_lr uses --learning_rate as given."
        },
    )
    tie_policy_budget: bool = field(
        default=True,
        metadata={
            "help": "Give the policy's inner proxy fit the student's budget: --inner_batch_size = the global batch "
            "(per device x processes x accumulation), --inner_epochs = --num_train_epochs. --no_tie_policy_budget "
            "keeps the pruner flags as given."
        },
    )


def parse_args(argv=None, pruner_defaults=None, **defaults):
    """(RecipeArguments, PrunerConfig, DistillationTrainingArguments) from the command line.

    `defaults` override field defaults of the recipe and training arguments, `pruner_defaults` those of
    `PrunerConfig` (a recipe's own settings). `--seed`, `--image_column`, `--label_column`, `--alpha` and
    `--temperature` are shared: the training seed also seeds the pruning, and the student's KD loss is the proxy's
    (the training arguments take these flags first, so the pruner could not get its own).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser((RecipeArguments, DistillationTrainingArguments))
    parser.set_defaults(**defaults)
    pruner_parser = HfArgumentParser(
        PrunerConfig, epilog=PRESET_HELP, description="Pruner settings (hf_ifbeta.PrunerConfig). --seed, --image_column, "
        "--label_column, --alpha and --temperature are the training run's: the proxy's loss is the student's.",
    )
    pruner_parser.set_defaults(**(pruner_defaults or {}))
    argv = apply_preset(pruner_parser, argv)
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        pruner_parser.print_help()
        sys.exit(0)
    args, training_args, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    (pruner_config,) = pruner_parser.parse_args_into_dataclasses(args=rest)
    check_recipe_flags(parser, pruner_parser, args, pruner_config)
    pruner_config.seed = training_args.seed
    pruner_config.image_column = args.image_column
    pruner_config.label_column = args.label_column
    pruner_config.alpha, pruner_config.temperature = training_args.alpha, training_args.temperature
    return args, pruner_config, training_args


def check_recipe_flags(parser, pruner_parser, args: RecipeArguments, pruner_config: PrunerConfig):
    """Usage errors, before any data is loaded, for flags the run would otherwise override or misread."""
    if pruner_config.method != pruner_parser.get_default("method"):
        parser.error(f"--method {pruner_config.method} is the pruner's name for the recipe's --prune_method: give "
                     f"--prune_method {pruner_config.method}.")  # fmt: skip
    if args.tie_policy_budget:
        given = [f"--{k}" for k in ("inner_epochs", "inner_batch_size") if getattr(pruner_config, k) != pruner_parser.get_default(k)]
        if given:
            parser.error(f"{' and '.join(given)} would be replaced by the student's budget (--tie_policy_budget): "
                         "give --no_tie_policy_budget to set the proxy's own.")  # fmt: skip
    if args.report and args.prune_method == "none":
        parser.error("--report shows what the pruning kept: it needs a --prune_method other than none.")
    if args.report and importlib.util.find_spec("matplotlib") is None:
        parser.error("--report needs matplotlib: pip install 'hf_ifbeta[plot]'.")
    for train, evaluation in (("train_file", "test_file"), ("train_dir", "eval_dir")):
        if getattr(args, train) and not getattr(args, evaluation):
            parser.error(f"--{train} needs --{evaluation}: the rows the student and teacher are evaluated on.")


def hub_dataset(args: RecipeArguments) -> Optional[str]:
    """The Hub dataset the rows came from, None for local files (a recipe's default `--dataset` stays unused then)."""
    return None if args.train_file or args.train_dir else args.dataset


def load_splits(args: RecipeArguments):
    """(train, eval) splits from local parquet files, local image folders, or the Hub."""
    if args.train_file:
        ds = datasets.load_dataset("parquet", data_files={"train": args.train_file, "test": args.test_file})
        train, test = ds["train"], ds["test"]
    elif args.train_dir:
        train = datasets.load_dataset("imagefolder", data_dir=args.train_dir, split="train")
        test = datasets.load_dataset("imagefolder", data_dir=args.eval_dir, split="train")
    elif args.dataset:
        load = dict(path=args.dataset, name=args.dataset_config, revision=args.dataset_revision)
        train = datasets.load_dataset(**load, split=args.train_split)
        test = datasets.load_dataset(**load, split=args.eval_split)
    else:
        raise ValueError("Give --dataset (a Hub id), --train_file/--test_file (parquet) or --train_dir/--eval_dir (image folders).")
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples:
        test = test.select(range(min(args.max_eval_samples, len(test))))
    return train, test


def scale_to_world_size(
    args: RecipeArguments, pruner_config: PrunerConfig, training_args: DistillationTrainingArguments, train_rows: int
):
    """Learning rate and policy budget for this run's global batch (see `--scale_lr`, `--tie_policy_budget`)."""
    world_size = training_args.world_size
    global_batch = training_args.per_device_train_batch_size * world_size * training_args.gradient_accumulation_steps
    if args.scale_lr:
        training_args.learning_rate *= world_size
    if args.tie_policy_budget:
        pruner_config.inner_batch_size = global_batch
        pruner_config.inner_epochs = float(training_args.num_train_epochs)
        if training_args.max_steps > 0 and args.prune_method != "none":  # the student stops there, not at the epochs
            pruner_config.inner_epochs = training_args.max_steps * global_batch / num_kept(train_rows, args.prune_ratio)
    # Persistent workers keep their decoders between epochs; torch refuses them without workers.
    training_args.dataloader_persistent_workers &= training_args.dataloader_num_workers > 0
    return global_batch


def teacher_accuracy(trainer: DistillationTrainer, dataset) -> dict:
    """Top-1 accuracy of the trainer's teacher on `dataset` (prepared with the teacher's own eval transform).

    A no-grad loop over an evaluation dataloader sharded over the processes, predictions gathered with the
    sampler's padding dropped. Not a second trainer's `evaluate()`: that would make the teacher a student
    (FSDP wraps it, DeepSpeed builds an engine for it that ZeRO-1/2 cannot evaluate) and, with the same
    module as teacher, run it twice per batch.
    """
    correct, rows = 0, 0
    for batch in trainer.get_test_dataloader(dataset):
        predictions = trainer.teacher_logits(batch["pixel_values"], adapt_input=False).argmax(-1)
        predictions, labels = trainer.accelerator.gather_for_metrics((predictions, batch["labels"]))
        correct += int((predictions == labels).sum())
        rows += len(labels)
    return {"accuracy": correct / rows, "rows": rows}


def run(args: RecipeArguments, pruner_config: PrunerConfig, training_args: DistillationTrainingArguments):
    """Prune, distil, evaluate student and teacher, write `results.json` (and push when asked)."""
    torch.manual_seed(training_args.seed)

    # 1. Data and models.
    train, test = load_splits(args)
    global_batch = scale_to_world_size(args, pruner_config, training_args, len(train))
    teacher = load_model(args.teacher, checkpoint=args.teacher_checkpoint).eval()
    # The student predicts the teacher's classes (a timm name alone would give its default head).
    student = load_model(
        args.student, checkpoint=args.student_checkpoint, pretrained=args.student_checkpoint is not None,
        num_classes=getattr(teacher, "num_classes", None) or None,
    )

    # 2. Prune: one teacher pass, scores for every row, the kept rows at the requested ratio. The pruner
    # shares the Trainer's process group (`training_args.device` sets it up): under accelerate launch the
    # teacher pass is sharded over the processes, and every process gets the same kept rows.
    t0 = time.perf_counter()
    result = None
    kept = train
    if args.prune_method != "none":
        pruner_config.method = args.prune_method
        training_args.device  # noqa: B018  (sets up training_args.distributed_state)
        pruner = DatasetPruner(teacher, pruner_config, accelerator=training_args.distributed_state)
        kept = pruner.prune(train, ratio=args.prune_ratio, seed=training_args.seed)
        result = pruner.last_result
        if args.teacher_checkpoint is None:  # else the pruner's name, which names the checkpoint file
            result.provenance["teacher"] = args.teacher
        if hub_dataset(args):
            result.provenance["dataset_name"] = hub_dataset(args)
    prune_time = time.perf_counter() - t0

    # 3. Distil on the kept rows; the teacher runs online on the student's augmented batches.
    image_column = hf_ifbeta.data.find_image_column(train, args.image_column)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=training_args,
        # The whole split with the kept rows: its decoded images (small inputs) are shared by every subset.
        train_dataset=prepare_image_dataset(
            train, student, image_column, args.label_column, train=True,
            rows=result.indices if result is not None else None,
        ),
        eval_dataset=prepare_image_dataset(test, student, image_column, args.label_column, train=False),
        compute_metrics=accuracy_metrics,
    )
    t1 = time.perf_counter()
    trainer.train()
    kd_time = time.perf_counter() - t1
    student_metrics = trainer.evaluate()
    # The teacher's own accuracy on the same test rows, with its own eval transform.
    teacher_metrics = teacher_accuracy(
        trainer, prepare_image_dataset(test, teacher, image_column, args.label_column, train=False)
    )

    # 4. Report (and share).
    summary = {
        "teacher": args.teacher,
        "student": args.student,
        "prune_method": args.prune_method,
        "prune_ratio": args.prune_ratio if result is not None else 0.0,
        "train_rows": len(train),
        "kept_rows": len(kept),
        "policy": {k: result.policy[k] for k in ("a", "b") if result is not None and result.policy and k in result.policy},
        "prune_time_s": round(prune_time, 1),
        "kd_time_s": round(kd_time, 1),
        "epochs": training_args.num_train_epochs,
        "world_size": training_args.world_size,
        "global_batch_size": global_batch,
        "learning_rate": training_args.learning_rate,
        "policy_inner_budget": {"inner_batch_size": pruner_config.inner_batch_size, "inner_epochs": pruner_config.inner_epochs},
        "student_test_accuracy": student_metrics.get("eval_accuracy"),
        "teacher_test_accuracy": teacher_metrics["accuracy"],
    }
    if trainer.is_world_process_zero():
        out = Path(training_args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(summary, indent=2))
        if result is not None:
            result.save(out / "pruning")
        print(json.dumps(summary, indent=2))
        print(
            f"student {args.student}: {100 * summary['student_test_accuracy']:.2f} % test top-1 | "
            f"teacher {args.teacher}: {100 * summary['teacher_test_accuracy']:.2f} % "
            f"({len(kept)} of {len(train)} rows, {args.prune_method}, {training_args.num_train_epochs} epochs)"
        )
        if args.report and result is not None:
            print(f"pruning report: {result.report(train, out / 'pruning' / 'report.html', image_column=image_column)}")
    if args.push_subset_to and result is not None:
        result.push_to_hub(
            args.push_subset_to, source_dataset=hub_dataset(args), source_revision=args.dataset_revision,
            source_split=args.train_split, source_config=args.dataset_config, dataset=train,
        )
    if training_args.push_to_hub:
        # The student's model card names its teacher, the subset it was distilled on and the source dataset.
        trainer.push_to_hub(teacher=args.teacher, subset=args.push_subset_to, dataset=hub_dataset(args))
    return summary

