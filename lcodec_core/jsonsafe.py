"""Strict JSON for reports, the ledger and downloads."""
from __future__ import annotations

import math


def json_ready(value):
    """``value`` with NaN and infinities as None, tuples as lists and dict keys as strings, so
    ``json.dumps(..., allow_nan=False)`` accepts it (e.g. the nan held-out accuracy of an
    index request)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
