"""Issue 13 (polish) under Streamlit's AppTest harness, with a few pure checks of the helpers.

One real removal in all (person FORGET_ID from Start here, the engine's default), shared by
the page tests: the Before and after page's colour scales, photo count and its message when the
removal selected no convolution channel; the Slices page's "fc[k] is person k's output unit";
one vocabulary on every page ("person 05", "no guarantee", "–"); a random .pt upload refused
with its real reason; the URL's bad values named in a warning.
"""
from __future__ import annotations

import dataclasses
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from apptest import APP_DIR, FORGET_ID, assert_clean, finish, start_app
from lcodec_app import attributions, charts, widgets
from lcodec_core.unlearning.result import SelectedSlice

BA, SLICES = "views/before_after.py", "views/slices.py"
FORGOTTEN, KEPT = "The forgotten photos", "Other people (kept)"
WHO = f"person {FORGET_ID:02d}"
OLIVETTI_NAMES = [f"person {k:02d}" for k in range(40)]


@pytest.fixture(scope="module")
def removed(trained_small_cnn) -> AppTest:
    """A session that removed person FORGET_ID from Start here (the engine's default)."""
    at = start_app({"identity": str(FORGET_ID)})
    at.button(key="start_run").click().run()
    assert_clean(at)
    return finish(at)


def figure(chart) -> dict:
    return json.loads(chart.proto.spec)


def ba_rows(at: AppTest) -> list[dict]:
    """The Before and after page's map rows, in order, as plotly figures."""
    return [figure(c) for c in at.get("plotly_chart") if c.proto.id and "ba_" in c.proto.id]


def page_texts(at: AppTest) -> list[str]:
    """Every piece of text a reader sees on the page: prose, notes, metrics, tables, options."""
    texts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning",
                 "error", "success"):
        texts += [str(e.value) for e in at.get(kind)]
    texts += [f"{m.label}: {m.value}" for m in at.metric]
    texts += [frame.value.to_string() for frame in at.dataframe]
    for box in at.selectbox:
        texts += [str(o) for o in box.options]
    return texts


# ---------------------------------------------------------------- pure helpers
def test_forgotten_photos_match_the_count():
    train, held_out = list(range(100, 108)), [7, 9]
    for count in range(1, 5):
        photos = attributions.forgotten_photos(train, held_out, count)
        assert len(photos) == count, (count, photos)
        assert len(set(photos)) == count
    assert attributions.forgotten_photos(train, held_out, 2) == [("train", 100), ("test", 7)]
    assert attributions.forgotten_photos(train, [], 3) == [("train", i) for i in (100, 101, 102)]
    assert attributions.forgotten_photos([1], [], 4) == [("train", 1)]  # only what there is


def test_map_scales_shared_and_per_row():
    rows = [(np.zeros((2, 2)), np.full((2, 2), 10.0)), (np.zeros((2, 2)), np.full((2, 2), 0.1))]
    shared = charts.map_scales(rows, "shared")
    assert shared == [((0.0, 10.0), 10.0)] * 2
    per_row = charts.map_scales(rows, "one scale per row")
    assert per_row[0] == ((0.0, 10.0), 10.0)
    assert per_row[1][0] == (0.0, pytest.approx(0.1)) and per_row[1][1] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="scale must be one of"):
        charts.map_scales(rows, "log")


def test_bar_labels_never_overlap():
    """Labels stay within their bar (constraintext) at one size, hidden rather than shrunk
    below a readable size: two 100% bars side by side never read "100%100%"."""
    fig = charts.accuracy_bars({"original": {"forget_accuracy": 1.0, "retain_accuracy": 1.0},
                                "unlearned": {"forget_accuracy": 0.0, "retain_accuracy": 1.0}})
    assert fig.layout.uniformtext.mode == "hide"
    assert fig.layout.uniformtext.minsize == charts.BAR_TEXT_MIN_SIZE >= 8
    for bar in fig.data:
        assert bar.textposition == "outside" and bar.constraintext == "both"
        assert bar.textangle == 0 and "%{y" in bar.hovertemplate  # the value stays on hover


def test_vocabulary_helpers():
    assert widgets.person(5, OLIVETTI_NAMES) == "person 05" == widgets.person(5)
    assert widgets.unit_owner(3, [str(d) for d in range(10)]) == "class 3"
    assert widgets.people_words("Forgetting identity 5 (8 training images)", OLIVETTI_NAMES) \
        == "Forgetting person 05 (8 training images)"
    assert [widgets.pct(v) for v in (None, float("nan"), float("inf"), 0.5)] \
        == ["–", "–", "–", "50.0%"]
    assert widgets.epsilon_text(None) == widgets.epsilon_text(float("inf")) == "no guarantee"
    assert widgets.epsilon_text(2.0) == "2"
    request = SimpleNamespace(identity=5, forget_indices=list(range(8)))
    assert widgets.request_label(request, OLIVETTI_NAMES) == "person 05 (8 training photos)"


