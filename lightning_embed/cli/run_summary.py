"""The end-of-fit summary: where every output went and the commands to run next.

A fit leaves its checkpoints, a line in the runs file, logs and the resolved config in several folders;
:func:`fit_summary` names each (the run record by file and line number) and writes the ``export`` and
``evaluate`` commands for the checkpoint, ready to paste.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

# The local retrieval task shipped with the repository, suggested when the run has no local held-out file.
_EXAMPLE_TASK = Path("examples/tasks/stdlib-code-retrieval.jsonl")
_LOCAL_SUFFIXES = (".jsonl", ".json", ".tsv", ".csv")


def _shown(path: str | os.PathLike) -> str:
    """A path as short as it can be (relative to the working directory when under it), shell-quoted."""
    full = Path(path).expanduser().resolve()
    try:
        text = str(full.relative_to(Path.cwd().resolve()))
    except ValueError:
        text = str(full)
    return shlex.quote(text)


def record_line(runs_file: str | os.PathLike, run_id: str) -> int | None:
    """The 1-based line number of the last record of ``run_id`` in a runs file (None if it is not there)."""
    found = None
    if not run_id:
        return None
    try:
        with Path(runs_file).expanduser().open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if run_id in line:
                    try:
                        if json.loads(line).get("run_id") == run_id:
                            found = number
                    except (json.JSONDecodeError, AttributeError):
                        continue
    except OSError:
        return None
    return found


def checkpoints(trainer) -> list[tuple[str, Path]]:
    """The checkpoints this fit left: (role, path), best first, each file once."""
    from lightning_embed.training.faults import FaultTolerance

    found: list[tuple[str, Path]] = []
    for callback in trainer.checkpoint_callbacks:
        for role, attr in (("best", "best_model_path"), ("last", "last_model_path")):
            path = getattr(callback, attr, "")
            if path and Path(path).is_file():
                found.append((role, Path(path)))
    for callback in trainer.callbacks:
        if isinstance(callback, FaultTolerance):
            path = callback.checkpoint_path(trainer)
            if path.is_file():
                found.append(("last (resumable)", path))
    unique: dict[Path, str] = {}
    for role, path in found:
        unique.setdefault(path.resolve(), role)
    return [(role, path) for path, role in unique.items()]


def _config_file(trainer) -> Path | None:
    from lightning.pytorch.cli import SaveConfigCallback

    for callback in trainer.callbacks:
        if isinstance(callback, SaveConfigCallback):
            path = Path(_log_dir(trainer)) / callback.config_filename
            return path if path.is_file() else None
    return None


def _log_dir(trainer) -> str:
    """Where SaveConfigCallback wrote the config: ``Trainer.log_dir`` without its broadcast.

    ``Trainer.log_dir`` broadcasts from rank zero, and the summary runs on rank zero alone: under DDP the other
    ranks would never join, and the run would hang at its very end (docs/bugs.md).
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    if not trainer.loggers:
        return str(trainer.default_root_dir)
    first = trainer.loggers[0]
    return str(first.log_dir if isinstance(first, TensorBoardLogger) else first.save_dir)


def _evaluate_tasks(config: dict[str, Any] | None) -> str:
    data = (config or {}).get("data") or {}
    val = data.get("val")
    if isinstance(val, str) and val.endswith(_LOCAL_SUFFIXES) and Path(val).expanduser().is_file():
        return f"retrieval:{_shown(val)}"
    if _EXAMPLE_TASK.is_file():
        return f"retrieval:{_EXAMPLE_TASK}"
    return "retrieval:PAIRS.jsonl"


def fit_summary(trainer, config: dict[str, Any] | None = None) -> list[str]:
    """The lines of the end-of-fit summary.

    Args:
        trainer: the trainer after ``fit``.
        config: the resolved fit config (for the held-out file the evaluate command suggests).
    """
    from lightning_embed.flops.callback import FlopCallback

    lines = [f"fit {'stopped' if trainer.interrupted else 'finished'} after {trainer.global_step:,} steps"]
    ckpts = checkpoints(trainer)
    for role, path in ckpts:
        lines.append(f"  checkpoint ({role}): {_shown(path)}")
    if not ckpts:
        lines.append("  checkpoint: none (checkpointing is off)")
    for callback in trainer.callbacks:
        if isinstance(callback, FlopCallback) and callback.runs_file:
            number = record_line(callback.runs_file, callback.run_id or "")
            where = f" line {number}" if number else ""
            lines.append(f"  run record: {_shown(callback.runs_file)}{where} (run_id {callback.run_id})")
    kinds: dict[str, list[str]] = {}  # folder -> logger kinds writing there (TensorBoard and CSV share one)
    for logger in trainer.loggers:
        folder = getattr(logger, "log_dir", None)
        if folder and Path(folder).is_dir():
            kind = type(logger).__name__.removesuffix("Logger")
            kinds.setdefault(str(folder), []).append("CSV metrics.csv" if kind == "CSV" else kind)
    for folder, names in kinds.items():
        lines.append(f"  logs ({', '.join(names)}): {_shown(folder)}")
    if any("TensorBoard" in type(logger).__name__ for logger in trainer.loggers):
        lines.append(f"    view: tensorboard --logdir {_shown(trainer.default_root_dir)}")
    config_file = _config_file(trainer)
    if config_file is not None:
        lines.append(f"  resolved config: {_shown(config_file)}")
    if ckpts:
        checkpoint = ckpts[0][1]
        export_dir = checkpoint.parent.parent / "export"
        lines += ["next:",
                  f"  lightning-embed export {_shown(checkpoint)} -o {_shown(export_dir)}",
                  f"  lightning-embed evaluate {_shown(export_dir)} --tasks {_evaluate_tasks(config)} --baseline"]
    return lines


def print_fit_summary(trainer, config: dict[str, Any] | None = None) -> None:
    """Prints :func:`fit_summary` on rank zero."""
    if trainer.is_global_zero:
        print("\n".join(fit_summary(trainer, config)), flush=True)


__all__ = ["checkpoints", "fit_summary", "print_fit_summary", "record_line"]
