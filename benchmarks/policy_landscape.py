"""Where does each outer objective put the Beta policy? The landscape over a wide box, per ratio.

`learn_beta_policy` minimises the proxy's validation KD loss over (log a, log b). This script evaluates
candidate outer objectives on the same problem `learn_beta_policy` builds (the stratified 4,000-row
training subsample and 2,000-row validation subsample of CIFAR-10, seed 0, the student's 15 epochs as
the inner budget) over a log grid a, b in {0.25, ..., 16}, and runs the outer Adam loop on each from the
uniform policy with the box [0.25, 16], so that an answer on a bound is the objective's, not the box's:

- `default`: today's objective, the proxy on the teacher's standardised features;
- `weak16`: the same proxy on the features randomly projected to 16 dimensions (it can no longer
  reproduce the teacher, so a subset that covers the data badly costs it validation loss);
- `mix@L`: `L * default / default(uniform) + (1 - L) * weak16 / weak16(uniform)`, each term relative to
  the uniform policy's loss at that ratio (a constant per ratio, so the gradients mix the same way).

Printed per ratio: the grid argmin and the learned (a, b) per objective, and whether they sit on a bound.
Written to `benchmarks/results/policy_landscape_<profile>.json`. `--tie_break` reads that file only and
prints the grid argmin of `loss / loss(uniform) - eps * entropy(Beta(a, b))` for a few eps: a maximum-entropy
tie-break between policies the objective finds (almost) equally good.

    python benchmarks/policy_landscape.py [--threads 1]
    python benchmarks/policy_landscape.py --tie_break

`--knn` evaluates the k-NN objectives of `proxy_vs_students.py` (`knn_train`: the kept rows' teacher soft labels
standing in for a fixed sample of the training split, in the penultimate features; `knn_train_2x2`: the same in the
teacher's middle stage), today's objective on a hard subset and their mixes on the same grid, on the hard subsets the
sweep would keep (`BetaPolicy(a, b).select` over all 50,000 rows' class-wise influence ranks, seed 0), under `knn`
in the JSON.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import kd_sweep  # noqa: E402
from proxy_calibration import load_inputs  # noqa: E402
from proxy_vs_students import KnnObjective, load_stages  # noqa: E402
from proxy_vs_students import OuterObjective as ProxyObjective  # noqa: E402  (the proxy on a hard subset)

from hf_ifbeta.config import PrunerConfig  # noqa: E402
from hf_ifbeta.policy import BetaPolicy, PolicyObjective, beta_entropy, rank_positions  # noqa: E402
from hf_ifbeta.policy_learning import (  # noqa: E402
    OuterObjective, bounds_reached, coverage_features, learn_beta_policy, standardised,
)
from hf_ifbeta.selection import stratified_subsample  # noqa: E402
from hf_ifbeta.pruner import to_jsonable  # noqa: E402

GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
BOX = (0.25, 16.0)
MIXES = (0.25, 0.5)
RATIOS = (0.3, 0.5, 0.7)
GRID2 = [(a, b) for a in GRID for b in GRID]


def mix_weights(name: str, coverage: str = "weak16"):
    """`mix@L` -> [(L, "default"), (1 - L, coverage)]."""
    lam = float(name.split("@")[1])
    return [(lam, "default"), (1.0 - lam, coverage)]


def learn(objective, steps: int = 40, lr: float = 0.2):
    """The outer loop of `learn_beta_policy` (Adam on log a, log b from the uniform policy) in the box BOX."""
    theta, m1, m2 = np.zeros(2), np.zeros(2), np.zeros(2)
    lo, hi = math.log(BOX[0]), math.log(BOX[1])
    history = []
    for step in range(steps):
        loss, grad = objective.hypergradient(theta)
        history.append((float(loss), float(math.exp(theta[0])), float(math.exp(theta[1]))))
        m1 = 0.9 * m1 + 0.1 * grad
        m2 = 0.999 * m2 + 0.001 * grad**2
        theta = theta - lr * (m1 / (1 - 0.9 ** (step + 1))) / (np.sqrt(m2 / (1 - 0.999 ** (step + 1))) + 1e-8)
        theta = np.clip(theta, lo, hi)
    loss, a, b = min(history)
    on_bound = bool(bounds_reached((a, b), (lo, hi)))
    return {"a": a, "b": b, "loss": loss, "on_bound": on_bound}


TIE_BREAKS = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def tie_break_argmin(grid: dict, eps: float):
    """Grid argmin of `loss / loss(uniform) - eps * H(Beta(a, b))`; `grid` maps "a,b" to the objective's loss."""
    uniform = grid["1,1"]
    scored = {}
    for key, loss in grid.items():
        a, b = (float(x) for x in key.split(","))
        scored[(a, b)] = loss / uniform - eps * beta_entropy(np.log([a, b]))[0]
    return min(scored, key=scored.get)


