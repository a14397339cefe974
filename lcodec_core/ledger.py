"""The deletion ledger: a durable, append-only record of every removal, in SQLite.

Every removal made by the command line or the dashboard is one row of
``$LCODEC_HOME/ledger.sqlite`` (Python's ``sqlite3``; the path can be overridden): when it
happened (UTC), the model's hash before and after (:func:`models.state_hash`), what was
removed (identity, training indices, file names), the method and every setting, sigma,
epsilon and delta, the accuracies, and the file the new model was saved to, if any.

Lineage
    A row's ``lineage`` is the hash of the root model it descends from. A removal from a model
    whose hash is some committed row's ``model_after`` inherits that row's lineage; otherwise
    its lineage is its own ``model_before``. A lineage is a tree (the dashboard's undo, two
    sessions starting from the same base model): :meth:`Ledger.ancestry` is the one path
    from the root to a given model.

Privacy cost
    :func:`privacy_cost` composes removals with basic sequential composition: epsilons add up
    and deltas add up. It is the honest default (valid for any mechanisms, adaptively chosen);
    advanced composition would be tighter for many removals but needs assumptions we do not
    check. A removal run without noise (epsilon None, or sigma 0) has no (epsilon, delta)
    guarantee at all, so any such removal makes the total epsilon infinite: the result says
    how many removals were un-noised and never counts them as 0.
    :meth:`Ledger.model_cost` is the cost of one model (its ancestry);
    :meth:`Ledger.lineage_cost` sums the whole tree (an upper bound for every model in it).

Atomic save and record (:func:`save_and_record`)
    The model file and its row are committed together or not at all, even if the process is
    killed at any instant. The protocol, with the state a kill at each point leaves:

    1. serialise the checkpoint (:meth:`models.Checkpoint.save` into a private temporary
       folder, read back) and hash the bytes (sha256);
    2. commit the row with ``status='pending'``, the temporary file name, the final path,
       the file hash and the owner process (host, pid, start time);
       - killed before this commit: nothing was written anywhere.
    3. write the bytes to the temporary file (same folder as the final path) and fsync it;
       - killed here: a pending row, maybe a (partial) temporary file, the final path
         untouched.
    4. ``os.replace`` the temporary file onto the final path, fsync the folder;
       - killed before the rename: as in 3. Killed after it: the final path holds the new
         model, the row is still pending.
    5. set ``status='committed'``.

    Reconciliation (:meth:`Ledger.reconcile`, run whenever a :class:`Ledger` is opened) looks
    at the pending rows whose owner process is gone: if the file at the final path has the
    recorded hash, the rename happened and the row is committed (roll forward: both);
    otherwise the row is deleted and its temporary file removed (roll back: neither). A
    file already at the final path is only ever replaced by the rename itself, so a write
    that fails or is killed before it leaves that file as it was. Pending rows are never
    listed or counted. Committed rows are never deleted: a removal that happened stays on the
    record even if its file is later deleted or overwritten (:meth:`Ledger.verify_files`
    reports that). The tests kill a process at each step through ``_step_hook``: after 2
    ("row_pending"), 3 ("temp_written"), 4 ("renamed") and 5 ("committed").

    Limits: the owner of a pending row is judged dead by pid and process start time on the
    same host; rows owned by another host are left pending (do not share a ledger over a
    network file system). Two saves racing to the same final path: the last rename wins and
    the earlier row stays committed with its file reported "changed".

Concurrency: every operation opens its own connection (so a :class:`Ledger` may be shared by
threads), writes use ``BEGIN IMMEDIATE`` and a busy timeout, and the database is in WAL mode
with ``synchronous=FULL``. Errors from SQLite become :class:`LedgerError` naming the file.
It never imports a UI library; torch is used only to serialise a checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import socket
import sqlite3
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .jsonsafe import json_ready
from .paths import lcodec_home

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
LEDGER_FILENAME = "ledger.sqlite"
TEMP_SUFFIX = ".lcodec-tmp"
COMPOSITION = "basic sequential composition: epsilons add up, deltas add up"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS removals (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    time           TEXT NOT NULL,     -- UTC, ISO 8601
    lineage        TEXT NOT NULL,     -- hash of the root model of this chain of removals
    model_before   TEXT NOT NULL,     -- models.state_hash of the model the removal started from
    model_after    TEXT NOT NULL,     -- models.state_hash of the unlearned model
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

# Called with the name of each step of save_and_record ("row_pending", "temp_written",
# "renamed", "committed"); the crash tests set it to kill the process there.
_step_hook: Callable[[str], None] | None = None


class LedgerError(RuntimeError):
    """The ledger could not be opened, read or written (the message names the file)."""


@dataclass(frozen=True)
class RemovalEntry:
    """What to record about one removal (the ledger adds id, time and lineage).

    ``epsilon`` None means the removal ran without noise (no guarantee); ``delta`` is only
    meaningful with an epsilon. JSON fields must be JSON-ready (NaN is stored as null).
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
    epsilon: float | None = None                        # None: no noise, no guarantee
    delta: float | None = None
    metrics: dict = field(default_factory=dict)         # accuracies before/after, timings
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
    def noised(self) -> bool:
        """True when this removal carries an (epsilon, delta) guarantee."""
        return self.epsilon is not None and (self.sigma is None or self.sigma > 0)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PrivacyCost:
    """Cumulative (epsilon, delta) of a set of removals under basic sequential composition.

    ``epsilon`` is ``math.inf`` as soon as one removal ran without noise (``unnoised`` > 0):
    no (epsilon, delta) guarantee is claimed then. ``delta`` sums the noised removals' deltas.
    No removal at all costs (0, 0).
    """
    removals: int
    unnoised: int
    epsilon: float
    delta: float

    @property
    def has_guarantee(self) -> bool:
        return self.unnoised == 0

    def describe(self) -> str:
        """One line: "epsilon 2, delta 2e-05 over 2 removals" or "no guarantee (...)"."""
        plural = "s" if self.removals != 1 else ""
        if not self.has_guarantee:
            return (f"no guarantee: {self.unnoised} of {self.removals} removal{plural} "
                    f"ran without noise (epsilon = inf)")
        return f"epsilon {self.epsilon:.4g}, delta {self.delta:.3g} over {self.removals} removal{plural}"

    def to_dict(self) -> dict:
        """JSON-ready: epsilon is null when there is no guarantee."""
        return {"removals": self.removals, "unnoised": self.unnoised,
                "epsilon": self.epsilon if self.has_guarantee else None,
                "delta": self.delta, "has_guarantee": self.has_guarantee,
                "composition": COMPOSITION}


