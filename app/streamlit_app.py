"""lcodec dashboard: remove a person from a face classifier, and see what changed.

Run with ``streamlit run app/streamlit_app.py`` (``make demo``). This script sets up the
session (the shared base model, this session's private copy, the URL) and hands over to one
page of ``app/views``; the logic lives in ``app/lcodec_app``.
"""
import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR) not in sys.path:  # `streamlit run` adds it; the test harness does not
    sys.path.insert(0, str(APP_DIR))

import streamlit as st  # noqa: E402

from lcodec_core.data import DataError  # noqa: E402
from lcodec_core.progress import training_progress  # noqa: E402
from lcodec_app import state, widgets  # noqa: E402
from lcodec_app.workbench import DATASET_LABELS, MODEL_LABELS  # noqa: E402
from lcodec_models import CheckpointError  # noqa: E402

st.set_page_config(page_title="lcodec: machine unlearning", page_icon=":material/person_remove:",
                   layout="wide")

PAGES = [
    st.Page("views/start.py", title="Start here", icon=":material/school:", default=True),
    st.Page("views/how_it_works.py", title="How it works", icon=":material/lightbulb:",
            url_path="how-it-works"),
    st.Page("views/model_data.py", title="Model and data", icon=":material/dataset:",
            url_path="model"),
    st.Page("views/forget.py", title="Forget", icon=":material/person_remove:"),
    st.Page("views/slices.py", title="Slices", icon=":material/grid_on:"),
    st.Page("views/before_after.py", title="Before and after", icon=":material/compare:",
            url_path="before-after"),
    st.Page("views/live_accuracy.py", title="Live accuracy", icon=":material/monitoring:",
            url_path="live"),
    st.Page("views/audit.py", title="Audit", icon=":material/fact_check:"),
    st.Page("views/ledger.py", title="Ledger", icon=":material/receipt_long:"),
]
page = st.navigation(PAGES)
state.init_session()
key = st.session_state.model_key

try:
    if state.needs_training(key):
        bar = st.progress(0.0, text=f"Training the {key.model} on {key.dataset} once "
                                    f"(it is cached afterwards)...")
        state.train_base(key, training_progress(
            lambda event: bar.progress(event["fraction"], text=event["message"]), "train",
            f"Training the {key.model} on {key.dataset}"))
        bar.empty()
    base = state.session_base()
except (DataError, CheckpointError, OSError) as error:
    st.error(f"The {key.dataset} data or the {key.model} model could not be loaded: {error}",
             icon=":material/error:")
    st.stop()

bench = state.workbench(base)
widgets.show_url_warnings(bench)   # ?identity=999 or ?dataset=foo: say so, once per session
widgets.show_session_notice()      # after a reload: what was restored, or that it was lost
# Streamlit's "Stop" in the header stops drawing the page, not a job: the jobs' own Stop is
# the one Stop (widgets.stop_control), so the header's is hidden.
st.html("<style>[data-testid='stStatusWidget'] {visibility: hidden;}</style>")
finished = state.collect_finished_job(bench)
if finished is not None and finished.kind == "train" and finished.error is None:
    st.rerun()  # the session now works on the model trained on its upload

with st.sidebar:
    dataset_label = (f"Your images ({base.bundle.num_classes} classes)" if state.is_upload(key)
                     else DATASET_LABELS.get(key.dataset, key.dataset))
    st.markdown(f"**{dataset_label}**  \n{MODEL_LABELS.get(key.model, key.model)}")
    removed = len(bench.history)
    st.caption(f"This session: {removed} removal{'s' if removed != 1 else ''} "
               f"· model {bench.current_hash[:10]}")
    if widgets.busy():
        widgets.job_badge()
    st.caption("Your changes are private to this browser tab and survive a reload (for 30 "
               "minutes after the tab closes); the shared model is never edited.")

try:
    page.run()
finally:  # also after st.stop() or a rerun: the URL shows what the page just chose
    state.sync_url()
    state.save_session()
widgets.fold_sidebar_when_narrow(page.url_path)
