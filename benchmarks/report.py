"""Tables and plots of the KD sweep, made from the committed JSONL only, one table per setting.

    python benchmarks/report.py                      # the CPU profile's sweep
    python benchmarks/report.py --profile gpu        # benchmarks/results/kd_sweep_gpu.jsonl
    python benchmarks/report.py path/to/sweep.jsonl

Every difference to random is paired (the same seeds) and comes with a 95 % t-interval of the paired
differences over seeds. Prints the tables, writes `<stem>_summary.json`, `<stem>_accuracy.png`,
`<stem>_policies.png` (the CIFAR-10 setting) and `<stem>_settings.png` (IF-Beta minus random per
setting and ratio) next to the JSONL, and refreshes the blocks between the `<!-- sweep-table -->` and
`<!-- settings-table -->` and `<!-- family-table -->` markers in docs/results.md.
"""

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"
START, END = "<!-- sweep-table:start -->", "<!-- sweep-table:end -->"
SETTINGS_START, SETTINGS_END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
FAMILY_START, FAMILY_END = "<!-- family-table:start -->", "<!-- family-table:end -->"
BASE_SETTING = "cifar10"  # cells without a setting: the sweep before settings existed
# Configurations that could replace the default (`if-beta`), compared with it seed by seed.
DEFAULT_CANDIDATES = ('if-beta@policy_learned_by="stage2x2"', "if-beta@policy_a=1,policy_b=1,rank_cutoff=0.3")
ORDER = ["if-beta", "influence", "random", "el2n", "entropy", "ccs", "moderate", "dual-beta", "self-influence"]


def load(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def setting_of(row) -> str:
    return row.get("setting", BASE_SETTING)


def engine_of(row) -> str:
    return row.get("engine", "loop")


def precision_of(row) -> str:
    return row.get("precision", "bf16")  # rows from before the sweep took --precision distilled in bf16


def comparable(rows):
    """(rows that pair, rows left out): per (setting, ratio, seed), only the rows distilled in one precision, since a
    pair is to hold everything but the method fixed. That is the precision its random cell ran in; where random ran
    in several or in none (full data), the one more of its methods ran in, bf16 on a tie."""
    groups = defaultdict(list)
    for r in rows:
        groups[(setting_of(r), r["ratio"], r["seed"])].append(r)
    kept, left_out = [], []
    for group in groups.values():
        candidates = {precision_of(r) for r in group if r["method"] == "random"} or {precision_of(r) for r in group}
        count = lambda p: len({r["method"] for r in group if precision_of(r) == p})  # noqa: E731  (engine reruns once)
        chosen = max(sorted(candidates), key=lambda p: (count(p), p == "bf16"))
        for r in group:
            (kept if precision_of(r) == chosen else left_out).append(r)
    return kept, left_out


def paired_interval(diffs, level: float = 0.95):
    """(mean, low, high) of paired differences: the t-interval over seeds; no interval with fewer than 2."""
    from scipy.stats import t

    diffs = np.asarray(diffs, dtype=float)
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return mean, None, None
    half = float(t.ppf(0.5 + level / 2, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs)))
    return mean, mean - half, mean + half


def joint_average(by_ratio):
    """The average over the ratios, paired by seed: per seed that has a difference at every ratio, the mean of its
    differences, then the t-interval over those seeds. `by_ratio` maps each ratio to {seed: difference}; the
    ratios' noise averages out within a seed, so this interval is the one the "+0.5 on average" criterion needs.
    None where a ratio has no pair or no seed has them all."""
    seeds = sorted(set.intersection(*(set(d) for d in by_ratio.values()))) if by_ratio else []
    if not seeds or not all(by_ratio.values()):
        return None
    mean, low, high = paired_interval([np.mean([d[s] for d in by_ratio.values()]) for s in seeds])
    return {"mean": mean, "ci95": None if low is None else [low, high], "seeds": seeds}


def _joint(joint) -> str:
    if joint is None:
        return "–"
    ci = f" [{joint['ci95'][0]:+.2f}, {joint['ci95'][1]:+.2f}]" if joint["ci95"] else ""
    return f"{joint['mean']:+.2f}{ci} ({len(joint['seeds'])})"


def summarise(rows):
    """Per (method, ratio): mean, spread, seeds, paired difference to random on the same seeds (with its 95 %
    interval), timings, and for noisy-label settings the share of flipped rows kept."""
    cells = defaultdict(dict)
    for r in rows:
        cells[(r["method"], r["ratio"])][r["seed"]] = r
    summary = []
    for (method, ratio), by_seed in sorted(cells.items(), key=lambda kv: (kv[0][1], _rank(kv[0][0]))):
        acc = np.array([r["test_top1"] for r in by_seed.values()])
        random = cells.get(("random", ratio), {})
        paired_by_seed = {s: by_seed[s]["test_top1"] - random[s]["test_top1"] for s in sorted(by_seed) if s in random}
        paired = list(paired_by_seed.values())
        interval = paired_interval(paired) if paired and method != "random" else (None, None, None)
        flipped = [r["flipped_kept_share"] for r in by_seed.values() if "flipped_kept_share" in r]
        policies = [r["policy"] for r in by_seed.values() if r.get("policy") and "a" in r["policy"]]
        summary.append(
            {
                "method": method,
                "ratio": ratio,
                "seeds": sorted(by_seed),
                "precisions": sorted({precision_of(r) for r in by_seed.values()}),
                "top1_mean": float(acc.mean()),
                "top1_std": float(acc.std(ddof=1)) if len(acc) > 1 else None,
                "top1_min": float(acc.min()),
                "top1_max": float(acc.max()),
                "paired_diff_vs_random": float(np.mean(paired)) if paired and method != "random" else None,
                "paired_seeds": len(paired) if method != "random" else 0,
                "paired_ci95": list(interval[1:]) if interval[1] is not None else None,
                "paired_by_seed": paired_by_seed if method != "random" else {},
                "flipped_kept_share": float(np.mean(flipped)) if flipped else None,
                # scoring + selection on top of the shared, cached teacher pass
                "prune_time_s": float(np.mean([_method_cost(r) for r in by_seed.values()])),
                "kd_time_s": float(np.mean([r["kd_time_s"] for r in by_seed.values()])),
                "policies": [{"a": p["a"], "b": p["b"], "fell_back": p.get("fell_back_to_uniform")} for p in policies],
                "hessians": _hessians(by_seed),
            }
        )
    return summary


