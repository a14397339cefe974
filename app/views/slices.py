"""Slices: every filter and neuron of the model, the ones L-FOCI chose, their weights and activations."""
from dataclasses import asdict

import numpy as np
import pandas as pd
import streamlit as st

from lcodec_app import attributions, charts
from lcodec_app.panels import model_before, removal_chooser, step_details
from lcodec_app.widgets import MISSING, explain, number, require_removal, unit_owner
from lcodec_core.unlearning.slices import sliced_modules
from torch import nn

bench = st.session_state.workbench
bundle = bench.bundle


def linear_input_layout(model, layer: str) -> tuple[int, ...] | None:
    """(C, H, W) that a Linear layer's inputs came from, to draw its weights as pictures.

    The first layer of a model on flattened pixels reads the image; a layer after convolutions
    reads the last conv's C feature maps of size s x s (when in_features = C * s * s).
    """
    modules = sliced_modules(model)
    names = [name for name, _ in modules]
    module = modules[names.index(layer)][1]
    if not isinstance(module, nn.Linear):
        return None
    if names.index(layer) == 0 and module.in_features == int(np.prod(bundle.input_shape)):
        return tuple(bundle.input_shape)
    convs = [m for _, m in modules[:names.index(layer)] if isinstance(m, nn.Conv2d)]
    if convs and module.in_features % convs[-1].out_channels == 0:
        side = int(round((module.in_features // convs[-1].out_channels) ** 0.5))
        if convs[-1].out_channels * side * side == module.in_features:
            return convs[-1].out_channels, side, side
    return None


st.title("Slices")
st.markdown("A **slice** is one output unit of a layer: one filter of a convolution, or one "
            "neuron of a linear layer, with its weights and bias. The removal changes only the "
            "slices L-FOCI selects, as the ones whose activity tracks the forgotten photos.")
if not require_removal(bench):
    st.stop()

position, removal = removal_chooser(bench, key="slices_removal")
before_model, after_model = model_before(bench, position), removal.model
result = removal.result
selected = [asdict(s) for s in result.selected_slices]

cols = st.columns(3)
cols[0].metric("Slices selected", len(selected))
cols[1].metric("Parameters touched", f"{result.parameters_updated:,}")
cols[2].metric("Share of the model", f"{result.parameter_share:.2%}")

if result.diagnostics.get("step"):
    st.subheader("How far the selected slices moved")
    step_details(result)
    explain("The step rule sizes one update of the selected slices for this request. The null "
            "control is the update the same recipe gives with nothing removed: 0% means every "
            "bit of the change comes from the removed photos. The curvature compares the step "
            "with the plain gradient of the forgotten photos: an angle near 0° and a length "
            "ratio near 1 mean the curvature barely changed its direction or length.")

layers = [(name, module.weight.shape[0]) for name, module in sliced_modules(bench.original)]
layer_names = [name for name, _ in layers]
# The output layer's unit k is class k's score: "fc[22] is person 22's output unit".
head = attributions.head_layer(bench.original, bundle.num_classes)


def unit_note(layer: str, unit: int) -> str:
    return f"{unit_owner(unit, bench.class_names)}'s output unit" if layer == head else ""


def unit_label(layer: str, unit: int) -> str:
    note = unit_note(layer, unit)
    return f"{layer}[{unit}]" + (f" ({note})" if note else "")


def head_caption(units) -> None:
    """Say whose output unit each listed unit of the head is (nothing when none is listed)."""
    units = sorted(set(units))
    if head is None or not units:
        return
    shown = units[:6]
    st.caption(f":material/info: {head} is the output layer: unit k gives the score of class k. "
               + "; ".join(f"{head}[{k}] is {unit_note(head, k)}" for k in shown)
               + ("; and so on." if len(units) > len(shown) else "."))


if selected:
    table = pd.DataFrame([{"order": s["order"] + 1, "layer": s["module"], "unit": s["index"],
                           "what it is": unit_note(s["module"], s["index"]),
                           "score": number(s["score"], ".4f")}
                          for s in selected]).sort_values("order")
    options = [(s["module"], s["index"]) for s in sorted(selected, key=lambda s: s["order"])]
else:
    table = None
    options = []
    st.info("This removal selected no slice (or used a baseline that changes the whole model).")

with st.expander("Inspect any slice, not only the selected ones"):
    any_slice = st.toggle("Choose freely", key="slices_free")
    if any_slice or not options:
        layer = st.selectbox("Layer", layer_names, key="slices_layer")
        count = dict(layers)[layer]
        unit = st.number_input("Unit", 0, count - 1, 0, key="slices_unit")
        chosen = (layer, int(unit))
        if layer == head:
            head_caption([int(unit)])
if not (any_slice or not options):
    chosen = st.selectbox("Slice to inspect", options, key="slices_pick",
                          format_func=lambda o: f"#{options.index(o) + 1}: {unit_label(*o)}")

st.subheader("All slices, layer by layer")
notes = {head: [unit_note(head, k) for k in range(dict(layers)[head])]} if head else None
st.plotly_chart(charts.slice_grid(layers, selected, highlight=chosen, unit_notes=notes),
                key="slices_grid", config={"displayModeBar": False})
explain("Each cell is one filter or neuron; each row a layer (its size in brackets). Orange "
        "cells were selected, numbered in the order L-FOCI picked them (darker = earlier). Grey "
        "cells were left exactly as they were. The blue box is the slice shown below.")
if table is not None:
    st.dataframe(table, hide_index=True, column_config={
        "score": st.column_config.TextColumn(help="L-CODEC dependence when the slice was added "
                                                  f"({MISSING} when the method gives none)")})
    explain("Score: how much the loss on the jiggled forgotten photos depends on this slice "
            "once the earlier ones are known (conditional dependence, 0 = none).")
    head_caption(s["index"] for s in selected if s["module"] == head)

layer, unit = chosen
module_before = dict(before_model.named_modules())[layer]
module_after = dict(after_model.named_modules())[layer]
w_before = module_before.weight.detach()[unit].numpy()
w_after = module_after.weight.detach()[unit].numpy()
input_shape = linear_input_layout(before_model, layer)

st.subheader(f"Weights of {unit_label(layer, unit)}")
mosaic_before = charts.mosaic(w_before, input_shape)
mosaic_after = charts.mosaic(w_after, input_shape)
# One chart per mosaic, each in a column: side by side on a wide screen and, on a narrow one,
# stacked with each as wide as the screen (rather than three thumbnails in one row).
weights_range = (float(np.nanmin([mosaic_before, mosaic_after])),
                 float(np.nanmax([mosaic_before, mosaic_after])))
change = mosaic_after - mosaic_before
for column, (title, array, kind) in zip(st.columns(3), [
        ("before", mosaic_before, "map"), ("after", mosaic_after, "map"),
        ("change", change, "diff")]):
    with column:
        st.plotly_chart(charts.image_panels([(title, array, kind)], height=300,
                                            value_range=weights_range),
                        key=f"slices_weights_{title}", theme=None, width="stretch",
                        config={"displayModeBar": False})
changed = not np.array_equal(w_before, w_after)
explain(("The filter's weights before and after the removal on one colour scale, and their "
         "change (red up, blue down). " if w_before.ndim == 3 else
         ("The neuron's incoming weights, one tile per feature map it reads "
          f"({input_shape[0]} maps of {input_shape[1]}x{input_shape[2]}), before and after, and "
          "the change. " if input_shape else "The neuron's incoming weights laid out as a grid, "
          "before and after, and the change. "))
        + ("This slice was updated." if changed else "This slice was not changed (bit-identical)."))

st.subheader("What it responds to")
forgot_image = removal.request.forget.images[:1]
other = [i for i in removal.request.retain_indices
         if removal.request.identity is None or int(bundle.train.targets[i]) != removal.request.identity]
retain_image = bundle.train.images[other[:1]]
images = {"a forgotten photo": forgot_image, "a retained photo": retain_image}
acts = {name: (attributions.slice_activation(before_model, layer, unit, img)[0],
               attributions.slice_activation(after_model, layer, unit, img)[0])
        for name, img in images.items()}
if np.ndim(next(iter(acts.values()))[0]) == 2:
    lo = min(min(a.min(), b.min()) for a, b in acts.values())
    hi = max(max(a.max(), b.max()) for a, b in acts.values())
    for name, img in images.items():
        a, b = acts[name]
        st.plotly_chart(charts.image_panels(
            [(name, bundle.to_pixels(img)[0], "photo"), ("before", a, "map"), ("after", b, "map"),
             ("change", b - a, "diff")], value_range=(lo, hi), height=250),
            key=f"slices_act_{name}", theme=None, config={"displayModeBar": False})
    explain("The filter's output (its activation map) on one forgotten and one retained photo, "
            "before and after, on one shared colour scale. A filter that carried the forgotten "
            "person tends to change its response to their photo more than to others'.")
else:
    st.dataframe(pd.DataFrame([{"photo": name, "before": float(a), "after": float(b),
                                "change": float(b - a)} for name, (a, b) in acts.items()]),
                 hide_index=True)
    explain("The neuron's output on one forgotten and one retained photo, before and after.")
