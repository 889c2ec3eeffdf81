"""Never lose a run: a ``last.ckpt`` every few minutes and on a stop signal, and exact resumption.

:class:`FaultTolerance` is on every ``lightning-embed fit`` (the ``faults`` group of options). It

- writes ``last.ckpt`` atomically (a temporary file in the same folder, then ``os.replace``) every
  ``checkpoint_every`` optimizer steps or minutes, so a SIGKILL or a power cut loses at most that much;
- on SIGINT (Ctrl+C) or SIGTERM lets the optimizer step under way finish, writes ``last.ckpt``, records the
  run as interrupted and stops; the CLI then exits 130 (SIGINT) or 143 (SIGTERM) and prints the command
  that resumes. A second Ctrl+C quits at once, without a checkpoint;
- on Lightning's SLURM requeue signal (with ``SLURMEnvironment(auto_requeue=True)``) also writes
  ``last.ckpt`` at the end of the step under way, besides Lightning's own ``hpc_ckpt``;
- saves the random number generators (torch CPU and accelerators, Python, NumPy) in every checkpoint and
  restores them just before the first training step after a resume, so dropout masks and anything else
  random replay exactly. The batch order is restored by the data module (:mod:`lightning_embed.data.datamodule`).

Checkpoints are written at the end of a training step, the point Lightning's ``ModelCheckpoint`` uses
for step checkpoints, from which Lightning resumes the loops exactly.
"""

from __future__ import annotations

import os
import random
import re
import shlex
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_embed.errors import UserError

LAST_CHECKPOINT = "last.ckpt"
#: The CLI's exit status after a stop signal: 128 + the signal's number, as a shell reports it.
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(steps?|s|sec|min|m|h)?\s*$", re.IGNORECASE)
_SECONDS = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


def parse_interval(value: int | str | None) -> tuple[int | None, float | None]:
    """``checkpoint_every`` as (steps, seconds): ``500`` or ``"500steps"`` -> steps; ``"10min"``, ``"90s"``, ``"2h"``.

    Raises:
        UserError: anything else, or a value that is not positive.
    """
    if value is None:
        return None, None
    match = _INTERVAL.match(str(value)) if not isinstance(value, bool) else None
    amount = float(match.group(1)) if match else 0.0
    if not match or amount <= 0:
        raise UserError(f"checkpoint_every={value!r} is not an interval: give optimizer steps (500 or 500steps), "
                        "a time (90s, 10min, 2h), or null for no periodic checkpoint.")
    unit = (match.group(2) or "steps").lower()
    if unit.startswith("step"):
        if amount != int(amount):
            raise UserError(f"checkpoint_every={value!r}: a number of steps is a whole number.")
        return int(amount), None
    return None, amount * _SECONDS[unit]


@dataclass
class Stop:
    """How the last fit of this process was stopped by a signal (read by the CLI for its exit status)."""

    signal: str
    step: int
    checkpoint: Path | None
    resume_command: str | None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.signal]

    def message(self) -> str:
        """One line for the user: what happened and how to go on."""
        where = (f"checkpoint {self.checkpoint}" if self.checkpoint is not None
                 else "this run wrote no checkpoint to resume from")
        resume = f"; resume with: {self.resume_command}" if self.resume_command and self.checkpoint else ""
        return f"interrupted by {self.signal} after step {self.step}; {where}{resume}"


_last_stop: Stop | None = None


def last_stop() -> Stop | None:
    """The stop of the most recent fit in this process, or None if it was not stopped by a signal."""
    return _last_stop


