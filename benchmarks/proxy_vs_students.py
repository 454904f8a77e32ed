"""Is IF-Beta's outer objective predictive of the real students of the sweep? (issue 4, part 4)

For every finished pruning cell of `benchmarks/results/kd_sweep_<profile>.jsonl` (method, ratio, seed),
the kept rows are rebuilt exactly as the sweep built them (`kd_sweep.Pruning`, deterministic given the
cell), and the proxy objective of the if-beta method is evaluated on them: a linear head trained from
scratch on the teacher features of the kept rows (the validation slice V left out) with the KD-aligned
loss, for the student's number of epochs over the kept rows (`PolicyObjective.subset_loss`, the budget
`learn_beta_policy` uses), then its mean KD loss on all of V. Lower proxy loss should mean a better student.

Printed per ratio: every cell's proxy loss next to its test top-1, Spearman's rho between (-proxy loss)
and top-1 over the cells (+1 = the proxy orders the kept subsets as the students do) and over the
methods' seed means. The same for variants of the outer objective that the method leaves open:

- `default`: as above (what `learn_beta_policy` optimises, on all non-validation rows);
- `weak16`: a weaker, non-realisable proxy: the standardised features randomly projected to 16 dimensions
  (the teacher's logits are a linear function of its features, so the default proxy can reproduce them);
- `scarce1500`: a data-scarce proxy: only the kept rows inside a stratified 1,500-row subsample train it;
- `layer1`, `layer2`, `layer2_2x2`: the proxy on a fixed weak view, the standardised pooled outputs of an earlier
  stage of the teacher (16, 32 and 2 x 2 x 32 dims; `benchmarks/stage_features.py` computes them);
- `augmented`: the proxy sees what the student sees, the teacher's penultimate features of one pad-crop-flip view
  of each kept row (`stage_features.py`), fitted to the teacher's logits of the un-augmented row and judged on V's
  un-augmented features, as the students are trained against cached clean logits and tested on clean images;
- `knn_val`, `knn_train`, `knn_train_2x2`: a non-parametric proxy, the kept rows' soft labels standing in for their
  query rows' by k nearest neighbours (`KnnObjective`), asked on V or on the training split, in the penultimate
  features or the 2 x 2 middle stage;
- `pilot` (and `pilot_err`, from the same run): a short run of the real student, the sweep's ResNet-20 and
  recipe for `--pilot_steps` steps on the kept rows (V left out), then its cross-entropy (top-1 error) on V.

And a selection-bias check: influence scored on one half of V, the policies' subsets evaluated on that half
and on the other (is the proxy's liking for top-influence rows an artefact of scoring and evaluating on the
same slice?). Written to `benchmarks/results/proxy_vs_students_<profile>.json`.

    python benchmarks/proxy_vs_students.py [--profile cpu]
    python benchmarks/proxy_vs_students.py --variants pilot --seeds 0     # the costly pilot, on one seed's cells

Uses the cached teacher pass (refuses to start a 50,000-row teacher pass unless --allow_teacher_pass) and
one CPU thread; about 10 s per cell plus each method's scoring once (the pilot: about a minute per cell).

`--setting NAME` judges the default objective and the stage view (`layer2_2x2`: the product's `"stage"` coverage
view, the teacher's middle stage pooled to 2 x 2) on the cells of another setting of the sweep, with its data,
labels, teacher and the students' epochs as the proxy's budget; the teacher pass (with the view) runs at the
precision this machine resolves for the setting, and is cached. Written to
`benchmarks/results/proxy_vs_students_<profile>_<setting>.json`, without the selection-bias check, after every
cell; a rerun scores only the cells the file lacks (`--ratios` / `--seeds` narrow it).

    python benchmarks/proxy_vs_students.py --setting cifar10-e5
    python benchmarks/proxy_vs_students.py --across_settings    # to proxy_objectives_by_setting_<profile>.json
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import timm
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import kd_sweep  # noqa: E402
from proxy_calibration import _spearman, load_inputs  # noqa: E402
from report import comparable  # noqa: E402  (the cells the sweep's tables pair)

from hf_ifbeta.files import atomic_write  # noqa: E402
from hf_ifbeta.influence import influence_scores  # noqa: E402
from hf_ifbeta.losses import kd_loss  # noqa: E402
from hf_ifbeta.policy import BetaPolicy, PolicyObjective, rank_positions  # noqa: E402
from hf_ifbeta.policy_learning import standardised  # noqa: E402
from hf_ifbeta.selection import stratified_subsample  # noqa: E402
from hf_ifbeta.pruner import to_jsonable  # noqa: E402
from hf_ifbeta.transforms import train_transform  # noqa: E402


VARIANTS = ("default", "weak16", "scarce1500")
STAGE_VARIANTS = ("layer1", "layer2", "layer2_2x2", "augmented")
PILOT_VARIANTS = ("pilot", "pilot_err")  # one short student run per cell gives both
KNN_VARIANTS = ("knn_val", "knn_train", "knn_train_2x2")
COVERAGE = ("weak16", *STAGE_VARIANTS, *KNN_VARIANTS, *PILOT_VARIANTS)  # the terms mixed with the default
MIX_WEIGHTS = (0.25, 0.5, 0.75)
PAIR_APART = 0.5  # points of top-1 between two methods' means below which their order is seed noise
BETAS = {"random": (1.0, 1.0), "beta(2,1)": (2.0, 1.0), "beta(2,0.5)": (2.0, 0.5), "beta(8.6,0.18)": (8.6, 0.18)}


class OuterObjective:
    """The proxy objective of one variant at one ratio, evaluated on hard subsets given as dataset row ids."""

    def __init__(self, inputs, variant: str, ratio: float, epochs: int, seed: int = 0):
        labels, val = inputs["labels"], np.sort(inputs["val_indices"])
        train = np.setdiff1d(np.arange(labels.size), val)
        f, z = inputs["features"], inputs["logits"]
        if variant == "weak16":
            f = standardised(f)
            f = f @ np.random.default_rng(seed).standard_normal((f.shape[1], 16)).astype(np.float32) / 4.0
        elif variant == "scarce1500":
            train = stratified_subsample(train, labels, 1500, np.random.default_rng(seed))
        elif variant == "augmented":  # views for the rows that train it, V's own features to judge it
            f = inputs["stages"][variant].copy()
            f[val] = inputs["features"][val]
        elif variant in STAGE_VARIANTS:
            f = standardised(inputs["stages"][variant])
        elif variant != "default":
            raise ValueError(f"Unknown variant {variant!r}; choose from {VARIANTS + STAGE_VARIANTS}.")
        self.position = np.full(labels.size, -1)
        self.position[train] = np.arange(train.size)
        u = np.full(train.size, 0.5)  # rank positions only feed the soft policy, which subset_loss does not use
        self.objective = PolicyObjective(
            f[train], z[train], labels[train], u, ratio, f[val], z[val], labels[val], inner_epochs=epochs
        )

    def __call__(self, kept: np.ndarray) -> float:
        rows = self.position[np.asarray(kept)]
        return self.objective.subset_loss(rows[rows >= 0])  # rows of V (or outside the subsample) do not train it


class KnnObjective:
    """A non-parametric proxy: the teacher's soft labels (tau 4) of query rows predicted by the mean of their `k`
    nearest kept rows' (cosine on standardised features), scored by KL(teacher || prediction) over the queries.

    Unlike a linear head, it runs short where kept rows are missing around a query. `knn_val` asks V, the slice the
    influence ranks were scored on (so leaning subsets sit next to it by construction); `knn_train` and
    `knn_train_2x2` ask a fixed class-stratified sample of the other training rows, each left out of its own
    neighbours: how well the kept rows stand in for the whole training split, in the penultimate features and in the
    teacher's middle stage pooled to 2 x 2 (`layer2_2x2`), a view that does not linearly hold the logits.
    """

    def __init__(self, inputs, variant: str, k: int = 20, tau: float = 4.0, queries: int = 5000, seed: int = 0):
        labels, val = inputs["labels"], np.sort(inputs["val_indices"])
        f = inputs["stages"]["layer2_2x2"] if variant == "knn_train_2x2" else inputs["features"]
        f = standardised(np.asarray(f, dtype=np.float32))
        self.features = torch.from_numpy(f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12))
        self.soft = torch.softmax(torch.tensor(np.asarray(inputs["logits"], dtype=np.float32)) / tau, dim=1)
        self.train = np.setdiff1d(np.arange(labels.size), val)
        if variant == "knn_val":
            self.queries = val
        elif variant in ("knn_train", "knn_train_2x2"):
            self.queries = stratified_subsample(self.train, labels, queries, np.random.default_rng(seed))
        else:
            raise ValueError(f"Unknown k-NN variant {variant!r}; choose from {KNN_VARIANTS}.")
        self.k = k

    def __call__(self, kept: np.ndarray) -> float:
        kept = np.intersect1d(np.asarray(kept), self.train)  # V never stands in for anything
        cand, soft = self.features[kept], self.soft[kept]
        total = 0.0
        for start in range(0, self.queries.size, 1000):
            q = self.queries[start : start + 1000]
            sims = self.features[q] @ cand.T
            own = np.searchsorted(kept, q)  # a query that is kept is not its own neighbour
            hit = (own < kept.size) & (kept[np.minimum(own, kept.size - 1)] == q)
            sims[torch.from_numpy(np.flatnonzero(hit)), torch.from_numpy(own[hit])] = -np.inf
            near = sims.topk(self.k, dim=1).indices
            pred = soft[near].mean(1)
            target = self.soft[q]
            total += float((target * (target.clamp_min(1e-12).log() - pred.clamp_min(1e-12).log())).sum())
        return total / self.queries.size


def outer_objective(inputs, variant: str, ratio: float, epochs: int):
    """The variant's objective for subsets given as dataset row ids (a k-NN one needs neither ratio nor budget)."""
    return KnnObjective(inputs, variant) if variant in KNN_VARIANTS else OuterObjective(inputs, variant, ratio, epochs)


