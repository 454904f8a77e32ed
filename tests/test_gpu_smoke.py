"""scripts/gpu_smoke.sh end to end: on this machine's device (the CPU with small sizes when there is no CUDA)."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_smoke_passes_and_says_which_device_it_exercised(shared_dir, tmp_path):
    record_path = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", __import__("sys").executable), "HF_IFBETA_SHARED": str(shared_dir)}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_smoke.sh"), "--out", str(record_path)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    record = json.loads(record_path.read_text())
    assert record["all_passed"] and record["gpu_exercised"] == torch.cuda.is_available()
    assert [c["name"] for c in record["checks"]] == [
        "teacher_pass", "influence_vs_cpu", "kfac_convergence", "prune", "kd_bf16", "kd_fp16", "save_reload", "two_processes",
    ]  # fmt: skip
    if not record["gpu_exercised"]:
        assert "GPU was NOT exercised" in done.stdout and record["device"] == "cpu"
