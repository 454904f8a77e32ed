"""CIFAR ResNets in timm's registry: interface, shapes, and the checkpoints' published accuracies."""

import pytest
import timm
import torch

import hf_ifbeta  # noqa: F401  (registers the models)
from hf_ifbeta.data import prepare_image_dataset
from hf_ifbeta.models import CifarResNet, load_model


@pytest.mark.parametrize("depth,params", [(20, 0.27e6), (32, 0.46e6), (44, 0.66e6), (56, 0.85e6), (110, 1.7e6)])
def test_registered_depths_and_sizes(depth, params):
    model = timm.create_model(f"cifar10_resnet{depth}")
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - params) / params < 0.03
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    assert model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    assert model.pretrained_cfg["std"] == (0.229, 0.224, 0.225)


def test_timm_interface():
    model = timm.create_model("cifar10_resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, 64, 8, 8)
    pre = model.forward_head(features, pre_logits=True)
    assert pre.shape == (2, 64) and model.num_features == 64
    assert torch.allclose(model(x), model.get_classifier()(pre), atol=1e-6)
    model.reset_classifier(100)
    assert model(x).shape == (2, 100)
    assert timm.create_model("cifar100_resnet56").num_classes == 100
    assert timm.data.resolve_model_data_config(model)["input_size"] == (3, 32, 32)


def test_option_a_shortcut_pads_channels_and_subsamples():
    model = CifarResNet(depth=20)
    block = model.layer2[0]
    x = torch.randn(1, 16, 32, 32)
    assert block.shortcut(x).shape == (1, 32, 16, 16)
    assert torch.equal(block.shortcut(x)[:, 8:24], x[:, :, ::2, ::2])
    assert block.shortcut(x)[:, :8].abs().sum() == 0


def test_bad_depth_names_the_rule():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(depth=21)


def test_load_model_passes_modules_through_and_checks_checkpoints(tmp_path):
    module = torch.nn.Linear(2, 2)
    assert load_model(module) is module
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model("cifar10_resnet20", checkpoint=str(tmp_path / "missing.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("depth,published", [(56, 89.60), (20, 88.05)])
def test_checkpoints_reproduce_published_accuracy(shared_dir, cifar_test, depth, published):
    """../shared/models/README.md: test top-1 in float32 with the eval transform, to within 0.05 points."""
    model = load_model(f"cifar10_resnet{depth}", checkpoint=str(shared_dir / f"models/cifar10_resnet{depth}.pt")).eval()
    ds = prepare_image_dataset(cifar_test, model, "img", "label", train=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=500)
    correct = 0
    with torch.inference_mode():
        for batch in loader:
            correct += (model(batch["pixel_values"]).argmax(-1) == batch["labels"]).sum().item()
    assert abs(100.0 * correct / len(ds) - published) <= 0.05


def test_load_model_keeps_the_classifier_of_a_checkpoint_with_other_classes(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("cifar10_resnet20", num_classes=7)
    path = tmp_path / "seven.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    for kwargs in ({}, {"num_classes": 7}):
        model = load_model("cifar10_resnet20", checkpoint=str(path), **kwargs)
        assert model.num_classes == 7 and torch.equal(model.linear.weight, source.linear.weight)
    features = load_model("cifar10_resnet20", checkpoint=str(path), num_classes=0)
    assert features.num_classes == 0 and torch.equal(features.conv1.weight, source.conv1.weight)
