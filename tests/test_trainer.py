"""DistillationTrainer: the loss it optimises, what it keeps out of the student, bad inputs, real KD runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from transformers import TrainerCallback, TrainingArguments

import hf_ifbeta  # noqa: F401  (registers the CIFAR ResNets)
from hf_ifbeta import DistillationTrainer, DistillationTrainingArguments
from hf_ifbeta.data import DistillationCollator, prepare_image_dataset
from hf_ifbeta.losses import kd_loss
from hf_ifbeta.trainer import TeacherInputAdapter

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TinyNet(nn.Module):
    """A 3x3 conv, global pooling and a linear head; no `num_classes` attribute (the trainer must probe)."""

    def __init__(self, num_classes: int = 10, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(x)).mean(dim=(2, 3)))


def tiny_teacher(num_classes: int = 10) -> nn.Module:
    # Other parameter names than TinyNet's, so a teacher tensor in a checkpoint would show.
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, num_classes)
    )


def synthetic_images(n: int, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
    labels = rng.integers(0, 10, n).tolist()
    return datasets.Dataset.from_dict({"img": images, "label": labels}).cast_column("img", datasets.Image())


def cifar_like(model: nn.Module):
    """Give a plain module the CIFAR data config, as timm models carry it."""
    model.pretrained_cfg = dict(input_size=(3, 32, 32), mean=MEAN, std=STD, crop_pct=1.0, interpolation="bilinear")
    return model


@pytest.fixture
def tiny_ds():
    return synthetic_images(32)


def make_args(tmp_path, **kwargs) -> DistillationTrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=0.05,
        optim="sgd",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
    )
    return DistillationTrainingArguments(**{**defaults, **kwargs})


def make_trainer(tmp_path, ds, student=None, teacher=None, **kwargs):
    torch.manual_seed(0)
    student = cifar_like(TinyNet()) if student is None else student
    teacher = tiny_teacher() if teacher is None else teacher
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, **kwargs),
        train_dataset=prepare_image_dataset(ds, student, "img", "label"),
        eval_dataset=prepare_image_dataset(ds, student, "img", "label", train=False),
    )


# ---- the loss ----


def test_loss_is_kd_loss_of_student_and_teacher_logits(tmp_path, tiny_ds):
    trainer = make_trainer(tmp_path, tiny_ds, alpha=0.7, temperature=2.0)
    batch = DistillationCollator()([trainer.train_dataset[i] for i in range(8)])
    loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    with torch.no_grad():
        student_logits = trainer.model(batch["pixel_values"])
        teacher_logits = trainer.teacher_model(batch["pixel_values"])
    expected, kd, ce = kd_loss(student_logits, teacher_logits, batch["labels"], alpha=0.7, temperature=2.0)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(outputs["teacher_logits"], teacher_logits)
    assert loss.requires_grad and kd > 0 and ce > 0


def test_cached_teacher_logits_replace_the_teacher(tmp_path, tiny_ds):
    cached = np.random.default_rng(1).normal(size=(len(tiny_ds), 10)).astype(np.float32)
    ds = tiny_ds.add_column("teacher_logits", list(cached))
    student = cifar_like(TinyNet())
    teacher = tiny_teacher()
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, max_steps=2),
        train_dataset=prepare_image_dataset(ds, student, "img", "label", teacher_logits_column="teacher_logits"),
    )
    calls.clear()  # the init-time class-count check is allowed to run it
    batch = DistillationCollator()([trainer.train_dataset[i] for i in range(8)])
    loss = trainer.compute_loss(trainer.model, batch)
    with torch.no_grad():
        expected = kd_loss(student(batch["pixel_values"]), torch.as_tensor(cached[:8]), batch["labels"])[0]
    torch.testing.assert_close(loss, expected)
    trainer.train()
    assert calls == []

    # No teacher at all: the cache is enough, and a batch without it is an error.
    no_teacher = DistillationTrainer(
        model=student,
        args=make_args(tmp_path, max_steps=1),
        train_dataset=prepare_image_dataset(ds, student, "img", "label", teacher_logits_column="teacher_logits"),
    )
    no_teacher.train()
    with pytest.raises(ValueError, match="teacher_logits"):
        no_teacher.compute_loss(student, {k: v for k, v in batch.items() if k != "teacher_logits"})
    # ...and evaluating the student needs no teacher: accuracy, no KD loss
    metrics = no_teacher.evaluate(prepare_image_dataset(tiny_ds, student, "img", "label", train=False))
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_loss" not in metrics


def test_training_keeps_the_teacher_out_and_logs_kd_and_ce(tmp_path, tiny_ds):
    alpha = 0.8
    trainer = make_trainer(
        tmp_path, tiny_ds, alpha=alpha, max_steps=4, logging_steps=2, save_strategy="steps", save_steps=4
    )
    student, teacher = trainer.model, trainer.teacher_model
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer.train()

    # The teacher: frozen, in eval mode, untouched, not optimised.
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, teacher_before[key])
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in student.parameters()}
    assert not any(torch.equal(v, student_before[k]) for k, v in student.state_dict().items() if k.endswith("weight"))

    # The checkpoint holds the student and nothing else.
    saved = safetensors.torch.load_file(str(tmp_path / "out" / "checkpoint-4" / "model.safetensors"))
    assert set(saved) == set(student.state_dict())
    for key, value in student.state_dict().items():
        torch.testing.assert_close(saved[key], value)

    # Each training log carries its KD and CE parts, and the logged loss is their mix.
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert [log["step"] for log in logs] == [2, 4]
    for log in logs:
        assert log["kd_loss"] > 0 and log["ce_loss"] > 0
        assert log["loss"] == pytest.approx(alpha * log["kd_loss"] + (1 - alpha) * log["ce_loss"], rel=1e-5)


def test_evaluate_reports_loss_and_accuracy_of_student_logits(tmp_path, tiny_ds):
    trainer = make_trainer(tmp_path, tiny_ds)
    metrics = trainer.evaluate()
    prediction = trainer.predict(trainer.eval_dataset)
    assert prediction.predictions.shape == (len(tiny_ds), 10)
    with torch.no_grad():
        pixels = torch.stack([trainer.eval_dataset[i]["pixel_values"] for i in range(len(tiny_ds))])
        expected = trainer.model(pixels).numpy()
    np.testing.assert_allclose(prediction.predictions, expected, rtol=1e-5, atol=1e-5)
    accuracy = float((expected.argmax(-1) == np.asarray(tiny_ds["label"])).mean())
    assert metrics["eval_accuracy"] == pytest.approx(accuracy)
    assert metrics["eval_loss"] > 0


def test_transformers_student_is_called_with_pixel_values(tmp_path, tiny_ds):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)
    student = ResNetForImageClassification(config)
    teacher = timm.create_model("cifar10_resnet20")
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, max_steps=2, alpha=0.5),
        train_dataset=prepare_image_dataset(tiny_ds, teacher, "img", "label"),
    )
    batch = DistillationCollator()([trainer.train_dataset[i] for i in range(4)])
    loss = trainer.compute_loss(trainer.model, batch)
    with torch.no_grad():
        student_logits = student(pixel_values=batch["pixel_values"]).logits
        expected = kd_loss(student_logits, teacher.eval()(batch["pixel_values"]), batch["labels"], alpha=0.5)[0]
    torch.testing.assert_close(loss, expected)
    assert trainer.train().global_step == 2


def test_teacher_input_is_renormalised_and_resized():
    teacher_mean, teacher_std = (0.5, 0.5, 0.5), (0.25, 0.5, 1.0)
    adapter = TeacherInputAdapter.from_configs(
        dict(input_size=(3, 32, 32), mean=MEAN, std=STD),
        dict(input_size=(3, 40, 40), mean=teacher_mean, std=teacher_std, interpolation="bilinear"),
        torch.device("cpu"),
    )
    raw = torch.rand(2, 3, 32, 32)  # pixels in [0, 1]

    def normalise(x, mean, std):
        return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

    resized = F.interpolate(raw, size=(40, 40), mode="bilinear", antialias=True)
    expected = normalise(resized, teacher_mean, teacher_std)
    torch.testing.assert_close(adapter(normalise(raw, MEAN, STD)), expected, rtol=1e-5, atol=1e-5)

    same = TeacherInputAdapter.from_configs(dict(input_size=(3, 32, 32), mean=MEAN, std=STD),
                                            dict(input_size=(3, 32, 32), mean=MEAN, std=STD), torch.device("cpu"))
    x = normalise(raw, MEAN, STD)
    assert same(x) is x


def test_trainer_feeds_the_teacher_its_own_input(tmp_path, tiny_ds):
    teacher = cifar_like(tiny_teacher())
    teacher.pretrained_cfg = dict(input_size=(3, 40, 40), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear")
    seen = []
    teacher.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    trainer = make_trainer(tmp_path, tiny_ds, teacher=teacher)
    seen.clear()
    batch = DistillationCollator()([trainer.eval_dataset[i] for i in range(2)])
    trainer.compute_loss(trainer.model, batch)
    raw = batch["pixel_values"] * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    expected = (F.interpolate(raw, size=(40, 40), mode="bilinear", antialias=True) - 0.5) / 0.5
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-5)


# ---- precision and distributed wrappers ----


def test_half_precision_batch_reaches_the_float32_teacher_in_its_dtype(tmp_path, tiny_ds):
    """DeepSpeed casts every float batch to its bf16 and turns accelerate's autocast off: the fp32 teacher must
    still run (no "Input type (BFloat16) and bias type (float)") and see its input in float32."""
    trainer = make_trainer(tmp_path, tiny_ds)
    trainer.model.to(torch.bfloat16)  # as DeepSpeed holds the student
    seen = []
    trainer.teacher_model.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    batch = DistillationCollator()([trainer.train_dataset[i] for i in range(4)])
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    loss = trainer.compute_loss(trainer.model, batch)
    assert seen == [torch.float32] and torch.isfinite(loss)
    with torch.no_grad():
        expected = trainer.teacher_model(batch["pixel_values"].float())
    torch.testing.assert_close(trainer.teacher_logits(batch["pixel_values"]), expected)


def test_teacher_never_runs_in_fp16(tmp_path, tiny_ds, monkeypatch):
    """Under --fp16 the student's autocast is fp16; the teacher runs in bf16 where the device computes it natively,
    else in float32, even inside an fp16 autocast."""
    from hf_ifbeta.features import resolve_precision

    trainer = make_trainer(tmp_path, tiny_ds, fp16=True)
    # accelerate gives no fp16 autocast on a CPU: stand in for the GPU's.
    monkeypatch.setattr(trainer.accelerator, "autocast", lambda: torch.autocast("cpu", dtype=torch.float16))
    dtypes = []
    trainer.teacher_model[0].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    batch = DistillationCollator()([trainer.train_dataset[i] for i in range(4)])
    with torch.autocast("cpu", dtype=torch.float16):
        trainer.compute_loss(trainer.model, batch)
    expected = torch.bfloat16 if resolve_precision("auto", torch.device("cpu")) == "bf16" else torch.float32
    assert dtypes == [expected]

    from hf_ifbeta.trainer import teacher_precision

    for flags, precision in ((dict(bf16=True), "bf16"), ({}, "fp32")):
        assert teacher_precision(make_args(tmp_path, **flags), torch.device("cpu")) == precision


def test_bf16_on_a_cpu_without_native_bfloat16_warns(tmp_path, tiny_ds, monkeypatch, caplog):
    import hf_ifbeta.trainer as trainer_module

    for native, warned in ((False, True), (True, False)):
        monkeypatch.setattr(trainer_module, "native_bf16", lambda device, native=native: native)
        caplog.clear()
        with caplog.at_level("WARNING", logger="hf_ifbeta.trainer"):
            make_trainer(tmp_path, tiny_ds, bf16=True)
        assert ("bf16=True on a CPU without native bfloat16" in caplog.text) is warned
    monkeypatch.setattr(trainer_module, "native_bf16", lambda device: False)
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_ifbeta.trainer"):
        make_trainer(tmp_path, tiny_ds)  # float32 on a CPU that emulates bf16: nothing to say
    assert "native bfloat16" not in caplog.text


def test_non_finite_teacher_logits_are_named_once(tmp_path, tiny_ds):
    teacher = tiny_teacher()
    trainer = make_trainer(tmp_path, tiny_ds, teacher=teacher)
    batch = DistillationCollator()([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        teacher[-1].bias[3] = float("inf")
    with pytest.raises(ValueError, match=r"teacher's logits are NaN or infinite \(row 0 of the first batch, 4 of 4"):
        trainer.compute_loss(trainer.model, batch)
    with torch.no_grad():
        teacher[-1].bias[3] = 0.0
    trainer.compute_loss(trainer.model, batch)  # checked once: later batches cost no synchronisation
    assert trainer._teacher_checked


def test_fsdp_sharded_state_dict_still_saves_a_loadable_student(tmp_path, monkeypatch):
    """transformers' save_model writes no weights under FSDP with a SHARDED state dict (accelerate's default); the
    trainer gathers the full one, so the folder (and a push) loads with timm."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    student = timm.create_model("cifar10_resnet20", num_classes=3)
    args = DistillationTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
    trainer = DistillationTrainer(model=student, teacher_model=timm.create_model("cifar10_resnet20", num_classes=3), args=args)
    gathered = []

    def get_state_dict(model, unwrap=True):
        gathered.append(model)
        return {k: v.clone() for k, v in student.state_dict().items()}

    monkeypatch.setattr(trainer, "is_fsdp_enabled", True)
    monkeypatch.setattr(trainer.accelerator.state, "fsdp_plugin", SimpleNamespace(state_dict_type="StateDictType.SHARDED_STATE_DICT"), raising=False)
    monkeypatch.setattr(trainer.accelerator, "get_state_dict", get_state_dict)
    trainer.save_model()
    assert gathered == [trainer.model]
    loaded = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), student.eval()(x))


