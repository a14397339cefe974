"""Small Streamlit pieces the pages share: explanations, pickers, thumbnails, job progress."""
from __future__ import annotations

import html
from collections.abc import Mapping

import numpy as np
import streamlit as st
import streamlit.components.v1 as components

from lcodec_core.unlearning.config import SOLVERS, UnlearnConfig

from . import state
from .work import UNLEARN_PHASES
from .jobs import Job
from .words import (MISSING, NO_GUARANTEE, epsilon_text, number, pct, people_words,  # noqa: F401
                    person, points, request_label, unit_owner)  # the pages' words, re-exported
from .workbench import DATASET_LABELS, ZOO, ModelKey, Workbench

PHASE_LABELS = {"probe": "1. Probe: jiggle the photos and watch every slice",
                "select": "2. Select: L-FOCI picks the slices that carry them",
                "newton": "3. Step: update only those slices, as far as the target needs",
                "noise": "4. Noise: add the requested noise (only with epsilon set)",
                "retrain": "Retraining from scratch on the retained images",
                "train": "Training on your photos"}


def explain(text: str) -> None:
    """A short plain-language note under a chart or control."""
    st.caption(f":material/info: {text}")


def identity_name(bench: Workbench, identity: int) -> str:
    name = person(identity, bench.class_names)
    return f"{name} (removed)" if identity in bench.removed_identities else name


def identity_picker(bench: Workbench, key: str, label: str = "Person to forget",
                    help: str | None = None) -> int:
    """A select box bound to the session's identity (shared by pages and the URL)."""
    options = list(range(bench.bundle.num_classes))
    current = st.session_state.identity
    if current is None:
        current = next((k for k in options if k not in bench.removed_identities), 0)
        state.set_identity(current)
    st.session_state[key] = current

    def changed():
        state.set_identity(st.session_state[key])

    st.selectbox(label, options, key=key, on_change=changed, help=help,
                 format_func=lambda k: identity_name(bench, k))
    return st.session_state.identity


def thumbnails(bench: Workbench, indices: list[int], split: str = "train",
               captions: list[str] | None = None, width: int = 72) -> None:
    """Small images of ``indices`` of ``split``, wrapping on narrow screens."""
    if not indices:
        return
    dataset = bench.bundle.train if split == "train" else bench.bundle.test
    pixels = bench.bundle.to_pixels(dataset.images[indices])
    st.image(list(pixels), caption=captions, width=width)


def face(bench: Workbench, identity: int) -> np.ndarray:
    """The first training image of ``identity`` as uint8 pixels."""
    index = bench.bundle.train.indices_of(identity)[0]
    return bench.bundle.to_pixels(bench.bundle.train.images[index])


SOLVER_LABELS = {
    "fisher": "fisher: curvature from per-sample gradients (fast for any layer)",
    "auto": "auto: exact Hessian, explicit or CG by block size",
    "explicit": "explicit: the exact block Hessian (small blocks)",
    "cg": "cg: conjugate gradients on Hessian-vector products",
}
STEP_RULE_LABELS = {
    "optimum": "optimum: the head to where training without them puts it (default)",
    "target": "target: the smallest step that stops them being recognised (hides; engine v2)",
    "newton": "newton: damped Newton iterations on the kept photos",
}
EXACT_SOLVERS = ("auto", "explicit", "cg")  # what step rule "newton" can iterate with


