"""Nothing lost, nothing silently wrong: jobs sharing a cache, damaged cache files, failed writes, the
datasets users really have (string labels, a DatasetDict, image paths), missing folders, a KD run
killed mid-epoch, and a pruning result saved and loaded back. Each test injects the fault."""

import errno
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from filelock import FileLock
from PIL import Image
from transformers import TrainerCallback

import hf_ifbeta  # noqa: F401  (registers the CIFAR ResNets)
from hf_ifbeta import DatasetPruner, DistillationTrainer, DistillationTrainingArguments, PruningResult, load_pruned_dataset
from hf_ifbeta import feature_cache as cache_mod
from hf_ifbeta import features as features_mod
from hf_ifbeta import hub as hub_mod
from hf_ifbeta.data import CorruptImageError, prepare_image_dataset
from hf_ifbeta.features import CorruptCacheError, TeacherOutputs, compute_teacher_outputs
from hf_ifbeta.hub import save_pruning_result_for_hub
from hf_ifbeta.result import load_pruning_result

from factories import tiny_image_dataset

SCRIPTS = Path(__file__).parent / "scripts"
REPO = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The scripts own their synthetic data and teachers, so the references computed here use the same ones.
race = load_script("prune_race")
two_proc = load_script("teacher_pass_2proc")

# 40 rows, chunks of 10 (4 chunks), batches of 5 (2 per chunk).
PASS = dict(batch_size=5, chunk_size=10, progress=False)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ds():
    return two_proc.make_dataset()


@pytest.fixture(scope="module")
def tiny_ds():
    return tiny_image_dataset()  # 120 rows, 4 classes, 16 x 16


@pytest.fixture(scope="module")
def tiny_teacher():
    torch.manual_seed(0)
    return timm.create_model("cifar10_resnet20", num_classes=4, pretrained_cfg_overlay=dict(input_size=(3, 16, 16))).eval()


def make_pruner(teacher, cache_dir, **kwargs):
    settings = dict(method="el2n", batch_size=64, policy_subsample=None, outer_steps=3, cache_dir=str(cache_dir))
    return DatasetPruner(teacher, **{**settings, **kwargs})


def count_forwards(teacher):
    calls = {"n": 0}
    forward_features = teacher.forward_features

    def counted(x):
        calls["n"] += 1
        return forward_features(x)

    teacher.forward_features = counted
    return calls


def entry(root) -> Path:
    (sub,) = [p for p in Path(root).iterdir() if p.is_dir()]
    return sub


