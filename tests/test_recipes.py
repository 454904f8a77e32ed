"""The recipes end to end on tiny data: CIFAR from local parquet, ImageNet from a local image folder
under `accelerate launch`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import hf_ifbeta  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def run_recipe(args, launcher=(sys.executable,), timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"recipe failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def test_help_explains_every_flag():
    proc = run_recipe([RECIPES / "distill_cifar.py", "--help"])
    for flag in ("--prune_ratio", "--teacher_checkpoint", "--alpha", "--temperature", "--outer_steps", "--l2", "--num_train_epochs"):
        assert flag in proc.stdout
    assert "Fraction of the training rows to remove" in proc.stdout  # flags carry their help text


@pytest.mark.slow
def test_distill_cifar_on_local_parquet(shared_dir, tmp_path):
    out = tmp_path / "out"
    proc = run_recipe([
        RECIPES / "distill_cifar.py",
        "--train_file", shared_dir / "data/cifar10/train.parquet", "--test_file", shared_dir / "data/cifar10/test.parquet",
        "--teacher_checkpoint", shared_dir / "models/cifar10_resnet56.pt", "--max_train_samples", 400,
        "--max_eval_samples", 200, "--prune_method", "if-beta", "--prune_ratio", 0.5, "--outer_steps", 2,
        "--num_train_epochs", 1, "--cache_dir", tmp_path / "cache", "--output_dir", out, "--report",
    ])
    summary = json.loads((out / "results.json").read_text())
    assert summary["kept_rows"] == 200 and summary["train_rows"] == 400
    assert summary["teacher_test_accuracy"] > 0.8  # the ResNet-56 checkpoint on 200 test rows
    assert 0.0 <= summary["student_test_accuracy"] <= 1.0
    assert summary["policy"]["a"] > 0 and summary["policy"]["b"] > 0
    assert (out / "pruning" / "indices.npy").exists()
    assert f"pruning report: {out / 'pruning' / 'report.html'}" in proc.stdout  # the demo prints where its page is
    assert 'id="class-9"' in (out / "pruning" / "report.html").read_text()


def make_image_folder(root: Path, classes=3, per_class=12, size=40, seed=0):
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(60 + 60 * c, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{i}.jpeg")


@pytest.mark.slow
def test_distill_imagenet_under_accelerate_launch_on_a_local_folder(tmp_path):
    make_image_folder(tmp_path / "train")
    make_image_folder(tmp_path / "val", per_class=4, seed=1)
    torch.manual_seed(0)
    teacher = timm.create_model("resnet10t", num_classes=3, pretrained_cfg_overlay=dict(input_size=(3, 64, 64)))
    timm.models.save_for_hf(teacher, str(tmp_path / "teacher"))
    out = tmp_path / "out"
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no")
    run_recipe([
        RECIPES / "distill_imagenet.py", "--train_dir", tmp_path / "train", "--eval_dir", tmp_path / "val",
        "--teacher", tmp_path / "teacher", "--student", "resnet10t", "--prune_method", "if-beta", "--prune_ratio", 0.25,
        "--outer_steps", 2, "--num_train_epochs", 1, "--per_device_train_batch_size", 8, "--dataloader_num_workers", 0,
        "--num_workers", 0, "--save_strategy", "no", "--cache_dir", tmp_path / "cache", "--output_dir", out,
    ], launcher=launcher)
    summary = json.loads((out / "results.json").read_text())
    assert summary["train_rows"] == 36 and summary["kept_rows"] == 27
    assert summary["student"] == "resnet10t"
