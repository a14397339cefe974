"""Held-out photos split in two: calibration (what a step rule or a guard may read) and report
(what the audit judges with). Photos that choose a step never judge it.

Per class, in the data set's order: the first, third, ... held-out photo of each class goes to
calibration, the second, fourth, ... to report; a class with a single held-out photo gives it
to report (a judge needs it more than a rule does). On Olivetti (2 held-out photos per person)
that is one photo of each person on each side.
"""
from __future__ import annotations

from dataclasses import dataclass

from .data import ImageDataset


@dataclass(frozen=True)
class HeldOutSplit:
    """Indices into the held-out (test) split: ``calibration`` and ``report``, disjoint."""
    calibration: list[int]
    report: list[int]

    def to_dict(self) -> dict:
        return {"calibration": list(self.calibration), "report": list(self.report),
                "rule": "per class, alternate held-out photos: 1st, 3rd, ... calibration; 2nd, "
                        "4th, ... report (a lone photo: report)"}


def split_held_out(held_out: ImageDataset) -> HeldOutSplit:
    """The calibration / report split of ``held_out`` (module docstring)."""
    calibration, report, seen = [], [], {}
    counts: dict[int, int] = {}
    for target in held_out.targets.tolist():
        counts[target] = counts.get(target, 0) + 1
    for index, target in enumerate(held_out.targets.tolist()):
        position = seen.get(target, 0)
        seen[target] = position + 1
        alone = counts[target] == 1
        (report if alone or position % 2 == 1 else calibration).append(index)
    return HeldOutSplit(calibration, report)
