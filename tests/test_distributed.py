"""Data-parallel removal (lcodec_core.parallel): two gloo processes on 127.0.0.1 give the
one-process result (weights to 1e-5 relative, the same slices, the same accuracies); one
worker is the one-process path itself; bad worker counts are refused before any process
starts. Two spawns in all (each pays a fresh interpreter's imports), on a tiny network."""
from __future__ import annotations

import pytest
import torch

from lcodec_core import UnlearnConfig, unlearn
from lcodec_core.parallel import (ONE_PROCESS, RetainedShard, remove_distributed, run_on_workers,
                                  unlearn_distributed)
from lcodec_core.requests import ForgetRequest
from tiny import TinyNet, fit_adam, make_dataset

LAM = 0.01
RTOL = 1e-5

# (name, settings): the default removal, then paths that reduce other sums: the p x p Fisher
# Gram (p < N, default), gathered Fisher rows (method "all": p = 123 > N), exact Hessian
# (explicit, Newton iterations with line search), Hessian-vector products (cg), and an uneven
# split of the curvature rows (curvature_subsample).
CASES = [
    ("default", {}),                                   # v3: rank 0 solves the head, all receive it
    ("feature_step", {"feature_step": True}),          # v3 with the target step on the slices first
    ("target_fisher", {"step_rule": "target"}),
    ("all_slices_gathered_rows", {"method": "all", "step_rule": "target"}),
    ("newton_explicit", {"step_rule": "newton", "solver": "explicit", "rhs": "retain_gradient",
                         "newton_steps": 2}),
    ("target_cg", {"step_rule": "target", "solver": "cg", "cg_iterations": 5}),
    ("curvature_subsample", {"step_rule": "target", "curvature_subsample": 23,
                             "retain_subsample": 50}),
]


def _problem():
    """A trained TinyNet, the forget set (4 photos of class 0), the retained and held-out sets."""
    torch.manual_seed(0)
    data = make_dataset(72, seed=1)
    held_out = make_dataset(18, seed=2)
    model = fit_adam(TinyNet(), data, LAM, steps=200)
    forget = data.subset([0, 3, 6, 9])
    retain = data.subset([i for i in range(len(data)) if i not in (0, 3, 6, 9)])
    return model, forget, retain, held_out


def _config(settings: dict) -> UnlearnConfig:
    return UnlearnConfig(num_perturbations=20, seed=0, **settings)


def _cases_on_rank(shard: RetainedShard, on_progress=None) -> dict:
    """Every CASE and the evaluation on this rank's share; rank 0's answer goes back."""
    from lcodec_core.audit.evaluation import evaluate
    torch.set_num_threads(1)
    model, forget, retain, held_out = _problem()
    out = {}
    for name, settings in CASES:
        result = unlearn(model, forget, retain, _config(settings), weight_decay=LAM,
                         held_out=held_out, shard=shard)
        out[name] = _summary(result)
    request = _request(forget, retain)
    out["evaluate"] = evaluate(out["default"]["model"], _bundle(held_out), request, shard=shard)
    out["traffic"] = dict(shard.traffic)
    return out


def _summary(result) -> dict:
    step = result.diagnostics.get("step") or {}
    return {"model": result.model, "slices": [(s.module, s.index) for s in result.selected_slices],
            "damping": step.get("damping"), "chosen": step.get("chosen"),
            "newton": result.diagnostics.get("newton")}


def _request(forget, retain) -> ForgetRequest:
    forgotten = [0, 3, 6, 9]
    return ForgetRequest(forget_indices=forgotten,
                         retain_indices=[i for i in range(72) if i not in forgotten],
                         forget=forget, retain=retain, identity=None)


def _bundle(test):
    from types import SimpleNamespace
    return SimpleNamespace(test=test)


def _assert_same_weights(model, reference):
    for (name, value), (_, expected) in zip(model.state_dict().items(),
                                            reference.state_dict().items()):
        scale = float(expected.abs().max()) or 1.0
        error = float((value - expected).abs().max()) / scale
        assert error <= RTOL, f"{name}: relative difference {error:.2e}"


@pytest.fixture(scope="module")
def problem():
    torch.set_num_threads(1)
    return _problem()


