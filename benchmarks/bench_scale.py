"""ImageNet-scale benchmark: from cached teacher outputs to the kept rows, time per stage and peak memory.

Synthetic teacher outputs with ImageNet-1k / ResNet-50 shapes (n x 2,048 float16 features, 1,000 classes,
float32 logits from a random linear teacher head plus noise, labels that mostly agree with the teacher) are
written to disk in the layout of the teacher pass's cache (`features.npy`, `logits.npy`, `labels.npy`,
`head.npz`, `meta.json`), so that `TeacherOutputs.load` memory-maps them exactly as it does a real cache. Then
the pipeline after the teacher pass runs through the public API, in a fresh process per size:

    TeacherOutputs.load -> pruner.validation_split -> influence_scores (kfac path, fit_subsample, warm start
    from the teacher head) -> get_method("if-beta").score / .select(ratio=0.3) with a ScoringContext
    (rank positions, Beta-policy learning on the reduced problem of hf_ifbeta.policy_scale, Gumbel-top-k draw)

Measured per size: seconds per stage (the influence stages from `InfluenceOutput.info["timings_s"]`), the
peak resident memory of the pipeline process (`ru_maxrss`, which counts memory-mapped pages too) and the
peak RSS within each stage (sampled every 50 ms). Results go to `benchmarks/results/scale.json`; a rerun skips
the sizes already there (`--force` redoes them) and refuses to mix results made with other settings.

    python benchmarks/bench_scale.py                        # 128k, 320k, 1.28M rows (resumable)
    python benchmarks/bench_scale.py --sizes 128000 --force
    python benchmarks/bench_scale.py --report               # the table from the JSON only

The synthetic data (10.4 GB at 1.28 M rows) lives under --data_dir and is deleted after each size.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
IMAGE_COSTS = ROOT / "benchmarks" / "results" / "scale_image_costs.json"
BUDGETS = ROOT / "benchmarks" / "results" / "scale_budgets.json"
DEFAULT_SIZES = (128_000, 320_000, 1_280_000)
NUM_FEATURES, NUM_CLASSES = 2048, 1000
GIB = 1024**3

# Every setting that changes the measured numbers; stored with the results (a rerun with others refuses to mix).
SETTINGS = dict(
    ratio=0.3,
    seed=0,
    num_features=NUM_FEATURES,
    num_classes=NUM_CLASSES,
    features_dtype="float16",
    logits_dtype="float32",
    hessian="kfac",
    stream_chunk_size=65_536,
    fit_subsample=32_768,
    cross_fit=True,
    fit_max_iter=100,
    cg_max_iter=100,
    cg_tol=1e-5,
    val_fraction=0.1,
    val_max_per_class=2000,
    policy_subsample=2000,
    outer_steps=20,
)
STAGES = (
    "load", "val_split", "scan", "gather", "fit", "val_grad", "hessian", "solve", "cross_fit", "scores", "policy", "select"
)  # fmt: skip


# ----------------------------------------------------------------------------- synthetic teacher outputs
def generate(n: int, out: Path, seed: int, chunk: int = 65_536) -> Dict[str, Any]:
    """Write synthetic teacher outputs of n rows to `out` in the teacher-pass cache layout.

    Features `h = relu(0.5 + mu_y + eps)` (class means mu ~ N(0, 0.15^2), eps ~ N(0, 1)), stored float16; logits
    `z = W h + b + N(0, 1)` with the teacher head `W = 0.7 mu`; 5 % of the labels are redrawn at random (label
    noise), the rest are the generating class. The teacher's argmax then agrees with about 80 % of the labels.
    """
    from hf_ifbeta.features import ARRAYS, HEAD_FILE, META_FILE

    import torch

    rng = np.random.default_rng([seed, n])
    d, C = NUM_FEATURES, NUM_CLASSES
    mu = (0.15 * rng.standard_normal((C, d))).astype(np.float32)
    weight = 0.7 * mu
    bias = (0.1 * rng.standard_normal(C)).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {
        "features": np.lib.format.open_memmap(out / "features.npy", "w+", np.float16, (n, d)),
        "logits": np.lib.format.open_memmap(out / "logits.npy", "w+", np.float32, (n, C)),
        "labels": np.lib.format.open_memmap(out / "labels.npy", "w+", np.int64, (n,)),
    }
    noisy_rows = np.lib.format.open_memmap(out / "noisy.npy", "w+", np.bool_, (n,))  # not part of the cache
    assert set(arrays) == set(ARRAYS), f"the cache layout changed: {ARRAYS}"
    agree = 0
    w_t, b_t = torch.from_numpy(weight), torch.from_numpy(bias)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        y = rng.integers(0, C, stop - start)
        h = mu[y] + 0.5
        h += rng.standard_normal(h.shape, dtype=np.float32)
        np.maximum(h, 0.0, out=h)
        h16 = h.astype(np.float16)
        z = torch.from_numpy(h16.astype(np.float32)) @ w_t.T + b_t  # (m, C): the teacher sees the stored features
        z += torch.randn(z.shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + start))
        noisy = rng.random(len(y)) < 0.05
        y_clean, y = y, np.where(noisy, rng.integers(0, C, len(y)), y)
        agree += int((z.argmax(1).numpy() == y).sum())
        arrays["features"][start:stop] = h16
        arrays["logits"][start:stop] = z.numpy()
        arrays["labels"][start:stop] = y
        noisy_rows[start:stop] = noisy & (y != y_clean)
    for a in (*arrays.values(), noisy_rows):
        a.flush()
    del arrays, noisy_rows
    np.savez(out / HEAD_FILE, weight=weight, bias=bias)
    meta = {
        "key": f"synthetic-{n}", "complete": True, "teacher": "synthetic-linear-head", "num_rows": n,
        "features_dtype": "float16", "features": "pre_logits", "num_features": d, "num_classes": C, "has_head": True,
    }  # fmt: skip
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return {"teacher_label_agreement": agree / n, "disk_bytes": sum(f.stat().st_size for f in out.iterdir())}


# ----------------------------------------------------------------------------- the measured pipeline
class RssSampler(threading.Thread):
    """Samples this process's RSS every `interval` s: [(time, bytes)]."""

    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval, self.samples, self.stop = interval, [], threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def run(self):
        while not self.stop.is_set():
            self.samples.append((time.perf_counter(), self.rss()))
            time.sleep(self.interval)

    def peak(self, t0: float, t1: float) -> int:
        return max((r for t, r in self.samples if t0 <= t <= t1), default=0)


