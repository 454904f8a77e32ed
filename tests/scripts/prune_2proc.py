"""Selection in two processes, for tests/test_pruner.py and scripts/gpu_smoke.py.

    torchrun --standalone --nproc_per_node 2 tests/scripts/prune_2proc.py --out DIR [--device cuda:0]

Both processes form a gloo group (`PartialState(cpu=True)`) and prune a tiny seeded dataset with if-beta; every
stage runs on `--device` (default: the rule's, CPU here). Then process 1 reverses its copy of the scores, as a
device that rounds differently would shift them, and both select again: from the pruner's result (which holds
the accelerator) and from a result loaded from disk (synchronised through the `torch.distributed` group). Each
process writes DIR/rank{r}.json with what it kept, and process 1 also the rows it would keep on its own.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for factories

from factories import tiny_image_dataset  # noqa: E402


def make_teacher(seed: int = 0) -> torch.nn.Module:
    import timm

    import hf_ifbeta  # noqa: F401  (registers the CIFAR ResNets)

    torch.manual_seed(seed)
    return timm.create_model("cifar10_resnet20", num_classes=4, pretrained_cfg_overlay=dict(input_size=(3, 16, 16)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default=None)
    parser.add_argument("--rows", type=int, default=120)
    args = parser.parse_args()

    from accelerate import PartialState

    from hf_ifbeta import DatasetPruner, PruningResult
    from hf_ifbeta.scorers import get_method

    state = PartialState(cpu=True)
    out = Path(args.out)
    ds = tiny_image_dataset(n=args.rows)
    pruner = DatasetPruner(
        make_teacher(), accelerator=state, device=args.device, method="if-beta", cache_dir=str(out / "cache"),
        batch_size=32, num_workers=0, policy_subsample=None, outer_steps=2,
    )  # fmt: skip
    pruned = pruner.prune(ds, ratio=0.5)
    result = pruner.last_result
    record = {
        "rank": state.process_index,
        "world_size": state.num_processes,
        "device": result.provenance["device"],
        "pruned_row_ids": list(pruned["row_id"]),
        "prune": result.indices.tolist(),
        "policy": {k: result.policy[k] for k in ("a", "b")},
    }
    if state.is_main_process:
        result.save(out / "result")
    state.wait_for_everyone()

    if state.process_index == 1:
        result.scores = result.scores[::-1].copy()
        alone = get_method("if-beta").select(
            result._teacher_outputs(), result.scores, 0.5, result._scoring_context(), result.config["seed"]
        )
        record["alone"] = np.asarray(alone.indices).tolist()
    record["reselect"] = result.select_indices(0.5).tolist()

    loaded = PruningResult.load(out / "result")  # no accelerator: the torch.distributed group
    if state.process_index == 1:
        loaded.scores = loaded.scores[::-1].copy()
    record["loaded"] = list(loaded.select(ds, ratio=0.5, seed=1)["row_id"])
    record["loaded_policy"] = {k: loaded.policy[k] for k in ("a", "b")}
    (out / f"rank{state.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