def test_two_gloo_workers_equal_one_process_on_every_path(problem):
    model, forget, retain, held_out = problem
    distributed = run_on_workers(_cases_on_rank, (), workers=2)
    for name, settings in CASES:
        single = _summary(unlearn(model, forget, retain, _config(settings), weight_decay=LAM,
                                  held_out=held_out))
        both = distributed[name]
        assert both["slices"] == single["slices"], name
        _assert_same_weights(both["model"], single["model"])
        if single["damping"] is not None:
            assert both["damping"] == pytest.approx(single["damping"], rel=RTOL), name
        if single["chosen"] is not None:
            assert both["chosen"]["retain_accuracy"] == single["chosen"]["retain_accuracy"], name
        if single["newton"] is not None and isinstance(single["newton"], dict):
            assert both["newton"]["loss_after"] == pytest.approx(single["newton"]["loss_after"],
                                                                 rel=RTOL), name
        assert not torch.equal(both["model"].fc2.weight, model.fc2.weight), f"{name}: nothing moved"
    from lcodec_core.audit.evaluation import evaluate
    single_model = _summary(unlearn(model, forget, retain, _config({}), weight_decay=LAM,
                                    held_out=held_out))["model"]
    expected = evaluate(single_model, _bundle(held_out), _request(forget, retain))
    assert distributed["evaluate"] == pytest.approx(expected, rel=RTOL, nan_ok=True)
    traffic = distributed["traffic"]
    for what in ("fisher_gram", "fisher_rows", "gradient", "hessian", "hvp", "loss",
                 "accuracy", "selection", "block", "head optimum"):
        assert traffic.get(what, 0) > 0, f"no {what} was communicated: {traffic}"


def test_unlearn_distributed_spawns_and_returns_rank0_result(problem):
    model, forget, retain, held_out = problem
    before = {k: v.clone() for k, v in model.state_dict().items()}
    events = []
    result = unlearn_distributed(model, forget, retain, _config({}), events.append, workers=2,
                                 weight_decay=LAM, held_out=held_out)
    single = unlearn(model, forget, retain, _config({}), weight_decay=LAM, held_out=held_out)
    _assert_same_weights(result.model, single.model)
    assert result.selected_slices == single.selected_slices
    assert result.parameters_updated == single.parameters_updated
    parallel = result.diagnostics["parallel"]
    assert parallel["workers"] == 2 and parallel["bytes"] > 0
    assert {e["phase"] for e in events} >= {"probe", "select", "newton", "done"}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_one_worker_is_the_one_process_path_exactly(problem):
    model, forget, retain, held_out = problem
    result = unlearn_distributed(model, forget, retain, _config({}), workers=1,
                                 weight_decay=LAM, held_out=held_out)
    single = unlearn(model, forget, retain, _config({}), weight_decay=LAM, held_out=held_out)
    for name, value in single.model.state_dict().items():
        assert torch.equal(result.model.state_dict()[name], value), name
    assert result.diagnostics["step"]["damping"] == single.diagnostics["step"]["damping"]
    assert "parallel" not in result.diagnostics
    assert ONE_PROCESS.bytes_communicated == 0 and not ONE_PROCESS.distributed


def test_remove_distributed_evaluates_on_the_workers_as_one_process_would(problem):
    """The removal plus the before/after accuracies that ``remove`` reports, the retained
    images classified by the two workers: the one-process numbers; W = 1 runs here."""
    from lcodec_core.audit.evaluation import evaluate
    model, forget, retain, held_out = problem
    request, bundle = _request(forget, retain), _bundle(held_out)
    result, before, after = remove_distributed(model, bundle, request, _config({}), workers=2,
                                               weight_decay=LAM, held_out=held_out)
    single = unlearn(model, forget, retain, _config({}), weight_decay=LAM, held_out=held_out)
    _assert_same_weights(result.model, single.model)
    assert result.diagnostics["parallel"]["workers"] == 2
    assert before == pytest.approx(evaluate(model, bundle, request), rel=RTOL, nan_ok=True)
    assert after == pytest.approx(evaluate(single.model, bundle, request), rel=RTOL, nan_ok=True)
    here, nothing, after_here = remove_distributed(model, bundle, request, _config({}), workers=1,
                                                   before_needed=False, weight_decay=LAM,
                                                   held_out=held_out)
    assert nothing is None and "parallel" not in here.diagnostics
    assert after_here == pytest.approx(after, rel=RTOL, nan_ok=True)


