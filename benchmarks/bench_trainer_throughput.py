"""KD training throughput on the user's path: DistillationTrainer vs a hand-written loop, side by side.

Both train a CIFAR ResNet-20 student from scratch against the online ResNet-56 teacher (KD alpha 0.9,
tau 4, SGD momentum 0.9 nesterov, weight decay 5e-4, constant lr, no gradient clipping, batch 128,
bf16 autocast by default (`--precision fp32` for float32), channels_last):

- `loop`: a plain PyTorch loop over CIFAR-10 rows pre-decoded into a uint8 tensor outside the timing,
  batched pad-crop-flip augmentation, no DataLoader;
- `trainer`: what a user writes: `prepare_image_dataset` on the parquet file (which decodes once into
  its uint8 cache, timed separately as `decode_once_s`), `DistillationTrainer(...).train()` with its
  default DataLoader settings;
- `trainer_cached`: the same with `teacher_logit_cache=True` on a second run over the same views (the
  teacher never runs), what a sweep's later cells cost.

Runs alternate (loop, trainer, loop, trainer, ...) so that load on a shared machine hits both alike;
each run's first `--warmup` steps are not timed, the rest is cut into windows of `--window` steps. The
table gives the median images/s over all windows, and the median over rounds of the trainer / loop
ratio of back-to-back runs (the figure to read on a noisy machine).

The large-image pipeline (ImageNet: lazy decode + timm's training transform in DataLoader workers) is
measured on a local image folder of 224 px JPEGs: images/s of the data pipeline alone, per worker count.

    python benchmarks/bench_trainer_throughput.py --rows 38400 --steps 40 --rounds 3
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import timm
import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

import hf_ifbeta  # noqa: F401  (registers the CIFAR ResNets)
from hf_ifbeta import DistillationTrainer, DistillationTrainingArguments
from hf_ifbeta.data import DistillationCollator, PadCropFlip, model_data_config, prepare_image_dataset
from hf_ifbeta.features import native_bf16
from hf_ifbeta.losses import kd_loss

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HF_IFBETA_SHARED", ROOT.parent / "shared"))
ALPHA, TEMPERATURE, LR, MOMENTUM, WEIGHT_DECAY = 0.9, 4.0, 0.1, 0.9, 5e-4


class StepTimes(TrainerCallback):
    """perf_counter after every optimizer step (the same point the plain loop records)."""

    def __init__(self):
        self.times = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.times = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def window_rates(times, batch_size, warmup, window):
    """images/s of consecutive `window`-step windows after `warmup` steps; times[k] = end of step k."""
    return [
        window * batch_size / (times[start + window] - times[start])
        for start in range(warmup, len(times) - window, window)
    ]


def models(seed=0):
    torch.manual_seed(seed)
    student = timm.create_model("cifar10_resnet20")
    checkpoint = SHARED / "models" / "cifar10_resnet56.pt"
    teacher = timm.create_model("cifar10_resnet56", pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint)))
    return student, teacher.eval()


def run_loop(x_u8, labels, args):
    """The hand-written loop: what DistillationTrainer does per step, written out over a uint8 tensor."""
    student, teacher = models()
    student.to(memory_format=torch.channels_last)
    teacher.to(memory_format=torch.channels_last).requires_grad_(False)
    decay = [p for p in student.parameters() if p.ndim > 1]
    no_decay = [p for p in student.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, nesterov=True)
    cfg = model_data_config(student)
    augment = PadCropFlip(32, cfg["mean"], cfg["std"], padding=4)
    generator = torch.Generator().manual_seed(0)
    student.train()
    times, steps = [time.perf_counter()], args.warmup + args.steps
    while len(times) <= steps:
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            rows = order[start : start + args.batch_size]
            offsets = torch.randint(0, 9, (len(rows), 2), generator=generator)
            flips = torch.rand(len(rows), generator=generator) < 0.5
            x = augment.apply(x_u8[rows], offsets, flips).contiguous(memory_format=torch.channels_last)
            y = labels[rows]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                student_logits = student(x)
                with torch.no_grad():
                    teacher_logits = teacher(x)
            loss, _, _ = kd_loss(student_logits, teacher_logits, y, alpha=ALPHA, temperature=TEMPERATURE)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter())
            if len(times) > steps:
                break
    return times


def run_trainer(train_ds, args, output_dir, cache_dir=None):
    student, teacher = models()
    timer = StepTimes()
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=DistillationTrainingArguments(
            output_dir=str(output_dir),
            alpha=ALPHA,
            temperature=TEMPERATURE,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.warmup + args.steps,
            learning_rate=LR,
            optim="sgd",
            optim_args=f"momentum={MOMENTUM},nesterov=True",
            weight_decay=WEIGHT_DECAY,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,  # no clipping, as in the loop
            bf16=args.precision == "bf16",
            use_cpu=True,
            logging_steps=10,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_drop_last=True,
            seed=0,
            teacher_logit_cache=cache_dir is not None,
            teacher_logit_cache_dir=cache_dir,
        ),
        train_dataset=train_ds,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)  # logs are still made every 10 steps, just not printed
    trainer.train()
    return timer.times, trainer.teacher_forward_rows


def image_folder_rates(folder_rows, batch_size, worker_counts):
    """images/s of the large-image pipeline (lazy JPEG decode + timm's training transform) by DataLoader workers."""
    from PIL import Image

    student = timm.create_model("resnet18", pretrained=False)
    rates = {}
    with tempfile.TemporaryDirectory() as root:
        rng = np.random.default_rng(0)
        for i in range(folder_rows):
            cls = Path(root) / f"class_{i % 4}"
            cls.mkdir(exist_ok=True)
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # smooth after the upscale, like a photo
            Image.fromarray(pixels).resize((256, 256), Image.BILINEAR).save(cls / f"{i}.jpg", quality=90)
        folder = datasets.load_dataset("imagefolder", data_dir=root, split="train")
        train_ds = prepare_image_dataset(folder, student, "image", "label")
        for workers in worker_counts:
            loader = torch.utils.data.DataLoader(
                train_ds, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=DistillationCollator(),
                persistent_workers=False,
            )
            start = time.perf_counter()
            seen = sum(len(batch["pixel_values"]) for batch in loader)
            rates[f"num_workers={workers}"] = seen / (time.perf_counter() - start)
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of each run")
    parser.add_argument("--window", type=int, default=5, help="steps per timed window")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (loop, trainer, trainer with cached logits)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rows", type=int, default=38_400, help="CIFAR-10 train rows trained on")
    parser.add_argument("--folder-rows", type=int, default=512, help="224 px images in the image-folder measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"), help="autocast of both paths")
    parser.add_argument("--output", default=str(ROOT / "benchmarks/results/trainer_throughput.json"))
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    cifar = datasets.load_dataset("parquet", data_files={"train": str(SHARED / "data/cifar10/train.parquet")})["train"]
    cifar = cifar.select(range(args.rows))
    student, _ = models()
    rates = {"loop": [], "trainer": [], "trainer_cached": []}
    paired = []  # trainer / loop within each round: the two ran back to back, under similar load
    with tempfile.TemporaryDirectory() as tmp:
        # The user's path: the first call decodes the parquet rows into the uint8 cache, later calls map it.
        start = time.perf_counter()
        train_ds = prepare_image_dataset(cifar, student, "img", "label", cache_dir=f"{tmp}/decoded")
        decode_once = time.perf_counter() - start
        start = time.perf_counter()
        prepare_image_dataset(cifar, student, "img", "label", cache_dir=f"{tmp}/decoded")
        decode_cached = time.perf_counter() - start
        # The loop's uint8 tensor, decoded outside any timing.
        x_u8 = torch.from_numpy(np.array(train_ds.images))
        labels = torch.from_numpy(train_ds.labels)
        fill = run_trainer(train_ds, args, f"{tmp}/out", cache_dir=f"{tmp}/logits")  # fills the cache for its steps
        for round_ in range(args.rounds):
            timing = (args.batch_size, args.warmup, args.window)
            loop_round = window_rates(run_loop(x_u8, labels, args), *timing)
            trainer_round = window_rates(run_trainer(train_ds, args, f"{tmp}/out")[0], *timing)
            cached_times, teacher_rows = run_trainer(train_ds, args, f"{tmp}/out", cache_dir=f"{tmp}/logits")
            assert teacher_rows == 0, f"the cached run ran the teacher on {teacher_rows} rows"
            cached_round = window_rates(cached_times, *timing)
            rates["loop"] += loop_round
            rates["trainer"] += trainer_round
            rates["trainer_cached"] += cached_round
            paired.append(statistics.median(trainer_round) / statistics.median(loop_round))
            print(
                f"round {round_}: loop {statistics.median(loop_round):.0f}, trainer {statistics.median(trainer_round):.0f}, "
                f"trainer with cached teacher logits {statistics.median(cached_round):.0f} images/s "
                f"(load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    folder = image_folder_rates(args.folder_rows, 64, (0, 1, 2))
    load_after = os.getloadavg()

    loop, trainer, cached = (statistics.median(rates[k]) for k in ("loop", "trainer", "trainer_cached"))
    result = {
        "benchmark": "KD throughput on the user's path: DistillationTrainer (prepare_image_dataset on parquet) vs a plain loop",
        "student": "cifar10_resnet20 (scratch)",
        "teacher": "cifar10_resnet56 (online)",
        "rows": args.rows,
        "batch_size": args.batch_size,
        "precision": f"{'bf16 autocast' if args.precision == 'bf16' else 'float32'}, channels_last",
        "steps_per_run": args.steps,
        "warmup_steps": args.warmup,
        "window_steps": args.window,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "images_per_s": {"loop": loop, "trainer": trainer, "trainer_cached_teacher_logits": cached},
        "trainer_vs_loop": trainer / loop,
        "trainer_vs_loop_per_round": paired,
        "trainer_vs_loop_paired_median": statistics.median(paired),
        "decode_once_s": decode_once,
        "decode_cached_s": decode_cached,
        "cache_fill_teacher_rows": fill[1],
        "window_rates": rates,
        "image_folder_224px_pipeline_images_per_s": folder,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16(torch.device("cpu")),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
    }
    print("\n| method | images/s (median of windows) |\n| --- | --- |")
    print(f"| plain loop (pre-decoded uint8, batched augmentation, channels_last) | {loop:.0f} |")
    print(f"| DistillationTrainer (prepare_image_dataset on parquet) | {trainer:.0f} ({trainer / loop:.1%} of loop; "
          f"paired per round: {statistics.median(paired):.1%}) |")
    print(f"| DistillationTrainer, teacher logits from the cache | {cached:.0f} |")
    print(f"decode once: {decode_once:.1f} s for {args.rows} rows; from the cache: {decode_cached:.2f} s")
    for name, rate in folder.items():
        print(f"| 224 px image folder, lazy decode + timm transform, {name} | {rate:.0f} |")
    print(f"load average before / after: {load_before} / {load_after}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
