"""The benchmark's settings, queue and label noise (the cells themselves run through DistillationTrainer,
tested in tests/test_trainer.py and tests/test_logit_cache.py)."""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location("kd_sweep", Path(__file__).resolve().parents[1] / "benchmarks" / "kd_sweep.py")
kd_sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kd_sweep)


def test_noisy_labels_flip_the_asked_share_to_another_class_deterministically():
    labels = np.random.default_rng(0).integers(0, 10, 5000)
    noisy, flipped = kd_sweep.noisy_labels(labels, 0.2, 10)
    assert flipped.sum() == 1000
    assert (noisy[flipped] != labels[flipped]).all() and (noisy[~flipped] == labels[~flipped]).all()
    assert set(np.unique(noisy[flipped])) == set(range(10))  # uniform over the other classes, all reached
    again, again_flipped = kd_sweep.noisy_labels(labels, 0.2, 10)
    assert np.array_equal(again, noisy) and np.array_equal(again_flipped, flipped)


def test_default_queue_covers_every_setting_of_the_protocol():
    cells = kd_sweep.default_cells()
    keys = [kd_sweep.cell_key(c) for c in cells]
    assert len(keys) == len(set(keys))
    assert [kd_sweep.parse_cell(k) for k in keys] == [dict(c, ratio=float(c["ratio"])) for c in cells]
    seeds = {}
    for c in cells:
        seeds.setdefault((c["setting"], c["method"], c["ratio"]), set()).add(c["seed"])
    for setting in ("cifar10-e5", "cifar10-noisy20", "cifar10-t20", "tiny-imagenet"):
        # three seeds for random and IF-Beta where a cell takes under 10 minutes; Tiny-ImageNet's take longer
        main_seeds = 2 if setting == "tiny-imagenet" else 3
        for ratio in (0.3, 0.5, 0.7):
            assert len(seeds[(setting, "random", ratio)]) == len(seeds[(setting, "if-beta", ratio)]) == main_seeds
            assert len(seeds[(setting, "influence", ratio)]) == 2
        assert (setting, "full", 0.0) in seeds
    for ratio in (0.3, 0.7):
        assert all(len(seeds[("cifar10-e30", m, ratio)]) == 2 for m in ("random", "if-beta", "influence"))
    assert kd_sweep.SETTINGS["cifar10-e5"].epochs("cpu") == 5 and kd_sweep.SETTINGS["cifar10-e30"].epochs("cpu") == 30
    # the engine check (the trainer against committed loop cells) comes first
    assert keys[:3] == ["cifar10|random|0.7|0", "cifar10|if-beta|0.7|0", "cifar10|full|0.0|0"]


def test_cells_from_before_settings_and_engines_are_cifar10_loop_cells():
    old = {"method": "random", "ratio": 0.7, "seed": 0, "test_top1": 81.1}
    assert kd_sweep.cell_key(old) == "cifar10|random|0.7|0"
    assert kd_sweep.done_key(old) == "cifar10|random|0.7|0|loop|bf16"
    new = {**old, "setting": "cifar10-e5", "engine": "trainer"}
    assert kd_sweep.done_key(new) == "cifar10-e5|random|0.7|0|trainer|bf16"
    assert kd_sweep.done_key({**new, "precision": "fp32"}) == "cifar10-e5|random|0.7|0|trainer|fp32"


def test_parse_cell_names_what_is_wrong():
    assert kd_sweep.parse_cell("cifar10-e5|if-beta@policy_max_ab=2|0.7|1") == dict(
        setting="cifar10-e5", method="if-beta@policy_max_ab=2", ratio=0.7, seed=1
    )
    with pytest.raises(ValueError, match=r"setting\|method\|ratio\|seed"):
        kd_sweep.parse_cell("random|0.7|0")
    with pytest.raises(ValueError, match="Unknown setting 'cifar100'"):
        kd_sweep.parse_cell("cifar100|random|0.7|0")
    with pytest.raises(ValueError, match="must be in"):
        kd_sweep.parse_cell("cifar10|random|1.5|0")


