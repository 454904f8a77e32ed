"""Shared fixtures. Real-data fixtures skip with a reason when ../shared is absent."""

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("HF_IFBETA_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: integration tests on real data or several processes (still run in CI)")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny-tensor tests (restored after): more threads than free cores
    make small ops wait on each other, which on a shared 2-core machine slowed such files 6x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data" / "cifar10" / "train.parquet").exists():
        pytest.skip(f"real assets not found at {SHARED} (set HF_IFBETA_SHARED to the shared folder)")
    return SHARED


@pytest.fixture(scope="session")
def cifar_train_2k(shared_dir):
    """The first 2,000 rows of the CIFAR-10 train split (rows are pre-shuffled)."""
    import datasets

    ds = datasets.load_dataset("parquet", data_files={"train": str(shared_dir / "data/cifar10/train.parquet")})["train"]
    return ds.select(range(2000))


@pytest.fixture(scope="session")
def cifar_test(shared_dir):
    import datasets

    return datasets.load_dataset("parquet", data_files={"test": str(shared_dir / "data/cifar10/test.parquet")})["test"]


@pytest.fixture(scope="session")
def teacher56(shared_dir):
    import timm

    import hf_ifbeta  # noqa: F401  (registers the CIFAR ResNets)

    path = shared_dir / "models" / "cifar10_resnet56.pt"
    return timm.create_model("cifar10_resnet56", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
