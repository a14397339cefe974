"""The dashboard under Streamlit's AppTest harness: every page, the main flows, session isolation.

Removals run with the engine's default settings (``UnlearnConfig()``, which every page starts
from), on identities it removes reliably, five removals and one retraining in all, so the
module stays within a few minutes on two CPU cores. Jobs run on threads in the app; ``finish``
waits for the session's job and reruns the script, as the page's polling fragment would.
"""
from __future__ import annotations

import json

import pytest
import torch
from streamlit.testing.v1 import AppTest

from apptest import (APP, FORGET_ID, JOB_TIMEOUT_S, OTHER_ID, assert_clean, finish, run_forget,
                     start_app)

PAGES = ["views/start.py", "views/model_data.py", "views/forget.py", "views/slices.py",
         "views/before_after.py", "views/live_accuracy.py", "views/audit.py", "views/ledger.py"]
NEEDS_REMOVAL = ["views/slices.py", "views/before_after.py", "views/audit.py"]


def metric(at: AppTest, label: str) -> float:
    """The value of the st.metric called ``label``, as a fraction."""
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r}; have {[m.label for m in at.metric]}"
    return float(values[0].rstrip("%")) / 100


def base_hash() -> str:
    """Hash of the shared base model, straight from the server-wide cache."""
    from lcodec_app import state
    from lcodec_models import state_hash
    return state_hash(state.shared_base("olivetti", "small_cnn").checkpoint.model)


@pytest.fixture(scope="module")
def trained(trained_small_cnn):
    """The default model, trained and cached in the test LCODEC_HOME before the app loads it."""
    checkpoint, _ = trained_small_cnn
    from lcodec_models import state_hash
    return state_hash(checkpoint.model)


@pytest.fixture(scope="module")
def engine_calls(trained):
    """Every call the app makes to the engine's ``unlearn`` in this module: (args, kwargs)."""
    from lcodec_app import work
    calls, real = [], work.unlearn_fn

    def spy():
        unlearn = real()

        def recorded(*args, **kwargs):
            calls.append((args, kwargs))
            return unlearn(*args, **kwargs)
        return recorded

    work.unlearn_fn = spy
    yield calls
    work.unlearn_fn = real


@pytest.fixture(scope="module")
def removed(trained, engine_calls) -> AppTest:
    """A session that followed the guided first removal of person FORGET_ID on Start here."""
    at = start_app({"identity": str(FORGET_ID)})
    at.button(key="start_run").click().run()
    assert_clean(at)
    return finish(at)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_before_any_removal(trained, page):
    at = start_app()
    at.switch_page(page).run()
    assert_clean(at)
    assert at.title, f"{page} has no title"
    if page in NEEDS_REMOVAL:
        assert any("Nothing has been removed yet" in i.value for i in at.info)


def test_url_carries_model_and_identity(trained):
    at = start_app({"dataset": "olivetti", "model": "small_cnn", "identity": "7"})
    assert at.selectbox(key="start_identity").value == 7
    at.selectbox(key="start_identity").set_value(9).run()
    assert at.query_params["identity"] == "9"
    assert at.query_params["model"] == "small_cnn"
    bad = start_app({"dataset": "nope", "model": "nope", "identity": "999"})
    assert bad.query_params["dataset"] == "olivetti"
    assert "identity" not in bad.query_params or bad.query_params["identity"] != "999"


