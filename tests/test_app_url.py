"""The real app says when its URL asked for something that does not exist."""
from __future__ import annotations

from apptest import start_app


def test_out_of_range_identity_in_the_url_is_named(trained_small_cnn):
    at = start_app({"identity": "999"})
    warnings = [w.value for w in at.warning]
    assert any("999" in w for w in warnings), warnings
    assert at.session_state["identity"] != 999
