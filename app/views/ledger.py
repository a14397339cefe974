"""Ledger: the recorded removals behind this session's model, and the privacy they cost."""
import streamlit as st

from lcodec_app import records
from lcodec_app.widgets import explain

bench = st.session_state.workbench

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
cols[1].metric("Cumulative epsilon", records.epsilon_text(view.model_cost),
               help="Sum of the epsilons of the removals that produced this model (basic "
                    "composition). 'none': one of them is not certified (no noise, or noise "
                    "whose bound does not apply), so no formal guarantee is claimed.")
cols[2].metric("Cumulative delta", records.delta_text(view.model_cost))
if view.model_rows:
    st.dataframe(records.rows_frame(view.model_rows), hide_index=True, key="ledger_model_rows")
else:
    st.caption("No removal is behind this model yet: it is the lineage's starting point.")
explain("Outcome: what the numbers after the removal showed (forgotten, still recognised, "
        "damaged or unchanged) and how many of the removed photos the model still recognised. "
        "Guarantee: 'certified' only when every assumption of the noise bound held; then the "
        "removal is (epsilon, delta)-forgetting, and removals compose by adding up their "
        "epsilons and deltas. Without noise ('none'), or with noise the bound does not cover "
        "('heuristic'), no epsilon is recorded and no model after it has a guarantee "
        "(epsilon shows 'none').")

st.subheader("Its lineage, every branch")
st.markdown(f"Root model `{view.lineage[:16]}`: {view.lineage_cost.describe()}. This counts "
            "every removal from this base model, in every session, undone ones included: an "
            "upper bound for any model of the lineage.")
if view.lineage_rows:
    st.dataframe(records.rows_frame(view.lineage_rows), hide_index=True, key="ledger_lineage_rows")

st.subheader("All lineages")
if view.lineages:
    st.dataframe(records.lineages_frame(view.lineages), hide_index=True, key="ledger_lineages")
else:
    st.caption("The ledger is empty.")
st.caption(f"Ledger file: `{view.path}`")
