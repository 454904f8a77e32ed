"""Prune ImageNet-1k with a timm teacher's influence scores, then distil a timm student on the kept rows.

One node, 8 GPUs (the teacher pass is sharded over the 8 processes, then each process trains on its
shard of the kept rows):

    accelerate launch --multi_gpu --num_processes 8 recipes/distill_imagenet.py \
        --dataset ILSVRC/imagenet-1k --teacher resnet50.a1_in1k --student resnet18 \
        --prune_method if-beta --prune_ratio 0.3 --num_train_epochs 100 --bf16 --output_dir out/in1k-r0.3

Several nodes (run on each node, with its --machine_rank; 2 nodes x 8 GPUs shown; the teacher-pass cache
must be a folder every node sees):

    accelerate launch --multi_gpu --num_machines 2 --num_processes 16 --machine_rank $RANK \
        --main_process_ip $MASTER_ADDR --main_process_port 29500 recipes/distill_imagenet.py <same flags> \
        --cache_dir /shared/hf_ifbeta_cache

The learning rate follows the torchvision / timm recipe, 0.1 per 256 images: `--learning_rate 0.1` is the rate
for one process's batch of 256, and the pipeline multiplies it by the number of processes (0.8 for the
2,048-image global batch of 8 GPUs, 1.6 on 16; `--no_scale_lr` turns this off). The policy's inner proxy fit
gets the same global batch and the 100 epochs (`--tie_policy_budget`).

Here, on a CPU and a small local ImageNet-style folder (one sub-folder per class):

    python recipes/distill_imagenet.py --train_dir data/tiny-in/train --eval_dir data/tiny-in/val \
        --teacher <timm name or local-dir:...> --student resnet18 --max_train_samples 512 --num_train_epochs 1

The pruner streams the teacher outputs from disk in chunks (`--stream_chunk_size`), stores features
in float16 (`--features_dtype float16`), fits the proxy head on 32,768 random rows (`--fit_subsample`) and
uses the Kronecker-factored inverse Hessian path automatically at this size (C * (d + 1) = 2.05 M parameters
for ResNet-50). docs/scale.md gives the
measured per-stage costs and the wall-time estimates of each stage.
"""

import sys

from pipeline import parse_args, run

# torchvision / timm ResNet recipe: SGD nesterov momentum 0.9, lr 0.1 per 256 images (one process's batch; the
# pipeline scales it with the processes), weight decay 1e-4, cosine schedule with warm-up; bf16 autocast; 8
# decoding workers per GPU, kept between epochs.
IMAGENET_DEFAULTS = dict(
    output_dir="out/distill_imagenet", dataset="ILSVRC/imagenet-1k", eval_split="validation", image_column="image",
    teacher="resnet50.a1_in1k", student="resnet18", learning_rate=0.1, weight_decay=1e-4, optim="sgd",
    optim_args="momentum=0.9,nesterov=True", lr_scheduler_type="cosine", warmup_steps=0.02, num_train_epochs=100,
    per_device_train_batch_size=256, per_device_eval_batch_size=256, eval_strategy="epoch", save_strategy="epoch",
    save_total_limit=2, logging_steps=100, report_to="none", dataloader_num_workers=8,
    dataloader_persistent_workers=True,
)
# Pruner settings for 1.28 M rows x 2,048-d features x 1,000 classes: without the fit subsample the fit and
# every CG iteration stream all 1.15 M training rows from disk.
IMAGENET_PRUNER_DEFAULTS = dict(features_dtype="float16", batch_size=256, num_workers=8, fit_subsample=32_768)


def main(argv=None):
    return run(*parse_args(argv, pruner_defaults=IMAGENET_PRUNER_DEFAULTS, **IMAGENET_DEFAULTS))


if __name__ == "__main__":
    main(sys.argv[1:])
