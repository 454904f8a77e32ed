"""The benchmark's fast-KD plumbing gives what online KD would: same augmented pixels, same teacher logits."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import hf_ifbeta  # noqa: F401

spec = importlib.util.spec_from_file_location("kd_sweep", Path(__file__).resolve().parents[1] / "benchmarks" / "kd_sweep.py")
kd_sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kd_sweep)


def reference_augment(image_u8: np.ndarray, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """Pad 4 with zeros, crop 32x32 at (dy, dx), flip, normalise: torchvision's RandomCrop(32, 4) + flip."""
    x = torch.from_numpy(image_u8).permute(2, 0, 1).float() / 255
    x = F.pad(x, (4, 4, 4, 4))[:, dy : dy + 32, dx : dx + 32]
    if flip:
        x = x.flip(-1)
    return (x - kd_sweep.MEAN[0]) / kd_sweep.STD[0]


def test_augmentation_is_a_function_of_seed_epoch_row_and_matches_the_reference():
    rng = np.random.default_rng(0)
    x_u8 = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    params = kd_sweep.augment_params(seed=3, epoch=2, n=20)
    again = kd_sweep.augment_params(seed=3, epoch=2, n=20)
    assert all(np.array_equal(p, q) for p, q in zip(params, again))
    assert not np.array_equal(params[0], kd_sweep.augment_params(seed=3, epoch=3, n=20)[0])
    rows = np.array([4, 0, 17, 9])
    batch = kd_sweep.augmented_batch(torch.from_numpy(x_u8), rows, params)
    for k, row in enumerate(rows):
        ref = reference_augment(x_u8[row], params[0][row], params[1][row], bool(params[2][row]))
        assert torch.allclose(batch[k], ref, atol=1e-6)


def test_teacher_logit_cache_equals_online_teacher(tmp_path):
    torch.manual_seed(0)
    teacher = timm.create_model("cifar10_resnet20").eval()
    rng = np.random.default_rng(1)
    x_u8 = torch.from_numpy(rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8))
    cache = kd_sweep.TeacherLogitCache(teacher, seed=0, epochs=2, n=48, directory=tmp_path)
    params = kd_sweep.augment_params(0, 1, 48)
    first = np.arange(0, 48, 2)
    images = kd_sweep.augmented_batch(x_u8, first, params)
    cached = cache.get(1, first, images)
    assert cache.computed == 24
    # Other batch composition: cached rows come from the cache, the rest are computed.
    rows = np.arange(10, 40)
    images = kd_sweep.augmented_batch(x_u8, rows, params)
    mixed = cache.get(1, rows, images)
    assert cache.computed == 24 + 15
    with torch.no_grad():
        online = teacher(images)
    assert torch.allclose(mixed, online, atol=1e-4)
    cache.flush()
    reopened = kd_sweep.TeacherLogitCache(teacher, seed=0, epochs=2, n=48, directory=tmp_path)
    assert torch.equal(reopened.get(1, first, kd_sweep.augmented_batch(x_u8, first, params)), cached)
    assert reopened.computed == 0


def test_default_queue_covers_the_protocol_and_cells_round_trip():
    cells = kd_sweep.default_cells()
    keys = [kd_sweep.cell_key(c) for c in cells]
    assert len(keys) == len(set(keys))
    assert [kd_sweep.parse_cell(k) for k in keys] == [dict(c, ratio=float(c["ratio"])) for c in cells]
    seeds = {}
    for c in cells:
        seeds.setdefault((c["method"], c["ratio"]), set()).add(c["seed"])
    for method in ("random", "influence", "if-beta"):  # issue 4: >= 2 seeds for these and the full-data row
        assert all(len(seeds[(method, r)]) >= 2 for r in (0.3, 0.5, 0.7))
    assert len(seeds[("full", 0.0)]) >= 2 and ("full-nokd", 0.0) in seeds
    for method in ("el2n", "entropy", "ccs", "moderate", "dual-beta"):
        assert all(seeds[(method, r)] for r in (0.3, 0.5, 0.7))
    # the comparison that matters comes first: seed 0 random vs if-beta at every ratio
    first = {kd_sweep.cell_key(c) for c in cells[:8]}
    assert {f"{m}|{r}|0" for m in ("random", "if-beta") for r in (0.3, 0.5, 0.7)} <= first


def test_parse_cell_names_what_is_wrong():
    assert kd_sweep.parse_cell("if-beta@policy_max_ab=2|0.7|1") == dict(method="if-beta@policy_max_ab=2", ratio=0.7, seed=1)
    with pytest.raises(ValueError, match="method\\|ratio\\|seed"):
        kd_sweep.parse_cell("random|0.7")
    with pytest.raises(ValueError, match="must be in"):
        kd_sweep.parse_cell("random|1.5|0")
