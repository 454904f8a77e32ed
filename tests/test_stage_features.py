"""benchmarks/stage_features.py: the saved file is tied to the parquet it was computed from."""

import importlib.util
from dataclasses import replace
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
spec = importlib.util.spec_from_file_location("stage_features", BENCHMARKS / "stage_features.py")
stage_features = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage_features)


def test_source_id_changes_with_the_bytes(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    a.write_bytes(b"rows")
    b.write_bytes(b"rowz")
    assert stage_features.source_id(a) != stage_features.source_id(b)
    assert stage_features.source_id(a).startswith("4:")


def test_load_refuses_a_file_of_other_data_and_names_the_missing_file(tmp_path, monkeypatch):
    data = tmp_path / "train.parquet"
    data.write_bytes(b"the training split")
    settings = stage_features.kd_sweep.SETTINGS
    monkeypatch.setitem(settings, "cifar10", replace(settings["cifar10"], train_file=str(data)))
    path = tmp_path / "stage.npz"
    with pytest.raises(FileNotFoundError, match="stage.npz"):
        stage_features.load(path)
    np.savez(path, source=np.array(stage_features.source_id(data)), layer2=np.ones((3, 32), np.float32))
    assert stage_features.load(path)["layer2"].shape == (3, 32)
    data.write_bytes(b"another training split")
    with pytest.raises(ValueError, match="other data"):
        stage_features.load(path)
