"""The pieces of the "How it works" page: small worked examples, figures and plain words.

Pure functions (no Streamlit): tensors, dicts and results in; ``go.Figure``, strings and rows
out, so that every piece is tested without the app. The page (``app/views/how_it_works.py``)
walks through one removal of the session with them:

1. the perturbations (:func:`jiggled_copies`, :func:`record_probe`, :func:`probe_rows`);
2. L-CODEC on a tiny picture of its own (:func:`codec_example`, :func:`codec_figure`);
3. L-FOCI's picks (:func:`selection_figure`, :func:`selection_text`);
4. why fc[k] is person k's output unit (:func:`head_picks`, :func:`look_alikes`, :func:`head_text`);
5.-7. the step, the noise and the audit: :mod:`.teaching_outcome`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import nn
from torch.nn import functional as F

from lcodec_core.dependence import STOP_REASONS, codec
from lcodec_core.unlearning.slices import ActivationRecorder, enumerate_slices
from lcodec_models.stationarity import head_module

from .words import number, person

# The step "barely shaped by the curvature": the same thresholds as the step details panel.
SMALL_ANGLE_DEG = 5.0
NEAR_ONE = 0.1
ACCENT, GREY, BLUE = "#d62728", "#8c8c8c", "#1f77b4"


def who(removal) -> str:
    """What a removal removed, in words: "person 05" or "3 photos"."""
    if getattr(removal, "who", None):
        return removal.who
    identity = removal.request.identity
    if identity is not None:
        return person(identity)
    count = len(removal.request.forget_indices)
    return f"{count} photo{'s' if count != 1 else ''}"


def compact_figure(fig: go.Figure, height: int) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=50, b=10), showlegend=False)
    return fig


# ---------------------------------------------------------------- 1. the perturbations
def jiggled_copies(image: torch.Tensor, count: int = 3, std: float = 0.1,
                   seed: int = 0) -> torch.Tensor:
    """The normalised ``image`` (C, H, W) and ``count`` jiggled copies x + std * noise,
    noise ~ N(0, 1) per pixel (seeded): (count + 1, C, H, W), the original first."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((count,) + tuple(image.shape), generator=generator)
    return torch.cat([image[None], image[None] + std * noise.to(image.dtype)])


@torch.no_grad()
def record_probe(model: nn.Module, images: torch.Tensor, label: int) -> dict:
    """What probing records for each image of ``images`` (B, C, H, W) of class ``label``:
    the loss and every slice's activation (a filter's mean output, a neuron's output).

    Returns ``loss`` (B,), ``activations`` (B, D) and ``slices`` (D labels such as "conv3[7]"),
    measured on a private eval-mode copy of ``model`` (the caller's model is not touched).
    """
    model = copy.deepcopy(model).eval()
    with ActivationRecorder(model) as recorder:
        logits, activations = recorder.record(images)
    targets = torch.full((len(images),), int(label), dtype=torch.long)
    loss = F.cross_entropy(logits.float(), targets, reduction="none")
    return {"loss": loss.double().numpy(), "activations": activations.double().numpy(),
            "slices": [s.label for s in enumerate_slices(model)]}


def probe_rows(record: dict, watch: list[str]) -> list[dict]:
    """One row per recorded image: the photo's name, its loss and the activation of each
    slice in ``watch`` (labels; unknown ones are skipped). The first image is the original."""
    columns = {label: record["slices"].index(label) for label in watch if label in record["slices"]}
    rows = []
    for i, loss in enumerate(record["loss"]):
        row = {"photo": "original" if i == 0 else f"jiggled copy {i}", "loss": float(loss)}
        row.update({f"activation of {label}": float(record["activations"][i, column])
                    for label, column in columns.items()})
        rows.append(row)
    return rows


# ---------------------------------------------------------------- 2. L-CODEC on a tiny example
@dataclass(frozen=True)
class CodecCase:
    """One synthetic example: x, y, z (n,) and L-CODEC's T(Y, Z | X) and T(Y, Z) on them."""
    title: str
    story: str
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    conditional: float
    unconditional: float