def test_url_problems_name_the_bad_value_and_what_is_valid():
    problems = widgets.url_problems({"identity": "999"}, OLIVETTI_NAMES)
    assert len(problems) == 1 and "identity=999" in problems[0]
    assert "identity=0 to identity=39 (person 00 to person 39)" in problems[0]
    problems = widgets.url_problems({"dataset": "foo", "model": "small_cnn"}, OLIVETTI_NAMES)
    assert len(problems) == 1
    assert "dataset=foo" in problems[0] and "dataset=olivetti or dataset=mnist" in problems[0]
    assert "model=resnet18" in widgets.url_problems({"model": "vgg"}, OLIVETTI_NAMES)[0]
    assert "not a number" in widgets.url_problems({"identity": "abc"}, OLIVETTI_NAMES)[0]
    good = {"dataset": "olivetti", "model": "small_cnn", "identity": "39"}
    assert widgets.url_problems(good, OLIVETTI_NAMES) == [] == widgets.url_problems({})


def _url_script(app_dir: str) -> None:
    import sys
    from types import SimpleNamespace
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    import streamlit as st
    from lcodec_app import widgets
    bench = SimpleNamespace(class_names=[f"person {k:02d}" for k in range(40)])
    widgets.show_url_warnings(bench)
    st.query_params.clear()  # as state.sync_url rewrites a bad URL after the first run
    st.write("page")


def test_bad_url_values_are_shown_until_dismissed():
    at = AppTest.from_function(_url_script, args=(str(APP_DIR),), default_timeout=30)
    at.query_params.update({"identity": "999", "dataset": "foo"})
    at.run()
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 2, warnings
    assert any("dataset=foo" in w for w in warnings)
    assert any("identity=999" in w and "person 39" in w for w in warnings)
    at.run()                                           # the URL is clean now: still said
    assert len(at.warning) == 2
    at.button(key="url_warnings_ok").click().run()
    assert not at.warning


def test_the_app_warns_about_a_bad_url(trained_small_cnn):
    at = start_app({"identity": "999", "dataset": "foo"})
    warnings = " ".join(w.value for w in at.warning)
    assert "identity=999" in warnings and "dataset=foo" in warnings


# ---------------------------------------------------------------- uploads
def test_a_random_pt_upload_is_refused_with_its_reason(trained_small_cnn):
    junk = np.random.default_rng(13).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert junk[:2] != b"PK" and junk[0] != 0x80
    at = start_app()
    at.switch_page("views/model_data.py").run()
    at.get("file_uploader")[1].upload("random.pt", junk).run()
    at.button(key="md_use_upload").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("Upload refused: "), errors
    assert "not a torch checkpoint" in errors[0] and "neither a zip archive" in errors[0]
    assert "Python objects" not in errors[0]
    assert at.session_state["workbench"].key.dataset == "olivetti"


# ---------------------------------------------------------------- Before and after
def test_before_after_offers_one_scale_per_row(removed):
    at = removed
    at.switch_page(BA).run()
    assert_clean(at)
    scale = at.segmented_control(key="ba_scale")
    assert list(scale.options) == ["shared", "one scale per row"] and scale.value == "shared"
    shared = [(f["layout"]["coloraxis"]["cmin"], f["layout"]["coloraxis"]["cmax"])
              for f in ba_rows(at)]
    assert len(set(shared)) == 1  # one scale for every row
    scale.set_value("one scale per row").run()
    assert_clean(at)
    per_row = [(f["layout"]["coloraxis"]["cmin"], f["layout"]["coloraxis"]["cmax"])
               for f in ba_rows(at)]
    assert len(per_row) == len(shared) and len(set(per_row)) == len(per_row)  # each its own
    assert all(lo >= shared[0][0] - 1e-6 and hi <= shared[0][1] + 1e-6 for lo, hi in per_row)
    assert any("Each row has its own colour scale" in c.value for c in at.caption)
    at.segmented_control(key="ba_scale").set_value("shared").run()


@pytest.mark.parametrize("count", [1, 2, 3])
def test_before_after_photo_count_matches_the_setting(removed, count):
    at = removed
    at.switch_page(BA).run()
    at.slider(key="ba_count").set_value(count).run()
    assert_clean(at)
    captions = [c.value for c in at.caption if "Prediction before" in c.value]
    forgotten = [c for c in captions if c.startswith(f"**{WHO}**")]
    assert len(forgotten) == count, forgotten
    assert len(captions) == 2 * count  # as many photos of kept people
    assert len([k for k in (c.proto.id for c in at.get("plotly_chart")) if FORGOTTEN in k]) \
        == count


