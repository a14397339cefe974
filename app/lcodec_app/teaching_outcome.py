"""The "How it works" page's last three steps: what the update did, what noise and
(epsilon, delta) mean, and how to read the audit. Pure functions, as in :mod:`.teaching`:

5. the step and how much the curvature shaped it (:func:`step_lines`, :func:`curvature_figure`);
6. noise and (epsilon, delta) (:func:`guarantee_rows`, :func:`guarantee_lines`);
7. how to read the audit (:func:`accuracy_rows`, :func:`mia_text`; the verdict is the
   removal record's own).
"""
from __future__ import annotations

import math

import plotly.graph_objects as go

from lcodec_core.audit.attacks import last_relearned
from lcodec_core.unlearning.guarantee import GUARANTEES
from lcodec_core.unlearning.step_rule import target_status

from .teaching import ACCENT, GREY, NEAR_ONE, SMALL_ANGLE_DEG, compact_figure
from .words import MISSING, number, pct


def curvature_small(effect: dict | None) -> bool:
    """True when the curvature barely shaped the step: angle below 5 degrees and length ratio
    within 10% of 1 (the damping, i.e. the step size, did most of the work)."""
    effect = effect or {}
    try:
        angle, ratio = float(effect.get("angle_deg")), float(effect.get("norm_ratio"))
    except (TypeError, ValueError):
        return False
    return math.isfinite(angle) and math.isfinite(ratio) and angle < SMALL_ANGLE_DEG \
        and abs(ratio - 1) < NEAR_ONE


def step_lines(step: dict) -> list[str]:
    """The step's report (``diagnostics["step"]``) as plain-language bullet lines."""
    lines = [f"- **The rule**: {step.get('rule_text', step.get('rule', MISSING))} "
             f"(rule `{step.get('rule', MISSING)}`)."]
    rounds = step.get("rounds") or []
    dampings = ", ".join(number(r.get("damping")) for r in rounds) if rounds else None
    lines.append(f"- **The step size**: damping mu = {number(step.get('damping'))}; a larger mu "
                 f"means a shorter, more cautious step"
                 + (f". It took {len(rounds)} rounds, each starting where the last ended "
                    f"(mu per round: {dampings})." if len(rounds) > 1 else "."))
    lines.append(f"- **The target**: {target_status(step)}")
    control = step.get("null_control") or {}
    ratio = control.get("ratio")
    zero = ratio == 0
    lines.append(f"- **The null control**: the same update computed with nothing removed has "
                 f"length {number(control.get('step_norm'))}, {number(ratio, '.2%')} of this "
                 f"step's. " + ("0 means the change comes from the removal alone." if zero else
                                "That part would move the model even if nothing were removed."))
    station = step.get("stationarity") or {}
    rhs = step.get("rhs", "forget_gradient")
    lines.append(f"- **Where the model stood**: the gradient of the whole training objective on "
                 f"these slices is {number(station.get('block_gradient_norm'))}, against "
                 f"{number(station.get('forget_gradient_norm'))} for the forgotten photos (ratio "
                 f"{number(station.get('ratio'), '.2g')}). A small ratio means the trained model "
                 f"sat at a minimum of its training objective. "
                 + ("This step follows the forgotten photos' gradient alone, so it does not "
                    "inherit the rest." if rhs == "forget_gradient" else
                    "This step follows the retained photos' gradient, so a model away from a "
                    "minimum moves even with nothing removed: the null control measures that."))
    effect = step.get("curvature_effect") or {}
    angle, norm_ratio = effect.get("angle_deg"), effect.get("norm_ratio")
    lines.append(f"- **How much the curvature shaped it**: {number(angle, '.1f')}° between this "
                 f"step and the plain forget gradient, length ratio {number(norm_ratio, '.2f')}. "
                 + ("Honestly: little. The step is close to a plain gradient step on the "
                    "forgotten photos' loss, and the damping (the step size) did most of the "
                    "work, not the curvature." if curvature_small(effect) else
                    "The curvature turned or rescaled the step: it is not just a plain gradient "
                    "step."))
    return lines