def codec_example(n: int = 200, seed: int = 0) -> tuple[CodecCase, CodecCase]:
    """Two seeded examples of ``n`` points, X uniform on [-1, 1]:

    - "Z adds something": Z is independent of X and Y = X + Z + a little noise, so once X is
      known Z still tells Y (T(Y, Z | X) high, near 1);
    - "Z adds nothing": Z and Y both follow X (Z = X + noise, Y = X + other noise), so Z looks
      related to Y, but once X is known it tells nothing more (T(Y, Z | X) near 0).
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    z_dep = rng.uniform(-1, 1, n)
    y_dep = x + z_dep + 0.05 * rng.standard_normal(n)
    z_ind = x + 0.3 * rng.standard_normal(n)
    y_ind = x + 0.3 * rng.standard_normal(n)
    cases = []
    for title, story, y, z in (
            ("Z adds something", "Y = X + Z + a little noise; Z is drawn apart from X", y_dep, z_dep),
            ("Z adds nothing", "Z = X + noise and Y = X + other noise: both only follow X",
             y_ind, z_ind)):
        cases.append(CodecCase(title, story, x, y, z, float(codec(y, z, x, rng=seed)),
                               float(codec(y, z, rng=seed))))
    return cases[0], cases[1]


def codec_figure(cases: tuple[CodecCase, ...]) -> go.Figure:
    """A column per case: Y against Z (top), and what X leaves of Y (Y - X) against Z (bottom),
    coloured by X. The titles carry T(Y, Z) and T(Y, Z | X)."""
    titles = [f"{c.title}: T(Y, Z) = {c.unconditional:.2f}" for c in cases]
    titles += [f"given X: T(Y, Z | X) = {c.conditional:.2f}" for c in cases]
    fig = make_subplots(rows=2, cols=len(cases), subplot_titles=titles, vertical_spacing=0.16,
                        horizontal_spacing=0.08)
    for col, case in enumerate(cases, start=1):
        for row, values in ((1, case.y), (2, case.y - case.x)):
            fig.add_scatter(x=case.z, y=values, mode="markers", row=row, col=col,
                            marker=dict(size=5, color=case.x, colorscale="Viridis", cmin=-1, cmax=1,
                                        showscale=row == 1 and col == len(cases),
                                        colorbar=dict(title="X", len=0.4, y=0.8)),
                            hovertemplate="Z %{x:.2f}<br>%{y:.2f}<extra></extra>")
        fig.update_xaxes(title_text="Z", row=2, col=col)
        fig.update_yaxes(title_text="Y" if col == 1 else None, row=1, col=col)
        fig.update_yaxes(title_text="Y - X (what X leaves)" if col == 1 else None, row=2, col=col)
    return compact_figure(fig, 560)


# ---------------------------------------------------------------- 3. L-FOCI's picks
def slice_label(selected) -> str:
    """ "conv3[7]" for a :class:`lcodec_core.unlearning.result.SelectedSlice` (or a dict of one)."""
    module = selected["module"] if isinstance(selected, dict) else selected.module
    index = selected["index"] if isinstance(selected, dict) else selected.index
    return f"{module}[{index}]"


def selection_figure(selected: list) -> go.Figure:
    """L-FOCI's picks as bars in pick order: each slice's score when it was added."""
    ordered = sorted(selected, key=lambda s: s.order)
    labels = [f"{s.order + 1}. {slice_label(s)}" for s in ordered]
    scores = [s.score if math.isfinite(s.score) else None for s in ordered]
    fig = go.Figure(go.Bar(x=labels, y=scores, marker_color=ACCENT, cliponaxis=False,
                           text=[number(s, ".3f") for s in scores], textposition="outside",
                           hovertemplate="%{x}: score %{y:.4f}<extra></extra>"))
    fig.update_xaxes(title="pick order and slice", type="category")
    fig.update_yaxes(title="L-CODEC score when picked", rangemode="tozero")
    fig.update_layout(title="L-FOCI's picks, first to last")
    return compact_figure(fig, 320)


PLAIN_STOPS = {
    "max_features_reached": "it reached the cap on how many slices to pick",
    "first_score_nonpositive": "not even the best single slice told anything about the loss",
    "score_nonpositive": "no remaining slice added anything once the picked ones were known",
    "all slices": "the method 'all' takes every slice, without L-FOCI",
}


def stop_reason(stopped_because: str) -> str:
    """Why L-FOCI stopped, in words (the engine's reason keys, possibly joined by "; ")."""
    parts = [p.strip() for p in str(stopped_because or "").split(";") if p.strip()]
    if not parts:
        return "not recorded"
    return "; ".join(PLAIN_STOPS.get(p, STOP_REASONS.get(p, p.replace("_", " "))) for p in parts)


def selection_text(selected: list, selection: dict | None, max_slices: int | None = None) -> str:
    """This removal's selection in plain words: how many candidates, the picks, why it stopped."""
    selection = selection or {}
    candidates = selection.get("candidates")
    ordered = sorted(selected, key=lambda s: s.order)
    lines = []
    if candidates is not None:
        lines.append(f"L-FOCI looked at **{candidates}** candidate slices (every filter and neuron "
                     "whose activation moved at all under the jiggles).")
    if ordered:
        first = ordered[0]
        picks = ", ".join(f"**{slice_label(s)}**" for s in ordered)
        lines.append(f"It picked **{slice_label(first)}** first (score {number(first.score, '.3f')}): "
                     f"the slice whose activation alone tells the most about the loss. In order: "
                     f"{picks}.")
    else:
        lines.append("It picked no slice: no activation told anything about the loss.")
    reason = stop_reason(selection.get("stopped_because", ""))
    cap = f" (max slices: {max_slices})" if max_slices is not None else ""
    lines.append(f"It stopped because {reason}{cap}.")
    return " ".join(lines)


# ---------------------------------------------------------------- 4. the head: fc[k] is person k
@dataclass(frozen=True)
class HeadPick:
    """A selected unit of the model's last linear layer: ``unit`` is the class whose score it
    computes; ``own`` when that is the removed person."""
    label: str
    unit: int
    owner: str
    own: bool


def head_picks(model: nn.Module, selected: list,
               identity: int | None) -> tuple[str | None, int, list[HeadPick]]:
    """(name of the last linear layer, its number of rows, the selected slices on it)."""
    found = head_module(model)
    if found is None:
        return None, 0, []
    name, head = found
    picks = [HeadPick(slice_label(s), s.index, person(s.index), identity is not None and
                      s.index == identity)
             for s in sorted(selected, key=lambda s: s.order) if s.module == name]
    return name, head.out_features, picks


@torch.no_grad()
def look_alikes(model: nn.Module, images: torch.Tensor, identity: int,
                top: int = 3) -> list[tuple[int, float]]:
    """Who else ``model`` sees in ``images`` (photos of ``identity``): the ``top`` other
    classes by mean score (the head's output, before softmax) on them, as (class, mean score),
    highest first."""
    model = copy.deepcopy(model).eval()
    scores = model(images).double().mean(0)
    scores[identity] = -math.inf
    order = torch.argsort(scores, descending=True)[:top]
    return [(int(k), float(scores[k])) for k in order]


def head_general(head_name: str | None = "fc", rows: int | None = None) -> str:
    """Why fc[k] is person k's output unit, for any removal."""
    name = head_name or "fc"
    count = f"{rows} rows, " if rows else ""
    return (f"The model's last layer, **{name}**, is a linear layer with one row per person "
            f"({count}one for each person it knows). Row k multiplies the features the earlier "
            f"layers found in a photo by its weights and adds its bias: the result is **person "
            f"k's score**, and the highest score is the model's answer. So the slice "
            f"**{name}[k]** is person k's output unit: lowering what {name}[k] gives for a "
            f"person's photos is the most direct way to stop the model naming them.")


def head_text(head_name: str | None, picks: list[HeadPick], identity: int | None,
              alikes: list[tuple[int, float]] = ()) -> str:
    """What this removal's selection did on the head, in words (empty when it picked none)."""
    if head_name is None or not picks:
        if head_name is None:
            return ""
        return (f"This removal picked no unit of {head_name}: the slices that carried the "
                f"photos were earlier, in the layers that find features.")
    rank = {k: (i + 1, p) for i, (k, p) in enumerate(alikes)}
    lines = []
    for pick in picks:
        if pick.own:
            lines.append(f"- **{pick.label}** is {pick.owner}'s own output unit: the removal "
                         f"turned down the score that names {pick.owner} directly.")
        else:
            seen = rank.get(pick.unit)
            place = {1: "highest", 2: "second-highest", 3: "third-highest"}.get(
                seen[0], f"number {seen[0]}") if seen else ""
            evidence = (f" Before the removal, on {person(identity)}'s photos {pick.label} gave "
                        f"the {place} score after {person(identity)}'s own (mean {seen[1]:.3g})."
                        if seen and identity is not None else "")
            whom = person(identity) if identity is not None else "the removed photos"
            lines.append(f"- **{pick.label}** is {pick.owner}'s output unit, not "
                         f"{whom}'s: {pick.owner} is a look-alike the model might confuse "
                         f"{whom} with, so how much that score reacts to the jiggles tells "
                         f"the loss too.{evidence}")
    return "\n".join(lines)


# ---------------------------------------------------------------- 5. the step and the curvature
