"""The held-out loss before the first training step: L0, where an anchored scaling law starts.

The FLOP callback calls :func:`initial_val_loss` at the start of a fresh fit, so every run record carries
the loss of the model it started from (``initial_val_loss``) next to the loss it reached (``val_loss``).
It is one pass over the validation set, computed exactly as ``validate`` computes ``val/loss`` (the
module's :meth:`~lightning_embed.training.module.EmbeddingModule.held_out_loss`, in the trainer's evaluation
precision, no gradients), but outside Lightning's validation loop: no metric is logged, no callback or
checkpoint hook sees it, and the training step counter stays at zero.
"""

from __future__ import annotations

import itertools
import math

import lightning as L
import torch


def _val_loaders(trainer: L.Trainer, pl_module: L.LightningModule) -> list:
    from lightning.pytorch.utilities.model_helpers import is_overridden

    holder = trainer.datamodule if trainer.datamodule is not None else pl_module
    if not is_overridden("val_dataloader", holder) or trainer.limit_val_batches == 0:
        return []  # no validation set (Lightning would raise when asked for its loaders)
    loop = trainer.fit_loop.epoch_loop.val_loop
    loop.setup_data()  # Lightning builds the validation loaders lazily, at the first validation
    loaders = trainer.val_dataloaders
    if loaders is None:
        return []
    loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
    # The batches `validate` would see: limit_val_batches applies here too.
    caps = list(getattr(loop, "max_batches", [])) or [math.inf] * len(loaders)
    return [(loader, cap) for loader, cap in zip(loaders, caps)]


def initial_val_loss(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[float, int] | None:
    """``(held-out loss, held-out examples)`` of the module as it is now; None without a validation set.

    The loss is the example-weighted mean over every validation batch of every rank (what ``validate``
    logs as ``val/loss`` on one device).
    """
    if not hasattr(pl_module, "held_out_loss"):
        return None
    loaders = _val_loaders(trainer, pl_module)
    if not loaders:
        return None
    from lightning_embed.cli.terminal import Heartbeat

    modes = {m: m.training for m in pl_module.modules()}
    pl_module.eval()
    total = torch.zeros(2, dtype=torch.float64, device=pl_module.device)
    # Plain lines in a log (this pass runs outside Lightning's loop, so no progress bar sees it)
    beat = Heartbeat("held-out loss before training", unit="batches")
    beat.enabled = beat.enabled and trainer.is_global_zero and trainer.progress_bar_callback is not None
    try:
        with torch.no_grad(), trainer.precision_plugin.val_step_context():
            for loader, cap in loaders:
                for batch in itertools.islice(loader, None if math.isinf(cap) else int(cap)):
                    batch = trainer.strategy.batch_to_device(batch)
                    loss = pl_module.held_out_loss(batch)[0]
                    total += torch.stack([loss.detach().double() * len(batch),
                                          torch.tensor(float(len(batch)), dtype=torch.float64, device=total.device)])
                    beat(1)
        beat.done()
    finally:
        for module, training in modes.items():
            module.train(training)
    total = trainer.strategy.reduce(total, reduce_op="sum")
    loss_sum, count = (float(v) for v in total.cpu())
    return (loss_sum / count, int(count)) if count else None
