"""The pruning-for-KD benchmark, cell by cell, resumable, over several settings.

A *setting* fixes the data, the teacher, the student, the student's epochs and the label noise
(`SETTINGS`). A cell is (setting, method, ratio, seed): prune the setting's training split with
`method` at `ratio`, distil the student from scratch on the kept rows with the setting's teacher, and
measure test top-1. Every finished cell is appended to `benchmarks/results/kd_sweep_<profile>.jsonl` at
once, with its setting and the engine that ran it; a rerun skips the cells already there, so the sweep
spreads over several runs.

Cells run through the product: `prepare_image_dataset(train, student, rows=kept)` and
`DistillationTrainer` with `teacher_logit_cache=True`, so the teacher runs once per (seed, epoch, row)
over the whole sweep and every later method and ratio on the same seed reads its logits back. (Cells
committed before the trainer had that cache ran a hand-written loop with the same recipe; they carry
`"engine": "loop"` or no engine, and the CIFAR-10 setting by default.)

    python benchmarks/kd_sweep.py --profile cpu            # run the remaining cells in priority order
    python benchmarks/kd_sweep.py --profile cpu --settings cifar10-e5   # that setting's cells only
    python benchmarks/kd_sweep.py --profile cpu --cells 'cifar10-e5|if-beta|0.7|1'   # these cells only
    python benchmarks/kd_sweep.py --profile cpu --report   # tables + plots from the JSONL only

The profiles distil under bf16 autocast. A CPU without bfloat16 in hardware (AVX2 only) emulates it many
times slower than float32, so there the sweep refuses unless told `--precision fp32` (or, knowing the cost,
`--allow_emulated_bf16`). Every row records its precision, a cell counts as done only in the precision it ran
in, and the report pairs a method with random only within one precision (`report.comparable`).
"""

import argparse
import functools
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import hf_ifbeta  # noqa: E402  (registers the CIFAR ResNets)
from hf_ifbeta.features import native_bf16  # noqa: E402
from hf_ifbeta.models import load_model  # noqa: E402
from hf_ifbeta.pruner import to_jsonable  # noqa: E402
from report import PROTOCOL_ALPHA, precision_of, report  # noqa: E402  (benchmarks/report.py)

SHARED = Path(os.environ.get("HF_IFBETA_SHARED", ROOT.parent / "shared"))
CACHE = ROOT / "benchmarks" / "cache"
RESULTS = ROOT / "benchmarks" / "results"

PROFILES = {
    # lr schedule one-cycle with peak `lr`; a setting's `epochs` scale with the profile's (15 on the CPU).
    "cpu": dict(epochs=15, batch_size=128, lr=0.1, precision="bf16"),
    "gpu": dict(epochs=200, batch_size=128, lr=0.1, precision="bf16"),
    "smoke": dict(epochs=1, batch_size=128, lr=0.1, precision="bf16"),
}
ALPHA, TAU = PROTOCOL_ALPHA, 4.0  # the KD weight is defined in report.py, which cannot import this module
ENGINE = "trainer"  # DistillationTrainer with the teacher-logit cache
PRECISIONS = ("bf16", "fp32")


@dataclass(frozen=True)
class Run:
    """How one invocation distils its cells: the profile's recipe, at `precision` (the profile's unless overridden)."""

    profile: str
    precision: str
    threads: int = 0  # torch threads per cell; 0 picks by the machine's load

    @classmethod
    def of(cls, profile: str, precision: Optional[str] = None, threads: int = 0) -> "Run":
        return cls(profile, precision or PROFILES[profile]["precision"], threads)

    @property
    def recipe(self) -> Dict:
        return {**PROFILES[self.profile], "precision": self.precision}


