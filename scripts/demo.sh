#!/usr/bin/env bash
# The main job on the CIFAR-10 copy in ../shared: prune half the training rows with IF-Beta (ResNet-56
# teacher), distil a ResNet-20 from scratch on the rest for a few epochs, print student vs teacher accuracy
# and the path of the pruning report (out/demo/pruning/report.html: open it in a browser).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SHARED=${HF_IFBETA_SHARED:-../shared}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# bfloat16 autocast on the GPU, or on the CPU when there is none (1.7x faster KD steps on AVX512-BF16 CPUs).
DEVICE_FLAGS="--bf16"
.venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || DEVICE_FLAGS="--bf16 --use_cpu"
.venv/bin/python recipes/distill_cifar.py \
  --train_file "$SHARED/data/cifar10/train.parquet" --test_file "$SHARED/data/cifar10/test.parquet" \
  --teacher cifar10_resnet56 --teacher_checkpoint "$SHARED/models/cifar10_resnet56.pt" \
  --student cifar10_resnet20 --prune_method if-beta --prune_ratio 0.5 \
  --num_train_epochs "${EPOCHS:-4}" $DEVICE_FLAGS --output_dir out/demo --report "$@"
