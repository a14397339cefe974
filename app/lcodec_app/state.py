"""Streamlit glue for a session: the shared base model, this session's workbench, jobs, the URL.

Session-state keys (all owned here):
    model_key      ModelKey the session works on (from ?dataset=&model= on first load)
    identity       the chosen identity (from ?identity=), or None
    workbench      the session's Workbench (private model copies and removal history)
    job            the running Job, if any (one at a time per session)
    finished       {kind: the last finished Job of that kind}, for pages to draw
    job_errors     {kind: message} of the last failed job of that kind
    custom_base    a SharedBase built from this session's uploads (private to the session)
    ledger_warning why the last committed removal could not be recorded in the ledger, if so
    job_notes      {kind: message} of the last job the user stopped (the confirmation)
    session_token  this tab's key in the server's SessionStore (``?session=`` in the URL)
    session_notice ("restored" | "lost", message) once, after a reload (see lcodec_app.sessions)
"""
from __future__ import annotations

import gc
import logging
import threading

import streamlit as st

from lcodec_core.data import DataBundle, load_dataset
from lcodec_core.unlearning.block import warm_up
from lcodec_core.zoo_cache import cache_path, load_or_train
from lcodec_models import Checkpoint, default_recipe, state_hash

from . import records
from .jobs import Job
from .sessions import SessionStore, start_sweeper
from .workbench import ModelKey, SharedBase, Workbench

log = logging.getLogger(__name__)


@st.cache_resource(show_spinner=False, max_entries=4)
def shared_base(dataset: str, model: str) -> SharedBase:
    """The base checkpoint for (dataset, model), loaded once per server and never edited."""
    checkpoint, bundle = load_or_train(dataset, model)
    checkpoint.model.eval()
    warm_up()   # the first vmap's one-time imports, paid at load rather than inside a removal
    freeze_loaded_objects()
    return SharedBase(ModelKey(dataset, model), checkpoint, bundle, state_hash(checkpoint.model))


def freeze_loaded_objects() -> None:
    """Move every object alive now (torch, the data, the base model) out of the collector's
    reach with :func:`gc.freeze`.

    A full collection otherwise walks ~500k objects (0.23 s on this machine, holding the GIL)
    whenever Python decides to run one, and a removal thread stalls for it; after the freeze a
    full collection only walks what was created since. Nothing frozen is ever freed, which is
    what a cached, read-only base model wants anyway.
    """
    gc.collect()
    gc.freeze()


@st.cache_resource(show_spinner=False, max_entries=4)
def shared_bundle(dataset: str, seed: int = 0) -> DataBundle:
    """A built-in data set, loaded once per server (read-only)."""
    return load_dataset(dataset, seed=seed)


def session_base() -> SharedBase:
    """The base model of this session: its upload, or the shared zoo model."""
    key = st.session_state.model_key
    custom = st.session_state.get("custom_base")
    if custom is not None and custom.key == key:
        return custom
    if is_upload(key):  # the upload is gone (should not happen): back to the default model
        key = st.session_state.model_key = ModelKey()
    return shared_base(key.dataset, key.model)


def is_upload(key: ModelKey) -> bool:
    return key.dataset.startswith("upload:")


def use_upload(checkpoint: Checkpoint, bundle: DataBundle) -> None:
    """Switch this session to an uploaded (or freshly trained) model; only this session sees it."""
    key = ModelKey(bundle.name if bundle.name.startswith("upload:") else f"upload:{bundle.name}",
                   checkpoint.metadata["model"])
    checkpoint.model.eval()
    set_model_key(key)
    st.session_state.custom_base = SharedBase(key, checkpoint, bundle, state_hash(checkpoint.model))


@st.cache_resource(show_spinner=False)
def _training_locks() -> dict[ModelKey, threading.Lock]:
    return {}


def needs_training(key: ModelKey) -> bool:
    """True when the zoo model is not in the cache yet (the first load trains it)."""
    if is_upload(key):
        return False
    return not cache_path(key.dataset, default_recipe(key.dataset, key.model)).exists()


def train_base(key: ModelKey, on_progress) -> None:
    """Train and cache the zoo model, one session at a time per model."""
    lock = _training_locks().setdefault(key, threading.Lock())
    with lock:
        if needs_training(key):
            load_or_train(key.dataset, key.model, on_progress=on_progress)


# What a tab keeps across a reload (see lcodec_app.sessions).
PARKED_KEYS = ("model_key", "identity", "workbench", "custom_base", "job", "finished",
               "job_errors", "job_notes")


@st.cache_resource(show_spinner=False)
def session_store() -> SessionStore:
    """The server's one SessionStore, with its sweeper thread (cancels closed tabs' jobs)."""
    store = SessionStore(_is_active_session)
    start_sweeper(store, on_stop=lambda labels: log.info("closed tab: stopped %s", labels))
    return store


def _is_active_session(session_id: str) -> bool:
    """Whether the Streamlit session ``session_id`` is connected (True without a server, as
    under AppTest, where no tab can close)."""
    from streamlit import runtime
    return not runtime.exists() or runtime.get_instance().is_active_session(session_id)


def _session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx
    context = get_script_run_ctx()
    return context.session_id if context is not None else "local"


def init_session() -> None:
    """Once per Streamlit session: adopt the work of the tab this one reloads (the URL's
    ``session=``), or read the shared view from the URL and start afresh."""
    state = st.session_state
    if "model_key" in state:
        return
    params = st.query_params
    token = params.get("session")
    store = session_store()
    restored = store.adopt(token, _session_id()) if token else None
    if restored is not None:
        state.update(restored)
        state.session_token = token
        state.session_notice = ("restored", restored_message(restored))
        return
    if token and not store.knows(token):
        state.session_notice = ("lost", LOST_MESSAGE)
    state.session_token = SessionStore.new_token()
    state.model_key = ModelKey.parse(params.get("dataset"), params.get("model"))
    state.identity = _parse_int(params.get("identity"))
    state.job = None
    state.finished = {}
    state.job_errors = {}
    state.job_notes = {}