def choose_threads() -> int:
    """All cores when the machine is idle; one thread when it is busy (oversubscribed torch is ~10x slower)."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    return max(1, min(cores, int(cores - load + 0.5))) if load < cores - 0.5 else 1


def run_pipeline(data_dir: Path, settings: Dict[str, Any]) -> Dict[str, Any]:
    """Cached arrays -> kept row ids through the public API; seconds and peak RSS per stage."""
    import torch

    from hf_ifbeta.config import PrunerConfig
    from hf_ifbeta.features import TeacherOutputs
    from hf_ifbeta.influence import influence_scores
    from hf_ifbeta.pruner import validation_split
    from hf_ifbeta.scorers import ScoringContext, get_method

    threads = choose_threads()
    torch.set_num_threads(threads)
    sampler = RssSampler()
    sampler.start()
    bounds: Dict[str, tuple] = {}

    def mark(name, t0):
        bounds[name] = (t0, time.perf_counter())
        return bounds[name][1]

    s = settings
    config = PrunerConfig(
        method="if-beta", hessian=s["hessian"], fit_subsample=s["fit_subsample"], fit_max_iter=s["fit_max_iter"],
        cg_max_iter=s["cg_max_iter"], cg_tol=s["cg_tol"], stream_chunk_size=s["stream_chunk_size"],
        val_fraction=s["val_fraction"], val_max_per_class=s["val_max_per_class"], features_dtype=s["features_dtype"],
        policy_subsample=s["policy_subsample"], outer_steps=s["outer_steps"], seed=s["seed"],
    )  # fmt: skip
    t = time.perf_counter()
    outputs = TeacherOutputs.load(data_dir)
    assert isinstance(outputs.features, np.memmap) and outputs.features.dtype == np.float16
    t = mark("load", t)
    labels = np.asarray(outputs.labels)
    val = validation_split(labels, config.val_fraction, config.val_max_per_class, config.seed)
    t = mark("val_split", t)
    influence = influence_scores(
        outputs.features, outputs.logits, outputs.labels, val, alpha=config.alpha, temperature=config.temperature,
        l2=config.l2, hessian=config.hessian, cg_max_iter=config.cg_max_iter, cg_tol=config.cg_tol,
        fit_max_iter=config.fit_max_iter, fit_subsample=config.fit_subsample, init_head=outputs.head,
        chunk_size=config.stream_chunk_size, seed=config.seed, cross_fit=s["cross_fit"],
    )  # fmt: skip
    t_end = time.perf_counter()
    for name in ("scan", "gather", "fit", "val_grad", "hessian", "solve", "cross_fit", "scores"):  # in this order
        bounds[name] = (t, t + influence.info["timings_s"].get(name, 0.0))
        t = bounds[name][1]
    t = t_end
    method = get_method("if-beta")
    context = ScoringContext(config=config, val_indices=val, influence=influence)
    scores = method.score(outputs, context)
    selection = method.select(outputs, scores, s["ratio"], context, seed=s["seed"])
    t_end = time.perf_counter()
    policy_s = selection.policy["info"].get("reduced", {}).get("total_seconds", selection.policy["info"]["total_seconds"])
    bounds["policy"] = (t, t + policy_s)  # select() learns the policy, then ranks and draws
    bounds["select"] = (t + policy_s, t_end)
    sampler.stop.set()
    sampler.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    info = influence.info
    # Sanity of the outcome: rows whose label was redrawn should score low and be kept less often.
    noisy = np.load(data_dir / "noisy.npy")
    kept = np.zeros(len(noisy), bool)
    kept[selection.indices] = True
    return {
        "n": int(outputs.n),
        "threads": threads,
        "load_average_start": None,
        "seconds": {k: bounds[k][1] - bounds[k][0] for k in STAGES},
        "peak_rss_bytes": peak,
        "stage_peak_rss_bytes": {k: sampler.peak(*bounds[k]) for k in STAGES},
        "kept": int(len(selection.indices)),
        "label_noise": {
            "rows": int(noisy.sum()),
            "kept_fraction_noisy": float(kept[noisy].mean()),
            "kept_fraction_clean": float(kept[~noisy].mean()),
            "mean_score_noisy": float(influence.scores[noisy].mean()),
            "mean_score_clean": float(influence.scores[~noisy].mean()),
        },
        "policy": {k: selection.policy[k] for k in ("a", "b", "val_loss_learned", "val_loss_uniform", "fell_back_to_uniform")},
        "policy_reduced": selection.policy["info"].get("reduced"),
        "influence": {
            k: info.get(k)
            for k in ("n_fit", "n_val", "fit_loss", "fit_grad_max", "fit_iterations", "fit_evaluations", "fit_converged",
                      "cg_iterations", "residual", "cg_converged", "val_loss", "cross_fit")
        },  # fmt: skip
    }


def child_main(args) -> None:
    data_dir = Path(args.data_dir)
    if args.child == "generate":
        result = generate(args.n, data_dir, json.loads(args.settings)["seed"])
    else:
        load = os.getloadavg()[0]
        result = run_pipeline(data_dir, json.loads(args.settings))
        result["load_average_start"] = load
        result["load_average_end"] = os.getloadavg()[0]
    Path(args.result).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- per-image costs of the GPU stages
def measure_image_costs(batch_size: int = 32, repeats: int = 3) -> Dict[str, Any]:
    """Seconds per image, on this CPU with one torch thread, of what the ImageNet recipe does per image.

    - `decode_eval`: JPEG decode + the teacher's eval transform (what a teacher-pass data worker does);
    - `decode_train`: JPEG decode + RandomResizedCrop / flip / normalise (what a KD-training data worker does);
    - `teacher_forward`: ResNet-50 forward under inference mode (the teacher pass, and the teacher in a KD step);
    - `kd_step`: ResNet-18 student forward + backward + SGD step plus the ResNet-50 teacher forward, KD loss.
    One synthetic 500 x 375 JPEG (quality 90; ImageNet's typical size) stands for every image; random weights.
    """
    import io

    import timm
    import torch
    from PIL import Image

    from hf_ifbeta.losses import kd_loss

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(375, 500, 3)), 0), 1)  # photo-like low-frequency content
    pixels = (255 * (smooth - smooth.min()) / np.ptp(smooth)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()

    teacher = timm.create_model("resnet50", pretrained=False).eval()
    student = timm.create_model("resnet18", pretrained=False).train()
    config = timm.data.resolve_data_config({}, model=teacher)
    transforms = {
        "decode_eval": timm.data.create_transform(**config, is_training=False),
        "decode_train": timm.data.create_transform(**config, is_training=True),
    }

    def per_image(fn, images):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) / images)
        return min(times)

    costs = {}
    for name, transform in transforms.items():
        costs[name] = per_image(lambda: [transform(Image.open(io.BytesIO(jpeg)).convert("RGB")) for _ in range(64)], 64)
    x = torch.randn(batch_size, 3, 224, 224)
    y = torch.randint(0, 1000, (batch_size,))

    def teacher_forward():
        with torch.inference_mode():
            teacher(x)

    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)

    def kd_step():
        with torch.inference_mode():
            z_teacher = teacher(x)
        loss, _, _ = kd_loss(student(x), z_teacher.clone(), y, alpha=0.9, temperature=4.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    costs["teacher_forward"] = per_image(teacher_forward, batch_size)
    costs["kd_step"] = per_image(kd_step, batch_size)
    return {
        "seconds_per_image": costs, "threads": 1, "batch_size": batch_size, "jpeg_bytes": len(jpeg),
        "load_average": os.getloadavg()[0], "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }  # fmt: skip


# ----------------------------------------------------------------------------- solver budgets and float16 logits
def measure_budgets(data_dir: Path, n: int = 20_000, fit_subsample: int = 8192) -> Dict[str, Any]:
    """How far the kept rows move with the L-BFGS and CG budgets, and with float16 logits, at ImageNet shapes.

    On n synthetic rows (the generator above; 2,048 x 1,000, a 2.05 M-parameter head), a reference run (fit 200
    L-BFGS iterations, CG to a relative residual of 1e-10 or 300 iterations) is compared with cheaper runs:
    CG budgets at the reference head (warm-started there with no fit iterations), fit budgets (CG 40), float16
    logits, and, as the yardstick of noise the method has anyway, another random fit subsample (seed 1).
    Reported per run: Spearman and Pearson of the scores with the reference, and the overlap of the top 70 % of
    rows per class (what the `influence` method keeps at ratio 0.3).
    """
    import torch
    from scipy.stats import pearsonr, spearmanr

    from hf_ifbeta.config import PrunerConfig
    from hf_ifbeta.features import TeacherOutputs
    from hf_ifbeta.influence import influence_scores
    from hf_ifbeta.policy import rank_positions
    from hf_ifbeta.pruner import validation_split
    from hf_ifbeta.scorers import ScoringContext, get_method

    torch.set_num_threads(choose_threads())
    generate(n, data_dir, seed=0)
    outputs = TeacherOutputs.load(data_dir)
    labels = np.asarray(outputs.labels)
    val = validation_split(labels, 0.1, 2000, 0)
    config = PrunerConfig(method="influence")

    def run(logits=None, **kwargs):
        args = dict(hessian="kfac", fit_subsample=fit_subsample, init_head=outputs.head, seed=0)
        args.update(kwargs)
        t = time.perf_counter()
        out = influence_scores(outputs.features, outputs.logits if logits is None else logits, labels, val, **args)
        return out, time.perf_counter() - t

    def kept(out):
        context = ScoringContext(config=config, val_indices=val, influence=out)
        method = get_method("influence")
        return method.select(outputs, method.score(outputs, context), 0.3, context, seed=0).indices

    reference, seconds = run(fit_max_iter=200, cg_max_iter=300, cg_tol=1e-10)
    ref_kept = kept(reference)
    # The reference head, moved back to raw features, warm-starts the CG-only runs: W_raw = W / std, b_raw = b - W_raw mean.
    w_raw = reference.weight / reference.std
    head = (w_raw.astype(np.float32), (reference.bias - w_raw @ reference.mean).astype(np.float32))
    rows = [{"run": "reference", "seconds": seconds, **_solver_info(reference)}]

    def compare(name, out, seconds):
        row = {
            "run": name, "seconds": seconds, **_solver_info(out),
            "spearman": float(spearmanr(out.scores, reference.scores)[0]),
            "pearson": float(pearsonr(out.scores, reference.scores)[0]),
            "kept_overlap": float(len(np.intersect1d(kept(out), ref_kept)) / len(ref_kept)),
        }  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)

    for iters in (5, 10, 20, 40, 80):
        compare(f"cg {iters}", *run(init_head=head, fit_max_iter=0, cg_max_iter=iters, cg_tol=1e-12))
    for iters in (10, 25, 50, 100):
        compare(f"fit {iters}, cg 40", *run(fit_max_iter=iters, cg_max_iter=40, cg_tol=1e-12))
    logits16 = np.asarray(outputs.logits).astype(np.float16)
    compare("float16 logits, fit 100, cg 40", *run(logits=logits16, fit_max_iter=100, cg_max_iter=40, cg_tol=1e-12))
    compare("fit subsample seed 1, fit 100, cg 40", *run(seed=1, fit_max_iter=100, cg_max_iter=40, cg_tol=1e-12))
    plain = dict(fit_max_iter=100, cg_max_iter=40, cg_tol=1e-12, cross_fit=False)
    reference_plain, seconds = run(**plain)
    rows.append({"run": "no cross-fit, fit 100, cg 40", "seconds": seconds, **_solver_info(reference_plain)})
    other_plain, seconds = run(seed=1, **plain)
    rows.append({
        "run": "no cross-fit: fit subsample seed 1 against seed 0", "seconds": seconds, **_solver_info(other_plain),
        "spearman": float(spearmanr(other_plain.scores, reference_plain.scores)[0]),
        "pearson": float(pearsonr(other_plain.scores, reference_plain.scores)[0]),
        "kept_overlap": float(len(np.intersect1d(kept(other_plain), kept(reference_plain))) / len(ref_kept)),
    })  # fmt: skip
    print(json.dumps(rows[-1]), flush=True)
    landscape = policy_landscape(outputs, rank_positions(reference.scores, labels), val)
    shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "n": n, "fit_subsample": fit_subsample, "rows": rows, "policy_landscape": landscape,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }  # fmt: skip


def policy_landscape(outputs, u, val, ratio: float = 0.3, k: int = 128) -> Dict[str, Any]:
    """The outer loss of the bilevel problem over a grid of (a, b), on the same 100 classes and rows, with the
    full 2,048-d standardised features, with a k-d projection (learning rate and L2 mapped, as on the reduced
    path) and with the projection but the settings unmapped. Spearman over the grid, and the grid argmins."""
    from scipy.stats import spearmanr

    from hf_ifbeta.config import PolicyArguments, PolicyReduction
    from hf_ifbeta.losses import ProxyLoss
    from hf_ifbeta.policy import PolicyObjective
    from hf_ifbeta.policy_scale import reduce_policy_problem

    grid = [(la, lb) for la in (-1.0, 0.0, 1.0, 2.0) for lb in (-1.0, 0.0, 1.0, 2.0)]
    data = (outputs.features, outputs.logits, outputs.labels, u, val)

    def args(projection_dim):
        reduction = PolicyReduction(max_classes=100, projection_dim=projection_dim)
        return PolicyArguments(subsample=2000, val_subsample=1000, reduction=reduction)

    problems = {
        "full": reduce_policy_problem(*data, ProxyLoss(), args(None), seed=0),
        "projected": reduce_policy_problem(*data, ProxyLoss(), args(k), seed=0),
    }  # fmt: skip
    variants = {"full": ("full", True), f"projected {k}, mapped lr / l2": ("projected", True),
                f"projected {k}, unmapped": ("projected", False)}  # fmt: skip
    losses, seconds = {}, {}
    for name, (which, mapped) in variants.items():
        p = problems[which]
        train = np.arange(len(p.rows) - len(p.val_indices))
        objective = PolicyObjective(
            p.features[train], p.logits[train], p.labels[train], p.u[train], ratio,
            p.features[p.val_indices], p.logits[p.val_indices], p.labels[p.val_indices],
            l2=p.l2 if mapped else 1e-3, inner_lr=p.inner_lr if mapped else 0.1,
        )  # fmt: skip
        t = time.perf_counter()
        losses[name] = [objective.loss(np.array(ab)) for ab in grid]
        seconds[name] = time.perf_counter() - t
        print(name, losses[name], flush=True)
    full = losses["full"]
    return {
        "grid_log_ab": grid, "ratio": ratio, "losses": losses, "seconds": seconds,
        "spearman_with_full": {name: float(spearmanr(full, v)[0]) for name, v in losses.items() if name != "full"},
        "argmin": {name: grid[int(np.argmin(v))] for name, v in losses.items()},
        "problem": problems["projected"].info,
    }  # fmt: skip


def _solver_info(out) -> Dict[str, Any]:
    info = out.info
    return {k: info.get(k) for k in ("fit_iterations", "fit_grad_max", "fit_loss", "cg_iterations", "residual")}


# ----------------------------------------------------------------------------- driver
def run_child(kind: str, n: int, data_dir: Path, settings: Dict[str, Any]) -> Dict[str, Any]:
    result_file = data_dir.parent / f".{kind}_{n}.json"
    cmd = [sys.executable, __file__, "--child", kind, "--n", str(n), "--data_dir", str(data_dir),
           "--result", str(result_file), "--settings", json.dumps(settings)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} of n={n} failed with exit code {proc.returncode}")
    result = json.loads(result_file.read_text())
    result_file.unlink()
    result["wall_seconds"] = time.perf_counter() - t0
    return result


def load_results(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"settings": SETTINGS, "runs": {}}


def save_results(path: Path, results: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, path)


def table(results: Dict[str, Any]) -> str:
    runs = [results["runs"][k] for k in sorted(results["runs"], key=int)]
    head = "| stage | " + " | ".join(f"n = {r['n']:,}" for r in runs) + " |"
    lines = [head, "|" + " --- |" * (len(runs) + 1)]
    for stage in STAGES:
        cells = [f"{r['seconds'][stage]:.1f} s ({r['stage_peak_rss_bytes'][stage] / GIB:.2f} GiB)" for r in runs]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"**{sum(r['seconds'].values()):.0f} s**" for r in runs) + " |")
    lines.append("| **peak RSS** (ru_maxrss) | " + " | ".join(f"**{r['peak_rss_bytes'] / GIB:.2f} GiB**" for r in runs) + " |")
    lines.append("| synthetic data on disk | " + " | ".join(f"{r['data']['disk_bytes'] / 1e9:.1f} GB" for r in runs) + " |")
    lines.append("| torch threads (load avg at start) | " + " | ".join(f"{r['threads']} ({r['load_average_start']:.1f})" for r in runs) + " |")
    return "\n".join(lines)


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--force", action="store_true", help="redo sizes already in the results")
    parser.add_argument("--report", action="store_true", help="print the table from the JSON only")
    parser.add_argument("--data_dir", default=os.environ.get("HF_IFBETA_SCALE_DATA", "/tmp/hf_ifbeta_scale"))
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--keep_data", action="store_true", help="keep the synthetic data of each size")
    parser.add_argument(
        "--budgets", action="store_true",
        help=f"measure how the kept rows move with the fit / CG budgets and float16 logits, into {BUDGETS.name}",
    )  # fmt: skip
    parser.add_argument(
        "--image_costs", action="store_true",
        help=f"measure per-image CPU costs of the GPU stages (decode, teacher forward, KD step) into {IMAGE_COSTS.name}",
    )  # fmt: skip
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE",
        help="override a setting (e.g. fit_subsample=4096 for a smoke run; use another --results file)",
    )  # fmt: skip
    # internal: one child process per stage of one size
    parser.add_argument("--child", choices=("generate", "run"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.child:
        return child_main(args)

    settings = dict(SETTINGS)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in SETTINGS:
            raise SystemExit(f"Unknown setting {key!r}. Choose between {sorted(SETTINGS)}.")
        settings[key] = type(SETTINGS[key])(value)
    path = Path(args.results)
    results = load_results(path)
    if args.report:
        print(table(results))
        return
    if args.budgets:
        save_results(BUDGETS, measure_budgets(Path(args.data_dir) / "budgets"))
        return
    if args.image_costs:
        costs = measure_image_costs()
        save_results(IMAGE_COSTS, costs)
        print(json.dumps(costs, indent=2))
        return
    if results["settings"] != settings:
        if results["runs"] and not args.force:
            raise SystemExit(
                f"{path} holds results made with other settings ({results['settings']}) than these ({settings}); "
                "pass --force to redo every size with the new settings, or --results to write elsewhere."
            )
        results = {"settings": settings, "runs": {}}
    results["machine"] = {"cpu_count": os.cpu_count(), "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}
    for n in args.sizes:
        if str(n) in results["runs"] and not args.force:
            print(f"n={n:,}: already in {path}, skipped (--force to redo)", flush=True)
            continue
        data_dir = Path(args.data_dir) / f"n{n}"
        try:
            print(f"n={n:,}: generating synthetic teacher outputs in {data_dir}", flush=True)
            data = run_child("generate", n, data_dir, settings)
            print(f"n={n:,}: {data['disk_bytes'] / 1e9:.1f} GB in {data['wall_seconds']:.0f} s; running the pipeline", flush=True)
            run = run_child("run", n, data_dir, settings)
        finally:
            if not args.keep_data:
                shutil.rmtree(data_dir, ignore_errors=True)
        run["data"] = data
        run["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        results["runs"][str(n)] = run
        save_results(path, results)
        print(f"n={n:,}: total {sum(run['seconds'].values()):.0f} s, peak RSS {run['peak_rss_bytes'] / GIB:.2f} GiB", flush=True)
        print(table(results), flush=True)


if __name__ == "__main__":
    main()
