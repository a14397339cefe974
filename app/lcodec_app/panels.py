"""Larger page sections used on more than one page: a removal's result and the history."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from lcodec_core.unlearning.guarantee import GUARANTEES
from lcodec_core.unlearning.step_rule import target_status

from . import charts
from .teaching import number
from .widgets import explain, pct, points
from .workbench import Removal, Workbench

FORGOTTEN_LABEL = "Forgotten photos"
RETAINED_LABEL = "Retained photos"
HELD_OUT_LABEL = "Held-out, others"
HELD_OUT_FORGOTTEN_LABEL = "Held-out, forgotten"


def result_metrics(removal: Removal) -> None:
    """Four numbers, each after the removal with its change (data-testid stMetric)."""
    before, after = removal.before, removal.after
    st.markdown("**Accuracy after the removal** (change from before)")
    # A wrapping row: four across on a desktop, two by two on a phone.
    with st.container(horizontal=True, gap="small", key=f"metrics_{removal.hash_after[:12]}"):
        st.metric(FORGOTTEN_LABEL, pct(after["forget_accuracy"]),
                  points(before["forget_accuracy"], after["forget_accuracy"]), width=140,
                  delta_color="inverse", help="How often the model still recognises the removed "
                  "training photos. For a whole person, a model retrained without them gets ~0%.")
        st.metric(RETAINED_LABEL, pct(after["retain_accuracy"]),
                  points(before["retain_accuracy"], after["retain_accuracy"]), width=140,
                  help="Accuracy on every training photo that was kept: it should stay high.")
        st.metric(HELD_OUT_LABEL, pct(after["test_accuracy"]),
                  points(before["test_accuracy"], after["test_accuracy"]), width=140,
                  help="Held-out photos (never used for training) of people who were not removed.")
        st.metric(HELD_OUT_FORGOTTEN_LABEL, pct(after["forget_test_accuracy"]),
                  points(before["forget_test_accuracy"], after["forget_test_accuracy"]), width=140,
                  delta_color="inverse", help="Held-out photos of the removed person, never "
                  "used for training (n/a when single photos were removed).")


def verdict_banner(removal: Removal) -> None:
    """The removal judged from its numbers (:func:`lcodec_core.audit.verdict.judge`), never assumed:
    green only when forgotten; a warning with what to try when still recognised or unchanged;
    an error when the model was damaged."""
    verdict = removal.verdict
    advice = "".join(f"\n- {line}" for line in verdict.advice)
    if verdict.ok:
        st.success(verdict.headline, icon=":material/check_circle:")
    elif verdict.status == "damaged":
        st.error(verdict.headline + advice, icon=":material/dangerous:")
    else:
        st.warning(verdict.headline + advice, icon=":material/warning:")


def guarantee_text(result) -> str:
    """The engine's guarantee label in words, with why it is not certified (if it is not)."""
    text = GUARANTEES.get(result.guarantee, result.guarantee)
    if result.guarantee == "heuristic" and result.guarantee_reasons:
        text += " (" + "; ".join(result.guarantee_reasons) + ")"
    return text


def optimum_step_details(step: dict) -> None:
    """The default (engine v3) step in plain words: what moved, how far the solve went, the
    null control, and what the selected slices did."""
    solve = step["solve"]
    outside = step["feature_slices"]
    lines = [
        f"- **Rule**: {step['rule_text']}.",
        f"- **Solve**: the retained objective's gradient on the head went from "
        f"{solve['gradient_norm_start']:.2g} to {solve['gradient_norm']:.2g} in "
        f"{solve['newton_steps']} Newton steps ({'converged' if solve['converged'] else 'not converged'}); "
        f"{step['head_parameters']:,} head parameters moved by {step['step_norm']:.3g}.",
        f"- **Null control**: the same solve with nothing removed moves the head "
        f"{number(step['null_control_ratio'], '.2%')} as far (the model's own distance from its "
        f"optimum, not the removal).",
        f"- **Selected slices outside the head**: {', '.join(outside) if outside else 'none'}; "
        + ("moved first by the targeted step." if step["feature_step"] else
           "shown for what carries the person, not moved: measured, moving them changed no "
           "attack (docs/BENCHMARKS.md)."),
    ]
    st.markdown("\n".join(lines))


