"""Judge a removal from its numbers: forgotten, still recognised, damaged, or unchanged.

Never assume success: the verdict reads the accuracies before and after (see
:func:`lcodec_core.audit.evaluation.evaluate`) and the engine's result, and says plainly what they
show, with what to try next when the removal fell short.

- A whole person (``identity`` request): retraining never predicts a person with no training
  photos, so forgotten means forget accuracy <= 0.05 and, where held-out photos of the person
  exist, their held-out accuracy <= 0.10.
- Scattered photos: retraining still recognises most of them (other photos of the same people
  remain), so the target is not 0: forgotten means the step rule's target was met (their loss
  reached that of never-seen photos of the same people).
- Damaged: retained accuracy fell below 99% of what it was.
- Unchanged: no weight moved.
- Hidden: the accuracies say forgotten, but an attack (:mod:`.attacks`) tells the model from
  retraining: with a retrained reference, by the tolerances below; without one, by thresholds
  measured on retrained models (bench/bench_unlearn.py, docs/BENCHMARKS.md). A verdict of
  "forgotten" that an attack contradicts would be a defect.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .attacks import last_relearned, relearned_shares

FORGET_ACCURACY_MAX = 0.05
FORGET_HELD_OUT_MAX = 0.10
RETAIN_SHARE_MIN = 0.99

# Attacks read against a retrained reference (the targets of bench/bench_unlearn.py):
MARGIN_AUC_TOLERANCE = 0.15        # |AUC - retrained| (or the two retrainings' spread, if wider)
OFFSET_FLIPS_SHARE_MIN = 0.5       # the restoring constant flips >= 0.5 x the retrained count
OFFSET_CONSTANT_SHARE_MIN = 0.7    # and needs >= 0.7 x the retrained constant
RELEARN_EXCESS_MAX = 0.125         # relearned share <= retrained + 0.125 at every step count
LOSS_AUC_TOLERANCE = 0.1           # scattered photos: |loss-attack AUC - retrained|
# Without a reference only relearning is read, against what retrained models did in
# bench/bench_unlearn.py (40 identities, two retrainings each, docs/BENCHMARKS.md "Engine v3"):
# RETRAINED_RELEARN_USUAL of the forgotten photos back after 10 steps or fewer in almost every
# retraining, RETRAINED_RELEARN_MOST in the worst one (a person whose never-seen photos look
# like their training photos). Above the worst: hidden. In between: not confirmed until it is
# compared with retraining. How many others a constant flips depends on how separable the
# faces are (a retrained ResNet-18 flips 5 of 390 Olivetti photos, the small CNN 5-388), so
# margin and offset are read only against a retrained reference.
RETRAINED_RELEARN_USUAL = 0.125
RETRAINED_RELEARN_MOST = 0.75


@dataclass(frozen=True)
class Verdict:
    """status: "forgotten", "hidden", "unconfirmed", "still_recognised", "damaged" or
    "unchanged"; ``ok`` only for
    "forgotten"; ``headline`` one plain sentence; ``advice`` what to try next (may be empty)."""
    status: str
    ok: bool
    headline: str
    advice: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _pct(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.0%}"


def attack_findings(unlearned: dict, reference: dict | None = None, *,
                    margin_spread: float = 0.0) -> list[str]:
    """Each way the attacks on the unlearned model tell it from retraining, in words (empty:
    none). ``unlearned`` and ``reference`` are :func:`.attacks.request_attacks` results;
    ``margin_spread``: how far two retrainings' margin AUCs lie apart (widens the tolerance)."""
    found = []
    if unlearned.get("kind") == "photos":
        if reference is not None:
            auc, ref = unlearned.get("loss_auc"), reference.get("loss_auc")
            if auc is not None and ref is not None and math.isfinite(auc) and math.isfinite(ref) \
                    and abs(auc - ref) > LOSS_AUC_TOLERANCE:
                found.append(f"a loss attack separates them from held-out photos with AUC {auc:.2f} "
                             f"(retrained {ref:.2f})")
        return found
    relearned = relearned_shares(unlearned)
    constant, flipped = unlearned.get("offset_constant"), unlearned.get("offset_flipped")
    others = unlearned.get("offset_others")
    if reference is None:
        last = last_relearned(unlearned)
        if last is not None and last[1] > RETRAINED_RELEARN_MOST:
            found.append(f"{last[1]:.0%} of their forgotten photos come back after {last[0]} "
                         f"relearning steps on photos of them it never saw (retrained models: "
                         f"at most {RETRAINED_RELEARN_MOST:.0%})")
        return found
    tolerance = max(MARGIN_AUC_TOLERANCE, margin_spread)
    auc, ref_auc = unlearned.get("margin_auc"), reference.get("margin_auc")
    if auc is not None and ref_auc is not None and abs(auc - ref_auc) > tolerance:
        found.append(f"their photos' margin ranks them with AUC {auc:.2f} (retrained {ref_auc:.2f})")
    ref_constant, ref_flipped = reference.get("offset_constant"), reference.get("offset_flipped")
    if constant is not None and ref_constant is not None and (
            flipped < OFFSET_FLIPS_SHARE_MIN * ref_flipped or
            constant < OFFSET_CONSTANT_SHARE_MIN * ref_constant):
        found.append(f"adding {constant:.1f} to their output brings every forgotten photo back and "
                     f"calls {flipped} of {others} others them (retrained: {ref_constant:.1f}, "
                     f"{ref_flipped})")
    ref_relearned = relearned_shares(reference)
    for steps, share in sorted(relearned.items()):
        if steps in ref_relearned and share > ref_relearned[steps] + RELEARN_EXCESS_MAX:
            found.append(f"{share:.0%} of their forgotten photos come back after {steps} relearning "
                         f"steps (retrained {ref_relearned[steps]:.0%})")
            break
    return found


