"""Which inverse-Hessian solver should `hessian="auto"` pick? Both, side by side, on real teacher outputs.

For each setting of `benchmarks/kd_sweep.py` asked for, the setting's teacher pass (cached on disk, so it
usually costs nothing) gives features, logits and labels; a fixed random subset of `--rows` rows (all rows
when the setting has fewer) is scored by `influence_scores` with the pruner's default proxy loss and
arguments, once with `hessian="exact"` (dense H, Cholesky) and once with `hessian="kfac"` (EK-FAC-
preconditioned conjugate gradients), in the same process one after the other. Measured per solver: the
seconds of the fit and of the solve (`InfluenceOutput.info["timings_s"]`), CG iterations and the final
relative residual; and between the two: Spearman correlation of the scores, and the share of rows the
default top-30 %-per-class keep has in common.

The head has P = C (d + 1) parameters: the dense Hessian costs about n P^2 / 2 multiply-adds to assemble,
a CG iteration about 4 n P, so the ratio of the two grows with P while n scales both; a subset keeps the
exact path affordable on large settings.

    python benchmarks/bench_solvers.py --settings tiny-imagenet cifar10 --rows 20000
    python benchmarks/bench_solvers.py --report          # the table from the JSON only

Results go to `benchmarks/results/solver_choice.json`, one entry per (setting, rows); a rerun skips entries
already there unless `--force`.
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from kd_sweep import SETTINGS, Context  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "solver_choice.json"
KEEP = 0.3  # share of each class's rows the comparison keeps (ratio 0.7, the sweep's most pruned)


def top_per_class(scores: np.ndarray, labels: np.ndarray, keep: float) -> np.ndarray:
    kept = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        kept.append(rows[np.argsort(-scores[rows], kind="stable")[: max(1, round(keep * len(rows)))]])
    return np.concatenate(kept)


def measure(setting_name: str, rows: int, seed: int = 0) -> dict:
    from hf_ifbeta import DatasetPruner
    from hf_ifbeta.influence import influence_scores
    from hf_ifbeta.pruner import validation_split

    setting = SETTINGS[setting_name]
    context = Context()
    train = context.data(setting)[0]
    pruner = DatasetPruner(
        context.teacher(setting), image_column=setting.image_column, label_column=setting.label_column,
        teacher_precision=setting.teacher_precision,
    )  # fmt: skip
    outputs = pruner.teacher_outputs(train)
    labels_all = np.asarray(outputs.labels)
    n_all = len(labels_all)
    subset = np.sort(np.random.default_rng(seed).choice(n_all, size=min(rows, n_all), replace=False))
    features = np.asarray(outputs.features[subset])
    logits, labels = np.asarray(outputs.logits[subset]), labels_all[subset]
    config = pruner.config
    val = validation_split(labels, config.val_fraction, config.val_max_per_class, config.seed)
    record = {
        "setting": setting_name, "rows": len(subset), "rows_in_setting": n_all, "classes": int(logits.shape[1]),
        "features": int(features.shape[1]), "num_params": int(logits.shape[1] * (features.shape[1] + 1)),
        "threads": torch.get_num_threads(), "solvers": {},
    }  # fmt: skip
    scores = {}
    for hessian in ("exact", "kfac"):
        args = dataclasses.replace(pruner.stages.influence, hessian=hessian, seed=config.seed, device="cpu")
        clock = time.perf_counter()
        out = influence_scores(features, logits, labels, val, proxy_loss=pruner.stages.loss, args=args,
                               init_head=outputs.head)  # fmt: skip
        total = time.perf_counter() - clock
        scores[hessian] = out.scores
        info = out.info
        record["solvers"][hessian] = {
            "total_s": total, "timings_s": info["timings_s"], "cg_iterations": info.get("cg_iterations"),
            "residual": info.get("residual"),
        }  # fmt: skip
        print(f"{setting_name} n={len(subset)} P={record['num_params']} {hessian}: {total:.1f} s", flush=True)
    kept = {h: top_per_class(s, labels, KEEP) for h, s in scores.items()}
    record["spearman"] = float(spearmanr(scores["exact"], scores["kfac"]).statistic)
    record["kept_overlap"] = len(np.intersect1d(kept["exact"], kept["kfac"])) / len(kept["exact"])
    record["exact_over_kfac"] = record["solvers"]["exact"]["total_s"] / record["solvers"]["kfac"]["total_s"]
    return record


def table(results: dict) -> str:
    lines = [
        "| setting | rows | P | exact s | kfac s (CG iters) | exact / kfac | Spearman | top-30 % kept in common |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results.values():
        e, k = r["solvers"]["exact"], r["solvers"]["kfac"]
        lines.append(
            f"| {r['setting']} | {r['rows']:,} | {r['num_params']:,} | {e['total_s']:.1f} | {k['total_s']:.1f} "
            f"({k['cg_iterations']}) | {r['exact_over_kfac']:.2f} | {r['spearman']:.6f} | {r['kept_overlap']:.4%} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="*", default=["tiny-imagenet", "cifar10"], choices=sorted(SETTINGS))
    parser.add_argument("--rows", type=int, default=20_000, help="rows scored per setting (a fixed random subset)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--force", action="store_true", help="measure again entries already in the JSON")
    parser.add_argument("--report", action="store_true", help="print the table from the JSON only")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if not args.report:
        if args.threads:
            torch.set_num_threads(args.threads)
        for name in args.settings:
            key = f"{name}|{args.rows}"
            if key in results and not args.force:
                continue
            results[key] = measure(name, args.rows)
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
