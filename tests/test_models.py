"""The model zoo: shapes, one hook call per module, training, checkpoints and the cached default."""
from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
import torch
from torch import nn

from lcodec_core.zoo_cache import cache_path, load_or_train
from lcodec_models import (MODEL_NAMES, CheckpointError, Recipe, accuracy, build_model, default_recipe,
                    load_checkpoint, predict, state_hash, train)
from lcodec_models.checkpoint import FORMAT

# (model, input shape (C, H, W), number of classes) as the zoo uses them.
ZOO_INPUTS = [("small_cnn", (1, 64, 64), 40), ("logreg", (1, 28, 28), 10),
              ("mlp", (1, 28, 28), 10), ("resnet18", (1, 64, 64), 40)]


def test_zoo_inputs_cover_every_model():
    assert sorted(name for name, _, _ in ZOO_INPUTS) == sorted(MODEL_NAMES)


@pytest.mark.parametrize("name, input_shape, num_classes", ZOO_INPUTS)
def test_output_shape(name, input_shape, num_classes):
    torch.manual_seed(0)
    model = build_model(name, num_classes, input_shape).eval()
    with torch.inference_mode():
        logits = model(torch.randn(3, *input_shape))
    assert logits.shape == (3, num_classes)
    assert torch.isfinite(logits).all()


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match="unknown model 'vgg'") as caught:
        build_model("vgg", 10, (1, 28, 28))
    for name in MODEL_NAMES:
        assert name in str(caught.value)


def forward_calls(model: nn.Module, inputs: torch.Tensor) -> Counter:
    """How many times each module (by qualified name, '' for the root) ran in one forward."""
    calls: Counter = Counter()
    handles = [module.register_forward_hook(lambda *_, name=name: calls.update([name]))
               for name, module in model.named_modules()]
    try:
        with torch.inference_mode():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def test_forward_calls_detects_a_reused_module():
    """The counting helper itself: a model that applies one ReLU twice is caught."""
    class Reuses(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.fc(self.relu(x)))

    assert forward_calls(Reuses(), torch.randn(2, 4))["relu"] == 2


@pytest.mark.parametrize("name, input_shape, num_classes", ZOO_INPUTS)
def test_every_module_runs_exactly_once_per_forward(name, input_shape, num_classes):
    model = build_model(name, num_classes, input_shape).eval()
    calls = forward_calls(model, torch.randn(2, *input_shape))
    names = [module_name for module_name, _ in model.named_modules()]
    assert {module_name: calls[module_name] for module_name in names} == dict.fromkeys(names, 1)
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_short_training_run_raises_accuracy(mnist):
    subset = mnist.train.subset(torch.randperm(len(mnist.train),
                                               generator=torch.Generator().manual_seed(0))[:2000])
    recipe = Recipe("logreg", epochs=3, lr=1e-2, batch_size=64, weight_decay=1e-3, seed=0)
    torch.manual_seed(recipe.seed)
    untrained = build_model("logreg", 10, (1, 28, 28))
    before = accuracy(untrained, mnist.test.images, mnist.test.targets)
    events = []
    checkpoint = train("logreg", subset, recipe, on_progress=events.append, test=mnist.test)
    after = accuracy(checkpoint.model, mnist.test.images, mnist.test.targets)
    assert after > before + 0.3
    assert after == pytest.approx(checkpoint.metadata["test_accuracy"])
    assert [event["epoch"] for event in events] == [1, 2, 3]
    assert events[-1]["loss"] < events[0]["loss"]
    assert checkpoint.metadata["n"] == 2000
    assert Recipe.from_dict(checkpoint.metadata["recipe"]) == recipe
    assert not checkpoint.model.training


def test_training_is_reproducible(mnist):
    subset = mnist.train.subset(range(300))
    recipe = Recipe("mlp", epochs=1, batch_size=50, seed=3)
    assert train("mlp", subset, recipe).state_hash() == train("mlp", subset, recipe).state_hash()


@pytest.fixture(scope="module")
def mlp_checkpoint(mnist):
    """A quickly trained MLP checkpoint (one epoch on 500 MNIST images)."""
    return train("mlp", mnist.train.subset(range(500)),
                 Recipe("mlp", epochs=1, lr=3e-3, batch_size=50, weight_decay=5e-4, seed=1),
                 test=mnist.test)