@dataclass(frozen=True)
class Setting:
    """What a cell distils: data, teacher, student, budget, label noise."""

    name: str
    train_file: str
    test_file: str
    teacher: str = "cifar10_resnet56"
    teacher_checkpoint: str = str(SHARED / "models" / "cifar10_resnet56.pt")
    student: str = "cifar10_resnet20"
    num_classes: int = 10
    epoch_scale: float = 1.0  # epochs = round(profile epochs * epoch_scale)
    label_noise: float = 0.0  # share of training labels flipped to another class (NOISE_SEED)
    alpha: float = ALPHA  # the student's KD weight (`DistillationTrainingArguments.alpha`); the pruner keeps its own
    teacher_precision: str = "auto"  # the teacher pass's; CIFAR-10's committed cells were scored in fp32
    image_column: str = "img"
    label_column: str = "label"

    def epochs(self, profile: str) -> int:
        return max(1, round(PROFILES[profile]["epochs"] * self.epoch_scale))


CIFAR10 = dict(train_file=str(SHARED / "data/cifar10/train.parquet"), test_file=str(SHARED / "data/cifar10/test.parquet"))
TINY = CACHE / "tiny_imagenet"
SETTINGS = {
    s.name: s
    for s in (
        Setting("cifar10", teacher_precision="fp32", **CIFAR10),
        Setting("cifar10-e5", epoch_scale=1 / 3, **CIFAR10),  # 5 epochs on the CPU profile
        Setting("cifar10-e30", epoch_scale=2.0, **CIFAR10),  # 30 epochs
        Setting("cifar10-noisy20", label_noise=0.2, **CIFAR10),
        Setting("cifar10-kd1", alpha=1.0, teacher_precision="fp32", **CIFAR10),  # the teacher's soft labels alone
        Setting(
            "cifar10-t20", teacher="cifar10_resnet20", teacher_checkpoint=str(SHARED / "models" / "cifar10_resnet20.pt"),
            **CIFAR10,
        ),
        Setting(
            "tiny-imagenet", train_file=str(TINY / "train.parquet"), test_file=str(TINY / "test.parquet"),
            teacher_checkpoint=str(ROOT / "models" / "tiny_imagenet_resnet56.pt"), num_classes=202,
        ),
    )
}
NOISE_SEED = 20_240


def noisy_labels(labels: np.ndarray, rate: float, num_classes: int, seed: int = NOISE_SEED):
    """(labels with round(rate * n) rows flipped uniformly to another class, mask of the flipped rows)."""
    rng = np.random.default_rng(seed)
    flipped = np.zeros(len(labels), dtype=bool)
    flipped[rng.choice(len(labels), round(rate * len(labels)), replace=False)] = True
    noisy = labels.copy()
    shift = rng.integers(1, num_classes, int(flipped.sum()))  # never 0: another class
    noisy[flipped] = (labels[flipped] + shift) % num_classes
    return noisy, flipped


class Context:
    """Data, teachers and pruning results of the settings met so far, loaded once per process."""

    def __init__(self):
        self._data, self._teachers, self._pruning = {}, {}, {}

    def data(self, setting: Setting):
        """(train, test, flipped mask or None) as `datasets.Dataset`s; train labels noisy when the setting says."""
        if setting.name not in self._data:
            for path in (setting.train_file, setting.test_file):
                if not Path(path).exists():
                    raise FileNotFoundError(f"Setting {setting.name!r} needs {path}; see docs/settings.md to build it.")
            ds = load_parquet({"train": setting.train_file, "test": setting.test_file})
            train, flipped = ds["train"], None
            found = getattr(train.features[setting.label_column], "num_classes", None)
            if found is not None and found != setting.num_classes:
                raise ValueError(
                    f"Setting {setting.name!r} says num_classes={setting.num_classes}, but the column "
                    f"{setting.label_column!r} of {setting.train_file} has {found} classes."
                )
            if setting.label_noise:
                clean = np.asarray(train[setting.label_column], dtype=np.int64)
                noisy, flipped = noisy_labels(clean, setting.label_noise, setting.num_classes)
                feature = train.features[setting.label_column]
                train = train.remove_columns(setting.label_column).add_column(setting.label_column, noisy.tolist())
                train = train.cast_column(setting.label_column, feature)
            self._data[setting.name] = (train, ds["test"], flipped)
        return self._data[setting.name]

    def teacher(self, setting: Setting):
        key = (setting.teacher, setting.teacher_checkpoint)
        if key not in self._teachers:
            if not Path(setting.teacher_checkpoint).exists():
                raise FileNotFoundError(f"Setting {setting.name!r} needs the teacher {setting.teacher_checkpoint}.")
            self._teachers[key] = load_model(
                setting.teacher, checkpoint=setting.teacher_checkpoint, num_classes=setting.num_classes
            ).eval()
        return self._teachers[key]

    def pruning(self, setting: Setting) -> "Pruning":
        if setting.name not in self._pruning:
            train, _, _ = self.data(setting)
            self._pruning[setting.name] = Pruning(self.teacher(setting), train, setting)
        return self._pruning[setting.name]


