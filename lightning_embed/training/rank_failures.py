"""Which rank failed first, for the run record that rank zero alone writes.

When one process of a distributed run raises, the others learn of it only as a broken collective (gloo:
"Connection closed by peer"; NCCL: a timeout) or as the launcher's SIGTERM. The run record, written by
rank zero, would then name that symptom instead of the cause. So every other rank that fails leaves a
one-line note beside the runs file (``runs.jsonl.rank1.error``) before it exits, and rank zero records the
earliest failure of the run: its own, or a note written after the run started. Notes are removed once read.

The note needs the runs file's folder to be shared by the ranks (one machine, or a cluster's shared
file system, which distributed checkpoints need as well); where it is not, the record keeps rank zero's
own error line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path


def _note_path(runs_file: str | os.PathLike, rank: int) -> Path:
    path = Path(runs_file).expanduser()
    return path.with_name(f"{path.name}.rank{rank}.error")


def error_line(exception: BaseException) -> str:
    """``Type: first line of the message``, as run records hold it.

    A failed distributed checkpoint save (``CheckpointException``, raised on every rank) names the
    error of the first rank that failed to write, which its own first line does not.
    """
    failures = getattr(exception, "failures", None)
    if isinstance(failures, dict) and failures:
        rank, wrapped = min(failures.items(), key=lambda item: item[0])
        cause = wrapped[0] if isinstance(wrapped, tuple) and wrapped else wrapped  # (exception, traceback)
        if isinstance(cause, BaseException):
            return f"{type(exception).__name__} (rank {rank}): {error_line(cause)}"
    message = str(exception).strip().splitlines()
    return f"{type(exception).__name__}: {message[0] if message else ''}".strip()


def leave_note(runs_file: str | os.PathLike, rank: int, status: str, error: str) -> None:
    """Writes this rank's failure (atomically) for rank zero; never raises."""
    path = _note_path(runs_file, rank)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"rank": rank, "time": time.time(), "status": status, "error": error}, handle)
        os.replace(tmp, path)
    except OSError:
        pass  # the record then names rank zero's own error; the rank's traceback is in its log


def first_failure(runs_file: str | os.PathLike, since: float, own: tuple[float, str, str] | None,
                  wait_s: float = 2.0) -> tuple[str, str] | None:
    """The earliest failure of the run: ``(status, "rank R: error")`` from a note, or rank zero's own.

    Args:
        runs_file: the run's runs file (notes lie beside it).
        since: wall-clock start of the run; older notes belong to earlier runs and are ignored.
        own: rank zero's own failure ``(time, status, error)``, or None when it has none.
        wait_s: how long to wait for another rank's note when rank zero's own error is a broken
            collective (the failing rank may still be writing it).

    Returns:
        ``(status, error)``; None when there is no failure to report.
    """
    folder = Path(runs_file).expanduser().parent
    pattern = f"{Path(runs_file).name}.rank*.error"
    deadline = time.monotonic() + (wait_s if own is not None and _is_collective_error(own[2]) else 0.0)
    while True:
        notes = []
        for path in folder.glob(pattern):
            try:
                note = json.loads(path.read_text(encoding="utf-8"))
                path.unlink(missing_ok=True)
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(note, dict) and float(note.get("time", 0)) >= since:
                notes.append((float(note["time"]), str(note.get("status", "failed")),
                              f"rank {note.get('rank')}: {note.get('error', '')}"))
        if notes or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if own is not None and notes and _is_collective_error(own[2]):
        # Rank zero only saw the others fail: the cause is in a note (an original error before a symptom).
        _, status, error = min(notes, key=lambda note: (_is_collective_error(note[2]), note[0]))
        return status, error
    candidates = notes + ([own] if own is not None else [])
    if not candidates:
        return None
    _, status, error = min(candidates)
    return status, error


@contextlib.contextmanager
def sigterm_held():
    """Ignores SIGTERM while rank zero writes the record of a failed run.

    When another rank dies, torchrun sends the survivors SIGTERM (and SIGKILL after a grace period);
    Lightning's handler would then start a collective with the dead rank from inside the record writing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_collective_error(error: str) -> bool:
    # What the surviving ranks see when a peer dies: a broken gloo/NCCL connection, or the launcher's SIGTERM.
    markers = ("DistBackendError", "Connection closed by peer", "Connection reset", "SIGTERM", "NCCL",
               "CheckpointException", "timed out", "Timeout")
    return any(m in error for m in markers)


__all__ = ["error_line", "first_failure", "leave_note", "sigterm_held"]
