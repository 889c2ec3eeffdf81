"""lightning-embed: contrastive fine-tuning of language models into text-embedding models."""

from lightning_embed.data import PairBatch, PairCollator, PairDataModule, PairExample
from lightning_embed.errors import UserError
from lightning_embed.loss import InfoNCELoss
from lightning_embed.models import load_backbone, load_tokenizer
from lightning_embed.module import EmbeddingModule
from lightning_embed.pooling import pool
from lightning_embed.strategy import TuningStrategy, available_strategies, build_strategy

__version__ = "0.1.0"

__all__ = [
    "EmbeddingModule",
    "InfoNCELoss",
    "PairBatch",
    "PairCollator",
    "PairDataModule",
    "PairExample",
    "TuningStrategy",
    "UserError",
    "available_strategies",
    "build_strategy",
    "load_backbone",
    "load_tokenizer",
    "pool",
]
