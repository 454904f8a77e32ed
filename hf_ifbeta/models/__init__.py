"""Models registered in timm's registry on import (`timm.create_model("cifar10_resnet56")`), and a loader
that accepts the names users type."""

import os
from typing import Optional, Union

import torch.nn as nn

from .cifar_resnet import CIFAR_MEAN, CIFAR_STD, CifarResNet

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "CifarResNet", "load_model"]


def load_model(
    model: Union[str, nn.Module], checkpoint: Optional[str] = None, pretrained: bool = True, **kwargs
) -> nn.Module:
    """A timm model from a registry name, a Hub id, a local folder, or a module passed through.

    Args:
        model (`str` or `nn.Module`): `"cifar10_resnet56"` (timm registry), `"hf-hub:timm/resnet50.a1_in1k"`
            or `"timm/resnet50.a1_in1k"` (Hub), `"local-dir:/path"` or an existing folder saved by
            `save_pretrained` / `push_to_hub`; an `nn.Module` is returned unchanged.
        checkpoint (`str`, *optional*): a local weights file for a registry name
            (`pretrained_cfg_overlay=dict(file=checkpoint)`). Its classifier width is read from the file, so
            `load_model("cifar10_resnet56", checkpoint="tiny_imagenet_resnet56.pt")` has that checkpoint's classes.
        pretrained (`bool`): load pretrained weights (a checkpoint implies it).
        kwargs: passed to `timm.create_model` (e.g. `num_classes`; one that differs from the checkpoint's
            gives a new, randomly initialised classifier, as timm does).
    """
    import timm

    if isinstance(model, nn.Module):
        return model
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist.")
        kwargs["pretrained_cfg_overlay"] = dict(file=checkpoint)
        width = _checkpoint_num_classes(model, checkpoint)
        if width is not None:
            # timm drops a checkpoint's classifier when `num_classes` differs from the registry default, so the
            # overlay states the file's own width: the head is kept unless another width is asked for.
            kwargs["pretrained_cfg_overlay"]["num_classes"] = width
            kwargs.setdefault("num_classes", width)
        pretrained = True
    name = model
    if ":" not in name and "/" in name:
        name = f"local-dir:{name}" if os.path.isdir(name) else f"hf-hub:{name}"
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _checkpoint_num_classes(name: str, checkpoint: str) -> Optional[int]:
    """Rows of the classifier weight in `checkpoint`, or None when the registry does not name one classifier."""
    import timm

    if not timm.models.is_model(name):
        return None
    classifier = timm.models.get_pretrained_cfg_value(name, "classifier")
    if not isinstance(classifier, str):
        return None
    weight = timm.models.load_state_dict(checkpoint).get(f"{classifier}.weight")
    return None if weight is None else int(weight.shape[0])
