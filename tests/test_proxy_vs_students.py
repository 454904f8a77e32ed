"""benchmarks/proxy_vs_students.py: outer-objective variants on hand-made teacher outputs, and the summary."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location(
    "proxy_vs_students", Path(__file__).resolve().parents[1] / "benchmarks" / "proxy_vs_students.py"
)
pvs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pvs)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    n, d, c = 3000, 24, 3
    labels = np.arange(n) % c
    features = rng.standard_normal((n, d)).astype(np.float32) + 2.0 * np.eye(c, d, dtype=np.float32)[labels]
    logits = features @ rng.standard_normal((d, c)).astype(np.float32)
    val = np.sort(rng.choice(n, 300, replace=False))
    return {"features": features, "logits": logits, "labels": labels, "val_indices": val}


def test_outer_objective_trains_only_on_kept_rows_outside_v(inputs):
    obj = pvs.OuterObjective(inputs, "default", ratio=0.5, epochs=2)
    train = np.setdiff1d(np.arange(3000), inputs["val_indices"])
    kept = train[::2]
    with_v = np.sort(np.concatenate([kept, inputs["val_indices"][:50]]))
    assert obj(with_v) == pytest.approx(obj(kept))  # rows of V never train the proxy
    assert obj(kept) != pytest.approx(obj(train[1::2]))  # a different subset gives a different loss


def test_variants_weaken_the_proxy_as_documented(inputs):
    weak = pvs.OuterObjective(inputs, "weak16", ratio=0.5, epochs=2)
    assert weak.objective.x.shape[1] == 16 + 1  # 16 projected features + the bias column
    scarce = pvs.OuterObjective(inputs, "scarce1500", ratio=0.5, epochs=2)
    assert (scarce.position >= 0).sum() == 1500
    assert not np.isin(np.flatnonzero(scarce.position >= 0), inputs["val_indices"]).any()
    with pytest.raises(ValueError, match="Unknown variant"):
        pvs.OuterObjective(inputs, "oracle", ratio=0.5, epochs=2)


def test_stage_variants_train_the_proxy_on_the_standardised_stage_features(inputs):
    rng = np.random.default_rng(1)
    stages = {v: rng.normal(5.0, 3.0, (3000, d)).astype(np.float32) for v, d in
              (("layer1", 16), ("layer2", 32), ("layer2_2x2", 128))}  # fmt: skip
    obj = pvs.OuterObjective({**inputs, "stages": stages}, "layer2", ratio=0.5, epochs=2)
    x = obj.objective.x[:, :-1]  # without the bias column
    assert x.shape[1] == 32
    assert abs(float(x.mean())) < 0.1 and float(x.std()) == pytest.approx(1.0, abs=0.1)


def test_augmented_variant_trains_on_the_views_and_is_judged_on_the_clean_rows(inputs):
    views = inputs["features"] + 0.5 * np.random.default_rng(2).standard_normal((3000, 24)).astype(np.float32)
    stages = {"augmented": views}
    aug = pvs.OuterObjective({**inputs, "stages": stages}, "augmented", ratio=0.5, epochs=2)
    default = pvs.OuterObjective(inputs, "default", ratio=0.5, epochs=2)
    train = np.setdiff1d(np.arange(3000), inputs["val_indices"])
    garbled = views.copy()
    garbled[inputs["val_indices"]] = 100.0  # V's views are never used: V is judged on its own rows
    assert pvs.OuterObjective({**inputs, "stages": {"augmented": garbled}}, "augmented", 0.5, 2)(train[::2]) == aug(
        train[::2]
    )
    clean = pvs.OuterObjective({**inputs, "stages": {"augmented": inputs["features"]}}, "augmented", 0.5, 2)
    assert clean(train[::2]) == pytest.approx(default(train[::2]))  # views equal to the rows: the default proxy
    assert aug(train[::2]) != pytest.approx(default(train[::2]), rel=1e-3)  # the views train it


def test_knn_objective_runs_short_where_kept_rows_are_missing(inputs):
    obj = pvs.outer_objective(inputs, "knn_train", ratio=0.5, epochs=2)
    assert obj.queries.size == 2700 and not np.isin(obj.queries, inputs["val_indices"]).any()
    train = np.setdiff1d(np.arange(3000), inputs["val_indices"])
    labels = inputs["labels"]
    spread = train[::3]
    one_sided = train[(labels[train] != 2) | (np.arange(train.size) % 9 == 0)][: spread.size]  # class 2 thinned out
    assert obj(spread) < obj(one_sided)
    with_v = np.sort(np.concatenate([spread, inputs["val_indices"]]))
    assert obj(with_v) == pytest.approx(obj(spread))  # V never stands in for a query


def test_knn_objective_leaves_each_query_out_of_its_own_neighbours(inputs):
    obj = pvs.KnnObjective(inputs, "knn_train", k=1, queries=300)
    twins = {**inputs, **{key: np.concatenate([inputs[key][:1500]] * 2) for key in ("features", "logits")}}
    half_v = inputs["val_indices"][inputs["val_indices"] < 1500]
    twins["val_indices"] = np.concatenate([half_v, half_v + 1500])  # a row and its twin both in V or both out
    twin_obj = pvs.KnnObjective(twins, "knn_train", k=1, queries=300)
    # every row has an exact twin 1500 rows away: with the twins kept, each query's neighbour is its twin
    twin_rows = (twin_obj.queries + 1500) % 3000
    # kept = the queries themselves, without twins: each is predicted by another row, so the loss is not 0
    assert twin_obj(np.union1d(twin_obj.queries, twin_rows)) < 1e-6 < obj(obj.queries)
    with pytest.raises(ValueError, match="Unknown k-NN variant"):
        pvs.KnnObjective(inputs, "knn_oracle")


def test_knn_val_asks_v_and_the_stage_variant_its_view(inputs):
    assert np.array_equal(pvs.KnnObjective(inputs, "knn_val").queries, inputs["val_indices"])
    view = np.random.default_rng(3).normal(2.0, 5.0, (3000, 128)).astype(np.float32)
    obj = pvs.KnnObjective({**inputs, "stages": {"layer2_2x2": view}}, "knn_train_2x2")
    assert obj.features.shape == (3000, 128)
    assert float(obj.features.norm(dim=1).mean()) == pytest.approx(1.0, abs=1e-4)


def test_summarise_ranks_lower_loss_as_better_per_variant():
    cells = []
    for seed in (0, 1):
        for method, loss, acc in (("random", 3.0, 80.0), ("if-beta", 1.0, 82.0), ("influence", 2.0, 81.0)):
            cells.append({"method": method, "ratio": 0.5, "seed": seed, "test_top1": acc + 0.1 * seed,
                          "proxy_loss": {"default": loss, "weak16": -loss}})
    (default,) = pvs.summarise(cells, "default")
    assert default["spearman_methods"] == pytest.approx(1.0) and default["cells"] == 6
    assert default["method_means"]["if-beta"] == {"proxy_loss": 1.0, "test_top1": pytest.approx(82.05)}
    (weak,) = pvs.summarise(cells, "weak16")
    assert weak["spearman_methods"] == pytest.approx(-1.0)
    for c in cells:  # a costly variant scored on seed 0 only: its students' means stay those of every seed
        if c["seed"] == 0:
            c["proxy_loss"]["pilot"] = c["proxy_loss"]["default"]
    (pilot,) = pvs.summarise(cells, "pilot")
    assert pilot["cells"] == 3 and pilot["spearman_methods"] == pytest.approx(1.0)
    assert pilot["method_means"]["if-beta"] == {"proxy_loss": 1.0, "test_top1": pytest.approx(82.05)}


def test_pair_agreement_counts_only_pairs_further_apart_than_seed_noise():
    means = {
        "a": {"test_top1": 80.0, "proxy_loss": 0.3},
        "b": {"test_top1": 81.0, "proxy_loss": 0.2},  # a < b, ordered right
        "c": {"test_top1": 81.3, "proxy_loss": 0.4},  # b-c 0.3 apart: noise; a < c, ordered wrong
    }
    assert pvs.pair_agreement(means) == {"pairs": 2, "agree": 1, "share": 0.5}
    assert pvs.pair_agreement(means, apart=2.0) == {"pairs": 0, "agree": 0, "share": None}


def test_mixed_weights_each_term_relative_to_random():
    def summary(variant, losses):
        return {"variant": variant, "ratio": 0.7, "method_means": {
            m: {"proxy_loss": x, "test_top1": t} for (m, x), t in zip(losses.items(), (81.0, 80.0))}}  # fmt: skip

    rows = [summary("default", {"random": 2.0, "topk": 1.0}), summary("weak16", {"random": 10.0, "topk": 20.0})]
    (mix,) = pvs.mixed(rows, 0.5)
    assert mix["method_means"]["random"]["proxy_loss"] == pytest.approx(1.0)
    assert mix["method_means"]["topk"]["proxy_loss"] == pytest.approx(0.5 * 0.5 + 0.5 * 2.0)
    assert mix["pair_agreement"] == {"pairs": 1, "agree": 1, "share": 1.0}  # random better, and the mix says so
    assert mix["variant"] == "mix@0.5"
    rows.append(summary("layer2", {"random": 1.0, "topk": 0.5}))
    (stage_mix,) = pvs.mixed(rows, 0.25, "layer2")
    assert stage_mix["variant"] == "mix@0.25+layer2"
    assert stage_mix["method_means"]["topk"]["proxy_loss"] == pytest.approx(0.25 * 0.5 + 0.75 * 0.5)
    assert pvs.mixed(rows[:1], 0.5, "layer2") == []  # no coverage term scored: no mix
    rows.append(summary("pilot_err", {"random": 1.0}))  # a costly term scored on fewer methods
    (partial,) = pvs.mixed(rows, 0.5, "pilot_err")
    assert set(partial["method_means"]) == {"random"}
    lean_only = [summary("default", {"if-beta": 1.0}), summary("layer2", {"if-beta": 2.0})]
    assert pvs.mixed(lean_only, 0.5, "layer2") == []  # a ratio where random was not measured: nothing to scale by


def test_a_mix_takes_both_terms_from_the_cells_the_costly_term_scored():
    cells = [{"method": m, "ratio": 0.5, "seed": seed, "test_top1": acc + seed,
              "proxy_loss": {"default": loss + 10 * seed, **({"pilot_err": loss} if seed == 0 else {})}}
             for seed in (0, 1) for m, loss, acc in (("random", 2.0, 80.0), ("topk", 1.0, 81.0))]  # fmt: skip
    (default,) = pvs.summarise(cells, "default", scored_by="pilot_err")
    assert default["cells"] == 2 and default["method_means"]["topk"]["proxy_loss"] == 1.0  # seed 0's loss only
    assert default["method_means"]["topk"]["test_top1"] == pytest.approx(81.5)  # the students: every seed


def test_pilot_is_a_short_student_run_on_the_kept_rows_outside_v(inputs):
    n = inputs["labels"].size
    rng = np.random.default_rng(1)
    # class-coloured images, so that a few steps already separate the classes
    pixels = rng.integers(0, 60, (n, 3, 32, 32), dtype=np.uint8)
    for c in range(3):
        pixels[inputs["labels"] == c, c] += 150
    pilot = pvs.Pilot(inputs, pixels, steps=4)
    train = np.setdiff1d(np.arange(n), inputs["val_indices"])
    kept = train[::2]
    first = pilot(kept)
    assert set(first) == set(pvs.PILOT_VARIANTS) and first["pilot"] > 0 and 0 <= first["pilot_err"] <= 1
    assert pilot(kept) == first  # same weights, batches and crops for every cell: reruns agree exactly
    with_v = np.sort(np.concatenate([kept, inputs["val_indices"][:50]]))
    assert pilot(with_v) == first  # rows of V never train it
    assert pilot(train[1::2])["pilot"] != first["pilot"]  # another subset, another run
    with pytest.raises(ValueError, match="decoded images"):
        pvs.Pilot(inputs, pixels[:10], steps=4)
    with pytest.raises(ValueError, match="Every kept row is in the validation slice"):
        pilot(inputs["val_indices"][:20])


class _Pruning:
    """A stand-in for `kd_sweep.Pruning`: fixed kept rows per method, the teacher pass of `outputs`."""

    def __init__(self, kept, outputs=None):
        self.kept, self.outputs, self.results = kept, outputs, {}
        self.teacher, self.train = None, None

    def select(self, method, ratio, seed):
        from types import SimpleNamespace

        if method == "influence":
            self.results["influence"] = SimpleNamespace(_outputs=self.outputs, val_indices=np.arange(5))
        return SimpleNamespace(indices=self.kept[method])


def test_score_cells_rebuilds_each_cell_and_scores_it_with_every_objective(monkeypatch, tmp_path):
    monkeypatch.setattr(pvs, "KEPT", tmp_path)
    pruning = _Pruning({"random": np.arange(10), "topk": np.arange(4)})
    results = [{"setting": "cifar10-e5", "method": m, "ratio": 0.5, "seed": 0, "kept": k, "test_top1": 70.0}
               for m, k in (("topk", 4), ("random", 10))]  # fmt: skip
    objectives = {(v, 0.5): (lambda kept, w=w: w * len(kept)) for v, w in (("default", 1.0), ("layer2_2x2", 2.0))}
    cells = pvs.score_cells(results, pruning, objectives)
    assert [c["method"] for c in cells] == ["random", "topk"]
    assert cells[1]["proxy_loss"] == {"default": 4.0, "layer2_2x2": 8.0}
    results[0]["kept"] = 5  # the sweep kept another number of rows: the rebuild is not the cell
    with pytest.raises(RuntimeError, match="rebuilt 4 rows, the sweep kept 5"):
        pvs.score_cells(results, _Pruning(pruning.kept), objectives)


def test_setting_inputs_take_the_view_from_a_pass_that_matches_the_sweeps(monkeypatch):
    from types import SimpleNamespace

    import hf_ifbeta

    rng = np.random.default_rng(0)
    base = SimpleNamespace(
        features=rng.standard_normal((6, 4)), logits=rng.standard_normal((6, 3)), labels=np.arange(6) % 3
    )
    view = SimpleNamespace(**vars(base), coverage=np.ones((6, 8)))

    class Pruner:
        def __init__(self, teacher, **kwargs):
            assert kwargs["policy_coverage_view"] == "stage"

        def teacher_outputs(self, train):
            return view

    monkeypatch.setattr(hf_ifbeta, "DatasetPruner", Pruner)
    setting = pvs.kd_sweep.SETTINGS["cifar10-t20"]
    inputs = pvs.setting_inputs(setting, _Pruning({"influence": np.arange(3)}, base))
    assert inputs["stages"]["layer2_2x2"].shape == (6, 8) and list(inputs["val_indices"]) == list(range(5))
    view.features = base.features + 1.0  # another teacher, or another dataset order
    with pytest.raises(ValueError, match="cifar10-t20.*features differ"):
        pvs.setting_inputs(setting, _Pruning({"influence": np.arange(3)}, base))


def test_across_settings_counts_each_settings_pairs_on_the_shared_methods(monkeypatch, tmp_path):
    import json

    def cell(method, acc, default, view, seed=0):
        return {"method": method, "ratio": 0.7, "seed": seed, "test_top1": acc,
                "proxy_loss": {"default": default, "layer2_2x2": view}}  # fmt: skip

    # CIFAR-10: the default ranks influence > if-beta > random, the students if-beta > random > influence
    base = [cell("random", 81.0, 3.0, 1.0), cell("if-beta", 81.8, 2.0, 1.0), cell("influence", 80.0, 1.0, 3.0),
            cell("moderate", 90.0, 9.0, 9.0)]  # fmt: skip
    # 5 epochs: random first, and the lean's order flips for the students only
    e5 = [cell("random", 71.0, 3.0, 1.0), cell("if-beta", 70.0, 2.0, 2.0), cell("influence", 70.2, 1.0, 1.2)]
    monkeypatch.setattr(pvs.kd_sweep, "RESULTS", tmp_path)
    (tmp_path / "proxy_vs_students_cpu.json").write_text(json.dumps({"inner_epochs": 15, "cells": base}))
    (tmp_path / "proxy_vs_students_cpu_cifar10-e5.json").write_text(
        json.dumps({"setting": "cifar10-e5", "inner_epochs": 5, "cells": e5})
    )
    rows = {r["setting"]: r for r in pvs.across_settings("cpu")}
    assert set(rows["cifar10"]["students"]) == set(pvs.SHARED_METHODS)  # moderate is not measured everywhere
    assert rows["cifar10"]["pairs"] == 3 and rows["cifar10"]["agree"]["default"] == 1  # only if-beta > random
    assert rows["cifar10"]["agree"]["layer2_2x2"] == 2  # a tie (random, if-beta) orders no pair
    assert rows["cifar10-e5"]["epochs"] == 5 and rows["cifar10-e5"]["pairs"] == 2  # if-beta / influence: 0.2 apart
    # the mixes put influence (default 1/3, view 1.2 of random's) ahead of random, the students behind it
    assert rows["cifar10-e5"]["agree"] == {"default": 0, "layer2_2x2": 2, "mix@0.5+layer2_2x2": 1,
                                           "mix@0.25+layer2_2x2": 1}  # fmt: skip
    assert (tmp_path / "proxy_objectives_by_setting_cpu.json").exists()


@pytest.fixture
def e5_sweep(monkeypatch, tmp_path):
    """A finished cifar10-e5 sweep (2 methods x 2 ratios x 2 seeds) and objectives that count their calls and can
    be told to fail at a given call, as a run stopped by the session's end."""
    import json

    calls, fail_at = [], []

    class Objective:
        def __init__(self, inputs, variant, ratio, epochs):
            self.variant, self.epochs = variant, epochs

        def __call__(self, kept):
            if fail_at and len(calls) == fail_at[0]:
                raise KeyboardInterrupt
            calls.append(self.variant)
            return float(len(kept)) + (self.epochs if self.variant == "default" else 0.0)

    kept = {"random": np.arange(10), "if-beta": np.arange(8)}
    rows = [{"setting": "cifar10-e5", "method": m, "ratio": r, "seed": seed, "kept": kept[m].size,
             "test_top1": 70.0 + seed + (m == "if-beta")}
            for m in kept for r in (0.5, 0.7) for seed in (0, 1)]  # fmt: skip
    (tmp_path / "kd_sweep_cpu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(pvs.kd_sweep, "RESULTS", tmp_path)
    monkeypatch.setattr(pvs, "KEPT", tmp_path / "kept")
    monkeypatch.setattr(pvs.kd_sweep, "Context", lambda: type("C", (), {"pruning": lambda self, s: _Pruning(kept)})())
    monkeypatch.setattr(pvs, "setting_inputs", lambda setting, pruning: {})
    monkeypatch.setattr(pvs, "OuterObjective", Objective)
    return pvs.kd_sweep.SETTINGS["cifar10-e5"], tmp_path / "proxy_vs_students_cpu_cifar10-e5.json", calls, fail_at


def test_judge_setting_resumes_and_keeps_every_seeds_students(e5_sweep):
    import json

    setting, path, calls, _ = e5_sweep
    pvs.judge_setting(setting, "cpu", ratios=[0.7], seeds=[0])
    cells = json.loads(path.read_text())["cells"]
    assert len(cells) == 8 and sum(bool(c["proxy_loss"]) for c in cells) == 2  # the rest kept, unscored
    (at_07,) = [s for s in json.loads(path.read_text())["per_ratio"] if s["variant"] == "default"]
    assert at_07["ratio"] == 0.7 and at_07["method_means"]["if-beta"]["test_top1"] == 71.5  # both seeds' students
    assert at_07["method_means"]["if-beta"]["proxy_loss"] == 8.0 + 5  # the proxy's budget: the setting's 5 epochs
    pvs.judge_setting(setting, "cpu")
    assert len(calls) == 2 * 8  # each cell scored once by each objective: the second run resumed
    assert all(c["proxy_loss"] for c in json.loads(path.read_text())["cells"])


def test_judge_setting_adds_only_the_variants_a_cell_lacks(e5_sweep, monkeypatch):
    import json

    setting, path, calls, _ = e5_sweep
    objective = pvs.OuterObjective  # the fixture's counting objective
    monkeypatch.setattr(pvs, "KnnObjective", lambda inputs, variant: objective(inputs, variant, None, 0))
    pvs.judge_setting(setting, "cpu", ratios=[0.7])
    assert len(calls) == 2 * 4
    pvs.judge_setting(setting, "cpu", variants=("default", "knn_train"))
    # the four ratio-0.7 cells lacked knn_train only; the four at 0.5 lacked both
    assert calls[8:].count("knn_train") == 8 and calls[8:].count("default") == 4
    cells = json.loads(path.read_text())["cells"]
    at_07 = [c["proxy_loss"] for c in cells if c["ratio"] == 0.7]
    assert all(set(loss) == {"default", "layer2_2x2", "knn_train"} for loss in at_07)  # the earlier losses kept
    assert all(set(c["proxy_loss"]) == {"default", "knn_train"} for c in cells if c["ratio"] == 0.5)


def test_judge_setting_saves_each_cell_as_it_is_scored(e5_sweep):
    import json

    setting, path, calls, fail_at = e5_sweep
    fail_at.append(5)  # stopped inside the third cell: two cells (two objectives each) done
    with pytest.raises(KeyboardInterrupt):
        pvs.judge_setting(setting, "cpu")
    assert sum(bool(c["proxy_loss"]) for c in json.loads(path.read_text())["cells"]) == 2
    fail_at.clear()
    pvs.judge_setting(setting, "cpu")
    assert len(calls) == 5 + 2 * 6  # the rerun scored only the six cells left
    assert all(c["proxy_loss"] for c in json.loads(path.read_text())["cells"])


def test_judge_setting_takes_the_students_of_a_seed_rerun_in_another_precision(e5_sweep):
    import json

    setting, path, calls, _ = e5_sweep
    pvs.judge_setting(setting, "cpu", ratios=[0.7], seeds=[0])
    sweep = pvs.kd_sweep.RESULTS / "kd_sweep_cpu.jsonl"
    rows = [json.loads(line) for line in sweep.read_text().splitlines()]
    group = [r for r in rows if r["ratio"] == 0.7 and r["seed"] == 0]
    rows = [r for r in rows if r["method"] != "random" or r not in group]  # its random never ran in bf16 ...
    rows += [{**r, "precision": "fp32", "test_top1": r["test_top1"] + 5} for r in group]  # ... but reran in fp32
    sweep.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pvs.judge_setting(setting, "cpu", ratios=[0.7], seeds=[0])
    assert len(calls) == 2 * 2  # nothing scored again: the proxy depends on the kept rows only
    assert len(json.loads(path.read_text())["cells"]) == 8  # seed 0's bf16 IF-Beta left out: it has no bf16 random
    cells = {(c["method"], c["seed"]): c for c in json.loads(path.read_text())["cells"] if c["ratio"] == 0.7}
    assert cells[("random", 0)]["test_top1"] == 75.0 and cells[("if-beta", 0)]["test_top1"] == 76.0
    assert cells[("if-beta", 1)]["test_top1"] == 72.0 and all(cells[(m, 0)]["proxy_loss"] for m in ("random", "if-beta"))