def run_logged(args, stderr_path, **env):
    """A subprocess importing this checkout's hf_ifbeta (not another install), stderr to a file."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    with open(stderr_path, "w") as stderr:
        return subprocess.Popen(
            [sys.executable, *map(str, args)], stdout=subprocess.DEVNULL, stderr=stderr,
            env={**os.environ, "PYTHONPATH": path, **env},
        )  # fmt: skip


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------- two jobs, one cache


@pytest.mark.slow
def test_two_jobs_racing_on_the_default_cache_both_succeed_with_equal_indices(tmp_path):
    go = tmp_path / "go"
    jobs = []
    for name in ("a", "b"):
        args = [SCRIPTS / "prune_race.py", "--ready", tmp_path / f"{name}.ready", "--go", go, "--out", tmp_path / f"{name}.json"]
        # The default cache, $HF_HOME/hf_ifbeta, shared by both jobs.
        jobs.append(run_logged(args, tmp_path / f"{name}.err", HF_HOME=str(tmp_path / "hf_home")))
    wait_for(lambda: all((tmp_path / f"{n}.ready").exists() for n in "ab"), 300, "both jobs to load")
    go.touch()  # both start the teacher pass now
    codes = [job.wait(timeout=300) for job in jobs]
    errors = {n: (tmp_path / f"{n}.err").read_text() for n in "ab"}
    assert codes == [0, 0], errors
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["indices"] == b["indices"] and len(a["indices"]) == race.NUM_ROWS // 2
    # One job ran the teacher pass (3 chunks x 2 batches); the other waited for it and reused it.
    assert sorted([a["forward_calls"], b["forward_calls"]]) == [0, 6]
    assert a["cache"] == b["cache"] and Path(a["cache"]).parent == (tmp_path / "hf_home" / "hf_ifbeta").resolve()
    assert sum("waiting for its lock" in err for err in errors.values()) == 1, errors
    # And they are the indices one job alone gets.
    alone = DatasetPruner(race.make_teacher(), cache_dir=str(tmp_path / "alone"), **race.SETTINGS)
    assert alone.prune(race.make_dataset(), race.RATIO)["row_id"] == a["indices"]


@pytest.mark.slow
def test_a_two_rank_job_waits_for_another_jobs_lock_then_reuses_its_entry(ds, tmp_path):
    """The ranks of one job wait together (their collectives meet at every poll) and never deadlock."""
    reference = compute_teacher_outputs(two_proc.make_teacher(), ds, "img", "label", cache_dir=tmp_path / "ref", **PASS)
    key = reference.meta["key"]
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    other_job = FileLock(str(cache_dir / f"{key}.lock"))
    other_job.acquire()
    cmd = [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPTS / "teacher_pass_2proc.py",
        "--cache-dir", cache_dir, "--out", tmp_path / "out", "--chunk-size", "10", "--batch-size", "5",
    ]  # fmt: skip
    job = run_logged(cmd, tmp_path / "job.err")
    try:
        wait_for(lambda: "waiting for its lock" in (tmp_path / "job.err").read_text(), 300, "the job to wait")
        time.sleep(cache_mod.LOCK_POLL_S + 1)  # the ranks meet at least once more while waiting
        assert job.poll() is None, (tmp_path / "job.err").read_text()
        # The other job finishes the entry (a plain copy: new modification times, so it is re-hashed once).
        shutil.copytree(reference.meta["cache_path"], cache_dir / key, copy_function=shutil.copy)
    finally:
        other_job.release()
    assert job.wait(timeout=300) == 0, (tmp_path / "job.err").read_text()[-3000:]
    for rank in (0, 1):
        run = json.loads((tmp_path / "out" / f"rank{rank}" / "run.json").read_text())
        assert run == {"forward_calls": 0, "num_processes": 2}
        got = TeacherOutputs.load(tmp_path / "out" / f"rank{rank}")
        np.testing.assert_array_equal(got.features, reference.features)
        np.testing.assert_array_equal(got.logits, reference.logits)
    # The intact copy's new modification times were recorded, so later loads need no full read.
    meta = json.loads((cache_dir / key / "meta.json").read_text())
    assert {name: r["mtime_ns"] for name, r in meta["files"].items()} == {
        name: (cache_dir / key / name).stat().st_mtime_ns for name in meta["files"]
    }


# ---------------------------------------------------------------------------- damaged caches


def test_truncated_features_are_named_and_recomputed(ds, tmp_path, caplog):
    first = compute_teacher_outputs(two_proc.make_teacher(), ds, "img", "label", cache_dir=tmp_path, **PASS)
    expected = np.array(first.features)  # a copy: the memory map would fault once the file is cut
    del first
    features = entry(tmp_path) / "features.npy"
    size = features.stat().st_size
    with open(features, "r+b") as f:  # a full disk, a killed copy
        f.truncate(size // 2)
    # Loading it directly names the file and says how to clear it (not numpy's "mmap length is greater ...").
    with pytest.raises(CorruptCacheError, match=rf"features.npy has {size // 2:,} bytes but {size:,} were written.*Delete the folder"):
        TeacherOutputs.load(entry(tmp_path))

    teacher = two_proc.make_teacher()
    calls = count_forwards(teacher)
    with caplog.at_level(logging.WARNING, logger="hf_ifbeta.features"):
        again = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, **PASS)
    assert calls["n"] == 8  # the whole pass again: 4 chunks x 2 batches
    assert any("features.npy has" in r.message and "computed again" in r.message for r in caplog.records)
    np.testing.assert_array_equal(again.features, expected)
    assert features.stat().st_size == size


def test_a_few_changed_logits_are_detected_and_the_selection_is_unchanged(tiny_ds, tiny_teacher, tmp_path, caplog):
    pruner = make_pruner(tiny_teacher, tmp_path)
    kept = pruner.prune(tiny_ds, ratio=0.5)["row_id"]
    logits_file = Path(pruner.last_result.provenance["teacher_outputs_dir"]) / "logits.npy"
    original = np.load(logits_file).copy()
    logits = np.load(logits_file, mmap_mode="r+")
    logits[:5] = -logits[:5]  # five rows' logits changed in place: same size
    logits.flush()
    del logits
    # Read as they are, those logits would select other rows: el2n ranks rows by the teacher's probabilities.
    result = pruner.last_result
    damaged = TeacherOutputs(np.load(logits_file), np.load(logits_file), result.labels)
    context = result._scoring_context()
    selection = pruner.method.select(damaged, pruner.method.score(damaged, context), 0.5, context, result.seed)
    assert not np.array_equal(selection.indices, result.indices)

    with pytest.raises(CorruptCacheError, match=r"logits.npy does not match the sha256 recorded"):
        TeacherOutputs.load(logits_file.parent)
    with caplog.at_level(logging.WARNING, logger="hf_ifbeta.features"):
        again = make_pruner(tiny_teacher, tmp_path).prune(tiny_ds, ratio=0.5)["row_id"]
    assert any("logits.npy does not match" in r.message for r in caplog.records)
    assert again == kept
    np.testing.assert_array_equal(np.load(logits_file), original)


def test_a_chunk_write_failing_midway_leaves_nothing_a_rerun_trusts(ds, tmp_path, monkeypatch):
    reference = compute_teacher_outputs(two_proc.make_teacher(), ds, "img", "label", cache_dir=tmp_path / "ref", **PASS)
    savez = np.savez
    writes = {"n": 0}

    def disk_full_on_second_chunk(file, **arrays):
        writes["n"] += 1
        if writes["n"] != 2:
            return savez(file, **arrays)
        buffer = io.BytesIO()
        savez(buffer, **arrays)
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # half of the chunk reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full_on_second_chunk)
    with pytest.raises(OSError, match="No space left"):
        compute_teacher_outputs(two_proc.make_teacher(), ds, "img", "label", cache_dir=tmp_path / "run", **PASS)
    monkeypatch.undo()
    cache = entry(tmp_path / "run")
    assert sorted(p.name for p in cache.iterdir()) == ["chunk_00000.npz", "meta.json"]  # no partial file, any name

    teacher = two_proc.make_teacher()
    calls = count_forwards(teacher)
    resumed = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path / "run", **PASS)
    assert calls["n"] == 6  # chunks 1-3
    np.testing.assert_array_equal(resumed.features, reference.features)
    np.testing.assert_array_equal(resumed.logits, reference.logits)


def interrupted_pass(ds, cache_dir):
    """A pass killed after chunks 0 and 1 were written (in the first batch of chunk 2)."""
    teacher = two_proc.make_teacher()
    forward_features = teacher.forward_features
    calls = {"n": 0}

    def killed_after_4(x):
        if calls["n"] == 4:
            raise KeyboardInterrupt
        calls["n"] += 1
        return forward_features(x)

    teacher.forward_features = killed_after_4
    with pytest.raises(KeyboardInterrupt):
        compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=cache_dir, **PASS)
    return entry(cache_dir)


def test_a_truncated_chunk_is_named_and_computed_again(ds, tmp_path, caplog):
    reference = compute_teacher_outputs(two_proc.make_teacher(), ds, "img", "label", cache_dir=tmp_path / "ref", **PASS)
    cache = interrupted_pass(ds, tmp_path / "run")
    chunk = cache / "chunk_00001.npz"
    chunk.write_bytes(chunk.read_bytes()[:300])  # e.g. a non-atomic copy of the cache, killed

    teacher = two_proc.make_teacher()
    calls = count_forwards(teacher)
    with caplog.at_level(logging.WARNING, logger="hf_ifbeta.features"):
        resumed = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path / "run", **PASS)
    assert any("chunk_00001.npz is damaged" in r.message for r in caplog.records)
    assert calls["n"] == 6  # chunks 1, 2, 3
    np.testing.assert_array_equal(resumed.features, reference.features)


def test_a_chunk_with_changed_bytes_is_named_removed_and_the_rerun_completes(ds, tmp_path):
    reference = compute_teacher_outputs(two_proc.make_teacher(), ds, "img", "label", cache_dir=tmp_path / "ref", **PASS)
    cache = interrupted_pass(ds, tmp_path / "run")
    chunk = cache / "chunk_00001.npz"
    data = bytearray(chunk.read_bytes())
    data[1000] ^= 0xFF  # one byte inside the features array: the zip directory still reads
    chunk.write_bytes(bytes(data))

    with pytest.raises(CorruptCacheError, match=r"chunk_00001.npz is damaged \(Bad CRC-32.*removed: run again"):
        compute_teacher_outputs(two_proc.make_teacher(), ds, "img", "label", cache_dir=tmp_path / "run", **PASS)
    assert sorted(p.name for p in cache.glob("chunk_*")) == ["chunk_00000.npz", "chunk_00002.npz", "chunk_00003.npz"]
    assert not list(cache.glob(".*.tmp"))
    teacher = two_proc.make_teacher()
    calls = count_forwards(teacher)
    rerun = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path / "run", **PASS)
    assert calls["n"] == 2  # chunk 1 only
    np.testing.assert_array_equal(rerun.features, reference.features)
    np.testing.assert_array_equal(rerun.logits, reference.logits)


def test_an_intact_cache_is_loaded_without_reading_it_again(ds, tmp_path, monkeypatch):
    compute_teacher_outputs(two_proc.make_teacher(), ds, "img", "label", cache_dir=tmp_path, **PASS)
    hashed = []
    monkeypatch.setattr(cache_mod, "_file_record", lambda path: hashed.append(path.name))
    monkeypatch.setattr(features_mod, "entry_lock", lambda *args: pytest.fail("the lock was taken"))
    again = compute_teacher_outputs(two_proc.make_teacher(), ds, "img", "label", cache_dir=tmp_path, **PASS)
    TeacherOutputs.load(entry(tmp_path))
    assert hashed == [] and again.n == 40  # sizes and modification times only: no sha256 when nothing changed


# ---------------------------------------------------------------------------- the datasets users have


def test_string_labels_are_refused_with_the_fix_and_the_fix_works(tiny_ds, tiny_teacher, tmp_path):
    names = ["ant", "bee", "cat", "dog"]  # sorted: class_encode_column keeps the teacher's order
    as_strings = tiny_ds.cast_column("label", datasets.Value("string"))
    as_strings = as_strings.map(lambda row: {"label": names[int(row["label"])]})
    pruner = make_pruner(tiny_teacher, tmp_path)
    first = as_strings[0]["label"]
    with pytest.raises(ValueError, match=rf"Label column 'label' holds strings \(row 0: '{first}'\).*class_encode_column\('label'\)"):
        pruner.prune(as_strings, ratio=0.5)

    expected = pruner.prune(tiny_ds, ratio=0.5)["row_id"]
    assert pruner.prune(as_strings.class_encode_column("label"), ratio=0.5)["row_id"] == expected
    by_names = as_strings.cast_column("label", datasets.ClassLabel(names=names))
    assert pruner.prune(by_names, ratio=0.5)["row_id"] == expected


def test_a_dataset_dict_is_refused_naming_its_splits(tiny_ds, tiny_teacher, tmp_path):
    splits = datasets.DatasetDict({"train": tiny_ds, "test": tiny_ds.select(range(10))})
    pruner = make_pruner(tiny_teacher, tmp_path / "cache")
    message = r"DatasetDict with splits \['train', 'test'\]: pass one split, the training rows, e.g. dataset\['train'\]"
    with pytest.raises(ValueError, match=message):
        pruner.prune(splits, ratio=0.5)
    with pytest.raises(ValueError, match=message):
        pruner.score(splits)
    with pytest.raises(ValueError, match=message):
        compute_teacher_outputs(tiny_teacher, splits, "image", "label", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_an_image_column_of_file_paths_is_decoded(tiny_ds, tiny_teacher, tmp_path):
    paths = []
    for i, image in enumerate(tiny_ds["image"]):
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])  # PNG: the same pixels
    on_disk = tiny_ds.remove_columns("image").add_column("path", paths)
    assert on_disk.features["path"] == datasets.Value("string")

    pruner = make_pruner(tiny_teacher, tmp_path / "cache")
    expected_rows = pruner.prune(tiny_ds, ratio=0.5)["row_id"]
    expected = pruner.last_result.scores
    pruner = make_pruner(tiny_teacher, tmp_path / "cache", image_column="path")
    assert pruner.prune(on_disk, ratio=0.5)["row_id"] == expected_rows
    np.testing.assert_array_equal(pruner.last_result.scores, expected)
    # The training path decodes them too, to the same pixels.
    from_paths = prepare_image_dataset(on_disk, tiny_teacher, "path", "label", train=False)[:8]["pixel_values"]
    from_images = prepare_image_dataset(tiny_ds, tiny_teacher, "image", "label", train=False)[:8]["pixel_values"]
    assert torch.equal(torch.as_tensor(from_paths), torch.as_tensor(from_images))

    missing = on_disk.map(lambda row, i: {"path": str(tmp_path / "gone.png") if i == 7 else row["path"]}, with_indices=True)
    with pytest.raises(CorruptImageError, match=r"row 7, column 'path'.*gone.png"):
        make_pruner(tiny_teacher, tmp_path / "cache", image_column="path").prune(missing, ratio=0.5)


def test_a_missing_local_folder_is_named(tmp_path, monkeypatch):
    folder = tmp_path / "no" / "such" / "subset"
    named = re.escape(f"The folder {folder.resolve()} does not exist")
    with pytest.raises(FileNotFoundError, match=rf"{named}, and .* is not a valid Hub dataset repo id"):
        load_pruned_dataset(folder)
    with pytest.raises(FileNotFoundError, match=named):
        load_pruning_result(str(folder))

    # A name that could be either: what the Hub said is kept, and the missing folder is added.
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("outgoing traffic has been disabled")

    monkeypatch.setattr(hub_mod, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LocalEntryNotFoundError, match="outgoing traffic") as caught:
        load_pruned_dataset("results-subset")
    assert caught.value.__notes__ == [f"There is no local folder {(tmp_path / 'results-subset').resolve()} either."]


# ---------------------------------------------------------------------------- pruning results


def test_pruning_result_round_trips_exactly_and_refuses_other_rows(tiny_ds, tiny_teacher, tmp_path):
    pruner = make_pruner(tiny_teacher, tmp_path / "cache", method="if-beta")
    pruner.prune(tiny_ds, ratio=0.5, seed=3)
    result = pruner.last_result
    result.save(tmp_path / "result")
    loaded = PruningResult.load(tmp_path / "result")

    for name in ("indices", "scores", "labels", "val_indices"):
        got, expected = getattr(loaded, name), getattr(result, name)
        assert got.dtype == expected.dtype and np.array_equal(got, expected), name
    assert loaded.extra_scores.keys() == result.extra_scores.keys()
    for name, values in result.extra_scores.items():
        assert np.array_equal(loaded.extra_scores[name], values), name
    assert loaded.policy == result.policy and "a" in loaded.policy
    assert loaded.provenance == result.provenance
    assert (loaded.method, loaded.ratio, loaded.seed, loaded.config) == ("if-beta", 0.5, 3, result.config)
    # It selects the same rows again, from the saved scores and the cached teacher outputs.
    assert np.array_equal(loaded.select_indices(0.5, seed=3), result.indices)

    shuffled = tiny_ds.shuffle(seed=1)
    with pytest.raises(ValueError, match=r"fingerprint .* differs from the scored one .* row \d+ has label"):
        loaded.select(shuffled)
    with pytest.raises(ValueError, match="for a dataset of 120 rows, got one of 100 rows"):
        loaded.select(tiny_ds.select(range(100)))
    folder = save_pruning_result_for_hub(result, tmp_path / "subset")
    with pytest.raises(ValueError, match=r"row \d+ has label"):
        load_pruned_dataset(folder, dataset=shuffled)
    assert load_pruned_dataset(folder, dataset=tiny_ds)["row_id"] == result.indices.tolist()


# ---------------------------------------------------------------------------- a KD run killed mid-epoch

CFG = dict(input_size=(3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=1.0, interpolation="bilinear")


class TinyNet(nn.Module):
    def __init__(self, width: int, num_classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.head = nn.Linear(width, num_classes)
        self.pretrained_cfg = dict(CFG)

    def forward(self, x):
        return self.head(F.relu(self.conv(x)).mean(dim=(2, 3)))


class Killed(Exception):
    pass


class KillAtStep(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed(f"killed at step {state.global_step}")


class BatchRecorder(DistillationTrainer):
    """Records each training batch: its labels and the sum of its pixels (which rows, which augmentation)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.batches.append((inputs["labels"].tolist(), float(inputs["pixel_values"].double().sum())))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