OPTIMUM_GENERAL = (
    "The default step does not look for the smallest change that stops the model naming the "
    "person. That change only lowers their output unit by about a constant: everything else "
    "the model learnt about them stays, and one number added to that output, or a few training "
    "steps on two new photos of them, brings them back. Instead the last layer (the head, which "
    "turns the features into one score per person) moves to **the best fit of the kept photos "
    "alone**: the optimum of the retained objective, the point a model trained without the "
    "person would reach with the same features. For the head this problem is convex, so "
    "Newton's method reaches that optimum exactly, in a fraction of a second.")

SLICES_MEASURED = (
    "What the slices L-FOCI picked add: measured on the default model (docs/BENCHMARKS.md, "
    "\"What the L-FOCI slices add\"), moving them as well changed no attack result and cost "
    "about a second more, and moving them alone (the old smallest step) left the person "
    "recoverable. So they are shown as what carries the person, and only the head moves.")


def optimum_lines(step: dict, attacks: dict | None = None) -> list[str]:
    """The default (engine v3) step's report as plain-language bullet lines, with this
    session's attack numbers when the removal has them."""
    solve = step["solve"]
    lines = [
        f"- **The rule**: {step['rule_text']} (rule `{step['rule']}`).",
        f"- **What moved**: the head `{step['head']}` ({step['head_parameters']:,} weights), by "
        f"{number(step['step_norm'])} (its weights' size is {number(step['block_norm'])}).",
        f"- **How far the solve went**: the retained objective's slope on the head fell from "
        f"{number(solve['gradient_norm_start'])} to {number(solve['gradient_norm'])} in "
        f"{solve['newton_steps']} Newton steps: {'at the optimum' if solve['converged'] else 'NOT at the optimum'}.",
        f"- **The null control**: the same solve with nothing removed moves the head "
        f"{number(step['null_control_ratio'], '.2%')} as far. Near 0 means the change comes from "
        f"the removal, not from a model that was not at its optimum to begin with.",
    ]
    before, after = (attacks or {}).get("before"), (attacks or {}).get("unlearned")
    if before and after and last_relearned(before) and last_relearned(after):
        (steps, relearned_before), (_, relearned_after) = last_relearned(before), last_relearned(after)
        lines.append(
            f"- **Hidden or removed, on this removal**: before, {pct(relearned_before)} of their "
            f"photos were named after {steps} relearning steps; now {pct(relearned_after)}. The "
            f"constant that brings every forgotten photo back is now "
            f"{number(after.get('offset_constant'), '.1f')}, and it would also call "
            f"{after.get('offset_flipped')} of {after.get('offset_others')} other photos them. "
            f"Read these beside a model retrained without them (the Audit page trains one): "
            f"the removal is deep when they match, whatever the numbers are.")
    lines.append(f"- **The selected slices**: {SLICES_MEASURED}")
    return lines


def curvature_figure(effect: dict | None) -> go.Figure | None:
    """Two arrows from the origin: the plain forget-gradient step (length 1, along x) and the
    step taken (at ``angle_deg``, length ``norm_ratio``). None when the numbers are missing."""
    effect = effect or {}
    try:
        angle, ratio = float(effect.get("angle_deg")), float(effect.get("norm_ratio"))
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(angle) and math.isfinite(ratio)) or ratio <= 0:
        return None
    tip = (ratio * math.cos(math.radians(angle)), ratio * math.sin(math.radians(angle)))
    reach = max(1.0, ratio) * 1.25
    fig = go.Figure()
    fig.add_scatter(x=[0, 1, tip[0]], y=[0, 0, tip[1]], mode="markers", marker=dict(size=1),
                    hoverinfo="skip")
    for (x, y), colour, text, shift in (((1.0, 0.0), GREY, "plain gradient step", -18),
                                        (tip, ACCENT, f"step taken ({angle:.1f}°, x{ratio:.2f})", 18)):
        fig.add_annotation(x=x, y=y, ax=0, ay=0, xref="x", yref="y", axref="x", ayref="y",
                           showarrow=True, arrowhead=3, arrowwidth=3, arrowcolor=colour, text="")
        fig.add_annotation(x=x, y=y, text=text, showarrow=False, yshift=shift,
                           font=dict(color=colour))
    fig.update_xaxes(range=[-0.1 * reach, reach], visible=False)
    fig.update_yaxes(range=[-0.5 * reach, 0.5 * reach], visible=False, scaleanchor="x")
    fig.update_layout(title="The step beside the plain gradient step (same scale)")
    return compact_figure(fig, 260)


