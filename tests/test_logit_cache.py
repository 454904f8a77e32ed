"""hf_ifbeta.logit_cache: offline teacher logits equal online KD, are shared by subsets, and refuse damage."""

import numpy as np
import pytest
import timm
import torch

import hf_ifbeta  # noqa: F401  (registers the CIFAR ResNets)
from factories import tiny_image_dataset
from hf_ifbeta import DistillationTrainer, DistillationTrainingArguments
from hf_ifbeta.data import prepare_image_dataset
from hf_ifbeta.logit_cache import TeacherLogitCache, state_dict_digest


@pytest.fixture(scope="module")
def dataset():
    return tiny_image_dataset(n=64, num_classes=4, size=16)


def distil(dataset, tmp_path, rows, cache, epochs=2):
    """(trainer, student weights) of a short KD run; the same seeds give the same student and teacher."""
    torch.manual_seed(0)
    student = timm.create_model("cifar10_resnet20", num_classes=4)
    torch.manual_seed(1)
    teacher = timm.create_model("cifar10_resnet20", num_classes=4)
    args = DistillationTrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, num_train_epochs=epochs, use_cpu=True,
        learning_rate=0.05, save_strategy="no", report_to="none", disable_tqdm=True, seed=3,
        teacher_logit_cache=cache, teacher_logit_cache_dir=str(tmp_path / "logits"),
    )
    train = prepare_image_dataset(dataset, student, "image", "label", rows=rows, cache_dir=str(tmp_path / "decoded"))
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train)
    trainer.train()
    return trainer, torch.cat([p.detach().reshape(-1) for p in student.parameters()])


def test_cached_runs_equal_online_kd_and_a_subset_spends_no_teacher_forward(dataset, tmp_path, one_torch_thread):
    online, w_online = distil(dataset, tmp_path, np.arange(64), cache=False)
    filling, w_filling = distil(dataset, tmp_path, np.arange(64), cache=True)
    assert online.teacher_forward_rows == filling.teacher_forward_rows == filling.logit_cache.computed == 128
    torch.testing.assert_close(w_filling, w_online, rtol=0, atol=0)
    # Another subset of the same rows (another ratio, another method): every view is in the cache.
    subset = np.random.default_rng(0).choice(64, 40, replace=False)
    cached, w_cached = distil(dataset, tmp_path, subset, cache=True)
    assert cached.teacher_forward_rows == 0 and cached.logit_cache.reused == 80
    _, w_subset_online = distil(dataset, tmp_path, subset, cache=False)
    torch.testing.assert_close(w_cached, w_subset_online, rtol=0, atol=0)
    # A longer run computes only the epochs the cache lacks.
    longer, _ = distil(dataset, tmp_path, subset, cache=True, epochs=3)
    assert longer.teacher_forward_rows == 40


def test_cache_key_follows_the_teacher_weights(dataset, tmp_path):
    teacher = timm.create_model("cifar10_resnet20", num_classes=4)
    before = state_dict_digest(teacher)
    with torch.no_grad():
        teacher.get_classifier().bias.add_(1.0)
    assert state_dict_digest(teacher) != before
    a = TeacherLogitCache(tmp_path, {"teacher": before}, num_rows=8)
    b = TeacherLogitCache(tmp_path, {"teacher": state_dict_digest(teacher)}, num_rows=8)
    assert a.path != b.path


def test_cache_fills_only_missing_rows_and_names_a_damaged_file(tmp_path):
    cache = TeacherLogitCache(tmp_path, {"teacher": "t"}, num_rows=10)
    calls = []

    def teacher(mask):
        calls.append(mask.clone())
        return torch.arange(int(mask.sum()) * 3, dtype=torch.float32).view(-1, 3) + 100 * len(calls)

    first = cache.get(0, torch.tensor([1, 4]), teacher)
    mixed = cache.get(0, torch.tensor([4, 7, 1]), teacher)
    assert calls[1].tolist() == [False, True, False]
    torch.testing.assert_close(mixed[[0, 2]], first[[1, 0]])
    cache.flush()
    path = cache.path / "epoch_00000.npy"
    with open(path, "r+b") as f:
        f.truncate(64)
    with pytest.raises(ValueError, match=r"epoch_00000\.npy is damaged"):
        TeacherLogitCache(tmp_path, {"teacher": "t"}, num_rows=10).get(0, torch.tensor([1]), teacher)


def test_cache_needs_a_seeded_augmentation_stream(dataset, tmp_path):
    student = timm.create_model("cifar10_resnet20", num_classes=4)
    args = DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, teacher_logit_cache=True, report_to="none")
    lazy = dataset.with_format("torch")
    with pytest.raises(ValueError, match="seeded augmentation stream"):
        DistillationTrainer(model=student, teacher_model=student, args=args, train_dataset=lazy)
