"""Forget: remove a person or single training photos, with settings, progress, undo and reset."""
import streamlit as st

from lcodec_app import state, work
from lcodec_app.jobs import Job
from lcodec_app.panels import history_table, result_panel, stationarity_notice
from lcodec_app.widgets import busy, explain, identity_picker, job_progress, settings_form, \
    show_job_error, thumbnails
from lcodec_core.unlearning.config import UnlearnConfig
from lcodec_core.requests import make_request

bench = st.session_state.workbench
bundle = bench.bundle

st.title("Forget")
st.markdown("Choose what the model should forget, adjust the settings if you like, and run. "
            "Each removal applies to this session's copy of the model; undo and reset bring "
            "earlier versions back.")
stationarity_notice(bench)

what = st.segmented_control("What to forget", ["A whole person", "Single photos"],
                            default="A whole person", required=True, key="forget_mode")
identity = identity_picker(bench, key="forget_identity")
removed = set(bench.removed_indices)
photos = [i for i in bundle.train.indices_of(identity) if i not in removed]

if identity in bench.removed_identities:
    st.info(f"{bench.class_names[identity]} was already removed in this session. Pick someone "
            "else, or undo below.", icon=":material/person_off:")
    chosen = []
elif what == "A whole person":
    thumbnails(bench, photos, captions=[f"#{i}" for i in photos], width=64)
    explain(f"All {len(photos)} remaining training photos of {bench.class_names[identity]} "
            "will be forgotten. Their held-out photos stay untouched, to test recognition.")
    chosen = photos
else:
    chosen = st.multiselect("Photos to forget", photos, default=photos[:1], key="forget_photos",
                            format_func=lambda i: f"photo #{i}",
                            help="Training photos of this person; pick one or more.")
    thumbnails(bench, chosen, captions=[f"#{i}" for i in chosen], width=64)
    explain("Forgetting single photos should change little: the model still knows the person "
            "from their other photos. The target is what a model retrained without them does.")

with st.expander("Settings", icon=":material/tune:"):
    config = settings_form("forget", UnlearnConfig())
    explain("These start at the engine's defaults, the same as Start here and the command "
            "line. More perturbations or slices make the choice of slices steadier and slower; "
            "the step's size is chosen for each request, and the result is checked afterwards.")

if config.epsilon is not None and chosen:
    try:
        sigma, typical = work.noise_preview(bench, config, len(chosen),
                                              len(bundle.train) - len(removed) - len(chosen))
    except ValueError as error:
        st.error(f"These noise settings cannot be used: {error}", icon=":material/error:")
    else:
        if sigma > typical:
            st.warning(
                f"This noise is large: sigma = {sigma:.3g}, while a typical weight of the model "
                f"is {typical:.3g} (median absolute weight). It will likely wreck the model, and "
                "it certifies (epsilon, delta) only when every assumption of the bound holds "
                "(the guarantee is shown after the run). "
                + ("You chose to keep a wrecked model anyway." if config.allow_harmful_noise else
                   "A removal that would leave the kept photos near chance is refused and "
                   "nothing changes, unless you tick 'Keep a wrecked model anyway'."),
                icon=":material/warning:")
        else:
            st.caption(f":material/info: Noise: sigma = {sigma:.3g} (median absolute weight "
                       f"{typical:.3g}).")

blocked = None
if not chosen:
    blocked = "Nothing left to forget for this choice."
elif busy():
    blocked = "A job is running in this session."
if st.button("Run removal", type="primary", icon=":material/play_arrow:",
             disabled=blocked is not None, key="forget_run"):
    try:
        if what == "A whole person":
            request = make_request(bundle, identity=identity, already_removed=sorted(removed))
        else:
            request = make_request(bundle, indices=chosen, already_removed=sorted(removed))
    except ValueError as error:
        st.error(str(error))
    else:
        state.start_job(Job("unlearn", f"Forgetting {request.description}",
                            work.removal_work(bench, request, config)))
        st.rerun()
if blocked and chosen:
    st.caption(blocked)

job_progress(("unlearn",))
show_job_error("unlearn")

if bench.history:
    result_panel(bench, bench.history[-1], chart_key="forget_result_chart")
    cols = st.columns([1, 1, 2])
    cols[0].button("Undo", icon=":material/undo:", disabled=busy(), key="forget_undo",
                   on_click=bench.undo)
    cols[1].button("Reset to original", icon=":material/restart_alt:", disabled=busy(),
                   key="forget_reset", on_click=bench.reset)
    st.subheader("Removals in this session")
    history_table(bench)
    explain("Removals stack up: each starts from the model the previous one produced.")
