"""Before and after: where the original and the unlearned model look (Captum), side by side."""
import streamlit as st
import torch

from lcodec_app import attributions, charts
from lcodec_app.panels import model_before, removal_chooser
from lcodec_app.widgets import explain, person, require_removal, unit_owner

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
cols = st.columns(4)
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
scale = cols[2].segmented_control(
    "Colour scale", list(charts.SCALES), default="shared", required=True, key="ba_scale",
    help="shared: every map on one scale, so maps compare across people (a weak map is dark). "
         "one scale per row: each photo's before and after maps on their own scale, so the "
         "pattern of a kept person's map shows too.")
count = cols[3].slider("Photos per group", 1, 4, 2, key="ba_count")

# `count` photos of the forgotten person (removed training photos, and about half held-out
# photos when a whole person was removed) and `count` photos of people who were kept.
forgot = attributions.forgotten_photos(request.forget_indices,
                                       bundle.test.indices_of(request.identity)
                                       if request.identity is not None else [], count)
gone = set(bench.removed_identities)
others = [("test", i) for i in range(len(bundle.test)) if int(bundle.test.targets[i]) not in gone]
others = others[:: max(len(others) // count, 1)][:count]


def batch(items):
    images = torch.stack([(bundle.train if s == "train" else bundle.test).images[i] for s, i in items])
    targets = torch.tensor([int((bundle.train if s == "train" else bundle.test).targets[i])
                            for s, i in items])
    return images, targets


def no_channel_text(selected) -> str:
    """Why "Selected channels" has nothing to draw: the selection, unit by unit."""
    by_layer = attributions.units_by_layer(selected)
    if not by_layer:
        return ("“Selected channels” shows the convolution channels a removal selected, but this "
                "removal selected no slice (its method changes the whole model). The maps below "
                f"are Grad-CAM of {layer}.")
    head = attributions.head_layer(before, bundle.num_classes)
    units = [f"{module}[{k}]" + (f" ({unit_owner(k, names)}'s output unit)" if module == head else "")
             for module, indices in by_layer.items() for k in indices]
    shown = ", ".join(units[:8]) + (f" and {len(units) - 8} more" if len(units) > 8 else "")
    return (f"“Selected channels” shows the convolution channels a removal selected, but this "
            f"removal selected no convolution channel: only {len(units)} linear "
            f"unit{'s' if len(units) != 1 else ''}, {shown}. There is no channel map to draw, so "
            f"the maps below are Grad-CAM of {layer}. The Slices page shows those units.")


selected = removal.result.selected_slices
selected_channels = [s.index for s in selected if s.module == layer]
if view == "Selected channels" and not selected_channels:
    conv_picks = attributions.units_by_layer([s for s in selected if s.module in convs])
    if conv_picks:
        st.info(f"This removal selected no channel of {layer}; it selected channels of "
                f"{', '.join(conv_picks)}. Pick that layer to see them; the maps below are "
                "Grad-CAM.", icon=":material/info:")
    else:
        st.info(no_channel_text(selected), icon=":material/info:")
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

ranges = iter(charts.map_scales([(b[n], a[n]) for b, a, *_ in maps.values()
                                  for n in range(len(b))], scale))

for title, (b_maps, a_maps, images, targets, pred_b, pred_a) in maps.items():
    st.subheader(title)
    pixels = bundle.to_pixels(images)
    for n, (split, index) in enumerate(groups[title]):
        value_range, diff_range = next(ranges)
        who = person(int(targets[n]), names)
        st.plotly_chart(charts.image_panels(
            [("photo", pixels[n], "photo"), ("original", b_maps[n], "map"),
             ("unlearned", a_maps[n], "map"), ("difference", a_maps[n] - b_maps[n], "diff")],
            value_range=value_range, diff_range=diff_range, height=270),
            key=f"ba_{title}_{n}", theme=None, config={"displayModeBar": False})
        st.caption(f"**{who}**, {'training' if split == 'train' else 'held-out'} photo. "
                   f"Prediction before: **{person(int(pred_b[0][n]), names)}** ({pred_b[1][n]:.0%})"
                   f"  →  after: **{person(int(pred_a[0][n]), names)}** ({pred_a[1][n]:.0%}); "
                   f"probability of {who}: {pred_b[2][n, int(targets[n])]:.0%} → "
                   f"{pred_a[2][n, int(targets[n])]:.0%}")

scale_text = ("All maps share one colour scale, so a darker map after the removal means less "
              "evidence, and maps compare across people." if scale == "shared" else
              "Each row has its own colour scale (its before and after maps share it), so the "
              "pattern shows on every row; compare brightness within a row, not across rows.")
if view == "Grad-CAM":
    explain("Grad-CAM: bright areas are where the model finds evidence for the photo's true "
            f"person. {scale_text} The difference map is blue where evidence was lost, red "
            "where gained.")
else:
    explain("Mean activation of the selected slices of this layer on each photo, before and "
            f"after. {scale_text} The difference map shows how the removal changed them.")
