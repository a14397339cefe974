"""Sessions and server (issue 7): browser sessions never see each other's removals and the
shared base model never changes; the dashboard listens on localhost only, limits uploads and
takes no file-system path from the page.

Three levels: two AppTest sessions (the page), two threads through the app's engine adapter
(``lcodec_app.work.removal_work``), and two threads calling ``unlearn`` on one and the same
model object (the engine's own contract, without the adapter's copies and lock).
"""
from __future__ import annotations

import ast
import copy
import threading
import tomllib
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from apptest import APP_DIR

ROOT = Path(__file__).resolve().parents[1]

FIRST, SECOND = 5, 0   # two identities the engine default forgets (see docs/BENCHMARKS.md)
JOB_TIMEOUT_S = 300


def storages(model: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in model.state_dict().values()}


# ---------------------------------------------------------------- two browser sessions
def test_two_app_sessions_see_only_their_own_removal(trained_small_cnn):
    from apptest import finish, run_forget, start_app
    from lcodec_app import state
    from lcodec_models import state_hash
    base = state_hash(trained_small_cnn[0].model)

    first, second = start_app(), start_app()
    run_forget(first, FIRST)
    run_forget(second, SECOND)      # both jobs exist at once
    finish(first)
    finish(second)
    one, two = first.session_state["workbench"], second.session_state["workbench"]
    assert one.removed_identities == [FIRST] and two.removed_identities == [SECOND]
    assert not set(one.removed_indices) & set(two.removed_indices)
    assert [s.value for s in first.success if f"person {SECOND:02d} " in s.value] == []
    assert any(f"Forgotten: person {FIRST:02d} " in s.value for s in first.success)
    assert any(f"Forgotten: person {SECOND:02d} " in s.value for s in second.success)
    assert not storages(one.current) & storages(two.current)           # no shared tensors
    assert not storages(one.original) & storages(state.shared_base("olivetti", "small_cnn").checkpoint.model)
    assert one.base_hash == two.base_hash == base
    assert state_hash(state.shared_base("olivetti", "small_cnn").checkpoint.model) == base
    assert state_hash(one.original) == state_hash(two.original) == base


# ---------------------------------------------------------------- two threads, app engine layer
def test_two_threads_through_the_engine_adapter(trained_small_cnn):
    from lcodec_app.work import removal_work
    from lcodec_core.unlearning.config import UnlearnConfig
    from lcodec_app.workbench import ModelKey, SharedBase, Workbench
    from lcodec_core.requests import make_request
    from lcodec_models import state_hash

    checkpoint, bundle = trained_small_cnn
    base_hash = state_hash(checkpoint.model)
    shared = SharedBase(ModelKey(), checkpoint, bundle, base_hash)
    benches = [Workbench.from_base(shared), Workbench.from_base(shared)]
    works = [removal_work(bench, make_request(bundle, identity=identity), UnlearnConfig())
             for bench, identity in zip(benches, (FIRST, SECOND))]
    results, errors = [None, None], []

    def run(k):
        try:
            results[k] = works[k](lambda event: None)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOB_TIMEOUT_S)
    assert not errors, errors
    for bench, removal in zip(benches, results):
        bench.push(removal)
    assert [b.removed_identities for b in benches] == [[FIRST], [SECOND]]
    assert benches[0].current_hash != benches[1].current_hash
    assert all(r.hash_before == base_hash for r in results)
    assert state_hash(checkpoint.model) == base_hash
    assert all(state_hash(b.original) == base_hash for b in benches)
    assert [r.request.identity for r in results] == [FIRST, SECOND]
    assert all(r.hash_after != base_hash for r in results)


