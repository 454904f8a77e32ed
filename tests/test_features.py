import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from hf_ifbeta.data import CorruptImageError, eval_transform
from hf_ifbeta.features import TeacherOutputs, _ImageBatches, compute_teacher_outputs

SCRIPT = Path(__file__).parent / "scripts" / "teacher_pass_2proc.py"

# The 2-process script owns the synthetic dataset and teacher, so the test's reference is the same data.
_spec = importlib.util.spec_from_file_location("teacher_pass_2proc", SCRIPT)
two_proc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(two_proc)

# 40 rows, chunks of 10 (4 chunks), batches of 5 (2 per chunk).
PASS = dict(batch_size=5, chunk_size=10, progress=False)


# Batches of 5 tiny images: a second intra-op thread only adds synchronisation, which slows this file
# down on a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ds():
    return two_proc.make_dataset()  # 40 random images, every 5th 24 x 24 (full transform), the rest 32 x 32


@pytest.fixture
def teacher():
    return two_proc.make_teacher()  # random-init cifar10_resnet20


def direct_forward(teacher, ds):
    """The reference: timm's transform image by image, one batch, forward_features + forward_head."""
    transform = eval_transform(teacher)
    x = torch.stack([transform(image.convert("RGB")) for image in ds["img"]])
    with torch.inference_mode():
        fx = teacher.eval().forward_features(x)
        return teacher.forward_head(fx, pre_logits=True).numpy(), teacher.forward_head(fx).numpy()


def count_forwards(teacher, fail_after=None):
    """Wrap `teacher.forward_features` to count calls, raising on call `fail_after + 1` when given."""
    calls = {"n": 0}
    forward_features = teacher.forward_features

    def wrapped(x):
        if fail_after is not None and calls["n"] >= fail_after:
            raise RuntimeError("injected interruption")
        calls["n"] += 1
        return forward_features(x)

    teacher.forward_features = wrapped
    return calls


def only_subdir(root):
    (sub,) = [p for p in Path(root).iterdir() if p.is_dir()]
    return sub


def test_teacher_batches_are_bitwise_the_per_image_timm_transform(teacher):
    """Images at the input size take the batched path, the others timm's transform: equal, bit for bit."""
    transform = eval_transform(teacher)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)) for s in (32, 32, 24, 32, 40)]
    ds = datasets.Dataset.from_dict({"img": images}, features=datasets.Features({"img": datasets.Image()}))
    batches = _ImageBatches(ds, "img", transform)
    assert batches.fast is not None and batches.fast.size == 32
    start, pixels = batches[(0, 5)]
    expected = torch.stack([transform(image.convert("RGB")) for image in ds["img"]])
    assert start == 0 and torch.equal(pixels, expected)


def test_outputs_match_direct_forward(ds, teacher, tmp_path):
    out = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, **PASS)
    features, logits = direct_forward(teacher, ds)
    assert (out.n, out.num_features, out.num_classes) == (40, 64, 10)
    assert out.features.dtype == np.float32 and out.logits.dtype == np.float32 and out.labels.dtype == np.int64
    np.testing.assert_allclose(out.features, features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.logits, logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.labels, np.arange(40) % 10)
    weight, bias = out.head
    np.testing.assert_array_equal(weight, teacher.linear.weight.detach().numpy())
    np.testing.assert_array_equal(bias, teacher.linear.bias.detach().numpy())
    np.testing.assert_allclose(out.features @ weight.T + bias, out.logits, rtol=1e-4, atol=1e-4)
    assert out.meta["features"] == "pre_logits" and out.meta["teacher"] == "cifar10_resnet20"
    assert out.meta["dataset_fingerprint"] == ds._fingerprint and out.meta["complete"]
    assert isinstance(out.features, np.memmap)
    cache = only_subdir(tmp_path)
    assert sorted(p.name for p in cache.iterdir()) == ["features.npy", "head.npz", "labels.npy", "logits.npy", "meta.json"]
    assert teacher.training is False


def test_dataloader_workers_give_same_outputs(ds, teacher, tmp_path):
    base = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path / "a", **PASS)
    workers = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path / "b", num_workers=2, **PASS)
    np.testing.assert_array_equal(workers.features, base.features)
    np.testing.assert_array_equal(workers.logits, base.logits)


