"""Where the pruning runs: the one device of every stage, and the main process's values on every process."""

from typing import Any, Optional, Union

import torch

__all__ = ["from_main_process", "resolve_device"]


def resolve_device(device: Optional[Union[str, torch.device]] = None, accelerator: Any = None) -> torch.device:
    """The one device of every pruning stage: `device` when given, else `accelerator.device`, else CUDA when
    available, else CPU."""
    if device is not None:
        return torch.device(device)
    if getattr(accelerator, "device", None) is not None:
        return torch.device(accelerator.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def from_main_process(obj: Any, accelerator: Any = None) -> Any:
    """`obj` as the main process has it, on every process: a collective when several processes run.

    The processes are those of `accelerator` (an `Accelerator` or `PartialState`), else of the initialised
    `torch.distributed` process group (`torchrun`, `accelerate launch`); one process returns `obj` unchanged.
    """
    if accelerator is None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return obj
        from accelerate import PartialState

        accelerator = PartialState()
    if getattr(accelerator, "num_processes", 1) <= 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=0)[0]
