"""What a removal may claim, and how it is judged.

- guarantee labels (lcodec_core/unlearning/guarantee.py): "none" without noise (the default), "heuristic"
  with noise on a block method (with the unmet assumptions listed), "certified" only for one
  exact full Newton step with g_U and noise on every parameter of a softmax regression, and
  "unchanged" (sigma 0) when no weight moved; ``is_convex_model``;
- harmful noise: noise that leaves retained accuracy near chance is refused
  (``HarmfulNoiseError``, the input model untouched) unless ``allow_harmful_noise``;
- verdicts (lcodec_core/audit/verdict.py): identity forgotten / still recognised, damaged,
  unchanged, scattered photos whose target was met or not.
"""
from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

from tiny import assert_state_equal, CLASSES, fit_adam, make_dataset, state_copy, TinyNet  # noqa: F401
from lcodec_core.unlearning.config import UnlearnConfig
from lcodec_core.data import DataBundle, ImageDataset
from lcodec_core.audit.evaluation import evaluate
from lcodec_core.unlearning.guarantee import GUARANTEES, guarantee_for, is_convex_model, unmet_assumptions
from lcodec_core.unlearning.noise import noise_sigma
from lcodec_core.requests import make_request
from lcodec_core.unlearning.unlearn import HarmfulNoiseError, unlearn
from lcodec_core.audit.verdict import Verdict, judge
from lcodec_models import accuracy

LAM = 1e-2
CONFIG = UnlearnConfig(num_perturbations=20)
CERTIFIABLE = UnlearnConfig(method="full-newton", step_rule="newton", newton_steps=1,
                            rhs="forget_gradient", solver="explicit", noise_on="all")
HARMLESS_EPSILON = 1e6      # sigma about 1e-3 for n = 45, k = 1, lam = 1e-2

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


