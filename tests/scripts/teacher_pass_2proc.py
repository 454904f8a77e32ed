"""The teacher pass in several processes, for tests/test_features.py.

Run with `accelerate launch --num_processes 2 --cpu tests/scripts/teacher_pass_2proc.py --cache-dir DIR --out DIR`.
Every process computes its chunks (chunk k on process k % 2) and saves what it got to `--out/rank{i}`;
`--fail-after-batches N` makes each process raise on its (N + 1)-th forward, to test resumption.
The synthetic dataset and teacher come from `make_dataset` / `make_teacher`, which the test imports
to compute the single-process reference.
"""

import argparse
import json
import os

import datasets
import numpy as np
import torch
from PIL import Image

NUM_ROWS = 40
IMAGE_SIZE = 32


def make_dataset(num_rows: int = NUM_ROWS, seed: int = 0) -> datasets.Dataset:
    """`num_rows` random RGB images (every 5th one 24 x 24, the rest 32 x 32) with labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(num_rows):
        size = 24 if i % 5 == 4 else IMAGE_SIZE
        images.append(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"img": images, "label": [i % 10 for i in range(num_rows)]}, features=features)


def make_teacher(seed: int = 0) -> torch.nn.Module:
    import timm

    import hf_ifbeta  # noqa: F401  (registers the CIFAR ResNets)

    torch.manual_seed(seed)
    return timm.create_model("cifar10_resnet20", num_classes=10).eval()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--chunk-size", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--fail-after-batches", type=int, default=None)
    parser.add_argument("--per-rank-cache", action="store_true", help="a cache folder per process, as on nodes without a shared disk")
    args = parser.parse_args()

    from accelerate import PartialState

    from hf_ifbeta.features import compute_teacher_outputs

    state = PartialState(cpu=True)
    teacher = make_teacher()
    calls = {"forward": 0}
    forward_features = teacher.forward_features

    def counted_forward(x):
        if args.fail_after_batches is not None and calls["forward"] >= args.fail_after_batches:
            raise RuntimeError(f"injected failure in process {state.process_index}")
        calls["forward"] += 1
        return forward_features(x)

    teacher.forward_features = counted_forward
    outputs = compute_teacher_outputs(
        teacher, make_dataset(), "img", "label", batch_size=args.batch_size, chunk_size=args.chunk_size,
        cache_dir=os.path.join(args.cache_dir, f"rank{state.process_index}") if args.per_rank_cache else args.cache_dir,
        accelerator=state, progress=False,
    )
    out = os.path.join(args.out, f"rank{state.process_index}")
    outputs.save(out)
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump({"forward_calls": calls["forward"], "num_processes": state.num_processes}, f)


if __name__ == "__main__":
    main()
