"""benchmarks/report.py: the sweep summary, per-setting tables with paired intervals, and the criterion, on hand-made cells."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location("report", Path(__file__).resolve().parents[1] / "benchmarks" / "report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def cell(method, ratio, seed, top1):
    return {"method": method, "ratio": ratio, "seed": seed, "test_top1": top1, "kd_time_s": 1.0,
            "prune_timings": {"scoring_s": 2.0, "selection_s": 1.0}, "policy": None}


def test_summary_pairs_seeds_and_verdict_applies_the_criterion():
    rows = []
    for seed, base in ((0, 80.0), (1, 81.0)):
        for ratio, shift in ((0.3, 0.0), (0.5, 0.0), (0.7, 0.0)):
            rows.append(cell("random", ratio, seed, base + shift))
        rows += [cell("if-beta", 0.3, seed, base + 0.2), cell("if-beta", 0.5, seed, base + 1.0),
                 cell("if-beta", 0.7, seed, base + 0.6)]
        rows += [cell("el2n", 0.3, seed, base + 2.0), cell("el2n", 0.5, seed, base - 0.1), cell("el2n", 0.7, seed, base + 2.0)]
    rows.append(cell("influence", 0.7, 0, 90.0))
    summary = report.summarise(rows)
    ifb = next(s for s in summary if s["method"] == "if-beta" and s["ratio"] == 0.5)
    assert ifb["top1_mean"] == pytest.approx(81.5) and ifb["paired_diff_vs_random"] == pytest.approx(1.0)
    assert ifb["top1_std"] == pytest.approx(0.7071, abs=1e-4) and ifb["prune_time_s"] == pytest.approx(3.0)

    verdicts = {v["method"]: v for v in report.verdict(summary)}
    assert verdicts["if-beta"]["average_diff"] == pytest.approx(0.6) and verdicts["if-beta"]["meets"]
    assert verdicts["el2n"]["average_diff"] == pytest.approx(3.9 / 3) and not verdicts["el2n"]["meets"]  # -0.1 at 0.5
    assert verdicts["influence"]["average_diff"] is None and not verdicts["influence"]["meets"]  # incomplete
    assert verdicts["if-beta"]["seeds"][0.3] == 2
    text = report.verdict_table(report.verdict(summary))
    assert "| if-beta | +0.20 (2) | +1.00 (2) | +0.60 (2) | +0.60 | +0.60 [+0.60, +0.60] (2) | yes |" in text
    assert "| influence | – | – | +10.00 (1) | incomplete | – | no |" in text  # against random on seed 0 only
    # a third random seed that if-beta lacks does not move if-beta's comparison
    extra = {v["method"]: v for v in report.verdict(report.summarise(rows + [cell("random", 0.7, 2, 70.0)]))}
    assert extra["if-beta"]["diff_vs_random"] == verdicts["if-beta"]["diff_vs_random"]


def test_candidates_for_the_default_are_paired_with_it_seed_by_seed():
    rows = [cell("if-beta", r, s, 80.0 + s) for r in (0.3, 0.5, 0.7) for s in (0, 1, 2)]
    rows += [cell("new", 0.3, s, 80.5 + s) for s in (0, 1)]  # seeds 0 and 1: +0.5 each
    rows += [cell("new", 0.5, s, 79.0 + s + 0.2 * s) for s in (0, 1, 2)]  # -1.0, -0.8, -0.6
    rows += [cell("new", 0.7, 0, 80.1)]
    (v,) = report.versus_default(rows, candidates=("new", "absent"))
    assert v["diff"][0.3]["mean"] == pytest.approx(0.5) and v["diff"][0.3]["seeds"] == [0, 1]
    assert v["diff"][0.5]["mean"] == pytest.approx(-0.8) and v["diff"][0.5]["ci95"][1] < 0
    assert v["diff"][0.7]["ci95"] is None  # one seed: no interval
    assert v["average"] == pytest.approx((0.5 - 0.8 + 0.1) / 3) and not v["level_at_every_ratio"]
    text = report.versus_default_table([v])
    assert "| new | +0.50 [+0.50, +0.50] (2) | -0.80 [" in text and "| +0.10 (1) | -0.07 | no |" in text
    assert report.versus_default_table([]) == ""
    assert v["same_engine"]["diff"][0.3]["mean"] == pytest.approx(0.5)  # every cell here ran on the loop

    # the candidate on the trainer: paired with the trainer's rerun of the base where there is one
    trainer = [dict(c, engine="trainer") for c in rows if c["method"] == "new"]
    rerun = [dict(cell("if-beta", 0.7, 0, 79.9), engine="trainer")]
    base = [c for c in rows if c["method"] != "new"]
    (w,) = report.versus_default(base + trainer, candidates=("new",), engine_check=rerun)
    assert w["diff"][0.7]["mean"] == pytest.approx(0.2) and w["diff"][0.3]["mean"] == pytest.approx(0.5)
    assert w["same_engine"]["diff"] == {0.7: {"mean": pytest.approx(0.2), "ci95": None, "seeds": [0]}}
    assert "| new, same engine only | – | – | +0.20 (1) | incomplete | no |" in report.versus_default_table([w])


def test_ablations_sort_after_the_registry_methods_by_name():
    methods = ["if-beta@l2=0.01", "random", "if-beta@a=1", "if-beta", "dual-beta"]
    assert sorted(methods, key=report._rank) == ["if-beta", "random", "dual-beta", "if-beta@a=1", "if-beta@l2=0.01"]


def test_missing_sweep_names_the_file_and_the_command(tmp_path):
    with pytest.raises(SystemExit, match=r"kd_sweep_nope\.jsonl.*--profile nope"):
        report.main(["--profile", "nope"])
    with pytest.raises(SystemExit, match="absent.jsonl"):
        report.main([str(tmp_path / "absent.jsonl")])


def test_method_cost_keeps_milliseconds_and_whole_seconds():
    assert [report._seconds(x) for x in (0.0052, 4.08, 11.37, 126.4)] == ["0.0052", "4.1", "11", "126"]


def test_paired_interval_is_the_t_interval_of_the_differences():
    mean, low, high = report.paired_interval([0.2, 0.6, 0.4])
    # mean 0.4, sd 0.2, t(0.975, 2) = 4.303: half-width 4.303 * 0.2 / sqrt(3)
    assert mean == pytest.approx(0.4) and high - mean == pytest.approx(4.3027 * 0.2 / 3 ** 0.5, rel=1e-4)
    assert low == pytest.approx(2 * mean - high)
    assert report.paired_interval([0.3]) == (pytest.approx(0.3), None, None)


def test_settings_get_their_own_tables_and_the_summary_pairs_seeds():
    rows = []
    for seed in (0, 1, 2):
        for ratio in (0.3, 0.7):
            rows.append(cell("random", ratio, seed, 80.0 + seed))  # a cell from before settings: CIFAR-10
            noisy = {"setting": "cifar10-noisy20", "engine": "trainer", "flipped_kept_share": 0.5 - 0.1 * seed}
            rows.append({**cell("random", ratio, seed, 70.0 + seed), **noisy})
            rows.append({**cell("if-beta", ratio, seed, 70.5 + seed + 0.1 * seed), **noisy})
    rows.append({**cell("random", 0.3, 0, 80.4), "engine": "trainer"})  # the trainer's rerun of a committed cell
    rows.append({**cell("if-beta@new", 0.3, 0, 81.0), "engine": "trainer"})  # a new method: no loop cell to check
    groups, engine_check = report.split_rows(rows)
    assert set(groups) == {"cifar10", "cifar10-noisy20"} and len(engine_check) == 1
    assert [r["method"] for r in groups["cifar10"] if r.get("engine") == "trainer"] == ["if-beta@new"]
    overview = report.settings_summary({k: report.summarise(v) for k, v in groups.items()})
    mean, low, high, pairs = overview["cifar10-noisy20"][0.7]
    assert mean == pytest.approx(0.6) and pairs == 3 and low < 0.6 < high
    assert "cifar10" not in overview  # no if-beta cells there
    text = report.settings_table(overview)
    assert "| cifar10-noisy20 | +0.60 [" in text and "| – |" in text  # ratio 0.5 missing
    noisy_table = report.table(report.summarise(groups["cifar10-noisy20"]), "cpu")
    assert "flipped kept" in noisy_table and "| 40.0 % |" in noisy_table
    rows.append({**cell("random", 0.3, 3, 90.0), "engine": "trainer"})  # a new seed: not in the loop's spread
    groups, engine_check = report.split_rows(rows)
    check = report.engine_table(groups["cifar10"], engine_check)
    assert "| random | 0.3 | 0 | 80.00 | 80.40 | +0.40 | 1.00 (n = 3) |" in check


def test_trainer_cells_pair_only_with_the_trainers_random():
    loop = [cell("random", 0.7, s, 80.0) for s in (0, 1)] + [cell("random", 0.5, 0, 83.0)]
    trainer = [{**cell("random", 0.7, s, 79.0 + s), "engine": "trainer"} for s in (0, 1)]
    trainer += [{**cell("if-beta@new", r, s, 80.0), "engine": "trainer"} for r in (0.5, 0.7) for s in (0, 1)]
    groups, engine_check = report.split_rows(loop + trainer)
    summary = report.trainer_only(groups["cifar10"], engine_check)
    by = {(s["method"], s["ratio"]): s for s in summary}
    assert set(by) == {("random", 0.7), ("if-beta@new", 0.7)}  # no trainer random at 0.5: left out
    new = by[("if-beta@new", 0.7)]
    assert new["paired_diff_vs_random"] == pytest.approx(0.5) and new["paired_seeds"] == 2  # +1.0 and 0.0


def test_a_setting_names_its_teacher_weights_when_they_are_not_the_architectures_own():
    spec = {"train_file": "cache/tiny_imagenet/train.parquet", "teacher": "cifar10_resnet56", "student": "cifar10_resnet20",
            "teacher_checkpoint": "models/tiny_imagenet_resnet56.pt", "label_noise": 0.0}  # fmt: skip
    described = report._describe({"setting_spec": spec, "epochs": 15})
    assert described == "tiny_imagenet, teacher tiny_imagenet_resnet56 (cifar10_resnet56 architecture), student cifar10_resnet20, 15 epochs"
    spec = {**spec, "teacher": "cifar10_resnet20", "teacher_checkpoint": "shared/models/cifar10_resnet20.pt", "label_noise": 0.2}
    assert ", teacher cifar10_resnet20, student" in report._describe({"setting_spec": spec, "epochs": 15})
    assert "alpha" not in report._describe({"setting_spec": {**spec, "alpha": 0.9}, "epochs": 15})  # the protocol's
    assert report._describe({"setting_spec": {**spec, "alpha": 1.0}, "epochs": 15}).endswith("flipped, KD weight alpha 1")


def test_a_setting_whose_cells_used_different_hessian_solvers_names_each_cells_solver():
    old = cell("if-beta", 0.5, 0, 40.0)  # before the field existed: ran exact
    rows = [old, {**cell("if-beta", 0.5, 1, 40.2), "hessian": "kfac"}, {**cell("random", 0.5, 0, 39.0), "hessian": None}]
    summary = report.summarise(rows)
    assert [s["hessians"] for s in summary] == [{0: "exact", 1: "kfac"}, None]
    text = report.table(summary, "cpu")
    assert text.endswith("if-beta 0.5: seed 0 exact, seed 1 kfac. Cells from before the solver was recorded ran exact.")
    same = report.summarise([{**old, "hessian": "kfac"}, {**cell("if-beta", 0.5, 1, 40.2), "hessian": "kfac"}])
    assert "Hessian solver" not in report.table(same, "cpu")  # one solver throughout: nothing to say


def test_a_method_pairs_with_random_only_in_the_precision_its_seeds_random_ran_in():
    e30 = {"setting": "cifar10-e30", "engine": "trainer"}
    old = {**cell("if-beta", 0.3, 0, 87.2), **e30, "precision": "bf16"}  # its seed's random never ran in bf16
    rows = [old, {**cell("if-beta", 0.7, 0, 84.0), **e30}, {**cell("random", 0.7, 0, 83.6), **e30}]  # no field: bf16
    for seed, base in ((0, 86.0), (1, 86.5)):
        fp32 = {**e30, "precision": "fp32"}
        rows += [{**cell("random", 0.3, seed, base), **fp32}, {**cell("if-beta", 0.3, seed, base + 0.4), **fp32}]
    rows.append({**cell("full", 0.0, 0, 88.0), **e30, "precision": "fp32"})  # no random to pair with: kept
    kept, left_out = report.comparable(rows)
    assert left_out == [old] and len(kept) == len(rows) - 1
    summary = report.summarise(kept)
    ifb = {s["ratio"]: s for s in summary if s["method"] == "if-beta"}
    assert ifb[0.3]["paired_diff_vs_random"] == pytest.approx(0.4) and ifb[0.3]["paired_seeds"] == 2
    assert ifb[0.3]["top1_mean"] == pytest.approx(86.65) and ifb[0.3]["precisions"] == ["fp32"]
    assert ifb[0.7]["paired_diff_vs_random"] == pytest.approx(0.4) and ifb[0.7]["precisions"] == ["bf16"]
    text = report.table(summary, "cpu", left_out=left_out)
    assert "except (a seed's methods always in one precision) full 0.0: fp32; if-beta 0.3: fp32; random 0.3: fp32." in text
    assert "Left out, since their seed's cells at that ratio ran in another precision (`comparable`): if-beta 0.3 seed 0 (bf16)." in text
    # where random ran in both, the precision more of the seed's cells ran in wins, bf16 on a tie
    both = [{**cell("random", 0.5, 0, 80.0), "precision": "bf16"}, {**cell("random", 0.5, 0, 80.3), "precision": "fp32"}]
    assert [r["precision"] for r in report.comparable(both)[0]] == ["bf16"]
    more = both + [{**cell("if-beta", 0.5, 0, 81.0), "precision": "fp32"}]
    assert [r["precision"] for r in report.comparable(more)[0]] == ["fp32", "fp32"]
    assert report._precision_note(report.summarise(report.comparable(rows[1:3])[0])) == ""  # all bf16: no note
    # a method rerun by another engine counts once: one bf16 method against two fp32 ones
    rerun = [{**cell("random", 0.5, 1, 80.0), "engine": e} for e in ("loop", "trainer")]
    fp32 = [{**cell(m, 0.5, 1, 80.2), "precision": "fp32"} for m in ("random", "if-beta")]
    assert report.comparable(rerun + fp32) == (fp32, rerun)


def test_the_average_over_ratios_pairs_by_seed():
    # seed 2 lacks ratio 0.7, so it is left out; each seed's mean over the ratios is one difference
    joint = report.joint_average({0.3: {0: 1.0, 1: 0.0, 2: 5.0}, 0.7: {0: 0.0, 1: -1.0}})
    assert joint["seeds"] == [0, 1] and joint["mean"] == pytest.approx(0.0)
    half = 12.706 * np.std([0.5, -0.5], ddof=1) / np.sqrt(2)  # t(0.975, 1 df)
    assert joint["ci95"] == pytest.approx([-half, half], abs=1e-3)
    assert report.joint_average({0.3: {0: 1.0}, 0.7: {}}) is None and report.joint_average({}) is None
    assert report.joint_average({0.3: {0: 1.0}, 0.7: {1: 1.0}}) is None  # no seed has both
    assert report.joint_average({0.3: {0: 1.0}, 0.7: {0: 0.0}}) == {"mean": 0.5, "ci95": None, "seeds": [0]}
    # the per-ratio intervals of the same cells are wider: the ratios' noise partly cancels within a seed
    summary = report.summarise([cell(m, r, s, 80.0 + d) for s, shifts in ((0, (0.0, 0.0)), (1, (1.0, 0.0)), (2, (0.0, 1.0)))
                                for r, d0 in zip((0.3, 0.7), shifts) for m, d in (("random", 0.0), ("if-beta", d0))])
    verdict = next(v for v in report.verdict(summary, ratios=(0.3, 0.7)) if v["method"] == "if-beta")
    assert verdict["average_by_seed"]["seeds"] == [0, 1, 2] and verdict["average_by_seed"]["mean"] == pytest.approx(1 / 3)
    assert verdict["average_by_seed"]["ci95"][1] - verdict["average_by_seed"]["ci95"][0] == pytest.approx(
        2 * 4.303 * np.std([0.0, 0.5, 0.5], ddof=1) / np.sqrt(3), abs=1e-3)
    per_ratio = next(x for x in summary if x["method"] == "if-beta" and x["ratio"] == 0.3)["paired_ci95"]
    assert verdict["average_by_seed"]["ci95"][1] - verdict["average_by_seed"]["ci95"][0] < per_ratio[1] - per_ratio[0]


def test_the_beta_family_pairs_within_one_engine_and_picks_the_best_per_ratio():
    assert report.in_beta_family("if-beta") and report.in_beta_family("if-beta@policy_a=1,policy_b=2")
    assert report.in_beta_family('if-beta@policy_learned_by="stage2x2"')
    assert not report.in_beta_family("if-beta@l2=0.01,policy_max_ab=50") and not report.in_beta_family("influence")
    trainer = lambda c, a=None, b=None: {**c, "engine": "trainer", "policy": {"a": a, "b": b} if a else None}  # noqa: E731
    rows = [cell("random", 0.7, s, 80.0) for s in (0, 1)] + [trainer(cell("random", 0.7, s, 81.0)) for s in (0, 1)]
    rows += [{**cell("if-beta", 0.7, 1, 80.5), "policy": {"a": 2.0, "b": 0.5}}]  # the loop's pair on seed 1: +0.5
    rows += [trainer(cell("if-beta", 0.7, 0, 81.1), 2.0, 0.5), {**cell("if-beta", 0.7, 0, 90.0), "policy": {"a": 2.0, "b": 0.5}}]
    rows += [trainer(cell("if-beta@policy_a=1,policy_b=2", 0.7, s, 80.0), 1.0, 2.0) for s in (0, 1)]
    rows += [trainer(cell("if-beta@l2=0.01", 0.7, 0, 99.0), 2.0, 0.5)]  # another ranking: not in the family
    rows += [cell("random", 0.3, 0, 85.0), trainer(cell("if-beta@policy_max_ab=3", 0.3, 0, 99.0), 3.0, 0.33)]  # no trainer random
    family = report.beta_family(rows, ratios=(0.3, 0.7), min_pairs=2)
    by = {(p["ratio"], p["method"]): p for p in family["policies"]}
    assert set(by) == {(0.7, "if-beta"), (0.7, "if-beta@policy_a=1,policy_b=2"), (0.7, "random"), (0.3, "random")}
    assert by[(0.7, "if-beta")]["diff_vs_random"] == pytest.approx(0.3)  # trainer's +0.1 on seed 0, not the loop's +10
    assert by[(0.7, "if-beta@policy_a=1,policy_b=2")]["diff_vs_random"] == pytest.approx(-1.0)
    assert family["best"] == {0.3: "random", 0.7: "if-beta"} and family["best_average"] == pytest.approx(0.15)
    text = report.beta_family_table(family)
    assert "| 0.7 | if-beta@policy_a=1,policy_b=2 | (1.00, 2.00) | 0.33 | -1.00 [-1.00, -1.00] (2) |" in text
    assert text.index("policy_a=1") < text.index("| 0.7 | random") < text.index("| 0.7 | if-beta |")  # by lean
    assert text.endswith("0.3: random +0.00; 0.7: if-beta +0.30 (2); their average +0.15; paired by seed (each seed's "
                         "mean over the ratios, where every pick has a pair) +0.05 (1).")  # seed 0 only: (0 + 0.1) / 2
    assert report.beta_family(rows, ratios=(0.3, 0.7))["best"] == {0.3: "random", 0.7: "random"}  # two pairs are too few
    assert report.beta_family([])["best_average"] is None and report.beta_family_table(report.beta_family([])) == ""


def test_pooled_noise_fits_method_and_seed_effects_on_the_largest_balanced_table():
    from scipy.stats import f as f_dist, t

    residual = 0.3 * np.array([[1, -1, 0], [-1, 1, 0], [0, 0, 0]])  # rows and columns sum to 0
    effects, seeds = {"random": 0.0, "a": 0.5, "b": -0.2}, {0: 80.0, 1: 81.0, 2: 79.5}
    rows = [{**cell(m, 0.7, s, seeds[s] + effects[m] + residual[i, j]), "engine": "trainer"}
            for i, m in enumerate(effects) for j, s in enumerate(seeds)]  # fmt: skip
    rows += [{**cell("c", 0.7, 0, 99.0), "engine": "trainer"}, cell("a", 0.7, 0, 10.0)]  # one seed only; the loop's
    rows += [{**cell("random", 0.7, 3, 80.0), "engine": "trainer"}, {**cell("b", 0.7, 3, 80.0), "engine": "trainer"}]
    pooled = report.pooled_noise(rows, 0.7)  # seeds 0-2 hold 3 x 3 cells, seeds 0-3 only 2 x 4
    assert pooled["methods"] == ["a", "b", "random"] and pooled["seeds"] == [0, 1, 2] and pooled["df"] == 4
    assert pooled["residual_sd"] == pytest.approx(0.3)
    assert pooled["half_width"] == pytest.approx(t.ppf(0.975, 4) * np.sqrt(2 * 0.09 / 3))
    between = 3 * np.var([0.5, -0.2, 0.0], ddof=1)
    assert pooled["F"] == pytest.approx(between / 0.09) and pooled["p"] == pytest.approx(f_dist.sf(between / 0.09, 2, 4))
    assert report.pooled_noise([r for r in rows if r["method"] != "b"], 0.7) is None  # two methods: nothing to pool
    one_seed = [{**cell(m, 0.5, 0, 80.0), "engine": "trainer"} for m in ("random", "a", "b")]
    assert report.pooled_noise(one_seed, 0.5) is None
    with pytest.raises(ValueError, match=r"Two rows for the cell \('a', 0\)"):
        report.pooled_noise(rows + [{**cell("a", 0.7, 0, 80.0), "engine": "trainer"}], 0.7)
    family = {**report.beta_family(rows), "pooled": [pooled]}
    assert "Ratio 0.7, the 3 methods the trainer ran on each of seeds 0, 1, 2" in report.beta_family_table(family)


def test_settings_that_differ_only_in_the_kd_weight_pair_cell_by_cell():
    base_spec = {"name": "cifar10", "train_file": "train.parquet", "student": "r20", "label_noise": 0.0}
    specs = {
        "cifar10": base_spec,
        "cifar10-kd1": {**base_spec, "name": "cifar10-kd1", "alpha": 1.0},
        "cifar10-noisy20": {**base_spec, "name": "cifar10-noisy20", "label_noise": 0.2},  # not an alpha variant
    }
    top1 = {  # (setting, method, seed) -> top-1 at ratio 0.7
        ("cifar10", "random", 0): 80.0, ("cifar10", "random", 1): 81.0, ("cifar10", "if-beta", 0): 80.5,
        ("cifar10", "if-beta", 1): 80.0, ("cifar10-kd1", "random", 0): 79.8, ("cifar10-kd1", "random", 1): 80.6,
        ("cifar10-kd1", "if-beta", 0): 80.9, ("cifar10-kd1", "if-beta", 1): 81.0,
        ("cifar10-noisy20", "random", 0): 70.0, ("cifar10-noisy20", "if-beta", 0): 71.0,
    }  # fmt: skip
    rows = [{**cell(m, 0.7, s, v), "setting": k, "engine": "trainer", "setting_spec": specs[k]}
            for (k, m, s), v in top1.items()]  # fmt: skip
    rows.append({**cell("if-beta", 0.7, 2, 90.0), "setting": "cifar10-kd1", "engine": "trainer",
                 "setting_spec": specs["cifar10-kd1"]})  # no alpha-0.9 cell on seed 2: left out  # fmt: skip
    rows.append({**cell("if-beta", 0.7, 1, 99.0), "setting": "cifar10-kd1", "setting_spec": specs["cifar10-kd1"]})
    pairs = report.kd_weight_pairs(rows)  # the loop's cell above has no alpha-0.9 cell on its engine
    assert {(p["setting"], p["base"], p["method"]) for p in pairs} == {
        ("cifar10-kd1", "cifar10", "random"), ("cifar10-kd1", "cifar10", "if-beta")
    }
    by = {p["method"]: p for p in pairs}
    assert by["if-beta"]["seeds"] == [0, 1] and by["if-beta"]["diff"][0] == pytest.approx((0.4 + 1.0) / 2)
    assert by["random"]["diff"][0] == pytest.approx((-0.2 - 0.4) / 2) and by["random"]["lead_diff"] is None
    assert by["if-beta"]["lead_diff"][0] == pytest.approx((0.6 + 1.4) / 2) and by["if-beta"]["lead_pairs"] == 2
    text = report.kd_weight_table(pairs)
    assert "| cifar10-kd1 − cifar10 (1 − 0.9) | 0.7 | if-beta | +0.70 [" in text and "(0, 1) | +1.00 [" in text
    assert report.kd_weight_table([]) == ""


def test_combinations_cover_every_well_measured_choice_per_ratio():
    trainer = lambda m, r, s, top1: {**cell(m, r, s, top1), "engine": "trainer"}  # noqa: E731
    rows = [trainer("random", r, s, 80.0) for r in (0.3, 0.7) for s in (0, 1, 2)]
    steady, noisy = (1.0, 1.0, 1.0), (3.0, -1.0, 0.5)  # means +1.0 and +0.83, the second much wider
    rows += [trainer("a", 0.3, s, 80.0 + d) for s, d in enumerate(steady)]
    rows += [trainer("b", 0.3, s, 80.0 + d) for s, d in enumerate(noisy)]
    rows += [trainer("c", 0.7, s, 80.0) for s in (0, 1, 2)]
    rows += [trainer("d", 0.7, s, 85.0) for s in (0, 1)]  # two pairs: too few to be a choice
    found = report.combinations(rows, ratios=(0.3, 0.7), min_pairs=3)
    assert found["count"] == 2  # (a or b) at 0.3, c at 0.7
    assert found["best_mean"]["methods"] == {"0.3": "a", "0.7": "c"} and found["best_mean"]["mean"] == pytest.approx(0.5)
    assert found["highest_upper"]["methods"] == {"0.3": "b", "0.7": "c"}  # the wide one reaches higher
    assert found["highest_upper"]["ci95"][1] > 1.0 and found["best_mean"]["ci95"] == pytest.approx([0.5, 0.5])
    text = report.combinations_text(found)
    reaching = lambda t: report.combinations(rows, ratios=(0.3, 0.7), min_pairs=3, target=t)["reaching_target"]  # noqa: E731
    assert (reaching(0.25), reaching(0.75), reaching(5.0)) == (2, 1, 0)  # a / c's interval is [0.5, 0.5]
    assert "(2 choices)" in text and f"{found['reaching_target']} of the 2 intervals reach +0.50" in text and "the highest mean is a / c, +0.50 [+0.50, +0.50] (3)" in text
    assert report.combinations(rows, ratios=(0.3, 0.5, 0.7), min_pairs=3) is None  # nothing measured at 0.5
    assert report.combinations_text(None) == ""