class Pilot:
    """A short run of the sweep's student on a cell's kept rows (V left out), judged on V.

    The sweep's student, optimiser and one-cycle schedule (`kd_sweep.student_optimizer`), squeezed into `steps`
    steps, on the kept rows pad-crop-flipped, with the sweep's KD loss against the teacher's logits of the
    un-augmented rows (the teacher pass's), so that no teacher forward runs. Every cell starts from the same weights
    and draws its batch order and crops from the same seed (the draws still depend on how many rows are kept).
    """

    def __init__(self, inputs, pixels: np.ndarray, steps: int, profile: str = "cpu", student: str = "cifar10_resnet20"):
        self.labels, self.logits = inputs["labels"], inputs["logits"]
        self.val = np.sort(inputs["val_indices"])
        if pixels.shape[0] != self.labels.size:
            raise ValueError(f"{pixels.shape[0]} decoded images for {self.labels.size} teacher-pass rows.")
        self.pixels, self.steps, self.cfg, self.student = pixels, steps, kd_sweep.PROFILES[profile], student
        self.augment = train_transform(timm.create_model(student, num_classes=int(self.labels.max()) + 1))

    def _batch(self, rows: np.ndarray, rng=None) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(self.pixels[rows]))
        if rng is None:
            return self.augment.normalize(x)
        offsets = rng.integers(0, 2 * self.augment.padding + 1, (rows.size, 2))
        return self.augment.apply(x, offsets, rng.random(rows.size) < 0.5)

    def __call__(self, kept: np.ndarray) -> Dict[str, float]:
        rows = np.setdiff1d(np.asarray(kept), self.val)
        if rows.size == 0:
            raise ValueError("Every kept row is in the validation slice V: nothing to train the pilot on.")
        batch = self.cfg["batch_size"]
        torch.manual_seed(0)
        model = timm.create_model(self.student, num_classes=int(self.labels.max()) + 1)
        opt, schedule = kd_sweep.student_optimizer(model, self.cfg, self.steps)
        rng = np.random.default_rng(0)
        order = np.concatenate([rng.permutation(rows) for _ in range(math.ceil(self.steps * batch / rows.size))])
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg["precision"] == "bf16")
        model.train()
        for step in range(self.steps):
            idx = order[step * batch : (step + 1) * batch]
            with autocast:
                out = model(self._batch(idx, rng))
            loss, _, _ = kd_loss(out.float(), torch.from_numpy(self.logits[idx]), torch.from_numpy(self.labels[idx]),
                                 alpha=kd_sweep.ALPHA, temperature=kd_sweep.TAU)  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        model.eval()
        ce, wrong = 0.0, 0
        with torch.no_grad(), autocast:
            for start in range(0, self.val.size, 1000):
                idx = self.val[start : start + 1000]
                out, y = model(self._batch(idx)).float(), torch.from_numpy(self.labels[idx])
                ce += float(torch.nn.functional.cross_entropy(out, y, reduction="sum"))
                wrong += int((out.argmax(-1) != y).sum())
        return {"pilot": ce / self.val.size, "pilot_err": wrong / self.val.size}