def test_cache_hit_skips_teacher_and_other_arguments_do_not_mix(ds, teacher, tmp_path):
    first = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, **PASS)
    calls = count_forwards(teacher, fail_after=0)  # any forward now raises
    again = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, **PASS)
    assert calls["n"] == 0
    np.testing.assert_array_equal(again.features, first.features)
    np.testing.assert_array_equal(again.logits, first.logits)
    assert again.meta["key"] == first.meta["key"]
    # Another dtype, other weights or another slice of the data are other keys: the teacher must run.
    with pytest.raises(RuntimeError, match="injected"):
        compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, features_dtype="float16", **PASS)
    other = two_proc.make_teacher(seed=1)
    count_forwards(other, fail_after=0)
    with pytest.raises(RuntimeError, match="injected"):
        compute_teacher_outputs(other, ds, "img", "label", cache_dir=tmp_path, **PASS)
    with pytest.raises(RuntimeError, match="injected"):
        compute_teacher_outputs(teacher, ds.select(range(20)), "img", "label", cache_dir=tmp_path, **PASS)


def test_interrupted_pass_resumes_missing_chunks(ds, teacher, tmp_path):
    reference = compute_teacher_outputs(two_proc.make_teacher(), ds, "img", "label", cache_dir=tmp_path / "ref", **PASS)
    count_forwards(teacher, fail_after=4)  # batches 1-4 = chunks 0 and 1; the first batch of chunk 2 raises
    with pytest.raises(RuntimeError, match="injected"):
        compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path / "run", **PASS)
    cache = only_subdir(tmp_path / "run")
    assert sorted(p.name for p in cache.glob("chunk_*.npz")) == ["chunk_00000.npz", "chunk_00001.npz"]
    assert json.loads((cache / "meta.json").read_text())["complete"] is False

    resumed_teacher = two_proc.make_teacher()
    calls = count_forwards(resumed_teacher)
    # A different chunk_size on resume keeps the cache's own (10): still only chunks 2 and 3 run.
    resumed = compute_teacher_outputs(
        resumed_teacher, ds, "img", "label", cache_dir=tmp_path / "run", **{**PASS, "chunk_size": 16}
    )
    assert calls["n"] == 4  # 2 chunks x 2 batches
    np.testing.assert_array_equal(resumed.features, reference.features)
    np.testing.assert_array_equal(resumed.logits, reference.logits)
    np.testing.assert_array_equal(resumed.labels, reference.labels)
    assert not list(cache.glob("chunk_*.npz"))  # assembled and removed


@pytest.mark.parametrize("num_workers", [0, 1])
def test_corrupt_image_names_the_row(ds, teacher, tmp_path, num_workers):
    raw = ds.cast_column("img", datasets.Image(decode=False))
    images = list(raw["img"])
    images[13] = {"bytes": b"this is not an image", "path": None}
    broken = datasets.Dataset.from_dict({"img": images, "label": list(raw["label"])}, features=raw.features)
    broken = broken.cast_column("img", datasets.Image())
    with pytest.raises(CorruptImageError, match=r"row 13, column 'img'"):
        compute_teacher_outputs(teacher, broken, "img", "label", cache_dir=tmp_path, num_workers=num_workers, **PASS)


def test_label_outside_teacher_classes_fails_before_work(ds, teacher, tmp_path):
    labels = np.arange(40) % 10
    labels[7] = 10
    bad = ds.remove_columns("label").add_column("label", labels.tolist())
    calls = count_forwards(teacher)
    with pytest.raises(ValueError, match=r"Row 7 has label 10 .* 10 classes"):
        compute_teacher_outputs(teacher, bad, "img", "label", cache_dir=tmp_path, **PASS)
    assert calls["n"] == 0 and not list(tmp_path.iterdir())


def test_missing_columns_are_named(ds, teacher, tmp_path):
    with pytest.raises(ValueError, match=r"Image column 'image' is not in the dataset.*\['img', 'label'\]"):
        compute_teacher_outputs(teacher, ds, "image", "label", cache_dir=tmp_path, **PASS)
    with pytest.raises(ValueError, match=r"Label column 'target' is not in the dataset"):
        compute_teacher_outputs(teacher, ds, "img", "target", cache_dir=tmp_path, **PASS)
    with pytest.raises(ValueError, match=r"Unknown features_dtype 'bfloat16'.*float32.*float16"):
        compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, features_dtype="bfloat16")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, batch_size=0)


def test_nan_features_name_the_first_bad_row(ds, teacher, tmp_path):
    forward_head = teacher.forward_head
    batches = {"n": 0}

    def nan_head(x, pre_logits=False):
        out = forward_head(x, pre_logits=pre_logits)
        if pre_logits:
            batches["n"] += 1
            if batches["n"] == 3:  # rows 10-14
                out[2] = float("nan")  # row 12
                out[4] = float("inf")  # row 14
        return out

    teacher.forward_head = nan_head
    with pytest.raises(ValueError, match=r"features are NaN or infinite for row 12 \(2 such rows"):
        compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, **PASS)
    # The chunk before the bad one was kept; the bad chunk was not written.
    assert sorted(p.name for p in only_subdir(tmp_path).glob("chunk_*")) == ["chunk_00000.npz"]


