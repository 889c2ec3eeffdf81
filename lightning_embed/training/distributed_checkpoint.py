"""Distributed (sharded) checkpoint folders of FSDP2 / ModelParallelStrategy runs, read as one checkpoint.

Lightning's ``ModelParallelStrategy`` (``configs/fsdp2.yaml``) and ``FSDPStrategy`` with
``state_dict_type: sharded`` (``configs/fsdp.yaml``) save a checkpoint as a folder:
``torch.distributed.checkpoint`` shards (``__R_0.distcp``, one per process), their index ``.metadata``
(written last, once every shard is written) and Lightning's ``meta.pt`` (hyper-parameters, callback
states, loop counters).

:func:`read_distributed_checkpoint` consolidates such a folder in memory, in one process, into the dict a
single-file ``.ckpt`` holds, so ``export``, ``evaluate`` and :func:`lightning_embed.load` take the folder
as they take a file. Only the model weights are read (not the optimizer states, two thirds of a
checkpoint under Adam). Nothing in the folder is unpickled freely: the shard index and ``meta.pt`` go
through unpicklers that resolve only data classes (``weights_only``), as single-file checkpoints do.

:func:`consolidate_checkpoint` writes the consolidated checkpoint to one file (atomically), for tools
that want a file; :func:`remove_partial_checkpoints` deletes the shard sets a failed run left half
written.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from lightning_embed.errors import UserError

#: The index ``torch.distributed.checkpoint`` writes after every shard (its presence marks a complete set).
DCP_METADATA = ".metadata"
#: Lightning's file of everything but weights and optimizer states (rank zero writes it after the shards).
LIGHTNING_META = "meta.pt"
#: Where the weights are in the folder: ModelParallelStrategy's and FSDPStrategy's (sharded) names.
_WEIGHT_KEYS = ("state_dict", "model")


def is_distributed_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder of ``torch.distributed.checkpoint`` shards (complete or not)."""
    p = Path(path).expanduser()
    return p.is_dir() and ((p / DCP_METADATA).is_file() or any(p.glob("*.distcp")))


def is_complete(path: str | os.PathLike) -> bool:
    """Whether a distributed checkpoint folder holds a complete shard set (index and Lightning's meta.pt)."""
    p = Path(path).expanduser()
    return (p / DCP_METADATA).is_file() and (p / LIGHTNING_META).is_file()


class _IndexUnpickler(pickle.Unpickler):
    """Unpickles a shard index, resolving only the classes such an index is made of (never a callable that
    could run code): ``torch.distributed.checkpoint``'s metadata classes, torch dtypes/layouts/sizes and a
    few containers. ``torch.load(weights_only=True)`` cannot read it (protocol-4 frames)."""

    _CONTAINERS = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
                   ("builtins", "slice"), ("torch", "Size"),
                   ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
                   ("pathlib", "PureWindowsPath"), ("torch.serialization", "_get_layout")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._CONTAINERS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                        torch.memory_format)):
            return getattr(torch, name)
        if module.startswith("torch.distributed.checkpoint.") and not name.startswith("__"):
            found = super().find_class(module, name)
            if isinstance(found, type) and (dataclasses.is_dataclass(found) or issubclass(found, enum.Enum)):
                return found
        raise pickle.UnpicklingError(f"a distributed checkpoint index does not hold {module}.{name}")


