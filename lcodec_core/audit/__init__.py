"""Judging a removal (docs/ALGORITHM.md, section 10).

- ``evaluation``: accuracy on the forgotten, retained and held-out images;
- ``attacks``: what accuracy hides (margin ranking, the restoring offset, relearning; the loss
  attack on report photos for scattered photos), on any model;
- ``verdict``: forgotten, hidden, unconfirmed, still recognised, damaged or unchanged, read
  from those numbers and the attacks;
- ``comparison``: the audit against the model retrained without the forgotten data;
- ``report``: that audit as a Markdown/HTML report with charts.
"""
from .comparison import audit_removal, gradient_norm, weight_distance
from .evaluation import evaluate
from .verdict import Verdict, judge

__all__ = ["audit_removal", "gradient_norm", "weight_distance", "evaluate", "Verdict", "judge"]