def _hessians(by_seed):
    """{seed: solver} of the influence scores where any seed recorded one; None for methods without."""
    if not any(r.get("hessian") for r in by_seed.values()):
        return None
    # a cell of the same method without the field ran before it was recorded, when every head was solved exactly
    return {seed: r.get("hessian") or "exact" for seed, r in sorted(by_seed.items())}


def _solver_note(summary) -> str:
    """One line naming each cell's Hessian solver, where the cells of one setting did not all use the same."""
    solvers = {h for s in summary for h in (s.get("hessians") or {}).values()}
    if len(solvers) < 2:
        return ""
    parts = []
    for s in summary:
        if s.get("hessians"):
            seeds = ", ".join(f"seed {seed} {h}" for seed, h in s["hessians"].items())
            parts.append(f"{s['method']} {s['ratio']}: {seeds}")
    return ("Hessian solver of the influence scores (method s depends on it): " + "; ".join(parts) + ". "
            "Cells from before the solver was recorded ran exact.")


def _method_cost(row) -> float:
    timings = row.get("prune_timings") or {}
    return timings.get("scoring_s", 0.0) + timings.get("selection_s", 0.0)


def _seconds(x: float) -> str:
    """Two significant digits below 10 s (the baselines cost milliseconds), whole seconds above."""
    return f"{x:.2g}" if x < 10 else f"{x:.0f}"


def _rank(method):
    """Registry methods in ORDER, then the `method@setting` ablations by name."""
    return (ORDER.index(method), "") if method in ORDER else (len(ORDER), method)


def _diff(s) -> str:
    """`+0.45 [-0.10, +1.00] (3)`: mean paired difference, its 95 % interval, seeds."""
    if s["paired_diff_vs_random"] is None:
        return ""
    ci = f" [{s['paired_ci95'][0]:+.2f}, {s['paired_ci95'][1]:+.2f}]" if s.get("paired_ci95") else ""
    return f"{s['paired_diff_vs_random']:+.2f}{ci} ({s['paired_seeds']})"


def _precision_note(summary, left_out=()) -> str:
    """Which cells were not distilled in bf16 autocast, and which `comparable` left out; empty when neither."""
    other = [s for s in summary if s["precisions"] != ["bf16"]]
    if not other and not left_out:
        return ""
    note = "Students distilled under bf16 autocast"
    if other:
        where = "; ".join(f"{s['method']} {s['ratio']}: {', '.join(s['precisions'])}" for s in other)
        note += f", except (a seed's methods always in one precision) {where}"
    note += "."
    if left_out:
        cells = "; ".join(f"{r['method']} {r['ratio']} seed {r['seed']} ({precision_of(r)})" for r in left_out)
        note += f" Left out, since their seed's cells at that ratio ran in another precision (`comparable`): {cells}."
    return note


def table(summary, profile, title="", left_out=()) -> str:
    noisy = any(s.get("flipped_kept_share") is not None for s in summary)
    lines = [
        f"{title}Profile `{profile}`. Test top-1 (%) of the student distilled from scratch on the kept rows; "
        "mean ± sample std over seeds (n = number of seeds); Δ = mean paired difference to random on the same seeds "
        "with its 95 % t-interval over seeds [low, high] and the number of pairs; "
        "method s = the method's scoring + selection on top of the shared teacher pass; KD s = distillation wall time."
        + (" Flipped kept = share of the rows with a flipped label that the method keeps." if noisy else ""),
        "",
        "| method | ratio | kept | top-1 | n | Δ vs random [95 % CI] | (a, b) | method s | KD s |" + (" flipped kept |" if noisy else ""),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if noisy else ""),
    ]
    for s in summary:
        spread = f" ± {s['top1_std']:.2f}" if s["top1_std"] is not None else ""
        ab = ", ".join(f"({p['a']:.2f}, {p['b']:.2f})" for p in s["policies"])
        kept = "100 %" if s["ratio"] == 0 else f"{100 * (1 - s['ratio']):.0f} %"
        flipped = ""
        if noisy:
            share = s.get("flipped_kept_share")
            flipped = f" {100 * share:.1f} % |" if share is not None else " |"
        lines.append(
            f"| {s['method']} | {s['ratio']} | {kept} | {s['top1_mean']:.2f}{spread} | {len(s['seeds'])} | {_diff(s)} | {ab} | "
            f"{_seconds(s['prune_time_s'])} | {s['kd_time_s']:.0f} |{flipped}"
        )
    notes = [n for n in (_solver_note(summary), _precision_note(summary, left_out)) if n]
    return "\n".join(lines + [line for n in notes for line in ("", n)])


