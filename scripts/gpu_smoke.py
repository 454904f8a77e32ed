"""Smoke test of every stage on one device: the checks a first GPU run needs, with a pass / fail record.

    bash scripts/gpu_smoke.sh                 # = python scripts/gpu_smoke.py
    python scripts/gpu_smoke.py --keep        # keep the working folder (caches, saved student)

On a CUDA machine (one GPU, under 10 minutes) it runs, on `cuda`:

1. teacher_pass: the ResNet-56 teacher over 5,000 CIFAR-10 training rows (its automatic precision: bf16
   where the GPU computes it), checked against a float32 CPU pass on the first 512 rows;
2. influence_vs_cpu: influence scores on those teacher outputs (exact and Kronecker-factored paths) on the
   device against the CPU (Spearman rank correlation);
3. kfac_convergence: the Kronecker-factored path (fit subsample, cross-fitting, conjugate gradients) on a
   synthetic cache with ImageNet shapes (2,048-d features, 1,000 classes; `benchmarks/bench_scale.py`);
4. prune: `DatasetPruner.prune` at ratio 0.5 with if-beta, every stage on the one device;
5. kd_bf16: one epoch of `DistillationTrainer` under bf16 on the kept rows (ResNet-20 student);
6. kd_fp16: 30 steps under fp16 (finite losses, a gradient scaler, the teacher in eval, frozen, unchanged,
   never in fp16);
7. save_reload: `save_model`, then `timm.create_model("local-dir:...")` gives the same logits;
8. two_processes: two processes on the one device over gloo (`tests/scripts/prune_2proc.py`) keep identical rows.

Without CUDA the same checks run on the CPU with small sizes, and the record says `"gpu_exercised": false`.
The record goes to `benchmarks/results/gpu_smoke.json` on a GPU, `benchmarks/results/gpu_smoke_cpu.json`
on a CPU (`--out` elsewhere): the device, library versions, each check's figures, pass / fail and seconds.
Exit status 0 when every check passes. Needs the CIFAR-10 assets: `$HF_IFBETA_SHARED`, else `shared/` in the
repository, else `../shared`.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# Sizes per device type: the GPU ones are the issue's; the CPU ones keep a shared 2-core machine under 10 minutes.
SIZES = {
    "cuda": dict(teacher_rows=5000, compare_rows=512, kfac_rows=65_536, kfac_features=2048, kfac_classes=1000,
                 kfac_fit_subsample=32_768, prune_rows=5000, kd_batch=128, fp16_steps=30),
    "cpu": dict(teacher_rows=1000, compare_rows=256, kfac_rows=4096, kfac_features=256, kfac_classes=100,
                kfac_fit_subsample=1024, prune_rows=1000, kd_batch=64, fp16_steps=30),
}  # fmt: skip
RATIO = 0.5
CG_TOL = 1e-5


def shared_dir() -> Path:
    for candidate in (os.environ.get("HF_IFBETA_SHARED"), ROOT / "shared", ROOT.parent / "shared"):
        if candidate and (Path(candidate) / "data" / "cifar10" / "train.parquet").exists():
            return Path(candidate)
    raise SystemExit("CIFAR-10 assets not found: set HF_IFBETA_SHARED to the folder with data/cifar10/train.parquet.")


class Smoke:
    """The run's device, sizes, data and record; `check(name, fn)` times one check and records its outcome."""

    def __init__(self, device: torch.device, work: Path, shared: Path):
        import datasets

        self.device, self.work, self.shared = device, work, shared
        self.sizes = SIZES[device.type]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.workers = max(0, min(8, cores - 1))
        files = {"train": str(shared / "data" / "cifar10" / "train.parquet")}
        self.cifar = datasets.load_dataset("parquet", data_files=files)["train"]
        self.checks = []
        self.state = {}  # what later checks reuse: teacher outputs, kept rows, the bf16 trainer

    def teacher(self) -> torch.nn.Module:
        import timm

        path = self.shared / "models" / "cifar10_resnet56.pt"
        return timm.create_model("cifar10_resnet56", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()

    def check(self, name: str, fn) -> None:
        start = time.perf_counter()
        try:
            passed, figures = fn()
        except Exception as err:  # a failed check is recorded and the others still run
            passed, figures = False, {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        record = {"name": name, "passed": bool(passed), "seconds": round(time.perf_counter() - start, 1), **figures}
        self.checks.append(record)
        shown = {k: v for k, v in figures.items() if k != "traceback"}
        print(f"[{'PASS' if passed else 'FAIL'}] {name} ({record['seconds']} s): {json.dumps(shown, default=str)}", flush=True)


# ----------------------------------------------------------------------------------------------------------- checks
def teacher_pass(smoke: Smoke):
    from hf_ifbeta.features import compute_teacher_outputs, resolve_precision

    s = smoke.sizes
    rows = smoke.cifar.select(range(s["teacher_rows"]))
    start = time.perf_counter()
    outputs = compute_teacher_outputs(
        smoke.teacher(), rows, "img", "label", cache_dir=smoke.work / "teacher_pass", device=smoke.device,
        precision="auto", num_workers=smoke.workers, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    reference = compute_teacher_outputs(
        smoke.teacher(), rows.select(range(s["compare_rows"])), "img", "label", cache_dir=smoke.work / "teacher_pass",
        device="cpu", precision="fp32", num_workers=smoke.workers, progress=False,
    )  # fmt: skip
    smoke.state["outputs"] = outputs
    logits, ref = np.asarray(outputs.logits[: s["compare_rows"]]), np.asarray(reference.logits)
    relative = float(np.abs(logits - ref).max() / np.abs(ref).max())
    agreement = float((logits.argmax(1) == ref.argmax(1)).mean())
    accuracy = float((np.asarray(outputs.logits).argmax(1) == np.asarray(outputs.labels)).mean())
    finite = bool(np.isfinite(outputs.features).all() and np.isfinite(outputs.logits).all())
    figures = {
        "rows": len(rows), "precision": resolve_precision("auto", smoke.device), "images_per_s": round(len(rows) / seconds),
        "max_logit_error_vs_cpu_fp32": round(relative, 5), "argmax_agreement_vs_cpu": agreement,
        "teacher_train_accuracy": round(accuracy, 4), "finite": finite,
    }  # fmt: skip
    # bf16 logits are within a few percent of float32; the teacher is ~99 % right on its training rows.
    return finite and relative < 0.05 and agreement >= 0.97 and accuracy > 0.9, figures


def influence_vs_cpu(smoke: Smoke):
    from scipy.stats import spearmanr

    from hf_ifbeta.influence import influence_scores
    from hf_ifbeta.pruner import validation_split

    outputs = smoke.state["outputs"]
    labels = np.asarray(outputs.labels)
    val = validation_split(labels, 0.1, 2000, seed=0)
    figures, passed = {"rows": len(labels)}, True
    for hessian in ("exact", "kfac"):
        runs = []
        for device in (smoke.device, torch.device("cpu")):  # on a CPU machine: a rerun, which must agree too
            start = time.perf_counter()
            out = influence_scores(
                outputs.features, outputs.logits, labels, val, hessian=hessian, init_head=outputs.head, device=device
            )
            runs.append((out, time.perf_counter() - start))
        (dev, dev_s), (cpu, cpu_s) = runs
        rho = float(spearmanr(dev.scores, cpu.scores).statistic)
        figures[hessian] = {"spearman_vs_cpu": round(rho, 6), "device_s": round(dev_s, 2), "cpu_s": round(cpu_s, 2),
                            "device": dev.info["device"]}  # fmt: skip
        passed &= rho >= 0.999 and dev.info["device"].startswith(smoke.device.type)
    return passed, figures


def kfac_convergence(smoke: Smoke):
    import bench_scale

    from hf_ifbeta.features import TeacherOutputs
    from hf_ifbeta.influence import influence_scores
    from hf_ifbeta.pruner import validation_split

    s = smoke.sizes
    folder = smoke.work / "synthetic"
    # bench_scale writes ImageNet shapes from its module constants; the CPU run shrinks them.
    shapes = (bench_scale.NUM_FEATURES, bench_scale.NUM_CLASSES)
    bench_scale.NUM_FEATURES, bench_scale.NUM_CLASSES = s["kfac_features"], s["kfac_classes"]
    try:
        made = bench_scale.generate(s["kfac_rows"], folder, seed=0)
    finally:
        bench_scale.NUM_FEATURES, bench_scale.NUM_CLASSES = shapes
    outputs = TeacherOutputs.load(folder)
    labels = np.asarray(outputs.labels)
    val = validation_split(labels, 0.1, 2000, seed=0)
    start = time.perf_counter()
    out = influence_scores(
        outputs.features, outputs.logits, labels, val, hessian="kfac", fit_subsample=s["kfac_fit_subsample"],
        fit_max_iter=100, cg_max_iter=100, cg_tol=CG_TOL, init_head=outputs.head, device=smoke.device,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    info = out.info
    heads = [info, info.get("cross_fit", {})]
    noisy = np.load(folder / "noisy.npy")
    figures = {
        "rows": s["kfac_rows"], "features": s["kfac_features"], "classes": s["kfac_classes"], "head_params": info["num_params"],
        "fit_subsample": s["kfac_fit_subsample"], "hessian": info["hessian"], "device": info["device"],
        "cg_iterations": [h.get("cg_iterations") for h in heads], "residual": [h.get("residual") for h in heads],
        "cg_converged": [h.get("cg_converged") for h in heads], "teacher_label_agreement": round(made["teacher_label_agreement"], 3),
        "mean_score_noisy_vs_clean": [round(float(out.scores[noisy].mean()), 4), round(float(out.scores[~noisy].mean()), 4)],
        "influence_s": round(seconds, 1), "timings_s": {k: round(v, 2) for k, v in info["timings_s"].items()},
    }  # fmt: skip
    converged = all(h.get("cg_converged") and h.get("residual", 1.0) <= CG_TOL for h in heads)
    return converged and info["hessian"] == "kfac" and bool(np.isfinite(out.scores).all()), figures


def prune(smoke: Smoke):
    from hf_ifbeta import DatasetPruner

    rows = smoke.cifar.select(range(smoke.sizes["prune_rows"]))
    teacher = smoke.teacher()
    # Its own cache folder, so that its teacher pass runs (on the device) rather than reading the first check's.
    pruner = DatasetPruner(teacher, device=smoke.device, image_column="img", cache_dir=str(smoke.work / "prune"))
    start = time.perf_counter()
    pruned = pruner.prune(rows, ratio=RATIO)
    seconds = time.perf_counter() - start
    result = pruner.last_result
    smoke.state["kd_split"], smoke.state["kept"] = rows, result.indices
    stages = {
        "teacher": str(next(teacher.parameters()).device),
        "influence": result.provenance["influence"]["device"],
        "policy": result.policy["info"]["device"],
        "provenance": result.provenance["device"],
    }
    figures = {
        "rows": len(rows), "kept": len(pruned), "policy": [round(result.policy["a"], 3), round(result.policy["b"], 3)],
        "stage_devices": stages, "timings_s": {k: round(v, 2) for k, v in result.timings.items()}, "prune_s": round(seconds, 1),
    }  # fmt: skip
    one_device = all(torch.device(d).type == smoke.device.type for d in stages.values())
    return len(pruned) == round((1 - RATIO) * len(rows)) and one_device, figures


def _kd_trainer(smoke: Smoke, name: str, **precision):
    import timm

    from hf_ifbeta import DistillationTrainer, DistillationTrainingArguments
    from hf_ifbeta.data import prepare_image_dataset

    torch.manual_seed(0)
    student = timm.create_model("cifar10_resnet20")
    args = DistillationTrainingArguments(
        output_dir=str(smoke.work / name), per_device_train_batch_size=smoke.sizes["kd_batch"], learning_rate=0.1,
        optim="sgd", optim_args="momentum=0.9,nesterov=True", weight_decay=5e-4, logging_steps=5, save_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=smoke.device.type == "cpu",
        dataloader_num_workers=min(smoke.workers, 4), seed=0, **precision,
    )  # fmt: skip
    train = prepare_image_dataset(
        smoke.state["kd_split"], student, "img", "label", rows=smoke.state["kept"], cache_dir=str(smoke.work / "decoded")
    )
    return DistillationTrainer(model=student, teacher_model=smoke.teacher(), args=args, train_dataset=train)


def _teacher_digest(teacher: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _kd_figures(trainer, before: str, seconds: float):
    teacher = trainer.teacher_model
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    figures = {
        "steps": trainer.state.global_step, "losses": [round(x, 4) for x in losses], "seconds_per_step": round(seconds / max(1, trainer.state.global_step), 3),
        "teacher_precision": trainer.teacher_precision, "teacher_training": teacher.training,
        "teacher_requires_grad": any(p.requires_grad for p in teacher.parameters()),
        "teacher_unchanged": _teacher_digest(teacher) == before, "teacher_device": str(next(teacher.parameters()).device),
    }  # fmt: skip
    healthy = (
        losses and all(np.isfinite(losses)) and not figures["teacher_training"] and not figures["teacher_requires_grad"]
        and figures["teacher_unchanged"] and trainer.teacher_precision != "fp16"
    )  # fmt: skip
    return bool(healthy), figures


def kd_bf16(smoke: Smoke):
    trainer = _kd_trainer(smoke, "kd_bf16", bf16=True, num_train_epochs=1)
    before = _teacher_digest(trainer.teacher_model)
    start = time.perf_counter()
    trainer.train()
    smoke.state["trainer"] = trainer
    passed, figures = _kd_figures(trainer, before, time.perf_counter() - start)
    figures["rows"] = len(trainer.train_dataset)
    return passed and trainer.teacher_precision == "bf16", figures


def kd_fp16(smoke: Smoke):
    trainer = _kd_trainer(smoke, "kd_fp16", fp16=True, max_steps=smoke.sizes["fp16_steps"])
    before = _teacher_digest(trainer.teacher_model)
    start = time.perf_counter()
    trainer.train()
    passed, figures = _kd_figures(trainer, before, time.perf_counter() - start)
    scaler = trainer.accelerator.scaler
    figures["grad_scaler"] = None if scaler is None else {"type": type(scaler).__name__, "scale": float(scaler.get_scale())}
    if smoke.device.type == "cuda":
        passed &= scaler is not None and figures["steps"] == smoke.sizes["fp16_steps"]
    else:
        figures["grad_scaler_note"] = "accelerate has no fp16 autocast or scaler on a CPU: checked on CUDA only"
    return passed, figures


def save_reload(smoke: Smoke):
    import timm

    trainer = smoke.state["trainer"]
    folder = smoke.work / "saved_student"
    trainer.save_model(str(folder))
    # The trained weights in a fresh float32 model: the trained module's forward still carries accelerate's autocast.
    student = timm.create_model("cifar10_resnet20").eval()
    student.load_state_dict({k: v.float().cpu() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()})
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        error = float((loaded(x) - student(x)).abs().max())
    figures = {"files": sorted(p.name for p in folder.iterdir()), "max_logit_difference": error}
    return error < 1e-4 and "model.safetensors" in figures["files"], figures


def two_processes(smoke: Smoke):
    out = smoke.work / "two_processes"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(ROOT / "tests" / "scripts" / "prune_2proc.py"), "--out", str(out),
    ]  # fmt: skip
    if smoke.device.type == "cuda":
        cmd += ["--device", "cuda:0"]  # both processes on the one GPU; the group is gloo
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return False, {"returncode": done.returncode, "stderr": done.stderr[-3000:]}
    first, second = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    keys = ("pruned_row_ids", "prune", "policy", "reselect", "loaded", "loaded_policy")
    same = {key: first[key] == second[key] for key in keys}
    figures = {"devices": [first["device"], second["device"]], "kept": len(first["prune"]), "identical": same,
               "rank1_alone_differs": second["alone"] != second["reselect"]}  # fmt: skip
    return all(same.values()) and all(torch.device(d).type == smoke.device.type for d in figures["devices"]), figures


CHECKS = (
    ("teacher_pass", teacher_pass),
    ("influence_vs_cpu", influence_vs_cpu),
    ("kfac_convergence", kfac_convergence),
    ("prune", prune),
    ("kd_bf16", kd_bf16),
    ("kd_fp16", kd_fp16),
    ("save_reload", save_reload),
    ("two_processes", two_processes),
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="record path (default: benchmarks/results/gpu_smoke[_cpu].json)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args(argv)

    import accelerate
    import timm
    import transformers

    import hf_ifbeta

    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        import bench_scale

        torch.set_num_threads(bench_scale.choose_threads())  # a busy shared CPU: oversubscribed torch stalls
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / ("gpu_smoke.json" if device.type == "cuda" else "gpu_smoke_cpu.json")
    work = Path(tempfile.mkdtemp(prefix="hf_ifbeta_gpu_smoke_"))
    smoke = Smoke(device, work, shared_dir())
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"gpu_smoke on {name}: {'GPU exercised' if device.type == 'cuda' else 'NO GPU: the CPU runs the checks with small sizes'}; work folder {work}", flush=True)
    try:
        for check_name, fn in CHECKS:
            smoke.check(check_name, lambda: fn(smoke))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    record = {
        "device": device.type,
        "device_name": name,
        "gpu_exercised": device.type == "cuda",
        "versions": {"hf_ifbeta": hf_ifbeta.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "accelerate": accelerate.__version__, "timm": timm.__version__, "cuda": torch.version.cuda},  # fmt: skip
        "sizes": smoke.sizes,
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "all_passed": all(c["passed"] for c in smoke.checks),
        "total_seconds": round(time.perf_counter() - started, 1),
        "checks": smoke.checks,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    failed = [c["name"] for c in smoke.checks if not c["passed"]]
    print(f"{len(smoke.checks) - len(failed)} of {len(smoke.checks)} checks passed in {record['total_seconds']} s "
          f"({'GPU exercised' if record['gpu_exercised'] else 'the GPU was NOT exercised: no CUDA device'}); "
          f"record: {out}" + (f"; failed: {failed}" if failed else ""), flush=True)  # fmt: skip
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