def test_float16_features(ds, teacher, tmp_path):
    full = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, **PASS)
    half = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, features_dtype="float16", **PASS)
    assert half.meta["key"] != full.meta["key"] and half.meta["features_dtype"] == "float16"
    assert half.features.dtype == np.float16 and half.logits.dtype == np.float32
    np.testing.assert_allclose(half.features.astype(np.float32), full.features, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(half.logits, full.logits)


def test_plain_module_uses_logits_as_features(ds, tmp_path):
    torch.manual_seed(0)
    plain = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 10))
    out = compute_teacher_outputs(plain, ds, "img", "label", cache_dir=tmp_path, **PASS)
    assert out.meta["features"] == "logits" and out.head is None
    np.testing.assert_array_equal(out.features, out.logits)
    transform = eval_transform(plain)
    with torch.inference_mode():
        expected = plain(torch.stack([transform(image.convert("RGB")) for image in ds["img"]])).numpy()
    np.testing.assert_allclose(out.logits, expected, rtol=1e-5, atol=1e-5)


def test_save_load_roundtrip(ds, teacher, tmp_path):
    out = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path / "cache", **PASS)
    out.save(tmp_path / "saved")
    loaded = TeacherOutputs.load(tmp_path / "saved")
    assert isinstance(loaded.features, np.memmap)
    assert loaded.meta == {**out.meta, "cache_path": str((tmp_path / "saved").resolve())}
    assert Path(out.meta["cache_path"]).parent == (tmp_path / "cache").resolve()
    for name in ("features", "logits", "labels"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(out, name))
    np.testing.assert_array_equal(loaded.head[0], out.head[0])
    in_memory = TeacherOutputs.load(tmp_path / "saved", mmap_mode=None)
    assert not isinstance(in_memory.features, np.memmap)
    with pytest.raises(ValueError, match="one row per example"):
        TeacherOutputs(out.features, out.logits[:3], out.labels)


