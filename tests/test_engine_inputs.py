"""Engine input the issue lists as hostile or degenerate (issue 7): each is a ``ValueError`` that
says what was expected and what to do, and the input model is bit-identical afterwards (same
tensors, same mode, no hooks left behind).

Cases: an empty forget set, a forget set equal to the whole training set, an identity that is
not there, m < 3, a constant response, non-finite losses and activations during probing,
non-finite weights, pixels or weight decay, labels outside the model's classes; and a removal
whose result would be non-finite is never returned.
"""
from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lcodec_core.unlearning.config import UnlearnConfig
from lcodec_core.data import DataBundle, ImageDataset
from lcodec_core.unlearning.probing import probe
from lcodec_core.requests import make_request
from lcodec_core.unlearning.unlearn import unlearn

LAM = 1e-2
CLASSES = ["a", "b", "c"]
FAST = UnlearnConfig(num_perturbations=10, newton_steps=1, max_slices=2)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


class TinyNet(nn.Module):
    """(B, 1, 4, 4) -> fc1 (6) -> relu -> clamp(max=10) -> fc2 (3). The clamp lets a test make
    fc1's activations infinite while the loss stays finite."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x.flatten(1))).clamp(max=10))


def make_data(n: int = 24, seed: int = 0) -> ImageDataset:
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % 3
    centres = 1.5 * torch.randn(3, 1, 4, 4, generator=generator)
    images = centres[targets] + torch.randn(n, 1, 4, 4, generator=generator)
    return ImageDataset(images, targets, CLASSES, [f"img{i}" for i in range(n)])


@pytest.fixture(scope="module")
def problem():
    data = make_data()
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2, weight_decay=LAM)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(model(data.images), data.targets).backward()
        optimizer.step()
    model.eval()
    bundle = DataBundle("tiny", data, make_data(6, seed=1), CLASSES, 0.0, 1.0, 0)
    return model, bundle


def snapshot(model: nn.Module) -> dict:
    return {"state": copy.deepcopy(model.state_dict()), "training": model.training,
            "hooks": {name: len(m._forward_hooks) for name, m in model.named_modules()}}


def assert_unchanged(model: nn.Module, before: dict) -> None:
    state = model.state_dict()
    assert state.keys() == before["state"].keys()
    for name, value in before["state"].items():
        assert torch.equal(state[name], value), f"{name} changed"
    assert model.training == before["training"]
    assert {name: len(m._forward_hooks) for name, m in model.named_modules()} == before["hooks"]


def refused(model, call, *patterns):
    """``call()`` raises ValueError matching every pattern, and ``model`` is unchanged."""
    before = snapshot(model)
    with pytest.raises(ValueError) as caught:
        call()
    for pattern in patterns:
        assert caught.match(pattern)
    assert_unchanged(model, before)
    return caught.value


# ---------------------------------------------------------------- the request
def test_empty_forget_set(problem):
    model, bundle = problem
    train = bundle.train
    refused(model, lambda: make_request(bundle, indices=[]), "forget set is empty",
            "at least one training index")
    refused(model, lambda: unlearn(model, train.subset([]), train, FAST, weight_decay=LAM),
            "forget set is empty", "at least one training image")
    refused(model, lambda: probe(model, train.images[:0], train.targets[:0], num_perturbations=5,
                                 perturbation_std=0.1), "forget set is empty")


def test_forget_set_equal_to_the_whole_training_set(problem):
    model, bundle = problem
    train = bundle.train
    refused(model, lambda: make_request(bundle, indices=list(range(len(train)))),
            "covers the whole training set", "nothing would be retained")
    refused(model, lambda: unlearn(model, train, train.subset([]), FAST, weight_decay=LAM),
            "retained set is empty", "cannot be the whole training set", "train a new model")


def test_identity_that_is_not_there(problem):
    model, bundle = problem
    refused(model, lambda: make_request(bundle, identity=7), r"identity must be in \[0, 3\); got 7")
    refused(model, lambda: make_request(bundle, identity=-1), r"identity must be in \[0, 3\)")
    gone = bundle.train.indices_of(1)
    refused(model, lambda: make_request(bundle, identity=1, already_removed=gone),
            "identity 1 has no training images left")
    refused(model, lambda: make_request(bundle, indices=[0, 10_000]),
            r"training indices must be in \[0, 24\); got \[10000\]")
    refused(model, lambda: make_request(bundle, identity=1, indices=[0]), "exactly one of identity")


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize("m", [2, 1, 0, -5])
def test_fewer_than_three_perturbations(problem, m):
    model, bundle = problem
    refused(model, lambda: UnlearnConfig(num_perturbations=m),
            rf"num_perturbations \(m\) must be >= 3; got {m}", "default is 100")
    refused(model, lambda: probe(model, bundle.train.images[:2], bundle.train.targets[:2],
                                 num_perturbations=m, perturbation_std=0.1),
            "must be >= 3", "default of 100")


@pytest.mark.parametrize("std", [-0.1, float("nan"), float("inf")])
def test_bad_perturbation_std(std):
    with pytest.raises(ValueError, match="perturbation_std must be a finite number >= 0"):
        UnlearnConfig(perturbation_std=std)


@pytest.mark.parametrize("lam", [float("nan"), float("inf"), -1.0])
def test_bad_weight_decay(problem, lam):
    model, bundle = problem
    request = make_request(bundle, identity=0)
    refused(model, lambda: unlearn(model, request.forget, request.retain, FAST, weight_decay=lam),
            "weight_decay", "finite number > 0")


# ---------------------------------------------------------------- degenerate probes
def test_constant_response(problem):
    """A model whose output ignores its input: the loss never varies, L-CODEC is 0/0."""
    model, bundle = problem
    flat = copy.deepcopy(model)
    with torch.no_grad():
        flat.fc2.weight.zero_()
    request = make_request(bundle, identity=0)
    refused(flat, lambda: unlearn(flat, request.forget, request.retain, FAST, weight_decay=LAM),
            "loss is constant", "does not react to these images", "larger perturbation_std")


def test_no_perturbation_at_all(problem):
    model, bundle = problem
    request = make_request(bundle, indices=[0])
    config = FAST.with_(perturbation_std=0.0)
    refused(model, lambda: unlearn(model, request.forget, request.retain, config, weight_decay=LAM),
            "no slice activation varies", "increase perturbation_std")


def test_nan_loss_during_probing_is_refused_before_lfoci(problem, monkeypatch):
    """A model whose output turns NaN under the perturbations never feeds L-FOCI."""
    model, bundle = problem
    broken = copy.deepcopy(model)
    broken.fc2.register_forward_hook(lambda module, inputs, output: output * float("nan"))
    import lcodec_core.unlearning.selection as selection
    monkeypatch.setattr(selection, "foci", lambda *a, **k: pytest.fail("NaN reached L-FOCI"))
    request = make_request(bundle, identity=0)
    refused(broken, lambda: unlearn(broken, request.forget, request.retain, FAST, weight_decay=LAM),
            "non-finite loss", "perturbed images", "check its weights")


def test_infinite_activation_during_probing_names_the_slice(problem, monkeypatch):
    """fc1 produces inf (a hook), the clamp keeps the loss finite: the activation check names
    the slice."""
    model, bundle = problem
    broken = copy.deepcopy(model)

    def overflow(module, inputs, output):
        output = output.clone()
        output[:, 3] = float("inf")
        return output

    broken.fc1.register_forward_hook(overflow)
    import lcodec_core.unlearning.selection as selection
    monkeypatch.setattr(selection, "foci", lambda *a, **k: pytest.fail("inf reached L-FOCI"))
    request = make_request(bundle, identity=0)
    refused(broken, lambda: unlearn(broken, request.forget, request.retain, FAST, weight_decay=LAM),
            r"non-finite activations in 1 slice\(s\), the first fc1\[3\]")


# ---------------------------------------------------------------- non-finite model or data
def test_non_finite_weights(problem):
    model, bundle = problem
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.fc1.bias[2] = float("inf")
    request = make_request(bundle, identity=0)
    refused(broken, lambda: unlearn(broken, request.forget, request.retain, FAST, weight_decay=LAM),
            "non-finite values in 'fc1.bias'", "nothing was changed", "Reload the checkpoint")


def test_non_finite_pixels(problem):
    model, bundle = problem
    request = make_request(bundle, identity=0)
    images = request.forget.images.clone()
    images[0, 0, 0, 0] = float("nan")
    forget = ImageDataset(images, request.forget.targets, CLASSES, request.forget.sources)
    refused(model, lambda: unlearn(model, forget, request.retain, FAST, weight_decay=LAM),
            "forget images hold NaN or infinite pixels")


def test_labels_outside_the_models_classes(problem):
    model, bundle = problem
    request = make_request(bundle, identity=0)
    forget = ImageDataset(request.forget.images, torch.full((len(request.forget),), 5), CLASSES,
                          request.forget.sources)
    refused(model, lambda: unlearn(model, forget, request.retain, FAST, weight_decay=LAM),
            r"labels must be class indices in \[0, 3\)", "got labels 5..5")


@pytest.mark.parametrize("step_rule, patched", [("target", "targeted_step"), ("newton", "block_newton")])
def test_a_non_finite_result_is_never_returned(problem, monkeypatch, step_rule, patched):
    """If the step went non-finite, unlearn raises instead of returning the model: the default
    step (``targeted_step``) and the Newton iterations (``block_newton``) alike."""
    model, bundle = problem
    engine = importlib.import_module("lcodec_core.unlearning.unlearn")  # the package re-exports the function
    real = getattr(engine, patched)

    def poisoned(*args, **kwargs):
        v_new, report = real(*args, **kwargs)
        return torch.full_like(v_new, float("nan")), report

    monkeypatch.setattr(engine, patched, poisoned)
    config = FAST.with_(step_rule=step_rule, solver="fisher" if step_rule == "target" else "auto")
    request = make_request(bundle, identity=0)
    before = snapshot(model)
    with pytest.raises(FloatingPointError, match="non-finite values .* the original model is unchanged"):
        unlearn(model, request.forget, request.retain, config, weight_decay=LAM)
    assert_unchanged(model, before)


def test_a_training_mode_model_stays_in_training_mode_after_a_failure(problem):
    model, bundle = problem
    live = copy.deepcopy(model).train()
    live.fc2.register_forward_hook(lambda module, inputs, output: output * float("nan"))
    request = make_request(bundle, identity=0)
    refused(live, lambda: unlearn(live, request.forget, request.retain, FAST, weight_decay=LAM),
            "non-finite loss")
    assert live.training
