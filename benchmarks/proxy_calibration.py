"""Does the budget-limited proxy rank Beta policies as real students do? (calibration of the inner budget)

IF-Beta picks (a, b) by the validation KD loss of a linear proxy head trained from scratch on the kept
rows for a limited budget (`PolicyObjective`). The real test is whether that loss orders policies the
way ResNet-20 students distilled from ResNet-56 order them. The real accuracies below are the method's
early measurements (`REAL`: CIFAR-10, 5-epoch students, one seed each except where two are given, then
the mean is used).

For every real cell the proxy's validation loss is computed on the policy's *discrete* subsets
(`BetaPolicy.select`, top-k = the top `class_budgets` rows of each class) over several seeds; seed s
fixes the stratified training subsample, the 2,000-row validation subsample (both drawn as
`learn_beta_policy(seed=s)` draws them) and the selection. Budget variants:

- `sub4k_ie{E}`: the 4,000-row subsample of `learn_beta_policy`, `inner_epochs=E` for every cell
  (T = E * m_sub / 128 full-batch steps; E = 15 is the PrunerConfig default);
- `sub4k_student`: `inner_epochs` = the real student's epochs (5 or 15) of each cell;
- `sub4k_student_fullsteps`: the step count of the full-data student, E * m / 128 with m the rows kept
  from all 50,000, emulated as `inner_epochs = E * 50000 / 4000`;
- `sub4k_converged`: 5,000 steps (the loss no longer moves at 4 significant digits, checked);
- `full_student`: all 45,000 non-validation rows (no subsample), `inner_epochs` = the student's epochs.

Per variant: Spearman rank correlation of (-proxy loss) with real accuracy within each real list
(+1 = the proxy orders the policies as the students do), the share of within-list pairs ordered
alike, and the two orderings that matter (random vs top-k at 5 epochs, Beta(2,1) vs Beta(1,2) at 15).
Then `learn_beta_policy` with the best-calibrated budget at ratios 0.3 / 0.5 / 0.7 (seed 0).

    python benchmarks/proxy_calibration.py [--seeds 5] [--output benchmarks/results/proxy_calibration.json]

Uses the cached teacher pass (refuses to start a 50,000-row teacher pass unless --allow_teacher_pass).
Everything runs on one CPU thread.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_ifbeta import DatasetPruner  # noqa: E402
from hf_ifbeta.features import default_cache_dir  # noqa: E402
from hf_ifbeta.models import load_model  # noqa: E402
from hf_ifbeta.config import PolicyArguments  # noqa: E402
from hf_ifbeta.policy import BetaPolicy, PolicyObjective, rank_positions  # noqa: E402
from hf_ifbeta.policy_learning import learn_beta_policy  # noqa: E402
from hf_ifbeta.selection import class_budgets, stratified_subsample  # noqa: E402  (as learn_beta_policy draws)
from hf_ifbeta.pruner import to_jsonable  # noqa: E402

SHARED = Path(os.environ.get("HF_IFBETA_SHARED", ROOT.parent / "shared"))
N_FULL = 50_000  # rows the real students' selection runs over (the whole CIFAR-10 training split)
SUBSAMPLE = PolicyArguments.subsample  # learn_beta_policy / PrunerConfig.policy_subsample default
VAL_SUBSAMPLE = PolicyArguments.val_subsample
BATCH = 128  # the student's batch: turns epochs into steps
CONVERGED_STEPS = 5_000

# name -> (a, b); None = deterministic top of each class
POLICIES = {
    "random": (1.0, 1.0),
    "beta(8,1)": (8.0, 1.0),
    "top-k": None,
    "beta(1,2)": (1.0, 2.0),
    "beta(2,2)": (2.0, 2.0),
    "beta(1,4)": (1.0, 4.0),
    "beta(2,1)": (2.0, 1.0),
}
# Real ResNet-20 test top-1 (%) of the method's early measurements; two seeds -> their mean.
REAL = [
    {"list": "E5_r0.5", "epochs": 5, "ratio": 0.5, "acc": {"random": 75.4, "beta(8,1)": 74.4, "top-k": 74.1}},
    {
        "list": "E5_r0.7",
        "epochs": 5,
        "ratio": 0.7,
        "acc": {
            "random": 67.7, "beta(1,2)": 67.2, "beta(2,2)": 66.8, "beta(1,4)": 65.5, "beta(8,1)": 62.6, "top-k": 61.9,
        },  # fmt: skip
    },
    {
        "list": "E15_r0.7",
        "epochs": 15,
        "ratio": 0.7,
        "acc": {"beta(2,1)": (80.6 + 80.3) / 2, "random": (80.4 + 79.8) / 2, "beta(1,2)": 79.4},
        "note": "beta(2,1) 80.6 / 80.3 and random 80.4 / 79.8 on seeds 0 / 1, beta(1,2) 79.4 (seed 0); our own "
        "sweep (bf16 student, benchmarks/results/kd_sweep_cpu.jsonl) has random seed 0 at 81.13, which would put "
        "random first",
    },
]
# Key orderings: (list, better, worse) as the real students have them.
KEY_PAIRS = [("E5_r0.5", "random", "top-k"), ("E5_r0.7", "random", "top-k"), ("E15_r0.7", "beta(2,1)", "beta(1,2)")]


def variants() -> List[Dict]:
    """Budget variants: subsample rows (None = all) and inner epochs as a function of the student's epochs E."""

    def fixed(e):
        return lambda E, r: e

    def converged(E, r):  # inner_epochs such that ceil(ie * m_sub / 128) = 5,000 steps
        return CONVERGED_STEPS * BATCH / round((1 - r) * SUBSAMPLE)

    out = [{"name": f"sub4k_ie{e:g}", "subsample": SUBSAMPLE, "inner_epochs": fixed(e)} for e in (1, 5, 15, 50)]
    out += [
        {"name": "sub4k_student", "subsample": SUBSAMPLE, "inner_epochs": lambda E, r: E},
        # the full-data student's step count E * m / 128, m kept of 50,000: E * 50,000 / 4,000 epochs here
        {"name": "sub4k_student_fullsteps", "subsample": SUBSAMPLE,
         "inner_epochs": lambda E, r: E * N_FULL / SUBSAMPLE},
        {"name": "sub4k_converged", "subsample": SUBSAMPLE, "inner_epochs": converged},
        {"name": "full_student", "subsample": None, "inner_epochs": lambda E, r: E},
    ]
    return out


