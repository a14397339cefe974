"""The "How it works" page: its pieces (app/lcodec_app/teaching.py) and the page under AppTest,
before any removal and after one removal of person FORGET_ID (one removal in all)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from apptest import FORGET_ID, assert_clean, finish, run_forget, start_app

PAGE = "views/how_it_works.py"


def page_text(at) -> str:
    """Every text the page shows: markdown, captions, titles, alerts, metrics and chart specs."""
    parts = [e.value for group in (at.markdown, at.caption, at.title, at.header, at.info,
                                   at.success, at.warning, at.error) for e in group]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    parts += [e.proto.spec for e in at.get("plotly_chart")]
    parts += [df.value.to_string() for df in at.dataframe]
    return "\n".join(parts)


# ------------------------------------------------------------------------- teaching.py, unit tests
def test_codec_example_tells_dependence_from_its_look_alike():
    from lcodec_app import teaching, teaching_outcome
    from lcodec_app.words import MISSING
    dependent, independent = teaching.codec_example(n=200, seed=0)
    assert len(dependent.x) == 200 and len(independent.y) == 200
    assert dependent.conditional > 0.6               # Y is (almost) a function of Z and X
    assert abs(independent.conditional) < 0.15       # Z adds nothing once X is known
    assert independent.unconditional > 0.3           # ... although it looks related without X
    again = teaching.codec_example(n=200, seed=0)    # seeded
    assert again[0].conditional == dependent.conditional
    fig = teaching.codec_figure((dependent, independent))
    titles = [a.text for a in fig.layout.annotations]
    assert f"given X: T(Y, Z | X) = {dependent.conditional:.2f}" in titles
    assert len(fig.data) == 4


def test_jiggled_copies_and_what_probing_records():
    from lcodec_app import teaching, teaching_outcome
    from lcodec_app.words import MISSING
    image = torch.zeros(1, 8, 8)
    copies = teaching.jiggled_copies(image, count=3, std=0.1, seed=0)
    assert copies.shape == (4, 1, 8, 8)
    assert torch.equal(copies[0], image)
    assert 0.05 < float(copies[1:].std()) < 0.15
    assert not torch.equal(copies[1], copies[2])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(128, 3))
    record = teaching.record_probe(model, copies, label=1)
    assert record["slices"] == ["0[0]", "0[1]", "2[0]", "2[1]", "2[2]"]
    assert record["activations"].shape == (4, 5) and record["loss"].shape == (4,)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(copies), torch.ones(4, dtype=torch.long),
                                               reduction="none")
    assert torch.allclose(torch.from_numpy(record["loss"]).float(), expected, atol=1e-6)
    rows = teaching.probe_rows(record, ["2[1]", "nope[0]"])
    assert [r["photo"] for r in rows] == ["original", "jiggled copy 1", "jiggled copy 2",
                                          "jiggled copy 3"]
    assert set(rows[0]) == {"photo", "loss", "activation of 2[1]"}


def test_selection_figure_and_text_follow_pick_order():
    from lcodec_app import teaching, teaching_outcome
    from lcodec_app.words import MISSING
    from lcodec_core.unlearning.result import SelectedSlice
    picks = [SelectedSlice("conv3", 4, 0.12, 1), SelectedSlice("fc", 5, 0.61, 0)]
    fig = teaching.selection_figure(picks)
    assert list(fig.data[0].x) == ["1. fc[5]", "2. conv3[4]"]
    assert list(fig.data[0].y) == [0.61, 0.12]
    text = teaching.selection_text(picks, {"candidates": 120,
                                           "stopped_because": "max_features_reached"}, 2)
    assert "**fc[5]** first" in text and "120" in text
    assert "reached the cap on how many slices to pick (max slices: 2)" in text
    assert "every feature was selected" in teaching.stop_reason("all_features_selected")
    nan_bars = teaching.selection_figure([SelectedSlice("fc", 1, float("nan"), 0)])
    assert list(nan_bars.data[0].y) == [None]
    assert teaching.stop_reason("") == "not recorded"


def test_head_units_own_and_look_alike():
    from lcodec_app import teaching, teaching_outcome
    from lcodec_app.words import MISSING
    from lcodec_core.unlearning.result import SelectedSlice
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 30))
    picks = [SelectedSlice("3", 0, 0.5, 0), SelectedSlice("1", 2, 0.2, 1),
             SelectedSlice("3", 22, 0.1, 2)]
    head, rows, on_head = teaching.head_picks(model, picks, identity=0)
    assert (head, rows) == ("3", 30)
    assert [(p.label, p.own, p.owner) for p in on_head] == [("3[0]", True, "person 00"),
                                                            ("3[22]", False, "person 22")]
    text = teaching.head_text(head, on_head, 0, alikes=[(22, 3.5), (7, 1.25)])
    assert "person 00's own output unit" in text
    assert "person 22 is a look-alike" in text
    assert "3[22] gave the highest score after person 00's own (mean 3.5)" in text
    assert "no unit of 3" in teaching.head_text(head, [], 0)
    images = torch.randn(5, 1, 2, 2)
    alikes = teaching.look_alikes(model, images, identity=0, top=3)
    assert len(alikes) == 3 and all(k != 0 for k, _ in alikes)
    assert alikes[0][1] >= alikes[1][1] >= alikes[2][1]


def test_step_lines_say_honestly_who_did_the_work():
    from lcodec_app import teaching, teaching_outcome
    from lcodec_app.words import MISSING
    step = {"rule": "removed_class", "rule_text": "smallest step after which ...", "damping": 0.02,
            "target_met": True, "guard_limited": False,
            "null_control": {"step_norm": 0.0, "ratio": 0.0},
            "curvature_effect": {"angle_deg": 1.2, "norm_ratio": 1.03},
            "stationarity": {"block_gradient_norm": 1e-4, "forget_gradient_norm": 0.3,
                             "ratio": 3e-4},
            "rounds": [{"damping": 0.05}, {"damping": 0.02}]}
    text = "\n".join(teaching_outcome.step_lines(step))
    assert "smallest step after which ..." in text and "2 rounds" in text
    assert "the damping (the step size) did most of the work" in text
    assert "0 means the change comes from the removal alone" in text
    assert teaching_outcome.curvature_figure(step["curvature_effect"]) is not None
    turned = dict(step, curvature_effect={"angle_deg": 40.0, "norm_ratio": 0.5})
    assert "turned or rescaled" in "\n".join(teaching_outcome.step_lines(turned))
    assert teaching_outcome.curvature_figure({"angle_deg": float("nan"), "norm_ratio": 1}) is None
    assert not teaching_outcome.curvature_small(None)


def test_guarantee_and_audit_pieces():
    from lcodec_app import teaching, teaching_outcome
    from lcodec_app.words import MISSING
    from lcodec_core.unlearning.config import UnlearnConfig
    from lcodec_core.unlearning.guarantee import GUARANTEES
    rows = teaching_outcome.guarantee_rows("none")
    assert [r["label"] for r in rows] == list(GUARANTEES)
    assert [r["label"] for r in rows if r["this removal"]] == ["none"]

    class Result:
        guarantee, sigma = "heuristic", 0.5
        guarantee_reasons = ["the model's objective is not strongly convex"]
    lines = "\n".join(teaching_outcome.guarantee_lines(Result(), UnlearnConfig(epsilon=1.0)))
    assert "heuristic noise, no guarantee" in lines and "not strongly convex" in lines
    assert "epsilon = 1" in lines
    table = teaching_outcome.accuracy_rows({"forget_accuracy": 1.0}, {"forget_accuracy": 0.0})
    assert table[0]["before"] == "100.0%" and table[0]["after"] == "0.0%"
    assert table[3]["after"] == MISSING     # one vocabulary: the pages say "–" for a missing number
    assert "Audit page" in teaching_outcome.mia_text(None)
    assert "unlearned 0.480" in teaching_outcome.mia_text({"unlearned": {"mia_auc": 0.48}})
    assert teaching.person(5) == "person 05"


# ------------------------------------------------------------------------- the page, under AppTest
@pytest.fixture(scope="module")
def trained(trained_small_cnn):
    return trained_small_cnn


def test_page_renders_before_any_removal(trained):
    at = start_app()
    at.switch_page(PAGE).run()
    assert_clean(at)
    assert [t.value for t in at.title] == ["How it works"]
    assert any("Nothing has been removed yet" in i.value for i in at.info)
    text = page_text(at)
    assert "T(Y, Z | X)" in text and "output unit" in text and "(epsilon, delta)" in text
    assert "membership-inference attack" in text
    assert len(at.get("plotly_chart")) == 1            # the L-CODEC example only


def test_page_explains_this_sessions_removal(trained):
    at = start_app()
    run_forget(at, FORGET_ID)
    finish(at)
    at.switch_page(PAGE).run()
    assert_clean(at)
    removal = at.session_state["workbench"].history[-1]
    assert removal.request.identity == FORGET_ID
    text = page_text(at)
    assert not any("Nothing has been removed yet" in i.value for i in at.info)
    assert f"person {FORGET_ID:02d}" in text
    result = removal.result
    first = min(result.selected_slices, key=lambda s: s.order)
    label = f"{first.module}[{first.index}]"
    assert f"picked **{label}** first" in text
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    bars = [c for c in charts if c["data"][0].get("type") == "bar"]
    assert bars and bars[0]["data"][0]["x"][0] == f"1. {label}"
    step = result.diagnostics["step"]
    assert step["rule_text"] in text
    assert f"`{result.guarantee}`" in text and "no noise, no guarantee" in text
    verdict = removal.verdict
    assert any(verdict.headline in m.value for m in [*at.success, *at.warning, *at.error])
    assert step["rule"] == "retained_optimum"
    assert "removed, not hidden" in text and "best fit of the kept photos" in text
    attacks = removal.attacks["unlearned"]
    assert f"{attacks['offset_constant']:.1f}" in text       # this session's own numbers
    assert "What the slices L-FOCI picked add" in text