def attack_table(removal: Removal) -> None:
    """The attacks the verdict read, one column per model (before, unlearned, retrained)."""
    attacks = removal.attacks
    if not attacks:
        return
    columns = [c for c in ("before", "unlearned", "retrained") if attacks.get(c)]
    if attacks["unlearned"].get("kind") == "photos":
        rows = [{"attack": "loss attack AUC (forgotten vs held-out report photos)",
                 **{c: number(attacks[c].get("loss_auc"), ".2f") for c in columns}}]
    else:
        def relearned(c, s):
            return pct((attacks[c].get("relearned") or {}).get(str(s)))
        others = attacks["unlearned"].get("offset_others")
        rows = [{"attack": "margin ranking AUC (their photos above everyone else's)",
                 **{c: number(attacks[c].get("margin_auc"), ".2f") for c in columns}},
                {"attack": "constant on their output that brings every photo back",
                 **{c: number(attacks[c].get("offset_constant"), ".1f") for c in columns}},
                {"attack": f"others that constant calls them (of {others})",
                 **{c: str(attacks[c].get("offset_flipped")) for c in columns}}]
        rows += [{"attack": f"photos back after {s} relearning steps",
                  **{c: relearned(c, s) for c in columns}} for s in (2, 5, 10)]
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    explain("Accuracy is not forgetting. These attacks read what accuracy hides; each is read "
            "against a model retrained without the person, which the Audit page trains.")


def step_details(result) -> None:
    """How the step was chosen, in plain words: the rule, its target, the null control and
    how much the curvature shaped the step. Nothing for a removal without a targeted step."""
    step = result.diagnostics.get("step")
    if not step:
        return
    if step.get("rule") == "retained_optimum":
        optimum_step_details(step)
        return
    lines = [f"- **Rule**: {step.get('rule_text', step.get('rule', 'n/a'))}; damping "
             f"{number(step.get('damping'))}."]
    lines.append(f"- **Target**: {target_status(step)}")
    rounds = step.get("rounds") or []
    if len(rounds) > 1:
        lines.append(f"- **Rounds**: {len(rounds)} steps, each from where the last one ended.")
    control = step.get("null_control") or {}
    ratio = control.get("ratio")
    lines.append(f"- **Null control**: the same update with nothing removed is "
                 f"{number(ratio, '.2%')} of this step's size"
                 + (" (it comes from the removal alone)." if ratio == 0 else
                    " (this part would move the model even if nothing were removed)."))
    effect = step.get("curvature_effect") or {}
    angle, norm_ratio = effect.get("angle_deg"), effect.get("norm_ratio")
    little = (number(angle, ".1f") != "n/a" and float(angle) < 5
              and abs(float(norm_ratio or 0) - 1) < 0.1)
    lines.append(f"- **How much the curvature shaped the step**: {number(angle, '.1f')}° "
                 f"between this step and the plain forget gradient, length ratio "
                 f"{number(norm_ratio, '.2f')}"
                 + (": little, the step size (damping) did most of the work." if little else
                    ": the curvature turned or rescaled the step."))
    st.markdown("\n".join(lines))


