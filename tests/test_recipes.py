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
    # PYTHONPATH: the recipe imports this checkout's package, not whichever copy is installed.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([*launcher, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"recipe failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def test_help_explains_every_flag():
    proc = run_recipe([RECIPES / "distill_cifar.py", "--help"])
    flags = ("--prune_ratio", "--teacher_checkpoint", "--alpha", "--temperature", "--outer_steps", "--l2", "--num_train_epochs",
             "--scale_lr", "--tie_policy_budget", "--preset")  # fmt: skip
    for flag in flags:
        assert flag in proc.stdout
    assert "Fraction of the training rows to remove" in proc.stdout  # flags carry their help text
    assert "Multiply --learning_rate by the number of processes" in proc.stdout


@pytest.fixture
def pipeline():
    sys.path.insert(0, str(RECIPES))
    try:
        import pipeline

        yield pipeline
    finally:
        sys.path.remove(str(RECIPES))


@pytest.mark.parametrize("world_size", [1, 4])
def test_learning_rate_and_policy_budget_follow_the_world_size(pipeline, monkeypatch, tmp_path, world_size):
    import distill_cifar
    import distill_imagenet

    from hf_ifbeta import DistillationTrainingArguments

    monkeypatch.setattr(DistillationTrainingArguments, "world_size", property(lambda self: world_size))
    common = ["--output_dir", str(tmp_path), "--use_cpu", "true"]
    args, pruner_config, training_args = pipeline.parse_args(common, **distill_cifar.CIFAR_DEFAULTS)
    assert pipeline.scale_to_world_size(args, pruner_config, training_args, 50_000) == 128 * world_size
    assert training_args.learning_rate == pytest.approx(0.1 * world_size)
    assert (pruner_config.inner_batch_size, pruner_config.inner_epochs) == (128 * world_size, 15.0)
    assert training_args.dataloader_persistent_workers  # one decoding worker, kept between epochs
    # a student stopped by --max_steps: the proxy gets the same passes over the 25,000 kept rows
    args, pruner_config, training_args = pipeline.parse_args([*common, "--max_steps", "500"], **distill_cifar.CIFAR_DEFAULTS)
    pipeline.scale_to_world_size(args, pruner_config, training_args, 50_000)
    assert pruner_config.inner_epochs == pytest.approx(500 * 128 * world_size / 25_000)

    argv = [*common, "--no_scale_lr", "--no_tie_policy_budget", "--inner_epochs", "3", "--gradient_accumulation_steps", "2",
            "--dataloader_num_workers", "0"]  # fmt: skip
    args, pruner_config, training_args = pipeline.parse_args(argv, **distill_cifar.CIFAR_DEFAULTS)
    assert pipeline.scale_to_world_size(args, pruner_config, training_args, 50_000) == 256 * world_size
    assert training_args.learning_rate == 0.1 and (pruner_config.inner_batch_size, pruner_config.inner_epochs) == (128, 3.0)
    assert not training_args.dataloader_persistent_workers  # torch refuses them without workers

    # ImageNet: 0.1 per 256 images, the fit subsample docs/scale.md asks for.
    args, pruner_config, training_args = pipeline.parse_args(
        common, pruner_defaults=distill_imagenet.IMAGENET_PRUNER_DEFAULTS, **distill_imagenet.IMAGENET_DEFAULTS
    )
    pipeline.scale_to_world_size(args, pruner_config, training_args, 1_281_167)
    assert training_args.learning_rate == pytest.approx(0.1 * world_size)
    assert (pruner_config.inner_batch_size, pruner_config.inner_epochs) == (256 * world_size, 100.0)
    assert pruner_config.fit_subsample == 32_768 and pruner_config.num_workers == 8


def test_a_preset_sets_the_pruner_and_flags_given_win(pipeline, tmp_path):
    import distill_imagenet

    from hf_ifbeta.config import PRESETS

    argv = ["--output_dir", str(tmp_path), "--use_cpu", "true", "--preset", "stage-coverage", "--policy_entropy_weight", "0"]
    args, pruner_config, training_args = pipeline.parse_args(
        argv, pruner_defaults=distill_imagenet.IMAGENET_PRUNER_DEFAULTS, **distill_imagenet.IMAGENET_DEFAULTS
    )
    assert pruner_config.policy_coverage_view == "stage" and pruner_config.policy_max_ab == PRESETS["stage-coverage"]["policy_max_ab"]
    assert pruner_config.policy_entropy_weight == 0.0
    assert pruner_config.features_dtype == "float16"  # the recipe's own settings stay
    assert training_args.output_dir == str(tmp_path)


