"""CIFAR ResNets (He et al., 2016, section 4.2) registered in timm's model registry.

Depth 6n + 2: a 3x3 stem with 16 channels, three stages of n basic blocks with 16, 32 and 64
channels (the first block of stages 2 and 3 has stride 2), global average pooling and a linear
classifier. Shortcuts are option A (parameter free): take every second pixel and zero-pad the
channels equally on both sides, as in the checkpoints of akamaster/pytorch_resnet_cifar10.

```python
>>> import timm, hf_ifbeta  # importing hf_ifbeta registers the models
>>> teacher = timm.create_model("cifar10_resnet56", pretrained=True,
...                             pretrained_cfg_overlay=dict(file="../shared/models/cifar10_resnet56.pt"))
```
"""

from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

__all__ = ["CifarResNet"]

# The normalisation the CIFAR checkpoints were trained with: ImageNet statistics, not CIFAR's own.
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)


class LambdaShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad `pad` channels on each side."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = LambdaShortcut((planes - in_planes) // 2)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2) with the timm model interface.

    Args:
        depth (`int`): 20, 32, 44, 56, 110, ... (any 6n + 2).
        num_classes (`int`): classifier outputs; 0 gives a feature extractor (`nn.Identity` head).
        in_chans (`int`): input channels.
        drop_rate (`float`): dropout before the classifier.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0, **kwargs):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}.")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = 64
        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for k in range(n):
                stride = 2 if (i > 0 and k == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [
            dict(num_chs=16, reduction=1, module="bn1"),
            dict(num_chs=16, reduction=1, module="layer1"),
            dict(num_chs=32, reduction=2, module="layer2"),
            dict(num_chs=64, reduction=4, module="layer3"),
        ]
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.linear

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.linear = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 16, 32, 32)
        x = self.layer1(x)
        x = self.layer2(x)  # (B, 32, 16, 16)
        return self.layer3(x)  # (B, 64, 8, 8)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))  # (B, 64)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create(variant: str, depth: int, pretrained: bool = False, **kwargs) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, variant, pretrained, depth=depth, **kwargs)


def _cfg(num_classes: int = 10, **kwargs) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": num_classes,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "crop_mode": "center",
        "interpolation": "bilinear",
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "first_conv": "conv1",
        "classifier": "linear",
        "license": "bsd-2-clause",
        "origin_url": "https://github.com/akamaster/pytorch_resnet_cifar10",
        "paper_ids": "arXiv:1512.03385",
        **kwargs,
    }


# Pretrained weights are local files (no public Hub copy): pass `pretrained_cfg_overlay=dict(file=...)`,
# or `dict(hf_hub_id=...)` for a checkpoint pushed to the Hub.
default_cfgs = generate_default_cfgs(
    {
        **{f"cifar10_resnet{d}.jpeg_ft": _cfg(10) for d in (20, 32, 44, 56, 110)},
        **{f"cifar100_resnet{d}.untrained": _cfg(100) for d in (20, 32, 44, 56, 110)},
    }
)


def _register(depth: int, num_classes: int):
    name = f"cifar{num_classes}_resnet{depth}"

    def fn(pretrained: bool = False, **kwargs) -> CifarResNet:
        kwargs.setdefault("num_classes", num_classes)
        return _create(name, depth, pretrained, **kwargs)

    fn.__name__ = name
    fn.__doc__ = f"CIFAR ResNet-{depth} with option-A shortcuts, {num_classes} classes."
    fn.__module__ = __name__
    return register_model(fn)


_MODEL_FNS: List = [_register(d, c) for c in (10, 100) for d in (20, 32, 44, 56, 110)]