def test_the_cli_with_two_workers_records_the_one_process_removal(trained_small_cnn, tmp_path):
    """``lcodec unlearn --workers 2`` (spawned gloo workers that also classify the retained
    photos before and after) and ``--workers 1`` give the same slices, accuracies and weights."""
    import json

    from lcodec_core.cli import main
    from lcodec_models import load_checkpoint
    reports, models = {}, {}
    for workers in (1, 2):
        out, saved = tmp_path / f"w{workers}.json", tmp_path / f"w{workers}.pt"
        assert main(["unlearn", "--dataset", "olivetti", "--forget-index", "0", "1", "2",
                     "--perturbations", "20", "--workers", str(workers), "--json", str(out),
                     "--save", str(saved), "--ledger", str(tmp_path / "ledger.sqlite")]) == 0
        reports[workers], models[workers] = json.loads(out.read_text()), load_checkpoint(saved).model
    one, two = reports[1], reports[2]
    assert two["selected_slices"] == one["selected_slices"]
    for split in ("original", "unlearned"):   # shares of photos: the same predictions, the same numbers
        assert two[split] == one[split], split
    _assert_same_weights(models[2], models[1])
    assert two["diagnostics"]["parallel"]["workers"] == 2


def _error_on_rank(shard: RetainedShard, folder: str, on_progress=None) -> str:
    """A removal whose selection fails on rank 0 (a model with constant output: the loss does
    not vary under the perturbations). Every rank records the error it saw, then returns."""
    import os
    torch.set_num_threads(1)
    _, forget, retain, held_out = _problem()
    model = TinyNet()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    try:
        unlearn(model, forget, retain, _config({}), weight_decay=LAM, held_out=held_out, shard=shard)
        message = "no error"
    except ValueError as error:
        message = f"{type(error).__name__}: {error}"
    with open(os.path.join(folder, f"rank{shard.rank}.txt"), "w") as handle:
        handle.write(message)
    return message


def test_an_error_on_rank_0_ends_every_rank_with_the_same_message(tmp_path):
    """Rank 0 probes and selects alone; an error there must reach the other ranks (they would
    otherwise wait for the selection until the process group's timeout)."""
    import time
    start = time.monotonic()
    message = run_on_workers(_error_on_rank, (str(tmp_path),), workers=2)
    assert time.monotonic() - start < 120
    seen = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert seen[0] == seen[1] == message and message.startswith("ValueError")
    assert "varies under the perturbations" in message


@pytest.mark.parametrize("workers, message", [
    (0, "must be >= 1"), (-2, "must be >= 1"), (2.0, "whole number"), (True, "whole number"),
    (69, "must not exceed the retained rows"),
])
def test_bad_worker_counts_are_refused_before_any_process_starts(problem, workers, message):
    model, forget, retain, held_out = problem
    with pytest.raises(ValueError, match=message):
        unlearn_distributed(model, forget, retain, _config({}), workers=workers, weight_decay=LAM)


def test_more_workers_than_subsampled_rows_is_refused(problem):
    model, forget, retain, _ = problem
    with pytest.raises(ValueError, match=r"\(5\)"):
        unlearn_distributed(model, forget, retain, _config({"retain_subsample": 4}), workers=5,
                            weight_decay=LAM)


def test_shard_split_is_contiguous_and_covers_every_row():
    spans = [RetainedShard(rank, 3).span(10) for rank in range(3)]
    assert spans == [(0, 3), (3, 6), (6, 10)]
    rows = torch.tensor([1, 4, 5, 8, 9])
    assert RetainedShard(1, 3).local_rows(rows, 10).tolist() == [1, 2]
    assert RetainedShard(2, 3).local_rows(rows, 10).tolist() == [2, 3]
    with pytest.raises(ValueError, match="rank must be in"):
        RetainedShard(2, 2)
