"""lcodec dashboard entry point: ``streamlit run app/streamlit_app.py``."""
import streamlit as st

from lcodec_core.zoo_cache import load_or_train

st.set_page_config(page_title="lcodec", layout="wide")
st.title("lcodec: remove a person from a face classifier")


@st.cache_resource(show_spinner="Preparing the default model (first run trains it)...")
def default_model():
    return load_or_train("olivetti")


checkpoint, bundle = default_model()
meta = checkpoint.metadata
st.metric("Held-out accuracy", f"{meta.get('test_accuracy', float('nan')):.1%}")
st.write(f"Model **{meta['model']}** trained on **{meta['n']}** Olivetti faces "
         f"({bundle.num_classes} people).")
