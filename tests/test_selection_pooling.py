"""Slice selection details: constant columns by peak-to-peak, pooled and per-image probing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lcodec_core.unlearning.config import UnlearnConfig
from lcodec_core.unlearning.probing import Probe
from lcodec_core.unlearning.selection import select_slices
from lcodec_core.unlearning.slices import SliceRef


def _slices(count):
    return [SliceRef("layer", j, "linear") for j in range(count)]


def test_a_constant_column_with_rounding_std_is_not_a_candidate():
    rng = np.random.default_rng(0)
    m = 60
    signal = rng.normal(size=m)
    activations = np.stack([signal, np.full(m, 1 / 3), rng.normal(size=m)], axis=1)
    assert activations[:, 1].std() > 0 and np.ptp(activations[:, 1]) == 0   # the trap
    probe = Probe(torch.tensor(activations), torch.tensor(signal ** 3), torch.zeros(m, dtype=torch.long))
    chosen, info = select_slices(probe, _slices(3), "lfoci", max_slices=2)
    assert info["candidates"] == 2
    assert chosen[0].index == 0 and all(s.index != 1 for s in chosen)


def test_per_image_pooling_unions_each_images_selection():
    """Image 0's loss is carried by column 0, image 1's by column 2: per-image finds both."""
    rng = np.random.default_rng(1)
    m = 80
    columns = rng.normal(size=(2 * m, 4))
    losses = np.where(np.arange(2 * m) < m, columns[:, 0], columns[:, 2])
    sample = torch.arange(2).repeat_interleave(m)
    probe = Probe(torch.tensor(columns), torch.tensor(losses), sample)
    chosen, info = select_slices(probe, _slices(4), "lfoci", max_slices=1, pooling="per_image")
    assert [s.index for s in chosen] == [0, 2] and info["pooling"] == "per_image"
    pooled, _ = select_slices(probe, _slices(4), "lfoci", max_slices=1, pooling="pooled")
    assert len(pooled) == 1


def test_pooling_setting_is_checked():
    with pytest.raises(ValueError, match="probe_pooling must be 'pooled' or 'per_image'"):
        UnlearnConfig(probe_pooling="both")
