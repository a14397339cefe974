"""The residual block of the zoo's ResNet-18 (imported only when one is built: it needs
torchvision).

torchvision's ``BasicBlock`` calls one in-place ReLU module twice per forward. Hooks, Captum
and the engine's activation recorder need each layer to run once per forward, so
:class:`FaceBasicBlock` has two ReLU modules, none in place. It is a module-level subclass,
so a model holding it pickles and unpickles (``torch.save`` of a whole model, spawned
workers of :mod:`lcodec_core.parallel`), and its parameter names are torchvision's.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock


class FaceBasicBlock(BasicBlock):
    """conv-bn-relu-conv-bn, plus the (downsampled) input, then relu2: (B, C, H, W) ->
    (B, C', H / stride, W / stride)."""

    relu2: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu2(out + identity)


def with_two_relus(block: BasicBlock) -> FaceBasicBlock:
    """``block`` (changed in place, as it is being built) as a :class:`FaceBasicBlock` with
    two separate, not in-place ReLU modules; returns it."""
    block.__class__ = FaceBasicBlock
    block.relu = nn.ReLU()
    block.relu2 = nn.ReLU()
    return block