# ---------------------------------------------------------------- models and data
class SoftmaxRegression(nn.Module):
    """A single nn.Linear after nn.Flatten: cross-entropy + lam |w|^2 is strongly convex."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.flatten(x))


class InertBlock(nn.Module):
    """Logits from a fixed projection (a buffer, not a sliced layer) plus 0 x fc(x), with fc all
    zero. fc is the only Conv2d/Linear layer, so every block is inside it; the loss does not
    depend on it (gradient 0) and its weights are 0, so g_U = 0 and every step is exactly 0."""

    def __init__(self, projection: torch.Tensor):
        super().__init__()
        self.register_buffer("projection", projection)       # (16, 3)
        self.fc = nn.Linear(16, 3)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        flat = x.flatten(1)
        return flat @ self.projection + 0.0 * self.fc(flat)


def fit(model: nn.Module, data: ImageDataset, steps: int = 300) -> nn.Module:
    """Full-batch Adam on mean CE + coupled L2 (lam = LAM), seeded; returned in eval mode."""
    return fit_adam(model, data, LAM, steps)


def seeded(model_cls):
    torch.manual_seed(0)
    return model_cls()


@pytest.fixture(scope="module")
def data():
    """45 training images (15 per class) and 15 held-out images."""
    full = make_dataset(60)
    return full.subset(range(45)), full.subset(range(45, 60))


@pytest.fixture(scope="module")
def network(data):
    train, _ = data
    model = fit(seeded(TinyNet), train)
    assert accuracy(model, train.images, train.targets) == 1.0
    return model


@pytest.fixture(scope="module")
def softmax_regression(data):
    train, _ = data
    model = fit(seeded(SoftmaxRegression), train)
    assert accuracy(model, train.images, train.targets) == 1.0
    return model


def one_photo(train: ImageDataset, index: int = 4) -> tuple[ImageDataset, ImageDataset]:
    return train.subset([index]), train.subset([i for i in range(len(train)) if i != index])


# ---------------------------------------------------------------- labels
def test_default_removal_claims_no_guarantee(network, data):
    forget, retain = one_photo(data[0])
    result = unlearn(network, forget, retain, CONFIG, weight_decay=LAM)
    assert result.changed and result.sigma == 0.0
    assert result.guarantee == "none"
    assert result.guarantee_reasons == ["no noise was added (epsilon not set)"]
    assert result.summary()["guarantee_text"] == GUARANTEES["none"]


def test_noise_on_a_block_method_is_heuristic(network, data):
    forget, retain = one_photo(data[0])
    before = state_copy(network)
    result = unlearn(network, forget, retain, CONFIG.with_(epsilon=HARMLESS_EPSILON), weight_decay=LAM)
    assert_state_equal(network, before)
    assert result.sigma == pytest.approx(noise_sigma(epsilon=HARMLESS_EPSILON, delta=1e-5, n=45, k=1,
                                                     weight_decay=LAM, hessian_lipschitz=0.25,
                                                     loss_lipschitz=1.0))
    assert 0 < result.sigma < 1e-2
    assert result.guarantee == "heuristic"
    reasons = " | ".join(result.guarantee_reasons)
    for fragment in ("method 'lfoci' updates a block", "one Newton step", "solver 'fisher'",
                     "noise_on 'all'", "not strongly convex"):
        assert fragment in reasons, reasons
    assert "forget gradient" not in reasons              # rhs forget_gradient is the bound's
    assert result.summary()["guarantee_text"] == GUARANTEES["heuristic"]


def test_one_exact_newton_step_on_softmax_regression_is_certified(softmax_regression, data):
    forget, retain = one_photo(data[0])
    before = state_copy(softmax_regression)
    config = CERTIFIABLE.with_(epsilon=HARMLESS_EPSILON)
    result = unlearn(softmax_regression, forget, retain, config, weight_decay=LAM)
    assert_state_equal(softmax_regression, before)
    assert result.guarantee == "certified" and result.guarantee_reasons == []
    assert result.sigma > 0 and result.parameter_share == 1.0
    assert result.diagnostics["newton"]["steps"] == 1
    assert accuracy(result.model, retain.images, retain.targets) == 1.0
    # every parameter carries noise: none is left exactly where the noiseless step put it
    clean = unlearn(softmax_regression, forget, retain, config.with_(epsilon=None), weight_decay=LAM)
    assert clean.guarantee == "none"
    for noisy, plain in zip(result.model.parameters(), clean.model.parameters()):
        assert ((noisy - plain).detach() != 0).all()


@pytest.mark.parametrize("change, fragment", [
    (dict(method="all"), "method 'all' updates a block"),
    (dict(newton_steps=2), "one Newton step"),
    (dict(step_rule="target"), "one Newton step"),
    (dict(rhs="retain_gradient"), "forget gradient g_U"),
    (dict(solver="fisher", step_rule="target"), "solver 'fisher' approximates the Hessian"),
    (dict(noise_on="block"), "noise_on 'all'"),
])
def test_each_unmet_assumption_makes_it_heuristic(softmax_regression, change, fragment):
    config = CERTIFIABLE.with_(epsilon=1.0, **change)
    unmet = unmet_assumptions(config, softmax_regression)
    assert any(fragment in reason for reason in unmet), unmet
    assert guarantee_for(config, softmax_regression, changed=True, noise_added=True) == ("heuristic", unmet)


def test_certifiable_settings_on_a_network_are_heuristic(network):
    config = CERTIFIABLE.with_(epsilon=1.0)
    label, reasons = guarantee_for(config, network, changed=True, noise_added=True)
    assert label == "heuristic"
    assert reasons == ["the model's objective is not strongly convex (only softmax regression is)"]


def test_guarantee_for_precedence(softmax_regression):
    config = CERTIFIABLE.with_(epsilon=1.0)
    assert guarantee_for(config, softmax_regression, changed=True, noise_added=True) == ("certified", [])
    assert guarantee_for(config, softmax_regression, changed=True, noise_added=False)[0] == "none"
    label, reasons = guarantee_for(config, softmax_regression, changed=False, noise_added=True)
    assert label == "unchanged" and reasons
    assert set(GUARANTEES) == {"certified", "heuristic", "none", "unchanged"}


def test_a_removal_that_moves_nothing_is_unchanged_and_gets_no_noise(data):
    """The block (all of fc) cannot influence the loss and sits at 0: g_U = 0, the step is 0.
    Even with epsilon set, no noise is added and nothing is claimed."""
    train, _ = data
    projection = torch.randn(16, 3, generator=torch.Generator().manual_seed(7))
    model = InertBlock(projection).eval()
    forget, retain = one_photo(train)
    before = state_copy(model)
    config = UnlearnConfig(method="all", epsilon=1.0, step_rule="target")
    result = unlearn(model, forget, retain, config, weight_decay=LAM)
    assert_state_equal(model, before)
    assert result.parameters_updated == 51 and result.parameter_share == 1.0     # all of fc
    assert not result.changed and result.diagnostics["changed"] is False
    assert result.sigma == 0.0
    assert result.guarantee == "unchanged" and result.guarantee_reasons
    assert result.diagnostics["step"]["step_norm"] == 0.0
    assert_state_equal(result.model, before)
    assert result.summary()["guarantee_text"] == GUARANTEES["unchanged"]


def test_an_empty_selection_is_unchanged(network, data, monkeypatch):
    """Engine v2's no-slice branch (L-FOCI selected nothing), forced by an empty selection. (The
    v3 default moves the head whatever L-FOCI selects.)"""
    engine = importlib.import_module("lcodec_core.unlearning.unlearn")  # the package re-exports the function
    monkeypatch.setattr(engine, "select_slices", lambda *args, **kwargs: ([], {"candidates": 0}))
    forget, retain = one_photo(data[0])
    before = state_copy(network)
    result = unlearn(network, forget, retain, CONFIG.with_(epsilon=1.0, step_rule="target"),
                     weight_decay=LAM)
    assert_state_equal(network, before)
    assert result.selected_slices == [] and not result.changed
    assert result.sigma == 0.0 and result.guarantee == "unchanged"
    assert_state_equal(result.model, before)


def test_is_convex_model():
    class TwoParameters(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 3)
            self.scale = nn.Parameter(torch.ones(1))     # a parameter outside the Linear layer

        def forward(self, x):
            return self.scale * self.fc(x.flatten(1))

    assert is_convex_model(SoftmaxRegression())
    assert is_convex_model(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)))
    assert is_convex_model(nn.Sequential(nn.Flatten(), nn.Linear(16, 3, bias=False)))
    assert not is_convex_model(TinyNet())                                        # two Linear layers
    assert not is_convex_model(TwoParameters())
    assert not is_convex_model(nn.Sequential(nn.Conv2d(1, 3, 4), nn.Flatten()))  # a convolution
    assert is_convex_model(InertBlock(torch.zeros(16, 3)))         # buffers are not parameters


# ---------------------------------------------------------------- harmful noise
def test_harmful_noise_is_refused_and_the_model_is_untouched(network, data):
    forget, retain = one_photo(data[0])
    before = state_copy(network)
    config = CONFIG.with_(epsilon=1e-3, noise_on="all")            # sigma about 1e6
    with pytest.raises(HarmfulNoiseError, match="allow_harmful_noise=True") as caught:
        unlearn(network, forget, retain, config, weight_decay=LAM)
    assert isinstance(caught.value, ValueError)
    assert "nothing was changed" in str(caught.value) and "epsilon=0.001" in str(caught.value)
    assert_state_equal(network, before)
    assert not network.training


def test_harmful_noise_is_returned_when_allowed(network, data):
    forget, retain = one_photo(data[0])
    before = state_copy(network)
    config = CONFIG.with_(epsilon=1e-3, noise_on="all", allow_harmful_noise=True)
    result = unlearn(network, forget, retain, config, weight_decay=LAM)
    assert_state_equal(network, before)
    assert result.sigma > 1e5 and result.guarantee == "heuristic"
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert accuracy(result.model, retain.images, retain.targets) < 0.9


# ---------------------------------------------------------------- verdicts
BEFORE = {"retain_accuracy": 1.0, "forget_accuracy": 1.0, "test_accuracy": 0.9,
          "forget_test_accuracy": 0.8}


def after(**values) -> dict:
    return {**BEFORE, **values}


def test_verdict_identity_forgotten():
    verdict = judge(BEFORE, after(forget_accuracy=0.0, forget_test_accuracy=0.1), identity=5)
    assert isinstance(verdict, Verdict)
    assert verdict.status == "forgotten" and verdict.ok and verdict.advice == []
    assert "person 05" in verdict.headline
    # at the limits (5% of training photos, 10% held-out) it still counts
    assert judge(BEFORE, after(forget_accuracy=0.05, forget_test_accuracy=0.10), identity=5).ok
    # no held-out photos of the person: the training photos decide
    assert judge(BEFORE, after(forget_accuracy=0.0, forget_test_accuracy=float("nan")), identity=5).ok


@pytest.mark.parametrize("forget, held", [(0.5, 0.0), (0.06, 0.0), (0.0, 0.5), (0.0, 0.11)])
def test_verdict_identity_still_recognised(forget, held):
    verdict = judge(BEFORE, after(forget_accuracy=forget, forget_test_accuracy=held), identity=2,
                    who="the person")
    assert verdict.status == "still_recognised" and not verdict.ok and verdict.advice
    assert "the person" in verdict.headline


def test_verdict_damaged_comes_before_forgotten():
    verdict = judge(BEFORE, after(retain_accuracy=0.98, forget_accuracy=0.0, forget_test_accuracy=0.0),
                    identity=1)
    assert verdict.status == "damaged" and not verdict.ok
    assert "98%" in verdict.headline and "100%" in verdict.headline
    assert any("epsilon" in advice for advice in verdict.advice)
    # exactly 99% of what it was is not damage
    assert judge(BEFORE, after(retain_accuracy=0.99, forget_accuracy=0.0, forget_test_accuracy=0.0),
                 identity=1).status == "forgotten"
    scattered = judge(BEFORE, after(retain_accuracy=0.5), identity=None, step={"target_met": True})
    assert scattered.status == "damaged"


def test_verdict_unchanged():
    verdict = judge(BEFORE, dict(BEFORE), identity=3, changed=False)
    assert verdict.status == "unchanged" and not verdict.ok and verdict.advice
    assert "Nothing changed" in verdict.headline and "100%" in verdict.headline


def test_verdict_scattered_photos():
    met = judge(BEFORE, after(forget_accuracy=1.0), identity=None, step={"target_met": True},
                who="2 photos")
    assert met.status == "forgotten" and met.ok and "2 photos" in met.headline
    missed = judge(BEFORE, after(forget_accuracy=1.0), identity=None, step={"target_met": False})
    assert missed.status == "still_recognised" and not missed.ok and missed.advice
    assert judge(BEFORE, after(), identity=None).status == "still_recognised"     # no step report
    assert met.to_dict()["status"] == "forgotten"


def test_verdict_of_a_real_whole_class_removal(network, data):
    """Every training photo of class 1 removed with the default settings: judged forgotten from
    the measured accuracies."""
    train, held_out = data
    bundle = DataBundle("tiny", train, held_out, CLASSES, 0.0, 1.0, 0)
    request = make_request(bundle, identity=1)
    result = unlearn(network, request.forget, request.retain, CONFIG, weight_decay=LAM,
                     held_out=held_out)
    before, after_ = evaluate(network, bundle, request), evaluate(result.model, bundle, request)
    verdict = judge(before, after_, identity=1, changed=result.changed, step=result.diagnostics["step"])
    assert after_["forget_accuracy"] == 0.0 and math.isfinite(after_["forget_test_accuracy"])
    assert verdict.status == "forgotten" and verdict.ok, verdict


@pytest.mark.parametrize("removed_class", [0, 2])
def test_harmless_noise_passes_when_the_highest_class_is_removed(removed_class):
    """Chance is 1/K for the model's K outputs, not read from the retained labels (removing the
    highest-numbered class used to make tiny noise look harmful)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    targets = torch.arange(45) % 3
    images = (1.5 * torch.randn(3, 1, 4, 4, generator=generator))[targets] + \
        torch.randn(45, 1, 4, 4, generator=generator)
    data = ImageDataset(images, targets, ["a", "b", "c"], [str(i) for i in range(45)])
    model = fit_adam(nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 3)),
                     data, 1e-2)
    forget = data.subset([i for i in range(45) if targets[i] == removed_class])
    retain = data.subset([i for i in range(45) if targets[i] != removed_class])
    result = unlearn(model, forget, retain, UnlearnConfig(num_perturbations=20, epsilon=1e9),
                     weight_decay=1e-2)
    assert 0 < result.sigma < 1e-3 and result.guarantee == "heuristic"