def _safe_reader(folder: Path):
    """A ``FileSystemReader`` whose shard index loads with :class:`_IndexUnpickler`, not plain ``pickle``."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            with (Path(self.path) / DCP_METADATA).open("rb") as handle:
                index = _IndexUnpickler(handle).load()
            if getattr(index, "storage_meta", None) is None:
                index.storage_meta = StorageMeta()
            index.storage_meta.load_id = self.load_id
            return index

    return SafeReader(folder)


def read_distributed_checkpoint(path: str | os.PathLike, *, weights_only_state: bool = True) -> dict[str, Any]:
    """A distributed checkpoint folder consolidated in memory into a single-file checkpoint's dict.

    Args:
        path: the folder Lightning saved (e.g. ``checkpoints/step=100.ckpt/``).
        weights_only_state: read the model weights (``state_dict``) only, not the optimizer states.

    Returns:
        ``{"state_dict": {name: tensor}, "hyper_parameters": ..., "callbacks": ..., "global_step": ...}``
        (plus ``optimizer_N`` when ``weights_only_state`` is False), full unsharded CPU tensors.

    Raises:
        UserError: not a distributed checkpoint, a partial shard set (a run died while writing it), or
            files that do not load safely.
    """
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    folder = Path(path).expanduser()
    if not is_distributed_checkpoint(folder):
        raise UserError(f"{str(path)!r} is a folder but not a distributed checkpoint (no {DCP_METADATA} and no "
                        "*.distcp shards).")
    if not is_complete(folder):
        missing = DCP_METADATA if not (folder / DCP_METADATA).is_file() else LIGHTNING_META
        raise UserError(f"{path} is a partial checkpoint (no {missing}: the run stopped while writing it); use "
                        "an earlier checkpoint of the run.")
    state: dict[str, Any] = {}
    reader = _safe_reader(folder)
    try:
        # The index first, alone: torch would log a refused one with a traceback on the root logger.
        reader.read_metadata()
        _load_state_dict(state, storage_reader=reader, no_dist=True,
                         planner=_EmptyStateDictLoadPlanner(keys=set(_WEIGHT_KEYS) if weights_only_state else None))
        meta = torch.load(folder / LIGHTNING_META, map_location="cpu", weights_only=True)
    except (CheckpointException, pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        failures = getattr(err, "failures", None)  # CheckpointException: {rank: (exception, traceback)}
        cause = next(iter(failures.values()))[0] if failures else err
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise UserError(f"{path}: not a distributed checkpoint that loads safely ({first}).") from None
    if not isinstance(meta, dict):
        raise UserError(f"{folder / LIGHTNING_META} holds no checkpoint fields; is it a Lightning checkpoint?")
    state.update(meta)
    if "state_dict" not in state and "model" in state:
        state["state_dict"] = state.pop("model")  # FSDPStrategy's name for the weights
    return state


def consolidate_checkpoint(path: str | os.PathLike, output: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Writes a distributed checkpoint folder as one ``.ckpt`` file (weights and run state, no optimizer).

    ``export``, ``evaluate`` and ``load`` read the folder directly; this is for other tools.

    Args:
        path: the distributed checkpoint folder.
        output: the file to write (atomically: a temporary file beside it, then renamed).
        overwrite: replace an existing file.

    Raises:
        UserError: see :func:`read_distributed_checkpoint`; an existing ``output`` without ``overwrite``.
    """
    target = Path(output).expanduser()
    if target.exists() and (target.is_dir() or not overwrite):
        raise UserError(f"{target} exists; choose another output file or pass overwrite=True.")
    if not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
        raise UserError(f"cannot write {target}: folder {target.parent} does not exist or is not writable.")
    checkpoint = read_distributed_checkpoint(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(checkpoint, handle)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def remove_partial_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Deletes the incomplete distributed checkpoint folders directly under ``folder``; returns them.

    A process that dies while the ranks write a checkpoint leaves shards without the index (or without
    Lightning's ``meta.pt``): such a folder neither resumes nor exports, and would be mistaken for the
    run's latest checkpoint.
    """
    root = Path(folder).expanduser()
    removed = []
    if not root.is_dir():
        return removed
    for child in sorted(root.iterdir()):
        if is_distributed_checkpoint(child) and not is_complete(child):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


__all__ = ["consolidate_checkpoint", "is_complete", "is_distributed_checkpoint", "read_distributed_checkpoint",
           "remove_partial_checkpoints"]
