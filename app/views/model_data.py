"""Model and data: pick the data set and zoo model, see its accuracy and the gallery of people."""
import dataclasses

import streamlit as st

from lcodec_app import state, uploads
from lcodec_app.jobs import Job
from lcodec_app.widgets import busy, explain, face, job_progress, pct, points, show_job_error
from lcodec_app.workbench import DATASET_LABELS, MODEL_LABELS, ZOO, ModelKey
from lcodec_core.progress import training_progress
from lcodec_models import accuracy, default_recipe, train

bench = st.session_state.workbench
bundle, meta = bench.bundle, bench.metadata

st.title("Model and data")

with st.container(border=True):
    if state.is_upload(bench.key):
        st.info(f"This session works on your upload ({bundle.num_classes} classes, "
                f"{len(bundle.train)} training images). Pick a built-in model below to go back.",
                icon=":material/upload_file:")
    cols = st.columns(2)
    dataset = cols[0].selectbox("Data set", list(ZOO),
                                index=list(ZOO).index(bench.key.dataset) if bench.key.dataset in ZOO
                                else 0, format_func=DATASET_LABELS.get, key="md_dataset")
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

with st.expander("Use your own model or photos", icon=":material/upload:"):
    st.markdown("- **Photos**: a zip with one folder per person (`alice/1.png`, `bob/1.jpg`, ...); "
                "images are made grey and 64x64.\n"
                "- **Model**: an lcodec checkpoint (`.pt`, e.g. downloaded from the Audit page), "
                "for a built-in data set or for the zip above. Without one, a small CNN is "
                "trained on your photos.")
    zip_file = st.file_uploader("Photos (zip)", type=["zip"], key="md_zip")
    checkpoint_file = st.file_uploader("Model checkpoint (.pt)", type=["pt"], key="md_ckpt")
    explain(f"Uploads stay in this session only, up to {uploads.MAX_UPLOAD_BYTES // 2**20} MB "
            "each. Checkpoints are read as plain tensors: code hidden in a file never runs.")
    if st.button("Use the upload", key="md_use_upload", disabled=busy() or not (
            zip_file or checkpoint_file)):
        try:
            data = uploads.load_image_zip(zip_file.getvalue(), zip_file.name) if zip_file else None
            checkpoint = (uploads.load_uploaded_checkpoint(checkpoint_file.getvalue())
                          if checkpoint_file else None)
            if data is None:
                dataset = checkpoint.metadata.get("dataset")
                if dataset not in ZOO:
                    raise uploads.UploadError(
                        f"the checkpoint was trained on {dataset!r}; upload its photos as a zip "
                        f"too (built-in data sets: {', '.join(ZOO)})")
                data = state.shared_bundle(dataset, int(checkpoint.metadata.get("data_seed", 0)))
                data = dataclasses.replace(data, name=f"upload:{dataset}")
            if checkpoint is not None:
                uploads.check_compatible(checkpoint, data)
        except uploads.UploadError as error:
            st.error(f"Upload refused: {error}", icon=":material/block:")
        else:
            if checkpoint is not None:
                state.use_upload(checkpoint, data)
                st.rerun()
            recipe = default_recipe("folder", "small_cnn")

            def work(report, data=data, recipe=recipe):
                checkpoint = train("small_cnn", data.train, recipe, test=data.test,
                                   on_progress=training_progress(report, "train", "training"))
                checkpoint.metadata.update({"dataset": data.name, "data_seed": data.seed})
                return checkpoint

            state.start_job(Job("train", f"Training a small CNN on {len(data.train)} photos",
                                work, payload={"bundle": data}))
            st.rerun()
    job_progress(("train",))
    show_job_error("train")

st.subheader("Accuracy")
cols = st.columns(4)
cols[0].metric("Training accuracy", pct(meta.get("train_accuracy", float("nan"))))
cols[1].metric("Held-out accuracy", pct(meta.get("test_accuracy", float("nan"))))
cols[2].metric("Training / held-out images", f"{len(bundle.train)} / {len(bundle.test)}")
cols[3].metric("Parameters", f"{sum(p.numel() for p in bench.original.parameters()):,}")
if bench.history:
    now = accuracy(bench.current, bundle.test.images, bundle.test.targets)
    st.metric("Held-out accuracy of this session's model (all people)", pct(now),
              points(meta.get("test_accuracy"), now),
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
