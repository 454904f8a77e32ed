"""hf_ifbeta.distributed: the one device rule and the main process's values, in one process."""

from types import SimpleNamespace

import torch

from hf_ifbeta.distributed import from_main_process, resolve_device


def test_the_device_is_the_argument_then_the_accelerators_then_cuda_or_cpu(monkeypatch):
    accelerator = SimpleNamespace(device=torch.device("meta"))
    assert resolve_device("cpu", accelerator) == torch.device("cpu")
    assert resolve_device(None, accelerator) == torch.device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device() == torch.device("cuda")


def test_one_process_keeps_its_own_value():
    value = {"indices": [3, 1]}
    assert from_main_process(value) is value  # no process group
    assert from_main_process(value, SimpleNamespace(num_processes=1)) is value
