"""Plotly figures of the dashboard. Pure functions: arrays and dicts in, ``go.Figure`` out."""
from __future__ import annotations

import math

import numpy as np
import plotly.colors as pcolors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

METRIC_LABELS = {
    "forget_accuracy": "forgotten images",
    "retain_accuracy": "retained images",
    "test_accuracy": "held-out, others",
    "forget_test_accuracy": "held-out, forgotten person",
}
BAR_LABELS = {  # two lines each, so the axis stays level on a phone
    "forget_accuracy": "forgotten<br>images",
    "retain_accuracy": "retained<br>images",
    "test_accuracy": "held-out<br>others",
    "forget_test_accuracy": "held-out<br>forgotten",
}
MISSING = "–"  # a number that does not exist (as lcodec_app.widgets.MISSING)
MODEL_COLOURS = {"original": "#8c8c8c", "unlearned": "#d62728", "retrained": "#1f77b4"}
LINE_COLOURS = {"forget_accuracy": "#d62728", "retain_accuracy": "#2ca02c",
                "test_accuracy": "#1f77b4", "forget_test_accuracy": "#ff7f0e"}
# Inferno as rgb() strings: the dashboard's plotly.js draws its first stop, hex "#000004", as
# purple (as if it were the 4-digit "#RGBA" form), so zero-valued map cells looked purple.
MAP_SCALE = [[stop, "rgb(%d, %d, %d)" % pcolors.hex_to_rgb(colour)]
             for stop, colour in pcolors.get_colorscale("Inferno")]
DIFF_SCALE = "RdBu_r"
BAR_TEXT_MIN_SIZE = 9  # px: bar labels smaller than this are hidden, never overlapped
SCALES = ("shared", "one scale per row")  # colour scales of rows of attribution maps


def _compact(fig: go.Figure, height: int, legend: bool = True) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0) if legend else None,
                      showlegend=legend)
    return fig


def accuracy_bars(models: dict[str, dict], metrics=tuple(METRIC_LABELS)) -> go.Figure:
    """Grouped bars: one group per metric, one bar per model (original, unlearned, retrained)."""
    fig = go.Figure()
    for name, values in models.items():
        shown = [m for m in metrics if m in values]
        y = [values[m] * 100 if _finite(values[m]) else None for m in shown]
        fig.add_bar(name=name, x=[BAR_LABELS[m] for m in shown], y=y,
                    marker_color=MODEL_COLOURS.get(name), text=[_pct(v) for v in y],
                    textposition="outside", textangle=0, constraintext="both",
                    cliponaxis=False, hovertemplate="%{x}: %{y:.1f}%<extra>" + name + "</extra>")
    fig.update_yaxes(title="accuracy (%)", range=[0, 112])
    fig.update_xaxes(tickangle=0)
    # On a narrow screen a label wider than its bar would run into its neighbour's
    # ("100%100%"): each label is kept within its own bar's width (constraintext), all at one
    # size, and hidden (the value stays in the hover) rather than shrunk below a readable size.
    fig.update_layout(barmode="group", bargap=0.25, bargroupgap=0.08,
                      uniformtext=dict(minsize=BAR_TEXT_MIN_SIZE, mode="hide"))
    return _compact(fig, 330)