# ---------------------------------------------------------------- 6. noise and (epsilon, delta)
def guarantee_rows(current: str | None = None) -> list[dict]:
    """Every guarantee label with its meaning; ``this removal`` marks ``current``."""
    return [{"label": key, "what it means": text, "this removal": "◀" if key == current else ""}
            for key, text in GUARANTEES.items()]


def guarantee_lines(result, config) -> list[str]:
    """This removal's guarantee: its label, sigma, (epsilon, delta) and why it is not certified."""
    label = result.guarantee
    lines = [f"- **This removal**: `{label}`, {GUARANTEES.get(label, label)}."]
    if config.epsilon is None:
        lines.append("- **Noise**: none (epsilon was not set), so sigma = 0.")
    else:
        lines.append(f"- **Noise**: epsilon = {config.epsilon:g}, delta = {config.delta:.0e}, "
                     f"sigma = {number(result.sigma)} (the noise's standard deviation).")
    if label == "certified":
        lines.append("- Every assumption of the bound holds: the (epsilon, delta) above applies.")
    elif result.guarantee_reasons:
        lines.append("- **Why there is no guarantee**: "
                     + "; ".join(str(r) for r in result.guarantee_reasons) + ".")
    return lines


# ---------------------------------------------------------------- 7. reading the audit
ACCURACIES = (
    ("forget_accuracy", "Forgotten photos",
     "the removed training photos the model still names correctly", "near 0% for a whole person"),
    ("retain_accuracy", "Retained photos",
     "every training photo that was kept", "stays where it was"),
    ("test_accuracy", "Held-out, others",
     "photos never used in training, of people who were not removed", "stays where it was"),
    ("forget_test_accuracy", "Held-out, forgotten",
     "photos of the removed person that were never used in training",
     "near 0%: a model that never saw the person cannot name them"),
)


def accuracy_rows(before: dict | None = None, after: dict | None = None) -> list[dict]:
    """One row per accuracy: its name, what it counts and what good looks like; with
    ``before``/``after`` the removal's values too."""
    rows = []
    for key, label, meaning, good in ACCURACIES:
        row = {"accuracy": label, "counts": meaning, "after a good removal": good}
        if before is not None and after is not None:
            row["before"] = pct(before.get(key))
            row["after"] = pct(after.get(key))
        rows.append(row)
    return rows


MIA_GENERAL = ("A **membership-inference attack** guesses, from the model's loss on a photo, "
               "whether that photo was in the training set. Its **AUC** is the chance that it "
               "ranks a removed photo as 'more likely trained on' than a never-seen photo: 0.5 "
               "means it cannot tell them apart, 1 means it always can. Read it beside the model "
               "retrained from scratch without the photos, the reference: for a whole person the "
               "retrained model misclassifies them, so its AUC can fall below 0.5.")


def mia_text(audit: dict | None) -> str:
    """This removal's attack AUCs in words, or where to get them."""
    if not audit:
        return ("This removal has not been audited yet: press **Retrain from scratch for "
                "comparison** on the Audit page to measure the attack's AUC beside the "
                "retrained model.")
    parts = [f"{name} {audit[name]['mia_auc']:.3f}" for name in ("original", "unlearned",
                                                                  "retrained")
             if name in audit and "mia_auc" in audit[name]]
    return "Loss attack AUC on this removal: " + ", ".join(parts) + "."
