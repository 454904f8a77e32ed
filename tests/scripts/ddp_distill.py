"""Two-process DistillationTrainer run, launched by tests/test_trainer.py::test_two_processes.

    torchrun --nproc_per_node 2 tests/scripts/ddp_distill.py OUT_DIR

Synthetic 32x32 images (64 train rows, 30 eval rows: not a multiple of the world size, so the
distributed sampler pads and the gather must drop the padding). After training the teacher is measured
the recipes' way (`recipes/pipeline.py::teacher_accuracy`). Every rank writes OUT_DIR/rank{r}.json with
what it saw; the main process alone writes OUT_DIR/metrics.json.
"""

import json
import sys
from pathlib import Path

import datasets
import numpy as np
import timm
import torch
from PIL import Image

import hf_ifbeta  # noqa: F401  (registers the CIFAR ResNets)
from hf_ifbeta import DistillationTrainer, DistillationTrainingArguments
from hf_ifbeta.data import prepare_image_dataset
from hf_ifbeta.trainer import accuracy_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
from pipeline import teacher_accuracy  # noqa: E402

N_TRAIN, N_EVAL = 64, 30


def synthetic(n: int, seed: int) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
    labels = rng.integers(0, 10, n).tolist()
    return datasets.Dataset.from_dict({"img": images, "label": labels}).cast_column("img", datasets.Image())


def main(out_dir: Path) -> None:
    torch.manual_seed(0)  # the same initial student and teacher on both ranks
    student = timm.create_model("cifar10_resnet20")
    teacher = timm.create_model("cifar10_resnet20")
    args = DistillationTrainingArguments(
        output_dir=str(out_dir / "run"),
        max_steps=3,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        ddp_backend="gloo",
    )
    eval_sizes = []

    def metrics(eval_pred):
        eval_sizes.append(len(eval_pred.label_ids))  # after the gather: every rank sees all rows
        return {**accuracy_metrics(eval_pred), "samples": len(eval_pred.label_ids)}

    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=prepare_image_dataset(synthetic(N_TRAIN, 0), student, "img", "label"),
        eval_dataset=prepare_image_dataset(synthetic(N_EVAL, 1), student, "img", "label", train=False),
        compute_metrics=metrics,
    )
    trainer.train()
    result = trainer.evaluate()
    teacher_rows_before = trainer.teacher_forward_rows
    teacher_eval = teacher_accuracy(trainer, prepare_image_dataset(synthetic(N_EVAL, 1), teacher, "img", "label", train=False))

    state = trainer.accelerator.state
    rank = {
        "rank": state.process_index,
        "world_size": state.num_processes,
        "device": str(trainer.accelerator.device),
        "teacher_devices": sorted({str(p.device) for p in trainer.teacher_model.parameters()}),
        "teacher_requires_grad": any(p.requires_grad for p in trainer.teacher_model.parameters()),
        "teacher_training": trainer.teacher_model.training,
        "student_wrapped": type(trainer.model_wrapped).__name__,
        "global_step": trainer.state.global_step,
        "eval_sizes": eval_sizes,
        "train_logs": [log for log in trainer.state.log_history if "loss" in log],
        "teacher_eval": teacher_eval,
        "teacher_eval_forward_rows": trainer.teacher_forward_rows - teacher_rows_before,
    }
    (out_dir / f"rank{state.process_index}.json").write_text(json.dumps(rank))
    if trainer.is_world_process_zero():
        (out_dir / "metrics.json").write_text(json.dumps({**result, "eval_set_size": N_EVAL}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