def slice_grid(layers: list[tuple[str, int]], selected: list[dict],
               highlight: tuple[str, int] | None = None,
               unit_notes: dict[str, list[str]] | None = None) -> go.Figure:
    """Every slice as a cell, one row per layer; selected slices coloured by L-FOCI order.

    layers : (module name, number of output units) in forward order.
    selected : dicts with module, index, score, order (0 = chosen first).
    unit_notes : module name -> one note per unit for the hover, e.g. the head's
        "person 22's output unit".
    """
    unit_notes = unit_notes or {}

    def label(name: str, j: int) -> str:
        notes = unit_notes.get(name)
        note = f" ({notes[j]})" if notes is not None and j < len(notes) and notes[j] else ""
        return f"{name}[{j}]{note}"

    width = max(count for _, count in layers)
    z = np.full((len(layers), width), np.nan)
    text = np.full((len(layers), width), "", dtype=object)
    hover = np.full((len(layers), width), "", dtype=object)
    row_of = {name: r for r, (name, _) in enumerate(layers)}
    for r, (name, count) in enumerate(layers):
        z[r, :count] = 0
        for j in range(count):
            hover[r, j] = f"{label(name, j)}: not selected"
    order_count = max(len(selected), 1)
    for s in selected:
        r = row_of.get(s["module"])
        if r is None:
            continue
        z[r, s["index"]] = 1 + (order_count - s["order"]) / order_count  # first chosen = darkest
        text[r, s["index"]] = str(s["order"] + 1)
        score = s.get("score")
        score_txt = f"{score:.3f}" if _finite(score) else MISSING
        hover[r, s["index"]] = (f"{label(s['module'], s['index'])}: selected #{s['order'] + 1}, "
                                f"score {score_txt}")
    colours = [[0.0, "#e8e8e8"], [0.499, "#e8e8e8"], [0.5, "#fdd0a2"], [1.0, "#a63603"]]
    fig = go.Figure(go.Heatmap(
        z=z, zmin=0, zmax=2, colorscale=colours, showscale=False, xgap=1, ygap=2,
        text=text, texttemplate="%{text}", textfont=dict(size=10, color="white"),
        hovertext=hover, hoverinfo="text",
        y=[f"{name} ({count})" for name, count in layers]))
    if highlight is not None and highlight[0] in row_of:
        r, j = row_of[highlight[0]], highlight[1]
        fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=r - 0.5, y1=r + 0.5,
                      line=dict(color="#1f77b4", width=3))
    fig.update_yaxes(autorange="reversed", title=None)
    fig.update_xaxes(title="output unit (filter or neuron) index", showgrid=False)
    return _compact(fig, 90 + 38 * len(layers), legend=False)


def mosaic(weights: np.ndarray, input_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Lay out one slice's weights as a 2-D picture.

    Conv filter (C_in, kh, kw): the C_in kernels as tiles in a grid, NaN gaps between.
    Linear row (F,): as the input image when F matches ``input_shape`` (C, H, W), else a
    near-square grid.
    """
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim == 1 and input_shape is not None and w.size == int(np.prod(input_shape)):
        w = w.reshape(input_shape)
    if w.ndim == 3:
        c, kh, kw = w.shape
        cols = math.ceil(math.sqrt(c))
        rows = math.ceil(c / cols)
        out = np.full((rows * (kh + 1) - 1, cols * (kw + 1) - 1), np.nan, dtype=np.float32)
        for i in range(c):
            r, q = divmod(i, cols)
            out[r * (kh + 1): r * (kh + 1) + kh, q * (kw + 1): q * (kw + 1) + kw] = w[i]
        return out
    flat = w.reshape(-1)
    cols = math.ceil(math.sqrt(flat.size))
    out = np.full(math.ceil(flat.size / cols) * cols, np.nan, dtype=np.float32)
    out[:flat.size] = flat
    return out.reshape(-1, cols)


def map_scales(rows: list[tuple[np.ndarray, np.ndarray]], scale: str = "shared"
               ) -> list[tuple[tuple[float, float], float]]:
    """Colour ranges for rows of (before, after) maps: one (value range, difference range)
    per row, for :func:`image_panels`.

    scale : "shared" (every row on the range of all of them, so rows compare: a weak row is
        dark) or "one scale per row" (each row on its own range, so its pattern shows even
        when another row is much stronger).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}; got {scale!r}")
    if not rows:
        return []
    per_row = [((_nanmin([b, a]), _nanmax([b, a])),
                max(_nanmax([np.abs(np.asarray(a) - np.asarray(b))]), 1e-12)) for b, a in rows]
    if scale == "one scale per row":
        return [((lo, hi if hi > lo else lo + 1e-12), d) for (lo, hi), d in per_row]
    lo = min(r[0][0] for r in per_row)
    hi = max(r[0][1] for r in per_row)
    d = max(r[1] for r in per_row)
    return [((lo, hi if hi > lo else lo + 1e-12), d)] * len(rows)


