"""Engine v3 ("removed, not hidden"): the head at the retained optimum, the attacks that tell
a hidden person from a removed one, the held-out split, the controls, and the verdict.

Tiny models with answers known by other means (an independent L-BFGS solve, hand-computed
margins), plus the default model where the claim is about the product (the attacks agree with
retraining; the engine-v2 step is caught hiding).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tiny import CLASSES, TinyNet, assert_state_equal, fit_adam, make_dataset, state_copy
from lcodec_core.audit.attacks import (loss_attack, margin_auc, margins, offset_attack,
                                       relearn_attack, request_attacks)
from lcodec_core.audit.verdict import attack_findings, judge
from lcodec_core.data import ImageDataset
from lcodec_core.holdout import split_held_out
from lcodec_core.unlearning.config import UnlearnConfig
from lcodec_core.unlearning.head_optimum import retained_head_optimum
from lcodec_core.unlearning.unlearn import unlearn
from lcodec_models.stationarity import head_features, polish_head

LAM = 1e-2
FAST = dict(num_perturbations=20)

pytestmark = pytest.mark.usefixtures("one_thread")


def lbfgs_head(features, targets, weight, bias, lam):
    """The same convex problem solved independently: torch L-BFGS to machine precision."""
    w = weight.detach().double().clone().requires_grad_(True)
    b = bias.detach().double().clone().requires_grad_(True)
    x = features.double()
    optimizer = torch.optim.LBFGS([w, b], lr=1, max_iter=2000, tolerance_grad=1e-13,
                                  tolerance_change=1e-16, history_size=50,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, targets) + 0.5 * lam * (w.pow(2).sum() + b.pow(2).sum())
        loss.backward()
        return loss
    optimizer.step(closure)
    return w.detach(), b.detach()


# ---------------------------------------------------------------- the convex head solve
@pytest.mark.parametrize("n, d", [(40, 6), (8, 20)])   # more rows than features, and fewer
def test_head_optimum_matches_an_independent_solve(n, d):
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(n, d, generator=generator, dtype=torch.float64) * 3
    targets = torch.arange(n) % 3
    weight = torch.randn(3, d, generator=generator)
    bias = torch.randn(3, generator=generator)
    solved = retained_head_optimum(features, targets, weight, bias, LAM, tolerance=1e-10,
                                   max_newton_steps=60, max_cg_iterations=500)
    w, b = lbfgs_head(features, targets, weight, bias, LAM)
    assert solved.converged and solved.gradient_norm <= 1e-10
    assert solved.gradient_norm_start > 1e-3
    assert torch.allclose(solved.weight, w, atol=1e-6) and torch.allclose(solved.bias, b, atol=1e-6)


def test_head_optimum_refuses_what_has_no_optimum():
    features, targets = torch.randn(5, 3), torch.arange(5) % 2
    with pytest.raises(ValueError, match="weight_decay must be > 0"):
        retained_head_optimum(features, targets, torch.zeros(2, 3), torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="retained set is empty"):
        retained_head_optimum(features[:0], targets[:0], torch.zeros(2, 3), torch.zeros(2), LAM)


# ---------------------------------------------------------------- the default step
@pytest.fixture(scope="module")
def polished():
    """A TinyNet on 30 images with its head polished to the optimum of F (as the zoo does);
    forget the first 3 (one per class)."""
    data = make_dataset(30)
    torch.manual_seed(0)
    model = fit_adam(TinyNet(), data, LAM)
    polish_head(model, data.images, data.targets, LAM)
    return model, data


def test_the_default_moves_the_head_to_the_retained_optimum(polished):
    model, data = polished
    forget, retain = data.subset(range(3)), data.subset(range(3, 30))
    before = state_copy(model)
    result = unlearn(model, forget, retain, UnlearnConfig(**FAST), weight_decay=LAM)
    assert_state_equal(model, before)                      # the input model is untouched
    assert result.model is not model
    w, b = lbfgs_head(head_features(model, retain.images), retain.targets, model.fc2.weight,
                      model.fc2.bias, LAM)
    assert torch.allclose(result.model.fc2.weight.double(), w, atol=1e-5)
    assert torch.allclose(result.model.fc2.bias.double(), b, atol=1e-5)
    # every weight outside the block (selected slices and head) is bit-identical; with
    # feature_step off nothing outside the head moves at all
    for name, param in result.model.named_parameters():
        if not name.startswith("fc2."):
            assert torch.equal(param, dict(model.named_parameters())[name]), name
    step = result.diagnostics["step"]
    assert step["rule"] == "retained_optimum" and step["converged"] and step["target_met"]
    assert step["head"] == "fc2" and step["head_parameters"] == 3 * 7
    assert step["null_control_ratio"] < 0.01              # a polished head barely moves unremoved
    assert result.parameters_updated >= 21 and result.guarantee == "none"


def test_the_null_control_can_fail_on_a_head_far_from_its_optimum(polished):
    """Not zero by construction: an unpolished head moves by itself, and the ratio says so."""
    model, data = polished
    rough = copy.deepcopy(model)
    with torch.no_grad():
        rough.fc2.weight.add_(0.5 * torch.randn(rough.fc2.weight.shape,
                                                generator=torch.Generator().manual_seed(3)))
    forget, retain = data.subset(range(3)), data.subset(range(3, 30))
    step = unlearn(rough, forget, retain, UnlearnConfig(**FAST), weight_decay=LAM).diagnostics["step"]
    assert step["null_control_ratio"] > 0.5
    assert step["stationarity_head_gradient_norm"] > 100 * 1e-7


def test_removing_photos_never_trained_on_moves_next_to_nothing(polished):
    """The non-member control: the same pipeline on as many photos it never saw."""
    model, data = polished
    forget, retain = data.subset(range(3)), data.subset(range(3, 30))
    real = unlearn(model, forget, retain, UnlearnConfig(**FAST), weight_decay=LAM)
    strangers = make_dataset(3, seed=7)
    control = unlearn(model, strangers, data, UnlearnConfig(**FAST), weight_decay=LAM)
    ratio = control.diagnostics["step"]["step_norm"] / real.diagnostics["step"]["step_norm"]
    assert ratio < 0.1


def test_feature_step_moves_the_selected_slices_then_the_head(polished):
    model, data = polished
    forget, retain = data.subset(range(3)), data.subset(range(3, 30))
    config = UnlearnConfig(feature_step=True, max_slices=4, **FAST)
    result = unlearn(model, forget, retain, config, weight_decay=LAM, held_out=make_dataset(9, seed=3))
    step = result.diagnostics["step"]
    assert step["feature_step"] == bool(step["feature_slices"])
    if step["feature_slices"]:
        assert "feature_step" in result.diagnostics
    assert step["converged"]


def test_a_model_without_a_linear_head_is_refused_with_what_to_use():
    class ConvOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 4)

        def forward(self, x):
            return self.conv(x).flatten(1)
    data = make_dataset(12)
    with pytest.raises(ValueError, match="step_rule 'target'"):
        unlearn(ConvOnly(), data.subset(range(3)), data.subset(range(3, 12)),
                UnlearnConfig(**FAST), weight_decay=LAM)


def test_a_model_whose_output_is_not_its_heads_is_refused():
    class Scaled(TinyNet):
        def forward(self, x):
            return 0.0 * super().forward(x) + x.flatten(1)[:, :3]
    data = make_dataset(12)
    model = Scaled()
    before = state_copy(model)
    with pytest.raises(ValueError, match="logits = head"):
        unlearn(model, data.subset(range(3)), data.subset(range(3, 12)), UnlearnConfig(**FAST),
                weight_decay=LAM)
    assert_state_equal(model, before)


# ---------------------------------------------------------------- attacks on known logits
def test_margin_and_offset_by_hand():
    forgotten = torch.tensor([[0.0, 2.0, 1.0], [0.0, 5.0, 1.0]])   # class k = 0 needs +2 and +5
    others = torch.tensor([[0.0, 1.0, 0.0], [0.0, 4.0, 0.0], [0.0, 9.0, 0.0]])
    m = margins(forgotten, 0)
    assert torch.allclose(m[0], torch.tensor(0.0 - math.log(math.exp(2) + math.exp(1)), dtype=torch.float64))
    result = offset_attack(forgotten, others, 0)
    assert result["offset_constant"] == pytest.approx(5.0, abs=1e-5)
    assert result["offset_flipped"] == 2 and result["offset_others"] == 3   # gaps 1 and 4 < 5
    # margins: forgotten -2.31, -5.02; others -1.31, -4.02, -9.00: 3 of 6 pairs ranked right
    assert margin_auc(forgotten, others, 0) == pytest.approx(3 / 6)


def test_relearning_leaves_the_model_alone_and_counts_returns(polished):
    model, data = polished
    before = state_copy(model)
    k = 0
    forgotten = data.subset([i for i in range(30) if int(data.targets[i]) == k][:4])
    person = make_dataset(6, seed=5)
    person = person.subset([i for i in range(6) if int(person.targets[i]) == k])
    shares = relearn_attack(model, forgotten, person, data, k)
    assert_state_equal(model, before)
    assert set(shares) == {"2", "5", "10"} and all(0 <= v <= 1 for v in shares.values())
    assert shares["10"] == 1.0             # the model never forgot class 0: every photo is k


def test_loss_attack_ranks_low_loss_as_members(polished):
    model, data = polished
    attack = loss_attack(model, data.subset(range(6)), make_dataset(30, seed=9))
    assert 0 <= attack["loss_auc"] <= 1 and len(attack["forgotten_losses"]) == 6


# ---------------------------------------------------------------- held-out split
def test_held_out_split_alternates_per_class_and_is_disjoint():
    targets = torch.tensor([0, 1, 0, 1, 2, 0])
    data = ImageDataset(torch.zeros(6, 1, 2, 2), targets, CLASSES, [str(i) for i in range(6)])
    split = split_held_out(data)
    # class 0: 1st and 3rd calibration, 2nd report; class 1 one each; class 2 alone: report
    assert split.calibration == [0, 1, 5] and split.report == [2, 3, 4]
    assert not set(split.calibration) & set(split.report)


# ---------------------------------------------------------------- the verdict reads attacks
HIDDEN = {"kind": "identity", "margin_auc": 1.0, "offset_constant": 8.3, "offset_flipped": 0,
          "offset_others": 390, "relearned": {"2": 0.0, "5": 0.25, "10": 1.0}}
REMOVED = {"kind": "identity", "margin_auc": 0.99, "offset_constant": 13.2, "offset_flipped": 3,
           "offset_others": 390, "relearned": {"2": 0.0, "5": 0.0, "10": 0.0}}
RETRAINED = {"kind": "identity", "margin_auc": 0.997, "offset_constant": 13.0, "offset_flipped": 5,
             "offset_others": 390, "relearned": {"2": 0.0, "5": 0.0, "10": 0.0}}
ACCURATE = dict(before={"retain_accuracy": 1.0, "forget_accuracy": 1.0},
                after={"retain_accuracy": 1.0, "forget_accuracy": 0.0, "forget_test_accuracy": 0.0})


def test_a_hidden_person_is_never_called_forgotten():
    assert attack_findings(HIDDEN) and attack_findings(HIDDEN, RETRAINED)
    # without a reference only relearning is read: an offset that flips nobody is not enough
    # (a retrained model of very separable faces flips nobody either)
    assert attack_findings({**HIDDEN, "relearned": {"10": 0.0}}) == []
    assert attack_findings({**HIDDEN, "relearned": {"10": 0.0}}, RETRAINED)
    for reference in (None, RETRAINED):
        verdict = judge(**ACCURATE, identity=5, who="person 05",
                        attacks={"unlearned": HIDDEN, "retrained": reference})
        assert verdict.status == "hidden" and not verdict.ok
        assert "relearning" in verdict.headline and verdict.advice


def test_without_a_reference_relearning_between_usual_and_worst_retraining_is_unconfirmed():
    """Retrained models brought back up to 75% of one person (docs/BENCHMARKS.md): without a
    reference 50% is neither forgotten nor hidden; the same numbers against a retrained model
    that relearns nothing are hidden, against one that relearns 50% too, forgotten."""
    half = {**REMOVED, "relearned": {"2": 0.0, "5": 0.0, "10": 0.5}}
    alone = judge(**ACCURATE, identity=5, attacks={"unlearned": half})
    assert alone.status == "unconfirmed" and not alone.ok and "Audit page" in alone.advice[0]
    assert judge(**ACCURATE, identity=5,
                 attacks={"unlearned": half, "retrained": RETRAINED}).status == "hidden"
    relearns = {**RETRAINED, "relearned": {"2": 0.0, "5": 0.0, "10": 0.5}}
    assert judge(**ACCURATE, identity=5,
                 attacks={"unlearned": half, "retrained": relearns}).status == "forgotten"


def test_a_removal_that_agrees_with_retraining_is_forgotten():
    assert attack_findings(REMOVED, RETRAINED) == []
    verdict = judge(**ACCURATE, identity=5, attacks={"unlearned": REMOVED, "retrained": RETRAINED})
    assert verdict.status == "forgotten" and verdict.ok


def test_margin_far_below_retraining_is_a_tell_too():
    low = {**REMOVED, "margin_auc": 0.3}
    assert any("margin" in f for f in attack_findings(low, RETRAINED))
    assert attack_findings(low, RETRAINED, margin_spread=0.8) == []   # inside retraining's spread


def test_scattered_photos_read_the_loss_attack_against_retraining():
    step = {"rule": "retained_optimum", "target_met": True}
    far = {"kind": "photos", "loss_auc": 0.9}
    near = {"kind": "photos", "loss_auc": 0.42}
    ref = {"kind": "photos", "loss_auc": 0.40}
    accuracies = dict(before={"retain_accuracy": 1.0}, after={"retain_accuracy": 1.0,
                                                            "forget_accuracy": 1.0})
    assert judge(**accuracies, identity=None, step=step,
                 attacks={"unlearned": far, "retrained": ref}).status == "hidden"
    assert judge(**accuracies, identity=None, step=step,
                 attacks={"unlearned": near, "retrained": ref}).status == "forgotten"


# ---------------------------------------------------------------- on the default model
@pytest.fixture(scope="module")
def person_12(trained_small_cnn):
    from lcodec_core.removal import remove
    from lcodec_core.requests import make_request
    checkpoint, bundle = trained_small_cnn
    request = make_request(bundle, identity=12)
    deep = remove(checkpoint, bundle, request)
    shallow = remove(checkpoint, bundle, request, UnlearnConfig(step_rule="target"))
    return checkpoint, bundle, request, deep, shallow


def test_the_default_removes_and_the_v2_step_is_caught_hiding(person_12):
    checkpoint, bundle, request, deep, shallow = person_12
    for record in (deep, shallow):
        assert record.after["forget_accuracy"] == 0.0
        assert set(record.attacks) >= {"before", "unlearned", "relearn_protocol", "held_out"}
    before = deep.attacks["before"]
    assert before["margin_auc"] == 1.0 and before["relearned"]["10"] == 1.0
    # The engine-v2 step lowers one output: a few steps on unseen photos bring the person back.
    # Without a reference that is never "forgotten" (75% back: as much as the worst retraining
    # measured, so "unconfirmed"); against a retrained model it is "hidden" (next test).
    assert shallow.verdict.status in ("hidden", "unconfirmed") and not shallow.verdict.ok, \
        shallow.verdict.headline
    assert shallow.attacks["unlearned"]["relearned"]["10"] >= 0.5
    # The head at the retained optimum leaves nothing that relearning or an offset restores cheaply
    assert deep.verdict.status == "forgotten", deep.verdict.headline
    assert deep.attacks["unlearned"]["relearned"]["10"] <= 0.125
    assert deep.attacks["unlearned"]["offset_constant"] > shallow.attacks["unlearned"]["offset_constant"]
    assert deep.after["retain_accuracy"] >= 0.99 * deep.before["retain_accuracy"]
    assert deep.to_json()["attacks"]["unlearned"]["kind"] == "identity"


def test_the_record_judges_against_a_retrained_model(person_12):
    from lcodec_core.removal import compare_with_retraining
    checkpoint, bundle, request, deep, shallow = person_12
    compared = compare_with_retraining(shallow, checkpoint.model, checkpoint.recipe, bundle)
    retrained = compared.attacks["retrained"]
    assert retrained["relearned"]["10"] <= 0.125           # a retrained model does not relearn
    assert compared.verdict.status == "hidden" and "retrained" in compared.verdict.headline
    # the attacks read only the report half of the held-out photos for scattered photos
    split = deep.attacks["held_out"]
    assert not set(split["calibration"]) & set(split["report"])
    assert len(split["calibration"]) + len(split["report"]) == len(bundle.test)
