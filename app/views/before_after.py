"""Before and after: where the original and the unlearned model look (Captum), side by side."""
import numpy as np
import streamlit as st
import torch

from lcodec_app import attributions, charts
from lcodec_app.panels import model_before, removal_chooser
from lcodec_app.widgets import explain, require_removal

bench = st.session_state.workbench
bundle = bench.bundle
names = bench.class_names

st.title("Before and after")
st.markdown("Attribution maps show which pixels a model uses as evidence for a person. After "
            "forgetting someone, the evidence for them on their own photos should fade, while "
            "the maps on other people's photos stay much the same.")
if not require_removal(bench):
    st.stop()

position, removal = removal_chooser(bench, key="ba_removal")
before, after = model_before(bench, position), removal.model
request = removal.request

convs = attributions.conv_layers(before)
cols = st.columns(3)
if convs:
    layer = cols[0].selectbox("Layer", convs, index=len(convs) - 1, key="ba_layer",
                              help="Grad-CAM looks at one convolution layer; the last one sees "
                                   "the most person-specific features.")
    view = cols[1].segmented_control(
        "Map", ["Grad-CAM", "Selected channels"], default="Grad-CAM", required=True,
        key="ba_view", help="Grad-CAM: evidence for the person. Selected channels: the activation "
                            "of the slices this removal changed in that layer.")
else:
    layer, view = None, "Grad-CAM"
    cols[0].caption("This model has no convolution layer: the maps show input-gradient "
                    "saliency instead of Grad-CAM.")
count = cols[2].slider("Photos per group", 1, 4, 2, key="ba_count")

# The forgotten person's photos (removed training photos, then their held-out photos) and
# photos of people who were kept.
forgot = [("train", i) for i in request.forget_indices[:count]]
if request.identity is not None:
    forgot += [("test", i) for i in bundle.test.indices_of(request.identity)[:max(count - 1, 1)]]
gone = set(bench.removed_identities)
others = [("test", i) for i in range(len(bundle.test)) if int(bundle.test.targets[i]) not in gone]
others = others[:: max(len(others) // count, 1)][:count]


def batch(items):
    images = torch.stack([(bundle.train if s == "train" else bundle.test).images[i] for s, i in items])
    targets = torch.tensor([int((bundle.train if s == "train" else bundle.test).targets[i])
                            for s, i in items])
    return images, targets


selected_channels = [s.index for s in removal.result.selected_slices if s.module == layer]
if view == "Selected channels" and not selected_channels:
    st.info(f"No slice of {layer} was selected by this removal; showing Grad-CAM instead.")
    view = "Grad-CAM"

groups = {"The forgotten photos": forgot, "Other people (kept)": others}
maps = {}
for title, items in groups.items():
    images, targets = batch(items)
    if view == "Grad-CAM":
        maps[title] = (attributions.gradcam(before, layer, images, targets),
                       attributions.gradcam(after, layer, images, targets))
    else:
        maps[title] = (attributions.channel_activation(before, layer, images, selected_channels),
                       attributions.channel_activation(after, layer, images, selected_channels))
    maps[title] += (images, targets, attributions.predictions(before, images),
                    attributions.predictions(after, images))

every = [m for b, a, *_ in maps.values() for m in (b, a)]
value_range = (float(min(m.min() for m in every)), float(max(m.max() for m in every)))
diff_range = max(float(max(np.abs(a - b).max() for b, a, *_ in maps.values())), 1e-12)

for title, (b_maps, a_maps, images, targets, pred_b, pred_a) in maps.items():
    st.subheader(title)
    pixels = bundle.to_pixels(images)
    for n, (split, index) in enumerate(groups[title]):
        person = names[int(targets[n])]
        st.plotly_chart(charts.image_panels(
            [("photo", pixels[n], "photo"), ("original", b_maps[n], "map"),
             ("unlearned", a_maps[n], "map"), ("difference", a_maps[n] - b_maps[n], "diff")],
            value_range=value_range, diff_range=diff_range, height=270),
            key=f"ba_{title}_{n}", theme=None, config={"displayModeBar": False})
        st.caption(f"**{person}**, {'training' if split == 'train' else 'held-out'} photo. "
                   f"Prediction before: **{names[pred_b[0][n]]}** ({pred_b[1][n]:.0%})  →  after: "
                   f"**{names[pred_a[0][n]]}** ({pred_a[1][n]:.0%}); probability of "
                   f"{person}: {pred_b[2][n, int(targets[n])]:.0%} → {pred_a[2][n, int(targets[n])]:.0%}")

if view == "Grad-CAM":
    explain("Grad-CAM: bright areas are where the model finds evidence for the photo's true "
            "person. All maps share one colour scale, so a darker map after the removal means "
            "less evidence. The difference map is blue where evidence was lost, red where gained.")
else:
    explain("Mean activation of the selected slices of this layer on each photo, before and "
            "after, on one colour scale; the difference map shows how the removal changed them.")