def privacy_cost(rows: list[LedgerRow]) -> PrivacyCost:
    """Basic sequential composition of ``rows``: sum of epsilons, sum of deltas.

    Notes
    -----
    If removal i is (epsilon_i, delta_i)-forgetting, the sequence is
    (sum_i epsilon_i, sum_i delta_i)-forgetting. A removal without noise has no guarantee,
    so the total epsilon is infinite when any row is un-noised.
    """
    unnoised = sum(not row.noised for row in rows)
    epsilon = math.inf if unnoised else sum(row.epsilon for row in rows)
    delta = sum(row.delta or 0.0 for row in rows if row.noised)
    return PrivacyCost(len(rows), unnoised, float(epsilon), float(delta))


@dataclass(frozen=True)
class ReconcileReport:
    """What :meth:`Ledger.reconcile` did: row ids rolled forward / back, temp files removed."""
    committed: list[int]
    rolled_back: list[int]
    temp_files_removed: list[str]


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
        model). Empty for a root model or one the ledger does not know.
        """
        by_after: dict[str, LedgerRow] = {}
        for row in self.rows():
            by_after.setdefault(row.model_after, row)
        chain, seen, current = [], set(), model_hash
        while current in by_after and current not in seen:
            seen.add(current)
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

    # Recovery ----------------------------------------------------------------------------

    def reconcile(self) -> ReconcileReport:
        """Finish or undo the saves that dead processes left pending (see the module docstring).

        A pending row whose final file has the recorded hash is committed; any other is
        deleted. Its temporary file is removed either way. Rows of live processes are left.
        """
        committed, rolled_back, removed = [], [], []
        with self._connect() as connection:
            pending = connection.execute(
                "SELECT id, owner FROM removals WHERE status = 'pending'").fetchall()
        for row_id, owner in pending:
            if _owner_alive(owner):
                continue
            with self._transaction() as connection:
                found = connection.execute(
                    "SELECT model_path, file_sha256, temp_path FROM removals "
                    "WHERE id = ? AND status = 'pending'", (row_id,)).fetchone()
                if found is None:  # another process reconciled it meanwhile
                    continue
                model_path, sha, temp_path = found
                final = Path(model_path)
                if final.is_file() and _file_sha256(final) == sha:
                    connection.execute("UPDATE removals SET status = 'committed', temp_path = NULL, "
                                       "owner = NULL WHERE id = ?", (row_id,))
                    committed.append(row_id)
                else:
                    connection.execute("DELETE FROM removals WHERE id = ?", (row_id,))
                    rolled_back.append(row_id)
                if temp_path and Path(temp_path).exists():
                    Path(temp_path).unlink()
                    removed.append(temp_path)
        if committed or rolled_back:
            log.warning("ledger %s: interrupted saves reconciled: committed %s, rolled back %s",
                        self.path, committed, rolled_back)
        return ReconcileReport(committed, rolled_back, removed)


# Saving a model and its row together -------------------------------------------------------

def save_and_record(checkpoint, path: str | os.PathLike, entry: RemovalEntry,
                    ledger: Ledger | None = None) -> LedgerRow:
    """Save ``checkpoint`` (a :class:`models.Checkpoint`) to ``path`` and record ``entry``, atomically.

    ``entry.model_after`` must be the checkpoint's state hash; ``entry.model_path`` is set to
    the absolute ``path``. Either both the file and the committed row exist afterwards, or
    neither (a file already at ``path`` is then left as it was), whatever kills the process
    and when: see the protocol in the module docstring. Returns the committed row.
    """
    model_after = checkpoint.state_hash()
    if entry.model_after != model_after:
        raise ValueError(f"entry.model_after {entry.model_after[:12]} is not the checkpoint's "
                         f"hash {model_after[:12]}")
    return write_and_record(_checkpoint_bytes(checkpoint), path, entry, ledger)


def write_and_record(data: bytes, path: str | os.PathLike, entry: RemovalEntry,
                     ledger: Ledger | None = None) -> LedgerRow:
    """Write ``data`` to ``path`` and commit ``entry``'s row together (see :func:`save_and_record`)."""
    ledger = ledger if ledger is not None else Ledger()
    final = Path(path).expanduser().absolute()
    if final.is_dir():
        raise IsADirectoryError(f"{final} is a folder; give a file name to save the model to")
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")
    sha = hashlib.sha256(data).hexdigest()
    entry = dataclasses.replace(entry, model_path=str(final))
    with ledger._transaction() as connection:
        row_id = ledger._insert(connection, entry, status="pending", file_sha256=sha,
                                temp_path=str(temp), owner=_owner_token())
    _step("row_pending")
    try:
        with open(temp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _step("temp_written")
        os.replace(temp, final)
        _fsync_folder(final.parent)
        _step("renamed")
        with ledger._transaction() as connection:
            connection.execute("UPDATE removals SET status = 'committed', temp_path = NULL, "
                               "owner = NULL WHERE id = ?", (row_id,))
    except BaseException:
        _undo_pending(ledger, row_id, temp, final, sha)
        raise
    _step("committed")
    return ledger.get(row_id)


def _undo_pending(ledger: Ledger, row_id: int, temp: Path, final: Path, sha: str) -> None:
    """After an exception in write_and_record: roll the pending row forward or back now."""
    try:
        temp.unlink(missing_ok=True)
        with ledger._transaction() as connection:
            if final.is_file() and _file_sha256(final) == sha:   # the rename happened
                connection.execute("UPDATE removals SET status = 'committed', temp_path = NULL, "
                                   "owner = NULL WHERE id = ?", (row_id,))
            else:
                connection.execute("DELETE FROM removals WHERE id = ? AND status = 'pending'",
                                   (row_id,))
    except Exception:  # the next reconcile() will do it once this process has exited
        log.exception("ledger %s: could not undo pending row %s", ledger.path, row_id)


def entry_from_report(report: dict, model_before: str, model_after: str,
                      model_path: str | None = None) -> RemovalEntry:
    """A :class:`RemovalEntry` from :func:`lcodec_core.removal.run_removal`'s report."""
    request = report["request"]
    metrics = {name: report[name] for name in ("original", "unlearned", "retrained") if name in report}
    metrics["timings"] = report.get("timings", {})
    metrics["guarantee"] = report.get("guarantee")
    if "verdict" in report:
        metrics["verdict"] = report["verdict"]
    return RemovalEntry(
        model_before=model_before, model_after=model_after, dataset=report.get("dataset"),
        model_name=report.get("model"), identity=request.get("identity"),
        forget_indices=list(request.get("forget_indices", [])),
        file_names=[str(s) for s in request.get("sources", [])],
        method=report["settings"].get("method"), settings=report["settings"],
        sigma=report.get("sigma"),
        # an (epsilon, delta) is recorded only for a certified removal (lcodec_core.guarantee)
        epsilon=report.get("epsilon") if report.get("guarantee", "certified") == "certified" else None,
        delta=report.get("delta") if report.get("guarantee", "certified") == "certified"
        and report.get("epsilon") is not None else None,
        metrics=metrics, model_path=model_path)


# Helpers -------------------------------------------------------------------------------------

def _step(name: str) -> None:
    if _step_hook is not None:
        _step_hook(name)


def _checkpoint_bytes(checkpoint) -> bytes:
    """The bytes :meth:`models.Checkpoint.save` writes (refuses NaN weights)."""
    with tempfile.TemporaryDirectory(prefix="lcodec-ckpt-") as folder:
        return checkpoint.save(Path(folder) / "model.pt").read_bytes()


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _process_start(pid: int) -> str:
    """The start time of ``pid`` (Linux: /proc/PID/stat field 22), "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _owner_token() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def _owner_alive(owner: str | None) -> bool:
    """Whether the process that owns a pending row may still be running.

    Owners on another host are assumed alive (their rows are left alone).
    """
    try:
        host, pid_text, start = (owner or "").rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not start or _process_start(pid) in ("", start)


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