def run_two_processes(cache_dir, out_dir, *extra):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(SCRIPT), "--cache-dir", str(cache_dir), "--out", str(out_dir), "--chunk-size", "10", "--batch-size", "5",
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[2])}  # this checkout's hf_ifbeta, not another install
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume(ds, teacher, tmp_path):
    reference = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path / "ref", **PASS)

    done = run_two_processes(tmp_path / "cache", tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        run = json.loads((tmp_path / "out" / f"rank{rank}" / "run.json").read_text())
        assert run == {"forward_calls": 4, "num_processes": 2}  # chunks {0, 2} and {1, 3}, 2 batches each
        got = TeacherOutputs.load(tmp_path / "out" / f"rank{rank}")
        np.testing.assert_allclose(got.features, reference.features, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.logits, reference.logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got.labels, reference.labels)
        assert got.meta["key"] == reference.meta["key"] and got.meta["num_processes"] == 2

    # Each process computes one chunk (2 batches), then fails on the next one.
    failed = run_two_processes(tmp_path / "cache2", tmp_path / "out2", "--fail-after-batches", "2")
    assert failed.returncode != 0 and "injected failure" in failed.stderr
    cache = only_subdir(tmp_path / "cache2")
    assert sorted(p.name for p in cache.glob("chunk_*.npz")) == ["chunk_00000.npz", "chunk_00001.npz"]
    resumed = run_two_processes(tmp_path / "cache2", tmp_path / "out3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for rank in (0, 1):
        assert json.loads((tmp_path / "out3" / f"rank{rank}" / "run.json").read_text())["forward_calls"] == 2
        got = TeacherOutputs.load(tmp_path / "out3" / f"rank{rank}")
        np.testing.assert_allclose(got.features, reference.features, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got.labels, reference.labels)


@pytest.mark.slow
def test_a_resume_after_one_process_failed_splits_its_chunks_evenly(ds, teacher, tmp_path):
    """Chunks 0 and 2 done (the first process's share), 1 and 3 missing (the one that crashed): the two
    processes of the rerun take one each, instead of the crashed one's successor redoing both."""
    calls = count_forwards(teacher, fail_after=6)  # chunks 0, 1, 2 written, then a failure
    with pytest.raises(RuntimeError, match="injected interruption"):
        compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path / "cache", **PASS)
    assert calls["n"] == 6
    (only_subdir(tmp_path / "cache") / "chunk_00001.npz").unlink()
    resumed = run_two_processes(tmp_path / "cache", tmp_path / "out")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = [json.loads((tmp_path / "out" / f"rank{rank}" / "run.json").read_text()) for rank in (0, 1)]
    assert [run["forward_calls"] for run in runs] == [2, 2]  # one chunk of 2 batches each


@pytest.mark.slow
def test_a_process_that_cannot_see_the_cache_fails_at_once_naming_it(tmp_path):
    blind = run_two_processes(tmp_path / "cache", tmp_path / "out", "--per-rank-cache")
    assert blind.returncode != 0
    assert "Processes [1] cannot see the teacher-pass cache" in blind.stderr and "cache_dir must be a folder" in blind.stderr


@pytest.mark.slow
def test_teacher56_on_real_cifar(cifar_train_2k, teacher56, tmp_path):
    out = compute_teacher_outputs(teacher56, cifar_train_2k, "img", "label", cache_dir=tmp_path, chunk_size=1024)
    assert (out.n, out.num_features, out.num_classes) == (2000, 64, 10)
    accuracy = float((np.asarray(out.logits).argmax(1) == out.labels).mean())
    assert accuracy > 0.9, accuracy
    np.testing.assert_array_equal(out.labels, np.asarray(cifar_train_2k["label"]))
    assert out.head is not None and out.head[0].shape == (10, 64)


def test_bf16_teacher_pass_stores_float32_close_to_fp32_in_its_own_cache(ds, teacher, tmp_path):
    from hf_ifbeta.features import resolve_precision

    fp32 = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, **PASS)
    bf16 = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, precision="bf16", **PASS)
    assert bf16.meta["key"] != fp32.meta["key"] and bf16.meta["identity"]["precision"] == "bf16"
    assert "precision" not in fp32.meta["identity"]  # fp32 caches keep their key
    assert bf16.features.dtype == np.float32 and bf16.logits.dtype == np.float32
    scale = np.abs(fp32.logits).max()
    assert np.abs(bf16.logits - fp32.logits).max() < 0.05 * scale  # bf16 keeps 8 bits of mantissa
    assert not np.array_equal(bf16.logits, fp32.logits)  # it did run in bf16
    assert next(teacher.parameters()).is_contiguous()  # the teacher is handed back as it came
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cpu")) in ("bf16", "fp32")
    with pytest.raises(ValueError, match=r"Unknown precision 'half'. Choose between \['auto', 'bf16', 'fp32'\]"):
        compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, precision="half", **PASS)


# ----------------------------------------------------------------------------------------------------
# The middle-stage view of the policy's coverage term


def direct_stage_view(teacher, ds, module="layer2"):
    """The reference: a hook on `module` in one direct forward, its output average-pooled to 2 x 2, flattened."""
    transform = eval_transform(teacher)
    x = torch.stack([transform(image.convert("RGB")) for image in ds["img"]])
    captured = []
    hook = teacher.get_submodule(module).register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.inference_mode():
        teacher.eval()(x)
    hook.remove()
    return torch.nn.functional.adaptive_avg_pool2d(captured[0], 2).flatten(1).numpy()


DEFAULT_IDENTITY = [  # the fields of a teacher-pass cache key before the stage view existed
    "dataset_fingerprint", "features_dtype", "image_column", "label_column", "num_rows", "teacher", "transform", "version",
]  # fmt: skip


def test_the_stage_view_is_the_pooled_middle_stage_of_the_same_forward(ds, teacher, tmp_path):
    calls = count_forwards(teacher)
    out = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, coverage_stage=True, **PASS)
    assert calls["n"] == 8  # one forward per batch of 5: the view comes with the features, not from a second pass
    assert out.coverage.shape == (40, 4 * 32) and out.coverage.dtype == np.float32  # layer2 has 32 channels
    np.testing.assert_allclose(out.coverage, direct_stage_view(teacher, ds), rtol=1e-5, atol=1e-5)
    features, _ = direct_forward(teacher, ds)
    np.testing.assert_allclose(out.features, features, rtol=1e-5, atol=1e-5)
    assert out.meta["identity"]["coverage"] == {"view": "stage", "module": "layer2", "pool": 2}
    assert "coverage.npy" in {p.name for p in only_subdir(tmp_path).iterdir()}
    assert not teacher.layer2._forward_hooks  # the hook is gone after the pass
    half = compute_teacher_outputs(
        teacher, ds, "img", "label", cache_dir=tmp_path, coverage_stage=True, features_dtype="float16", **PASS
    )  # fmt: skip
    assert half.coverage.dtype == np.float16  # the features' dtype rule
    np.testing.assert_allclose(half.coverage.astype(np.float32), out.coverage, rtol=1e-3, atol=1e-3)


