"""Lightning progress for logs: :class:`PlainProgressBar` prints lines where a live bar would show nothing.

On a terminal, ``fit`` shows rich's live bar; in a file or a pipe a live bar leaves only its last frame, so
:func:`default_progress_bar` picks plain lines every ``LIGHTNING_EMBED_PROGRESS_EVERY`` seconds (default 20).
"""

from __future__ import annotations

import logging
import time

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.callbacks.progress import ProgressBar

from lightning_embed.cli.terminal import duration, interactive, number, progress_every


class PlainProgressBar(ProgressBar):
    """Lightning progress as plain lines (for output that is not a terminal).

    During ``fit``: a line after the first optimizer step, then one every ``every`` seconds and one at the end
    of each epoch, with step/total, epoch, training loss, tokens/s (from the FLOP callback), elapsed time and
    ETA; a line with the held-out metrics after each validation. ``validate``/``test``/``predict`` print
    batch counts the same way.

    Args:
        every: seconds between lines; None: ``LIGHTNING_EMBED_PROGRESS_EVERY`` or 20.
    """

    def __init__(self, every: float | None = None) -> None:
        super().__init__()
        self.every = progress_every() if every is None else float(every)
        self._enabled = True
        self._t0 = 0.0
        self._last = None
        self._last_step = -1
        self._eval_t0 = 0.0
        self._eval_last = 0.0
        self._start_step = 0
        self._start_tokens = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def _write(self, text: str) -> None:
        print(text, flush=True)

    # -- training ------------------------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = time.monotonic()
        self._last = None
        self._start_step = trainer.global_step
        self._start_tokens = self._tokens(trainer) or 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.is_enabled:
            return
        now = time.monotonic()
        if self._last is None or now - self._last >= self.every:
            self._train_line(trainer, pl_module, now)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.is_enabled and self._last is not None and trainer.global_step != self._last_step:
            self._train_line(trainer, pl_module, time.monotonic())

    def _train_line(self, trainer, pl_module, now: float) -> None:
        self._last, self._last_step = now, trainer.global_step
        step, total = trainer.global_step, _total_steps(trainer)
        elapsed = now - self._t0
        done = step - self._start_step
        parts = [f"step {step:,}" + (f"/{total:,}" if total else "")]
        if trainer.max_epochs and trainer.max_epochs > 0:
            parts.append(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")
        metrics = self.get_metrics(trainer, pl_module)
        loss = next((metrics[k] for k in ("train/loss", "loss", "train_loss") if k in metrics), None)
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        tokens = self._tokens(trainer)
        if tokens is not None and elapsed > 0:
            parts.append(f"{number((tokens - self._start_tokens) / elapsed)} tokens/s")
        parts.append(f"elapsed {duration(elapsed)}")
        if total and done > 0 and step < total:
            parts.append(f"ETA {duration(elapsed / done * (total - step))}")
        self._write(" · ".join(parts))

    @staticmethod
    def _tokens(trainer) -> int | None:
        from lightning_embed.flops.callback import FlopCallback

        for callback in trainer.callbacks:
            if isinstance(callback, FlopCallback) and callback.flop_model is not None:
                return callback.tokens_seen()
        return None

    # -- evaluation ----------------------------------------------------------------------------------

    def on_validation_start(self, trainer, pl_module) -> None:
        self._eval_start()

    def on_test_start(self, trainer, pl_module) -> None:
        self._eval_start()

    def on_predict_start(self, trainer, pl_module) -> None:
        self._eval_start()

    def _eval_start(self) -> None:
        self._eval_t0 = time.monotonic()
        self._eval_last = self._eval_t0

    def _eval_batch(self, trainer, what: str, batch_idx: int, dataloader_idx: int) -> None:
        now = time.monotonic()
        if not self.is_enabled or trainer.sanity_checking or now - self._eval_last < self.every:
            return
        self._eval_last = now
        totals = {"validation": trainer.num_val_batches, "test": trainer.num_test_batches,
                  "predict": trainer.num_predict_batches}[what]
        total = totals[dataloader_idx] if dataloader_idx < len(totals) else None
        of = f"/{int(total):,}" if total and total != float("inf") else ""
        self._write(f"{what}: batch {batch_idx + 1:,}{of} · elapsed {duration(now - self._eval_t0)}")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch(trainer, "validation", batch_idx, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch(trainer, "test", batch_idx, dataloader_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch(trainer, "predict", batch_idx, dataloader_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self.is_enabled or trainer.sanity_checking:
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        shown = " · ".join(f"{k.removeprefix('val/')} {float(v):.4f}" for k, v in sorted(metrics.items())
                           if getattr(v, "numel", lambda: 1)() == 1)
        where = f"step {trainer.global_step:,}" if trainer.state.fn == "fit" else "validation"
        self._write(f"held-out at {where}: {shown or 'no metrics'} · took "
                    f"{duration(time.monotonic() - self._eval_t0)}")


def _total_steps(trainer) -> int | None:
    """Optimizer steps the fit will take (max_steps, or batches x epochs / accumulation), None if unknown."""
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - an iterable dataset without a length: total unknown, lines still print
        return None
    return int(total) if total not in (None, float("inf")) else None


class ModelSummaryWithoutFlops(ModelSummary):
    """Lightning's model summary (``--trainer.enable_model_summary true``) without its FLOP column and total.

    Lightning measures FLOP only through an ``example_input_array``, which an embedding module has not, so
    they read 0 beside the real count of the FLOP callback.
    """

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops, **summarize_kwargs) -> None:
        from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

        columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *columns)
        lines = [line for line in table.splitlines() if not line.endswith("Total Flops")]
        logging.getLogger("lightning.pytorch.callbacks.model_summary").info("\n" + "\n".join(lines))


def default_progress_bar() -> ProgressBar:
    """Rich's live bar on a terminal, plain lines otherwise."""
    if interactive():
        from lightning.pytorch.callbacks import RichProgressBar

        return RichProgressBar()
    return PlainProgressBar()


__all__ = ["ModelSummaryWithoutFlops", "PlainProgressBar", "default_progress_bar"]