def test_flags_the_run_would_override_or_misread_are_usage_errors(pipeline, tmp_path, capsys):
    import distill_cifar
    import distill_imagenet

    common = ["--output_dir", str(tmp_path), "--use_cpu", "true"]
    for argv, message in (
        (["--method", "random"], "--method random is the pruner's name for the recipe's --prune_method"),
        (["--inner_epochs", "3"], "--inner_epochs would be replaced by the student's budget"),
        (["--inner_batch_size", "64", "--inner_epochs", "3"], "--inner_epochs and --inner_batch_size would be replaced"),
        (["--train_file", "train.parquet"], "--train_file needs --test_file"),
        (["--train_dir", "train"], "--train_dir needs --eval_dir"),
        (["--report", "--prune_method", "none"], "--report shows what the pruning kept"),
    ):
        with pytest.raises(SystemExit):
            pipeline.parse_args([*common, *argv], **distill_cifar.CIFAR_DEFAULTS)
        assert message in capsys.readouterr().err
    args, pruner_config, _ = pipeline.parse_args([*common, "--method", "if-beta", "--no_tie_policy_budget", "--inner_epochs", "3"])
    assert pruner_config.inner_epochs == 3.0 and args.prune_method == "if-beta"
    # the ImageNet recipe's default Hub id is not the source of rows read from a local folder
    local = [*common, "--train_dir", "train", "--eval_dir", "val"]
    args, _, _ = pipeline.parse_args(local, pruner_defaults=distill_imagenet.IMAGENET_PRUNER_DEFAULTS, **distill_imagenet.IMAGENET_DEFAULTS)
    assert args.dataset == "ILSVRC/imagenet-1k" and pipeline.hub_dataset(args) is None
    args, _, _ = pipeline.parse_args(common, pruner_defaults=distill_imagenet.IMAGENET_PRUNER_DEFAULTS, **distill_imagenet.IMAGENET_DEFAULTS)
    assert pipeline.hub_dataset(args) == "ILSVRC/imagenet-1k"


def test_the_proxys_loss_is_the_students(pipeline, tmp_path):
    import distill_cifar

    common = ["--output_dir", str(tmp_path), "--use_cpu", "true"]
    _, pruner_config, training_args = pipeline.parse_args(common, **distill_cifar.CIFAR_DEFAULTS)
    assert (pruner_config.alpha, pruner_config.temperature) == (training_args.alpha, training_args.temperature) == (0.9, 4.0)
    _, pruner_config, training_args = pipeline.parse_args([*common, "--alpha", "0.5", "--temperature", "2"])
    assert (training_args.alpha, training_args.temperature) == (0.5, 2.0)
    assert (pruner_config.alpha, pruner_config.temperature) == (0.5, 2.0)
    assert pruner_config.stages().loss.alpha == 0.5  # what the proxy fit reads


def test_teacher_accuracy_is_one_plain_pass(pipeline, tmp_path):
    """The teacher is measured by a no-grad loop on the trainer's own teacher: once per row, with its own transform."""
    import datasets

    from hf_ifbeta import DistillationTrainer, DistillationTrainingArguments
    from hf_ifbeta.data import prepare_image_dataset

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(21)]
    ds = datasets.Dataset.from_dict({"img": images, "label": rng.integers(0, 10, 21).tolist()})
    ds = ds.cast_column("img", datasets.Image())
    torch.manual_seed(0)
    student = timm.create_model("cifar10_resnet20")
    teacher = timm.create_model("cifar10_resnet20").eval()
    args = DistillationTrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=8, use_cpu=True, report_to="none")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    trainer.teacher_forward_rows = 0
    eval_ds = prepare_image_dataset(ds, teacher, "img", "label", train=False)
    result = pipeline.teacher_accuracy(trainer, eval_ds)
    with torch.no_grad():
        pixels = torch.stack([eval_ds[i]["pixel_values"] for i in range(len(ds))])
        expected = float((teacher(pixels).argmax(-1).numpy() == np.asarray(ds["label"])).mean())
    assert result == {"accuracy": pytest.approx(expected), "rows": 21}
    assert trainer.teacher_forward_rows == 21 and not teacher.training


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
