"""One of two pruning jobs racing on one cache, for tests/test_reliability.py.

Run with `HF_HOME` set: `python tests/scripts/prune_race.py --ready FILE --go FILE --out FILE`. The job
builds the test's tiny dataset and teacher, touches `--ready`, waits for `--go` (so that both jobs reach
the teacher pass together), prunes with the default cache (`$HF_HOME/hf_ifbeta`) and writes the kept
indices, its number of teacher forwards and the cache folder to `--out`. Each forward sleeps a little,
so that the pass lasts long enough for the other job to arrive while it runs.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for factories

from factories import tiny_image_dataset  # noqa: E402

NUM_ROWS = 96
SETTINGS = dict(method="el2n", batch_size=16, chunk_size=32, seed=0)  # 3 chunks of 2 batches
RATIO = 0.5


def make_dataset():
    return tiny_image_dataset(n=NUM_ROWS)


def make_teacher():
    import timm

    import hf_ifbeta  # noqa: F401  (registers the CIFAR ResNets)

    torch.manual_seed(0)
    return timm.create_model("cifar10_resnet20", num_classes=4, pretrained_cfg_overlay=dict(input_size=(3, 16, 16))).eval()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ready", required=True)
    parser.add_argument("--go", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--forward-sleep", type=float, default=0.3)
    args = parser.parse_args()

    from hf_ifbeta import DatasetPruner

    torch.set_num_threads(1)
    dataset = make_dataset()
    teacher = make_teacher()
    calls = {"forward": 0}
    forward_features = teacher.forward_features

    def slow_forward(x):
        calls["forward"] += 1
        time.sleep(args.forward_sleep)
        return forward_features(x)

    teacher.forward_features = slow_forward
    pruner = DatasetPruner(teacher, **SETTINGS)
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.01)
    pruner.prune(dataset, ratio=RATIO)
    result = pruner.last_result
    Path(args.out).write_text(
        json.dumps(
            {
                "indices": result.indices.tolist(),
                "forward_calls": calls["forward"],
                "cache": result.provenance["teacher_outputs_dir"],
            }
        )
    )


if __name__ == "__main__":
    main()
