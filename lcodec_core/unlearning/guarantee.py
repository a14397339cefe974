"""What a removal may claim: certified (epsilon, delta), heuristic noise, no noise, or unchanged.

The noise bound of Sekhari et al. (2021), sigma = (gamma / epsilon) sqrt(2 ln(1.25 / delta)),
holds for one full-parameter Newton step on a strongly convex objective with noise on every
parameter. A block step leaves the other weights dependent on the forget set and has
first-order error, and a network's objective is not convex, so noise there is a heuristic:
it blurs, it does not certify. A removal that changed nothing is never certified.

Labels (``GUARANTEES``), shared by the engine's result, the CLI, the ledger and the dashboard:
- "certified": every assumption of the bound holds; the stated (epsilon, delta) applies;
- "heuristic": noise was added but some assumption fails (listed); no guarantee;
- "none": no noise (the default); no guarantee;
- "unchanged": the removal changed no weight; nothing was removed, nothing is guaranteed.
"""
from __future__ import annotations

from torch import nn

from .slices import sliced_modules

GUARANTEES = {
    "certified": "certified (epsilon, delta)-forgetting",
    "heuristic": "heuristic noise, no guarantee",
    "none": "no noise, no guarantee",
    "unchanged": "unchanged: no weight moved, nothing removed",
}
EXACT_SOLVERS = ("explicit", "cg", "auto")


def is_convex_model(model: nn.Module) -> bool:
    """True when every parameter belongs to one Linear layer and it is the only sliced layer
    (softmax regression: cross-entropy plus lam |w|^2 is then strongly convex in w)."""
    modules = sliced_modules(model)
    if len(modules) != 1 or not isinstance(modules[0][1], nn.Linear):
        return False
    layer_params = sum(p.numel() for p in modules[0][1].parameters())
    return layer_params == sum(p.numel() for p in model.parameters())


def unmet_assumptions(config, model: nn.Module) -> list[str]:
    """The bound's assumptions that ``config`` on ``model`` does not satisfy (empty: all hold)."""
    unmet = []
    if config.method != "full-newton":
        unmet.append(f"method {config.method!r} updates a block, not every parameter "
                     f"(certification needs method 'full-newton')")
    if config.step_rule != "newton" or config.newton_steps != 1:
        unmet.append("the bound is for one Newton step (step_rule 'newton', newton_steps 1)")
    if config.rhs != "forget_gradient":
        unmet.append("the bound's step uses the forget gradient g_U (rhs 'forget_gradient')")
    if config.solver not in EXACT_SOLVERS:
        unmet.append(f"solver {config.solver!r} approximates the Hessian "
                     f"(use 'explicit' or 'cg')")
    if config.noise_on != "all":
        unmet.append("noise must go on every parameter (noise_on 'all')")
    if not is_convex_model(model):
        unmet.append("the model's objective is not strongly convex (only softmax regression is)")
    return unmet


def guarantee_for(config, model: nn.Module, *, changed: bool, noise_added: bool) -> tuple[str, list[str]]:
    """(label, reasons): the label from :data:`GUARANTEES` and, when not certified, why."""
    if not changed:
        return "unchanged", ["no weight moved (nothing was selected or the step was zero)"]
    if not noise_added:
        return "none", ["no noise was added (epsilon not set)"]
    unmet = unmet_assumptions(config, model)
    return ("certified", []) if not unmet else ("heuristic", unmet)