def settings_form(key: str, defaults: UnlearnConfig, method_choice: bool = True) -> UnlearnConfig:
    """Unlearning settings with one-line help each; returns the chosen UnlearnConfig.

    ``defaults`` is what the widgets start from (the pages pass the engine's default,
    ``UnlearnConfig()``). The form never returns an invalid config: step rule "newton" needs
    an exact solver, so picking it moves a Fisher solver to "auto" (and says so).
    """
    rule_key, solver_key = f"{key}_rule", f"{key}_solver"

    def rule_changed():  # keep the solver valid for the rule, visibly
        if st.session_state[rule_key] == "newton" and st.session_state.get(solver_key) not in EXACT_SOLVERS:
            st.session_state[solver_key] = "auto"

    cols = st.columns(2)
    with cols[0]:
        method = defaults.method
        if method_choice:
            methods = ["lfoci", "random", "top1", "all", "finetune", "negrad"]
            method = st.selectbox(
                "Method", methods, index=methods.index(defaults.method) if defaults.method in methods
                else 0, key=f"{key}_method", help="lfoci: the slices L-FOCI picks (recommended). "
                "random: as many random slices. all: every slice of the model. finetune / negrad: "
                "baselines that retrain on the kept data or climb the loss on the forgotten.")
        m = st.number_input("Perturbations per image (m)", 3, 1000, defaults.num_perturbations,
                            key=f"{key}_m", help="How many jiggled copies of each forgotten "
                            "photo to probe with. More = steadier choice of slices, slower.")
        std = st.number_input("Perturbation size (std)", 0.0, 2.0, defaults.perturbation_std,
                              step=0.05, key=f"{key}_std", help="Size of the random noise added to "
                              "each normalised pixel while probing (paper: 0.1).")
        max_slices = st.number_input("Max slices", 1, 256, defaults.max_slices, key=f"{key}_k",
                                     help="Upper bound on how many slices (filters or neurons) "
                                     "may be changed.")
        seed = st.number_input("Seed", 0, 2**31 - 1, defaults.seed, key=f"{key}_seed",
                               help="Fixes the perturbations, random choices and noise.")
    with cols[1]:
        rule = st.selectbox(
            "Step rule", list(STEP_RULE_LABELS), index=list(STEP_RULE_LABELS).index(defaults.step_rule),
            key=rule_key, format_func=STEP_RULE_LABELS.get, on_change=rule_changed,
            help="optimum (the default): the model's last layer moves to the best fit of the kept "
            "photos alone, where a model trained without the removed ones would put it; attacks "
            "cannot tell it from retraining. target: the smallest step that stops them being "
            "recognised; it only hides them (one constant on their output brings them back): "
            "keep it to show the difference. newton: up to 'Newton steps' damped Newton "
            "iterations on the kept photos' loss; it needs an exact solver (auto, explicit, cg).")
        feature_step = defaults.feature_step
        if rule == "optimum":
            feature_step = st.toggle("Also move the selected slices", value=defaults.feature_step,
                                     key=f"{key}_feature_step",
                                     help="Move L-FOCI's slices outside the last layer by the "
                                     "'target' step first. Measured: it changes no attack and "
                                     "costs about a second (docs/BENCHMARKS.md).")
        if rule == "target":
            rounds = st.number_input("Step rounds", 1, 10, defaults.step_rounds, key=f"{key}_rounds",
                                     help="At most this many steps, each from the forgotten "
                                     "photos' gradient where the last one ended, until the target "
                                     "is met (usually one is enough).")
            steps = defaults.newton_steps
        elif rule == "optimum":
            rounds, steps = defaults.step_rounds, defaults.newton_steps
        else:
            rounds = defaults.step_rounds
            steps = st.number_input("Newton steps", 1, 20, defaults.newton_steps, key=f"{key}_steps",
                                    help="Step rule newton only: damped Newton steps on the kept "
                                    "photos' objective (1 = the classic single step).")
        solver = st.selectbox("Solver", list(SOLVERS), index=list(SOLVERS).index(defaults.solver),
                              key=solver_key, format_func=lambda s: SOLVER_LABELS.get(s, s),
                              help="Where the curvature of the step comes from: the Fisher "
                              "matrix of per-sample gradients (the default, fast for any layer), "
                              "or the exact block Hessian (explicit, or conjugate gradients).")
        if rule == "newton" and solver not in EXACT_SOLVERS:
            solver = "auto"
            st.caption(":material/info: Newton steps need the exact Hessian: the solver is "
                       "'auto' with this step rule.")
        noise = st.toggle("Add noise (epsilon, delta)", value=defaults.epsilon is not None,
                          key=f"{key}_noise",
                          help="Off (the default): no noise and no guarantee claimed. On: Gaussian "
                          "noise sized for epsilon and delta by Sekhari et al.'s bound. It "
                          "certifies forgetting only for one full Newton step on a convex model "
                          "with noise on every weight; otherwise it is a heuristic, no guarantee. "
                          "On a network its size usually wrecks the model.")
        epsilon = st.number_input("epsilon", 0.01, 1e6, defaults.epsilon or 1000.0,
                                  key=f"{key}_eps", disabled=not noise,
                                  help="Privacy budget: smaller = stronger promise, more noise.")
        delta = st.number_input("delta", 1e-12, 0.5, defaults.delta, format="%.1e",
                                key=f"{key}_delta", disabled=not noise,
                                help="Chance the guarantee fails; keep it below 1/n.")
        wrecked = st.checkbox("Keep a wrecked model anyway", value=defaults.allow_harmful_noise,
                              key=f"{key}_wrecked", disabled=not noise,
                              help="Noise that would leave the kept photos recognised near chance "
                              "is refused and nothing changes. Tick this to apply it on purpose.")
    return defaults.with_(method=method, num_perturbations=int(m), perturbation_std=float(std),
                          max_slices=int(max_slices), step_rule=rule, step_rounds=int(rounds),
                          feature_step=bool(feature_step),
                          solver=solver, newton_steps=int(steps),
                          epsilon=float(epsilon) if noise else None, delta=float(delta),
                          allow_harmful_noise=bool(noise and wrecked), seed=int(seed))