@pytest.mark.slow
def test_tiny_imagenet_setting_matches_its_data():
    """The setting's class count is the converted parquet's (the copy holds 202 classes, not 200)."""
    setting = kd_sweep.SETTINGS["tiny-imagenet"]
    if not Path(setting.train_file).exists():
        pytest.skip(f"{setting.train_file} not built (scripts/build_tiny_imagenet.py)")
    train, test, _ = kd_sweep.Context().data(setting)
    assert train.features["label"].num_classes == setting.num_classes == 202


def test_a_learned_policy_label_fixes_the_policy_per_ratio_and_seed(monkeypatch):
    """`if-beta@policy_learned_by="<name>"` scores with the (a, b) learned for the cell's ratio and seed, fixed."""
    made = []

    class FakePruner:
        def __init__(self, teacher, config=None, **kwargs):
            assert config is None
            made.append(kwargs)
            self.kwargs = kwargs

        def score(self, train):
            kwargs = self.kwargs
            return type("Result", (), {
                "select_indices": lambda self, ratio, seed: np.arange(3),
                "policy": {"a": kwargs["policy_a"], "b": kwargs["policy_b"], "learned": False}, "timings": {},
            })()  # fmt: skip

    import hf_ifbeta

    monkeypatch.setattr(hf_ifbeta, "DatasetPruner", FakePruner)
    monkeypatch.setattr(kd_sweep, "learned_policy", lambda name, ratio, seed: (1.0 + ratio, 0.5 + seed))
    pruning = kd_sweep.Pruning(teacher=None, train=[0, 1, 2])
    policy = pruning.select('if-beta@policy_learned_by="stage2x2"', 0.3, 1).policy
    assert (made[-1]["method"], made[-1]["policy_a"], made[-1]["policy_b"]) == ("if-beta", 1.3, 1.5)
    assert "policy_learned_by" not in made[-1] and policy["learned_by"] == kd_sweep.LEARNED_POLICIES["stage2x2"]
    pruning.select('if-beta@policy_learned_by="stage2x2"', 0.7, 2)  # another ratio and seed: another policy
    assert (made[-1]["policy_a"], made[-1]["policy_b"]) == (1.7, 2.5) and len(made) == 2


def test_an_unknown_learned_policy_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown learned policy 'nope'; choose from \['stage2x2'\]"):
        kd_sweep.learned_policy("nope", 0.3, 0)


