"""Does the product's stage-view path learn the policies the benchmark's precomputed view learned?

Runs `kd_sweep.Pruning.select` (the sweep's pruning, CIFAR-10, fp32 teacher pass) with
`if-beta@policy_objective="kd+coverage",policy_coverage_view="stage",...` at ratios 0.7 and 0.3, seed 0: the teacher
pass then computes the middle-stage view itself. Compare with `policy_landscape.py --product ... --coverage
layer2_2x2` under `product` in `benchmarks/results/policy_landscape_cpu.json`. Writes
`benchmarks/results/stage_view_check_cpu.json`.

    python benchmarks/stage_view_check.py
"""

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kd_sweep  # noqa: E402

METHOD = ('if-beta@policy_objective="kd+coverage",policy_coverage_view="stage",policy_coverage_weight=0.5,'
          'policy_entropy_weight=0.0003,policy_max_ab=16')  # fmt: skip


def main():
    torch.set_num_threads(1)
    pruning = kd_sweep.Context().pruning(kd_sweep.SETTINGS["cifar10"])
    out = {"method": METHOD, "seed": 0, "ratios": {}}
    for ratio in (0.7, 0.3):
        t0 = time.perf_counter()
        rows, policy, _ = pruning.select(METHOD, ratio, 0)
        out["ratios"][str(ratio)] = {
            "kept": len(rows), "a": policy["a"], "b": policy["b"], "on_bound": policy["on_bound"],
            "fell_back_to_uniform": policy["fell_back_to_uniform"], "box": policy["info"].get("box"),
            "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        print(ratio, out["ratios"][str(ratio)], flush=True)
    path = kd_sweep.RESULTS / "stage_view_check_cpu.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