def _phase_rows(box, job: Job, phases) -> None:
    events, latest = job.snapshot()
    seen = [e.get("phase") for e in events]
    last = next((p for p in reversed(seen) if p in phases), None)
    for phase in phases:
        event = latest.get(phase)
        if event is None and (last is None or phases.index(phase) > phases.index(last)):
            if phase == "noise":
                continue
            box.progress(0.0, text=f"{PHASE_LABELS.get(phase, phase)}: waiting")
            continue
        done = last is not None and phases.index(phase) < phases.index(last)
        fraction = 1.0 if done or "done" in latest else float(event.get("fraction", 0.0))
        message = _session_words(event.get("message", "")) if event else ""
        box.progress(min(max(fraction, 0.0), 1.0),
                    text=f"{PHASE_LABELS.get(phase, phase)}: {'done' if done else message}")


def _session_words(text: str) -> str:
    """``text`` in the pages' words, with the session's class names."""
    bench = st.session_state.get("workbench")
    return people_words(str(text), bench.class_names if bench is not None else None)


def _job_label(job: Job) -> str:
    return _session_words(job.label)


@st.fragment(run_every=0.5)
def job_progress(kinds: tuple[str, ...]) -> None:
    """Live progress of the session's running job (if its kind is drawn here)."""
    job = state.current_job()
    if job is None or job.kind not in kinds:
        return
    if job.done:
        st.rerun(scope="app")
    # Not a `with` block: leaving one marks the status complete while the job still runs.
    box = st.status(f"{_job_label(job)} ({job.elapsed_s:.0f} s)", expanded=True, state="running")
    if job.kind == "unlearn":
        _phase_rows(box, job, list(UNLEARN_PHASES))
    elif job.kind in ("retrain", "train"):
        _phase_rows(box, job, [job.kind])
    else:
        _, latest = job.snapshot()
        step = latest.get("step", {})
        box.progress(float(step.get("fraction", 0.0)), text=step.get("message", "starting"))
        event = latest_inner_event(job.snapshot()[0])
        if event is not None:
            if event.get("phase") == "retrain":
                box.progress(min(max(float(event.get("fraction", 0.0)), 0.0), 1.0),
                             text=f"reference: {_session_words(event.get('message', ''))}")
            else:
                box.caption(f"now: {_session_words(event.get('message', ''))}")
    stop_control(box, job)


def latest_inner_event(events: list[dict]) -> dict | None:
    """The newest event of a Live accuracy job that is not a finished step or reference row:
    a removal's phase, or the reference retraining's epoch (which carries no step number)."""
    return next((e for e in reversed(events) if e.get("phase") not in ("step", "reference")), None)


CONFIRM_STOP_KEY = "confirm_stop"


def stop_control(box, job: Job) -> None:
    """The one Stop of a job: ask, then stop at the engine's next progress event.

    The page confirms afterwards what the stop left (:func:`show_job_error`). Streamlit's own
    "Stop" in the header only stops drawing the page, so the app hides it (see the app script).
    """
    if job.stop_requested:
        box.caption("Stopping at the next checkpoint...")
        return
    if st.session_state.get(CONFIRM_STOP_KEY) != id(job):
        box.button("Stop", key=f"stop_{job.kind}", icon=":material/stop:",
                   on_click=lambda: st.session_state.update({CONFIRM_STOP_KEY: id(job)}))
        return
    box.warning(f"Stop '{_job_label(job)}'? " + (
        "Removals finished so far stay in the chart; the session's model is not changed."
        if job.kind == "live" else "Nothing it has done so far is kept: the model stays as it "
        "was before."), icon=":material/help:")
    yes, no = box.columns(2)
    yes.button("Yes, stop", key=f"stop_yes_{job.kind}", type="primary", icon=":material/stop:",
               on_click=state.stop_job)
    no.button("Keep running", key=f"stop_no_{job.kind}",
              on_click=lambda: st.session_state.pop(CONFIRM_STOP_KEY, None))


@st.fragment(run_every=1.0)
def job_badge() -> None:
    """One line in the sidebar while a job runs, on every page; reruns the app when it ends."""
    job = state.current_job()
    if job is None:
        return
    if job.done:
        st.rerun(scope="app")
    st.caption(f":material/hourglass_top: {_job_label(job)}... ({job.elapsed_s:.0f} s)")


def show_job_error(kind: str) -> None:
    """The last ``kind`` job's failure, or the confirmation that the user stopped it."""
    message = state.job_error(kind)
    if message:
        st.error(message, icon=":material/error:")
    note = state.job_note(kind)
    if note:
        st.info(_session_words(note), icon=":material/stop_circle:")


