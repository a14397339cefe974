"""A tiny network and data set with known behaviour, shared by the engine tests (not a test
module; ``import tiny`` as the dashboard tests ``import apptest``)."""
from __future__ import annotations

import torch
from torch import nn

from lcodec_core.data import ImageDataset

CLASSES = ["a", "b", "c"]


class TinyNet(nn.Module):
    """(B, 1, 4, 4) -> flatten (16) -> fc1 (6) -> relu -> fc2 (3)."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16, 6)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


def make_dataset(n: int, seed: int = 0, dtype=torch.float32) -> ImageDataset:
    """n images (1, 4, 4) whose mean depends on the class (3 classes, 1.5 apart)."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % 3
    centres = 1.5 * torch.randn(3, 1, 4, 4, generator=generator)
    images = (centres[targets] + torch.randn(n, 1, 4, 4, generator=generator)).to(dtype)
    return ImageDataset(images, targets, CLASSES, [f"img{i}" for i in range(n)])


def fit_adam(model: nn.Module, data: ImageDataset, weight_decay: float, steps: int = 300,
             lr: float = 3e-2) -> nn.Module:
    """Full-batch Adam on mean CE + coupled L2 (``weight_decay``), as the zoo trains; the
    model is trained in place and returned in eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(data.images), data.targets).backward()
        optimizer.step()
    return model.eval()


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def assert_state_equal(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    current = model.state_dict()
    assert current.keys() == state.keys()
    for name, value in state.items():
        assert torch.equal(current[name], value), f"{name} changed"