def stable_copy(path: str) -> str:
    """`path`, copied once to `$HF_HOME/hf_ifbeta/data_copies/<sha256 prefix>/<name>` (outside the repository).

    `datasets` fingerprints a local data file by its path and modification time, so every cache keyed by that
    fingerprint (teacher pass, teacher logits) would miss whenever the file is mounted again with new times. A
    copy named by its content, with a fixed modification time, keeps one path and time for the same bytes
    (also when two processes copy at once); changed bytes get a new copy, and a damaged copy is made again.
    """
    import hashlib
    import shutil

    from hf_ifbeta.files import atomic_path, default_cache_dir

    def digest(p: Path) -> str:
        with open(p, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    source = Path(path)
    expected = digest(source)
    target = default_cache_dir() / "data_copies" / expected[:16] / source.name
    if not target.exists() or digest(target) != expected:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
            os.utime(tmp, ns=(0, 0))
    return str(target)


def load_parquet(files: Dict[str, str]):
    """`datasets.load_dataset("parquet", data_files=files)` through `stable_copy`, so that its fingerprint, and
    the caches keyed by it, survive a remount of the data."""
    import datasets

    return datasets.load_dataset("parquet", data_files={split: stable_copy(path) for split, path in files.items()})


def load_teacher(setting: str = "cifar10"):
    return Context().teacher(SETTINGS[setting])


# ----------------------------------------------------------------------------- cells
def default_cells(settings=None) -> List[Dict]:
    """The queue in priority order: the engine check on CIFAR-10, then each setting, seed by seed (so that
    whatever has finished is paired), random and if-beta before influence top-k, cheapest ratio first."""
    cells = [
        dict(setting="cifar10", method=m, ratio=r, seed=0)
        for m, r in (("random", 0.7), ("if-beta", 0.7), ("full", 0.0))
    ]

    def block(name, ratios=(0.7, 0.5, 0.3), seeds=(0, 1, 2), influence_seeds=(0, 1)):
        out = []
        for seed in seeds:
            for ratio in ratios:
                out += [dict(setting=name, method=m, ratio=ratio, seed=seed) for m in ("random", "if-beta")]
            if seed in influence_seeds:
                out += [dict(setting=name, method="influence", ratio=ratio, seed=seed) for ratio in ratios]
            if seed == seeds[0]:
                out.append(dict(setting=name, method="full", ratio=0.0, seed=seed))
        return out

    cells += block("cifar10-e5")
    # Students on the policies the stage-view objective learned, before the other settings: whether it can replace
    # the default decides which IF-Beta those settings should run.
    cells += [
        dict(setting="cifar10", method='if-beta@policy_learned_by="stage2x2"', ratio=r, seed=s)
        for s in (0, 1, 2) for r in (0.7, 0.5, 0.3)
    ]  # fmt: skip
    # The default through the trainer on the rows of the two stage-view cells furthest below the loop's default:
    # is the gap between them the engine or the policy?
    cells += [dict(setting="cifar10", method="if-beta", ratio=r, seed=s) for r, s in ((0.7, 1), (0.5, 2))]
    cells += block("cifar10-noisy20")
    cells += block("cifar10-t20")
    cells += block("tiny-imagenet", seeds=(0, 1))  # the slowest cells: two seeds, as the protocol allows for those
    cells += block("cifar10-e30", ratios=(0.7, 0.3), seeds=(0, 1))
    return [c for c in cells if settings is None or c["setting"] in settings]


def cell_key(cell: Dict) -> str:
    """`setting|method|ratio|seed`; cells without a setting are CIFAR-10's."""
    return f"{cell.get('setting', 'cifar10')}|{cell['method']}|{cell['ratio']}|{cell['seed']}"


def done_key(row: Dict) -> str:
    """What a finished row counts as: its cell, the engine that ran it (`loop` before the trainer's cache) and the
    precision the student was distilled in (`report.precision_of`)."""
    return f"{cell_key(row)}|{row.get('engine', 'loop')}|{precision_of(row)}"


def parse_cell(key: str) -> Dict:
    """`"setting|method|ratio|seed"` (as `cell_key` writes it) -> the cell."""
    try:
        setting, method, ratio, seed = key.split("|")
        cell = dict(setting=setting, method=method, ratio=float(ratio), seed=int(seed))
    except ValueError:
        raise ValueError(f"A cell is 'setting|method|ratio|seed', e.g. 'cifar10-e5|random|0.7|0'; got {key!r}.") from None
    if setting not in SETTINGS:
        raise ValueError(f"Unknown setting {setting!r} in cell {key!r}. Choose between {sorted(SETTINGS)}.")
    if not 0.0 <= cell["ratio"] < 1.0:
        raise ValueError(f"The ratio of cell {key!r} must be in [0, 1).")
    return cell


def read_results(path: Path) -> List[Dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def parse_method(method: str):
    """`"if-beta@policy_max_ab=2,inner_epochs=5"` -> ("if-beta", {"policy_max_ab": 2.0, "inner_epochs": 5.0}):
    an ablation is a method name plus PrunerConfig overrides (`preset="<name>"` starts from a named configuration),
    and is its own row of the table."""
    name, _, spec = method.partition("@")
    overrides = {}
    for item in filter(None, spec.split(",")):
        key, value = item.split("=")
        overrides[key] = json.loads(value) if value not in ("None",) else None
    return name, overrides


class Pruning:
    """Pruning through the public API; the teacher pass is cached on disk, so it runs once for all methods."""

    def __init__(self, teacher, train=None, setting: Optional[Setting] = None):
        self.teacher, self.setting = teacher, setting or SETTINGS["cifar10"]
        self.train = train
        self.results = {}

    def select(self, method: str, ratio: float, seed: int):
        from hf_ifbeta import DatasetPruner, PrunerConfig

        if self.train is None:
            self.train = Context().data(self.setting)[0]
        name, overrides = parse_method(method)
        key, learned_by = method, overrides.pop("policy_learned_by", None)
        if learned_by is not None:  # the (a, b) another objective learned for this ratio and seed, fixed
            a, b = learned_policy(learned_by, ratio, seed)
            overrides.update(policy_a=a, policy_b=b)
            key = (method, ratio, seed)
        preset = overrides.pop("preset", None)  # a named configuration (`hf_ifbeta.config.PRESETS`), other fields on top
        cutoff = overrides.pop("rank_cutoff", None)
        if key not in self.results:
            pruner = DatasetPruner(
                self.teacher, PrunerConfig.from_preset(preset) if preset else None,
                image_column=self.setting.image_column, label_column=self.setting.label_column,
                method=name, **{"teacher_precision": self.setting.teacher_precision, **overrides},
            )
            self.results[key] = pruner.score(self.train)
        result = self.results[key]
        indices = result.select_indices(ratio, seed=seed)
        policy = result.policy if learned_by is None else {**result.policy, "learned_by": LEARNED_POLICIES[learned_by]}
        if cutoff is not None:
            indices = select_above(result, policy, ratio, seed, float(cutoff))
            policy = {**policy, "rank_cutoff": float(cutoff)}
        hessian = getattr(result, "provenance", {}).get("influence", {}).get("hessian")
        return Selection(indices, policy, dict(result.timings), hessian)


def select_above(result, policy: Dict, ratio: float, seed: int, cutoff: float) -> np.ndarray:
    """A policy family beyond the Beta, tried here before the product: the cell's Beta over the class-wise ranks,
    drawn first from the rows ranked at or above `cutoff` of their class (`if-beta@...,rank_cutoff=0.3`). The same
    Gumbel keys as `BetaPolicy.select` on the same seed, so that `cutoff=0` keeps the same rows."""
    from hf_ifbeta.policy import BetaPolicy, rank_positions
    from hf_ifbeta.selection import gumbel_top_k, num_kept, select_per_class

    if not 0.0 <= cutoff < 1.0:
        raise ValueError(f"rank_cutoff must be in [0, 1), got {cutoff}.")
    if not (result.config.get("stratify", True) and policy.get("a")):
        raise ValueError("rank_cutoff needs a stratified Beta policy (if-beta with stratify=true).")
    u = rank_positions(result.scores, result.labels, stratify=True)
    log_w = BetaPolicy(policy["a"], policy["b"]).log_weights(u)
    log_w[u < cutoff] -= 1e6  # below every key above the cutoff, in their own order, for a class that runs short
    pick = gumbel_top_k(log_w, np.random.default_rng(seed), draw="rows")
    return select_per_class(result.labels, num_kept(len(u), ratio), True, pick)


class Selection(NamedTuple):
    """The kept rows of one cell, the policy that drew them, the pruning's timings and its inverse-Hessian
    solver (None for methods without influence scores)."""

    indices: np.ndarray
    policy: Optional[Dict]
    timings: Dict[str, float]
    hessian: Optional[str]


# Policies learned outside the product, by `benchmarks/policy_landscape.py --product ... --seeds ...` runs (their key
# in its JSON), applied as fixed policies by `if-beta@policy_learned_by="<name>"`, one (a, b) per ratio and seed.
LEARNED_POLICIES = {
    "stage2x2": 'policy_coverage_weight=0.5 policy_entropy_weight=0.0003 policy_max_ab=16 '
    'policy_objective="kd+coverage" coverage=layer2_2x2',
}


def learned_policy(name: str, ratio: float, seed: int, path: Path = RESULTS / "policy_landscape_cpu.json"):
    """The (a, b) the `policy_landscape.py --product` run `LEARNED_POLICIES[name]` learned at (ratio, seed), as the
    pruner would use it (uniform after a fallback)."""
    if name not in LEARNED_POLICIES:
        raise ValueError(f"Unknown learned policy {name!r}; choose from {sorted(LEARNED_POLICIES)}.")
    key, runs = LEARNED_POLICIES[name], json.loads(path.read_text()).get("product", {})
    if key not in runs:
        raise KeyError(f"No --product run {key!r} in {path}; it has {sorted(runs)}.")
    try:
        record = runs[key]["by_seed"][str(float(ratio))][str(seed)]
    except KeyError:
        raise KeyError(f"The --product run {key!r} in {path} did not learn ratio {ratio}, seed {seed}.") from None
    return (1.0, 1.0) if record["fell_back_to_uniform"] else (record["a"], record["b"])


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """The commit this process started with (`+dirty` when hf_ifbeta/ had uncommitted changes): the code it
    imported once and runs for every cell, whatever lands while it runs."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    return commit + ("+dirty" if git("status", "--porcelain", "--", "hf_ifbeta") else "")


def pick_threads() -> int:
    """All cores when the machine is ours, one when others load it (oversubscribed torch threads thrash)."""
    cores = os.cpu_count() or 1
    others = os.getloadavg()[0] - torch.get_num_threads()
    return cores if others < 0.7 else 1


def student_optimizer(student: torch.nn.Module, cfg: Dict, steps: int):
    """The benchmark's recipe: SGD nesterov, weight decay on every parameter, one-cycle schedule over `steps`."""
    optimizer = torch.optim.SGD(student.parameters(), lr=cfg["lr"], momentum=0.9, nesterov=True, weight_decay=5e-4)
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg["lr"], total_steps=steps)


def distil(setting: Setting, run: Run, train, test, rows: np.ndarray, seed: int, teacher, alpha: float):
    """Distil the setting's student from scratch on `rows` of `train` with DistillationTrainer; accuracy and timings."""
    import timm
    from transformers.trainer_callback import PrinterCallback

    from hf_ifbeta import DistillationTrainer, DistillationTrainingArguments
    from hf_ifbeta.data import prepare_image_dataset

    cfg, epochs = run.recipe, setting.epochs(run.profile)
    torch.manual_seed(seed)
    student = timm.create_model(setting.student, num_classes=setting.num_classes)
    columns = (setting.image_column, setting.label_column)
    train_ds = prepare_image_dataset(train, student, *columns, rows=rows, seed=seed)
    test_ds = prepare_image_dataset(test, student, *columns, train=False)
    optimizer, schedule = student_optimizer(student, cfg, epochs * math.ceil(len(rows) / cfg["batch_size"]))
    with tempfile.TemporaryDirectory() as output_dir:
        args = DistillationTrainingArguments(
            output_dir=output_dir, alpha=alpha, temperature=TAU, num_train_epochs=epochs,
            per_device_train_batch_size=cfg["batch_size"], per_device_eval_batch_size=1000,
            bf16=cfg["precision"] == "bf16", use_cpu=not torch.cuda.is_available(), max_grad_norm=0.0,
            save_strategy="no", eval_strategy="no", logging_strategy="epoch", report_to="none", disable_tqdm=True,
            seed=seed, teacher_logit_cache=True, teacher_logit_cache_dir=str(CACHE / "teacher_logits"),
        )
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=train_ds, optimizers=(optimizer, schedule),
        )
        trainer.remove_callback(PrinterCallback)
        t0 = time.perf_counter()
        trainer.train()
        kd_time = time.perf_counter() - t0
        accuracy = trainer.evaluate(test_ds)["eval_accuracy"]
    return {
        "test_top1": 100.0 * accuracy,
        "kd_time_s": kd_time,
        "images_per_s": epochs * len(rows) / kd_time,
        "teacher_forward_rows": trainer.teacher_forward_rows,
        "teacher_logits_reused": trainer.logit_cache.reused,
    }