def verdict(summary, ratios=(0.3, 0.5, 0.7), margin=0.5):
    """Issue 4's criterion per method: mean over seeds >= random's at every ratio, and >= `margin` points on
    the average over the ratios. Both means are over the seeds both have (the paired difference: a seed fixes
    the student's initialisation, batch order and augmentation, so an extra random seed would otherwise move
    the comparison); `None` where a cell is missing."""
    means = {(s["method"], s["ratio"]): s for s in summary}
    out = []
    for method in sorted({s["method"] for s in summary if s["ratio"] > 0 and s["method"] != "random"}, key=_rank):
        diffs, seeds, by_seed = {}, {}, {}
        for ratio in ratios:
            mine, base = means.get((method, ratio)), means.get(("random", ratio))
            paired = mine["paired_seeds"] if mine and base else 0
            diffs[ratio] = mine["paired_diff_vs_random"] if paired else None
            seeds[ratio] = paired
            by_seed[ratio] = mine["paired_by_seed"] if paired else {}
        complete = all(d is not None for d in diffs.values())
        average = float(np.mean(list(diffs.values()))) if complete else None
        out.append({
            "method": method, "diff_vs_random": diffs, "seeds": seeds, "average_diff": average,
            "average_by_seed": joint_average(by_seed),
            "meets": complete and all(d >= 0 for d in diffs.values()) and average >= margin,
        })
    return out


def versus_default(rows, candidates=DEFAULT_CANDIDATES, base="if-beta", ratios=(0.3, 0.5, 0.7), engine_check=()):
    """Per candidate and ratio: its mean paired difference to the default `base` over the seeds both have, with the
    95 % interval; and whether it is level or better in mean at every ratio. The same again (`same_engine`) over
    the pairs whose base cell ran on the candidate's engine, from the trainer's reruns (`engine_check`)."""
    cells = {(r["method"], r["ratio"], r["seed"], engine_of(r)): r["test_top1"] for r in [*rows, *engine_check]}
    all_engines = sorted({engine for (*_, engine) in cells})

    def compare(method, same_engine):
        diffs = {}
        for ratio in ratios:
            pairs = []
            for (m, q, s, engine), top1 in sorted(cells.items()):
                if m != method or q != ratio:
                    continue
                engines = [engine] if same_engine else [engine, *(e for e in all_engines if e != engine)]
                base_top1 = next((cells[(base, q, s, e)] for e in engines if (base, q, s, e) in cells), None)
                if base_top1 is not None:
                    pairs.append((s, top1 - base_top1))
            if pairs:
                mean, low, high = paired_interval([d for _, d in pairs])
                diffs[ratio] = {"mean": mean, "ci95": None if low is None else [low, high], "seeds": [s for s, _ in pairs]}
        complete = len(diffs) == len(ratios)
        return {"diff": diffs, "average": float(np.mean([d["mean"] for d in diffs.values()])) if complete else None,
                "level_at_every_ratio": complete and all(d["mean"] >= 0 for d in diffs.values())}  # fmt: skip

    out = []
    for method in candidates:
        every = compare(method, same_engine=False)
        if every["diff"]:
            out.append({"method": method, "base": base, **every, "same_engine": compare(method, same_engine=True)})
    return out


def versus_default_table(rows, ratios=(0.3, 0.5, 0.7)) -> str:
    if not rows:
        return ""
    lines = [
        f"Candidates for the default, minus `{rows[0]['base']}` on the same seeds: mean paired difference [95 % CI] "
        "(seeds); the base cell from the candidate's engine where it has one, and on that engine only in the "
        "second row.",
        "",
        "| candidate | " + " | ".join(f"ratio {r}" for r in ratios) + " | average | level or better at every ratio |",
        "| --- |" + " --- |" * (len(ratios) + 2),
    ]
    for v in rows:
        for label, c in ((v["method"], v), (f"{v['method']}, same engine only", v.get("same_engine"))):
            if not c or not c["diff"]:
                continue
            cells = []
            for r in ratios:
                d = c["diff"].get(r)
                ci = f" [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]" if d and d["ci95"] else ""
                cells.append(f"{d['mean']:+.2f}{ci} ({len(d['seeds'])})" if d else "–")
            average = f"{c['average']:+.2f}" if c["average"] is not None else "incomplete"
            lines.append(f"| {label} | {' | '.join(cells)} | {average} | {'yes' if c['level_at_every_ratio'] else 'no'} |")
    return "\n".join(lines)


def verdict_table(rows, ratios=(0.3, 0.5, 0.7), margin=0.5) -> str:
    head = " | ".join(f"Δ ratio {r} (seeds)" for r in ratios)
    lines = [
        f"Mean over seeds minus random's mean on the same seeds, per ratio; criterion: >= 0 at every ratio and "
        f">= +{margin} on average. The average paired by seed: over the seeds with a pair at every ratio, each seed's "
        "mean over the ratios, with its 95 % t-interval (seeds).",
        "",
        f"| method | {head} | average Δ | average paired by seed [95 % CI] | meets |",
        "| --- |" + " --- |" * (len(ratios) + 3),
    ]
    for v in rows:
        cells = [
            f"{v['diff_vs_random'][r]:+.2f} ({v['seeds'][r]})" if v["diff_vs_random"][r] is not None else "–"
            for r in ratios
        ]
        average = f"{v['average_diff']:+.2f}" if v["average_diff"] is not None else "incomplete"
        joint = _joint(v["average_by_seed"])
        lines.append(f"| {v['method']} | {' | '.join(cells)} | {average} | {joint} | {'yes' if v['meets'] else 'no'} |")
    return "\n".join(lines)


