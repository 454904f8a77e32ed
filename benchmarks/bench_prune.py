"""What pruning costs next to the teacher pass it cannot avoid.

On the 50,000 CIFAR-10 training rows with the ResNet-56 teacher, in one run: the bare teacher inference
pass (decode + eval transform + forward, the loop a user would write with `datasets` and a DataLoader),
and `DatasetPruner.prune(ds, ratio=0.3)` from a cold cache, split into teacher pass / scoring /
policy learning. Bare passes run before and after the prune; their median is the reference.
Goal (issue 2): prune time / bare teacher pass <= 1.2.

    python benchmarks/bench_prune.py [--rows 50000] [--threads 2]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_ifbeta import DatasetPruner  # noqa: E402
from hf_ifbeta.data import eval_transform  # noqa: E402
from hf_ifbeta.models import load_model  # noqa: E402

SHARED = Path(os.environ.get("HF_IFBETA_SHARED", ROOT.parent / "shared"))


def bare_teacher_pass(teacher, ds, batch_size: int, num_workers: int) -> float:
    """Decode + eval transform + forward over every row, nothing kept: the unavoidable cost."""
    tf = eval_transform(teacher)
    view = ds.with_transform(lambda b: {"x": torch.stack([tf(im.convert("RGB")) for im in b["img"]])})
    loader = torch.utils.data.DataLoader(view, batch_size=batch_size, num_workers=num_workers)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            teacher(batch["x"])
    return time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default=str(ROOT / "benchmarks/results/prune_time.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    ds = datasets.load_dataset("parquet", data_files={"train": str(SHARED / "data/cifar10/train.parquet")})["train"]
    ds = ds.select(range(min(args.rows, len(ds))))
    teacher = load_model("cifar10_resnet56", checkpoint=str(SHARED / "models/cifar10_resnet56.pt")).eval()

    bare = [bare_teacher_pass(teacher, ds, args.batch_size, args.num_workers)]
    with tempfile.TemporaryDirectory() as cache:
        pruner = DatasetPruner(teacher, image_column="img", cache_dir=cache, batch_size=args.batch_size,
                               num_workers=args.num_workers)
        t0 = time.perf_counter()
        pruned = pruner.prune(ds, ratio=args.ratio)
        prune_s = time.perf_counter() - t0
    bare.append(bare_teacher_pass(teacher, ds, args.batch_size, args.num_workers))
    timings = pruner.last_result.timings
    bare_s = statistics.median(bare)
    out = {
        "rows": len(ds),
        "kept": len(pruned),
        "ratio": args.ratio,
        "threads": args.threads,
        "load_average_1min": os.getloadavg()[0],
        "bare_teacher_pass_s": bare,
        "bare_teacher_pass_median_s": bare_s,
        "prune_s": prune_s,
        "teacher_pass_s": timings["teacher_pass_s"],
        "scoring_s": timings["scoring_s"],
        "policy_learning_and_selection_s": timings["selection_s"],
        "prune_over_bare": prune_s / bare_s,
        "policy": {k: pruner.last_result.policy[k] for k in ("a", "b")},
    }
    print(f"{'stage':<34}{'seconds':>10}")
    for key in ("bare_teacher_pass_median_s", "teacher_pass_s", "scoring_s", "policy_learning_and_selection_s", "prune_s"):
        print(f"{key:<34}{out[key]:>10.1f}")
    print(f"{'prune / bare teacher pass':<34}{out['prune_over_bare']:>10.2f}   (goal <= 1.2)")
    Path(args.output).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