def test_checkpoint_round_trip(mlp_checkpoint, mnist, tmp_path):
    path = mlp_checkpoint.save(tmp_path / "mlp.pt")
    assert path == tmp_path / "mlp.pt"
    assert [p.name for p in tmp_path.iterdir()] == ["mlp.pt"]  # no temporary file left

    loaded = load_checkpoint(path)
    assert loaded.model is not mlp_checkpoint.model
    assert not loaded.model.training
    original_state, loaded_state = mlp_checkpoint.model.state_dict(), loaded.model.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for key, value in original_state.items():
        assert torch.equal(value, loaded_state[key]), key
    assert loaded.state_hash() == mlp_checkpoint.state_hash() == state_hash(loaded.model)
    images = mnist.test.images[:64]
    assert torch.equal(predict(loaded.model, images), predict(mlp_checkpoint.model, images))

    assert loaded.metadata == mlp_checkpoint.metadata
    assert loaded.metadata["n"] == 500
    assert Recipe.from_dict(loaded.metadata["recipe"]) == Recipe(
        "mlp", epochs=1, lr=3e-3, batch_size=50, weight_decay=5e-4, seed=1)


def test_checkpoint_file_is_plain_tensors_and_json(mlp_checkpoint, tmp_path):
    path = mlp_checkpoint.save(tmp_path / "mlp.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())
    assert json.loads(payload["metadata"])["recipe"]["model"] == "mlp"


class WritesMarker:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "state_dict": {}, "metadata": WritesMarker(marker)}, path)
    with pytest.raises(CheckpointError, match="not a safe lcodec checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()

    # Control: the file really does run code when unpickled without weights_only.
    control = tmp_path / "control"
    torch.save({"metadata": WritesMarker(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.read_text() == "ran"


def _rewrite_metadata(source, target, **changes):
    payload = torch.load(source, weights_only=True)
    metadata = json.loads(payload["metadata"])
    metadata.update(changes)
    payload["metadata"] = json.dumps(metadata)
    torch.save(payload, target)


def test_architecture_mismatch_names_the_shapes(mlp_checkpoint, tmp_path):
    path = mlp_checkpoint.save(tmp_path / "mlp.pt")
    _rewrite_metadata(path, tmp_path / "seven.pt", num_classes=7)
    with pytest.raises(CheckpointError, match="does not match the architecture") as caught:
        load_checkpoint(tmp_path / "seven.pt")
    message = str(caught.value)
    assert "fc2.weight: expected (7, 128), found (10, 128)" in message
    assert "fc2.bias: expected (7,), found (10,)" in message


def test_architecture_mismatch_names_the_keys(mlp_checkpoint, tmp_path):
    path = mlp_checkpoint.save(tmp_path / "mlp.pt")
    _rewrite_metadata(path, tmp_path / "logreg.pt", model="logreg")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "logreg.pt")
    message = str(caught.value)
    assert "missing keys ['fc.bias', 'fc.weight']" in message
    assert "unexpected keys" in message and "fc1.weight" in message and "fc2.weight" in message


def test_missing_and_malformed_checkpoints_are_clear_errors(mlp_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(tmp_path / "foreign.pt")
    path = mlp_checkpoint.save(tmp_path / "mlp.pt")
    payload = torch.load(path, weights_only=True)
    payload["metadata"] = json.dumps({"model": "mlp"})
    torch.save(payload, tmp_path / "no_classes.pt")
    with pytest.raises(CheckpointError, match="metadata is missing or malformed"):
        load_checkpoint(tmp_path / "no_classes.pt")


def test_saving_nan_weights_raises_and_writes_nothing(mlp_checkpoint, tmp_path):
    broken = copy.deepcopy(mlp_checkpoint)
    with torch.no_grad():
        broken.model.fc1.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        broken.save(tmp_path / "broken.pt")
    assert list(tmp_path.iterdir()) == []

    # An existing good checkpoint at that path survives a failed save.
    mlp_checkpoint.save(tmp_path / "model.pt")
    with pytest.raises(CheckpointError):
        broken.save(tmp_path / "model.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert load_checkpoint(tmp_path / "model.pt").state_hash() == mlp_checkpoint.state_hash()


def test_cached_default_model_is_accurate(trained_small_cnn):
    checkpoint, bundle = trained_small_cnn
    test_accuracy = accuracy(checkpoint.model, bundle.test.images, bundle.test.targets)
    assert test_accuracy >= 0.85
    assert test_accuracy == pytest.approx(checkpoint.metadata["test_accuracy"])
    meta = checkpoint.metadata
    assert meta["model"] == "small_cnn" and meta["dataset"] == "olivetti"
    assert meta["n"] == 320 and meta["num_classes"] == 40
    assert meta["recipe"] == default_recipe("olivetti", "small_cnn").to_dict()


def test_cached_default_model_is_reused_not_retrained(trained_small_cnn):
    checkpoint, bundle = trained_small_cnn
    path = cache_path("olivetti", default_recipe("olivetti", "small_cnn"))
    assert path.is_file()
    modified = path.stat().st_mtime_ns
    again, _ = load_or_train("olivetti", bundle=bundle)
    assert path.stat().st_mtime_ns == modified
    assert again.model is not checkpoint.model  # a fresh object: callers cannot edit the cache
    assert again.state_hash() == checkpoint.state_hash()
