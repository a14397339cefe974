"""remove_in_sequence: the one loop of sequential removals (Live accuracy, the Fig. 5-7
benchmarks). A stand-in ``remove`` records what the loop hands the engine, so the
bookkeeping is checked exactly; one real run checks it against the engine itself."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from lcodec_core.unlearning.config import UnlearnConfig
from lcodec_core.data import DataBundle
from lcodec_core.sequence import remove_in_sequence
from tiny import CLASSES, TinyNet, assert_state_equal, fit_adam, make_dataset, state_copy


@pytest.fixture(scope="module")
def bundle() -> DataBundle:
    return DataBundle("tiny", make_dataset(30, seed=0), make_dataset(12, seed=1), list(CLASSES),
                      0.0, 1.0, 0)


class RecordingRemove:
    """Returns a fresh model per call (a copy with one weight nudged) and records the call."""

    def __init__(self, fail_at: int | None = None):
        self.calls, self.fail_at = [], fail_at

    def __call__(self, model, forget, retain, config, on_progress, *, weight_decay, held_out):
        self.calls.append(SimpleNamespace(model=model, forget=len(forget), retain=len(retain),
                                          seed=config.seed, weight_decay=weight_decay))
        on_progress({"phase": "probe", "fraction": 1.0})
        if len(self.calls) == self.fail_at:
            raise ValueError("refused")
        new = copy.deepcopy(model)
        with torch.no_grad():
            next(new.parameters()).add_(1.0)
        return SimpleNamespace(model=new)


def test_each_request_excludes_what_was_removed_before(bundle):
    remove, events = RecordingRemove(), []
    model = TinyNet()
    person_2 = bundle.train.indices_of(2)
    other = next(i for i in range(2, len(bundle.train)) if i not in person_2)
    targets = [{"indices": [0, 1]}, {"identity": 2}, {"indices": [other]}]
    steps = list(remove_in_sequence(model, bundle, targets, lambda step: UnlearnConfig(seed=step),
                                    weight_decay=0.1, on_progress=events.append, remove=remove))
    assert [s.step for s in steps] == [1, 2, 3]
    assert steps[0].removed == (0, 1)
    assert set(steps[1].removed) == {0, 1, *person_2} and steps[1].identities == (2,)
    assert steps[1].request.forget_indices == [i for i in person_2 if i not in (0, 1)]
    total = len(bundle.train)
    assert [c.retain for c in remove.calls] == [total - 2, total - 2 - len(steps[1].request.forget_indices),
                                                total - len(steps[2].removed)]
    assert [c.seed for c in remove.calls] == [1, 2, 3]                 # config per step
    assert steps[2].request.forget_indices == [other]
    assert remove.calls[1].model is steps[0].model                     # chained models
    assert remove.calls[0].model is model
    assert [e["step"] for e in events] == [1, 2, 3] and all(e["steps"] == 3 for e in events)


def test_a_caught_failure_keeps_the_model_and_goes_on(bundle):
    remove = RecordingRemove(fail_at=2)
    steps = list(remove_in_sequence(TinyNet(), bundle, [{"indices": [0]}, {"indices": [1]},
                                                        {"indices": [2]}],
                                    UnlearnConfig(), weight_decay=0.1, remove=remove,
                                    catch=(ValueError,)))
    assert steps[1].result is None and isinstance(steps[1].error, ValueError)
    assert steps[1].model is steps[0].model and steps[2].removed == (0, 1, 2)


def test_an_uncaught_failure_stops_the_sequence(bundle):
    steps = remove_in_sequence(TinyNet(), bundle, [{"indices": [0]}, {"indices": [1]}],
                               UnlearnConfig(), weight_decay=0.1, remove=RecordingRemove(fail_at=1))
    with pytest.raises(ValueError, match="refused"):
        next(steps)


def test_real_engine_sequence_leaves_the_input_model_unchanged(bundle):
    torch.manual_seed(0)
    model = fit_adam(TinyNet(), bundle.train, weight_decay=0.1)
    before = state_copy(model)
    steps = list(remove_in_sequence(model, bundle, [{"indices": [3]}, {"indices": [4]}],
                                    UnlearnConfig(), weight_decay=0.1))
    assert_state_equal(model, before)
    assert all(s.result is not None and s.result.model is s.model for s in steps)
    assert steps[-1].removed == (3, 4)
