"""Atomic save and record: a model file and its ledger row, committed together or not at all.

:func:`save_and_record` keeps the file and its row together even if the process is killed at
any instant. The protocol, with the state a kill at each point leaves:

1. serialise the checkpoint (:meth:`lcodec_models.Checkpoint.save` into a private temporary
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

Reconciliation (:func:`reconcile`, run by :meth:`Ledger.reconcile
<lcodec_core.ledger.Ledger.reconcile>` whenever a ledger is opened) looks at the pending rows
whose owner process is gone: if the file at the final path has the recorded hash, the rename
happened and the row is committed (roll forward: both); otherwise the row is deleted and its
temporary file removed (roll back: neither). A file already at the final path is only ever
replaced by the rename itself, so a write that fails or is killed before it leaves that file
as it was. Pending rows are never listed or counted. Committed rows are never deleted: a
removal that happened stays on the record even if its file is later deleted or overwritten
(:meth:`Ledger.verify_files <lcodec_core.ledger.Ledger.verify_files>` reports that). The
tests kill a process at each step through this module's ``_step_hook``: after 2
("row_pending"), 3 ("temp_written"), 4 ("renamed") and 5 ("committed").

Limits: the owner of a pending row is judged dead by pid and process start time on the same
host; rows owned by another host are left pending (do not share a ledger over a network file
system). Two saves racing to the same final path: the last rename wins and the earlier row
stays committed with its file reported "changed".

torch is used only to serialise a checkpoint (by the checkpoint itself).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import socket
import sqlite3
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .entries import LedgerRow, RemovalEntry
    from .store import Ledger

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".lcodec-tmp"

# Called with the name of each step of save_and_record ("row_pending", "temp_written",
# "renamed", "committed"); the crash tests set it to kill the process there.
_step_hook: Callable[[str], None] | None = None


@dataclass(frozen=True)
class ReconcileReport:
    """What :func:`reconcile` did: row ids rolled forward / back, temp files removed."""
    committed: list[int]
    rolled_back: list[int]
    temp_files_removed: list[str]


def save_and_record(checkpoint, path: str | os.PathLike, entry: RemovalEntry,
                    ledger: Ledger | None = None) -> LedgerRow:
    """Save ``checkpoint`` (a :class:`lcodec_models.Checkpoint`) to ``path`` and record ``entry``, atomically.

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
    if ledger is None:
        from .store import Ledger  # the store imports this module for reconcile
        ledger = Ledger()
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
            _commit(connection, row_id)
    except BaseException:
        _undo_pending(ledger, row_id, temp, final, sha)
        raise
    _step("committed")
    return ledger.get(row_id)


def reconcile(ledger: Ledger) -> ReconcileReport:
    """Finish or undo the saves that dead processes left pending in ``ledger``.

    A pending row whose final file has the recorded hash is committed; any other is
    deleted. Its temporary file is removed either way. Rows of live processes are left.
    """
    committed, rolled_back, removed = [], [], []
    with ledger._connect() as connection:
        pending = connection.execute(
            "SELECT id, owner FROM removals WHERE status = 'pending'").fetchall()
    for row_id, owner in pending:
        if _owner_alive(owner):
            continue
        with ledger._transaction() as connection:
            found = connection.execute(
                "SELECT model_path, file_sha256, temp_path FROM removals "
                "WHERE id = ? AND status = 'pending'", (row_id,)).fetchone()
            if found is None:  # another process reconciled it meanwhile
                continue
            model_path, sha, temp_path = found
            (committed if _settle(connection, row_id, Path(model_path), sha)
             else rolled_back).append(row_id)
            if temp_path and Path(temp_path).exists():
                Path(temp_path).unlink()
                removed.append(temp_path)
    if committed or rolled_back:
        log.warning("ledger %s: interrupted saves reconciled: committed %s, rolled back %s",
                    ledger.path, committed, rolled_back)
    return ReconcileReport(committed, rolled_back, removed)


def _undo_pending(ledger: Ledger, row_id: int, temp: Path, final: Path, sha: str) -> None:
    """After an exception in write_and_record: roll the pending row forward or back now."""
    try:
        temp.unlink(missing_ok=True)
        with ledger._transaction() as connection:
            _settle(connection, row_id, final, sha)
    except Exception:  # the next reconcile() will do it once this process has exited
        log.exception("ledger %s: could not undo pending row %s", ledger.path, row_id)


def _settle(connection: sqlite3.Connection, row_id: int, final: Path, sha: str) -> bool:
    """Commit pending row ``row_id`` if the rename happened (``final`` has hash ``sha``: roll
    forward, True), else delete it (roll back, False)."""
    if final.is_file() and _file_sha256(final) == sha:
        _commit(connection, row_id)
        return True
    connection.execute("DELETE FROM removals WHERE id = ? AND status = 'pending'", (row_id,))
    return False


def _commit(connection: sqlite3.Connection, row_id: int) -> None:
    connection.execute("UPDATE removals SET status = 'committed', temp_path = NULL, "
                       "owner = NULL WHERE id = ?", (row_id,))


# Helpers -------------------------------------------------------------------------------------

def _step(name: str) -> None:
    if _step_hook is not None:
        _step_hook(name)


def _checkpoint_bytes(checkpoint) -> bytes:
    """The bytes :meth:`lcodec_models.Checkpoint.save` writes (refuses NaN weights)."""
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