def print_tie_breaks(path: Path) -> None:
    saved = json.loads(path.read_text())
    print("| objective | eps | " + " | ".join(f"r {r}" for r in saved["ratios"]) + " |")
    print("| --- | --- |" + " --- |" * len(saved["ratios"]))
    for name in next(iter(saved["ratios"].values())):
        for eps in TIE_BREAKS:
            cells = []
            for row in saved["ratios"].values():
                a, b = tie_break_argmin(row[name]["grid"], eps)
                cells.append(f"({a:g}, {b:g})" + (" bound" if a in BOX or b in BOX else ""))
            print(f"| {name} | {eps:g} | " + " | ".join(cells) + " |")


def run_product(inputs, labels, u, val_indices, fields, path: Path, coverage=None, seeds=(0,)) -> None:
    """`learn_beta_policy` as the pruner calls it, with `PrunerConfig(**fields)`'s loss and policy arguments, at
    every ratio and seed (the pruner learns with the selection's seed); `coverage` = (name, view) gives the
    "kd+coverage" objective a fixed view. Seed 0 is stored under the ratio, every seed under `by_seed`."""
    config = PrunerConfig(**{k: json.loads(v) for k, v in (f.split("=", 1) for f in fields)})
    stages = config.stages()
    saved = json.loads(path.read_text())
    key = " ".join(sorted(fields)) + (f" coverage={coverage[0]}" if coverage else "")
    runs = saved.setdefault("product", {}).setdefault(key, {})
    for ratio in RATIOS:
        for seed in seeds:
            result = learn_beta_policy(inputs["features"], inputs["logits"], labels, u, ratio, val_indices,
                                       loss=stages.loss, policy_args=stages.policy, seed=seed,
                                       coverage=coverage[1] if coverage else None)  # fmt: skip
            a, b = result.info["learned_a"], result.info["learned_b"]
            record = {"a": a, "b": b, "on_bound": bool(result.info["on_bound"]) and not result.fell_back_to_uniform,
                      "fell_back_to_uniform": result.fell_back_to_uniform, "val_loss_learned": result.val_loss_learned,
                      "val_loss_uniform": result.val_loss_uniform}  # fmt: skip
            if seed == 0:
                runs[str(ratio)] = record
            runs.setdefault("by_seed", {}).setdefault(str(ratio), {})[str(seed)] = record
            print(f"ratio {ratio} seed {seed} {key}: learned Beta({a:.2f}, {b:.2f})"
                  f"{' (bound)' if record['on_bound'] else ''}"
                  f"{', fell back to uniform' if result.fell_back_to_uniform else ''}", flush=True)  # fmt: skip
            path.write_text(json.dumps(to_jsonable(saved), indent=1) + "\n")


KNN = ("knn_train", "knn_train_2x2")
KNN_MIXES = {  # name -> [(weight, term)], each term relative to the uniform policy's loss
    "knn_train+knn_train_2x2": [(0.5, "knn_train"), (0.5, "knn_train_2x2")],
    **{f"mix@{lam}+knn_train_2x2": mix_weights(f"mix@{lam}", "knn_train_2x2") for lam in (0.5, 0.75)},
}


