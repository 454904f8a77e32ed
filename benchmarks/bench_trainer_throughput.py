"""KD training throughput: DistillationTrainer vs a plain PyTorch loop doing the same work.

Both train a CIFAR ResNet-20 student from scratch against the ResNet-56 teacher (KD alpha 0.9,
tau 4, SGD momentum 0.9 nesterov, weight decay 5e-4, constant lr, no gradient clipping, batch
128, the same precision) on the same pre-decoded, pre-augmented CIFAR-10 rows through the same
DataLoader settings, so the difference is the Trainer's own overhead. Runs alternate (loop,
trainer, loop, trainer, ...) so that load on a shared machine hits both alike; each run's first
`--warmup` steps are not timed, the rest is cut into windows of `--window` steps, and the table
gives the median images/s over all windows of a method, and the median over rounds of the
trainer / loop ratio of back-to-back runs.

It also measures the data pipeline on one core: decode + augment images/s of
`prepare_image_dataset` (batched torchvision decode + `PadCropFlip`) and of the per-image PIL
path it replaces, and (in each round) the trainer end to end on the lazily decoded dataset
(`prepare_image_dataset`, `num_workers=0`: decoding runs inline, between steps).

    python benchmarks/bench_trainer_throughput.py --steps 30 --rounds 3 [--threads 1]
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
import timm
import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

import hf_ifbeta  # noqa: F401  (registers the CIFAR ResNets)
from hf_ifbeta import DistillationTrainer, DistillationTrainingArguments
from hf_ifbeta.data import DistillationCollator, ImageBatchTransform, prepare_image_dataset
from hf_ifbeta.losses import kd_loss

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HF_IFBETA_SHARED", ROOT.parent / "shared"))
ALPHA, TEMPERATURE, LR, MOMENTUM, WEIGHT_DECAY = 0.9, 4.0, 0.1, 0.9, 5e-4


class Rows(torch.utils.data.Dataset):
    """Pre-decoded rows: {"pixel_values": (3, 32, 32) float32, "labels": int}."""

    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        self.pixel_values, self.labels = pixel_values, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.pixel_values[i], "labels": int(self.labels[i])}


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
    rates = []
    for start in range(warmup, len(times) - window, window):
        rates.append(window * batch_size / (times[start + window] - times[start]))
    return rates


def models(seed=0):
    torch.manual_seed(seed)
    student = timm.create_model("cifar10_resnet20")
    checkpoint = SHARED / "models" / "cifar10_resnet56.pt"
    teacher = timm.create_model("cifar10_resnet56", pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint)))
    return student, teacher.eval()


def sgd(student):
    decay = [p for n, p in student.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in student.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, nesterov=True)


def loader(dataset, batch_size, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size, shuffle=True, drop_last=True, collate_fn=DistillationCollator(), generator=generator
    )


def run_loop(data, args):
    """The plain loop: what DistillationTrainer does per step, written out."""
    student, teacher = models()
    teacher.requires_grad_(False)
    optimizer = sgd(student)
    autocast = dict(device_type="cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    student.train()
    times, steps = [time.perf_counter()], args.warmup + args.steps
    while len(times) <= steps:
        for batch in loader(data, args.batch_size, seed=len(times)):
            x, y = batch["pixel_values"], batch["labels"]
            with torch.autocast(**autocast):
                student_logits = student(x)
            with torch.no_grad(), torch.autocast(**autocast):
                teacher_logits = teacher(x)
            loss, _, _ = kd_loss(student_logits.float(), teacher_logits, y, alpha=ALPHA, temperature=TEMPERATURE)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter())
            if len(times) > steps:
                break
    return times


def run_trainer(data, args, output_dir, lazy=False):
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
            max_grad_norm=0.0,  # no clipping, as in the loop (and the benchmark protocol)
            bf16=args.precision == "bf16",
            use_cpu=True,
            logging_steps=10,
            save_strategy="no",
            disable_tqdm=True,
            dataloader_drop_last=True,
            seed=0,
        ),
        train_dataset=data,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)  # logs are still made every 10 steps, just not printed
    trainer.train()
    return timer.times


def pipeline_rate(dataset, batch_size, n):
    """images/s of fetching + decoding + augmenting `n` rows in batches, in this process."""
    start = time.perf_counter()
    for i in range(0, n, batch_size):
        batch = dataset[i : i + batch_size]
        assert len(batch["pixel_values"]) == min(batch_size, n - i)
    return n / (time.perf_counter() - start)


class _PILRecipe:
    """The per-image PIL recipe `PadCropFlip` replaces (torchvision transforms on a decoded PIL image)."""

    def __init__(self, model):
        from torchvision import transforms as T

        cfg = timm.data.resolve_model_data_config(model)
        size = cfg["input_size"][-1]
        normalize = T.Normalize(cfg["mean"], cfg["std"])
        self.transform = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize])

    def __call__(self, image):
        return self.transform(image)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of each run")
    parser.add_argument("--window", type=int, default=5, help="steps per timed window")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (loop, trainer, trainer + lazy decode)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--rows", type=int, default=4096, help="CIFAR-10 train rows decoded for the runs")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads for the KD runs (default: torch's choice); 1 on an oversubscribed machine",
    )
    parser.add_argument("--output", default=str(ROOT / "benchmarks/results/trainer_throughput.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    cifar = datasets.load_dataset("parquet", data_files={"train": str(SHARED / "data/cifar10/train.parquet")})["train"]
    cifar = cifar.select(range(args.rows))
    student, _ = models()
    train_ds = prepare_image_dataset(cifar, student, "img", "label")

    # The data pipeline, one process, one thread (what a DataLoader worker gets).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pil_ds = train_ds.with_transform(
        ImageBatchTransform(_PILRecipe(student), "img", "label"), columns=["img", "label"]
    )
    pipeline = {
        "batched_decode_augment": pipeline_rate(train_ds, args.batch_size, args.rows),
        "pil_decode_augment": pipeline_rate(pil_ds, args.batch_size, min(args.rows, 2048)),
        "eval_transform_batched": pipeline_rate(
            prepare_image_dataset(cifar, student, "img", "label", train=False), args.batch_size, args.rows
        ),
    }
    torch.set_num_threads(threads)

    # Pre-decode once: both methods then see identical tensors.
    rows = train_ds[: args.rows]
    data = Rows(rows["pixel_values"], torch.as_tensor(rows["labels"]))

    rates = {"loop": [], "trainer": [], "trainer_lazy_decode": []}
    paired = []  # trainer / loop within each round: the two ran back to back, under similar load
    with tempfile.TemporaryDirectory() as output_dir:
        for round_ in range(args.rounds):
            timing = (args.batch_size, args.warmup, args.window)
            loop_round = window_rates(run_loop(data, args), *timing)
            trainer_round = window_rates(run_trainer(data, args, output_dir), *timing)
            lazy_round = window_rates(run_trainer(train_ds, args, output_dir), *timing)
            rates["loop"] += loop_round
            rates["trainer"] += trainer_round
            rates["trainer_lazy_decode"] += lazy_round
            paired.append(statistics.median(trainer_round) / statistics.median(loop_round))
            print(f"round {round_}: loop {statistics.median(loop_round):.0f}, trainer "
                  f"{statistics.median(trainer_round):.0f}, trainer + lazy decode {statistics.median(lazy_round):.0f} "
                  f"images/s (load average {os.getloadavg()[0]:.1f})", flush=True)
    load_after = os.getloadavg()

    loop, trainer, lazy = (statistics.median(rates[k]) for k in ("loop", "trainer", "trainer_lazy_decode"))
    result = {
        "benchmark": "KD throughput, DistillationTrainer vs plain loop",
        "student": "cifar10_resnet20 (scratch)",
        "teacher": "cifar10_resnet56",
        "batch_size": args.batch_size,
        "precision": args.precision,
        "steps_per_run": args.steps,
        "warmup_steps": args.warmup,
        "window_steps": args.window,
        "rounds": args.rounds,
        "torch_threads": threads,
        "images_per_s": {"loop": loop, "trainer": trainer, "trainer_lazy_decode": lazy},
        "trainer_vs_loop": trainer / loop,
        "trainer_vs_loop_per_round": paired,
        "trainer_vs_loop_paired_median": statistics.median(paired),
        "window_rates": rates,
        "data_pipeline_images_per_s_one_thread": pipeline,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "note": "shared 2-core machine with other jobs running; absolute numbers move with its load",
        },
    }
    print(f"\n| method | images/s (median of windows) |\n| --- | --- |")
    print(f"| plain loop (pre-decoded) | {loop:.0f} |")
    print(f"| DistillationTrainer (pre-decoded) | {trainer:.0f} ({trainer / loop:.1%} of loop; paired per round: "
          f"{statistics.median(paired):.1%}) |")
    print(f"| DistillationTrainer (lazy JPEG decode, num_workers=0) | {lazy:.0f} |")
    for name, rate in pipeline.items():
        print(f"| data pipeline, 1 thread: {name} | {rate:.0f} |")
    print(f"load average before / after: {load_before} / {load_after}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
