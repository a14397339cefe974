"""Architectures of the built-in model zoo.

Every activation is its own module instance (no shared or in-place ReLU), so forward hooks
and Captum see each layer exactly once per forward pass.
"""
from __future__ import annotations

import torch
from torch import nn

MODEL_NAMES = ("small_cnn", "logreg", "mlp", "resnet18")
# The built-in zoo: the models offered for each built-in data set, its default first. The
# command line, the model cache and the dashboard all read this one table.
ZOO = {"olivetti": ("small_cnn", "resnet18"), "mnist": ("logreg", "mlp")}
DEFAULT_MODEL = {dataset: names[0] for dataset, names in ZOO.items()}


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head for (C, 64, 64) faces.

    conv(C->16) relu pool -> conv(16->32) relu pool -> conv(32->32) relu pool(4x4)
    -> flatten (512) -> linear(512->num_classes). About 25k parameters.
    """

    def __init__(self, num_classes: int, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)          # (16, 32, 32)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)          # (32, 16, 16)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.AdaptiveAvgPool2d(4)  # (32, 4, 4)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 64, 64) -> (B, K)
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.pool3(self.relu3(self.conv3(x)))
        return self.fc(self.flatten(x))


class LogisticRegression(nn.Module):
    """Multinomial logistic regression on flattened pixels: one Linear layer."""

    def __init__(self, num_classes: int, in_features: int):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.fc(self.flatten(x))


class MLP(nn.Module):
    """One hidden layer (``hidden`` units, ReLU) on flattened pixels."""

    def __init__(self, num_classes: int, in_features: int, hidden: int = 128):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


def resnet18(num_classes: int, in_channels: int = 1) -> nn.Module:
    """torchvision ResNet-18 with its own stem (7x7 stride-2 conv, 3x3 stride-2 max-pool),
    for ``in_channels``-channel images of any size; untrained.

    The stem divides the resolution by 4 before the first stage, as in torchvision: a 64x64
    face enters layer1 at 16x16 and layer4 at 2x2 (about 0.15 GMAC per image). A stem without
    downsampling (3x3, no pool) made every layer 16x as expensive and training took > 17 min
    on 2 cores.

    torchvision's BasicBlock reuses one in-place ReLU module twice per forward; each block
    is a :class:`~lcodec_models.resnet_blocks.FaceBasicBlock` here, with two ReLU modules,
    none in place, so hooks and Captum see every layer once.
    """
    from torchvision.models import resnet

    from .resnet_blocks import with_two_relus
    model = resnet.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    model.relu = nn.ReLU()                                 # (B, 64, H/2, W/2)
    model.maxpool = nn.MaxPool2d(3, stride=2, padding=1)   # (B, 64, H/4, W/4)
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            with_two_relus(block)
    return model


def build_model(name: str, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Build an untrained zoo model for inputs of shape (C, H, W)."""
    channels, height, width = input_shape
    if name == "small_cnn":
        return SmallCNN(num_classes, channels)
    if name == "logreg":
        return LogisticRegression(num_classes, channels * height * width)
    if name == "mlp":
        return MLP(num_classes, channels * height * width)
    if name == "resnet18":
        return resnet18(num_classes, channels)
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