# ---------------------------------------------------------------- two threads, one model object
class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def test_concurrent_unlearn_on_one_shared_model_object():
    """No adapter, no lock: ``unlearn`` itself never touches its input (its probing hooks go on
    a private copy), so two threads on one model get the results they get one at a time."""
    from lcodec_core.unlearning.config import UnlearnConfig
    from lcodec_core.data import ImageDataset
    from lcodec_core.unlearning.unlearn import unlearn
    from lcodec_models import state_hash

    generator = torch.Generator().manual_seed(0)
    targets = torch.arange(30) % 3
    images = 1.5 * torch.randn(3, 1, 4, 4, generator=generator)[targets] + torch.randn(30, 1, 4, 4, generator=generator)
    data = ImageDataset(images, targets, ["a", "b", "c"], [str(i) for i in range(30)])
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2, weight_decay=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(model(data.images), data.targets).backward()
        optimizer.step()
    model.eval()
    base = state_hash(model)
    config = UnlearnConfig(num_perturbations=30, newton_steps=2, max_slices=3)
    jobs = [(data.subset([0, 3]), data.subset(range(6, 30))), (data.subset([1, 4]), data.subset(range(6, 30)))]
    alone = [unlearn(copy.deepcopy(model), f, r, config, weight_decay=1e-2) for f, r in jobs]

    together, errors = [None, None], []
    barrier = threading.Barrier(2)

    def run(k):
        try:
            barrier.wait()
            for _ in range(3):   # several rounds, to overlap the probes
                together[k] = unlearn(model, *jobs[k], config, weight_decay=1e-2)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert state_hash(model) == base
    assert all(not m._forward_hooks for m in model.modules())
    for a, b in zip(alone, together):
        assert a.selected_slices == b.selected_slices
        for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            assert torch.allclose(x, y, atol=1e-6), name


# ---------------------------------------------------------------- server settings
def test_server_binds_to_localhost_and_limits_uploads():
    from lcodec_app import uploads
    config = tomllib.loads((APP_DIR / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert server["address"] in ("localhost", "127.0.0.1")
    assert server["maxUploadSize"] * 2**20 == uploads.MAX_UPLOAD_BYTES
    assert server.get("enableCORS", True) and server.get("enableXsrfProtection", True)
    makefile = (ROOT / "Makefile").read_text()
    assert "0.0.0.0" not in makefile and "--server.address localhost" in makefile


def test_no_page_widget_takes_a_file_system_path():
    """Free-text widgets could carry a path to the server's files: the dashboard has none. Data
    sets come from a fixed list or an upload; URL values outside the list fall back to the
    defaults."""
    from lcodec_app.workbench import ZOO, ModelKey
    free_text = {"text_input", "text_area", "chat_input"}
    found = []
    for path in [APP_DIR / "streamlit_app.py", *APP_DIR.glob("views/*.py"), *APP_DIR.glob("lcodec_app/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in free_text:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.attr}")
    assert not found, found
    for dataset in ("folder:/etc", "folder:../shared/data", "/etc/passwd", "mnist/../../x"):
        assert ModelKey.parse(dataset, None) == ModelKey()
    assert all(not name.startswith("folder:") for name in ZOO)


# ---------------------------------------------------------------- tracing and other threads
class Gate(nn.Module):
    """A pass-through module that holds the forward (and so a torch.fx trace) until released."""

    def __init__(self, started: threading.Event, release: threading.Event):
        super().__init__()
        self.started, self.release = started, release

    def forward(self, x):
        self.started.set()
        self.release.wait(30)
        return x


def test_a_model_split_does_not_break_forwards_in_other_threads():
    """torch.fx patches ``nn.Module.__call__`` process-wide while it traces. The engine traces
    each removal's model (lcodec_core/unlearning/suffix.py); a page drawing or evaluating another model
    in another thread at that moment must still work (it used to raise NameError: "module is
    not installed as a submodule"), and two traces at once must not undo each other's patches."""
    from lcodec_core.unlearning.suffix import split_model

    started, release = threading.Event(), threading.Event()
    traced_model = nn.Sequential(nn.Linear(4, 4), Gate(started, release), nn.ReLU(), nn.Linear(4, 2))
    other = TinyNet().eval()
    call_before = nn.Module.__call__
    outcome = {}

    def trace():
        try:
            outcome["split"] = split_model(traced_model, {"3"})
        except BaseException as error:
            outcome["trace_error"] = error

    thread = threading.Thread(target=trace)
    thread.start()
    assert started.wait(30)
    try:
        with torch.no_grad():
            outcome["other"] = other(torch.zeros(2, 1, 4, 4))     # while the trace is held
    except BaseException as error:
        outcome["other_error"] = error
    finally:
        release.set()
        thread.join(30)
    assert "other_error" not in outcome, repr(outcome.get("other_error"))
    assert "trace_error" not in outcome, repr(outcome.get("trace_error"))
    assert nn.Module.__call__ is call_before
    split = outcome["split"]
    assert split.traced
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.allclose(split.suffix(*split.prefix(x)), traced_model(x))