def load_inputs(allow_teacher_pass: bool):
    """Teacher outputs + influence scores through the public API (the teacher pass comes from the cache)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from kd_sweep import load_parquet

    # both splits, as the sweep loads them: the same dataset fingerprint, so the same teacher-pass cache
    files = {split: str(SHARED / f"data/cifar10/{split}.parquet") for split in ("train", "test")}
    ds = load_parquet(files)["train"]
    cached = [
        p.parent
        for p in default_cache_dir().glob("*/meta.json")
        if (meta := json.loads(p.read_text())).get("complete")
        and meta.get("dataset_fingerprint") == ds._fingerprint
        and meta.get("teacher") == "cifar10_resnet56"
        # the key of the float32 pass below, without a coverage view: other entries would not serve it
        and not {"precision", "coverage"} & set(meta.get("identity", {}))
    ]
    if not cached and not allow_teacher_pass:
        sys.exit(
            f"No complete float32 ResNet-56 teacher cache for this dataset under {default_cache_dir()}: refusing to run "
            "the 50,000-row teacher pass (pass --allow_teacher_pass to run it)."
        )
    teacher = load_model("cifar10_resnet56", checkpoint=str(SHARED / "models/cifar10_resnet56.pt")).eval()
    t0 = time.perf_counter()
    # float32 teacher pass, as the CIFAR-10 setting of the sweep scored its cells
    result = DatasetPruner(
        teacher, image_column="img", label_column="label", method="influence", teacher_precision="fp32", seed=0
    ).score(ds)
    seconds = time.perf_counter() - t0
    out = result._outputs
    inputs = {
        "features": np.asarray(out.features, dtype=np.float32),
        "logits": np.asarray(out.logits, dtype=np.float32),
        "labels": np.asarray(out.labels, dtype=np.int64),
        "scores": np.asarray(result.scores, dtype=np.float64),
        "val_indices": np.asarray(result.val_indices, dtype=np.int64),
    }
    info = {"score_seconds": seconds, "teacher_outputs_dir": out.meta.get("cache_path"), "config": result.config}
    return inputs, info


class Proxy:
    """The proxy objective of one (seed, subsample, ratio, inner_epochs), built as learn_beta_policy builds it."""

    def __init__(self, inputs, u, seed: int, subsample: Optional[int], ratio: float, inner_epochs: float):
        labels, val_indices = inputs["labels"], inputs["val_indices"]
        is_val = np.zeros(labels.size, dtype=bool)
        is_val[val_indices] = True
        rng = np.random.default_rng(seed)  # the same draws, in the same order, as learn_beta_policy(seed=seed)
        train = stratified_subsample(np.flatnonzero(~is_val), labels, subsample, rng)
        val = stratified_subsample(np.sort(val_indices), labels, VAL_SUBSAMPLE, rng)
        f, z = inputs["features"], inputs["logits"]
        self.objective = PolicyObjective(
            f[train], z[train], labels[train], u[train], ratio, f[val], z[val], labels[val], inner_epochs=inner_epochs
        )
        self.ratio, self.seed = ratio, seed

    def rows(self, policy: str) -> np.ndarray:
        obj = self.objective
        if POLICIES[policy] is None:  # top-k: the highest rank positions of each class, class budgets kept
            budgets = class_budgets(obj.labels, obj.m)
            kept = []
            for c, k in enumerate(budgets):
                members = np.flatnonzero(obj.labels == c)
                kept.append(members[np.argsort(-obj.u[members], kind="stable")[:k]])
            return np.sort(np.concatenate(kept))
        a, b = POLICIES[policy]
        return BetaPolicy(a, b).select(obj.u, self.ratio, obj.labels, seed=self.seed)

    def evaluate(self, policy: str) -> Dict[str, float]:
        """Validation KD loss and top-1 (vs the labels) of the head trained on the policy's discrete subset."""
        obj = self.objective
        rows = self.rows(policy)
        with torch.no_grad():
            w, _ = obj.inner_fit(torch.ones(rows.size, dtype=obj.dtype), rows=rows)
            loss = float(obj.validation_loss(w)[0])
            top1 = float(((w @ obj.xt_val).argmax(0) == obj.onehot_val.argmax(0)).double().mean())
        return {"loss": loss, "top1": top1, "mean_u": float(obj.u[rows].mean())}


