"""Pooled features of the CIFAR-10 teacher's earlier stages, for outer objectives that need a weak, fixed view.

The policy's coverage term needs features from which a linear head cannot reproduce the teacher (else it never
runs short of rows). A random projection of the penultimate features is one such view; the ResNet-56's earlier
stages are a fixed one, closer to what a student trained from pixels sees. This pass writes, for every row of
the CIFAR-10 training split in its order, the global-average-pooled outputs of `layer1` (16 dims), `layer2` (32)
and `layer3` (64, the penultimate features), the 2 x 2 average-pooled `layer2` (128) and the logits, under the
teacher's eval transform, and `augmented`: the penultimate features of one pad-crop-flip view of each row (the
students' augmentation, drawn from a fixed seed), to `benchmarks/cache/stage_features_cifar10.npz` (outside git;
rerun to rebuild).

    python benchmarks/stage_features.py [--threads 1] [--batch_size 256]

The file's `source` entry records the parquet's size and SHA-256, and a file for other data is refused.
"""

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import kd_sweep  # noqa: E402

from hf_ifbeta.decoded import decoded_images  # noqa: E402
from hf_ifbeta.files import atomic_write  # noqa: E402
from hf_ifbeta.transforms import PadCropFlip, eval_transform  # noqa: E402

OUT = kd_sweep.CACHE / "stage_features_cifar10.npz"


def source_id(path: str) -> str:
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return f"{Path(path).stat().st_size}:{digest}"


def load(path: Path = OUT) -> dict:
    """The saved arrays, checked against the parquet they were computed from."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python benchmarks/stage_features.py` to build it.")
    saved = dict(np.load(path))
    expected = source_id(kd_sweep.SETTINGS["cifar10"].train_file)
    if str(saved["source"]) != expected:
        raise ValueError(f"{path} was computed from other data ({saved['source']}, expected {expected}): rebuild it.")
    return saved


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=256)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setting = kd_sweep.SETTINGS["cifar10"]
    train, _, _ = kd_sweep.Context().data(setting)
    teacher = kd_sweep.load_teacher()
    transform = PadCropFlip.from_eval_transform(eval_transform(teacher))
    if transform is None:
        raise RuntimeError("The teacher's eval transform is not a plain resize + normalise.")
    pixels = decoded_images(train, setting.image_column, transform.size)
    augment = PadCropFlip(transform.size, transform.mean, transform.std, order=transform.order)
    offsets, flips = augment.params(seed=0, epoch=0, num_rows=pixels.shape[0])

    captured = {}
    hooks = [
        getattr(teacher, name).register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
        for name in ("layer1", "layer2", "layer3")
    ]
    n = pixels.shape[0]
    out = {
        "layer1": np.zeros((n, 16), np.float32), "layer2": np.zeros((n, 32), np.float32),
        "layer2_2x2": np.zeros((n, 128), np.float32), "layer3": np.zeros((n, 64), np.float32),
        "augmented": np.zeros((n, 64), np.float32), "logits": np.zeros((n, 10), np.float32),
    }  # fmt: skip
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, n, args.batch_size):
            stop = min(n, start + args.batch_size)
            images = torch.from_numpy(np.ascontiguousarray(pixels[start:stop]))
            out["logits"][start:stop] = teacher(transform.normalize(images)).float().numpy()
            for name in ("layer1", "layer2", "layer3"):
                out[name][start:stop] = captured[name].mean((2, 3)).numpy()
            out["layer2_2x2"][start:stop] = torch.nn.functional.adaptive_avg_pool2d(captured["layer2"], 2).flatten(1).numpy()
            teacher(augment.apply(images, offsets[start:stop], flips[start:stop]))
            out["augmented"][start:stop] = captured["layer3"].mean((2, 3)).numpy()
            if start // args.batch_size % 20 == 0:
                print(f"{stop}/{n} rows, {stop / (time.perf_counter() - t0):.0f} rows/s", flush=True)
    for h in hooks:
        h.remove()
    labels = np.asarray(train[setting.label_column], dtype=np.int64)
    print(f"teacher top-1 on the training split under this pass: {(out['logits'].argmax(1) == labels).mean():.4f}")
    source = source_id(setting.train_file)
    atomic_write(OUT, lambda f: np.savez(f, source=np.array(source), labels=labels, **out))
    print(f"wrote {OUT} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