def run_knn(inputs, u: np.ndarray, path: Path, epochs: int) -> None:
    """The k-NN objectives, today's (`default`: the proxy trained on the kept rows, judged on V, as
    `proxy_vs_students.py` scores a cell) and their mixes on the grid of hard subsets, with the grid argmin per
    ratio; saved after every ratio."""
    inputs = {**inputs, "stages": load_stages(inputs)}
    knn = {name: KnnObjective(inputs, name) for name in KNN}  # the same at every ratio
    saved = json.loads(path.read_text()) if path.exists() else {}
    runs = saved.setdefault("knn", {})
    for ratio in RATIOS:
        t0 = time.perf_counter()
        objectives = {**knn, "default": ProxyObjective(inputs, "default", ratio, epochs)}
        grids = {name: {} for name in objectives}
        for ab in GRID2:
            kept = BetaPolicy(*ab).select(u, ratio, inputs["labels"], seed=0)
            for name, obj in objectives.items():
                grids[name][ab] = obj(kept)
        for name, parts in KNN_MIXES.items():
            grids[name] = {ab: sum(w * grids[k][ab] / grids[k][(1.0, 1.0)] for w, k in parts) for ab in GRID2}
        row = {}
        for name, grid in grids.items():
            best = min(grid, key=grid.get)
            row[name] = {"grid_argmin": best, "grid_argmin_on_bound": best[0] in BOX or best[1] in BOX,
                         "grid": {f"{a:g},{b:g}": v for (a, b), v in grid.items()}}  # fmt: skip
            print(f"ratio {ratio} {name:23s} grid argmin Beta({best[0]:g}, {best[1]:g})"
                  f"{' (bound)' if row[name]['grid_argmin_on_bound'] else ''}; loss {grid[best]:.5f}, "
                  f"uniform {grid[(1.0, 1.0)]:.5f}, Beta(2, 0.5) {grid[(2.0, 0.5)]:.5f}", flush=True)  # fmt: skip
        runs[str(ratio)] = row
        path.write_text(json.dumps(to_jsonable(saved), indent=1) + "\n")
        print(f"ratio {ratio}: {time.perf_counter() - t0:.0f} s", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=sorted(kd_sweep.PROFILES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tie_break", action="store_true", help="argmins with an entropy tie-break, from the saved grid")
    parser.add_argument(
        "--product", nargs="*", metavar="FIELD=VALUE", default=None,
        help="run learn_beta_policy itself with these PrunerConfig fields at every ratio; adds `product` to the JSON",
    )
    parser.add_argument(
        "--coverage", default="weak16", choices=("weak16", "layer1", "layer2", "layer2_2x2"),
        help="the mixes' coverage term: weak16 (a random projection) or an earlier teacher stage "
        "(benchmarks/stage_features.py); with a stage the results go under `coverage_<stage>` in the JSON",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the --product runs")
    parser.add_argument("--knn", action="store_true", help="the k-NN objectives on the grid of hard subsets")
    parser.add_argument(
        "--learn_tie_break", type=float, default=None, metavar="EPS",
        help="run only the outer loop of the mixes with this entropy tie-break; adds `tie_break_learned` to the JSON",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.tie_break:
        return print_tie_breaks(kd_sweep.RESULTS / f"policy_landscape_{args.profile}.json")
    torch.set_num_threads(args.threads)

    inputs, _ = load_inputs(allow_teacher_pass=False)
    labels, val_indices = inputs["labels"], np.sort(inputs["val_indices"])
    u = rank_positions(inputs["scores"], labels)
    if args.knn:
        return run_knn(inputs, u, kd_sweep.RESULTS / f"policy_landscape_{args.profile}.json",
                       kd_sweep.PROFILES[args.profile]["epochs"])
    rng = np.random.default_rng(0)  # the draws of learn_beta_policy(seed=0)
    is_val = np.zeros(labels.size, dtype=bool)
    is_val[val_indices] = True
    train = stratified_subsample(np.flatnonzero(~is_val), labels, 4_000, rng)
    val = stratified_subsample(val_indices, labels, 2_000, rng)
    features = {"default": inputs["features"]}
    if args.coverage == "weak16":
        features["weak16"] = coverage_features(inputs["features"], 16, seed=0)
    else:
        stage = load_stages(inputs)[args.coverage]
        features[args.coverage] = standardised(stage)
    epochs = kd_sweep.PROFILES[args.profile]["epochs"]

    path = kd_sweep.RESULTS / f"policy_landscape_{args.profile}.json"
    if args.product is not None:
        coverage = None if args.coverage == "weak16" else (args.coverage, features[args.coverage])
        return run_product(inputs, labels, u, val_indices, args.product, path, coverage, args.seeds)
    saved = json.loads(path.read_text()) if path.exists() else {}
    if args.learn_tie_break is not None:
        runs = saved.setdefault("tie_break_learned", {}).setdefault(f"{args.learn_tie_break:g}", {})
        if args.coverage != "weak16":
            runs = runs.setdefault(f"coverage_{args.coverage}", {})
    out = {"protocol": __doc__.split("\n\n")[1], "grid": GRID, "box": BOX, "ratios": {}}
    for ratio in RATIOS:
        t0 = time.perf_counter()
        base = {
            name: PolicyObjective(f[train], inputs["logits"][train], labels[train], u[train], ratio,
                                  f[val], inputs["logits"][val], labels[val], inner_epochs=epochs)  # fmt: skip
            for name, f in features.items()
        }
        objectives = dict(base)
        for lam in MIXES:
            objectives[f"mix@{lam}"] = OuterObjective([(w, base[k]) for w, k in mix_weights(f"mix@{lam}", args.coverage)])
        if args.learn_tie_break is not None:
            for name in ("default" if args.coverage == "weak16" else None, *(f"mix@{lam}" for lam in MIXES)):
                if name is None:  # the default objective has no coverage term: learned once, with weak16
                    continue
                parts = objectives[name].parts if name in objectives and name.startswith("mix") else [(1.0, base[name])]
                learned = learn(OuterObjective([(w, obj) for w, obj, *_ in parts], args.learn_tie_break))
                runs.setdefault(str(ratio), {})[name] = learned
                print(f"ratio {ratio} {name:9s} eps {args.learn_tie_break:g}: learned Beta({learned['a']:.2f}, "
                      f"{learned['b']:.2f}){' (bound)' if learned['on_bound'] else ''}", flush=True)  # fmt: skip
                path.write_text(json.dumps(to_jsonable(saved), indent=1) + "\n")
            continue
        row = {}
        grids = {name: {} for name in base}
        for ab in GRID2:
            for name, obj in base.items():
                grids[name][ab] = obj.loss(np.log(ab))
        for name, obj in objectives.items():
            if name in grids:
                grid = grids[name]
            else:
                grid = {ab: sum(w * grids[k][ab] / grids[k][(1.0, 1.0)] for w, k in mix_weights(name, args.coverage))
                        for ab in GRID2}  # fmt: skip
            best = min(grid, key=grid.get)
            learned = learn(obj)
            row[name] = {
                "grid_argmin": best,
                "grid_argmin_on_bound": best[0] in BOX or best[1] in BOX,
                "grid": {f"{a:g},{b:g}": v for (a, b), v in grid.items()},
                "learned": learned,
            }
            print(f"ratio {ratio} {name:9s} grid argmin Beta({best[0]:g}, {best[1]:g})"
                  f"{' (bound)' if row[name]['grid_argmin_on_bound'] else ''}; learned "
                  f"Beta({learned['a']:.2f}, {learned['b']:.2f}){' (bound)' if learned['on_bound'] else ''}", flush=True)  # fmt: skip
        out["ratios"][str(ratio)] = row
        print(f"ratio {ratio}: {time.perf_counter() - t0:.0f} s", flush=True)
    if args.learn_tie_break is None:  # the other runs' entries (product, tie-breaks, other views) are kept
        if args.coverage == "weak16":
            saved.update(out)
        else:
            saved[f"coverage_{args.coverage}"] = out
        path.write_text(json.dumps(to_jsonable(saved), indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
