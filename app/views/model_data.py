"""Model and data: pick the data set and zoo model, see its accuracy and the gallery of people."""
import streamlit as st

from lcodec_app import state
from lcodec_app.widgets import explain, face, pct
from lcodec_app.workbench import DATASET_LABELS, MODEL_LABELS, ZOO, ModelKey
from models import accuracy

bench = st.session_state.workbench
bundle, meta = bench.bundle, bench.metadata

st.title("Model and data")

with st.container(border=True):
    cols = st.columns(2)
    dataset = cols[0].selectbox("Data set", list(ZOO), index=list(ZOO).index(bench.key.dataset),
                                format_func=DATASET_LABELS.get, key="md_dataset")
    models = list(ZOO[dataset])
    model = cols[1].selectbox(
        "Model", models, index=models.index(bench.key.model) if bench.key.model in models else 0,
        format_func=MODEL_LABELS.get, key="md_model")
    wanted = ModelKey(dataset, model)
    if wanted != bench.key:
        note = (f" This drops the {len(bench.history)} removal(s) of this session."
                if bench.history else "")
        st.warning(f"Switch to {MODEL_LABELS[model]} on {dataset}?{note} A model not yet "
                   "cached is trained first (progress shown).", icon=":material/swap_horiz:")
        if st.button("Switch model", type="primary", key="md_switch"):
            state.set_model_key(wanted)
            st.rerun()
    explain("The built-in models are trained once on this machine and cached; every browser "
            "session then works on its own copy.")

st.subheader("Accuracy")
cols = st.columns(4)
cols[0].metric("Training accuracy", pct(meta.get("train_accuracy", float("nan"))))
cols[1].metric("Held-out accuracy", pct(meta.get("test_accuracy", float("nan"))))
cols[2].metric("Training / held-out images", f"{len(bundle.train)} / {len(bundle.test)}")
cols[3].metric("Parameters", f"{sum(p.numel() for p in bench.original.parameters()):,}")
if bench.history:
    now = accuracy(bench.current, bundle.test.images, bundle.test.targets)
    st.metric("Held-out accuracy of this session's model (all people)", pct(now),
              f"{(now - meta.get('test_accuracy', now)) * 100:+.1f} pts",
              help="After the removals of this session: it drops partly because the removed "
                   "people's held-out photos are now (rightly) misrecognised.")
explain("Training accuracy is on the photos the model learned from; held-out accuracy on "
        "photos it never saw. A large gap means the model memorises its training photos, which "
        "is exactly what unlearning has to undo.")
with st.expander("Training recipe", icon=":material/receipt_long:"):
    st.json(meta.get("recipe", {}))
    explain("The recipe is stored in the checkpoint so the Audit page can retrain the same "
            "model from scratch without the removed photos, as the reference.")

st.subheader("Gallery")
explain("One training photo per person (or class). Choose one to go and forget it.")
with st.container(horizontal=True, gap="small", key="md_gallery"):
    for identity in range(bundle.num_classes):
        with st.container(width=96, key=f"md_cell_{identity}"):
            st.image(face(bench, identity), width=80)
            label = bench.class_names[identity]
            if identity in bench.removed_identities:
                st.caption(f"~~{label}~~ removed")
            elif st.button(label, key=f"md_pick_{identity}", type="tertiary",
                           help=f"Forget {label}"):
                state.set_identity(identity)
                st.switch_page("views/forget.py")
