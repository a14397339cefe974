"""Live accuracy: removals one after another, with accuracy drawn as they happen."""
import random

import pandas as pd
import streamlit as st

from lcodec_app import charts, state, work
from lcodec_app.jobs import Job
from lcodec_app.widgets import (busy, explain, job_progress, number, pct, people_words,
                                settings_form, show_job_error)
from lcodec_core.unlearning.config import UnlearnConfig

bench = st.session_state.workbench
bundle = bench.bundle

st.title("Live accuracy")
st.markdown("Remove people (or single photos) one after another and watch three numbers: how "
            "well the model still recognises what was removed, what was kept, and photos it "
            "never saw. This page experiments on a copy: the session's model is not changed.")

mode = st.segmented_control("Remove", ["Person after person", "Photo after photo"],
                            default="Person after person", required=True, key="live_mode")
gone = set(bench.removed_identities)
removed = set(bench.removed_indices)
if mode == "Person after person":
    candidates = [k for k in range(bundle.num_classes) if k not in gone]
    people = st.multiselect("People, in order", candidates, default=candidates[:4],
                            format_func=lambda k: bench.class_names[k], key="live_people",
                            max_selections=10)
    targets = [{"identity": k} for k in people]
else:
    cols = st.columns(2)
    count = cols[0].number_input("How many photos", 1, 20, 5, key="live_count")
    seed = cols[1].number_input("Random seed", 0, 10_000, 0, key="live_seed",
                                help="Which training photos are drawn, at random.")
    pool = [i for i in range(len(bundle.train)) if i not in removed]
    picks = random.Random(int(seed)).sample(pool, min(int(count), len(pool)))
    targets = [{"indices": [i]} for i in picks]
    st.caption("Photos: " + ", ".join(f"#{i} ({bench.class_names[int(bundle.train.targets[i])]})"
                                      for i in picks))

reference = st.radio(
    "Reference: retrain from scratch without the removed photos",
    ["none", "final", "each"], index=1, horizontal=True, key="live_reference",
    format_func={"none": "never", "final": "once, at the end",
                 "each": "after every removal (slow)"}.get,
    help="Retraining is what unlearning imitates; each retraining takes as long as the first "
         "training of the model.")
with st.expander("Settings for each removal", icon=":material/tune:"):
    config = settings_form("live", UnlearnConfig())

job = state.current_job()
running = job is not None and job.kind == "live" and not job.done
if st.button("Start", type="primary", icon=":material/play_arrow:", key="live_start",
             disabled=busy() or not targets):
    state.start_job(Job("live", f"Removing {len(targets)} one after another",
                        work.live_work(bench, targets, config, reference)))
    st.rerun()

job_progress(("live",))
show_job_error("live")


@st.fragment(run_every=1.0 if running else None)
def live_chart() -> None:
    job = state.current_job()
    if job is None or job.kind != "live":
        job = state.last_finished("live")
    if job is None:
        st.info("Press Start to begin; the chart fills in after each removal.",
                icon=":material/monitoring:")
        return
    events, _ = job.snapshot()
    rows = [e["row"] for e in events if e.get("phase") == "step"]
    reference_rows = [e["row"] for e in events if e.get("phase") == "reference"]
    st.plotly_chart(charts.live_accuracy(rows, reference_rows), key="live_chart",
                    config={"displayModeBar": False})
    explain("Red: the removed photos (should fall towards what a retrained model scores, ~0% "
            "for whole people). Green: the kept training photos. Blue: never-seen photos of "
            "people still in the model. Diamonds: a model retrained from scratch without "
            "the removed photos, the reference to aim for.")
    if rows:
        table = pd.DataFrame(rows)
        # The pages' words: "person 05" (the engine says "identity 5"), and "–" for a number
        # that does not exist (held-out photos of a removed person when photos were removed).
        if "removed" in table:
            table["removed"] = [("nothing yet" if r == "(none)"
                                 else people_words(str(r), bench.class_names))
                                for r in table["removed"]]
        for column in charts.METRIC_LABELS:
            if column in table:
                table[column] = [pct(v) for v in table[column]]
        if "seconds" in table:
            table["seconds"] = [number(v, ".1f") for v in table["seconds"]]
        st.dataframe(table.rename(columns=charts.METRIC_LABELS), hide_index=True)


live_chart()
