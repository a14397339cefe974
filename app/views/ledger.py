"""Ledger: the recorded removals behind this session's model, and the privacy they cost."""
import math

import pandas as pd
import streamlit as st

from lcodec_app import records
from lcodec_app.widgets import MISSING, NO_GUARANTEE, epsilon_text, explain, number, person
from lcodec_core.unlearning.guarantee import GUARANTEES

bench = st.session_state.workbench


def removed_text(row) -> str:
    """What a ledger row removed, in the pages' words: "person 05 (8 photos)"."""
    count = len(row.forget_indices)
    if row.identity is None:
        return f"{count} photo{'s' if count != 1 else ''} {row.forget_indices[:8]}"
    names = bench.class_names if row.dataset == bench.key.dataset else None
    return f"{person(row.identity, names)} ({count} photo{'s' if count != 1 else ''})"


def rows_table(rows) -> pd.DataFrame:
    """records.rows_frame in the pages' vocabulary: people as "person NN", the guarantee in
    words, "no guarantee" for a missing epsilon and "–" for other missing numbers."""
    frame = records.rows_frame(rows)
    ordered = list(reversed(rows))  # rows_frame lists the newest first
    frame["removed"] = [removed_text(row) for row in ordered]
    frame["guarantee"] = [GUARANTEES.get(g, g) if g != "not recorded" else g
                          for g in frame["guarantee"]]
    frame["epsilon"] = [epsilon_text(row.epsilon) if row.noised else NO_GUARANTEE
                        for row in ordered]
    frame["delta"] = [number(row.delta) if row.noised else MISSING for row in ordered]
    frame["sigma"] = [number(row.sigma) for row in ordered]
    return frame


def lineages_table(lineages) -> pd.DataFrame:
    frame = records.lineages_frame(lineages)
    costs = list(lineages.values())
    frame["cumulative epsilon"] = [epsilon_text(c.epsilon) if c.has_guarantee else NO_GUARANTEE
                                   for c in costs]
    frame["cumulative delta"] = [number(c.delta) if c.has_guarantee else MISSING for c in costs]
    return frame


def cost_text(cost) -> str:
    """PrivacyCost.describe without "epsilon = inf": the one wording for no guarantee."""
    plural = "s" if cost.removals != 1 else ""
    if not cost.has_guarantee:
        return (f"{NO_GUARANTEE}: {cost.unnoised} of {cost.removals} removal{plural} ran "
                "without a certified noise bound")
    if math.isfinite(cost.epsilon):
        return (f"epsilon {cost.epsilon:.4g}, delta {cost.delta:.3g} over {cost.removals} "
                f"removal{plural}")
    return NO_GUARANTEE

st.title("Deletion ledger")
st.markdown("Every completed removal, from this dashboard or the `lcodec` command line, is "
            "recorded in a ledger on this machine: when, which model (by fingerprint), what was "
            "removed, how, its outcome, and the privacy it cost. Undoing a removal here does not erase its "
            "record. On the command line: `python -m lcodec_core ledger`.")
warning = st.session_state.get("ledger_warning")
if warning:
    st.warning(warning, icon=":material/warning:")
view, problem = records.ledger_view(bench)
if view is None:
    st.warning(f"The deletion ledger is unavailable, so it cannot be shown: {problem}",
               icon=":material/warning:")
    st.stop()

st.subheader("This model")
cols = st.columns(3)
cols[0].metric("Removals behind this model", len(view.model_rows))
cost = view.model_cost
cols[1].metric("Cumulative epsilon", epsilon_text(cost.epsilon) if cost.has_guarantee
               else NO_GUARANTEE,
               help="Sum of the epsilons of the removals that produced this model (basic "
                    f"composition). '{NO_GUARANTEE}': one of them is not certified (no noise, "
                    "or noise whose bound does not apply), so no formal guarantee is claimed.")
cols[2].metric("Cumulative delta", number(cost.delta) if cost.has_guarantee else MISSING,
               help=f"'{MISSING}' when there is no guarantee.")
if view.model_rows:
    st.dataframe(rows_table(view.model_rows), hide_index=True, key="ledger_model_rows")
else:
    st.caption("No removal is behind this model yet: it is the lineage's starting point.")
explain("Outcome: what the numbers after the removal showed (forgotten, still recognised, "
        "damaged or unchanged) and how many of the removed photos the model still recognised. "
        "Guarantee: certified only when every assumption of the noise bound held; then the "
        "removal is (epsilon, delta)-forgetting, and removals compose by adding up their "
        "epsilons and deltas. Without noise, or with noise the bound does not cover "
        f"(heuristic), no epsilon is recorded and no model after it has a guarantee (epsilon "
        f"shows '{NO_GUARANTEE}', delta '{MISSING}').")

st.subheader("Its lineage, every branch")
st.markdown(f"Root model `{view.lineage[:16]}`: {cost_text(view.lineage_cost)}. This counts "
            "every removal from this base model, in every session, undone ones included: an "
            "upper bound for any model of the lineage.")
if view.lineage_rows:
    st.dataframe(rows_table(view.lineage_rows), hide_index=True, key="ledger_lineage_rows")

st.subheader("All lineages")
if view.lineages:
    st.dataframe(lineages_table(view.lineages), hide_index=True, key="ledger_lineages")
else:
    st.caption("The ledger is empty.")
st.caption(f"Ledger file: `{view.path}`")
