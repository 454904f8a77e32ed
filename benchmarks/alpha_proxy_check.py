"""Could the proxy learn the student's KD weight alpha per ratio? (part 3 of issue 12, offline)

The outer objective judges a subset by the proxy head's validation KD loss, which itself depends on alpha, so
alpha cannot be chosen by it. A loss that does not depend on alpha is the head's cross-entropy against the
labels on the validation slice V (and its top-1 error there). For random class-stratified subsets of the
training rows at ratios 0.3 / 0.5 / 0.7, the product's proxy (`influence_scores`: the linear head, L-BFGS,
`ProxyLoss(alpha, temperature=4, l2=1e-3)`) is fitted on the kept rows at several alpha, and the head's loss
and error on V are written out. If the alpha they prefer does not move with the ratio, the proxy cannot learn
alpha per ratio, whatever the students want.

Views: the teacher's penultimate features (`layer3`, what the pruner fits on) and the weak middle-stage view
(`layer2_2x2`), both from `benchmarks/cache/stage_features_cifar10.npz` (`stage_features.py`).

    python benchmarks/alpha_proxy_check.py [--seeds 2]

Writes `benchmarks/results/alpha_proxy_check_cpu.json`; one CPU thread, a few minutes.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hf_ifbeta.influence import influence_scores
from hf_ifbeta.losses import ProxyLoss
from hf_ifbeta.selection import num_kept, stratified_subsample

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kd_sweep  # noqa: E402

STAGES = Path(__file__).resolve().parent / "cache" / "stage_features_cifar10.npz"
RATIOS = (0.3, 0.5, 0.7)
ALPHAS = (0.0, 0.5, 0.9, 1.0)
VIEWS = ("layer3", "layer2_2x2")
VAL_ROWS = 5_000


def head_on_val(features, logits, labels, kept, val, alpha: float):
    """The proxy fitted on `kept` at `alpha`; its cross-entropy and top-1 error (%) on `val`."""
    rows = np.concatenate([kept, val])
    out = influence_scores(
        features[rows], logits[rows], labels[rows], np.arange(len(kept), len(rows)),
        proxy_loss=ProxyLoss(alpha=alpha, temperature=4.0, l2=1e-3), hessian="exact",
    )  # fmt: skip
    z = torch.from_numpy(out.head_logits(features[val])).double()
    y = torch.from_numpy(labels[val]).long()
    return float(F.cross_entropy(z, y)), float((z.argmax(1) != y).double().mean() * 100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not STAGES.exists():
        sys.exit(f"{STAGES} is missing: run `python benchmarks/stage_features.py` first.")
    stages = np.load(STAGES)
    labels, logits = stages["labels"].astype(np.int64), stages["logits"].astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(labels))
    val, pool = np.sort(perm[:VAL_ROWS]), perm[VAL_ROWS:]
    cells = []
    for view in VIEWS:
        features = stages[view].astype(np.float32)
        for ratio in RATIOS:
            for seed in range(args.seeds):
                kept = stratified_subsample(pool, labels, num_kept(len(pool), ratio), np.random.default_rng(seed))
                for alpha in ALPHAS:
                    ce, err = head_on_val(features, logits, labels, kept, val, alpha)
                    cells.append({"view": view, "ratio": ratio, "seed": seed, "alpha": alpha, "kept": len(kept),
                                  "val_ce": round(ce, 5), "val_error": round(err, 3)})  # fmt: skip
                    print(cells[-1], flush=True)
    print("\n| view | ratio | " + " | ".join(f"alpha {a}: CE / error" for a in ALPHAS) + " | best alpha by CE |")
    print("| --- | --- |" + " --- |" * (len(ALPHAS) + 1))
    for view in VIEWS:
        for ratio in RATIOS:
            mean = {a: [np.mean([c[k] for c in cells if (c["view"], c["ratio"], c["alpha"]) == (view, ratio, a)])
                        for k in ("val_ce", "val_error")] for a in ALPHAS}  # fmt: skip
            best = min(ALPHAS, key=lambda a: mean[a][0])
            print(f"| {view} | {ratio} | " + " | ".join(f"{mean[a][0]:.4f} / {mean[a][1]:.2f} %" for a in ALPHAS)
                  + f" | {best} |")  # fmt: skip
    path = kd_sweep.RESULTS / "alpha_proxy_check_cpu.json"
    path.write_text(json.dumps({"val_rows": VAL_ROWS, "seeds": args.seeds, "cells": cells}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