def test_stable_copy_keeps_one_path_per_content(tmp_path, monkeypatch):
    """The data are loaded from a copy named by their bytes: a remount (new modification time) keeps the path and
    so the `datasets` fingerprint; changed bytes get another copy; the copy lives under HF_HOME, not the source."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    source = tmp_path / "shared" / "train.parquet"
    source.parent.mkdir()
    source.write_bytes(b"rows")
    first = kd_sweep.stable_copy(str(source))
    assert first.startswith(str(tmp_path / "hf")) and Path(first).read_bytes() == b"rows"
    copied_at = Path(first).stat().st_mtime_ns
    os.utime(source, ns=(copied_at + 10**9, copied_at + 10**9))  # mounted again: a new modification time
    assert kd_sweep.stable_copy(str(source)) == first and Path(first).stat().st_mtime_ns == copied_at
    source.write_bytes(b"other rows")
    second = kd_sweep.stable_copy(str(source))
    assert second != first and Path(second).read_bytes() == b"other rows" and Path(second).name == "train.parquet"


def test_load_parquet_fingerprint_survives_a_remount(tmp_path, monkeypatch):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    source = tmp_path / "train.parquet"
    datasets.Dataset.from_dict({"label": [0, 1, 2]}).to_parquet(str(source))
    before = kd_sweep.load_parquet({"train": str(source)})["train"]._fingerprint
    later = source.stat().st_mtime_ns + 5 * 10**9
    os.utime(source, ns=(later, later))
    assert datasets.load_dataset("parquet", data_files={"train": str(source)})["train"]._fingerprint != before
    assert kd_sweep.load_parquet({"train": str(source)})["train"]._fingerprint == before


def test_learned_policy_reads_the_seed_and_ratio_and_is_uniform_after_a_fallback(tmp_path, monkeypatch):
    path = tmp_path / "landscape.json"
    by_seed = {"0.7": {"0": {"a": 1.8, "b": 0.6, "fell_back_to_uniform": False},
                       "1": {"a": 3.0, "b": 0.4, "fell_back_to_uniform": True}}}  # fmt: skip
    path.write_text(json.dumps({"product": {"run": {"by_seed": by_seed}}}))
    monkeypatch.setitem(kd_sweep.LEARNED_POLICIES, "mine", "run")
    assert kd_sweep.learned_policy("mine", 0.7, 0, path) == (1.8, 0.6)
    assert kd_sweep.learned_policy("mine", 0.7, 1, path) == (1.0, 1.0)  # what the pruner would have used
    with pytest.raises(KeyError, match="did not learn ratio 0.3, seed 0"):
        kd_sweep.learned_policy("mine", 0.3, 0, path)
    monkeypatch.setitem(kd_sweep.LEARNED_POLICIES, "mine", "other")
    with pytest.raises(KeyError, match=r"No --product run 'other'.*\['run'\]"):
        kd_sweep.learned_policy("mine", 0.7, 0, path)


def test_a_preset_label_starts_from_the_named_configuration(monkeypatch):
    """`if-beta@preset="stage-coverage",policy_max_ab=8` prunes with that preset's config, the other fields on top."""
    made = []

    class FakePruner:
        def __init__(self, teacher, config=None, **kwargs):
            from hf_ifbeta import PrunerConfig

            made.append(PrunerConfig(**{**(config or PrunerConfig()).to_dict(), **kwargs}))

        def score(self, train):
            return type("Result", (), {"select_indices": lambda self, ratio, seed: np.arange(3), "policy": {}, "timings": {}})()

    import hf_ifbeta
    from hf_ifbeta.config import PRESETS

    monkeypatch.setattr(hf_ifbeta, "DatasetPruner", FakePruner)
    pruning = kd_sweep.Pruning(teacher=None, train=[0, 1, 2])
    pruning.select('if-beta@preset="stage-coverage",policy_max_ab=8', 0.3, 0)
    config = made[-1]
    assert (config.policy_coverage_view, config.policy_coverage_weight) == ("stage", PRESETS["stage-coverage"]["policy_coverage_weight"])
    assert config.policy_max_ab == 8.0 and config.method == "if-beta"
    pruning.select("if-beta", 0.3, 0)
    assert made[-1].policy_coverage_view == hf_ifbeta.PrunerConfig().policy_coverage_view


def test_the_stage2x2_policies_were_learned_with_the_stage_coverage_preset():
    """`LEARNED_POLICIES["stage2x2"]` names the landscape run whose (a, b) the sweep applies; its settings are the
    preset's (the benchmark's precomputed `layer2_2x2` view standing for the pass's stage view)."""
    from hf_ifbeta.config import PRESETS

    items = dict(item.split("=", 1) for item in kd_sweep.LEARNED_POLICIES["stage2x2"].split())
    assert items.pop("coverage") == "layer2_2x2"
    preset = {k: v for k, v in PRESETS["stage-coverage"].items() if k != "policy_coverage_view"}
    assert {k: json.loads(v) for k, v in items.items()} == preset
    assert PRESETS["stage-coverage"]["policy_coverage_view"] == "stage"


def test_a_selection_names_the_solver_its_scores_came_from(monkeypatch):
    """The cell records `hessian` from the pruning's provenance; methods without influence scores record None."""
    solver = {"if-beta": {"influence": {"hessian": "kfac"}}, "random": {}}

    class FakePruner:
        def __init__(self, teacher, config=None, method=None, **kwargs):
            self.method = method

        def score(self, train):
            return type("Result", (), {
                "select_indices": lambda self, ratio, seed: np.arange(3), "policy": {}, "timings": {"scoring_s": 1.0},
                "provenance": solver[self.method],
            })()  # fmt: skip

    import hf_ifbeta

    monkeypatch.setattr(hf_ifbeta, "DatasetPruner", FakePruner)
    pruning = kd_sweep.Pruning(teacher=None, train=[0, 1, 2])
    picked = pruning.select("if-beta", 0.3, 0)
    assert picked.hessian == "kfac" and picked.timings == {"scoring_s": 1.0} and list(picked.indices) == [0, 1, 2]
    assert pruning.select("random", 0.3, 0).hessian is None