KD_ROWS = 48  # 6 steps of 8 per epoch, 2 epochs; checkpoints at steps 4, 8, 12


def kd_trainer(ds, out, augment, seed=0, kill_at=None):
    torch.manual_seed(0)
    student, teacher = TinyNet(4), TinyNet(6)
    args = DistillationTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=8, num_train_epochs=2, learning_rate=0.05, optim="adamw_torch",
        use_cpu=True, disable_tqdm=True, save_strategy="steps", save_steps=4, logging_steps=1, seed=seed, data_seed=0,
        report_to="none",
    )  # fmt: skip
    trainer = BatchRecorder(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=prepare_image_dataset(ds, student, "image", "label", train=augment),
        callbacks=[KillAtStep(kill_at)] if kill_at else None,
    )
    trainer.batches = []
    return trainer


def killed_and_resumed(ds, tmp_path, augment):
    """An uninterrupted run, and a run killed at step 10 (mid epoch 2) resumed from checkpoint-8."""
    full = kd_trainer(ds, tmp_path / "full", augment)
    full.train()
    killed = kd_trainer(ds, tmp_path / "run", augment, kill_at=10)
    with pytest.raises(Killed):
        killed.train()
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint-4", "checkpoint-8"]
    resumed = kd_trainer(ds, tmp_path / "run", augment)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-8"))
    assert killed.batches[:8] == full.batches[:8] and len(resumed.batches) == 4  # steps 9-12 again
    return full, resumed