def selection_bias_check(inputs, epochs: int, ratios=(0.3, 0.5, 0.7), seeds=(0, 1)) -> Dict:
    """Influence scored on half of V; Beta policies' subsets evaluated on that half and on the other."""
    f, z, labels, val = inputs["features"], inputs["logits"], inputs["labels"], np.sort(inputs["val_indices"])
    shuffled = np.random.default_rng(0).permutation(val)
    halves = {"scored": np.sort(shuffled[: val.size // 2]), "held_out": np.sort(shuffled[val.size // 2 :])}
    u = rank_positions(np.asarray(influence_scores(f, z, labels, halves["scored"]).scores), labels)
    agreement = float(np.corrcoef(u, rank_positions(inputs["scores"], labels))[0, 1])
    print(f"selection bias: rank positions scored on half of V vs on all of V, Pearson {agreement:.3f}", flush=True)
    train = np.setdiff1d(np.arange(labels.size), val)
    position = np.full(labels.size, -1)
    position[train] = np.arange(train.size)
    out = []
    for ratio in ratios:
        for half, rows_v in halves.items():
            obj = PolicyObjective(f[train], z[train], labels[train], u[train], ratio, f[rows_v], z[rows_v],
                                  labels[rows_v], inner_epochs=epochs)  # fmt: skip
            losses = {}
            for name, (a, b) in BETAS.items():
                kept = [position[BetaPolicy(a, b).select(u, ratio, labels, seed=s)] for s in seeds]
                losses[name] = float(np.mean([obj.subset_loss(k[k >= 0]) for k in kept]))
            out.append({"ratio": ratio, "evaluated_on": half, "losses": losses})
            print(f"selection bias: ratio {ratio} evaluated on the {half:8s} half of V: "
                  + " | ".join(f"{k} {v:.5f}" for k, v in losses.items()), flush=True)  # fmt: skip
    return {"rank_positions_pearson_half_vs_all": agreement, "losses": out}


def pair_agreement(means: Dict[str, Dict[str, float]], apart: float = PAIR_APART) -> Dict:
    """Among the pairs of methods whose students' means differ by more than `apart` points, how many the
    objective orders as the students do (lower objective = higher top-1); closer pairs are seed noise."""
    names = sorted(means)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]
             if abs(means[a]["test_top1"] - means[b]["test_top1"]) > apart]  # fmt: skip
    agree = sum(
        (means[a]["test_top1"] - means[b]["test_top1"]) * (means[b]["proxy_loss"] - means[a]["proxy_loss"]) > 0
        for a, b in pairs
    )
    return {"pairs": len(pairs), "agree": int(agree), "share": agree / len(pairs) if pairs else None}


def mixed(summary: List[Dict], weight: float, coverage: str = "weak16") -> List[Dict]:
    """`weight * default + (1 - weight) * coverage`, each relative to random's proxy loss at that ratio."""
    by = {(s["variant"], s["ratio"]): s["method_means"] for s in summary}
    out = []
    for ratio in sorted({s["ratio"] for s in summary}):
        if ("default", ratio) not in by or (coverage, ratio) not in by:
            continue
        d, w = by[("default", ratio)], by[(coverage, ratio)]
        if "random" not in d.keys() & w.keys():  # each term is relative to random's loss: no mix without it
            continue
        means = {
            m: {"proxy_loss": weight * d[m]["proxy_loss"] / d["random"]["proxy_loss"]
                + (1 - weight) * w[m]["proxy_loss"] / w["random"]["proxy_loss"], "test_top1": d[m]["test_top1"]}
            for m in sorted(d.keys() & w.keys())
        }  # fmt: skip
        rho = _spearman([-v["proxy_loss"] for v in means.values()], [v["test_top1"] for v in means.values()])
        name = f"mix@{weight:g}" if coverage == "weak16" else f"mix@{weight:g}+{coverage}"
        out.append({"variant": name, "ratio": ratio, "methods": len(means), "spearman_methods": rho,
                    "method_means": means, "pair_agreement": pair_agreement(means)})  # fmt: skip
    return out


def summarise(cells: List[Dict], variant: str, scored_by: Optional[str] = None) -> List[Dict]:
    """Per ratio: Spearman of (-proxy loss) with top-1 over the cells the variant scored and over method means.

    A method's student mean is over all its cells; its objective mean over those the variant (and `scored_by`, when
    given) scored: all, or the seeds a costly variant was asked for. So the students' order is the same for every
    variant, and a mix takes both its terms from the same cells."""
    scored = [dict(c, proxy_loss=c["proxy_loss"][variant]) for c in cells
              if variant in c["proxy_loss"] and (scored_by is None or scored_by in c["proxy_loss"])]  # fmt: skip
    out = []
    for ratio in sorted({c["ratio"] for c in scored}):
        rows = [c for c in scored if c["ratio"] == ratio]
        methods = sorted({c["method"] for c in rows})
        means = {
            m: (np.mean([c["proxy_loss"] for c in rows if c["method"] == m]),
                np.mean([c["test_top1"] for c in cells if c["ratio"] == ratio and c["method"] == m]))
            for m in methods
        }  # fmt: skip
        out.append({
            "variant": variant,
            "ratio": ratio,
            "cells": len(rows),
            "spearman_cells": _spearman([-c["proxy_loss"] for c in rows], [c["test_top1"] for c in rows]),
            "methods": len(methods),
            "spearman_methods": _spearman([-v[0] for v in means.values()], [v[1] for v in means.values()]),
            "method_means": {m: {"proxy_loss": float(v[0]), "test_top1": float(v[1])} for m, v in means.items()},
        })  # fmt: skip
        out[-1]["pair_agreement"] = pair_agreement(out[-1]["method_means"])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=sorted(kd_sweep.PROFILES))
    parser.add_argument("--allow_teacher_pass", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a running sweep owns the rest)")
    parser.add_argument(
        "--summarise", action="store_true", help="recompute the summaries from the cells already in the JSON only"
    )
    parser.add_argument("--pilot_steps", type=int, default=300, help="steps of the `pilot` variant's student run")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="with --variants or --setting: score only the cells of these seeds"
    )
    parser.add_argument("--ratios", type=float, nargs="+", help="with --setting: score only the cells of these ratios")
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS + STAGE_VARIANTS + KNN_VARIANTS + PILOT_VARIANTS[:1],
        help="score only these variants and add them to the saved cells (same method, ratio and seed); default: "
        f"{' '.join(VARIANTS)} on every cell, written afresh",
    )  # fmt: skip
    parser.add_argument(
        "--setting", default="cifar10", choices=sorted(kd_sweep.SETTINGS),
        help="judge the default and stage-view objectives on this setting's cells (default: CIFAR-10, every variant)",
    )  # fmt: skip
    parser.add_argument(
        "--across_settings", action="store_true",
        help="tabulate the saved judgements of every setting on the methods they all measured (no proxy training)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.across_settings:
        return across_settings(args.profile)
    if args.setting != "cifar10":
        variants = tuple(args.variants) if args.variants else SETTING_VARIANTS
        return judge_setting(kd_sweep.SETTINGS[args.setting], args.profile, args.ratios, args.seeds, variants)
    path = kd_sweep.RESULTS / f"proxy_vs_students_{args.profile}.json"
    saved = json.loads(path.read_text()) if path.exists() else None
    if args.summarise:
        return write(saved["cells"], saved["selection_bias"], saved["inner_epochs"], path)
    if args.variants and saved is None:
        sys.exit(f"--variants adds to {path}, which does not exist: run without it first.")
    variants = tuple(args.variants or VARIANTS)

    results = [
        r for r in comparable(kd_sweep.read_results(kd_sweep.RESULTS / f"kd_sweep_{args.profile}.jsonl"))[0]
        if r.get("setting", "cifar10") == "cifar10" and r["ratio"] > 0 and r["method"] not in ("full", "full-nokd")
    ]  # fmt: skip
    if args.variants:  # only the cells already scored, so that every variant sees the same cells
        scored = {(c["method"], c["ratio"], c["seed"]) for c in saved["cells"]}
        results = [r for r in results if (r["method"], r["ratio"], r["seed"]) in scored]
    if args.seeds:
        if not args.variants:
            sys.exit("--seeds adds a variant to some cells: give --variants too.")
        results = [r for r in results if r["seed"] in args.seeds]
    if not results:
        sys.exit(f"No finished pruning cells in kd_sweep_{args.profile}.jsonl yet.")
    inputs, _ = load_inputs(args.allow_teacher_pass)
    if set(variants) & {*STAGE_VARIANTS, "knn_train_2x2"}:
        inputs["stages"] = load_stages(inputs)
    epochs = kd_sweep.PROFILES[args.profile]["epochs"]
    ratios = sorted({r["ratio"] for r in results})
    proxies = [v for v in variants if v not in PILOT_VARIANTS]
    objectives = {(v, ratio): outer_objective(inputs, v, ratio, epochs) for v in proxies for ratio in ratios}
    pilot = Pilot(inputs, load_pixels(inputs), args.pilot_steps, args.profile) if "pilot" in variants else None
    pruning = kd_sweep.Pruning(kd_sweep.load_teacher())

    cells = score_cells(results, pruning, objectives, pilot)
    if args.variants:
        new = {(c["method"], c["ratio"], c["seed"]): c for c in cells}
        for c in saved["cells"]:
            scored = new.get((c["method"], c["ratio"], c["seed"]))
            if scored is not None:
                c["proxy_loss"].update(scored["proxy_loss"])
                c.update({k: v for k, v in scored.items() if k.startswith("pilot_")})
        return write(saved["cells"], saved["selection_bias"], epochs, path)
    bias = selection_bias_check(inputs, epochs)
    write(cells, bias, epochs, path)


def score_cells(
    results: List[Dict], pruning, objectives: Dict, pilot: Optional[Pilot] = None, on_cell: Optional[Callable] = None
) -> List[Dict]:
    """Each finished cell's kept rows rebuilt as the sweep built them, and every objective's loss on them; `on_cell`
    gets the cells scored so far after each one, so that a long run can save as it goes."""
    proxies = sorted({v for v, _ in objectives})
    cells = []
    for r in sorted(results, key=lambda r: (r["ratio"], r["method"], r["seed"])):
        t0 = time.perf_counter()
        try:
            kept = kept_rows(pruning, r)
        except TypeError as err:  # a setting since removed from PrunerConfig (see the sweep's queue comments)
            print(f"{kd_sweep.cell_key(r):45s} skipped: {err}", flush=True)
            continue
        if len(kept) != r["kept"]:
            raise RuntimeError(f"cell {kd_sweep.cell_key(r)}: rebuilt {len(kept)} rows, the sweep kept {r['kept']}.")
        losses = {v: objectives[(v, r["ratio"])](kept) for v in proxies}
        extra = {}
        if pilot is not None:
            t1 = time.perf_counter()
            losses.update(pilot(kept))
            extra = {"pilot_steps": pilot.steps, "pilot_seconds": time.perf_counter() - t1}
        cells.append({
            "method": r["method"], "ratio": r["ratio"], "seed": r["seed"], "test_top1": r["test_top1"],
            "proxy_loss": losses, "seconds": time.perf_counter() - t0, **extra,
        })  # fmt: skip
        print(f"{kd_sweep.cell_key(r):45s} student {r['test_top1']:.2f} %  proxy loss "
              + ", ".join(f"{v} {x:.5f}" for v, x in losses.items()), flush=True)  # fmt: skip
        if on_cell is not None:
            on_cell(cells)
    return cells


def setting_inputs(setting: "kd_sweep.Setting", pruning) -> Dict[str, np.ndarray]:
    """The teacher pass of a setting with the product's stage view, and the validation slice its pruner holds out.

    The view comes from the pass `policy_coverage_view="stage"` asks for (cached under its own key); its features must
    be those of the sweep's own pass, which `pruning` (the setting's `kd_sweep.Pruning`) scored the cells from."""
    from hf_ifbeta import DatasetPruner

    if "influence" not in pruning.results:
        pruning.select("influence", 0.5, 0)  # the setting's own teacher pass, as the sweep's cells were scored
    scored = pruning.results["influence"]
    pruner = DatasetPruner(
        pruning.teacher, image_column=setting.image_column, label_column=setting.label_column, method="random",
        teacher_precision=setting.teacher_precision, policy_objective="kd+coverage", policy_coverage_view="stage",
    )  # fmt: skip
    out, base = pruner.teacher_outputs(pruning.train), scored._outputs
    features = np.asarray(out.features, dtype=np.float32)
    if not np.array_equal(np.asarray(out.labels), np.asarray(base.labels)):
        raise ValueError(f"Setting {setting.name!r}: the stage-view pass holds other labels than the sweep's pass.")
    gap = np.abs(features - np.asarray(base.features, dtype=np.float32)).max()
    if gap > 1e-3 * np.abs(features).max():
        raise ValueError(f"Setting {setting.name!r}: the stage-view pass's features differ from the sweep's by {gap}.")
    return {
        "features": features, "logits": np.asarray(out.logits, dtype=np.float32),
        "labels": np.asarray(out.labels, dtype=np.int64), "val_indices": np.asarray(scored.val_indices, dtype=np.int64),
        "stages": {"layer2_2x2": np.asarray(out.coverage, dtype=np.float32)},
    }  # fmt: skip


SETTING_VARIANTS = ("default", "layer2_2x2")  # what a setting's cells are judged by unless asked for more


def judge_setting(
    setting: "kd_sweep.Setting", profile: str, ratios=None, seeds=None, variants=SETTING_VARIANTS
) -> None:
    """The default objective, the stage view (or `variants`) and their mixes on one setting's finished pruning cells.

    Resumes: a cell keeps the losses its file already holds, and only the `variants` it lacks are scored now, on
    `ratios` / `seeds` (all when None), so a setting whose proxies are dear (Tiny-ImageNet's 202-class heads on all
    its rows) can be spread over runs. Cells not scored stay in the file without losses, so that the students' means
    are over every seed."""
    results = [
        r for r in comparable(kd_sweep.read_results(kd_sweep.RESULTS / f"kd_sweep_{profile}.jsonl"))[0]
        if r.get("setting", "cifar10") == setting.name and r["ratio"] > 0 and r["method"] not in ("full", "full-nokd")
    ]  # fmt: skip
    if not results:
        sys.exit(f"No finished pruning cells of setting {setting.name!r} in kd_sweep_{profile}.jsonl yet.")
    path = kd_sweep.RESULTS / f"proxy_vs_students_{profile}_{setting.name}.json"
    key = lambda c: (c["method"], c["ratio"], c["seed"])  # noqa: E731

    def saved() -> Dict:
        return {key(c): c for c in json.loads(path.read_text())["cells"] if c["proxy_loss"]} if path.exists() else {}

    epochs = setting.epochs(profile)

    def save(scored: List[Dict]) -> None:
        done = saved()  # read again: another run may have scored other ratios
        for c in scored:
            before = done.get(key(c), {}).get("proxy_loss", {})
            done[key(c)] = {**c, "proxy_loss": {**before, **c["proxy_loss"]}}
        # the student from the sweep's row as it stands: a cell rerun in another precision keeps its proxy losses
        # (they depend on the kept rows only) and takes the rerun's accuracy
        cells = [{"proxy_loss": {}, **done.get(key(r), {}), **{k: r[k] for k in ("method", "ratio", "seed", "test_top1")}}
                 for r in sorted(results, key=lambda r: (r["ratio"], r["method"], r["seed"]))]  # fmt: skip
        write(cells, None, epochs, path, setting.name)

    scored_before = saved()
    lacking = lambda r: set(variants) - set(scored_before.get(key(r), {}).get("proxy_loss", {}))  # noqa: E731
    todo = [r for r in results if lacking(r) and (ratios is None or r["ratio"] in ratios)
            and (seeds is None or r["seed"] in seeds)]  # fmt: skip
    if not todo:
        return save([])
    pruning = kd_sweep.Context().pruning(setting)
    inputs = setting_inputs(setting, pruning)
    objectives = {
        (v, ratio): outer_objective(inputs, v, ratio, epochs)
        for v in sorted(set().union(*(lacking(r) for r in todo))) for ratio in sorted({r["ratio"] for r in todo})
    }  # fmt: skip
    for need in sorted({tuple(sorted(lacking(r))) for r in todo}):  # each cell scored by what it lacks only
        cells = [r for r in todo if tuple(sorted(lacking(r))) == need]
        score_cells(cells, pruning, {k: o for k, o in objectives.items() if k[0] in need}, on_cell=save)


SHARED_METHODS = ("random", "if-beta", "influence")  # what every setting of the sweep measured
BY_SETTING = (
    "default", "layer2_2x2", "mix@0.5+layer2_2x2", "mix@0.25+layer2_2x2", "knn_train", "knn_train_2x2",
    "mix@0.75+knn_train_2x2",
)  # fmt: skip


def across_settings(profile: str) -> List[Dict]:
    """The saved judgements of every setting (CIFAR-10's and `--setting` runs'), on the methods all of them measured:
    per setting and ratio, the students' pairs further apart than seed noise and how many each objective orders
    right."""
    rows = []
    for path in sorted(kd_sweep.RESULTS.glob(f"proxy_vs_students_{profile}*.json")):
        saved = json.loads(path.read_text())
        cells = [c for c in saved["cells"] if c["method"] in SHARED_METHODS]
        present = [v for v in ("default", "layer2_2x2", *KNN_VARIANTS) if any(v in c["proxy_loss"] for c in cells)]
        summary = [s for v in present for s in summarise(cells, v)]
        summary += [s for w in (0.5, 0.25) for s in mixed(summary, w, "layer2_2x2")]
        summary += mixed(summary, 0.75, "knn_train_2x2")
        for ratio in sorted({s["ratio"] for s in summary}):
            at = {s["variant"]: s for s in summary if s["ratio"] == ratio}
            students = {m: v["test_top1"] for m, v in at["default"]["method_means"].items()}
            rows.append({
                "setting": saved.get("setting", "cifar10"), "epochs": saved["inner_epochs"], "ratio": ratio,
                "students": students, "pairs": at["default"]["pair_agreement"]["pairs"],
                "agree": {v: at[v]["pair_agreement"]["agree"] for v in BY_SETTING if v in at},
            })  # fmt: skip
    print("\n| setting | ratio | students: " + " / ".join(SHARED_METHODS) + " | pairs > 0.5 apart | "
          + " | ".join(BY_SETTING) + " |")  # fmt: skip
    print("| --- " * (4 + len(BY_SETTING)) + "|")
    for r in rows:
        students = " / ".join(f"{r['students'][m]:.2f}" if m in r["students"] else "n/a" for m in SHARED_METHODS)
        agree = " | ".join(str(r["agree"].get(v, "n/a")) for v in BY_SETTING)
        print(f"| {r['setting']} | {r['ratio']} | {students} | {r['pairs']} | {agree} |")
    out = kd_sweep.RESULTS / f"proxy_objectives_by_setting_{profile}.json"
    out.write_text(json.dumps({"methods": SHARED_METHODS, "pair_apart": PAIR_APART, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return rows


KEPT = kd_sweep.CACHE / "kept_rows"


def kept_rows(pruning, row: Dict) -> np.ndarray:
    """The cell's kept rows as the sweep selected them, kept under `benchmarks/cache/kept_rows/` (outside git) by
    cell and git tree of `hf_ifbeta/` (not cached while it has uncommitted changes), so that scoring another
    variant does not learn every policy again."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    # rows of a learned-policy label also hang on a results file: never kept
    dirty = bool(git("status", "--porcelain", "--", "hf_ifbeta")) or "policy_learned_by" in row["method"]
    path = KEPT / f"{kd_sweep.cell_key(row).replace('|', '__')}.{git('rev-parse', '--short', 'HEAD:hf_ifbeta')}.npy"
    if path.exists() and not dirty:
        return np.load(path)
    kept = pruning.select(row["method"], row["ratio"], row["seed"]).indices
    if not dirty:
        KEPT.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: np.save(f, np.asarray(kept, dtype=np.int64)))
    return kept


def load_stages(inputs) -> Dict[str, np.ndarray]:
    """The earlier-stage features of `stage_features.py`, checked to be the same rows as the teacher pass's."""
    from stage_features import load

    saved = load()
    if not np.array_equal(saved["labels"], inputs["labels"]):
        raise ValueError("stage_features_cifar10.npz holds the rows in another order than the teacher pass.")
    gap = np.abs(saved["layer3"] - inputs["features"]).max()
    if gap > 1e-3 * np.abs(inputs["features"]).max():
        raise ValueError(f"stage_features_cifar10.npz's penultimate features differ from the teacher pass's by {gap}.")
    return {v: saved[v] for v in STAGE_VARIANTS}


def load_pixels(inputs) -> np.ndarray:
    """The CIFAR-10 training images as uint8 (n, 3, 32, 32), decoded once (`decoded_images`, the sweep's cache),
    checked to be the teacher pass's rows."""
    from hf_ifbeta.decoded import decoded_images

    setting = kd_sweep.SETTINGS["cifar10"]
    train = kd_sweep.load_parquet({"train": setting.train_file, "test": setting.test_file})["train"]
    if not np.array_equal(np.asarray(train[setting.label_column]), inputs["labels"]):
        raise ValueError("The training parquet holds the rows in another order than the teacher pass.")
    return decoded_images(train, setting.image_column, 32)


def write(cells: List[Dict], bias: Optional[Dict], epochs: int, path: Path, setting: str = "cifar10") -> None:
    """Summaries per variant and ratio (plus the default/weak16 mixes), printed and written with the cells."""
    present = [
        v for v in VARIANTS + STAGE_VARIANTS + KNN_VARIANTS + PILOT_VARIANTS if any(v in c["proxy_loss"] for c in cells)
    ]
    summary = [s for v in present for s in summarise(cells, v)]
    for c in (c for c in COVERAGE if c in present and "default" in present):
        terms = summarise(cells, "default", scored_by=c) + [s for s in summary if s["variant"] == c]
        summary += [s for w in MIX_WEIGHTS for s in mixed(terms, w, c)]
    fmt = lambda x: "n/a" if x is None else f"{x:+.2f}"  # noqa: E731
    print("\n| outer objective | ratio | methods | rho over method means | pairs > 0.5 apart ordered as the students |")
    print("| --- | --- | --- | --- | --- |")
    for s in summary:
        pa = s["pair_agreement"]
        print(f"| {s['variant']} | {s['ratio']} | {s['methods']} | {fmt(s.get('spearman_methods'))} | "
              f"{pa['agree']} / {pa['pairs']} |")  # fmt: skip
    report = {"protocol": __doc__.split("\n\n")[1], "setting": setting, "inner_epochs": epochs, "variants": present,
              "cells": cells, "per_ratio": summary, "selection_bias": bias}  # fmt: skip
    text = json.dumps(to_jsonable(report), indent=1) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))  # rewritten after every cell of a long run
    print(f"wrote {path}")

if __name__ == "__main__":
    main()
