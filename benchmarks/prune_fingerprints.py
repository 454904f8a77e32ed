"""Fingerprints of what `prune` returns: kept indices, scores and learned policy, per method and ratio.

On the CIFAR-10 train split with the ResNet-56 teacher (teacher pass in float32), seed 0, every
registered method at ratios 0.3 / 0.5 / 0.7: a SHA-256 of the kept indices (int64), of the scores
(float64) and of the policy (JSON, without its wall-clock times). Recorded once into `benchmarks/results/prune_fingerprints.json`;
`--check` recomputes them and fails on any difference, so a refactor that should change nothing is
shown to change nothing, bit for bit.

    python benchmarks/prune_fingerprints.py            # record
    python benchmarks/prune_fingerprints.py --check    # compare with the record
"""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_ifbeta import DatasetPruner, list_methods  # noqa: E402
from hf_ifbeta.models import load_model  # noqa: E402
from hf_ifbeta.pruner import to_jsonable  # noqa: E402

SHARED = Path(os.environ.get("HF_IFBETA_SHARED", ROOT.parent / "shared"))
RECORD = ROOT / "benchmarks" / "results" / "prune_fingerprints.json"
RATIOS = (0.3, 0.5, 0.7)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Entries added to the policy record after the fingerprints were recorded; each is derived from a, b and the box.
DERIVED = ("on_bound", "box")


def without_times(value):
    """The policy record minus wall-clock entries (`*_seconds`, `*_s`), which no refactor keeps equal, and minus
    the `DERIVED` entries added since the record."""
    if isinstance(value, dict):
        return {
            k: without_times(v) for k, v in value.items()
            if not (k.endswith("_seconds") or k.endswith("_s") or k in DERIVED)
        }  # fmt: skip
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def fingerprints(methods=None, ratios=RATIOS, seed: int = 0):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from kd_sweep import load_parquet

    # Both splits, as benchmarks/kd_sweep.py loads them: the same fingerprint, so its teacher-pass cache serves here.
    files = {split: str(SHARED / f"data/cifar10/{split}.parquet") for split in ("train", "test")}
    train = load_parquet(files)["train"]
    teacher = load_model("cifar10_resnet56", checkpoint=str(SHARED / "models/cifar10_resnet56.pt")).eval()
    out = {}
    for method in methods or list_methods():
        pruner = DatasetPruner(teacher, image_column="img", label_column="label", method=method,
                               teacher_precision="fp32", seed=seed)
        result = pruner.score(train)
        for ratio in ratios:
            indices = np.asarray(result.select_indices(ratio, seed=seed), dtype=np.int64)
            policy = json.dumps(without_times(to_jsonable(result.policy)), sort_keys=True)
            out[f"{method}|{ratio}"] = {
                "kept": int(len(indices)),
                "indices": sha(indices.tobytes()),
                "scores": sha(np.asarray(result.scores, dtype=np.float64).tobytes()),
                "policy": sha(policy.encode()),
                "policy_json": policy,
            }
            print(f"{method:15s} {ratio}: kept {len(indices)}, indices {out[f'{method}|{ratio}']['indices'][:12]}", flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the record instead of writing it")
    parser.add_argument("--methods", nargs="*", help="only these methods")
    args = parser.parse_args(argv)
    current = fingerprints(args.methods)
    if not args.check:
        RECORD.write_text(json.dumps(current, indent=2) + "\n")
        print(f"wrote {RECORD}")
        return
    recorded = json.loads(RECORD.read_text())
    differ = [
        f"{key}: {field}"
        for key, values in current.items()
        for field in ("kept", "indices", "scores", "policy")
        if recorded.get(key, {}).get(field) != values[field]
    ]
    if differ:
        raise SystemExit("Differ from the record:\n" + "\n".join(differ))
    print(f"All {len(current)} fingerprints equal the record.")


if __name__ == "__main__":
    main()