def step_losses(trainer):
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


def test_kd_killed_mid_epoch_resumes_exactly_without_augmentation(tmp_path):
    full, resumed = killed_and_resumed(tiny_image_dataset(n=KD_ROWS), tmp_path, augment=False)
    assert resumed.batches == full.batches[8:]  # the same rows in the same order (pixel sums identify them)
    assert step_losses(resumed) == step_losses(full)  # the history of steps 1-8, then identical steps 9-12
    # On CPU the whole state (weights, AdamW moments, schedule, data order) comes back bit for bit.
    for name, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_kd_killed_mid_epoch_resumes_exactly_with_augmentation(tmp_path):
    """The augmented view of a row is a function of (seed, epoch, row) (`DecodedImageDataset`), not of a
    global RNG that a resume would have to restore at the right batch, so the resumed steps see the very
    pixels of the uninterrupted run and end on the same weights."""
    ds = tiny_image_dataset(n=KD_ROWS)
    full, resumed = killed_and_resumed(ds, tmp_path, augment=True)
    assert resumed.batches == full.batches[8:]  # same rows, same order, same crops and flips
    assert step_losses(resumed) == step_losses(full)
    for name, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    other_draws = kd_trainer(ds, tmp_path / "seed1", augment=True, seed=1)
    other_draws.train()
    assert [labels for labels, _ in other_draws.batches] == [labels for labels, _ in full.batches]
    assert other_draws.batches != full.batches  # the seed does change the views: the check above can fail