def test_selected_channels_without_a_conv_channel_says_so(removed):
    """The real removal's selection decides the case; then a selection of linear units only
    (the head's rows, as L-FOCI often picks) must say so, naming the units."""
    at = removed
    bench = at.session_state["workbench"]
    removal = bench.history[-1]
    convs = attributions.conv_layers(bench.original)
    real = removal.result.selected_slices
    at.switch_page(BA).run()
    at.segmented_control(key="ba_view").set_value("Selected channels").run()
    assert_clean(at)
    infos = [i.value for i in at.info]
    in_last = [s for s in real if s.module == convs[-1]]
    if in_last:      # channels of the default layer: drawn, no message
        assert not [i for i in infos if "no convolution channel" in i
                    or "selected no channel of" in i], infos
    elif any(s.module in convs for s in real):
        assert any(f"selected no channel of {convs[-1]}" in i for i in infos), infos
    else:
        assert any("no convolution channel" in i for i in infos), infos

    linear_only = [s for s in real if s.module not in convs] or [
        SelectedSlice("fc", FORGET_ID, 0.5, 0)]
    bench = at.session_state["workbench"]
    position = bench.history.index(removal)
    # the record is frozen: the session gets a new record whose engine result picked only linear units
    bench.history[position] = dataclasses.replace(
        removal, result=dataclasses.replace(removal.result, selected_slices=linear_only))
    try:
        at.run()
        assert_clean(at)
        infos = [i.value for i in at.info]
        message = next((i for i in infos if "no convolution channel" in i), None)
        assert message is not None, infos
        for s in linear_only[:8]:
            assert f"{s.module}[{s.index}]" in message
        if any(s.module == "fc" and s.index == FORGET_ID for s in linear_only):
            assert f"fc[{FORGET_ID}] ({WHO}'s output unit)" in message
        assert "Grad-CAM" in message
        assert any("Prediction before" in c.value for c in at.caption)  # maps still drawn
    finally:
        bench.history[position] = removal
        at.segmented_control(key="ba_view").set_value("Grad-CAM").run()


# ---------------------------------------------------------------- Slices
def test_slices_say_whose_output_unit_fc_k_is(removed):
    at = removed
    at.switch_page(SLICES).run()
    assert_clean(at)
    selected = at.session_state["workbench"].history[-1].result.selected_slices
    head_units = sorted({s.index for s in selected if s.module == "fc"})
    captions = [c.value for c in at.caption]
    for k in head_units[:6]:
        assert any(f"fc[{k}] is person {k:02d}'s output unit" in c for c in captions), captions
    if head_units:
        table = at.dataframe[0].value
        fc_rows = table[table["layer"] == "fc"]
        assert all(f"person {k:02d}'s output unit" == note
                   for k, note in zip(fc_rows["unit"], fc_rows["what it is"]))
    at.toggle(key="slices_free").set_value(True).run()
    at.selectbox(key="slices_layer").set_value("fc").run()
    at.number_input(key="slices_unit").set_value(22).run()
    assert_clean(at)
    assert any("fc[22] is person 22's output unit" in c.value for c in at.caption)
    assert any("Weights of fc[22] (person 22's output unit)" in s.value for s in at.subheader)
    ids = [c.proto.id for c in at.get("plotly_chart")]
    for part in ("before", "after", "change"):  # one chart per mosaic, each the column's width
        assert any(f"slices_weights_{part}" in i for i in ids), ids
    at.toggle(key="slices_free").set_value(False).run()


# ---------------------------------------------------------------- one vocabulary
PAGES = ["views/model_data.py", SLICES, BA, "views/live_accuracy.py", "views/audit.py",
         "views/ledger.py"]
BAD_WORDS = re.compile(r"\bidentity \d|\bn/a\b|\bNone\b|\binf\b|epsilon shows 'none'")


@pytest.mark.parametrize("page", PAGES)
def test_one_vocabulary_after_removing_a_person(removed, page):
    at = removed
    at.switch_page(page).run()
    assert_clean(at)
    texts = page_texts(at)
    bad = [t for t in texts if BAD_WORDS.search(t)]
    assert not bad, bad
    values = {m.label: m.value for m in at.metric}
    assert not [v for v in values.values() if v.strip().lower() in ("none", "n/a", "inf", "nan")]
    if page == "views/audit.py":
        assert values["epsilon, delta of this removal"] == "no guarantee"
        assert values["Spent by the session (all removals)"] == "no guarantee"
        if at.session_state["workbench"].history[-1].retrained is None:
            assert values["Speed-up"] == values["Retraining time"] == "–"
    if page == "views/ledger.py":
        assert values["Cumulative epsilon"] == "no guarantee"
        assert values["Cumulative delta"] == "–"
        table = at.dataframe[0].value
        assert list(table["removed"]) == [f"{WHO} (8 photos)"]
        assert list(table["guarantee"]) == ["no noise, no guarantee"]
        assert list(table["epsilon"]) == ["no guarantee"] and list(table["delta"]) == ["–"]
        # the session's ledger is shared with earlier tests: count-agnostic
        assert any(re.search(r"no guarantee: \d+ of \d+ removal", m.value) for m in at.markdown)