def image_panels(panels: list[tuple[str, np.ndarray, str]], height: int = 260,
                 value_range: tuple[float, float] | None = None,
                 diff_range: float | None = None) -> go.Figure:
    """A row of image-like heatmaps.

    panels : (title, 2-D array, kind) with kind "photo" (grey, own scale), "map" (shared
        ``value_range``, one colour bar) or "diff" (symmetric ``diff_range``, diverging).
    """
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for t, _, _ in panels],
                        horizontal_spacing=0.03)
    maps = [a for _, a, kind in panels if kind == "map"]
    lo, hi = value_range or (_nanmin(maps), _nanmax(maps))
    diffs = [a for _, a, kind in panels if kind == "diff"]
    d = diff_range or max(_nanmax([np.abs(a) for a in diffs]) if diffs else 0.0, 1e-12)
    for col, (_, array, kind) in enumerate(panels, start=1):
        trace = dict(z=np.asarray(array), hoverinfo="z", xgap=0, ygap=0)
        if kind == "photo":
            trace.update(colorscale="gray", showscale=False, zmin=0, zmax=255)
        elif kind == "map":
            trace.update(coloraxis="coloraxis")
        else:
            trace.update(coloraxis="coloraxis2")
        fig.add_trace(go.Heatmap(**trace), row=1, col=col)
        axis = "" if col == 1 else str(col)
        fig.update_layout({f"yaxis{axis}": dict(autorange="reversed", scaleanchor=f"x{axis}",
                                                visible=False, constrain="domain"),
                           f"xaxis{axis}": dict(visible=False, constrain="domain")})
    fig.update_layout(
        coloraxis=dict(colorscale=MAP_SCALE, cmin=lo, cmax=hi,
                       colorbar=_bar_under(fig, [i for i, p in enumerate(panels) if p[2] == "map"])),
        coloraxis2=dict(colorscale=DIFF_SCALE, cmin=-d, cmax=d,
                        colorbar=_bar_under(fig, [i for i, p in enumerate(panels) if p[2] == "diff"])),
        height=height, margin=dict(l=5, r=5, t=25, b=45), showlegend=False)
    if not diffs:
        fig.update_layout(coloraxis2_showscale=False)
    if not maps:
        fig.update_layout(coloraxis_showscale=False)
    fig.update_annotations(font_size=12)
    return fig


def _bar_under(fig: go.Figure, columns: list[int]) -> dict:
    """A thin horizontal colour bar under the subplots in ``columns`` (0-based)."""
    if not columns:
        return dict()
    domains = [fig.layout[f"xaxis{'' if c == 0 else c + 1}"].domain for c in columns]
    left, right = min(d[0] for d in domains), max(d[1] for d in domains)
    return dict(orientation="h", x=(left + right) / 2, xanchor="center", len=(right - left) * 0.9,
                y=-0.02, yanchor="top", thickness=8, tickfont=dict(size=10), outlinewidth=0)


def live_accuracy(rows: list[dict], reference: list[dict], metrics=tuple(LINE_COLOURS)) -> go.Figure:
    """Accuracy after each removal (solid) and the retrained model's (dashed diamonds)."""
    fig = go.Figure()
    steps = [r["step"] for r in rows]
    for m in metrics:
        y = [r[m] * 100 if _finite(r.get(m)) else None for r in rows]
        if all(v is None for v in y):
            continue
        fig.add_scatter(x=steps, y=y, mode="lines+markers", name=METRIC_LABELS[m],
                        line=dict(color=LINE_COLOURS[m], width=3),
                        hovertemplate="after %{x} removal(s): %{y:.1f}%<extra>" + METRIC_LABELS[m]
                                      + "</extra>")
        ref_y = [r[m] * 100 if _finite(r.get(m)) else None for r in reference]
        if reference and any(v is not None for v in ref_y):
            fig.add_scatter(x=[r["step"] for r in reference], y=ref_y, mode="lines+markers",
                            name=f"retrained: {METRIC_LABELS[m]}", showlegend=False,
                            line=dict(color=LINE_COLOURS[m], dash="dash", width=1.5),
                            marker=dict(symbol="diamond-open", size=12),
                            hovertemplate="retrained from scratch: %{y:.1f}%<extra></extra>")
    if reference:
        fig.add_scatter(x=[None], y=[None], mode="markers", name="retrained (reference)",
                        marker=dict(symbol="diamond-open", size=12, color="#444"))
    fig.update_xaxes(title="removals so far", dtick=1, rangemode="tozero")
    fig.update_yaxes(title="accuracy (%)", range=[-3, 105])
    return _compact(fig, 380)


def _finite(value) -> bool:
    return isinstance(value, (int, float, np.floating)) and math.isfinite(value)


def _pct(value) -> str:
    return "" if value is None else f"{value:.0f}%"


def _nanmin(arrays) -> float:
    return float(min(np.nanmin(a) for a in arrays)) if arrays else 0.0


def _nanmax(arrays) -> float:
    return float(max(np.nanmax(a) for a in arrays)) if arrays else 1.0
