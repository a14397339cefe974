"""The removal store: a durable, append-only record of every removal, in SQLite.

Every removal made by the command line or the dashboard is one row of
``$LCODEC_HOME/ledger.sqlite`` (Python's ``sqlite3``; the path can be overridden): when it
happened (UTC), the model's hash before and after (:func:`lcodec_models.state_hash`), what was
removed (identity, training indices, file names), the method and every setting, sigma,
epsilon and delta, the accuracies, and the file the new model was saved to, if any.
What a row records (:class:`.entries.RemovalEntry`) is built in :mod:`.entries`.

Lineage
    A row's ``lineage`` is the hash of the root model it descends from. A removal from a model
    whose hash is some committed row's ``model_after`` inherits that row's lineage; otherwise
    its lineage is its own ``model_before``. A lineage is a tree (the dashboard's undo, two
    sessions starting from the same base model): :meth:`Ledger.ancestry` is the one path
    from the root to a given model.

Privacy cost (:mod:`.privacy`)
    :meth:`Ledger.model_cost` is the cost of one model (its ancestry);
    :meth:`Ledger.lineage_cost` sums the whole tree (an upper bound for every model in it).

Crash safety (:mod:`.files`)
    A model file and its row are committed together or not at all; opening a
    :class:`Ledger` reconciles the saves that killed processes left pending.

Concurrency: every operation opens its own connection (so a :class:`Ledger` may be shared by
threads), writes use ``BEGIN IMMEDIATE`` and a busy timeout, and the database is in WAL mode
with ``synchronous=FULL``. Errors from SQLite become :class:`LedgerError` naming the file.
It never imports a UI library.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from ..jsonsafe import json_ready
from ..paths import lcodec_home
from .files import ReconcileReport, _file_sha256, reconcile
from .entries import LedgerRow, RemovalEntry
from .privacy import PrivacyCost, privacy_cost

SCHEMA_VERSION = 1
LEDGER_FILENAME = "ledger.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS removals (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    time           TEXT NOT NULL,     -- UTC, ISO 8601
    lineage        TEXT NOT NULL,     -- hash of the root model of this chain of removals
    model_before   TEXT NOT NULL,     -- lcodec_models.state_hash of the model the removal started from
    model_after    TEXT NOT NULL,     -- lcodec_models.state_hash of the unlearned model
    model_path     TEXT,              -- where the unlearned model was saved; NULL if not saved
    file_sha256    TEXT,              -- sha256 of that file's bytes
    dataset        TEXT,
    model_name     TEXT,
    identity       INTEGER,           -- the removed class, or NULL for an index request
    forget_indices TEXT NOT NULL,     -- JSON list of training indices
    file_names     TEXT NOT NULL,     -- JSON list of the removed images' sources
    method         TEXT,
    settings       TEXT NOT NULL,     -- JSON UnlearnConfig.to_dict()
    sigma          REAL,
    epsilon        REAL,              -- NULL: no noise, no guarantee
    delta          REAL,
    metrics        TEXT NOT NULL,     -- JSON accuracies (and timings)
    status         TEXT NOT NULL DEFAULT 'committed',  -- 'pending' during save_and_record
    temp_path      TEXT,              -- the temporary file of a pending save
    owner          TEXT               -- host:pid:start of the process doing a pending save
);
CREATE INDEX IF NOT EXISTS removals_lineage ON removals (lineage);
CREATE INDEX IF NOT EXISTS removals_after ON removals (model_after);
CREATE INDEX IF NOT EXISTS removals_before ON removals (model_before)
"""

_COLUMNS = ("id", "time", "lineage", "model_before", "model_after", "model_path", "file_sha256",
            "dataset", "model_name", "identity", "forget_indices", "file_names", "method",
            "settings", "sigma", "epsilon", "delta", "metrics", "status")
_JSON_COLUMNS = ("forget_indices", "file_names", "settings", "metrics")

class LedgerError(RuntimeError):
    """The ledger could not be opened, read or written (the message names the file)."""