def show_session_notice() -> None:
    """Once after a reload: what this tab got back, or that its earlier work is gone."""
    notice = st.session_state.pop("session_notice", None)
    if notice is None:
        return
    kind, message = notice
    if kind == "restored":
        st.success(message, icon=":material/restore:")
    else:
        st.warning(message, icon=":material/history_toggle_off:")


NARROW_PX = 768  # below this width Streamlit draws the sidebar over the page

_FOLD_SIDEBAR_JS = """<script>
const app = window.parent, page = "%s";
const previous = app.__lcodecPage;
app.__lcodecPage = page;
if (previous !== undefined && previous !== page && app.innerWidth < %d) {
  const fold = app.document.querySelector('[data-testid="stSidebarCollapseButton"] button');
  if (fold && fold.getBoundingClientRect().width > 0) fold.click();
}
</script>"""


def fold_sidebar_when_narrow(page_path: str) -> None:
    """On a phone-sized screen, fold the sidebar away after the user picked a page in it.

    Streamlit leaves the sidebar open over the content after a navigation on narrow screens.
    The snippet runs in a zero-height component (the page's path is part of it, so a new
    page mounts it again) and clicks the sidebar's own fold button only when the page changed
    since it last ran: never on the first load (Streamlit starts folded on phones) and never
    on a redraw of the same page, so a sidebar the user just opened stays open.
    """
    components.html(_FOLD_SIDEBAR_JS % (html.escape(page_path or "start"), NARROW_PX), height=0)


def require_removal(bench: Workbench) -> bool:
    """Guard: True if the session has a removal; otherwise say how to make one."""
    if bench.history:
        return True
    st.info("Nothing has been removed yet in this session. Remove a person on the **Forget** "
            "page (or follow **Start here**) and come back.", icon=":material/arrow_back:")
    st.page_link("views/forget.py", label="Go to Forget", icon=":material/delete:")
    return False


def busy() -> bool:
    job = state.current_job()
    return job is not None and not job.done


# Bad URL parameters ---------------------------------------------------------------------------

def url_problems(params: Mapping, class_names: list[str] | None = None) -> list[str]:
    """What is wrong with the URL's ``dataset``, ``model`` and ``identity``, in words that name
    the bad value and what is valid (empty when nothing is). Pure: ``params`` is any mapping
    (``st.query_params``); ``class_names`` are the classes of the model the session loaded (the
    fallback one when the data set was bad), needed to check the identity's range."""
    problems = []
    dataset, model, identity = (params.get(k) for k in ("dataset", "model", "identity"))
    key = ModelKey.parse(dataset, model)
    if dataset is not None and dataset != key.dataset:
        problems.append(f"The link's dataset={dataset} does not exist here; showing "
                        f"{DATASET_LABELS.get(key.dataset, key.dataset)} instead. Valid: "
                        + " or ".join(f"dataset={d}" for d in ZOO) + ".")
    if model is not None and model != key.model:
        problems.append(f"The link's model={model} is not offered for {key.dataset}; showing "
                        f"{key.model} instead. Valid for {key.dataset}: "
                        + " or ".join(f"model={m}" for m in ZOO[key.dataset]) + ".")
    if identity is not None:
        try:
            value = int(identity)
        except (TypeError, ValueError):
            value = None
        count = len(class_names) if class_names is not None else None
        valid = (f"identity=0 to identity={count - 1} ({person(0, class_names)} to "
                 f"{person(count - 1, class_names)})" if count else "a class number")
        if value is None:
            problems.append(f"The link's identity={identity} is not a number, so it is ignored. "
                            f"Valid: {valid}.")
        elif count is not None and not 0 <= value < count:
            problems.append(f"The link's identity={identity} names no one this model knows (it "
                            f"knows {count} classes), so it is ignored. Valid: {valid}.")
    return problems


def url_warnings(class_names: list[str] | None = None) -> list[str]:
    """:func:`url_problems` of this page's URL (``st.query_params``)."""
    return url_problems(st.query_params, class_names)


URL_WARNINGS_KEY = "url_warnings"


def show_url_warnings(bench: Workbench) -> None:
    """Say what was wrong with the URL the session was opened with, until dismissed.

    Checks the URL once per session, on its first run (before ``state.sync_url`` rewrites a
    bad URL to what the session shows); call it on every run, after ``state.workbench``.
    """
    messages = st.session_state.get(URL_WARNINGS_KEY)
    if messages is None:
        messages = st.session_state[URL_WARNINGS_KEY] = url_warnings(bench.class_names)
    if not messages:
        return
    for message in messages:
        st.warning(message, icon=":material/link_off:")

    def dismiss():
        st.session_state[URL_WARNINGS_KEY] = []

    st.button("OK", key="url_warnings_ok", on_click=dismiss, type="tertiary")