def judge(before: dict, after: dict, *, identity: int | None, changed: bool = True,
          step: dict | None = None, who: str | None = None,
          attacks: dict | None = None) -> Verdict:
    """The verdict for one removal.

    before, after : accuracies of the model before and after (keys retain_accuracy,
        forget_accuracy, test_accuracy, forget_test_accuracy).
    identity : the removed class for a whole-person request, None for scattered photos.
    changed : whether any weight moved (``UnlearnResult.changed``).
    step : the engine's ``diagnostics["step"]`` (its ``target_met`` and ``guard_limited``), if any.
    who : how to name what was removed ("person 05", "3 photos").
    attacks : ``{"unlearned": ..., "retrained": ... (optional), "margin_spread": ...}`` from
        :func:`.attacks.request_attacks`; a removal the attacks tell from retraining is
        "hidden", never "forgotten".
    """
    who = who or (f"person {identity:02d}" if identity is not None else "the photos")
    forget_after = after.get("forget_accuracy", float("nan"))
    if not changed:
        return Verdict("unchanged", False, f"Nothing changed: {who} is recognised exactly as before "
                       f"({_pct(forget_after)} of their training photos).",
                       ["L-FOCI selected no slice: try more perturbations or a larger perturbation "
                        "size, or the method 'all'"])
    retain_before = before.get("retain_accuracy", float("nan"))
    retain_after = after.get("retain_accuracy", float("nan"))
    if math.isfinite(retain_before) and retain_after < RETAIN_SHARE_MIN * retain_before:
        return Verdict("damaged", False,
                       f"The model was damaged: other people's training photos are recognised "
                       f"{_pct(retain_after)} (were {_pct(retain_before)}).",
                       ["use no noise or a larger epsilon", "undo this removal"])
    advice = ["try more perturbations (m) or a higher max slices so L-FOCI finds the slices "
              "that carry them", "or compare with the 'all' method or retraining on the Audit page"]
    if identity is not None:
        held = after.get("forget_test_accuracy", float("nan"))
        held_ok = not math.isfinite(held) or held <= FORGET_HELD_OUT_MAX
        if forget_after <= FORGET_ACCURACY_MAX and held_ok:
            hidden = _attack_verdict(who, attacks)
            if hidden is not None:
                return hidden
            return Verdict("forgotten", True,
                           f"Forgotten: {who} is no longer recognised ({_pct(forget_after)} of their "
                           f"training photos, {_pct(held)} of their held-out photos); others keep "
                           f"{_pct(retain_after)}." + _attacks_agree(attacks))
        return Verdict("still_recognised", False,
                       f"Still recognised: the model still names {who} on {_pct(forget_after)} of "
                       f"their training photos and {_pct(held)} of their held-out photos.", advice)
    if step is not None and step.get("target_met"):
        hidden = _attack_verdict(who, attacks)
        if hidden is not None:
            return hidden
        if step.get("rule") == "retained_optimum":
            return Verdict("forgotten", True,
                           f"Forgotten: the model's head is where training without {who} puts it "
                           f"(the optimum of the retained objective); {_pct(forget_after)} are still "
                           f"recognised, as a retrained model would still recognise most.")
        return Verdict("forgotten", True,
                       f"Forgotten: {who} now look like never-seen photos to the model (their loss "
                       f"reached that of held-out photos of the same people); {_pct(forget_after)} "
                       f"are still recognised, as a retrained model would still recognise most.")
    return Verdict("still_recognised", False,
                   f"Not confirmed: {who} still look like training photos to the model "
                   f"({_pct(forget_after)} recognised; the step's target was not met).", advice)


