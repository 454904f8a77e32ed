"""Models registered in timm's registry on import (`timm.create_model("cifar10_resnet56")`)."""

from .cifar_resnet import CIFAR_MEAN, CIFAR_STD, CifarResNet

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "CifarResNet"]
