"""Privacy cost: the (epsilon, delta) a sequence of removals has spent, or no guarantee.

:func:`privacy_spent` is the one rule, used by the ledger (:func:`privacy_cost`, through
:meth:`Ledger.model_cost <lcodec_core.ledger.Ledger.model_cost>` and
:meth:`~lcodec_core.ledger.Ledger.lineage_cost`) and by the dashboard's
``Workbench.privacy_spent``. It composes removals with basic sequential composition: epsilons
add up and deltas add up. It is the honest default (valid for any mechanisms, adaptively
chosen); advanced composition would be tighter for many removals but needs assumptions we do
not check.

Only a removal labelled "certified" (:data:`lcodec_core.unlearning.guarantee.GUARANTEES`) with an epsilon
spends an (epsilon, delta). Every other label voids the total guarantee, so the total epsilon
is None (:class:`PrivacyCost`: infinite, and it says how many removals were not certified),
never a sum that counts them as 0:

- "heuristic" and "none": noise without a valid bound, or no noise, so no guarantee;
- "unchanged": no weight moved, so the removed data is still in the model as before the
  request, and guarantee.py says nothing is guaranteed. Such a removal adds no noise and
  costs no privacy by itself, but claiming (epsilon, delta)-forgetting for a sequence that
  includes it would claim that its data was forgotten, which is false; so it voids the total
  guarantee like "none" does.

Deltas sum over the certified removals only (what the others would add is unbounded anyway).
Pure arithmetic: nothing here reads the database or imports the engine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

COMPOSITION = "basic sequential composition: epsilons add up, deltas add up"
CERTIFIED = "certified"


def is_certified(guarantee: str | None, epsilon: float | None) -> bool:
    """True when a removal with this guarantee label and epsilon has a certified
    (epsilon, delta) to spend."""
    return guarantee == CERTIFIED and epsilon is not None


def privacy_spent(removals: Iterable[tuple[str | None, float | None, float | None]]
                  ) -> tuple[float | None, float]:
    """(epsilon, delta) spent by ``removals`` under basic sequential composition (sums).

    Parameters
    ----------
    removals : one ``(guarantee, epsilon, delta)`` per removal, in any order: its label from
        :data:`lcodec_core.unlearning.guarantee.GUARANTEES` and the (epsilon, delta) it ran with (either
        may be None when no noise was asked for).

    Returns
    -------
    (epsilon, delta): epsilon is None when any removal is not certified (see the module
    docstring: no guarantee is claimed then); delta sums only the certified removals'
    deltas. No removal at all spends (0.0, 0.0).

    Notes
    -----
    If removal i is (epsilon_i, delta_i)-forgetting, the sequence is
    (sum_i epsilon_i, sum_i delta_i)-forgetting.
    """
    epsilon, delta, uncertified = 0.0, 0.0, 0
    for guarantee, removal_epsilon, removal_delta in removals:
        if is_certified(guarantee, removal_epsilon):
            epsilon += float(removal_epsilon)
            delta += float(removal_delta or 0.0)
        else:
            uncertified += 1
    return (None if uncertified else epsilon), delta


@dataclass(frozen=True)
class PrivacyCost:
    """Cumulative (epsilon, delta) of a set of removals under basic sequential composition.

    ``epsilon`` is ``math.inf`` as soon as one removal is not certified (``unnoised`` > 0: ran
    without noise, with heuristic noise, or changed nothing): no (epsilon, delta) guarantee is
    claimed then. ``delta`` sums the certified removals' deltas. No removal at all costs (0, 0).
    """
    removals: int
    unnoised: int
    epsilon: float
    delta: float

    @property
    def has_guarantee(self) -> bool:
        return self.unnoised == 0

    def describe(self) -> str:
        """One line: "epsilon 2, delta 2e-05 over 2 removals" or "no guarantee (...)"."""
        plural = "s" if self.removals != 1 else ""
        if not self.has_guarantee:
            return (f"no guarantee: {self.unnoised} of {self.removals} removal{plural} "
                    f"ran without noise (epsilon = inf)")
        return f"epsilon {self.epsilon:.4g}, delta {self.delta:.3g} over {self.removals} removal{plural}"

    def to_dict(self) -> dict:
        """JSON-ready: epsilon is null when there is no guarantee."""
        return {"removals": self.removals, "unnoised": self.unnoised,
                "epsilon": self.epsilon if self.has_guarantee else None,
                "delta": self.delta, "has_guarantee": self.has_guarantee,
                "composition": COMPOSITION}


def privacy_cost(rows) -> PrivacyCost:
    """:func:`privacy_spent` of ledger ``rows`` (:class:`~lcodec_core.ledger.LedgerRow`: their
    ``guarantee``, ``epsilon`` and ``delta``) as a :class:`PrivacyCost`."""
    removals = [(row.guarantee, row.epsilon, row.delta) for row in rows]
    epsilon, delta = privacy_spent(removals)
    uncertified = sum(not is_certified(guarantee, eps) for guarantee, eps, _ in removals)
    return PrivacyCost(len(removals), uncertified, math.inf if epsilon is None else epsilon, delta)
