"""lightning-embed: contrastive fine-tuning of language models into text-embedding models."""

from importlib import import_module
from typing import TYPE_CHECKING

# Public names -> defining module. Imported on first use, so that light commands (recipe, laws) start
# without importing torch, transformers and lightning.
_EXPORTS = {
    "EmbeddingModule": "lightning_embed.module",
    "Encoder": "lightning_embed.encoder",
    "InfoNCELoss": "lightning_embed.loss",
    "MixtureSource": "lightning_embed.mixtures",
    "GTELoss": "lightning_embed.losses",
    "MatryoshkaLoss": "lightning_embed.matryoshka",
    "build_loss": "lightning_embed.losses",
    "PairBatch": "lightning_embed.data",
    "PairCollator": "lightning_embed.data",
    "PairDataModule": "lightning_embed.data",
    "PairExample": "lightning_embed.data",
    "TuningStrategy": "lightning_embed.strategy",
    "UserError": "lightning_embed.errors",
    "available_strategies": "lightning_embed.strategy",
    "build_strategy": "lightning_embed.strategy",
    "load": "lightning_embed.encoder",
    "load_backbone": "lightning_embed.models",
    "load_tokenizer": "lightning_embed.models",
    "pool": "lightning_embed.pooling",
    "FlopCallback": "lightning_embed.flop_callback",
    "FlopCount": "lightning_embed.flops",
    "FlopModel": "lightning_embed.flops",
    "paper_flops_per_token": "lightning_embed.flops",
    "RunRecord": "lightning_embed.runs",
    "read_runs": "lightning_embed.runs",
    "dry_run": "lightning_embed.flop_budget",
    "builtin_fingerprint": "lightning_embed.fingerprints",
    "source_fingerprint": "lightning_embed.fingerprints",
    "FaultTolerance": "lightning_embed.faults",
    "consolidate_checkpoint": "lightning_embed.distributed_checkpoint",
    "read_distributed_checkpoint": "lightning_embed.distributed_checkpoint",
    "mine_hard_negatives": "lightning_embed.mining",
    # What a run prints and writes (issue 17)
    "Heartbeat": "lightning_embed.terminal",
    "PlainProgressBar": "lightning_embed.progress",
    "default_loggers": "lightning_embed.loggers",
    "fit_summary": "lightning_embed.run_summary",
    "model_card": "lightning_embed.model_card",
}

if TYPE_CHECKING:
    from lightning_embed.loggers import default_loggers
    from lightning_embed.model_card import model_card
    from lightning_embed.progress import PlainProgressBar
    from lightning_embed.run_summary import fit_summary
    from lightning_embed.terminal import Heartbeat
    from lightning_embed.data import PairBatch, PairCollator, PairDataModule, PairExample
    from lightning_embed.encoder import Encoder, load
    from lightning_embed.distributed_checkpoint import consolidate_checkpoint, read_distributed_checkpoint
    from lightning_embed.errors import UserError
    from lightning_embed.faults import FaultTolerance
    from lightning_embed.flop_budget import dry_run
    from lightning_embed.fingerprints import builtin_fingerprint, source_fingerprint
    from lightning_embed.flop_callback import FlopCallback
    from lightning_embed.flops import FlopCount, FlopModel, paper_flops_per_token
    from lightning_embed.runs import RunRecord, read_runs
    from lightning_embed.loss import InfoNCELoss
    from lightning_embed.mining import mine_hard_negatives
    from lightning_embed.mixtures import MixtureSource
    from lightning_embed.losses import GTELoss, build_loss
    from lightning_embed.matryoshka import MatryoshkaLoss
    from lightning_embed.models import load_backbone, load_tokenizer
    from lightning_embed.module import EmbeddingModule
    from lightning_embed.pooling import pool
    from lightning_embed.strategy import TuningStrategy, available_strategies, build_strategy


def _install_library_filters() -> None:
    # Before any library import: bitsandbytes logs a CPU-kernel note on import that only QLoRA users need.
    from lightning_embed.quiet import install_library_filters

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
