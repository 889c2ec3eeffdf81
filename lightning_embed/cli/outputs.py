"""Output locations checked before the work starts: a command that would fail to write its result refuses at once.

A location is usable when it exists and takes a new file, or when its nearest existing parent folder
does (the missing folders are created when the result is written). The check really creates and removes
a small file there, so a read-only file system, a full quota or a path through a regular file is caught
even where permission bits say yes (e.g. for root).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from lightning_embed.errors import UserError


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _probe(folder: Path, option: str, target: Path) -> None:
    """Creates and removes a file in ``folder``; a UserError naming ``option`` if that fails."""
    if not folder.is_dir():
        raise UserError(f"{option} {target}: {folder} is a file, not a folder; choose another {option}.")
    try:
        fd, name = tempfile.mkstemp(prefix=".lightning-embed-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise UserError(f"{option} {target}: cannot write in {folder} ({err.strerror or err}); "
                        f"choose another {option}.") from None


def check_output(path: str | os.PathLike, option: str, kind: Literal["file", "folder"] = "file",
                 overwrite: bool = True) -> Path:
    """Checks that ``path`` can be written (created if missing) before any work is done.

    Args:
        path: the file or folder a command will write.
        option: how the user named it (``--output``, ``trainer.default_root_dir``), for the message.
        kind: ``file``: ``path`` must not be a folder; ``folder``: ``path`` must not be a file.
        overwrite: whether a file that exists may be replaced; ``False`` refuses it (a command whose result
            cost compute passes its ``--overwrite`` here, so nothing is replaced unless the user says so).

    Returns:
        ``path`` with ``~`` expanded.

    Raises:
        UserError: ``path`` is of the wrong kind, exists while ``overwrite`` is ``False``, or neither it nor
            its nearest existing parent takes a file.
    """
    target = Path(path).expanduser()
    if kind == "file" and target.is_dir():
        raise UserError(f"{option} {target} is a folder; give a file name.")
    if kind == "file" and not overwrite and target.exists():
        raise UserError(f"{option} {target} exists; pass --overwrite to replace it, or choose another file.")
    if kind == "folder" and target.exists() and not target.is_dir():
        raise UserError(f"{option} {target} is a file, not a folder; choose another {option}.")
    if kind == "file" and target.exists():
        if not os.access(target, os.W_OK):
            raise UserError(f"{option} {target} is not writable; choose another {option}.")
        _probe(target.parent, option, target)  # it is replaced atomically: the folder must take a new file
        return target
    existing = _nearest_existing(target if kind == "folder" else target.parent)
    _probe(existing, option, target)
    return target


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to a temporary file beside ``path``, then renames it over ``path``.

    Raises:
        UserError: the file could not be written (a full disk, ...); an earlier ``path`` is left as it was.
    """
    target = Path(path).expanduser()
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException as err:  # also Ctrl+C mid-write: no temporary file is left behind
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise UserError(f"cannot write {target}: {err.strerror or err}.") from None
        raise
    return target


__all__ = ["check_output", "write_text_atomically"]