def rng_states() -> dict[str, Any]:
    """The global random states, in a form that loads with ``torch.load(weights_only=True)``."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(), "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restores what :func:`rng_states` saved (generators it did not save are left alone)."""
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in states:
        kind, keys, position, has_gauss, cached = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def write_checkpoint_atomically(trainer: L.Trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` to a temporary file beside ``path``, synced, then renamed over it.

    A crash or a full disk while writing leaves the previous ``path`` as it was.

    Raises:
        UserError: the checkpoint could not be written (the previous one is kept).
    """
    tmp = path.with_name(f".{path.name}.tmp")  # the same name on every rank (sharded checkpoints are folders)
    problem = None
    try:
        trainer.save_checkpoint(tmp, weights_only=False)  # every rank takes part; rank zero (or shard owners) write
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            if tmp.is_dir():  # a sharded checkpoint: a folder cannot be renamed over a folder
                old = path.with_name(f".{path.name}.old")
                if path.exists():
                    os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
    except OSError as err:
        problem = f"cannot write checkpoint {path}: {err.strerror or err}; the previous one is kept. Free space " \
                  "or choose another trainer.default_root_dir, then resume."
    finally:
        if trainer.is_global_zero and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()
    if problem:
        raise UserError(problem)


class FaultTolerance(Callback):
    """Writes ``last.ckpt`` periodically and on SIGINT/SIGTERM/SLURM requeue; makes resumption exact.

    Args:
        checkpoint_every: write ``last.ckpt`` every this many optimizer steps (``500`` or ``500steps``) or
            this long (``90s``, ``10min``, ``2h``); a SIGKILL loses at most this much training. null: only
            on a stop signal.
        dirpath: folder of ``last.ckpt``; None: the ``ModelCheckpoint``'s folder, else
            ``trainer.default_root_dir/checkpoints``.
        on_signal: on SIGINT/SIGTERM, finish the step, write ``last.ckpt`` and stop (exit 130/143);
            False: Lightning's default handling (no checkpoint).
    """

    def __init__(self, checkpoint_every: int | str | None = "10min", dirpath: str | None = None,
                 on_signal: bool = True) -> None:
        super().__init__()
        self.every_steps, self.every_seconds = parse_interval(checkpoint_every)
        self.checkpoint_every = checkpoint_every
        self.dirpath = dirpath
        self.on_signal = on_signal
        #: The command that resumes this run, ``{ckpt}`` standing for the checkpoint; None: the one that reruns
        #: the config LightningCLI saved, else the ``trainer.fit`` call.
        self.resume_command: str | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        self._requested: str | None = None  # the signal that asked for a stop, or "requeue"
        self._handlers: dict[int, Any] = {}
        self._last_save_step = 0
        self._last_save_time = time.monotonic()
        self._saved: Path | None = None

    # -- where ---------------------------------------------------------------------------------------

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        """Where ``last.ckpt`` goes for this trainer."""
        folder = self.dirpath or getattr(trainer.checkpoint_callback, "dirpath", None)
        return Path(folder or Path(trainer.default_root_dir) / "checkpoints") / LAST_CHECKPOINT

    def resume_hint(self, checkpoint: Path) -> str:
        """The command (CLI) or call (API) that resumes from ``checkpoint``."""
        if self.resume_command:
            return self.resume_command.replace("{ckpt}", shlex.quote(str(checkpoint)))
        return f"trainer.fit(model, datamodule, ckpt_path={str(checkpoint)!r})"

    # -- random state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied just before the next training step: sanity checks and loader set-up in between must
        # not see (or advance) the saved state.
        self._rng_to_restore = state_dict.get("rng")

    # -- set-up ----------------------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        global _last_stop
        if stage != "fit":
            return
        _last_stop = None
        self._requested, self._saved, self._rng_to_restore = None, None, None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_save_step, self._last_save_time = trainer.global_step, time.monotonic()
        if self.resume_command is None and (config := _saved_config(trainer)) is not None:
            self.resume_command = f"lightning-embed fit --config {shlex.quote(str(config))} --ckpt_path {{ckpt}}"
        # Installed now: Lightning registers its own handlers at the start of the run and would replace these.
        if threading.current_thread() is not threading.main_thread():
            return
        if self.on_signal:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._handlers[signum] = signal.signal(signum, self._on_stop_signal)
        requeue = _slurm_requeue_signal(trainer)
        if requeue is not None:
            self._handlers[requeue] = signal.signal(requeue, self._on_requeue_signal)
        when = [f"every {self.every_steps} steps" if self.every_steps else
                f"every {self.every_seconds / 60:g} min" if self.every_seconds else "",
                "on Ctrl+C/SIGTERM" if self.on_signal else ""]
        if trainer.is_global_zero and any(when):
            path = self.checkpoint_path(trainer)
            # A plain print: a console would wrap the command the user is meant to copy.
            print(f"checkpoint: {path} {' and '.join(w for w in when if w)}; resume with: {self.resume_hint(path)}",
                  flush=True)

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._requested in EXIT_CODES and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl+C: quit now
        self._requested = name
        # os.write, not print: a handler that prints while the interrupted code prints raises "reentrant call".
        os.write(2, f"\n{name}: finishing the step under way, then writing {LAST_CHECKPOINT} "
                 "(press Ctrl+C again to quit without it)\n".encode())

    def _on_requeue_signal(self, signum: int, frame: Any) -> None:
        if self._requested is None:
            self._requested = "requeue"
        previous = self._handlers.get(signum)
        if callable(previous):
            previous(signum, frame)  # Lightning's: its hpc checkpoint and the requeue

    def _restore_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._handlers.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._handlers = {}

    # -- during training -------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_save_step:
            return  # gradient accumulation: no optimizer step yet
        due = self.every_steps is not None and step - self._last_save_step >= self.every_steps
        due = due or (self.every_seconds is not None and time.monotonic() - self._last_save_time >= self.every_seconds)
        stop = self._requested in EXIT_CODES
        if trainer.world_size > 1:  # every rank must take part in the save and stop together
            due = trainer.strategy.reduce_boolean_decision(due or self._requested is not None, all=False)
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        elif self._requested == "requeue":
            due = True
        if not (due or stop):
            return
        path = self.checkpoint_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_checkpoint_atomically(trainer, path)
        self._saved, self._last_save_step, self._last_save_time = path, step, time.monotonic()
        if self._requested == "requeue":
            self._requested = None
        if stop:
            name = self._requested if self._requested in EXIT_CODES else "SIGTERM"
            message = f"{name}: stopped after step {step}; resume from {path}"
            raise KeyboardInterrupt(message) if name == "SIGINT" else SIGTERMException(message)

    # -- the end -------------------------------------------------------------------------------------

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        global _last_stop
        self._restore_handlers()
        if isinstance(exception, KeyboardInterrupt):
            name = "SIGINT"
        elif isinstance(exception, SIGTERMException):
            name = "SIGTERM"
        else:
            return
        checkpoint = self._saved if self._saved is not None and self._saved.is_file() else None
        if checkpoint is None and trainer.ckpt_path:  # stopped before a new save: the run's own start point
            checkpoint = Path(trainer.ckpt_path)
        _last_stop = Stop(name, trainer.global_step, checkpoint,
                          self.resume_hint(checkpoint) if checkpoint is not None else None)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # No step left to finish: a Ctrl+C from here on (the final validation) stops at once.
        self._restore_handlers()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()


#: Settings that make a checkpoint another model: resuming it under different ones would train the checkpoint's.
RESUME_KEYS = ("backbone", "num_layers", "tuning", "pooling", "query_max_length", "document_max_length")


def check_resume(ckpt_path: str | os.PathLike, hparams: dict[str, Any]) -> None:
    """Checks that ``fit --ckpt_path`` names a checkpoint of ours that fits the configured model.

    A folder (a sharded DeepSpeed/FSDP checkpoint) is left to Lightning.

    Raises:
        UserError: a missing, truncated or foreign file, or a checkpoint whose backbone, layers, tuning,
            pooling or lengths differ from ``hparams`` (each difference listed).
    """
    from lightning_embed.models.encoder import read_checkpoint

    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        return
    if not path.exists():
        raise UserError(f"--ckpt_path {str(ckpt_path)!r} does not exist; give a checkpoint written by "
                        "lightning-embed fit (e.g. its checkpoints/last.ckpt).")
    saved = read_checkpoint(path)["hyper_parameters"]
    wanted = {**hparams, "tuning": _tuning_spec(hparams.get("tuning", "full"))}
    differences = [f"{key}: checkpoint {_plain(saved.get(key))!r}, config {_plain(wanted.get(key))!r}"
                   for key in RESUME_KEYS if _plain(saved.get(key)) != _plain(wanted.get(key))]
    if differences:
        raise UserError(f"--ckpt_path {path} was trained with other settings than the config ("
                        + "; ".join(differences) + "); resume with the run's own config (fit --config "
                        "<its config.yaml> --ckpt_path ...) or start a new run without --ckpt_path.")


def _tuning_spec(tuning: Any) -> Any:
    # The config names a strategy in any accepted form ("lora", {"name": "lora", "rank": 8}, a class path);
    # the checkpoint holds the strategy's full spec. Compare specs.
    from lightning_embed.strategy import build_strategy, strategy_spec

    try:
        return strategy_spec(build_strategy(tuning))
    except UserError:
        return tuning


def _plain(value: Any) -> Any:
    # Checkpoints hold tuples as lists and numbers as saved; compare their JSON forms.
    from lightning_embed.flops.records import jsonable

    return jsonable(dict(value) if hasattr(value, "items") else value)


def _saved_config(trainer: L.Trainer) -> Path | None:
    """The config file LightningCLI saved for this run (it holds every setting, overrides included)."""
    from lightning.pytorch.cli import SaveConfigCallback

    for callback in trainer.callbacks:
        if isinstance(callback, SaveConfigCallback) and trainer.log_dir is not None:
            path = Path(trainer.log_dir) / callback.config_filename
            return path if path.is_file() else None
    return None


def _slurm_requeue_signal(trainer: L.Trainer) -> int | None:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = getattr(trainer._accelerator_connector, "cluster_environment", None)
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and os.name != "nt":
        return environment.requeue_signal
    return None


__all__ = ["EXIT_CODES", "FaultTolerance", "LAST_CHECKPOINT", "RESUME_KEYS", "Stop", "check_resume", "last_stop",
           "parse_interval", "rng_states", "set_rng_states", "write_checkpoint_atomically"]
