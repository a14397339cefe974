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
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

FORGET_ACCURACY_MAX = 0.05
FORGET_HELD_OUT_MAX = 0.10
RETAIN_SHARE_MIN = 0.99


@dataclass(frozen=True)
class Verdict:
    """status: "forgotten", "still_recognised", "damaged" or "unchanged"; ``ok`` only for
    "forgotten"; ``headline`` one plain sentence; ``advice`` what to try next (may be empty)."""
    status: str
    ok: bool
    headline: str
    advice: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _pct(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.0%}"


def judge(before: dict, after: dict, *, identity: int | None, changed: bool = True,
          step: dict | None = None, who: str | None = None) -> Verdict:
    """The verdict for one removal.

    before, after : accuracies of the model before and after (keys retain_accuracy,
        forget_accuracy, test_accuracy, forget_test_accuracy).
    identity : the removed class for a whole-person request, None for scattered photos.
    changed : whether any weight moved (``UnlearnResult.changed``).
    step : the engine's ``diagnostics["step"]`` (its ``target_met`` and ``guard_limited``), if any.
    who : how to name what was removed ("person 05", "3 photos").
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
            return Verdict("forgotten", True,
                           f"Forgotten: {who} is no longer recognised ({_pct(forget_after)} of their "
                           f"training photos, {_pct(held)} of their held-out photos); others keep "
                           f"{_pct(retain_after)}.")
        return Verdict("still_recognised", False,
                       f"Still recognised: the model still names {who} on {_pct(forget_after)} of "
                       f"their training photos and {_pct(held)} of their held-out photos.", advice)
    if step is not None and step.get("target_met"):
        return Verdict("forgotten", True,
                       f"Forgotten: {who} now look like never-seen photos to the model (their loss "
                       f"reached that of held-out photos of the same people); {_pct(forget_after)} "
                       f"are still recognised, as a retrained model would still recognise most.")
    return Verdict("still_recognised", False,
                   f"Not confirmed: {who} still look like training photos to the model "
                   f"({_pct(forget_after)} recognised; the step's target was not met).", advice)