def test_guided_first_removal_forgets_the_person(removed, trained, engine_calls):
    from lcodec_core.unlearning.config import UnlearnConfig
    bench = removed.session_state["workbench"]
    assert [r.request.identity for r in bench.history] == [FORGET_ID]
    removal = bench.history[-1]
    # The banner is the verdict read from the numbers: forgotten, with the accuracy it saw.
    verdict = removal.verdict
    assert verdict.status == "forgotten" and verdict.ok
    assert [s.value for s in removed.success] == [verdict.headline]
    assert f"Forgotten: person {FORGET_ID:02d} is no longer recognised (0%" in verdict.headline
    assert not removed.warning
    assert metric(removed, "Forgotten photos") <= 0.05
    assert metric(removed, "Held-out, forgotten") <= 0.10
    assert metric(removed, "Retained photos") >= 0.99 * removal.before["retain_accuracy"]
    # The engine's default, with the held-out photos, and its guarantee label in words.
    assert removal.config == UnlearnConfig()
    (_, kwargs), = engine_calls[:1]
    # the step may read only the calibration half of the held-out photos (never the report half)
    calibration = removal.attacks["held_out"]["calibration"]
    assert torch.equal(kwargs["held_out"].images, bench.bundle.test.images[calibration])
    assert removal.result.guarantee == "none"
    assert any("**Guarantee**: no noise, no guarantee." in m.value for m in removed.markdown)
    step = removal.result.diagnostics["step"]
    assert step["rule"] == "retained_optimum" and step["converged"]
    assert step["null_control"]["ratio"] < 0.01
    details = next(m.value for m in removed.markdown if "Null control" in m.value)
    assert "the same solve with nothing removed moves the head" in details
    assert "retained objective's gradient on the head went from" in details
    # the attacks the verdict read are on the page, before and after
    attacks = next(df.value for df in removed.dataframe if "attack" in df.value.columns)
    assert list(attacks.columns) == ["attack", "before", "unlearned"]
    assert any("relearning steps" in a for a in attacks["attack"])
    assert removed.button(key="start_run").disabled  # this person is gone now
    assert base_hash() == trained


def test_presets_are_gone_and_every_page_starts_from_the_engine_default(trained):
    import importlib.util

    from lcodec_core.unlearning.config import SOLVERS, UnlearnConfig
    assert importlib.util.find_spec("lcodec_app.presets") is None
    default = UnlearnConfig()
    at = start_app()
    for page, key in (("views/forget.py", "forget"), ("views/live_accuracy.py", "live")):
        at.switch_page(page).run()
        assert_clean(at)
        assert at.number_input(key=f"{key}_m").value == default.num_perturbations
        assert at.number_input(key=f"{key}_k").value == default.max_slices
        assert at.selectbox(key=f"{key}_rule").value == default.step_rule == "optimum"
        assert at.toggle(key=f"{key}_feature_step").value == default.feature_step is False
        assert at.selectbox(key=f"{key}_solver").value == default.solver
        assert at.selectbox(key=f"{key}_solver").options == [
            at.selectbox(key=f"{key}_solver").format_func(s) for s in SOLVERS]
        assert not at.toggle(key=f"{key}_noise").value
        assert at.checkbox(key=f"{key}_wrecked").disabled  # only with noise on
        assert not [n for n in at.number_input if n.key == f"{key}_steps"]  # Newton rule only
        assert not [n for n in at.number_input if "subsample" in n.label.lower()
                    or "Curvature from" in n.label]


def test_newton_step_rule_keeps_the_settings_valid(trained):
    at = start_app()
    at.switch_page("views/forget.py").run()
    assert at.selectbox(key="forget_solver").value == "fisher"
    at.selectbox(key="forget_rule").set_value("newton").run()
    assert_clean(at)
    assert at.selectbox(key="forget_solver").value == "auto"  # fisher cannot iterate Newton
    assert at.number_input(key="forget_steps").value == 5
    assert not [n for n in at.number_input if n.key == "forget_rounds"]
    at.selectbox(key="forget_solver").set_value("fisher").run()  # picked by hand: still valid
    assert_clean(at)
    assert any("solver is 'auto' with this step rule" in c.value for c in at.caption)
    at.toggle(key="forget_noise").set_value(True).run()          # noise on: a sigma warning
    assert_clean(at)
    assert any("This noise is large: sigma = " in w.value for w in at.warning)
    assert not at.checkbox(key="forget_wrecked").disabled


@pytest.mark.parametrize("page", NEEDS_REMOVAL)
def test_pages_after_a_removal(removed, page):
    removed.switch_page(page).run()
    assert_clean(removed)
    assert removed.get("plotly_chart"), f"{page} drew no chart"


def test_slices_page_lists_the_selection(removed):
    removed.switch_page("views/slices.py").run()
    bench = removed.session_state["workbench"]
    selected = bench.history[-1].result.selected_slices
    assert metric_text(removed, "Slices selected") == str(len(selected))
    free = removed.toggle(key="slices_free").set_value(True).run()
    free.selectbox(key="slices_layer").set_value("conv1").run()
    assert_clean(free)
    removed.toggle(key="slices_free").set_value(False).run()