def plots(summary, stem: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    for s in summary:
        if s["method"] in ("full", "full-nokd"):
            kd = s["method"] == "full"
            ax.axhline(s["top1_mean"], color="k" if kd else "0.5", ls="--" if kd else ":", lw=1,
                       label=f"full data, {'KD' if kd else 'no KD'} ({s['top1_mean']:.2f})")
    for k, method in enumerate(sorted({s["method"] for s in summary if s["ratio"] > 0}, key=_rank)):
        pts = sorted((s for s in summary if s["method"] == method and s["ratio"] > 0), key=lambda s: s["ratio"])
        ablation = "@" in method  # design choices screened against the default: thinner, fainter
        ax.errorbar(
            [s["ratio"] for s in pts], [s["top1_mean"] for s in pts], yerr=[s["top1_std"] or 0 for s in pts],
            marker="s" if ablation else "o", ms=4 if ablation else 6, lw=1 if ablation else 1.8,
            ls=":" if ablation else "-", alpha=0.6 if ablation else 1.0, capsize=3, color=f"C{k % 10}", label=method,
        )
    ax.set(xlabel="pruning ratio (fraction removed)", ylabel="student test top-1 (%)", title="KD on the kept rows")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(f"{stem}_accuracy.png", dpi=120)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    from scipy.stats import beta as beta_dist

    grid = np.linspace(0.005, 0.995, 199)
    styles = {"if-beta": "-", "if-beta@policy_max_ab=50": ":"}  # the default box, and the full box
    for s in summary:
        if s["method"] not in styles:
            continue
        for k, p in enumerate(s["policies"]):
            label = f"{s['method']}, ratio {s['ratio']}: Beta({p['a']:.2f}, {p['b']:.2f})" if k == 0 else None
            ax.plot(grid, beta_dist.pdf(grid, p["a"], p["b"]), color=f"C{int(10 * s['ratio']) % 10}",
                    ls=styles[s["method"]], alpha=0.9 if k == 0 else 0.5, label=label)
    ax.axhline(1, color="k", ls="--", lw=1, label="uniform (random)")
    ax.set(xlabel="class-wise influence rank position u (1 = most helpful)", ylabel="sampling density",
           title="learned IF-Beta policies", ylim=(0, 4))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{stem}_policies.png", dpi=120)


def split_rows(rows):
    """{setting: its rows}; CIFAR-10 cells the trainer reran against committed loop cells (same method, ratio and
    seed) go to `engine_check`, and the trainer's other CIFAR-10 cells (new methods) join the CIFAR-10 table."""
    loop = {(r["method"], r["ratio"], r["seed"]) for r in rows if setting_of(r) == BASE_SETTING and engine_of(r) == "loop"}
    groups, engine_check = defaultdict(list), []
    for r in rows:
        if setting_of(r) == BASE_SETTING and engine_of(r) != "loop" and (r["method"], r["ratio"], r["seed"]) in loop:
            engine_check.append(r)
        else:
            groups[setting_of(r)].append(r)
    return dict(groups), engine_check


def engine_table(loop_rows, trainer_rows) -> str:
    """The trainer's reruns of committed cells next to the loop's, with the loop cells' spread over seeds."""
    loop = {(r["method"], r["ratio"], r["seed"]): r["test_top1"] for r in loop_rows if engine_of(r) == "loop"}
    spread = defaultdict(list)
    for (method, ratio, _), top1 in loop.items():
        spread[(method, ratio)].append(top1)
    lines = [
        "Cells rerun through `DistillationTrainer` (with its teacher-logit cache) against the committed cells of the "
        "hand-written loop: same setting, method, ratio and seed. Seed spread = sample std of the loop's cells over seeds.",
        "",
        "| method | ratio | seed | loop top-1 | trainer top-1 | trainer − loop | seed spread (loop) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(trainer_rows, key=lambda r: (r["ratio"], _rank(r["method"]), r["seed"])):
        key = (r["method"], r["ratio"], r["seed"])
        if key not in loop:
            continue
        values = spread[key[:2]]
        sd = f"{np.std(values, ddof=1):.2f} (n = {len(values)})" if len(values) > 1 else "–"
        lines.append(
            f"| {r['method']} | {r['ratio']} | {r['seed']} | {loop[key]:.2f} | {r['test_top1']:.2f} | "
            f"{r['test_top1'] - loop[key]:+.2f} | {sd} |"
        )
    return "\n".join(lines)


def trainer_only(base_rows, engine_check):
    """The base setting's cells distilled by the trainer, each method paired only with the trainer's own random
    cells, so that no pair mixes engines; only the ratios where the trainer ran random."""
    rows = [r for r in base_rows if engine_of(r) != "loop"] + list(engine_check)
    ratios = {r["ratio"] for r in rows if r["method"] == "random"}
    return summarise([r for r in rows if r["ratio"] in ratios])


def in_beta_family(method: str, base: str = "if-beta") -> bool:
    """Whether `method` draws a Beta over the default's ranks: the default, or a variant that sets only `policy_*`
    fields (a fixed (a, b), another box, another outer objective); other fields change the ranking itself."""
    if method == base:
        return True
    name, _, spec = method.partition("@")
    return name == base and bool(spec) and all(part.split("=")[0].startswith("policy_") for part in spec.split(","))


def _cells(rows, key):
    """{key(row): row}, refusing two rows with one key (a cell run twice would silently replace the other)."""
    cells = {}
    for r in rows:
        k = key(r)
        if k in cells:
            raise ValueError(f"Two rows for the cell {k}: keep one (the sweep skips finished cells, so this is a merge).")
        cells[k] = r
    return cells


def _pairs_by_seed(cells, method, ratio, engines=("trainer", "loop")):
    """{seed: (method's cell, random's cell)} for the seeds where both ran on one engine, the first of `engines`
    that has both."""
    pairs = {}
    for seed in sorted({s for (m, q, s, _) in cells if m == method and q == ratio}):
        engine = next((e for e in engines if (method, ratio, seed, e) in cells and ("random", ratio, seed, e) in cells), None)
        if engine is not None:
            pairs[seed] = (cells[(method, ratio, seed, engine)], cells[("random", ratio, seed, engine)])
    return pairs


def beta_family(rows, ratios=(0.3, 0.5, 0.7), engines=("trainer", "loop"), min_pairs=3):
    """Per ratio, every Beta policy distilled over the default's ranks (random is Beta(1, 1)), each seed paired with
    random on the same seed and engine, the first of `engines` that has both cells; and per ratio the policy with
    the best mean difference among those with `min_pairs` pairs or more, picked with hindsight, with the average of
    those bests over the ratios."""
    cells = _cells(rows, lambda r: (r["method"], r["ratio"], r["seed"], engine_of(r)))
    policies = []
    for ratio in ratios:
        methods = sorted({m for (m, q, _, _) in cells if q == ratio and in_beta_family(m)})
        for method in methods:
            both = _pairs_by_seed(cells, method, ratio, engines)
            pairs = {seed: mine["test_top1"] - random["test_top1"] for seed, (mine, random) in both.items()}
            ab = [(m["policy"]["a"], m["policy"]["b"]) for m, _ in both.values() if m.get("policy") and "a" in m["policy"]]
            if not pairs:
                continue
            mean, low, high = paired_interval(list(pairs.values()))
            a, b = np.mean(ab, axis=0) if ab else (np.nan, np.nan)
            policies.append({"method": method, "ratio": ratio, "a": float(a), "b": float(b), "pairs": len(pairs),
                             "diff_vs_random": mean, "ci95": None if low is None else [low, high], "by_seed": pairs})
        random = [s for (m, q, s, _) in cells if m == "random" and q == ratio]
        if random:
            policies.append({"method": "random", "ratio": ratio, "a": 1.0, "b": 1.0, "pairs": None,
                             "diff_vs_random": 0.0, "ci95": None, "by_seed": {s: 0.0 for s in random}})
    best = {}
    for p in policies:
        if p["method"] != "random" and p["pairs"] < min_pairs:
            continue
        if p["ratio"] not in best or p["diff_vs_random"] > best[p["ratio"]]["diff_vs_random"]:
            best[p["ratio"]] = p
    complete = all(r in best for r in ratios)
    average = float(np.mean([best[r]["diff_vs_random"] for r in ratios])) if complete else None
    joint = joint_average({r: best[r]["by_seed"] for r in ratios}) if complete else None
    return {"policies": policies, "best": {r: p["method"] for r, p in best.items()}, "best_average": average,
            "best_average_by_seed": joint, "min_pairs": min_pairs}


def combinations(rows, ratios=(0.3, 0.5, 0.7), min_pairs=6, engines=("trainer", "loop"), target=0.5):
    """Every choice of one method per ratio among those with `min_pairs` pairs or more there (any method, paired as
    in `beta_family`), each with its average paired by seed (`joint_average`): what the bar's "+0.5 on average"
    (`target`) allows of the methods measured well enough to say. The choice with the highest mean, the one with the
    highest upper end of its interval, and how many intervals reach `target`; None where a ratio has no such
    method."""
    cells = _cells(rows, lambda r: (r["method"], r["ratio"], r["seed"], engine_of(r)))
    options = {}
    for ratio in ratios:
        for method in sorted({m for (m, q, _, _) in cells if q == ratio and m not in ("random", "full", "full-nokd")}):
            both = _pairs_by_seed(cells, method, ratio, engines)
            if len(both) >= min_pairs:
                options.setdefault(ratio, {})[method] = {s: m["test_top1"] - r["test_top1"] for s, (m, r) in both.items()}
    if len(options) < len(ratios):
        return None
    scored = []
    for choice in itertools.product(*(sorted(options[r]) for r in ratios)):
        joint = joint_average({r: options[r][m] for r, m in zip(ratios, choice)})
        if joint is not None and joint["ci95"] is not None:
            scored.append({"methods": dict(zip(map(str, ratios), choice)), **joint})
    if not scored:
        return None
    return {"min_pairs": min_pairs, "count": len(scored), "best_mean": max(scored, key=lambda c: c["mean"]),
            "highest_upper": max(scored, key=lambda c: c["ci95"][1]), "target": target,
            "reaching_target": sum(c["ci95"][1] >= target for c in scored)}


def combinations_text(found) -> str:
    if not found:
        return ""
    describe = lambda c: f"{' / '.join(c['methods'].values())}, {_joint(c)}"  # noqa: E731
    return (
        f"Every choice of one method per ratio among those with {found['min_pairs']} pairs or more at that ratio "
        f"({found['count']} choices), each with its average over the ratios paired by seed [95 % CI] (seeds): the "
        f"highest mean is {describe(found['best_mean'])}; the highest upper end {describe(found['highest_upper'])}; "
        f"{found['reaching_target']} of the {found['count']} intervals reach {found['target']:+.2f}."
    )


def pooled_noise(rows, ratio: float, engine: str = "trainer"):
    """The methods distilled on `engine` at `ratio` as a balanced (method x seed) table fitted by method + seed
    effects: the residual sd (the seed-to-seed noise of a paired difference, pooled over every method), the F test
    of "no method differs", and the half-width of the 95 % interval of any method's difference to random under that
    pooled noise. The seeds are those, among random's, that give the table the most cells (every method in it has
    all of them, random among them). None with fewer than three methods or two seeds."""
    from scipy.stats import f as f_dist, t

    cells = _cells([r for r in rows if r["ratio"] == ratio and engine_of(r) == engine], lambda r: (r["method"], r["seed"]))
    cells = {k: r["test_top1"] for k, r in cells.items()}
    random = {s for (m, s) in cells if m == "random"}
    seeds_of = {m: frozenset(s for (mm, s) in cells if mm == m) & random for (m, _) in cells}

    def size(seeds):
        methods = sum(seeds <= other for other in seeds_of.values())
        return methods * len(seeds), len(seeds), sorted(seeds)

    choices = [seeds for seeds in set(seeds_of.values()) if len(seeds) >= 2]
    seeds = sorted(max(choices, key=size)) if choices else []
    methods = sorted(m for m, own in seeds_of.items() if set(seeds) <= own)
    if len(methods) < 3 or len(seeds) < 2:  # random is among them: every seed set is within its seeds
        return None
    y = np.array([[cells[(m, s)] for s in seeds] for m in methods])
    residual = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
    df = (len(methods) - 1) * (len(seeds) - 1)
    variance = float((residual**2).sum() / df)
    between = len(seeds) * float(((y.mean(1) - y.mean()) ** 2).sum()) / (len(methods) - 1)
    statistic = between / variance if variance > 0 else float("inf")
    return {"ratio": ratio, "engine": engine, "seeds": seeds, "methods": methods, "residual_sd": variance**0.5, "df": df,
            "F": statistic, "p": float(f_dist.sf(statistic, len(methods) - 1, df)),
            "half_width": float(t.ppf(0.975, df) * np.sqrt(2 * variance / len(seeds)))}  # fmt: skip


def beta_family_table(family) -> str:
    if not family["policies"]:
        return ""
    lines = [
        "Every Beta policy over the default's ranks, minus random on the same seed and engine (the trainer's where a "
        "seed ran on both; a cell without random on its engine is left out); (a, b) = the mean over seeds of the "
        "policy the cells drew from; mean a / (a + b) = how far it leans to the top of the ranking.",
        "",
        "| ratio | policy | (a, b) | mean a / (a + b) | Δ vs random [95 % CI] (pairs) |",
        "| --- | --- | --- | --- | --- |",
    ]
    order = lambda p: (p["ratio"], np.nan_to_num(p["a"] / (p["a"] + p["b"]), nan=-1.0), p["a"] + p["b"])  # noqa: E731
    for p in sorted(family["policies"], key=order):
        ci = f" [{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}]" if p["ci95"] else ""
        diff = "" if p["method"] == "random" else f"{p['diff_vs_random']:+.2f}{ci} ({p['pairs']})"
        lines.append(f"| {p['ratio']} | {p['method']} | ({p['a']:.2f}, {p['b']:.2f}) | {p['a'] / (p['a'] + p['b']):.2f} | {diff} |")
    by = {(p["ratio"], p["method"]): p for p in family["policies"]}
    picks = "; ".join(
        f"{r}: {m} {by[(r, m)]['diff_vs_random']:+.2f}" + (f" ({by[(r, m)]['pairs']})" if by[(r, m)]["pairs"] else "")
        for r, m in sorted(family["best"].items())
    )
    average = f"{family['best_average']:+.2f}" if family["best_average"] is not None else "incomplete"
    lines += ["", f"Best mean per ratio among the policies with {family['min_pairs']} pairs or more, picked with hindsight: "
              f"{picks}; their average {average}; paired by seed (each seed's mean over the ratios, where every "
              f"pick has a pair) {_joint(family.get('best_average_by_seed'))}."]
    for pooled in family.get("pooled", []):
        lines += ["", (
            f"Ratio {pooled['ratio']}, the {len(pooled['methods'])} methods the {pooled['engine']} ran on each of seeds "
            f"{', '.join(map(str, pooled['seeds']))} (the family's and any other), fitted by method + seed: residual sd "
            f"{pooled['residual_sd']:.2f} ({pooled['df']} df); the test that no method differs: F = {pooled['F']:.2f}, p = {pooled['p']:.3f}; "
            f"any method minus random ±{pooled['half_width']:.2f} (95 %) under the pooled noise."
        )]  # fmt: skip
    lines += ["", text] if (text := combinations_text(family.get("combinations"))) else []
    return "\n".join(lines)


# The protocol's KD weight; settings recorded before `alpha` was a field of their spec distilled at it.
PROTOCOL_ALPHA = 0.9


def _alpha(row) -> float:
    return row.get("setting_spec", {}).get("alpha", PROTOCOL_ALPHA)


def _spec_but_alpha(row):
    spec = row.get("setting_spec")
    return None if spec is None else tuple(sorted((k, str(v)) for k, v in spec.items() if k not in ("name", "alpha")))


def kd_weight_pairs(rows, ratios=(0.3, 0.5, 0.7)):
    """Settings that differ from another only in the student's KD weight, cell by cell against it: for each such
    (setting, base) and ratio, every method's top-1 at the setting's alpha minus at the base's on the same seed,
    engine and precision, and each method's lead over random at the one alpha minus at the other (seeds where both
    settings ran the method and random)."""
    cells = _cells(rows, lambda r: (setting_of(r), engine_of(r), precision_of(r), r["method"], r["ratio"], r["seed"]))
    spec_of = {}
    for r in rows:
        if _spec_but_alpha(r) is not None:
            spec_of.setdefault(setting_of(r), (_spec_but_alpha(r), _alpha(r)))
    out = []
    for setting, (spec, alpha) in spec_of.items():
        for base, (base_spec, base_alpha) in spec_of.items():
            if base == setting or base_spec != spec or base_alpha == alpha or alpha == PROTOCOL_ALPHA:
                continue
            for ratio in ratios:
                shared = sorted(
                    k[1:] for k in cells
                    if k[0] == setting and k[4] == ratio and (base, *k[1:]) in cells
                )  # (engine, precision, method, ratio, seed) run at both alphas
                methods = sorted({k[2] for k in shared}, key=_rank)
                for method in methods:
                    keys = [k for k in shared if k[2] == method]
                    diffs = [cells[(setting, *k)]["test_top1"] - cells[(base, *k)]["test_top1"] for k in keys]
                    lead = []
                    for k, diff in zip(keys, diffs):
                        rand = (*k[:2], "random", *k[3:])
                        if method != "random" and rand in shared:
                            lead.append(diff - (cells[(setting, *rand)]["test_top1"] - cells[(base, *rand)]["test_top1"]))
                    out.append({
                        "setting": setting, "base": base, "alpha": alpha, "base_alpha": base_alpha, "ratio": ratio,
                        "method": method, "seeds": [k[-1] for k in keys], "diff": paired_interval(diffs),
                        "lead_diff": paired_interval(lead) if lead else None, "lead_pairs": len(lead),
                    })  # fmt: skip
    return out


def kd_weight_table(pairs) -> str:
    if not pairs:
        return ""
    fmt = lambda m, lo, hi: f"{m:+.2f}" + (f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None else "")  # noqa: E731
    lines = [
        "The student's KD weight: each setting that differs from another only in alpha, minus that setting, cell by "
        "cell (same method, ratio, seed, engine and precision); mean paired difference in test top-1 points [95 % "
        "CI over seeds] (seeds); and the method's lead over random at the one alpha minus its lead at the other.",
        "",
        "| setting − base (alpha) | ratio | method | top-1 difference (seeds) | lead over random, difference (pairs) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for p in pairs:
        lead = f"{fmt(*p['lead_diff'])} ({p['lead_pairs']})" if p["lead_diff"] else "–"
        seeds = ", ".join(map(str, p["seeds"]))
        lines.append(
            f"| {p['setting']} − {p['base']} ({p['alpha']:g} − {p['base_alpha']:g}) | {p['ratio']} | {p['method']} | "
            f"{fmt(*p['diff'])} ({seeds}) | {lead} |"
        )
    return "\n".join(lines)


def settings_summary(summaries, method="if-beta", ratios=(0.3, 0.5, 0.7)):
    """{setting: {ratio: (mean, low, high, pairs)}} of `method` minus random."""
    out = {}
    for setting, summary in summaries.items():
        by = {(s["method"], s["ratio"]): s for s in summary}
        row = {}
        for ratio in ratios:
            s = by.get((method, ratio))
            if s and s["paired_diff_vs_random"] is not None:
                low, high = s["paired_ci95"] or (None, None)
                row[ratio] = (s["paired_diff_vs_random"], low, high, s["paired_seeds"])
        if row:
            out[setting] = row
    return out


def settings_table(overview, ratios=(0.3, 0.5, 0.7), method="if-beta") -> str:
    lines = [
        f"{method} minus random, test top-1 points, per setting and ratio: mean paired difference over seeds, "
        "its 95 % t-interval [low, high] and the number of pairs (an interval needs two).",
        "",
        "| setting | " + " | ".join(f"ratio {r}" for r in ratios) + " |",
        "| --- |" + " --- |" * len(ratios),
    ]
    for setting, row in overview.items():
        cells = []
        for ratio in ratios:
            if ratio not in row:
                cells.append("–")
                continue
            mean, low, high, n = row[ratio]
            ci = f" [{low:+.2f}, {high:+.2f}]" if low is not None else ""
            cells.append(f"{mean:+.2f}{ci} ({n})")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_plot(overview, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(overview)
    width = 0.8 / max(1, len(names))
    for k, setting in enumerate(names):
        row = overview[setting]
        ratios = sorted(row)
        x = np.array([[0.3, 0.5, 0.7].index(r) for r in ratios], dtype=float) + (k - (len(names) - 1) / 2) * width
        means = np.array([row[r][0] for r in ratios])
        low = np.array([row[r][0] - row[r][1] if row[r][1] is not None else 0 for r in ratios])
        high = np.array([row[r][2] - row[r][0] if row[r][2] is not None else 0 for r in ratios])
        ax.errorbar(x, means, yerr=[low, high], fmt="o", capsize=3, color=f"C{k % 10}", label=setting)
    ax.axhline(0, color="k", lw=1)
    ax.set_xticks(range(3), ["ratio 0.3", "ratio 0.5", "ratio 0.7"])
    ax.set(ylabel="IF-Beta − random (top-1 points)", title="IF-Beta minus random, paired, 95 % intervals over seeds")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _replace_block(doc: str, start: str, end: str, text: str) -> str:
    if start not in doc or end not in doc:
        return doc
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{text}\n{end}{tail}"


def report(path):
    path = Path(path)
    rows, left_out = comparable(load(path))
    left_out_of = defaultdict(list)
    for r in left_out:
        left_out_of[setting_of(r)].append(r)
    profile = rows[0]["profile"] if rows else path.stem
    groups, engine_check = split_rows(rows)
    summaries = {setting: summarise(group) for setting, group in groups.items()}
    summary = summaries.get(BASE_SETTING, [])
    stem = path.with_suffix("")
    verdicts = verdict(summary)
    candidates = versus_default(groups.get(BASE_SETTING, []), engine_check=engine_check)
    overview = settings_summary(summaries)
    base_rows = [*groups.get(BASE_SETTING, []), *engine_check]
    family = beta_family(base_rows)
    family["pooled"] = [p for p in (pooled_noise(base_rows, r) for r in (0.3, 0.5, 0.7)) if p]
    family["combinations"] = combinations(base_rows)
    kd_weight = kd_weight_pairs(rows)
    Path(f"{stem}_summary.json").write_text(json.dumps(
        {"cells": summary, "verdict": verdicts, "versus_default": candidates, "settings": summaries,
         "beta_family": {**family, "best": {str(r): m for r, m in family["best"].items()}},
         "if_beta_minus_random": {k: {str(r): v for r, v in row.items()} for k, row in overview.items()},
         "kd_weight": kd_weight},
        indent=2,
    ))
    text = "\n\n".join(filter(None, [table(summary, profile, left_out=left_out_of[BASE_SETTING]), verdict_table(verdicts), versus_default_table(candidates)]))
    parts = [settings_table(overview)]
    if engine_check:
        parts.append(engine_table(groups.get(BASE_SETTING, []), engine_check))
        same_engine = trainer_only(groups.get(BASE_SETTING, []), engine_check)
        if same_engine:
            title = f"**{BASE_SETTING}, trainer cells only** (each paired with the trainer's random on the same seed). "
            parts.append(table(same_engine, profile, title=title))
    for setting, setting_summary in summaries.items():
        if setting != BASE_SETTING:
            first = next((r for r in groups[setting] if r.get("setting_spec")), None)
            title = f"**{setting}**" + (f" ({_describe(first)}). " if first else ". ")
            parts.append(table(setting_summary, profile, title=title, left_out=left_out_of[setting]))
    parts.append(kd_weight_table(kd_weight))
    settings_text = "\n\n".join(filter(None, parts))
    family_text = beta_family_table(family)
    print("\n\n".join(filter(None, [text, settings_text, family_text])))
    if summary:
        plots(summary, stem)
    if overview:
        settings_plot(overview, f"{stem}_settings.png")
    if DOC.exists():
        doc = _replace_block(DOC.read_text(), START, END, text)
        doc = _replace_block(doc, SETTINGS_START, SETTINGS_END, settings_text)
        DOC.write_text(_replace_block(doc, FAMILY_START, FAMILY_END, family_text))
    return summary


def _describe(row) -> str:
    spec = row["setting_spec"]
    noise = f", {100 * spec['label_noise']:.0f} % of the training labels flipped" if spec.get("label_noise") else ""
    if _alpha(row) != PROTOCOL_ALPHA:
        noise += f", KD weight alpha {_alpha(row):g}"
    data = Path(spec["train_file"]).parent.name
    teacher, weights = spec["teacher"], Path(spec.get("teacher_checkpoint") or spec["teacher"]).stem
    if weights != teacher:  # the same architecture trained on other data (Tiny-ImageNet's ResNet-56)
        teacher = f"{weights} ({teacher} architecture)"
    return f"{data}, teacher {teacher}, student {spec['student']}, {row['epochs']} epochs{noise}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jsonl", nargs="?", help="a sweep's JSONL (default: the profile's, in benchmarks/results)")
    parser.add_argument("--profile", default="cpu", help="which sweep to report when no JSONL is given")
    args = parser.parse_args(argv)
    path = Path(args.jsonl) if args.jsonl else ROOT / "benchmarks" / "results" / f"kd_sweep_{args.profile}.jsonl"
    if not path.exists():
        raise SystemExit(f"No sweep results at {path}; run `python benchmarks/kd_sweep.py --profile {args.profile}`.")
    report(path)


if __name__ == "__main__":
    main()
