"""MTEBCallback: scores local MTEB tasks at the end of validation and logs them like any other metric.

Logged as ``mteb/<task>`` (the main score: nDCG@10 for retrieval, Spearman for STS, accuracy for
classification, V-measure for clustering), so ``ModelCheckpoint(monitor="mteb/<task>", mode="max")`` keeps
the checkpoints that score best on the task you care about::

    trainer:
      callbacks:
        - class_path: lightning_embed.evaluation.mteb_callback.MTEBCallback
          init_args: {tasks: ["code=retrieval:examples/tasks/stdlib-code-retrieval.jsonl"]}
        - class_path: lightning.pytorch.callbacks.ModelCheckpoint
          init_args: {monitor: mteb/code, mode: max}
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from lightning_embed.errors import UserError
from lightning_embed.evaluation.mteb_tasks import LOCAL_KINDS, LocalTask, is_local_spec, parse_local_task


class MTEBCallback(Callback):
    """Runs local MTEB tasks on the model being trained, at the end of validation.

    The task files are read and checked when the callback is created, so a bad file fails before
    training starts. Scores are computed on rank zero and broadcast (every rank computes under sharded
    strategies such as FSDP, whose forward needs all ranks). The random-number state is restored
    afterwards: mteb seeds the global generators, which must not change the training run.

    Args:
        tasks: local tasks, ``KIND:PATH`` or ``NAME=KIND:PATH`` with KIND ``sts``, ``retrieval``,
            ``classification`` or ``clustering`` (formats: :mod:`lightning_embed.evaluation.mteb_tasks`).
        every_n_epochs: run at the validations of every n-th epoch (1: every validation).
        batch_size: texts per forward pass.
        prefix: logged names are ``prefix + task name``.

    Raises:
        UserError: a spec that is not a local task, or a bad task file (file, line and field named).
    """

    def __init__(self, tasks: list[str], every_n_epochs: int = 1, batch_size: int = 32,
                 prefix: str = "mteb/") -> None:
        super().__init__()
        if isinstance(tasks, str):
            tasks = tasks.replace(",", " ").split()
        if not tasks:
            raise UserError("MTEBCallback needs at least one task, e.g. tasks: [retrieval:my_task.jsonl].")
        if every_n_epochs < 1:
            raise UserError(f"MTEBCallback every_n_epochs={every_n_epochs} must be at least 1.")
        if batch_size < 1:
            raise UserError(f"MTEBCallback batch_size={batch_size} must be at least 1.")
        bad = [t for t in tasks if not is_local_spec(t)]
        if bad:
            kinds = ", ".join(LOCAL_KINDS)
            raise UserError(f"MTEBCallback runs local tasks only (KIND:PATH with KIND one of {kinds}), "
                            f"not {bad[0]!r}; standard MTEB tasks belong to `lightning-embed evaluate`.")
        self.tasks: list[LocalTask] = [parse_local_task(t) for t in tasks]
        names = [t.name for t in self.tasks]
        if len(set(names)) < len(names):
            raise UserError("MTEBCallback: two tasks share a name; name them apart with NAME=KIND:PATH.")
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.prefix = prefix
        #: The latest scores, by task name.
        self.last_scores: dict[str, float] = {}

    def _due(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        sharded = any(k in type(trainer.strategy).__name__ for k in ("FSDP", "ModelParallel", "DeepSpeed"))
        scores: dict[str, float] = {}
        if trainer.is_global_zero or sharded:
            scores = self.score(pl_module)
        if trainer.world_size > 1 and not sharded:
            scores = trainer.strategy.broadcast(scores, src=0)
        self.last_scores = dict(scores)
        for name, value in scores.items():
            pl_module.log(self.prefix + name, value, batch_size=1, sync_dist=False)

    def score(self, pl_module: L.LightningModule) -> dict[str, float]:
        """The tasks' main scores for the module as it is now (no logging)."""
        from lightning_embed.evaluation.evaluate import run_mteb
        from lightning_embed.models.encoder import Encoder

        state = _rng_state()
        try:
            encoder = Encoder.from_module(pl_module, name="training")
            return run_mteb(encoder, self.tasks, batch_size=self.batch_size, show_progress=False)
        finally:
            _set_rng_state(state)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["MTEBCallback"]
