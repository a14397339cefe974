"""The dashboard's side of the deletion ledger (:mod:`lcodec_core.ledger`).

Each removal the session commits is recorded as one ledger row (``model_path`` is null: the
dashboard keeps its models in memory); the Ledger page reads back the removals behind the
session's model, its lineage and every lineage. Nothing here raises for an unavailable
ledger: the functions return a message for the page to show, so the dashboard keeps working.
Nothing here imports Streamlit.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lcodec_core.audit.attacks import last_relearned
from lcodec_core.ledger import (Ledger, LedgerError, LedgerRow, PrivacyCost, RemovalEntry,
                                privacy_cost, entry_from_record)

from .workbench import Removal, Workbench

log = logging.getLogger(__name__)

LEDGER_PATH: Path | None = None  # None: $LCODEC_HOME/ledger.sqlite (tests point it elsewhere)
TIMEOUT_S = 5.0                  # a page waits at most this long for another writer's lock


def open_ledger() -> tuple[Ledger | None, str | None]:
    """(the ledger, None), or (None, why it is unavailable)."""
    try:
        return Ledger(LEDGER_PATH, timeout_s=TIMEOUT_S), None
    except (LedgerError, OSError) as error:
        log.warning("deletion ledger unavailable: %s", error)
        return None, str(error)


def entry_for(removal: Removal) -> RemovalEntry:
    """The ledger entry for a removal committed to the session: the command line's row
    (:func:`lcodec_core.ledger.entry_from_record` of the record's JSON)."""
    return entry_from_record(removal.to_json())


def record_removal(removal: Removal) -> str | None:
    """Record ``removal``; None when recorded, else a message saying why it was not."""
    ledger, problem = open_ledger()
    if ledger is None:
        return f"This removal was not recorded in the deletion ledger: {problem}"
    try:
        ledger.record(entry_for(removal))
    except (LedgerError, OSError) as error:
        log.warning("could not record a removal in the ledger: %s", error)
        return f"This removal was not recorded in the deletion ledger: {error}"
    return None


@dataclass(frozen=True)
class LedgerView:
    """What the Ledger page shows for one session."""
    path: Path
    lineage: str                     # root model hash of the session's base model
    model_rows: list[LedgerRow]      # the removals behind the session's current model
    model_cost: PrivacyCost
    lineage_rows: list[LedgerRow]    # every removal in the lineage (all sessions, undone too)
    lineage_cost: PrivacyCost
    lineages: dict[str, PrivacyCost]


def ledger_view(bench: Workbench) -> tuple[LedgerView | None, str | None]:
    """(the view, None), or (None, why the ledger could not be read)."""
    ledger, problem = open_ledger()
    if ledger is None:
        return None, problem
    try:
        lineage = ledger.lineage_of(bench.base_hash) or bench.base_hash
        model_rows = ledger.ancestry(bench.current_hash)
        lineage_rows = ledger.rows(lineage=lineage)
        return LedgerView(ledger.path, lineage, model_rows, privacy_cost(model_rows),
                          lineage_rows, privacy_cost(lineage_rows), ledger.lineages()), None
    except (LedgerError, OSError) as error:
        return None, str(error)


def epsilon_text(cost: PrivacyCost) -> str:
    return "none" if not cost.has_guarantee else f"{cost.epsilon:.4g}"


def delta_text(cost: PrivacyCost) -> str:
    return "n/a" if not cost.has_guarantee else f"{cost.delta:.3g}"


def outcome_text(row: LedgerRow) -> str:
    """The verdict recorded with a removal, the forgotten photos' accuracy after it and the
    relearning attack (a person) or the loss attack (photos), e.g. "forgotten, 0.0% recognised,
    0% back after 10 relearning steps" ("not judged" for rows recorded without a verdict)."""
    metrics = row.metrics or {}
    status = (metrics.get("verdict") or {}).get("status")
    after = (metrics.get("unlearned") or {}).get("forget_accuracy")
    accuracy = (f"{after:.1%} recognised" if isinstance(after, (int, float)) and math.isfinite(after)
                else "accuracy n/a")
    return f"{status.replace('_', ' ') if status else 'not judged'}, {accuracy}" + _attack_text(metrics)


def _attack_text(metrics: dict) -> str:
    """The attack the verdict leaned on most, recorded with the row ("" for rows without)."""
    unlearned = (metrics.get("attacks") or {}).get("unlearned") or {}
    if unlearned.get("kind") == "identity":
        last = last_relearned(unlearned)
        return "" if last is None else f", {last[1]:.0%} back after {last[0]} relearning steps"
    if unlearned.get("kind") == "photos" and unlearned.get("loss_auc") is not None:
        return f", loss-attack AUC {unlearned['loss_auc']:.2f}"
    return ""


ROW_COLUMNS = ["id", "time (UTC)", "removed", "method", "outcome", "guarantee", "epsilon",
               "delta", "sigma", "before", "after", "saved to"]


def rows_frame(rows: list[LedgerRow]) -> pd.DataFrame:
    """One line per removal, newest first, for ``st.dataframe``."""
    return pd.DataFrame([{
        "id": row.id,
        "time (UTC)": row.time[:19].replace("T", " "),
        "removed": (f"identity {row.identity} ({len(row.forget_indices)} photos)"
                    if row.identity is not None else f"photos {row.forget_indices[:8]}"),
        "method": row.method,
        "outcome": outcome_text(row),
        "guarantee": (row.metrics or {}).get("guarantee") or "not recorded",
        "epsilon": row.epsilon if row.noised else None,
        "delta": row.delta if row.noised else None,
        "sigma": row.sigma,
        "before": row.model_before[:10],
        "after": row.model_after[:10],
        "saved to": row.model_path or "",
    } for row in reversed(rows)], columns=ROW_COLUMNS)


def lineages_frame(lineages: dict[str, PrivacyCost]) -> pd.DataFrame:
    """One line per lineage with its cumulative cost."""
    return pd.DataFrame([{
        "lineage (root model)": lineage[:16], "removals": cost.removals,
        "without noise": cost.unnoised,
        "cumulative epsilon": cost.epsilon if math.isfinite(cost.epsilon) else None,
        "cumulative delta": cost.delta if cost.has_guarantee else None,
    } for lineage, cost in lineages.items()], columns=["lineage (root model)", "removals",
                                                        "without noise", "cumulative epsilon",
                                                        "cumulative delta"])
