"""Larger page sections used on more than one page: a removal's result and the history."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from . import charts
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


def result_panel(bench: Workbench, removal: Removal, chart_key: str) -> None:
    """What a removal did: the numbers, a before/after chart, and how it was done."""
    st.success(f"Removed {removal.label}.", icon=":material/check_circle:")
    result_metrics(removal)
    st.plotly_chart(charts.accuracy_bars({"original": removal.before, "unlearned": removal.after}),
                    key=chart_key, config={"displayModeBar": False})
    explain("Each pair of bars is one group of photos: grey before the removal, red after. "
            "Forgetting worked when the red bar drops for the forgotten photos and stays put "
            "for everything else.")
    result = removal.result
    timings = result.timings
    st.caption(
        f"{len(result.selected_slices)} slice(s) selected, {result.parameters_updated:,} "
        f"parameters updated ({result.parameter_share:.2%} of the model); sigma = "
        f"{result.sigma:.3g}; took {timings.get('unlearn_s', 0):.1f} s (probe "
        f"{timings.get('probe_s', 0):.1f} s, select {timings.get('select_s', 0):.1f} s, Newton "
        f"{timings.get('newton_s', 0):.1f} s). Model hash {removal.hash_after[:12]}.")


def history_table(bench: Workbench) -> None:
    rows = [{"#": i, "removed": r.label, "method": r.config.method,
             "forgotten acc.": pct(r.after["forget_accuracy"]),
             "retained acc.": pct(r.after["retain_accuracy"]),
             "slices": len(r.result.selected_slices), "sigma": f"{r.result.sigma:.3g}",
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