def test_persistent_workers_see_every_new_epoch(tmp_path, tiny_ds, monkeypatch):
    """The recipes keep DataLoader workers between epochs; the augmentation stream must still move to the next epoch."""
    trainer = make_trainer(
        tmp_path, tiny_ds, num_train_epochs=3, dataloader_num_workers=1, dataloader_persistent_workers=True
    )
    epochs = []
    compute_loss = trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        if model.training:
            epochs.append(int(inputs["epoch"][0]))
        return compute_loss(model, inputs, *args, **kwargs)

    monkeypatch.setattr(trainer, "compute_loss", recording)
    trainer.train()
    assert epochs == [0] * 4 + [1] * 4 + [2] * 4  # 32 rows, batches of 8


# ---- data plumbing ----


def test_prepare_image_dataset_rows(tiny_ds):
    student = timm.create_model("cifar10_resnet20")
    row = prepare_image_dataset(tiny_ds, student, "img", "label")[3]
    assert row["pixel_values"].shape == (3, 32, 32) and row["labels"] == tiny_ds[3]["label"]
    eval_row = prepare_image_dataset(tiny_ds, student, train=False)[3]  # image column found by type
    expected = timm.data.create_transform(**timm.data.resolve_model_data_config(student))(tiny_ds[3]["img"])
    torch.testing.assert_close(eval_row["pixel_values"], expected, rtol=1e-5, atol=1e-5)
    assert tiny_ds.features["img"].decode  # the input dataset is left as it was


