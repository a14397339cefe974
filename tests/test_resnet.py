"""The zoo's ResNet-18 through the default engine (``UnlearnConfig()``), on tiny images.

A ResNet-18 built by ``models.build_model`` for 16x16 one-channel images (the stem leaves
4x4 at layer1 and 1x1 at layer4), trained by the zoo's own loop on four synthetic "people",
then one person is removed with the engine's default settings. What must hold:

- the person is forgotten (no training photo of it is recognised) and the others are kept;
- BatchNorm's running statistics (and every other buffer) are bit-identical to the input's,
  in the returned model and in the input model, and the engine says so in its diagnostics;
- every parameter outside the selected block P is bit-identical to the input's;
- torch.fx traces the zoo's ResNet, so the frozen prefix of the network runs once.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tiny import assert_state_equal, state_copy
from lcodec_core.data import ImageDataset
from lcodec_core.unlearning.config import UnlearnConfig
from lcodec_core.unlearning.slices import enumerate_slices, slice_parameter_rows
from lcodec_core.unlearning.unlearn import unlearn
from lcodec_models import Recipe, accuracy, build_model, train

SHAPE = (1, 16, 16)      # (C, H, W)
PEOPLE = 4


def synthetic_people(per_person: int, seed: int, centres_seed: int = 0) -> ImageDataset:
    """``per_person`` noisy copies of each person's fixed random face, (N, 1, 16, 16)."""
    centres = torch.randn(PEOPLE, *SHAPE, generator=torch.Generator().manual_seed(centres_seed))
    noise = torch.Generator().manual_seed(seed)
    targets = torch.arange(PEOPLE).repeat(per_person)
    images = centres[targets] + 0.7 * torch.randn(len(targets), *SHAPE, generator=noise)
    return ImageDataset(images, targets, [f"p{k}" for k in range(PEOPLE)],
                        [f"img{i}" for i in range(len(targets))])


@pytest.fixture(scope="module")
def removal():
    """(model, its state before, forget, retain, held-out, result): person 0 removed."""
    train_set, held_out = synthetic_people(6, seed=1), synthetic_people(3, seed=2)
    recipe = Recipe("resnet18", epochs=4, lr=1e-3, batch_size=12, seed=0)
    model = train("resnet18", train_set, recipe).model
    forget_rows = (train_set.targets == 0).nonzero().flatten().tolist()
    retain_rows = (train_set.targets != 0).nonzero().flatten().tolist()
    forget, retain = train_set.subset(forget_rows), train_set.subset(retain_rows)
    before = state_copy(model)
    result = unlearn(model, forget, retain, UnlearnConfig(), recipe=recipe, held_out=held_out)
    return model, before, forget, retain, held_out, result


def test_the_zoo_resnet_is_trained_with_batchnorm_statistics(removal):
    """Control: the model has BatchNorm layers whose running statistics training moved, and
    it recognises every person before the removal (otherwise the checks below prove little)."""
    model, before, forget, retain, held_out, _ = removal
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 20
    assert all(int(m.num_batches_tracked) > 0 for m in norms)
    assert any(not torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in norms)
    assert accuracy(model, forget.images, forget.targets) == 1.0
    assert accuracy(model, held_out.images, held_out.targets) >= 0.9


def test_the_person_is_forgotten_and_the_others_kept(removal):
    model, _, forget, retain, held_out, result = removal
    assert result.changed
    assert accuracy(result.model, forget.images, forget.targets) <= 0.05
    others = held_out.subset((held_out.targets != 0).nonzero().flatten().tolist())
    assert accuracy(result.model, retain.images, retain.targets) >= \
        0.99 * accuracy(model, retain.images, retain.targets)
    assert accuracy(result.model, others.images, others.targets) >= \
        accuracy(model, others.images, others.targets) - 0.03
    step = result.diagnostics["step"]
    assert step["rule"] == "retained_optimum" and step["converged"] and step["head"] == "fc"
    assert step["null_control"]["ratio"] < 0.05


def test_batchnorm_buffers_are_bit_identical(removal):
    model, before, _, _, _, result = removal
    buffers = dict(result.model.named_buffers())
    assert any(name.endswith("running_mean") for name in buffers)
    for name, value in model.named_buffers():
        assert torch.equal(buffers[name], value), f"{name} changed in the result"
    assert_state_equal(model, before)                       # the input: parameters and buffers
    assert not model.training and not result.model.training
    assert result.diagnostics["buffers_unchanged"] is True


