"""Max-ranks of a response, as used by CODEC (Azadkia & Chatterjee 2021).

Ties in the response are kept as ties: the max-rank counts every equal value. Breaking
them by jitter would change the quantity being estimated (a binary Y = Z would score
about 0.5 instead of 1), so nothing here is randomized.
"""

from __future__ import annotations

import numpy as np

__all__ = ["max_ranks"]


def max_ranks(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max-ranks ``R`` and reverse max-ranks ``L`` of a response.

    Parameters
    ----------
    y : np.ndarray, shape (m,)
        Response values, any real numeric dtype (kept as given, so integer
        responses above 2**53 still rank exactly). Must be finite.

    Returns
    -------
    R : np.ndarray, shape (m,), int64
        ``R_i = #{j : y_j <= y_i}``.
    L : np.ndarray, shape (m,), int64
        ``L_i = #{j : y_j >= y_i}``.

    Notes
    -----
    One sort and two binary searches, O(m log m); the counts are integers, so every
    sum built from them downstream is exact.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D of shape (m,), got shape {y.shape}")
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    ordered = np.sort(y, kind="stable")
    m = y.shape[0]
    rank_max = np.searchsorted(ordered, y, side="right").astype(np.int64)
    rank_rev = (m - np.searchsorted(ordered, y, side="left")).astype(np.int64)
    return rank_max, rank_rev
