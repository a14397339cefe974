"""Forget page: a model far from a stationary point is flagged, and one click polishes its head."""
from __future__ import annotations

import copy

import torch

from apptest import assert_clean, start_app


def stationarity_warnings(at) -> list[str]:
    return [w.value for w in at.warning if "stationary point" in w.value]


def test_rough_model_is_flagged_and_polished(trained_small_cnn):
    from lcodec_app.workbench import ModelKey, SharedBase
    from lcodec_models import Checkpoint, state_hash
    checkpoint, bundle = trained_small_cnn
    at = start_app()
    at.switch_page("views/forget.py").run()
    assert_clean(at)
    assert stationarity_warnings(at) == []                  # the zoo model's head is polished

    rough = copy.deepcopy(checkpoint.model)
    with torch.no_grad():
        rough.fc.weight.mul_(1.5)
    metadata = {k: v for k, v in checkpoint.metadata.items() if k != "stationarity"}
    key = ModelKey("upload:rough", metadata["model"])
    at.session_state["model_key"] = key
    at.session_state["custom_base"] = SharedBase(key, Checkpoint(rough, metadata), bundle,
                                                 state_hash(rough))
    at.run()
    assert_clean(at)
    assert len(stationarity_warnings(at)) == 1
    at.button(key="polish_head").click().run()
    assert_clean(at)
    assert stationarity_warnings(at) == []
    polished = at.session_state["workbench"].original
    assert polished.fc.weight.data_ptr() != rough.fc.weight.data_ptr()
    for name, value in rough.state_dict().items():           # only the head moved
        if not name.startswith("fc."):
            assert torch.equal(polished.state_dict()[name], value)
    assert not torch.equal(polished.fc.weight, rough.fc.weight)