# ---- bad input: clear errors before any training ----


def test_class_count_mismatch_names_both_counts(tmp_path, tiny_ds):
    with pytest.raises(ValueError, match="student predicts 10 classes but the teacher predicts 7"):
        make_trainer(tmp_path, tiny_ds, teacher=tiny_teacher(num_classes=7))  # no attributes: probed
    with pytest.raises(ValueError, match="student predicts 100 classes but the teacher predicts 10"):
        make_trainer(tmp_path, tiny_ds, student=timm.create_model("cifar10_resnet20", num_classes=100),
                     teacher=timm.create_model("cifar10_resnet56"))


@pytest.mark.parametrize("kwargs, name", [
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(alpha=-0.1), "alpha"),
    (dict(alpha=1.5), "alpha"),
    (dict(label_names=["y"]), "label_names"),
])
def test_bad_kd_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=rf"{name} must be"):
        make_args(tmp_path, **kwargs)


def test_plain_training_arguments_are_refused(tmp_path, tiny_ds):
    with pytest.raises(TypeError, match="DistillationTrainingArguments"):
        DistillationTrainer(model=TinyNet(), teacher_model=tiny_teacher(), args=TrainingArguments(str(tmp_path)))


def test_remove_unused_columns_keeps_what_a_lazy_transform_reads(tmp_path, tiny_ds):
    student = TinyNet()
    student.pretrained_cfg = dict(input_size=(3, 96, 96), mean=MEAN, std=STD, crop_pct=1.0, interpolation="bilinear")
    lazy = prepare_image_dataset(tiny_ds, student, "img", "label")  # above 64 px: decoded per batch by a transform
    assert lazy.format["type"] == "custom"
    trainer = DistillationTrainer(
        model=student, teacher_model=tiny_teacher(), args=make_args(tmp_path, remove_unused_columns=True),
        train_dataset=lazy, eval_dataset=prepare_image_dataset(tiny_ds, student, "img", "label", train=False),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["pixel_values"].shape == (8, 3, 96, 96) and batch["labels"].shape == (8,)


def test_missing_columns(tmp_path, tiny_ds):
    student = TinyNet()
    with pytest.raises(ValueError, match="'labelz' is not in the dataset"):
        prepare_image_dataset(tiny_ds, student, "img", "labelz")
    with pytest.raises(ValueError, match="'image' is not in the dataset"):
        prepare_image_dataset(tiny_ds, student, "image", "label")
    # A raw image dataset: no pixel_values.
    args = make_args(tmp_path)
    with pytest.raises(ValueError, match="pixel_values.*prepare_image_dataset"):
        DistillationTrainer(model=student, teacher_model=tiny_teacher(), args=args, train_dataset=tiny_ds)
    # Prepared without labels while the CE term needs them.
    unlabelled = prepare_image_dataset(tiny_ds.remove_columns("label"), student, "img", label_column=None)
    with pytest.raises(ValueError, match=r"lack \['labels'\]"):
        DistillationTrainer(model=student, teacher_model=tiny_teacher(), args=args, train_dataset=unlabelled)
    # ... which is fine for pure KD.
    DistillationTrainer(model=student, teacher_model=tiny_teacher(), args=make_args(tmp_path, alpha=1.0),
                        train_dataset=unlabelled)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---- real data (slow) ----


class StepRecorder(TrainerCallback):
    def __init__(self):
        self.steps, self.first_params = [], None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.first_params is None:
            self.first_params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.steps.append(state.global_step)


def cifar_args(tmp_path, **kwargs):
    """The benchmark protocol's optimiser (SGD 0.1, nesterov momentum 0.9, weight decay 5e-4), constant lr."""
    protocol = dict(
        per_device_train_batch_size=64,
        per_device_eval_batch_size=250,
        learning_rate=0.1,
        optim_args="momentum=0.9,nesterov=True",
        weight_decay=5e-4,
        lr_scheduler_type="constant",
    )
    return make_args(tmp_path, **{**protocol, **kwargs})


@pytest.fixture
def one_thread():
    """Real-data tests run on one intra-op thread: on a shared 2-core machine two OpenMP threads per process
    collapse (measured 10-20 vs 80 images/s for a ResNet-20 KD step under a load of 7)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_kd_on_cifar_2k(tmp_path, cifar_train_2k, cifar_test, teacher56, one_thread):
    torch.manual_seed(0)
    student = timm.create_model("cifar10_resnet20")
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher56,
        args=cifar_args(tmp_path, num_train_epochs=2, logging_steps=4, eval_strategy="epoch"),
        train_dataset=prepare_image_dataset(cifar_train_2k, student, "img", "label"),
        eval_dataset=prepare_image_dataset(cifar_test.select(range(500)), student, "img", "label", train=False),
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    evals = [log for log in trainer.state.log_history if "eval_accuracy" in log]
    first, last = logs[0], logs[-1]
    assert last["loss"] < 0.8 * first["loss"], (first, last)
    assert last["kd_loss"] < first["kd_loss"]
    assert len(evals) == 2 and evals[-1]["eval_accuracy"] > 0.2, evals  # chance is 0.1
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]


@pytest.mark.slow
def test_resume_from_checkpoint_continues(tmp_path, cifar_train_2k, teacher56, one_thread):
    def trainer_for(max_steps):
        torch.manual_seed(0)
        student = timm.create_model("cifar10_resnet20")
        recorder = StepRecorder()
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher56,
            args=cifar_args(
                tmp_path, max_steps=max_steps, per_device_train_batch_size=32, logging_steps=1, save_strategy="steps",
                save_steps=2,
            ),
            train_dataset=prepare_image_dataset(cifar_train_2k, student, "img", "label"),
            callbacks=[recorder],
        )
        return trainer, recorder

    first, _ = trainer_for(4)
    first.train()
    assert sorted(os.listdir(tmp_path / "out")) == ["checkpoint-2", "checkpoint-4"]

    resumed, recorder = trainer_for(6)
    resumed.train(resume_from_checkpoint=True)  # picks the last checkpoint, checkpoint-4
    assert recorder.steps == [4, 5]  # global steps at the start of the two new steps
    assert resumed.state.global_step == 6
    saved = safetensors.torch.load_file(str(tmp_path / "out" / "checkpoint-4" / "model.safetensors"))
    for key, value in saved.items():
        torch.testing.assert_close(recorder.first_params[key], value)
    steps = [log["step"] for log in resumed.state.log_history if "loss" in log]
    assert steps == [1, 2, 3, 4, 5, 6]  # the history of the first run, then the new steps


@pytest.mark.slow
def test_two_processes(tmp_path):
    """torchrun, 2 CPU processes (gloo): both ranks train, each holds its teacher, metrics are gathered once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        str(Path(sys.executable).parent / "torchrun"),
        "--nproc_per_node", "2",
        "--master_port", str(29500 + os.getpid() % 1000),
        str(REPO / "tests" / "scripts" / "ddp_distill.py"),
        str(tmp_path),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    for r in ranks:
        device = torch.device(r["device"])
        assert all(torch.device(d).type == device.type for d in r["teacher_devices"])
        assert not r["teacher_requires_grad"] and not r["teacher_training"]
        assert r["student_wrapped"] == "DistributedDataParallel"
        assert r["global_step"] == 3
        assert r["eval_sizes"] == [30]  # predictions gathered, the sampler's padding dropped
    # The teacher measured the recipes' way: each rank runs its shard once (16 rows: 15 and the sampler's
    # padding), the gather drops the padding, both ranks get the same accuracy over the 30 rows.
    assert [r["teacher_eval_forward_rows"] for r in ranks] == [16, 16]
    assert ranks[0]["teacher_eval"] == ranks[1]["teacher_eval"] and ranks[0]["teacher_eval"]["rows"] == 30
    # kd / ce logs are reduced over processes: both ranks log the same numbers.
    assert ranks[0]["train_logs"] == ranks[1]["train_logs"]
    assert all("kd_loss" in log and "ce_loss" in log for log in ranks[0]["train_logs"])

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["eval_samples"] == metrics["eval_set_size"] == 30
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["metrics.json", "rank0.json", "rank1.json"]


def test_saved_and_pushed_student_loads_with_timm_and_carries_its_card(tmp_path, monkeypatch):
    """`save_model` writes timm's config.json next to the weights; `push_to_hub` uploads the folder with a KD card."""
    import huggingface_hub

    from hf_ifbeta import DistillationTrainer, DistillationTrainingArguments

    torch.manual_seed(0)
    student = timm.create_model("cifar10_resnet20", num_classes=3)
    teacher = timm.create_model("cifar10_resnet20", num_classes=3)
    args = DistillationTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    trainer.save_model()
    loaded = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded(x), student.eval()(x), atol=1e-6)

    uploads = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **k: type("R", (), {"repo_id": repo_id})())
    monkeypatch.setattr(
        huggingface_hub.HfApi, "upload_folder",
        lambda self, **k: uploads.append(sorted(p.name for p in __import__("pathlib").Path(k["folder_path"]).iterdir())),
    )
    args.hub_model_id = "me/resnet20-kd"
    trainer.push_to_hub(subset="me/cifar10-ifbeta-r0.3", teacher="cifar10_resnet56")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "cifar10_resnet56" in card and "me/cifar10-ifbeta-r0.3" in card and "temperature" in card
    assert uploads and {"README.md", "config.json", "model.safetensors"} <= set(uploads[-1])
    # transformers' card options reach the card's metadata, as they do for a transformers model
    trainer.push_to_hub(license="mit", tags="mytag", language="en", finetuned_from="me/base", dataset=["a/b", "c/d"])
    meta = huggingface_hub.ModelCard.load(tmp_path / "out" / "README.md").data
    assert meta.license == "mit" and meta.language == "en" and meta.base_model == "me/base"
    assert {"mytag", "timm", "hf_ifbeta"} <= set(meta.tags) and meta.datasets == ["a/b", "c/d"]
