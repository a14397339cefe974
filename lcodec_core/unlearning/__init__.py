"""The removal itself, stage by stage (docs/ALGORITHM.md, sections 1-9).

- ``slices``: the parameter slices (one conv filter or linear unit with its bias) and the
  activation recorder; ``probing``: perturb the forget images and record every slice;
- ``selection``: L-FOCI on the probe table (or a comparison rule) picks the block P;
- ``suffix`` and ``block``: the retained objective restricted to P, evaluated from the cut;
- ``optimum_step`` and ``head_optimum``: the default step (engine v3), the whole linear head
  to the optimum of the retained objective by Newton-CG, with its typed report;
- ``curvature``, ``newton``, ``step_rule``, ``forget_step``: engine v2's curvature-shaped step
  (``step_rule="target"``) and how far to take it, and the damped Newton iterations;
- ``noise`` and ``guarantee``: calibrated Gaussian noise and what the removal may claim;
- ``baselines``: retrain, fine-tune and negative-gradient in the same API;
- ``unlearn``: the one call that runs the stages; ``config`` and ``result`` its input and output.
"""
from .config import UnlearnConfig
from .result import SelectedSlice, UnlearnResult
from .unlearn import HarmfulNoiseError, unlearn

__all__ = ["UnlearnConfig", "UnlearnResult", "SelectedSlice", "HarmfulNoiseError", "unlearn"]