def _spearman(x, y) -> Optional[float]:
    """Spearman's rho; None where one side is constant (e.g. equal proxy top-1 on 2,000 rows)."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def rank_agreement(proxy_loss: Dict[str, float], acc: Dict[str, float]) -> Dict[str, float]:
    """Spearman of (-loss, accuracy) and the share of pairs ordered alike (+1 / 1.0 = the students' order)."""
    names = list(acc)
    rho = _spearman([-proxy_loss[k] for k in names], [acc[k] for k in names])
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    alike = [
        np.sign(proxy_loss[names[j]] - proxy_loss[names[i]]) == np.sign(acc[names[i]] - acc[names[j]]) for i, j in pairs
    ]
    return {"spearman": rho, "pairs_alike": int(sum(alike)), "pairs": len(pairs)}


def calibrate(inputs, u, seeds: List[int], log=print) -> List[Dict]:
    results = []
    for variant in variants():
        t0 = time.perf_counter()
        cells = {}  # (list, policy) -> per-seed evaluations
        for spec in REAL:
            ie = variant["inner_epochs"](spec["epochs"], spec["ratio"])
            for seed in seeds:
                proxy = Proxy(inputs, u, seed, variant["subsample"], spec["ratio"], ie)
                for policy in spec["acc"]:
                    cells.setdefault((spec["list"], policy), []).append(proxy.evaluate(policy))
                steps, m = proxy.objective.num_steps, proxy.objective.m
            log(f"{variant['name']:24s} {spec['list']}: inner_epochs {ie:g}, {steps} steps on {m} kept rows")
        lists, alike, total, rhos = {}, 0, 0, []
        for spec in REAL:
            per_policy = {}
            for policy in spec["acc"]:
                evals = cells[(spec["list"], policy)]
                loss = np.array([e["loss"] for e in evals])
                per_policy[policy] = {
                    "loss_mean": float(loss.mean()),
                    "loss_std": float(loss.std(ddof=1)) if loss.size > 1 else 0.0,
                    "top1_mean": float(np.mean([e["top1"] for e in evals])),
                    "mean_u_kept": float(np.mean([e["mean_u"] for e in evals])),  # 0.5 = no lean, 1 = top
                    "losses": loss.tolist(),
                    "real_acc": spec["acc"][policy],
                }
            agreement = rank_agreement({k: v["loss_mean"] for k, v in per_policy.items()}, spec["acc"])
            agreement_top1 = rank_agreement({k: -v["top1_mean"] for k, v in per_policy.items()}, spec["acc"])
            # does the proxy simply reward the lean towards the top? Spearman(-loss, mean rank of the kept rows)
            stats = per_policy.values()
            lean = _spearman([-v["loss_mean"] for v in stats], [v["mean_u_kept"] for v in stats])
            lists[spec["list"]] = {
                "inner_epochs": variant["inner_epochs"](spec["epochs"], spec["ratio"]),
                "policies": per_policy,
                **agreement,
                "spearman_top1": agreement_top1["spearman"],
                "spearman_with_lean": lean,
            }
            alike, total = alike + agreement["pairs_alike"], total + agreement["pairs"]
            rhos.append(agreement["spearman"])
        key = {}
        for name, better, worse in KEY_PAIRS:
            policies = lists[name]["policies"]
            diff = np.array(policies[worse]["losses"]) - np.array(policies[better]["losses"])
            key[f"{name}: {better} < {worse}"] = {  # paired over seeds; > 0 = the proxy agrees with the students
                "loss_diff_mean": float(diff.mean()),
                "loss_diff_se": float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0,
                "seeds_agreeing": int((diff > 0).sum()),
            }
        results.append({
            "variant": variant["name"],
            "subsample": variant["subsample"],
            "lists": lists,
            "spearman_mean": float(np.mean(rhos)),
            "pairs_alike": alike,
            "pairs": total,
            "key_pairs": key,
            "seconds": time.perf_counter() - t0,
        })  # fmt: skip
        agreeing = [k["seeds_agreeing"] for k in key.values()]
        log(f"{variant['name']:24s} spearman {[round(r, 2) for r in rhos]} mean {np.mean(rhos):+.2f}, pairs alike "
            f"{alike}/{total}, key {agreeing}/{len(seeds)} ({results[-1]['seconds']:.0f} s)")  # fmt: skip
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="selection / subsample seeds per cell")
    parser.add_argument("--learn_ratios", type=float, nargs="*", default=[0.3, 0.5, 0.7])
    parser.add_argument("--learn_variant", default=None, help="budget variant for learn_beta_policy (default: best)")
    parser.add_argument("--student_epochs", type=int, default=15, help="student epochs the learned policies serve")
    parser.add_argument("--allow_teacher_pass", action="store_true")
    parser.add_argument("--output", default=str(ROOT / "benchmarks/results/proxy_calibration.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the machine is shared; the inner ops are small

    inputs, load_info = load_inputs(args.allow_teacher_pass)
    print(f"scores in {load_info['score_seconds']:.1f} s from {load_info['teacher_outputs_dir']}", flush=True)
    u = rank_positions(inputs["scores"], inputs["labels"])  # class-wise, as the if-beta method ranks
    seeds = list(range(args.seeds))
    results = calibrate(inputs, u, seeds, log=lambda s: print(s, flush=True))

    # Best budget: most within-list pairs ordered as the students, then the highest mean Spearman; among ties
    # the current default (inner_epochs 15 on 4,000 rows), then the cheapest.
    def calibration(r):
        return r["pairs_alike"], round(r["spearman_mean"], 6), r["variant"] == "sub4k_ie15", -r["seconds"]

    best = max(results, key=calibration)
    chosen = next(v for v in variants() if v["name"] == (args.learn_variant or best["variant"]))
    learned = []
    for ratio in args.learn_ratios:
        ie = chosen["inner_epochs"](args.student_epochs, ratio)
        t0 = time.perf_counter()
        # the full box (max_ab 50), the learner's default when this calibration was recorded
        args = PolicyArguments(inner_epochs=ie, subsample=chosen["subsample"], num_threads=1, max_ab=50.0)
        res = learn_beta_policy(
            inputs["features"], inputs["logits"], inputs["labels"], u, ratio, inputs["val_indices"], policy_args=args,
            seed=0,
        )  # fmt: skip
        learned.append({
            "ratio": ratio,
            "inner_epochs": ie,
            "subsample": chosen["subsample"],
            "learned_a": res.info["learned_a"],
            "learned_b": res.info["learned_b"],
            "policy": res.policy.to_dict(),
            "fell_back_to_uniform": res.fell_back_to_uniform,
            "val_loss_learned": res.val_loss_learned,
            "val_loss_uniform": res.val_loss_uniform,
            "inner_steps": res.info["inner_steps"],
            "seconds": time.perf_counter() - t0,
        })  # fmt: skip
        print(f"learn_beta_policy ratio {ratio}: learned ({res.info['learned_a']:.3g}, {res.info['learned_b']:.3g}) -> "
              f"{res.policy}, fell back {res.fell_back_to_uniform}, discrete {res.val_loss_learned:.5f} vs uniform "
              f"{res.val_loss_uniform:.5f} ({learned[-1]['seconds']:.0f} s)", flush=True)  # fmt: skip

    report = {
        "protocol": __doc__.split("\n\n")[0],
        "real": REAL,
        "seeds": seeds,
        "policies": {k: (list(v) if v else "top-k") for k, v in POLICIES.items()},
        "inputs": {k: v for k, v in load_info.items() if k != "config"},
        "pruner_config": load_info["config"],
        "variants": results,
        "best_variant": best["variant"],
        "learn_variant": chosen["name"],
        "learn_student_epochs": args.student_epochs,
        "learned": learned,
        "threads": 1,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(to_jsonable(report), indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
