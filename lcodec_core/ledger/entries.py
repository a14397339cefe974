"""What a ledger row records about one removal, and the one way to build it.

:func:`entry_from_record` turns :meth:`lcodec_core.record.RemovalRecord.to_json` into a
:class:`RemovalEntry`; the command line and the dashboard both record through it.
:class:`LedgerRow` is a committed entry as the store reads it back.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable

from .privacy import is_certified


@dataclass(frozen=True)
class RemovalEntry:
    """What to record about one removal (the ledger adds id, time and lineage).

    Build one with :func:`removal_entry`. ``epsilon`` None means the removal is not certified
    (no guarantee); ``delta`` is only meaningful with an epsilon. JSON fields must be
    JSON-ready (NaN is stored as null).
    """
    model_before: str                                   # state_hash before the removal
    model_after: str                                    # state_hash after it
    dataset: str | None = None                          # data set name ("olivetti", "folder:...")
    model_name: str | None = None                       # zoo architecture ("small_cnn")
    identity: int | None = None                         # the removed class, if a whole identity
    forget_indices: list[int] = field(default_factory=list)  # training indices removed
    file_names: list[str] = field(default_factory=list)      # their sources (file names)
    method: str | None = None                           # "lfoci", "finetune", ...
    settings: dict = field(default_factory=dict)        # UnlearnConfig.to_dict()
    sigma: float | None = None                          # std of the added Gaussian noise
    epsilon: float | None = None                        # None: not certified, no guarantee
    delta: float | None = None
    metrics: dict = field(default_factory=dict)         # METRIC_KEYS (see removal_entry)
    model_path: str | None = None                       # set by save_and_record


@dataclass(frozen=True)
class LedgerRow(RemovalEntry):
    """A committed row: a :class:`RemovalEntry` plus its id, UTC time, lineage and file hash."""
    id: int = 0
    time: str = ""
    lineage: str = ""
    file_sha256: str | None = None
    status: str = "committed"

    @property
    def guarantee(self) -> str:
        """The removal's label (:data:`lcodec_core.unlearning.guarantee.GUARANTEES`), as recorded.

        Rows recorded before the labels existed have none: they are read as "certified" when
        they hold an epsilon and noise was added (sigma None or > 0), else "none", which is
        how the ledger counted them then.
        """
        label = (self.metrics or {}).get("guarantee")
        if label:
            return label
        noised = self.epsilon is not None and (self.sigma is None or self.sigma > 0)
        return "certified" if noised else "none"

    @property
    def noised(self) -> bool:
        """True when this removal carries a certified (epsilon, delta) guarantee
        (:func:`.privacy.is_certified` of its label and epsilon)."""
        return is_certified(self.guarantee, self.epsilon)

    def to_dict(self) -> dict:
        return asdict(self)



METRIC_KEYS = ("original", "before", "unlearned", "retrained", "timings", "guarantee", "verdict",
               "attacks")


def removal_entry(*, model_before: str, model_after: str, dataset: str | None,
                  model_name: str | None, identity: int | None, forget_indices: Iterable[int],
                  file_names: Iterable[object], settings: dict, guarantee: str,
                  sigma: float | None, epsilon: float | None, delta: float | None,
                  before: dict, unlearned: dict, original: dict | None = None,
                  retrained: dict | None = None, timings: dict | None = None,
                  verdict: dict | None = None, model_path: str | None = None,
                  attacks: dict | None = None) -> RemovalEntry:
    """The one constructor of a ledger row's :class:`RemovalEntry`, for every caller.

    Parameters
    ----------
    model_before, model_after : state hashes of the model the removal started from and of
        the unlearned model.
    settings : ``UnlearnConfig.to_dict()``; its "method" is the row's method.
    guarantee : the removal's label (:data:`lcodec_core.unlearning.guarantee.GUARANTEES`).
    epsilon, delta : the (epsilon, delta) the removal ran with; recorded only when the
        removal is certified (:func:`.privacy.is_certified`), otherwise both are None:
        heuristic noise keeps its ``sigma`` but claims no epsilon.
    before, unlearned : :func:`lcodec_core.audit.evaluation.evaluate` of the model the removal
        started from and of the unlearned model, on the request.
    original : the same for the root model of the run (the dashboard's untouched base model);
        defaults to ``before`` (the command line starts from the model it loaded).
    retrained : the same for a model retrained without the forget set, if one was trained.
    timings, verdict : the engine's timings and :meth:`lcodec_core.audit.verdict.Verdict.to_dict`.
    attacks : the record's attacks (before, unlearned, retrained when compared) that the
        verdict read; the held-out split's photo lists are left out of the row.

    ``metrics`` always holds every key of :data:`METRIC_KEYS` (None where unknown). Rows
    recorded before this layout may lack some: the command line's had no "before" (its
    "original" was the model the removal started from) and the dashboard's no "retrained".
    """
    certified = is_certified(guarantee, epsilon)
    metrics = {"original": before if original is None else original, "before": before,
               "unlearned": unlearned, "retrained": retrained, "timings": dict(timings or {}),
               "guarantee": guarantee, "verdict": verdict,
               "attacks": None if attacks is None else
               {k: v for k, v in attacks.items() if k != "held_out"}}
    return RemovalEntry(
        model_before=model_before, model_after=model_after, dataset=dataset,
        model_name=model_name, identity=identity, forget_indices=list(forget_indices),
        file_names=[str(name) for name in file_names], method=settings.get("method"),
        settings=settings, sigma=sigma, epsilon=epsilon if certified else None,
        delta=delta if certified else None, metrics=metrics, model_path=model_path)


def entry_from_record(record: dict, model_path: str | None = None) -> RemovalEntry:
    """The ledger row of a removal: :func:`removal_entry` from
    :meth:`lcodec_core.record.RemovalRecord.to_json` (the command line and the dashboard both
    record through this)."""
    request = record["request"]
    return removal_entry(
        model_before=record["model_hash_before"], model_after=record["model_hash_after"],
        dataset=record.get("dataset"), model_name=record.get("model"),
        identity=request.get("identity"), forget_indices=request.get("forget_indices", []),
        file_names=request.get("sources", []), settings=record["settings"],
        guarantee=record["guarantee"], sigma=record.get("sigma"), epsilon=record.get("epsilon"),
        delta=record.get("delta"), original=record.get("original"), before=record["before"],
        unlearned=record["unlearned"], retrained=record.get("retrained"),
        timings=record.get("timings"), verdict=record.get("verdict"), model_path=model_path,
        attacks=record.get("attacks"))
