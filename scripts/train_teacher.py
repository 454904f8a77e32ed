"""Train a CIFAR-style ResNet teacher from scratch on a parquet image dataset (by default Tiny-ImageNet), resumable.

Recipe: ResNet-56 (option-A shortcuts, `timm.create_model("cifar10_resnet56", num_classes=C)`) on 32x32
inputs, SGD (momentum 0.9, nesterov, weight decay 5e-4), one-cycle lr peaking at 0.1 (or cosine), batch
128, pad-4 random crop + horizontal flip, cross-entropy, bfloat16 autocast on the CPU. The images
(64x64 in Tiny-ImageNet) are decoded once, resized to 32x32 and cached as uint8 (`decoded_images`):
at 32x32 a step costs a quarter of the 64x64 one on a 2-core CPU, and the student of the benchmark is
then the same CIFAR ResNet-20 as on CIFAR-10. The augmentation of row i at epoch e and the batch order
are functions of (seed, e, i) (`PadCropFlip.params`), as for the students.

The state (model, optimiser, schedule, history) is saved in `--run_dir` at the end of every epoch and
every `--save_steps` steps, atomically; rerunning the same command resumes where the last save left off
(a different recipe in the same run_dir is refused). Each epoch ends with the test top-1. When the last
epoch is done it writes the weights as `{"state_dict": ...}` (float16, the accuracies recorded being those of
these rounded weights; loads as float32 with `hf_ifbeta.models.load_model("cifar10_resnet56", checkpoint=...)`) and a JSON record of the recipe,
accuracy per epoch, wall time and machine.

    python scripts/build_tiny_imagenet.py
    nohup python scripts/train_teacher.py --epochs 20 > benchmarks/cache/tiny_imagenet/teacher.log 2>&1 &
    python scripts/train_teacher.py --epochs 1 --max_steps 20 --run_dir /tmp/smoke   # throughput check
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import kd_sweep  # noqa: E402  (benchmarks/kd_sweep.py: the thread choice; registers the models)

DATA = ROOT / "benchmarks" / "cache" / "tiny_imagenet"
# The augmentation and the models' strides are those of 32x32 CIFAR images.
IMAGE_SIZE = 32


@dataclass
class TeacherRecipe:
    """What determines the trained weights; a resumed run must have the same."""

    model: str = field(default="cifar10_resnet56", metadata={"help": "timm name of a registered CIFAR ResNet."})
    epochs: int = field(default=20, metadata={"help": "Epochs over the training split."})
    batch_size: int = field(default=128, metadata={"help": "Rows per SGD step."})
    lr: float = field(default=0.1, metadata={"help": "Peak learning rate."})
    schedule: str = field(
        default="one-cycle", metadata={"help": "Learning-rate schedule.", "choices": ["one-cycle", "cosine"]}
    )
    momentum: float = field(default=0.9, metadata={"help": "SGD (nesterov) momentum."})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay."})
    precision: str = field(
        default="bf16", metadata={"help": "Autocast of the forward pass.", "choices": ["bf16", "fp32"]}
    )
    seed: int = field(default=0, metadata={"help": "Initialisation, batch order and augmentation stream."})

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        if self.schedule not in ("one-cycle", "cosine"):
            raise ValueError(f"--schedule {self.schedule!r} is not one of 'one-cycle', 'cosine'.")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"--precision {self.precision!r} is not one of 'bf16', 'fp32'.")


@dataclass
class RunArguments:
    """Where the data, the resumable state and the outputs live, and how this process runs."""

    train_file: str = field(default=str(DATA / "train.parquet"), metadata={"help": "Parquet with `img` and `label`."})
    test_file: str = field(default=str(DATA / "test.parquet"), metadata={"help": "Parquet evaluated every epoch."})
    run_dir: str = field(default=str(DATA / "teacher_run"), metadata={"help": "Resumable state (outside git)."})
    output_model: str = field(
        default=str(ROOT / "models" / "tiny_imagenet_resnet56.pt"), metadata={"help": "Final weights."}
    )
    output_results: str = field(
        default=str(ROOT / "benchmarks" / "results" / "tiny_imagenet_teacher.json"), metadata={"help": "Final record."}
    )
    threads: int = field(default=0, metadata={"help": "Torch threads; 0 picks per epoch from the machine's load."})
    save_steps: int = field(
        default=200, metadata={"help": "Also save the state every this many steps (0: per epoch only)."}
    )
    max_steps: Optional[int] = field(
        default=None, metadata={"help": "Stop after this many steps in this process (a smoke test); the state is saved."}
    )
    log_steps: int = field(default=50, metadata={"help": "Print the loss and images/s every this many steps."})


# ----------------------------------------------------------------------------- data
def load_split(parquet: Path, size: int = IMAGE_SIZE) -> Dict:
    """{"x": (n, 3, size, size) uint8, "y": (n,) int64, "names": class names} of a parquet split.

    The pixels are `hf_ifbeta.data.decoded_images`: decoded once and cached, resized the way the product
    feeds a 32 px student, so the teacher learns on the views its students and its teacher pass see.
    """
    import datasets

    from hf_ifbeta.data import column_values, decoded_images

    if not parquet.is_file():
        raise FileNotFoundError(f"{parquet} does not exist: build it first (scripts/build_tiny_imagenet.py).")
    ds = datasets.load_dataset("parquet", data_files={"split": str(parquet)})["split"]
    y = column_values(ds, "label").astype(np.int64)
    label = ds.features["label"]
    names = label.names if isinstance(label, datasets.ClassLabel) else [str(i) for i in range(int(y.max()) + 1)]
    return {"x": decoded_images(ds, "img", size), "y": y, "names": list(names)}


def transforms(model):
    """(training augmentation, evaluation transform) of the model: pad-4 crop + flip, and normalisation only."""
    from hf_ifbeta.data import PadCropFlip, model_data_config

    cfg = model_data_config(model)
    return (
        PadCropFlip(IMAGE_SIZE, cfg["mean"], cfg["std"], padding=4),
        PadCropFlip(IMAGE_SIZE, cfg["mean"], cfg["std"], padding=0, flip=False),
    )


@torch.no_grad()
def evaluate(model, data: Dict, precision: str = "bf16", batch_size: int = 1000) -> float:
    """Test top-1 (%) of `model` on `data` (from `load_split`)."""
    _, plain = transforms(model)
    model.eval()
    correct, n = 0, len(data["y"])
    zeros = np.zeros((batch_size, 2), dtype=np.int64)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for start in range(0, n, batch_size):
            x = torch.from_numpy(np.array(data["x"][start : start + batch_size]))  # a writable copy of the memory map
            logits = model(plain.apply(x, zeros[: len(x)], zeros[: len(x), 0]))
            correct += (logits.argmax(-1).numpy() == data["y"][start : start + batch_size]).sum()
    return 100.0 * float(correct) / n


# ----------------------------------------------------------------------------- state
def save_atomic(obj, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def machine() -> Dict:
    model = platform.processor()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def code_version() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "scripts", "hf_ifbeta")
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


def make_schedule(recipe: TeacherRecipe, opt, total_steps: int):
    if recipe.schedule == "one-cycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total_steps)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)


# ----------------------------------------------------------------------------- training
def train(recipe: TeacherRecipe, run: RunArguments, log=print) -> Optional[Dict]:
    """Train (or resume) to `recipe.epochs`; returns the final record, or None when `max_steps` stopped it first."""
    import timm

    train_data, test_data = load_split(Path(run.train_file)), load_split(Path(run.test_file))
    num_classes = len(train_data["names"])
    n = len(train_data["y"])
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    run_dir = Path(run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.pt"
    # The data by what it is, not where it lies, so that a run resumes from another checkout.
    data_id = {"train_rows": n, "train_bytes": Path(run.train_file).stat().st_size, "num_classes": num_classes}

    torch.manual_seed(recipe.seed)
    model = timm.create_model(recipe.model, num_classes=num_classes)
    opt = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=True, weight_decay=recipe.weight_decay
    )
    sched = make_schedule(recipe, opt, recipe.epochs * steps_per_epoch)
    progress = {
        "epoch": 0, "step": 0, "loss_sum": 0.0, "correct": 0, "seen": 0, "history": [], "train_s": 0.0, "sessions": 0
    }
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["recipe"] != asdict(recipe) or state["data"] != data_id:
            diff = {k: (state["recipe"].get(k), v) for k, v in asdict(recipe).items() if state["recipe"].get(k) != v}
            if state["data"] != data_id:
                diff["data"] = (state["data"], data_id)
            raise ValueError(
                f"{state_path} holds a run with another recipe or data (saved, asked): {diff}. "
                "Pass the saved settings to resume it, or another --run_dir to start afresh."
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        progress = state["progress"]
        log(f"resumed from {state_path}: epoch {progress['epoch'] + 1}, step {progress['step']}/{steps_per_epoch}")
    progress["sessions"] += 1

    def save():
        save_atomic(
            {"recipe": asdict(recipe), "data": data_id, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "progress": progress},
            state_path,
        )

    augment, _ = transforms(model)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.precision == "bf16")
    steps_run = 0
    log(f"{n} rows, {num_classes} classes, {steps_per_epoch} steps per epoch, {recipe.epochs} epochs")
    while progress["epoch"] < recipe.epochs:
        epoch = progress["epoch"]
        threads = run.threads or kd_sweep.pick_threads()
        torch.set_num_threads(threads)
        offsets, flips = augment.params(recipe.seed, epoch, n)
        order = np.random.default_rng([recipe.seed, epoch, 11]).permutation(n)
        model.train()
        t0, seen0 = time.perf_counter(), progress["seen"]
        while progress["step"] < steps_per_epoch:
            rows = order[progress["step"] * recipe.batch_size : (progress["step"] + 1) * recipe.batch_size]
            rows = np.sort(rows)  # sorted reads of the memory-mapped images; a batch's gradient is order-free
            images = augment.apply(torch.from_numpy(train_data["x"][rows]), offsets[rows], flips[rows])  # (B, 3, 32, 32)
            labels = torch.from_numpy(train_data["y"][rows])
            with autocast:
                logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            progress["step"] += 1
            progress["loss_sum"] += loss.item() * len(rows)
            progress["correct"] += (logits.argmax(-1) == labels).sum().item()
            progress["seen"] += len(rows)
            steps_run += 1
            if progress["step"] % run.log_steps == 0 or steps_run == run.max_steps:
                speed = (progress["seen"] - seen0) / (time.perf_counter() - t0)
                log(
                    f"epoch {epoch + 1} step {progress['step']}/{steps_per_epoch} "
                    f"loss {progress['loss_sum'] / progress['seen']:.4f} {speed:.0f} images/s "
                    f"({threads} threads, load {os.getloadavg()[0]:.2f})"
                )
            if run.max_steps is not None and steps_run >= run.max_steps:
                progress["train_s"] += time.perf_counter() - t0
                save()
                log(f"stopped after {steps_run} steps (--max_steps); state in {state_path}")
                return None
            if run.save_steps and progress["step"] % run.save_steps == 0:
                progress["train_s"] += time.perf_counter() - t0
                t0, seen0 = time.perf_counter(), progress["seen"]
                save()
        seconds = time.perf_counter() - t0
        progress["train_s"] += seconds
        top1 = evaluate(model, test_data, recipe.precision)
        progress["history"].append({
            "epoch": epoch + 1,
            "train_loss": progress["loss_sum"] / progress["seen"],
            "train_top1_augmented": 100.0 * progress["correct"] / progress["seen"],
            "test_top1": top1,
            "lr_end": sched.get_last_lr()[0],
            "train_s_total": round(progress["train_s"], 1),
            "threads": threads,
            "load_avg": round(os.getloadavg()[0], 2),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        })
        log(f"epoch {epoch + 1}/{recipe.epochs}: loss {progress['history'][-1]['train_loss']:.4f} test top-1 {top1:.2f} "
            f"({progress['train_s']:.0f} s of training so far)")
        progress.update(epoch=epoch + 1, step=0, loss_sum=0.0, correct=0, seen=0)
        save()
    return finish(recipe, run, model, progress, train_data, test_data, log)


def finish(recipe, run, model, progress, train_data, test_data, log) -> Dict:
    """Final float32 accuracies, the weights in the shared checkpoint format, and the JSON record."""
    # float16 on disk (half the size, small enough for the repository); the model is rounded to those weights
    # first, so that the accuracies recorded are the saved checkpoint's.
    weights = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(weights)
    model.eval()
    test_fp32 = evaluate(model, test_data, "fp32")
    # As many training rows as test rows (the rows are in a fixed random order): the whole split in float32
    # would cost a tenth of the training on a small CPU.
    head = {key: train_data[key][: len(test_data["y"])] for key in ("x", "y")}
    train_fp32 = evaluate(model, head, "fp32")
    out_model = Path(run.output_model)
    out_model.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"state_dict": weights}, out_model)
    size = out_model.stat().st_size
    if size >= 2 * 2**20:
        log(f"warning: {out_model} is {size / 2**20:.1f} MiB, too large to commit")
    record = {
        "model": recipe.model,
        "num_classes": len(train_data["names"]),
        "checkpoint": os.path.relpath(out_model, ROOT),
        "checkpoint_bytes": size,
        "data": {
            "train_file": os.path.relpath(run.train_file, ROOT),
            "test_file": os.path.relpath(run.test_file, ROOT),
            "train_rows": int(len(train_data["y"])),
            "test_rows": int(len(test_data["y"])),
            "source": _source_of(Path(run.train_file)),
        },
        "recipe": {
            **asdict(recipe),
            "optimizer": "SGD nesterov",
            "loss": "cross-entropy",
            "input": f"{IMAGE_SIZE}x{IMAGE_SIZE} RGB (resized, antialiased, when larger), normalised with the CIFAR "
            "ResNets' mean and std",
            "augmentation": "pad-4 zero padding, random 32x32 crop, horizontal flip",
        },
        "test_top1_fp32": test_fp32,
        "train_top1_fp32": train_fp32,
        "train_top1_rows": int(len(head["y"])),
        "epochs": progress["history"],
        "train_wall_s": round(progress["train_s"], 1),
        "sessions": progress["sessions"],
        "machine": machine(),
        "code": code_version(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out_results = Path(run.output_results)
    out_results.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_results.with_name(out_results.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, out_results)
    log(f"test top-1 {test_fp32:.2f} (float32), train {train_fp32:.2f}; {out_model} ({size / 2**20:.2f} MiB)")
    return record


def _source_of(train_file: Path) -> Optional[str]:
    """The conversion's record of where the data came from (its meta.json beside the parquet), if any."""
    meta = train_file.with_name("meta.json")
    if not meta.exists():
        return None
    data = json.loads(meta.read_text())
    return data.get("source")


def main(argv=None):
    from transformers import HfArgumentParser

    parser = HfArgumentParser((TeacherRecipe, RunArguments), description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    recipe, run = parser.parse_args_into_dataclasses(args=argv)
    train(recipe, run, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main()
