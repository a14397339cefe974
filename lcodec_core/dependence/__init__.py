"""L-CODEC and L-FOCI: conditional dependence and greedy Markov-blanket selection.

CODEC is the conditional dependence coefficient of Azadkia & Chatterjee (2021), "A
simple measure of conditional dependence", Ann. Statist.; FOCI is their greedy
feature-ordering by it. The "L" versions (Mehta et al., CVPR 2022, "Deep Unlearning
via Randomized Conditionally Independent Hessians") break ties among equidistant
neighbours at random by a tiny Gaussian jitter of the predictors, so discrete data are
scored as the estimator assumes. See docs/ALGORITHM.md, sections 1 (L-CODEC, the
conditional dependence coefficient) and 2 (L-FOCI, greedy Markov-blanket selection).

The package, one idea a module:

- ``codec_estimator``: L-CODEC, the coefficient T(Y, Z | X) and the tie-breaking jitter.
- ``foci_search``: L-FOCI, the greedy selection (``foci``, ``FociResult``, ``STOP_REASONS``).
- ``inputs``: the input checks and exact power-of-two rescaling both share.
- ``neighbor_index``: exact float64 nearest-neighbour search and the choice of backend.
- ``column_search``: L-FOCI's batched search, the nearest neighbour in (S, a_j) for
  many candidate columns a_j at once.
- ``candidate_pruning``: L-FOCI's step winner on the CPU, exactly, scoring in full only
  the candidates whose upper bound from a half-length scan can still win.
- ``ranks``: the max-ranks of the response that CODEC counts with.
- ``arrays``: the numpy / torch helper layer under all of them.

The modules are not named after the functions they define, so ``lcodec_core.dependence.codec``
is always the function and ``lcodec_core.dependence.codec_estimator`` always the module.
"""

from .codec_estimator import codec
from .column_search import nearest_in_each_column, nearest_with_extra_column
from .foci_search import STOP_REASONS, FociResult, foci
from .neighbor_index import BACKENDS, NeighborIndex, choose_backend, faiss_gpu_available, nearest_neighbor

__all__ = [
    "BACKENDS",
    "STOP_REASONS",
    "FociResult",
    "NeighborIndex",
    "choose_backend",
    "codec",
    "faiss_gpu_available",
    "foci",
    "nearest_in_each_column",
    "nearest_neighbor",
    "nearest_with_extra_column",
]
