"""What pruning costs next to the teacher pass it cannot avoid, in float32 and in bf16.

On the 50,000 CIFAR-10 training rows with the ResNet-56 teacher, in one run: the bare float32 teacher
inference pass (decode + eval transform + forward, the loop a user would write with `datasets` and a
DataLoader), and `DatasetPruner.prune(ds, ratio=0.3)` from a cold cache with the teacher pass in fp32
and in bf16 (`teacher_precision`), each split into teacher pass / scoring / policy learning. Bare
passes run before and after the prunes; their median is the reference. Goals: fp32 prune / bare pass
<= 1.2; bf16 prune / bare fp32 pass <= 0.7, with the bf16 scores' Spearman correlation to the fp32
ones >= 0.99 and >= 95 % of the rows kept at ratio 0.5 shared.

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
from scipy.stats import spearmanr

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
    runs = {}
    for precision in ("fp32", "bf16"):
        with tempfile.TemporaryDirectory() as cache:
            pruner = DatasetPruner(teacher, image_column="img", cache_dir=cache, batch_size=args.batch_size,
                                   num_workers=args.num_workers, teacher_precision=precision)
            t0 = time.perf_counter()
            pruned = pruner.prune(ds, ratio=args.ratio)
            runs[precision] = (time.perf_counter() - t0, pruner.last_result, len(pruned))
    bare.append(bare_teacher_pass(teacher, ds, args.batch_size, args.num_workers))
    bare_s = statistics.median(bare)
    (fp32_s, fp32, kept), (bf16_s, bf16, _) = runs["fp32"], runs["bf16"]
    half = [set(r.select_indices(0.5, seed=0).tolist()) for r in (fp32, bf16)]
    out = {
        "rows": len(ds),
        "kept": kept,
        "ratio": args.ratio,
        "threads": args.threads,
        "load_average_1min": os.getloadavg()[0],
        "bare_teacher_pass_s": bare,
        "bare_teacher_pass_median_s": bare_s,
        "prune_s": fp32_s,
        "teacher_pass_s": fp32.timings["teacher_pass_s"],
        "scoring_s": fp32.timings["scoring_s"],
        "policy_learning_and_selection_s": fp32.timings["selection_s"],
        "prune_over_bare": fp32_s / bare_s,
        "policy": {k: fp32.policy[k] for k in ("a", "b")},
        "bf16": {
            "prune_s": bf16_s,
            "teacher_pass_s": bf16.timings["teacher_pass_s"],
            "scoring_s": bf16.timings["scoring_s"],
            "policy_learning_and_selection_s": bf16.timings["selection_s"],
            "prune_over_bare_fp32": bf16_s / bare_s,
            "score_spearman_vs_fp32": float(spearmanr(fp32.scores, bf16.scores).correlation),
            "kept_overlap_ratio_0.5": len(half[0] & half[1]) / len(half[0]),
            "policy": {k: bf16.policy[k] for k in ("a", "b")},
        },
    }
    print(f"{'stage':<34}{'fp32 s':>10}{'bf16 s':>10}")
    for key in ("teacher_pass_s", "scoring_s", "policy_learning_and_selection_s", "prune_s"):
        print(f"{key:<34}{out[key]:>10.1f}{out['bf16'][key]:>10.1f}")
    print(f"{'bare fp32 teacher pass (median)':<34}{bare_s:>10.1f}")
    print(f"{'prune / bare teacher pass':<34}{out['prune_over_bare']:>10.2f}{out['bf16']['prune_over_bare_fp32']:>10.2f}"
          "   (goals <= 1.2 fp32, <= 0.7 bf16)")
    print(f"bf16 vs fp32: score Spearman {out['bf16']['score_spearman_vs_fp32']:.4f} (goal >= 0.99), kept-row overlap at "
          f"ratio 0.5 {out['bf16']['kept_overlap_ratio_0.5']:.3f} (goal >= 0.95)")
    Path(args.output).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