def default_ledger_path() -> Path:
    """``$LCODEC_HOME/ledger.sqlite``."""
    return lcodec_home() / LEDGER_FILENAME


class Ledger:
    """The removal ledger in one SQLite file; safe to share between threads and processes.

    Parameters
    ----------
    path : the database file (default ``$LCODEC_HOME/ledger.sqlite``); created with its
        schema on first open.
    timeout_s : how long a write waits for another writer's lock before failing.
    reconcile : finish or undo the interrupted saves of dead processes on open (see the
        module docstring).
    """

    def __init__(self, path: str | os.PathLike | None = None, *, timeout_s: float = 30.0,
                 reconcile: bool = True):
        self.path = Path(path) if path is not None else default_ledger_path()
        self.timeout_s = timeout_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise LedgerError(f"ledger {self.path}: cannot create its folder ({error})") from None
        self._create_schema()
        if reconcile:
            self.reconcile()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    # Connections -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection in autocommit mode; SQLite errors become LedgerError."""
        connection = None
        try:
            connection = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
            connection.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            connection.execute("PRAGMA synchronous = FULL")
            yield connection
        except sqlite3.Error as error:
            raise LedgerError(f"ledger {self.path}: {error}") from error
        finally:
            if connection is not None:
                connection.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any exception)."""
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _create_schema(self) -> None:
        with self._connect() as connection:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError(f"ledger {self.path} has schema version {version}; this lcodec "
                                  f"reads version {SCHEMA_VERSION} (upgrade lcodec)")
            if version == SCHEMA_VERSION:
                return
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";\n"):
                    if statement.strip():
                        connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        with self._connect() as connection:
            return connection.execute("PRAGMA user_version").fetchone()[0]

    # Writing -----------------------------------------------------------------------------

    def record(self, entry: RemovalEntry) -> LedgerRow:
        """Append a committed row for ``entry`` (a removal whose model was not saved by us)."""
        with self._transaction() as connection:
            row_id = self._insert(connection, entry, status="committed")
        return self.get(row_id)

    def _insert(self, connection: sqlite3.Connection, entry: RemovalEntry, *, status: str,
                file_sha256: str | None = None, temp_path: str | None = None,
                owner: str | None = None) -> int:
        found = connection.execute(
            "SELECT lineage FROM removals WHERE model_after = ? AND status = 'committed' "
            "ORDER BY id LIMIT 1", (entry.model_before,)).fetchone()
        lineage = found[0] if found else entry.model_before
        values = asdict(entry)
        for name in _JSON_COLUMNS:
            values[name] = json.dumps(json_ready(values[name]), allow_nan=False)
        values.update(time=_utc_now(), lineage=lineage, status=status, file_sha256=file_sha256,
                      temp_path=temp_path, owner=owner)
        names = [n for n in values]
        cursor = connection.execute(
            f"INSERT INTO removals ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            [values[n] for n in names])
        return cursor.lastrowid

    # Reading -----------------------------------------------------------------------------

    def rows(self, *, lineage: str | None = None, model_hash: str | None = None) -> list[LedgerRow]:
        """Committed rows, oldest first; ``lineage`` / ``model_hash`` (before or after) filter.

        Either filter may be a unique prefix of a hash (at least 6 characters).
        """
        where, params = ["status = 'committed'"], []
        if lineage is not None:
            where.append("lineage LIKE ?")
            params.append(_prefix_pattern(lineage))
        if model_hash is not None:
            where.append("(model_before LIKE ? OR model_after LIKE ?)")
            params += [_prefix_pattern(model_hash)] * 2
        with self._connect() as connection:
            found = connection.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM removals WHERE {' AND '.join(where)} "
                f"ORDER BY id", params).fetchall()
        return [_row(values) for values in found]

    def get(self, row_id: int) -> LedgerRow:
        """The committed row ``row_id`` (KeyError if there is none)."""
        with self._connect() as connection:
            found = connection.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM removals WHERE id = ? AND status = 'committed'",
                (row_id,)).fetchone()
        if found is None:
            raise KeyError(f"no committed ledger row {row_id}")
        return _row(found)

    def lineages(self) -> dict[str, PrivacyCost]:
        """Every lineage (root model hash) with the cumulative cost of all its removals."""
        groups: dict[str, list[LedgerRow]] = {}
        for row in self.rows():
            groups.setdefault(row.lineage, []).append(row)
        return {lineage: privacy_cost(rows) for lineage, rows in groups.items()}

    def resolve_hash(self, prefix: str) -> str:
        """The full model hash that ``prefix`` starts (ValueError if none or several)."""
        found = {h for row in self.rows(model_hash=prefix) for h in (row.model_before, row.model_after)
                 if h.startswith(prefix.lower())}
        if len(found) != 1:
            raise ValueError(f"model hash {prefix!r} matches "
                             + ("no model in the ledger" if not found else f"{len(found)} models"))
        return found.pop()

    def lineage_of(self, model_hash: str) -> str | None:
        """The lineage a removal from ``model_hash`` would join (None: no row mentions it)."""
        for row in self.rows(model_hash=model_hash):
            return row.lineage
        return None

    def lineage_cost(self, lineage: str) -> PrivacyCost:
        """Cumulative cost of every removal in ``lineage`` (all branches: an upper bound)."""
        return privacy_cost(self.rows(lineage=lineage))

    def ancestry(self, model_hash: str) -> list[LedgerRow]:
        """The removals that produced ``model_hash`` from its root model, oldest first.

        Follows ``model_after`` -> ``model_before`` back (the first row that produced each
        model). The removals that left a model on that path as it was (``model_after`` equal
        to ``model_before``: guarantee "unchanged") are part of it too, wherever they are on
        the path: they were asked of that model and removed nothing, so they void its
        guarantee as the dashboard's ``Workbench.privacy_spent`` says (see :mod:`.privacy`).
        Empty for a root model that nothing was asked of or one the ledger does not know.
        """
        by_after: dict[str, LedgerRow] = {}
        unchanged: dict[str, list[LedgerRow]] = {}
        for row in self.rows():
            if row.model_after == row.model_before:
                unchanged.setdefault(row.model_after, []).append(row)
            else:
                by_after.setdefault(row.model_after, row)
        chain, seen, current = [], set(), model_hash
        while current not in seen:
            seen.add(current)
            chain.extend(reversed(unchanged.get(current, [])))
            if current not in by_after:
                break
            row = by_after[current]
            chain.append(row)
            current = row.model_before
        return chain[::-1]

    def model_cost(self, model_hash: str) -> PrivacyCost:
        """Cumulative cost of the removals that produced ``model_hash`` (its ancestry)."""
        return privacy_cost(self.ancestry(model_hash))

    def verify_files(self) -> dict[int, str]:
        """For each committed row with a ``model_path``: "ok", "missing" or "changed"."""
        status = {}
        for row in self.rows():
            if row.model_path is None:
                continue
            path = Path(row.model_path)
            if not path.is_file():
                status[row.id] = "missing"
            else:
                status[row.id] = "ok" if _file_sha256(path) == row.file_sha256 else "changed"
        return status

    def reconcile(self) -> ReconcileReport:
        """Finish or undo the saves that dead processes left pending (:func:`.files.reconcile`).

        A pending row whose final file has the recorded hash is committed; any other is
        deleted. Its temporary file is removed either way. Rows of live processes are left.
        """
        return reconcile(self)


# What a row records ------------------------------------------------------------------------

def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def _prefix_pattern(text: str) -> str:
    cleaned = "".join(c for c in text.lower() if c in "0123456789abcdef")
    if len(cleaned) != len(text) or len(cleaned) < 6:
        raise ValueError(f"expected a model hash (hex, at least 6 characters); got {text!r}")
    return cleaned + "%"


def _row(values: tuple) -> LedgerRow:
    record = dict(zip(_COLUMNS, values))
    for name in _JSON_COLUMNS:
        record[name] = json.loads(record[name])
    return LedgerRow(**record)