def run_cell(cell: Dict, run: Run, ctx: Context, log=print) -> Dict:
    setting = SETTINGS[cell["setting"]]
    method, ratio, seed = cell["method"], cell["ratio"], cell["seed"]
    train, test, flipped = ctx.data(setting)
    teacher = ctx.teacher(setting)
    policy, prune_time, timings, hessian = None, 0.0, {}, None
    if method in ("full", "full-nokd"):
        rows = np.arange(len(train))
    else:
        rows, policy, timings, hessian = ctx.pruning(setting).select(method, ratio, seed)
        prune_time = sum(timings.values())
    torch.set_num_threads(run.threads or pick_threads())
    log(f"cell {cell_key(cell)}: {len(rows)} rows, {setting.epochs(run.profile)} epochs, {run.precision}, "
        f"{torch.get_num_threads()} threads")
    out = distil(setting, run, train, test, np.asarray(rows), seed, teacher, alpha=0.0 if method == "full-nokd" else setting.alpha)
    noise = {}
    if flipped is not None:
        kept = np.zeros(len(train), dtype=bool)
        kept[rows] = True
        noise = {
            "flipped_kept_share": float(kept[flipped].mean()),  # of the flipped rows, the share kept
            "clean_kept_share": float(kept[~flipped].mean()),
            "flipped_share_of_kept": float(flipped[kept].mean()),
        }
    return {
        **cell,
        "engine": ENGINE,
        "profile": run.profile,
        "setting_spec": asdict(setting),
        "kept": int(len(rows)),
        "precision": run.precision,
        "epochs": setting.epochs(run.profile),
        "prune_time_s": prune_time,
        "prune_timings": timings,
        "hessian": hessian,  # older cells lack it: theirs was "exact" (every head had P <= 20,000)
        "policy": to_jsonable(policy),
        **out,
        **noise,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "code": code_version(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--settings", nargs="*", choices=sorted(SETTINGS), help="only these settings")
    parser.add_argument("--methods", nargs="*", help="only these methods")
    parser.add_argument("--max_cells", type=int, default=None, help="stop after this many new cells")
    parser.add_argument(
        "--cells", nargs="*", metavar="SETTING|METHOD|RATIO|SEED",
        help="run these cells (in this order, skipping those already done) instead of the default queue",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads per cell; 0 picks by the machine's load")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=None,
        help="distil in this precision instead of the profile's; cells count as done, and pair, per precision",
    )
    parser.add_argument("--report", action="store_true", help="print the tables and make plots, run nothing")
    parser.add_argument(
        "--allow_emulated_bf16", action="store_true",
        help="run a bf16 profile even where the hardware emulates bfloat16 (many times slower than float32)",
    )
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / f"kd_sweep_{args.profile}.jsonl"
    if args.report:
        report(out_path)
        return
    run = Run.of(args.profile, args.precision, args.threads)
    done = {done_key(r) for r in read_results(out_path)}
    queue = [parse_cell(key) for key in args.cells] if args.cells else default_cells(args.settings)
    todo = [
        c for c in queue
        if done_key({**c, "engine": ENGINE, "precision": run.precision}) not in done
        and (not args.methods or c["method"] in args.methods)
    ]  # fmt: skip
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if todo and run.precision == "bf16" and not native_bf16(device) and not args.allow_emulated_bf16:
        # Float32 only when asked for: its cells pair with no bf16 cell, so a group must be rerun in it whole.
        hardware = (
            f"CPU (torch capability {torch.backends.cpu.get_cpu_capability()}; no AVX512-BF16 or AMX)"
            if device.type == "cpu" else torch.cuda.get_device_name(device)
        )
        parser.error(
            f"profile {args.profile!r} distils under bf16 autocast, which this {hardware} does not compute natively: "
            "its cells would run many times slower. Run them on a machine that does, distil in float32 with "
            "--precision fp32 (those cells pair only with other fp32 cells), or pass --allow_emulated_bf16."
        )
    print(f"{len(done)} rows in the file, {len(todo)} cells to go in {run.precision} -> {out_path} "
          f"(code {code_version()})", flush=True)
    ctx, new = Context(), 0
    for cell in todo:
        try:
            row = run_cell(cell, run, ctx, log=lambda s: print(s, flush=True))
        except FileNotFoundError as err:  # a setting whose data or teacher is not built yet
            print(f"skip {cell_key(cell)}: {err}", flush=True)
            continue
        with open(out_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"done {cell_key(cell)}: top-1 {row['test_top1']:.2f} in {row['kd_time_s']:.0f} s "
              f"(teacher on {row['teacher_forward_rows']} rows)", flush=True)
        new += 1
        if args.max_cells and new >= args.max_cells:
            break


if __name__ == "__main__":
    main()
