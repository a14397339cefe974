"""Slices and activation hooks on tiny hand-built models with known answers.

docs/ALGORITHM.md, section 3 (Slices, probing and the parameter block): a slice is filter j
of a Conv2d (weight[j], bias[j]) or row j of a
Linear (weight[j, :], bias[j]); slices are keyed by module name (never by repr, so two
identical layers stay apart); the hooks record the spatial mean of each conv channel and the
pre-activation of each linear unit, and a module that runs twice in one forward is an error.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lcodec_core.unlearning.slices import (ActivationRecorder, SliceRef, count_parameters, enumerate_slices,
                                slice_parameter_rows)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


class ConvTwinLinear(nn.Module):
    """conv(1->3) relu, flatten, then two *identical* Linear(12 -> 2) layers in a Sequential.

    Identical layers have identical reprs: keying slices by ``str(module)`` would merge them.
    """

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)       # (B, 3, 2, 2)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()                       # (B, 12)
        self.head = nn.Sequential(nn.Linear(12, 2), nn.Tanh(), nn.Linear(2, 2))
        self.twin = nn.Linear(12, 2)

    def forward(self, x):  # (B, 1, 2, 2) -> (B, 2)
        h = self.flatten(self.relu(self.conv(x)))
        return self.head(h) + self.twin(h)


class ReusedLinear(nn.Module):
    """Captum-style edge case: one Linear module called twice in the same forward."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.shared = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):  # (B, 1, 2, 2) -> (B, 2)
        h = self.flatten(x)
        return self.out(self.shared(torch.tanh(self.shared(h))))


class ReusedBlock(nn.Module):
    """A whole Sequential block (holding a Conv2d) applied twice per forward."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU())
        self.stem = nn.Conv2d(1, 2, 1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        h = self.block(self.block(self.stem(x)))
        return self.fc(h.mean(dim=(2, 3)))


def test_enumerate_slices_follows_named_modules_and_keys_by_name():
    model = ConvTwinLinear()
    slices = enumerate_slices(model)
    expected = ([SliceRef("conv", j, "conv") for j in range(3)]
                + [SliceRef("head.0", j, "linear") for j in range(2)]
                + [SliceRef("head.2", j, "linear") for j in range(2)]
                + [SliceRef("twin", j, "linear") for j in range(2)])
    assert slices == expected
    assert len(set(slices)) == len(slices)
    # the two Linear(12, 2) layers have the same repr but distinct keys
    assert str(model.head[0]) == str(model.twin)
    assert {s.module for s in slices if s.index == 0} == {"conv", "head.0", "head.2", "twin"}
    assert SliceRef("head.0", 1, "linear").label == "head.0[1]"


def test_slice_parameter_rows_maps_conv_filter_and_linear_row():
    model = ConvTwinLinear()
    assert slice_parameter_rows(model, [SliceRef("conv", 2, "conv")]) == {
        "conv.weight": [2], "conv.bias": [2]}
    rows = slice_parameter_rows(model, [SliceRef("twin", 1, "linear"), SliceRef("conv", 2, "conv"),
                                        SliceRef("twin", 0, "linear"), SliceRef("conv", 0, "conv")])
    assert rows == {"twin.weight": [0, 1], "twin.bias": [0, 1],
                    "conv.weight": [0, 2], "conv.bias": [0, 2]}
    # the identical twin of "twin" is untouched
    assert not any(name.startswith("head.") for name in rows)
    # filter j of the conv is weight[j] (1 x 3 x 3 = 9 scalars) and bias[j] (1 scalar)
    assert count_parameters(model, {"conv.weight": [2], "conv.bias": [2]}) == 10
    assert count_parameters(model, rows) == 2 * 10 + 2 * (12 + 1)
    everything = slice_parameter_rows(model, enumerate_slices(model))
    assert count_parameters(model, everything) == sum(p.numel() for p in model.parameters())


def test_slice_parameter_rows_without_bias_and_bad_references():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.Flatten(), nn.Linear(4, 2))
    assert slice_parameter_rows(model, [SliceRef("0", 3, "conv")]) == {"0.weight": [3]}
    with pytest.raises(ValueError, match="no Conv2d/Linear module named 'nope'"):
        slice_parameter_rows(model, [SliceRef("nope", 0, "conv")])
    with pytest.raises(ValueError, match="out of range"):
        slice_parameter_rows(model, [SliceRef("2", 2, "linear")])


def test_activation_recorder_matches_manual_statistics():
    torch.manual_seed(0)
    model = ConvTwinLinear().eval()
    x = torch.randn(5, 1, 2, 2)
    with ActivationRecorder(model) as recorder:
        logits, activations = recorder.record(x)

    conv_out = model.conv(x)                                   # (5, 3, 2, 2)
    hidden = model.flatten(model.relu(conv_out))               # (5, 12)
    head0 = hidden @ model.head[0].weight.T + model.head[0].bias
    head2 = torch.tanh(head0) @ model.head[2].weight.T + model.head[2].bias
    twin = hidden @ model.twin.weight.T + model.twin.bias
    manual = torch.cat([conv_out.mean(dim=(2, 3)), head0, head2, twin], dim=1)   # (5, 9)

    assert activations.shape == (5, len(enumerate_slices(model)))
    torch.testing.assert_close(activations, manual, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits, model(x), rtol=0, atol=0)
    assert not activations.requires_grad
    # the hooks are gone after the block
    assert all(not m._forward_hooks for m in model.modules())


def test_activation_recorder_linear_on_sequences_averages_middle_dims():
    model = nn.Sequential(nn.Linear(3, 2))
    x = torch.randn(4, 5, 3)                                   # (B, T, F)
    with ActivationRecorder(model) as recorder:
        _, activations = recorder.record(x)
    torch.testing.assert_close(activations, model(x).mean(1))


@pytest.mark.parametrize("model_cls, name", [(ReusedLinear, "shared"), (ReusedBlock, "block.0")])
def test_module_called_twice_raises(model_cls, name):
    model = model_cls().eval()
    x = torch.randn(2, 1, 2, 2)
    with pytest.raises(RuntimeError, match=rf"'{name}' ran twice"):
        with ActivationRecorder(model) as recorder:
            recorder.record(x)
    assert all(not m._forward_hooks for m in model.modules())


def test_module_that_does_not_run_is_reported():
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 2)
            self.unused = nn.Linear(4, 2)

        def forward(self, x):
            return self.used(x.flatten(1))

    with pytest.raises(RuntimeError, match="did not run"):
        with ActivationRecorder(Skips()) as recorder:
            recorder.record(torch.randn(2, 1, 2, 2))
