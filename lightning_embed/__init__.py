"""lightning-embed: contrastive fine-tuning of language models into text-embedding models."""

from importlib import import_module
from typing import TYPE_CHECKING

# Public names -> defining module. Imported on first use, so that light commands (recipe, laws) start
# without importing torch, transformers and lightning.
_EXPORTS = {
    "EmbeddingModule": "lightning_embed.training.module",
    "Encoder": "lightning_embed.models.encoder",
    "InfoNCELoss": "lightning_embed.losses.infonce",
    "MixtureSource": "lightning_embed.data.mixtures",
    "GTELoss": "lightning_embed.losses",
    "MatryoshkaLoss": "lightning_embed.losses.matryoshka",
    "build_loss": "lightning_embed.losses",
    "PairBatch": "lightning_embed.data.batches",
    "PairCollator": "lightning_embed.data.batches",
    "PairDataModule": "lightning_embed.data.datamodule",
    "PairExample": "lightning_embed.data.batches",
    "TuningStrategy": "lightning_embed.strategy",
    "UserError": "lightning_embed.errors",
    "available_strategies": "lightning_embed.strategy",
    "build_strategy": "lightning_embed.strategy",
    "load": "lightning_embed.models.encoder",
    "load_backbone": "lightning_embed.models.backbones",
    "load_tokenizer": "lightning_embed.models.backbones",
    "pool": "lightning_embed.models.pooling",
    "FlopCallback": "lightning_embed.flops.callback",
    "FlopCount": "lightning_embed.flops.model",
    "FlopModel": "lightning_embed.flops.model",
    "paper_flops_per_token": "lightning_embed.flops.model",
    "RunRecord": "lightning_embed.flops.records",
    "read_runs": "lightning_embed.flops.records",
    "dry_run": "lightning_embed.flops.budget",
    "builtin_fingerprint": "lightning_embed.data.fingerprints",
    "source_fingerprint": "lightning_embed.data.fingerprints",
    "FaultTolerance": "lightning_embed.training.faults",
    "consolidate_checkpoint": "lightning_embed.training.distributed_checkpoint",
    "read_distributed_checkpoint": "lightning_embed.training.distributed_checkpoint",
    "mine_hard_negatives": "lightning_embed.data.mining",
    # What a run prints and writes (issue 17)
    "Heartbeat": "lightning_embed.cli.terminal",
    "PlainProgressBar": "lightning_embed.cli.progress",
    "default_loggers": "lightning_embed.training.loggers",
    "fit_summary": "lightning_embed.cli.run_summary",
    "model_card": "lightning_embed.models.model_card",
}

if TYPE_CHECKING:
    from lightning_embed.cli.progress import PlainProgressBar
    from lightning_embed.cli.run_summary import fit_summary
    from lightning_embed.cli.terminal import Heartbeat
    from lightning_embed.data.batches import PairBatch, PairCollator, PairExample
    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.data.fingerprints import builtin_fingerprint, source_fingerprint
    from lightning_embed.data.mining import mine_hard_negatives
    from lightning_embed.data.mixtures import MixtureSource
    from lightning_embed.errors import UserError
    from lightning_embed.flops.budget import dry_run
    from lightning_embed.flops.callback import FlopCallback
    from lightning_embed.flops.model import FlopCount, FlopModel, paper_flops_per_token
    from lightning_embed.flops.records import RunRecord, read_runs
    from lightning_embed.losses import GTELoss, build_loss
    from lightning_embed.losses.infonce import InfoNCELoss
    from lightning_embed.losses.matryoshka import MatryoshkaLoss
    from lightning_embed.models.backbones import load_backbone, load_tokenizer
    from lightning_embed.models.encoder import Encoder, load
    from lightning_embed.models.model_card import model_card
    from lightning_embed.models.pooling import pool
    from lightning_embed.strategy import TuningStrategy, available_strategies, build_strategy
    from lightning_embed.training.distributed_checkpoint import consolidate_checkpoint, read_distributed_checkpoint
    from lightning_embed.training.faults import FaultTolerance
    from lightning_embed.training.loggers import default_loggers
    from lightning_embed.training.module import EmbeddingModule


def _install_library_filters() -> None:
    # Before any library import: bitsandbytes logs a CPU-kernel note on import that only QLoRA users need.
    from lightning_embed.cli.quiet import install_library_filters

    install_library_filters()


_install_library_filters()


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_embed' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "EmbeddingModule",
    "Encoder",
    "FaultTolerance",
    "FlopCallback",
    "FlopCount",
    "FlopModel",
    "GTELoss",
    "InfoNCELoss",
    "MixtureSource",
    "MatryoshkaLoss",
    "PairBatch",
    "PairCollator",
    "PairDataModule",
    "PairExample",
    "RunRecord",
    "TuningStrategy",
    "UserError",
    "available_strategies",
    "build_loss",
    "build_strategy",
    "builtin_fingerprint",
    "consolidate_checkpoint",
    "dry_run",
    "load",
    "load_backbone",
    "load_tokenizer",
    "mine_hard_negatives",
    "paper_flops_per_token",
    "pool",
    "read_distributed_checkpoint",
    "read_runs",
    "source_fingerprint",
    "Heartbeat",
    "PlainProgressBar",
    "default_loggers",
    "fit_summary",
    "model_card",
]