def test_parameters_outside_the_block_are_bit_identical(removal):
    model, before, _, _, _, result = removal
    refs = {(s.module, s.index): s for s in enumerate_slices(model)}
    head = [s for s in enumerate_slices(model) if s.module == "fc"]        # v3: the whole head
    rows = slice_parameter_rows(model, [refs[(s.module, s.index)] for s in result.selected_slices]
                                + head)
    assert "fc.weight" in rows and 0 in rows["fc.weight"]   # the removed person's output unit
    moved = 0
    for name, value in result.model.named_parameters():
        inside = torch.zeros(value.shape[0], dtype=torch.bool)
        inside[rows.get(name, [])] = True
        assert torch.equal(value.detach()[~inside], before[name][~inside]), f"{name} outside P moved"
        moved += int((value.detach()[inside] != before[name][inside]).sum())
    assert moved > 0
    assert result.parameters_updated < 0.01 * sum(p.numel() for p in model.parameters())


def test_the_zoo_resnet_stem_downsamples_by_four():
    """The stem (7x7 stride-2 conv, stride-2 max-pool) quarters the resolution before layer1,
    on any image size (a ``folder:`` data set need not be 64x64)."""
    model = build_model("resnet18", 5, (3, 48, 40)).eval()
    seen = {}
    handle = model.layer1.register_forward_hook(lambda _m, _i, out: seen.update(shape=out.shape))
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, 48, 40))
    handle.remove()
    assert logits.shape == (2, 5)
    assert tuple(seen["shape"]) == (2, 64, 12, 10)


def test_the_zoo_resnet_pickles_and_runs_each_relu_once():
    """A whole zoo ResNet-18 survives pickling (spawned workers, ``torch.save`` of a model)
    with the same outputs, and every ReLU module runs once per forward (hooks and Captum
    depend on it)."""
    import io
    import pickle

    model = build_model("resnet18", 3, (1, 32, 32)).eval()
    images = torch.randn(2, 1, 32, 32)
    copy = pickle.loads(pickle.dumps(model))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    calls: dict[str, int] = {}
    relus = [(name, m) for name, m in copy.named_modules() if isinstance(m, nn.ReLU)]
    handles = [m.register_forward_hook(lambda _m, _i, _o, name=name: calls.__setitem__(
        name, calls.get(name, 0) + 1)) for name, m in relus]
    with torch.inference_mode():
        expected = model(images)
        assert torch.equal(copy(images), expected)
        assert torch.equal(saved(images), expected)
    for handle in handles:
        handle.remove()
    assert len(relus) == 1 + 2 * 8 and set(calls.values()) == {1}
    assert not any(m.inplace for _name, m in relus)


def test_resnet18_removes_a_person_from_an_image_folder_through_the_cli(tmp_path):
    """``lcodec prepare`` and ``lcodec unlearn`` with ``--model resnet18`` on a ``folder:``
    data set (four synthetic people, 64x64 PNGs), the engine default: the person is forgotten,
    the others kept, the BatchNorm buffers untouched, and the saved model loads."""
    import json
    import os
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    import lcodec_core.paths
    from lcodec_models import load_checkpoint

    rng = np.random.default_rng(0)
    root = tmp_path / "faces"
    for person in range(4):
        centre = rng.uniform(0, 255, (64, 64))
        (root / f"person{person}").mkdir(parents=True)
        for k in range(8):
            pixels = np.clip(centre + rng.normal(0, 30, (64, 64)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(root / f"person{person}" / f"{k}.png")
    env = {**os.environ, "LCODEC_HOME": str(tmp_path / "home"), "LCODEC_OFFLINE": "1"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lcodec_core", *args], env=env, text=True,
                              capture_output=True, timeout=900, cwd=lcodec_core.paths.CHECKOUT_DIR)

    dataset = f"folder:{root}"
    prepared = cli("prepare", "--dataset", dataset, "--model", "resnet18")
    assert prepared.returncode == 0, prepared.stderr
    report_path, saved = tmp_path / "report.json", tmp_path / "unlearned.pt"
    removed = cli("unlearn", "--dataset", dataset, "--model", "resnet18", "--forget-identity", "1",
                  "--json", str(report_path), "--save", str(saved))
    assert removed.returncode == 0, removed.stderr
    report = json.loads(report_path.read_text())
    assert report["original"]["forget_accuracy"] == 1.0
    assert report["unlearned"]["forget_accuracy"] == 0.0
    assert report["unlearned"]["retain_accuracy"] == report["original"]["retain_accuracy"] == 1.0
    assert report["verdict"]["status"] == "forgotten"
    assert report["diagnostics"]["buffers_unchanged"] is True
    checkpoint = load_checkpoint(saved)
    assert checkpoint.metadata["model"] == "resnet18"
    assert any(isinstance(m, nn.BatchNorm2d) for m in checkpoint.model.modules())