def result_panel(bench: Workbench, removal: Removal, chart_key: str) -> None:
    """What a removal did: the verdict, the numbers, a before/after chart, and how it was done."""
    verdict_banner(removal)
    result_metrics(removal)
    st.plotly_chart(charts.accuracy_bars({"original": removal.before, "unlearned": removal.after}),
                    key=chart_key, config={"displayModeBar": False})
    explain("Each pair of bars is one group of photos: grey before the removal, red after. "
            "The red bar should drop for the forgotten photos and stay put for everything else; "
            "that alone can hide a person rather than remove them: the attacks below tell which.")
    result = removal.result
    timings = result.timings
    st.markdown(f"**Guarantee**: {guarantee_text(result)}.")
    st.caption(
        f"{len(result.selected_slices)} slice(s) selected, {result.parameters_updated:,} "
        f"parameters updated ({result.parameter_share:.2%} of the model); sigma = "
        f"{result.sigma:.3g}; took {timings.get('unlearn_s', 0):.1f} s (probe "
        f"{timings.get('probe_s', 0):.1f} s, select {timings.get('select_s', 0):.1f} s, step "
        f"{timings.get('newton_s', 0):.1f} s). Model hash {removal.hash_after[:12]}.")
    if removal.attacks:
        with st.expander("Attacks: hidden or removed?", icon=":material/search:"):
            attack_table(removal)
    if result.diagnostics.get("step"):
        with st.expander("How the step was chosen", icon=":material/straighten:"):
            step_details(result)


def history_table(bench: Workbench) -> None:
    rows = [{"#": i, "removed": r.label, "method": r.config.method,
             "outcome": r.verdict.status.replace("_", " "),
             "forgotten acc.": pct(r.after["forget_accuracy"]),
             "retained acc.": pct(r.after["retain_accuracy"]),
             "slices": len(r.result.selected_slices), "sigma": f"{r.result.sigma:.3g}",
             "guarantee": r.result.guarantee,
             "seconds": round(r.result.timings.get("unlearn_s", 0.0), 2)}
            for i, r in enumerate(bench.history, start=1)]
    st.dataframe(pd.DataFrame(rows), hide_index=True)


def removal_chooser(bench: Workbench, key: str) -> tuple[int, Removal]:
    """Pick one removal of the history (default: the latest). Returns (position, removal)."""
    if len(bench.history) == 1:
        return 0, bench.history[0]
    position = st.selectbox("Removal", list(range(len(bench.history))),
                            index=len(bench.history) - 1, key=key,
                            format_func=lambda i: f"{i + 1}. {bench.history[i].label}")
    return position, bench.history[position]


def model_before(bench: Workbench, position: int):
    """The model a removal started from."""
    return bench.history[position - 1].model if position > 0 else bench.original


def stationarity_notice(bench: Workbench) -> None:
    """Warn when the session's base model is far from a stationary point of its training
    objective (an uploaded checkpoint whose head was never polished), and offer to polish it."""
    import copy

    from lcodec_core.removal import stationarity_of
    from lcodec_models import Checkpoint
    from lcodec_models.stationarity import polish_head

    from . import state
    cache = st.session_state.setdefault("stationarity_by_base", {})
    train = bench.bundle.train
    if bench.base_hash not in cache:
        cache[bench.base_hash] = stationarity_of(Checkpoint(bench.original, bench.metadata),
                                                 train.images, train.targets)
    found = cache[bench.base_hash]
    if not found.get("warning"):
        return
    st.warning(f"This model is far from a stationary point of its training objective (|grad F| = "
               f"{found['grad_norm']:.2g}, of which the head {found['head_grad_norm']:.2g}). Part of "
               "any update would then happen even with nothing removed. Polishing the head (the "
               "last linear layer) to its optimum takes a few seconds and changes nothing else.",
               icon=":material/warning:")
    if st.button("Polish the head first", key="polish_head", disabled=bool(bench.history),
                 help="Only before the first removal of this session."):
        model = copy.deepcopy(bench.original)
        polish = polish_head(model, train.images, train.targets, bench.weight_decay)
        metadata = {k: v for k, v in bench.metadata.items() if k != "stationarity"}  # measured anew
        state.use_upload(Checkpoint(model.eval(), metadata), bench.bundle)
        st.toast(f"Head polished: |grad F| of the head {polish.get('grad_norm_before', 0):.2g} -> "
                 f"{polish.get('grad_norm_after', 0):.2g}")
        st.rerun()