def metric_text(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_before_after_activation_view(removed):
    removed.switch_page("views/before_after.py").run()
    removed.segmented_control(key="ba_view").set_value("Selected channels").run()
    assert_clean(removed)
    assert any("Prediction before" in c.value for c in removed.caption)


def test_audit_retrains_and_downloads(removed, tmp_path):
    from lcodec_app import report
    from lcodec_models import load_checkpoint
    removed.switch_page("views/audit.py").run()
    removed.button(key="audit_retrain").click().run()
    finish(removed)
    bench = removed.session_state["workbench"]
    retrained = bench.history[-1].retrained
    assert retrained is not None and retrained["forget_accuracy"] <= 0.2
    assert metric_text(removed, "Speed-up").endswith("x")
    audit = bench.history[-1].audit
    assert audit["unlearned"]["mia_efficacy"] >= 0.8 and 0 <= audit["retrained"]["mia_auc"] <= 1
    assert audit["unlearned"]["kl_to_retrained"]["forget"] < audit["original"]["kl_to_retrained"]["forget"]
    mia_table = next(t.value for t in removed.dataframe if "loss attack AUC" in t.value.index)
    assert list(mia_table.columns) == ["original", "unlearned", "retrained"]
    assert mia_table.loc["loss attack AUC", "retrained"] == f"{audit['retrained']['mia_auc']:.3f}"
    assert len(removed.get("download_button")) == 3
    data = json.loads(report.report_json(bench))
    assert data["removals"][0]["request"]["identity"] == FORGET_ID
    assert data["removals"][0]["retrained"] is not None
    assert data["removals"][0]["audit"]["unlearned"]["mia_efficacy"] == audit["unlearned"]["mia_efficacy"]
    assert "| forget accuracy |" in report.report_markdown(bench)
    assert "| membership attack AUC |" in report.report_markdown(bench)
    path = tmp_path / "model.pt"
    path.write_bytes(report.model_bytes(bench))
    loaded = load_checkpoint(path)
    from lcodec_models import state_hash
    assert state_hash(loaded.model) == bench.current_hash
    assert loaded.metadata["lineage"]["removals"][0]["identity"] == FORGET_ID


def test_two_sessions_forget_at_once_then_undo_and_reset(trained):
    first, second = start_app(), start_app()
    run_forget(first, FORGET_ID)
    run_forget(second, OTHER_ID)  # both jobs now run at once, on two threads
    finish(first)
    finish(second)
    one, two = first.session_state["workbench"], second.session_state["workbench"]
    assert [r.request.identity for r in one.history] == [FORGET_ID]
    assert [r.request.identity for r in two.history] == [OTHER_ID]
    assert one.original is not two.original and one.current is not two.current
    assert one.current_hash != two.current_hash
    assert one.base_hash == two.base_hash == trained == base_hash()
    assert any(s.value.startswith("Forgotten: person") for s in first.success)  # result in place
    assert not start_app().session_state["workbench"].history  # a new session starts clean

    first.button(key="forget_undo").click().run()
    assert_clean(first)
    assert not one.history and one.current_hash == trained
    assert not first.get("plotly_chart")  # the result went with the removal
    assert [r.request.identity for r in two.history] == [OTHER_ID]  # the other session is untouched

    second.button(key="forget_reset").click().run()
    assert_clean(second)
    assert not two.history and two.current is two.original
    assert base_hash() == trained


def test_live_accuracy_stream_and_stop(trained):
    at = start_app()
    at.switch_page("views/live_accuracy.py").run()
    at.multiselect(key="live_people").set_value([FORGET_ID, OTHER_ID])
    at.radio(key="live_reference").set_value("none")
    at.button(key="live_start").click().run()
    assert_clean(at)
    finish(at)
    job = at.session_state["finished"]["live"]
    rows = [e["row"] for e in job.events if e.get("phase") == "step"]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[-1]["forget_accuracy"] <= 0.5 and rows[-1]["retain_accuracy"] >= 0.9
    assert at.get("plotly_chart")
    assert not at.session_state["workbench"].history  # a sandbox: the session model is unchanged

    at.multiselect(key="live_people").set_value([1, 2, 3]).run()
    at.button(key="live_start").click().run()
    at.session_state["job"].stop()
    job = at.session_state["job"]
    assert job.wait(JOB_TIMEOUT_S) and job.cancelled
    at.run()
    assert_clean(at)
    assert any(i.value.startswith("Stopped 'Removing 3 one after another' after") and
               "removal" in i.value and "model is unchanged" in i.value for i in at.info)


def test_uploaded_checkpoint_becomes_the_sessions_model(trained, trained_small_cnn, tmp_path):
    checkpoint, _ = trained_small_cnn
    data = checkpoint.save(tmp_path / "model.pt").read_bytes()
    at = start_app()
    at.switch_page("views/model_data.py").run()
    at.get("file_uploader")[1].upload("model.pt", data).run()
    at.button(key="md_use_upload").click().run()
    assert_clean(at)
    bench = at.session_state["workbench"]
    assert bench.key.dataset == "upload:olivetti" and bench.base_hash == trained
    assert "dataset" not in at.query_params  # a private upload is not put in the URL
    at.switch_page("views/start.py").run()
    assert_clean(at)
    assert base_hash() == trained


def test_hostile_uploads_are_refused_and_the_session_keeps_working(trained):
    import io
    import os
    import pickle
    import zipfile

    class RunsCode:
        def __reduce__(self):
            return os.system, ("touch /tmp/lcodec-pwned",)

    traversal = io.BytesIO()
    with zipfile.ZipFile(traversal, "w") as archive:
        archive.writestr("../../evil.png", b"not really")
    at = start_app()
    at.switch_page("views/model_data.py").run()
    for index, (name, data) in enumerate([("evil.pt", pickle.dumps(RunsCode())),
                                          ("evil.zip", traversal.getvalue())]):
        uploader = at.get("file_uploader")[1 if name.endswith(".pt") else 0]
        uploader.upload(name, data).run()
        at.button(key="md_use_upload").click().run()
        assert not at.exception
        assert any("Upload refused" in e.value for e in at.error), name
        uploader = at.get("file_uploader")[1 if name.endswith(".pt") else 0]
        uploader.set_value(None)
        at.run()
    assert not os.path.exists("/tmp/lcodec-pwned")
    assert at.session_state["workbench"].key.dataset == "olivetti"
    at.switch_page("views/start.py").run()
    assert_clean(at)


def test_zip_of_photos_trains_a_private_model(trained):
    import io
    import zipfile

    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for person in ("ada", "bo", "cy"):
            face = rng.random((32, 32))
            for k in range(6):
                pixels = np.clip(face + 0.1 * rng.standard_normal((32, 32)), 0, 1)
                image = io.BytesIO()
                Image.fromarray((pixels * 255).astype(np.uint8)).save(image, format="PNG")
                archive.writestr(f"faces/{person}/{k}.png", image.getvalue())
    at = start_app()
    at.switch_page("views/model_data.py").run()
    at.get("file_uploader")[0].upload("faces.zip", buffer.getvalue(), "application/zip").run()
    at.button(key="md_use_upload").click().run()
    assert_clean(at)
    finish(at)
    bench = at.session_state["workbench"]
    assert bench.key == type(bench.key)("upload:faces.zip", "small_cnn")
    assert bench.class_names == ["ada", "bo", "cy"]
    assert [b.label for b in at.button if b.key and b.key.startswith("md_pick_")] == bench.class_names


def test_mnist_logistic_regression_end_to_end(trained):
    """The other built-in data set: trained on first use, a digit removed, maps without convs."""
    at = AppTest.from_file(str(APP), default_timeout=600)  # the first run trains the model
    at.query_params.update({"dataset": "mnist", "model": "logreg", "identity": "3"})
    at.run()
    assert_clean(at)
    assert at.session_state["workbench"].key.dataset == "mnist"
    at.button(key="start_run").click().run()
    finish(at)
    assert metric(at, "Forgotten photos") <= 0.5
    assert metric(at, "Retained photos") >= 0.8
    for page in NEEDS_REMOVAL[:2]:  # slices (a 28x28 weight picture), maps (input saliency)
        at.switch_page(page).run()
        assert_clean(at)
        assert at.get("plotly_chart")
    assert base_hash() == trained  # the Olivetti base model was never touched
