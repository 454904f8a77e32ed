"""How many rows do two methods' students share? The kept rows of one method's cells against another's.

For every CIFAR-10 cell (ratio, seed) of `--method` in `benchmarks/results/kd_sweep_<profile>.jsonl`, the kept
rows of it and of `--base` at the same ratio and seed are rebuilt as the sweep built them (`kd_sweep.Pruning`),
and the share of the base's kept rows that the method also keeps is written to
`benchmarks/results/subset_overlap_<profile>.json` (under the pair's key, other pairs kept). Where that share is
near 1 the two methods' students differ by the training run, not by their data.

    python benchmarks/subset_overlap.py --method 'if-beta@policy_learned_by="stage2x2"' --base if-beta
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kd_sweep  # noqa: E402

from hf_ifbeta.files import atomic_write  # noqa: E402


def overlaps(pruning, method: str, base: str, cells) -> dict:
    out = {}
    for ratio, seed in cells:
        t0 = time.perf_counter()
        mine = pruning.select(method, ratio, seed)[0]
        theirs = pruning.select(base, ratio, seed)[0]
        share = np.intersect1d(mine, theirs).size / len(theirs)
        out[f"{ratio}|{seed}"] = {"kept": len(theirs), "shared": float(share), "seconds": time.perf_counter() - t0}
        print(f"ratio {ratio} seed {seed}: {100 * share:.2f} % of {base}'s {len(theirs)} rows shared", flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, help="a method label of the sweep")
    parser.add_argument("--base", default="if-beta", help="the label it is compared with")
    parser.add_argument("--profile", default="cpu", choices=sorted(kd_sweep.PROFILES))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = kd_sweep.read_results(kd_sweep.RESULTS / f"kd_sweep_{args.profile}.jsonl")
    cells = sorted({(r["ratio"], r["seed"]) for r in rows
                    if r.get("setting", "cifar10") == "cifar10" and r["method"] == args.method})  # fmt: skip
    if not cells:
        sys.exit(f"No CIFAR-10 cells of {args.method!r} in kd_sweep_{args.profile}.jsonl.")
    pruning = kd_sweep.Context().pruning(kd_sweep.SETTINGS["cifar10"])
    path = kd_sweep.RESULTS / f"subset_overlap_{args.profile}.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved[f"{args.method} vs {args.base}"] = overlaps(pruning, args.method, args.base, cells)
    atomic_write(path, lambda f: f.write((json.dumps(saved, indent=1) + "\n").encode()))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
