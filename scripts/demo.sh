#!/usr/bin/env bash
# The main job on the CIFAR-10 copy in ../shared: prune half the training rows with IF-Beta (ResNet-56
# teacher), distil a ResNet-20 from scratch on the rest for a few epochs, print student vs teacher accuracy
# and the path of the pruning report (out/demo/pruning/report.html: open it in a browser).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SHARED=${HF_IFBETA_SHARED:-../shared}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# bfloat16 autocast where the device computes it natively (a recent GPU; a CPU with AVX512-BF16 or AMX), float32
# elsewhere: an AVX2-only CPU emulates bf16, many times slower than float32.
DEVICE_FLAGS=$(.venv/bin/python -c "
import torch
from hf_ifbeta.features import resolve_precision
device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
print(('--bf16 ' if resolve_precision('auto', device) == 'bf16' else '') + ('--use_cpu' if device.type == 'cpu' else ''))")
echo "device flags: ${DEVICE_FLAGS:-none (float32 on the GPU)}"
.venv/bin/python recipes/distill_cifar.py \
  --train_file "$SHARED/data/cifar10/train.parquet" --test_file "$SHARED/data/cifar10/test.parquet" \
  --teacher cifar10_resnet56 --teacher_checkpoint "$SHARED/models/cifar10_resnet56.pt" \
  --student cifar10_resnet20 --prune_method if-beta --prune_ratio 0.5 \
  --num_train_epochs "${EPOCHS:-4}" $DEVICE_FLAGS --output_dir out/demo --report "$@"
