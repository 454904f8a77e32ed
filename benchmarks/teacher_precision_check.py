"""How far are the trainer's bf16 teacher targets from float32's? (A candidate cause of the engine gap.)

`DistillationTrainer` runs the teacher under bf16 autocast when the student trains in bf16; the hand-written loop
it replaced ran the teacher in float32. On every 25th CIFAR-10 training image (2,000, not augmented, normalised
as the students' batches are) this compares the ResNet-56 teacher's logits in both: the KL divergence between their soft labels at
the sweep's temperature, the share of rows on which the top-1 class agrees, and the mean absolute logit gap.
Writes `benchmarks/results/teacher_precision_check_cpu.json`.

    python benchmarks/teacher_precision_check.py
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kd_sweep  # noqa: E402

from hf_ifbeta.decoded import decoded_images  # noqa: E402
from hf_ifbeta.transforms import train_transform  # noqa: E402


def compare(z32: torch.Tensor, z16: torch.Tensor, temperature: float) -> dict:
    """KL(float32 || bf16) of the soft labels at `temperature` (mean and max over rows), top-1 agreement, |dz|."""
    p, q = F.log_softmax(z32 / temperature, -1), F.log_softmax(z16 / temperature, -1)
    kl = (p.exp() * (p - q)).sum(-1)
    return {
        "kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
        "top1_agreement": float((z32.argmax(-1) == z16.argmax(-1)).float().mean()),
        "mean_abs_logit_gap": float((z32 - z16).abs().mean()), "mean_abs_logit": float(z32.abs().mean()),
    }  # fmt: skip


def main():
    torch.set_num_threads(1)
    setting = kd_sweep.SETTINGS["cifar10"]
    train = kd_sweep.load_parquet({"train": setting.train_file, "test": setting.test_file})["train"]
    teacher = kd_sweep.load_teacher().eval()
    transform = train_transform(teacher)  # its normalisation, as the students' batches get it (not augmented)
    rows = np.arange(0, len(train), 25)
    x = transform.normalize(torch.from_numpy(np.ascontiguousarray(decoded_images(train, setting.image_column, 32)[rows])))
    with torch.no_grad():
        z32 = torch.cat([teacher(b) for b in x.split(250)])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z16 = torch.cat([teacher(b) for b in x.split(250)]).float()
    out = {"rows": len(rows), "temperature": kd_sweep.TAU, **compare(z32, z16, kd_sweep.TAU)}
    print(json.dumps(out, indent=1))
    path = kd_sweep.RESULTS / "teacher_precision_check_cpu.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