def test_a_bf16_profile_refuses_hardware_that_emulates_bfloat16(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kd_sweep, "RESULTS", tmp_path)
    monkeypatch.setattr(kd_sweep.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(kd_sweep, "native_bf16", lambda device: False)
    ran = []
    row = dict(test_top1=50.0, kd_time_s=1.0, teacher_forward_rows=0, engine=kd_sweep.ENGINE)
    monkeypatch.setattr(kd_sweep, "run_cell", lambda cell, *args, **kwargs: ran.append(cell) or dict(row, **cell))
    cell = "cifar10|random|0.7|9"
    with pytest.raises(SystemExit):
        kd_sweep.main(["--profile", "smoke", "--cells", cell])
    assert "profile 'smoke' distils under bf16 autocast, which this CPU (torch capability" in capsys.readouterr().err
    assert ran == [] and not (tmp_path / "kd_sweep_smoke.jsonl").exists()  # nothing started, nothing written
    kd_sweep.main(["--profile", "smoke", "--cells", cell, "--allow_emulated_bf16"])
    assert len(ran) == 1 and (tmp_path / "kd_sweep_smoke.jsonl").exists()
    monkeypatch.setattr(kd_sweep, "native_bf16", lambda device: True)
    kd_sweep.main(["--profile", "smoke", "--cells", cell])  # done already: nothing to run, nothing to refuse
    assert len(ran) == 1


def test_fp32_cells_run_where_bf16_is_emulated_and_count_as_done_in_fp32_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kd_sweep, "RESULTS", tmp_path)
    monkeypatch.setattr(kd_sweep.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(kd_sweep, "native_bf16", lambda device: False)
    runs = []

    def fake_run_cell(cell, run, ctx, log=print):
        runs.append(run)
        return dict(cell, test_top1=50.0, kd_time_s=1.0, teacher_forward_rows=0, engine=kd_sweep.ENGINE, precision=run.precision)

    monkeypatch.setattr(kd_sweep, "run_cell", fake_run_cell)
    bf16_row = dict(setting="cifar10-e30", method="if-beta", ratio=0.3, seed=0, engine=kd_sweep.ENGINE, precision="bf16")
    (tmp_path / "kd_sweep_smoke.jsonl").write_text(json.dumps(bf16_row) + "\n")
    cells = ["cifar10-e30|if-beta|0.3|0", "cifar10-e30|random|0.3|0"]
    with pytest.raises(SystemExit):
        kd_sweep.main(["--profile", "smoke", "--cells", *cells])
    assert "--precision fp32" in capsys.readouterr().err and runs == []
    kd_sweep.main(["--profile", "smoke", "--precision", "fp32", "--threads", "1", "--cells", *cells])
    assert runs == [kd_sweep.Run("smoke", "fp32", 1)] * 2  # the bf16 cell does not count as done in fp32
    rows = kd_sweep.read_results(tmp_path / "kd_sweep_smoke.jsonl")
    assert [(r["method"], r["precision"]) for r in rows] == [("if-beta", "bf16"), ("if-beta", "fp32"), ("random", "fp32")]
    kd_sweep.main(["--profile", "smoke", "--precision", "fp32", "--cells", *cells])  # all done now
    assert len(runs) == 2
    assert kd_sweep.Run.of("cpu").recipe == kd_sweep.PROFILES["cpu"]
    assert kd_sweep.Run.of("cpu", "fp32").recipe == {**kd_sweep.PROFILES["cpu"], "precision": "fp32"}


def test_run_cell_distils_in_its_runs_precision_and_records_it(monkeypatch):
    distilled = []

    def fake_distil(setting, run, train, test, rows, seed, teacher, alpha):
        distilled.append((run, len(rows), alpha))
        return {"test_top1": 50.0, "kd_time_s": 1.0, "images_per_s": 1.0, "teacher_forward_rows": 0, "teacher_logits_reused": 0}

    class Ctx:
        def data(self, setting):
            return list(range(6)), [], None

        def teacher(self, setting):
            return None

    monkeypatch.setattr(kd_sweep, "distil", fake_distil)
    monkeypatch.setattr(kd_sweep, "code_version", lambda: "test")
    run = kd_sweep.Run.of("cpu", "fp32", threads=1)
    row = kd_sweep.run_cell(dict(setting="cifar10-e30", method="full", ratio=0.0, seed=0), run, Ctx(), log=lambda s: None)
    assert distilled == [(run, 6, 0.9)] and row["precision"] == "fp32" and row["epochs"] == 30 and row["profile"] == "cpu"
    assert kd_sweep.done_key(row) == "cifar10-e30|full|0.0|0|trainer|fp32"
    # the student's KD weight is the setting's (recorded in its spec); "full-nokd" distils on the labels alone
    for setting, method, alpha in (("cifar10-kd1", "full", 1.0), ("cifar10-kd1", "full-nokd", 0.0)):
        row = kd_sweep.run_cell(dict(setting=setting, method=method, ratio=0.0, seed=0), run, Ctx(), log=lambda s: None)
        assert distilled[-1][2] == alpha and row["setting_spec"]["alpha"] == 1.0


def test_a_rank_cutoff_draws_the_cells_beta_from_the_rows_above_it_first(monkeypatch):
    from types import SimpleNamespace

    from hf_ifbeta.policy import BetaPolicy, rank_positions

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    result = SimpleNamespace(scores=rng.normal(size=200), labels=labels, config={"stratify": True})
    u = rank_positions(result.scores, labels)
    same = kd_sweep.select_above(result, {"a": 2.0, "b": 0.5}, 0.7, 3, cutoff=0.0)
    assert np.array_equal(same, BetaPolicy(2.0, 0.5).select(u, 0.7, labels=labels, seed=3))  # the product's rows
    kept = kd_sweep.select_above(result, {"a": 1.0, "b": 1.0}, 0.7, 3, cutoff=0.3)
    assert len(kept) == 60 and u[kept].min() >= 0.3 and np.all(np.bincount(labels[kept]) == 15)
    short = kd_sweep.select_above(result, {"a": 1.0, "b": 1.0}, 0.3, 3, cutoff=0.5)  # 35 per class, 25 above
    assert np.sum(u[short] >= 0.5) == 100 and len(short) == 140  # every row above it, then 40 from below
    with pytest.raises(ValueError, match=r"rank_cutoff must be in \[0, 1\), got 1.0"):
        kd_sweep.select_above(result, {"a": 1.0, "b": 1.0}, 0.7, 3, cutoff=1.0)
    with pytest.raises(ValueError, match="rank_cutoff needs a stratified Beta policy"):
        kd_sweep.select_above(SimpleNamespace(**{**vars(result), "config": {"stratify": False}}), {"a": 1.0, "b": 1.0}, 0.7, 3, 0.3)

    made = []

    class FakePruner:
        def __init__(self, teacher, config=None, **kwargs):
            made.append(kwargs)

        def score(self, train):
            return SimpleNamespace(**vars(result), select_indices=lambda ratio, seed: np.arange(3), timings={},
                                   policy={"a": 1.0, "b": 1.0, "learned": False})  # fmt: skip

    import hf_ifbeta

    monkeypatch.setattr(hf_ifbeta, "DatasetPruner", FakePruner)
    picked = kd_sweep.Pruning(teacher=None, train=[0]).select("if-beta@policy_a=1,policy_b=1,rank_cutoff=0.3", 0.7, 3)
    assert "rank_cutoff" not in made[-1] and (made[-1]["policy_a"], made[-1]["policy_b"]) == (1, 1)
    assert np.array_equal(picked.indices, kept) and picked.policy["rank_cutoff"] == 0.3