LOST_MESSAGE = ("The work of the tab this link comes from is gone (the server restarted, or "
                "the tab was closed more than 30 minutes ago): its removals were lost. The "
                "shared model was never changed; you start again from it here.")


def restored_message(values: dict) -> str:
    bench, job = values.get("workbench"), values.get("job")
    count = len(bench.history) if bench is not None else 0
    words = f"Restored this tab's session after the reload: {count} removal{'s' if count != 1 else ''}"
    if job is not None and not job.done:
        words += f", and '{job.label}' is still running"
    return words + "."


def save_session() -> None:
    """Park this tab's work in the server's store under its token (every script run)."""
    state = st.session_state
    token = state.get("session_token")
    if token:
        session_store().save(token, _session_id(),
                             {k: state[k] for k in PARKED_KEYS if k in state})


def _parse_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def sync_url() -> None:
    """Write the session's model and identity to the URL, so the view can be shared."""
    key = st.session_state.model_key
    if is_upload(key):  # a private upload cannot be shared by URL
        if st.query_params:
            st.query_params.clear()
        return
    wanted = {"dataset": key.dataset, "model": key.model}
    if st.session_state.identity is not None:
        wanted["identity"] = str(st.session_state.identity)
    if st.session_state.get("session_token"):
        wanted["session"] = st.session_state.session_token
    current = {k: st.query_params.get(k) for k in ("dataset", "model", "identity", "session")}
    if current != {k: wanted.get(k) for k in current}:
        st.query_params.from_dict(wanted)


def set_model_key(key: ModelKey) -> None:
    """Switch the session to another base model (drops its removals)."""
    state = st.session_state
    if key == state.model_key and not is_upload(key):
        return
    stop_job()
    state.model_key = key
    state.identity = None
    state.pop("workbench", None)
    state.pop("custom_base", None)
    state.finished = {}
    state.job_errors = {}


def workbench(base: SharedBase) -> Workbench:
    """This session's workbench for ``base``, created (a private copy) on first use."""
    state = st.session_state
    bench = state.get("workbench")
    if bench is None or bench.key != base.key or bench.base_hash != base.base_hash:
        bench = Workbench.from_base(base)
        state.workbench = bench
    identity = state.identity
    if identity is not None and not 0 <= identity < base.bundle.num_classes:
        state.identity = None
    return bench


def set_identity(identity: int | None) -> None:
    st.session_state.identity = identity


# Jobs ---------------------------------------------------------------------------------------

def current_job() -> Job | None:
    return st.session_state.get("job")


def start_job(job: Job) -> Job:
    """Start ``job`` unless one is running (one job per session at a time)."""
    running = current_job()
    if running is not None and not running.done:
        raise RuntimeError(f"'{running.label}' is still running; wait for it or stop it")
    st.session_state.job_errors.pop(job.kind, None)
    st.session_state.setdefault("job_notes", {}).pop(job.kind, None)
    st.session_state.job = job.start()
    return job


def stop_job() -> None:
    job = current_job()
    if job is not None:
        job.stop()


def collect_finished_job(bench: Workbench) -> Job | None:
    """Commit the result of a job that has ended (called once per script run)."""
    state = st.session_state
    job = current_job()
    if job is None or not job.done:
        return None
    state.job = None
    state.finished[job.kind] = job
    if job.error is not None:
        if job.cancelled:
            state.setdefault("job_notes", {})[job.kind] = stopped_message(job)
        else:
            state.job_errors[job.kind] = job_failure_message(job)
        return job
    try:
        if job.kind == "unlearn":
            bench.push(job.result)
            state.ledger_warning = records.record_removal(job.result)
        elif job.kind == "retrain":
            bench.with_reference(job.payload["removal"], job.result)
        elif job.kind == "train":
            use_upload(job.result, job.payload["bundle"])
    except ValueError as error:
        state.job_errors[job.kind] = str(error)
    return job


def stopped_message(job: Job) -> str:
    """The confirmation that a stop took effect, and what it left."""
    if job.kind == "live":
        events, _ = job.snapshot()
        done = sum(1 for e in events if e.get("phase") == "step" and e.get("row", {}).get("step"))
        kept = (f"{done} removal{'s' if done != 1 else ''} had finished and "
                f"{'are' if done != 1 else 'is'} in the chart; the session's model is unchanged "
                "(Live accuracy works on a copy)")
    else:
        kept = "nothing was changed: the session's model is as it was before"
    return f"Stopped '{job.label}' after {job.elapsed_s:.0f} s: {kept}."


def job_failure_message(job: Job) -> str:
    """What the page says about a failed job: a refusal of harmful noise is not a crash."""
    from lcodec_core.unlearning.unlearn import HarmfulNoiseError  # late, as work.unlearn_fn
    if isinstance(job.error, HarmfulNoiseError):
        return (f"{job.label} was refused, and nothing was removed: {job.error}. In the settings "
                "that option is 'Keep a wrecked model anyway'.")
    return f"{job.label} failed: {job.error}"


def last_finished(kind: str) -> Job | None:
    return st.session_state.finished.get(kind)


def job_error(kind: str) -> str | None:
    return st.session_state.job_errors.get(kind)


def job_note(kind: str) -> str | None:
    """The confirmation of the last stop of a ``kind`` job, if the user stopped one."""
    return st.session_state.get("job_notes", {}).get(kind)
