"""FlopCallback: counts the FLOP of every training step, stops at a budget, writes a run record.

Hook order matters for the budget: Lightning calls the callback's ``setup`` before the module's
``configure_optimizers`` (which reads ``trainer.estimated_stepping_batches`` for the learning-rate
schedule), so the step count the budget buys is set in ``setup`` and the schedule is built for it.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from lightning_embed.data.fingerprints import data_fingerprints
from lightning_embed.errors import UserError
from lightning_embed.flops.budget import (
    DEFAULT_ESTIMATE_BATCHES,
    BudgetReport,
    batch_masks,
    flop_model_for,
    fresh_train_loader,
    parse_budget,
    plan_budget,
    sample_loader,
    training_flags,
)
from lightning_embed.flops.model import ACCOUNTINGS, Accounting, FlopModel, TokenStats
from lightning_embed.flops.records import (
    RunRecord,
    append_run,
    check_runs_file,
    installed_versions,
    jsonable,
)
from lightning_embed.training.distributed_checkpoint import remove_partial_checkpoints
from lightning_embed.training.rank_failures import (
    error_line,
    first_failure,
    leave_note,
    sigterm_held,
)

_STATE_VERSION = 1
#: Order of the per-batch counters that are all-reduced across ranks.
_COUNTERS = ("rows", "real_tokens", "real_squares", "padded_tokens", "padded_squares", "examples")


class FlopCounter:
    """Running totals (over all ranks) kept by the callback and saved in checkpoints."""

    def __init__(self) -> None:
        self.examples = 0
        self.tokens = 0
        self.padded_tokens = 0
        self.flops_model = 0.0
        self.flops_hardware = 0.0
        self.train_time_s = 0.0
        self.duration_s = 0.0

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in vars(self):
            if key in state:
                setattr(self, key, type(getattr(self, key))(state[key]))


class FlopCallback(Callback):
    """Counts training FLOP exactly, optionally spends a FLOP budget, and records every fit.

    Every ``log_every_n_steps`` optimizer steps it logs model and hardware FLOP (per step, averaged over
    the interval, and running totals), real and padded tokens, examples, throughput (tokens/s, examples/s)
    and, where Lightning knows the device's peak (``get_available_flops``), MFU. Counts cover every rank:
    per-batch token statistics are all-reduced, so ranks with different padding are counted exactly. They
    stay on the device between log steps (the count is linear in them), so counting adds no host sync
    per step; with a budget the total is read every step, to stop in time.

    The module must satisfy :class:`~lightning_embed.flops.contract.CostedModule`: the callback probes its
    ``backbone`` and, after each training step, costs the positions its ``encoding`` path reports it computed.

    With ``max_flops``, before training the callback measures the cost of a step on a sample of training
    batches and sets ``max_steps`` to the steps the budget buys (``max_epochs`` becomes unlimited: the
    budget decides the length, and the learning-rate schedule is built for exactly those steps). Training
    then stops after ``max_steps`` steps or as soon as the counted model FLOP reach the budget, whichever
    comes first, so it never overshoots by more than one step; a final validation runs at the stop.

    At the end of every fit, and when a fit fails or is interrupted, rank zero appends one
    :class:`~lightning_embed.flops.records.RunRecord` line to ``runs_file``.

    Args:
        max_flops: FLOP budget of the run (model FLOP in ``accounting``), e.g. ``1.5e15``; None: no limit.
        accounting: ``exact`` (derived from the module that trains) or ``paper`` (the study's 6N,
            2N + 4N_t, 4N + 2N_t per token, to replay published budgets). Hardware FLOP is always exact.
        runs_file: JSON-lines file the run record is appended to; None: no record.
        log_every_n_steps: log every this many optimizer steps; None: the trainer's ``log_every_n_steps``.
        estimate_batches: training batches collated to estimate the cost of a step for ``max_flops``.
        window_size: log points the throughput and MFU are computed over (2: the last logging interval).
        config: the run's configuration to store in the record (the CLI passes its parsed config);
            None: the model's and data module's hyper-parameters and the trainer's limits.
        initial_validation: before the first step of a fresh fit, validate once and record the untrained
            model's held-out loss (``initial_val_loss``, where an anchored scaling law starts); costs one
            pass over the validation set, skipped when there is none.

    Raises:
        UserError: (before training) a non-numeric or non-positive budget, one that does not buy one step,
            an unknown accounting, or a runs file that cannot be appended to.
    """

    def __init__(
        self,
        max_flops: float | str | None = None,
        accounting: Accounting = "exact",
        runs_file: str | None = "runs.jsonl",
        log_every_n_steps: int | None = None,
        estimate_batches: int = DEFAULT_ESTIMATE_BATCHES,
        window_size: int = 2,
        config: dict[str, Any] | None = None,
        initial_validation: bool = True,
    ) -> None:
        super().__init__()
        self.max_flops = parse_budget(max_flops)
        if accounting not in ACCOUNTINGS:
            raise UserError(f"accounting must be one of {', '.join(ACCOUNTINGS)}, not {accounting!r}.")
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise UserError(f"log_every_n_steps={log_every_n_steps} must be at least 1.")
        if estimate_batches < 1 or window_size < 2:
            raise UserError("estimate_batches must be at least 1 and window_size at least 2.")
        self.accounting: Accounting = accounting
        self.runs_file = runs_file
        self.log_every_n_steps = log_every_n_steps
        self.estimate_batches = estimate_batches
        self.window_size = window_size
        self.config = config
        self.initial_validation = initial_validation
        self._initial: tuple[float, int] | None = None
        self.counter = FlopCounter()
        self.flop_model: FlopModel | None = None
        self.plan: BudgetReport | None = None
        self.planned_steps: int | None = None
        self.run_id: str | None = None
        self.last_metrics: dict[str, float] = {}
        self._flags: dict[str, bool] = {}
        self._trainer: L.Trainer | None = None
        self._val_metrics: dict[str, float] = {}
        self._metrics_step: int | None = None
        self._last_step = 0
        self._fit_started = False
        self._written = False
        self._data: dict[str, Any] = {}  # data sources' fingerprints (lightning_embed.data.fingerprints)
        self._setup_time = 0.0
        self._started_at = time.time()
        self._duration_before = 0.0
        self._train_t0: float | None = None
        self._val_t0: float | None = None
        self._throughput: Throughput | None = None
        self._pending: torch.Tensor | None = None  # device counters not yet on the host
        self._host_pending = [0, 0, 0, 0]  # rows, padded tokens, padded squares, examples (one process)
        self._interval = [0.0, 0.0]  # model, hardware FLOP since the last log
        self._interval_steps = 0
        #: Training examples per named mixture source (all ranks): mixture batches carry their global counts.
        self.source_examples: dict[str, int] = {}

    # -- setup: FLOP model, runs file, budget ---------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        # A fresh count per fit; a resumed fit gets its count back in load_state_dict, which Lightning
        # calls after setup.
        self.counter = FlopCounter()
        self.run_id, self.planned_steps, self.plan = None, None, None
        self._val_metrics, self._metrics_step = {}, None
        self._initial = None
        self._setup_time, self._duration_before = time.monotonic(), 0.0
        self._started_at = time.time()  # wall clock: other ranks' failure notes are stamped with it
        self._fit_started = self._written = False
        self._pending, self._host_pending = None, [0, 0, 0, 0]
        self._interval, self._interval_steps = [0.0, 0.0], 0
        self.source_examples = {}
        self.flop_model = flop_model_for(pl_module, self.accounting)
        self._flags = training_flags(pl_module)
        problem, self._data = None, {}
        if self.runs_file is not None and trainer.is_global_zero:
            try:
                check_runs_file(self.runs_file)
                # Now, not when the record is written: the files may change during a long fit.
                self._data = data_fingerprints(getattr(trainer, "datamodule", None))
            except UserError as err:
                problem = str(err)
        # Every rank raises, not just the one that found the problem (the others would hang).
        problem = trainer.strategy.broadcast(problem, src=0)
        if problem:
            raise UserError(problem)
        if self.max_flops is not None:
            self._apply_budget(trainer, pl_module)

    def _apply_budget(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        plan, problem = None, None
        if trainer.is_global_zero:
            try:
                sample = sample_loader(fresh_train_loader(pl_module, trainer=trainer), self.estimate_batches)
                plan = plan_budget(self.flop_model, self.max_flops, sample, world_size=trainer.world_size,
                                   accumulate_grad_batches=trainer.accumulate_grad_batches, **self._flags)
            except UserError as err:
                problem = str(err)
        # Rank zero's plan for everyone: every rank must build the same schedule and stop together.
        plan, problem = trainer.strategy.broadcast((plan, problem), src=0)
        if problem:
            raise UserError(problem)
        self.plan = plan
        self.planned_steps = plan.steps
        self._set_max_steps(trainer, self.planned_steps)
        epochs = f", {plan.epochs:.2f} passes over the data" if plan.epochs is not None else ""
        rank_zero_info(
            f"FlopCallback: a budget of {self.max_flops:.4g} FLOP ({self.accounting}) buys {plan.steps:,} steps of "
            f"{plan.examples_per_step:g} examples ({plan.examples:,} examples{epochs}); one step costs "
            f"{plan.per_step.model:.4g} model FLOP (measured on {plan.sampled_batches} batches).")

    @staticmethod
    def _set_max_steps(trainer: L.Trainer, steps: int) -> None:
        # The budget alone decides the length: max_epochs unlimited, so estimated_stepping_batches (and
        # the learning-rate schedule built from it) is exactly these steps.
        trainer.fit_loop.epoch_loop.max_steps = steps
        trainer.fit_loop.max_epochs = -1

    # -- counting -------------------------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_started = True
        if self.run_id is None:
            self.run_id = uuid.uuid4().hex
        dtype = _compute_dtype(trainer)
        available = get_available_flops(trainer.strategy.root_device, dtype) if dtype is not None else None
        self._throughput = Throughput(available_flops=available, world_size=trainer.world_size,
                                      window_size=self.window_size)
        self._last_step = trainer.global_step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.initial_validation and self._initial is None and trainer.global_step == 0:
            from lightning_embed.training.initial_validation import initial_val_loss

            self._initial = initial_val_loss(trainer, pl_module)  # before the clock: not training time
        self._train_t0 = time.perf_counter() - self.counter.train_time_s

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_t0 is not None and self._train_t0 is not None:
            self._train_t0 += time.perf_counter() - self._val_t0  # validation time is not training time
        self._val_t0 = None
        if trainer.sanity_checking:
            return
        self._val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                             if k.startswith("val/") and torch.as_tensor(v).numel() == 1}
        self._metrics_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        masks, examples = batch_masks(batch)
        for name, count in (getattr(batch, "source_counts", None) or {}).items():
            self.source_examples[name] = self.source_examples.get(name, 0) + int(count)
        # What the module's encoding path ran for this batch (split or packed rows); None: the padded masks.
        encoding = getattr(pl_module, "encoding", None)
        computed = getattr(encoding, "computed", None)
        self._accumulate(trainer, masks, examples, computed if computed and len(computed) == len(masks) else None)
        if trainer.global_step == self._last_step:
            return  # gradient accumulation: the optimizer step is not done yet
        self._interval_steps += trainer.global_step - self._last_step
        self._last_step = trainer.global_step
        every = self.log_every_n_steps or trainer.log_every_n_steps
        log_now = trainer.global_step % every == 0
        if self.max_flops is None and not log_now:
            return  # the counts stay on the device: no host sync between log steps
        self._flush()
        if self.max_flops is not None and (self.counter.flops_model >= self.max_flops
                                           or (self.planned_steps and trainer.global_step >= self.planned_steps)):
            # Stopping through should_stop (not only max_steps) makes Lightning validate the final model.
            trainer.should_stop = True
        if log_now or trainer.should_stop:
            self._log(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush()

    def tokens_seen(self) -> int:
        """Real (non-padding) tokens trained on so far, all ranks (one small host copy)."""
        self._flush()
        return int(self.counter.tokens)

    def _accumulate(self, trainer: L.Trainer, masks: list[torch.Tensor], examples: int,
                    computed: list | None = None) -> None:
        """Adds a batch's token stats (all ranks) to the pending device counters, without a host sync.

        The FLOP count is linear in (rows, sum of L, sum of L^2), so summing stats and costing them at the
        next flush is exact. ``computed`` is the module's (positions, squared widths) per mask (None where
        a mask is encoded as padded): micro-batches or packed rows compute fewer than the masks' shapes.
        """
        lengths = torch.cat([m.sum(-1, dtype=torch.int64) for m in masks])
        vector = torch.stack([lengths.sum(), (lengths * lengths).sum()])
        padded = [c if c is not None else (m.numel(), m.shape[0] * m.shape[1] ** 2)
                  for m, c in zip(masks, computed or [None] * len(masks))]
        fixed = [sum(m.shape[0] for m in masks), sum(p[0] for p in padded), sum(p[1] for p in padded), examples]
        if trainer.world_size > 1:
            # Ranks pad to different widths: every counter goes through the all-reduce.
            host = torch.tensor(fixed, dtype=torch.int64)
            if vector.device.type == "cuda":
                host = host.pin_memory()
            vector = torch.cat([vector, host.to(vector.device, non_blocking=True)])
            vector = trainer.strategy.reduce(vector, reduce_op="sum")
        else:
            self._host_pending = [a + b for a, b in zip(self._host_pending, fixed)]
        self._pending = vector if self._pending is None else self._pending + vector

    def _flush(self) -> None:
        """Moves the pending counts to the host (one small copy) and costs them."""
        if self._pending is None:
            return
        values = self._pending.tolist()
        self._pending = None
        if len(values) == 2:
            (real, squares), (rows, padded, padded_sq, examples) = values, self._host_pending
        else:
            real, squares, rows, padded, padded_sq, examples = values
        self._host_pending = [0, 0, 0, 0]
        flops = self.flop_model.count(TokenStats(rows, real, squares, padded, padded_sq), **self._flags)
        c = self.counter
        c.examples += int(examples)
        c.tokens += int(real)
        c.padded_tokens += int(padded)
        c.flops_model += flops.model
        c.flops_hardware += flops.hardware
        self._interval[0] += flops.model
        self._interval[1] += flops.hardware
        if self._train_t0 is not None:
            c.train_time_s = time.perf_counter() - self._train_t0

    def _log(self, trainer: L.Trainer) -> None:
        c = self.counter
        steps = max(1, self._interval_steps)
        (model, hardware), self._interval, self._interval_steps = self._interval, [0.0, 0.0], 0
        world = trainer.world_size
        self._throughput.update(time=c.train_time_s, batches=trainer.global_step, samples=c.examples / world,
                                lengths=c.tokens / world, flops=hardware / world)
        metrics = {
            "flops/step_model": model / steps, "flops/step_hardware": hardware / steps,
            "flops/total_model": c.flops_model, "flops/total_hardware": c.flops_hardware,
            "tokens/real": float(c.tokens), "tokens/padded": float(c.padded_tokens), "examples": float(c.examples),
            **{f"train/source_examples/{name}": float(n) for name, n in self.source_examples.items()},
        }
        if c.padded_tokens:
            # How much of the computed positions are real tokens (padding is wasted work).
            metrics["tokens/real_share"] = c.tokens / c.padded_tokens
        if self.max_flops is not None:
            metrics["flops/budget_used"] = c.flops_model / self.max_flops
        rates = self._throughput.compute()
        prefix = "" if world > 1 else "device/"  # Throughput reports global rates only when distributed
        if f"{prefix}samples_per_sec" in rates:
            metrics["throughput/examples_per_sec"] = rates[f"{prefix}samples_per_sec"]
        if f"{prefix}items_per_sec" in rates:
            tokens_per_sec = rates[f"{prefix}items_per_sec"]
            metrics["throughput/tokens_per_sec"] = tokens_per_sec
            if c.tokens:
                metrics["throughput/padded_tokens_per_sec"] = tokens_per_sec * c.padded_tokens / c.tokens
        if "device/flops_per_sec" in rates:
            metrics["throughput/hardware_flops_per_sec"] = rates["device/flops_per_sec"] * world
        if "device/mfu" in rates:
            metrics["throughput/mfu"] = rates["device/mfu"]
        self.last_metrics = metrics
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    # -- checkpoints ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        self._flush()
        duration = self._duration_before + (time.monotonic() - self._setup_time if self._setup_time else 0.0)
        return {"version": _STATE_VERSION, "counter": {**self.counter.state_dict(), "duration_s": duration},
                "accounting": self.accounting, "max_flops": self.max_flops, "planned_steps": self.planned_steps,
                "run_id": self.run_id, "val_metrics": dict(self._val_metrics), "metrics_step": self._metrics_step,
                "initial": list(self._initial) if self._initial else None,
                "source_examples": dict(self.source_examples), "hardware": self._hardware()}

    def _hardware(self) -> str | None:
        """The training machine in one line (for the model card of an export), computed once."""
        if getattr(self, "_hardware_line", None) is None:
            from lightning_embed.training.precision import describe_hardware

            try:
                self._hardware_line = describe_hardware()
            except Exception:  # noqa: BLE001 - a description only; never fail a checkpoint for it
                self._hardware_line = ""
        return self._hardware_line or None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("accounting", self.accounting) != self.accounting:
            raise UserError(f"the checkpoint counted FLOP with accounting={state_dict['accounting']!r}; resume "
                            f"with the same accounting, not {self.accounting!r}, or the total would mix the two.")
        self.counter.load_state_dict(state_dict.get("counter", {}))
        self._duration_before = self.counter.duration_s
        self._setup_time = time.monotonic()
        self.run_id = state_dict.get("run_id") or self.run_id
        self._val_metrics = dict(state_dict.get("val_metrics") or {})
        self._metrics_step = state_dict.get("metrics_step")
        self.source_examples = {str(k): int(v) for k, v in (state_dict.get("source_examples") or {}).items()}
        initial = state_dict.get("initial")
        self._initial = (float(initial[0]), int(initial[1])) if initial else None
        planned = state_dict.get("planned_steps")
        if planned and state_dict.get("max_flops") == self.max_flops and self.max_flops is not None:
            # Same budget: keep the original plan (so the schedule is the one the run started with).
            self.planned_steps = int(planned)
            if self._trainer is not None:
                self._set_max_steps(self._trainer, self.planned_steps)

    # -- records --------------------------------------------------------------------------------------

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "completed", None)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not self._fit_started:
            return  # nothing trained (a setup error): no record
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        status = "interrupted" if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) else "failed"
        error = error_line(exception)
        with sigterm_held():
            try:
                if self.runs_file is not None and trainer.world_size > 1:
                    # Rank zero alone writes the record: the other ranks tell it their error, and it records
                    # the first failure of the run rather than the broken collective it saw.
                    if not trainer.is_global_zero:
                        leave_note(self.runs_file, trainer.global_rank, status, error)
                    else:
                        status, error = first_failure(self.runs_file, self._started_at,
                                                      (time.time(), status, error))
                if trainer.is_global_zero:
                    for callback in trainer.checkpoint_callbacks:
                        if getattr(callback, "dirpath", None):
                            remove_partial_checkpoints(callback.dirpath)  # a save the failure cut short
                self._write(trainer, pl_module, status, error)
            except Exception as err:  # never mask the original exception
                rank_zero_warn(f"FlopCallback could not write the run record: {err}")

    def make_record(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str,
                    error: str | None = None) -> RunRecord:
        """The run record of the fit so far."""
        self._flush()
        c = self.counter
        hparams = jsonable(dict(getattr(pl_module, "hparams", {}) or {}))
        tuning = getattr(pl_module, "tuning", None)
        params = self.flop_model.params
        metrics = {k.removeprefix("val/"): v for k, v in self._val_metrics.items() if k != "val/loss"}
        info = getattr(pl_module, "backbone_info", None)
        steps = trainer.global_step
        seed = os.environ.get("PL_GLOBAL_SEED")
        return RunRecord(
            backbone=str(hparams.get("backbone") or _name_or_path(pl_module)),
            tuning=_tuning_name(tuning),
            status=status,  # type: ignore[arg-type]
            tuning_args=jsonable(tuning.hparams()) if hasattr(tuning, "hparams") else {},
            total_params=params.total, non_embedding_params=params.non_embedding, trainable_params=params.trainable,
            num_layers=hparams.get("num_layers"), num_blocks=getattr(info, "num_blocks", None),
            steps=steps, examples=int(c.examples), batch_size=int(round(c.examples / steps)) if steps else None,
            tokens=int(c.tokens), padded_tokens=int(c.padded_tokens), flops_model=c.flops_model,
            flops_hardware=c.flops_hardware, accounting=self.accounting, budget=self.max_flops,
            val_loss=self._val_metrics.get("val/loss"), metrics=metrics,
            initial_val_loss=self._initial[0] if self._initial else None,
            val_examples=self._initial[1] if self._initial else None, metrics_step=self._metrics_step,
            seed=int(seed) if seed and seed.lstrip("-").isdigit() else None, world_size=trainer.world_size,
            duration_s=self._duration_before + time.monotonic() - self._setup_time, train_time_s=c.train_time_s,
            versions=installed_versions(("torch", "lightning", "transformers", "lightning-embed"), "unknown"),
            hparams=hparams, config=self._config(trainer, hparams),
            data=self._data, source_examples=dict(self.source_examples), error=error,
            run_id=self.run_id or "",
        )

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str, error: str | None) -> None:
        if self._written or self.runs_file is None or not trainer.is_global_zero or self.flop_model is None:
            return
        self._written = True
        append_run(self.runs_file, self.make_record(trainer, pl_module, status, error))

    def _config(self, trainer: L.Trainer, hparams: dict[str, Any]) -> dict[str, Any]:
        if self.config is not None:
            return jsonable(self.config)
        data = getattr(trainer, "datamodule", None)
        return {
            "model": hparams,
            "data": jsonable(dict(getattr(data, "hparams", {}) or {})) if data is not None else {},
            "trainer": {"max_steps": trainer.max_steps, "max_epochs": trainer.max_epochs,
                        "accumulate_grad_batches": trainer.accumulate_grad_batches,
                        "world_size": trainer.world_size, "precision": str(trainer.precision)},
            "flops": {"max_flops": self.max_flops, "accounting": self.accounting},
        }


def _compute_dtype(trainer: L.Trainer) -> torch.dtype | None:
    try:
        from lightning.pytorch.callbacks.throughput_monitor import (
            _plugin_to_compute_dtype,
        )

        return _plugin_to_compute_dtype(trainer.precision_plugin)
    except Exception:  # an unknown precision plugin: no MFU, everything else still works
        return None


def _tuning_name(tuning: Any) -> str:
    if tuning is None:
        return "full"
    return str(getattr(tuning, "name", "") or type(tuning).__name__)


def _name_or_path(pl_module: L.LightningModule) -> str:
    config = getattr(getattr(pl_module, "backbone", None), "config", None)
    return str(getattr(config, "_name_or_path", "") or type(getattr(pl_module, "backbone", pl_module)).__name__)



__all__ = ["FlopCallback", "FlopCounter"]
