"""Prune CIFAR-10/100 with a teacher's influence scores, then distil a student on the kept rows.

Local data and checkpoints (as in ../shared), one process:

    python recipes/distill_cifar.py \
        --train_file ../shared/data/cifar10/train.parquet --test_file ../shared/data/cifar10/test.parquet \
        --teacher cifar10_resnet56 --teacher_checkpoint ../shared/models/cifar10_resnet56.pt \
        --student cifar10_resnet20 --prune_method if-beta --prune_ratio 0.5 \
        --num_train_epochs 15 --output_dir out/cifar10-r0.5

From the Hub, on several GPUs: `accelerate launch recipes/distill_cifar.py --dataset uoft-cs/cifar10 ...`.
The learning rate is 0.1 per process's batch of 128 images: on N processes the run uses N x 0.1 for the
N x 128-image global batch (`--scale_lr`), and the policy's inner fit takes the same global batch and
epochs (`--tie_policy_budget`). `--help` lists every flag: the recipe's own, `DistillationTrainingArguments`,
and `PrunerConfig` (e.g. `--outer_steps`, `--l2`).
"""

import sys

from pipeline import parse_args, run

# The benchmark's optimiser (SGD nesterov momentum 0.9, lr 0.1, weight decay 5e-4, batch 128) with transformers' cosine
# schedule and gradient clipping; the benchmark itself runs a one-cycle schedule without clipping. The lr is per
# process's batch: scaled with the number of processes by the pipeline.
CIFAR_DEFAULTS = dict(
    output_dir="out/distill_cifar", teacher="cifar10_resnet56", student="cifar10_resnet20", eval_split="test",
    learning_rate=0.1, weight_decay=5e-4, optim="sgd", optim_args="momentum=0.9,nesterov=True",
    lr_scheduler_type="cosine", num_train_epochs=15, per_device_train_batch_size=128,
    per_device_eval_batch_size=512, eval_strategy="epoch", save_strategy="no", logging_steps=50,
    report_to="none", dataloader_num_workers=1, dataloader_persistent_workers=True,
)


def main(argv=None):
    return run(*parse_args(argv, **CIFAR_DEFAULTS))


if __name__ == "__main__":
    main(sys.argv[1:])