def test_the_default_pass_keeps_its_key_and_has_no_view(ds, teacher, tmp_path):
    from hf_ifbeta.feature_cache import cache_key
    from hf_ifbeta.logit_cache import state_dict_digest

    plain = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, precision="fp32", **PASS)
    assert plain.coverage is None and "coverage.npy" not in {p.name for p in only_subdir(tmp_path).iterdir()}
    before = {  # the key as the teacher pass computed it before the view existed, written out field by field
        "version": 1, "dataset_fingerprint": ds._fingerprint, "num_rows": 40,
        "teacher": {
            "class": "hf_ifbeta.models.cifar_resnet.CifarResNet", "architecture": "cifar10_resnet20",
            "tag": teacher.pretrained_cfg["tag"], "state_dict_sha256": state_dict_digest(teacher),
        },
        "transform": repr(eval_transform(teacher)), "image_column": "img", "label_column": "label",
        "features_dtype": "float32",
    }  # fmt: skip
    assert sorted(before) == DEFAULT_IDENTITY and plain.meta["identity"] == before
    assert plain.meta["key"] == cache_key(before)
    staged = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, coverage_stage=True, **PASS)
    assert staged.meta["key"] != plain.meta["key"]
    assert {k: v for k, v in staged.meta["identity"].items() if k != "coverage"} == before
    np.testing.assert_array_equal(staged.features, plain.features)
    np.testing.assert_array_equal(staged.logits, plain.logits)


def test_a_missing_view_in_a_finished_entry_is_computed_again(ds, teacher, tmp_path, caplog):
    first = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, coverage_stage=True, **PASS)
    expected = np.array(first.coverage)
    (only_subdir(tmp_path) / "coverage.npy").unlink()
    calls = count_forwards(teacher)
    with caplog.at_level("WARNING"):
        again = compute_teacher_outputs(teacher, ds, "img", "label", cache_dir=tmp_path, coverage_stage=True, **PASS)
    assert "coverage.npy is missing" in caplog.text and calls["n"] == 8
    np.testing.assert_array_equal(again.coverage, expected)


def test_the_stage_view_finds_the_middle_of_a_timm_feature_info(ds, teacher, tmp_path):
    from timm.models import FeatureInfo

    from hf_ifbeta.features import _middle_stage

    assert _middle_stage(teacher).name == "layer2"  # a list of 4 dicts: index 2
    teacher.feature_info = FeatureInfo([dict(teacher.feature_info[i]) for i in (1, 2, 3)], out_indices=(0, 1, 2))
    assert _middle_stage(teacher).name == "layer2"  # a FeatureInfo of 3: index 1
    import timm

    resnet = timm.create_model("resnet18", num_classes=10)  # 5 entries, from act1: index 2 is layer2 too
    stage = _middle_stage(resnet)
    assert stage.name == "layer2" and stage.num_chs == 128


def test_a_teacher_without_feature_info_or_with_token_stages_is_refused(ds, tmp_path):
    plain = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 10))
    with pytest.raises(ValueError, match=r"Sequential has no `feature_info`.*policy_coverage_view='stage'"):
        compute_teacher_outputs(plain, ds, "img", "label", cache_dir=tmp_path, coverage_stage=True, **PASS)

    class Tokens(nn.Module):
        """A stage that gives (B, N, C) tokens, as a vision transformer's blocks do."""

        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 8, stride=8)
            self.block = nn.Identity()
            self.head = nn.Linear(8, 10)
            self.feature_info = [dict(num_chs=8, reduction=8, module=m) for m in ("embed", "block", "block")]

        def forward(self, x):
            return self.head(self.block(self.embed(x).flatten(2).transpose(1, 2)).mean(1))

    with pytest.raises(ValueError, match=r"stage 'block' of Tokens gives \(5, \d+, 8\).*transformer tokens"):
        compute_teacher_outputs(Tokens(), ds, "img", "label", cache_dir=tmp_path, coverage_stage=True, **PASS)


def test_auto_precision_is_bf16_only_where_the_device_computes_it_natively(monkeypatch):
    import hf_ifbeta.features as features

    assert features.native_bf16(torch.device("meta")) is False  # neither a GPU nor a CPU: never claimed
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(features, "native_bf16", lambda device, native=native: native)
        assert features.resolve_precision("auto", torch.device("cpu")) == expected
        assert features.resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked for: kept