def _attack_verdict(who: str, attacks: dict | None) -> Verdict | None:
    """"hidden" when the attacks tell the unlearned model from retraining, "unconfirmed"
    when without a reference they cannot tell; None when they agree with a removal."""
    if not attacks or not attacks.get("unlearned"):
        return None
    reference = attacks.get("retrained")
    found = attack_findings(attacks["unlearned"], reference,
                            margin_spread=attacks.get("margin_spread") or 0.0)
    if not found:
        return _unconfirmed(who, attacks["unlearned"]) if reference is None else None
    against = "than a model retrained without them" if reference else "than retrained models do"
    return Verdict("hidden", False,
                   f"Hidden, not removed: {who} is no longer predicted, but attacks still find "
                   f"more of them {against}: " + "; ".join(found) + ".",
                   ["use the default step rule 'optimum' (the head at the retained optimum)",
                    "compare with retraining on the Audit page"])


def _unconfirmed(who: str, unlearned: dict) -> Verdict | None:
    """Without a reference: relearning above what retrained models usually show, but not above
    the most any did, cannot be judged either way until compared with retraining."""
    last = last_relearned(unlearned)
    if last is None or last[1] <= RETRAINED_RELEARN_USUAL:
        return None
    return Verdict("unconfirmed", False,
                   f"Not confirmed: {who} is no longer predicted, but {last[1]:.0%} of their forgotten "
                   f"photos come back after {last[0]} relearning steps. Retrained models "
                   f"usually bring back at most {RETRAINED_RELEARN_USUAL:.0%} and at worst "
                   f"{RETRAINED_RELEARN_MOST:.0%}: only a comparison with retraining can say "
                   f"whether this is forgetting.",
                   ["compare with retraining on the Audit page (or --compare retrain)"])


def _attacks_agree(attacks: dict | None) -> str:
    """What the attacks add to a "forgotten" headline (empty when none were run)."""
    if not attacks or not attacks.get("unlearned"):
        return ""
    if attacks.get("retrained"):
        return " The attacks (margin, offset, relearning) agree with a model retrained without them."
    last = last_relearned(attacks["unlearned"])
    if last is None:
        return ""
    return (f" Relearning brings back {last[1]:.0%} of their photos; margin and "
            f"offset are read against retraining on the Audit page.")
