"""Start here: a guided first removal on the default model, in three steps."""
import streamlit as st

from lcodec_app import state, work
from lcodec_app.jobs import Job
from lcodec_app.panels import result_panel
from lcodec_app.widgets import explain, face, identity_picker, job_progress, pct, show_job_error, \
    thumbnails
from lcodec_core.unlearning.config import UnlearnConfig
from lcodec_core.requests import make_request

bench = st.session_state.workbench
bundle, meta = bench.bundle, bench.metadata
people = "people" if bench.key.dataset == "olivetti" else "classes"

st.title("Make a model forget a person")
st.markdown(
    f"This classifier has learned to recognise **{bundle.num_classes} {people}** from "
    f"{len(bundle.train)} training photos. *Machine unlearning* changes the trained model so it "
    "behaves as if one person's photos had never been in the training set, without training "
    "again from scratch. Three steps:")

with st.container(border=True):
    st.subheader("1. The model", divider="gray")
    cols = st.columns(3)
    cols[0].metric("Held-out accuracy", pct(meta.get("test_accuracy", float("nan"))),
                   help="Share of photos the model never saw in training that it recognises.")
    cols[1].metric("Training photos", f"{len(bundle.train)}")
    cols[2].metric(people.capitalize(), f"{bundle.num_classes}")
    explain("Held-out accuracy is measured on photos kept aside during training, so it shows "
            "how well the model recognises people, not how well it memorised.")

with st.container(border=True):
    st.subheader("2. Pick someone to forget", divider="gray")
    identity = identity_picker(bench, key="start_identity")
    forget_indices = bundle.train.indices_of(identity)
    thumbnails(bench, forget_indices, width=64)
    explain(f"These {len(forget_indices)} training photos of {bench.class_names[identity]} "
            "are what the model will forget.")
    if identity not in bench.removed_identities:
        now = bench.metrics(bench.current, bench.current_hash, make_request(
            bundle, identity=identity, already_removed=bench.removed_indices))
        cols = st.columns(2)
        cols[0].metric("Their photos recognised now", pct(now["forget_accuracy"]),
                       help="Share of these training photos the model names correctly today.")
        cols[1].metric("Everyone else's photos", pct(now["retain_accuracy"]),
                       help="Share of all other training photos it names correctly.")

with st.container(border=True):
    st.subheader("3. Remove them", divider="gray")
    already = identity in bench.removed_identities
    job = state.current_job()
    busy = job is not None and not job.done
    clicked = st.button(f"Forget {bench.class_names[identity]}", type="primary",
                        icon=":material/person_remove:", disabled=busy or already,
                        key="start_run")
    if already:
        st.caption("Already removed in this session: pick someone else, or undo on the Forget page.")
    else:
        explain("Uses the engine's default settings (the same as the Forget page and the "
                "command line); progress is shown while it runs. The model is probed with "
                "jiggled copies of these photos, the few filters that carry them are chosen, "
                "and only those are updated, just far enough that they are no longer recognised. "
                "The result is then checked, not assumed.")
    if clicked:
        request = make_request(bundle, identity=identity, already_removed=bench.removed_indices)
        state.start_job(Job("unlearn", f"Forgetting {bench.class_names[identity]}",
                            work.removal_work(bench, request, UnlearnConfig()),
                            payload={"identity": identity}))
        st.rerun()
    job_progress(("unlearn",))
    show_job_error("unlearn")
    if bench.history:
        last = bench.history[-1]
        result_panel(bench, last, chart_key="start_result_chart")
        st.image(face(bench, last.request.identity) if last.request.identity is not None else
                 bundle.to_pixels(last.request.forget.images[0]), width=96,
                 caption="forgotten")

st.subheader("What next?")
cols = st.columns(3)
with cols[0]:
    st.page_link("views/slices.py", label="See which slices changed", icon=":material/grid_on:")
with cols[1]:
    st.page_link("views/before_after.py", label="Where it looks now",
                 icon=":material/compare:")
with cols[2]:
    st.page_link("views/audit.py", label="Compare with retraining",
                 icon=":material/fact_check:")
