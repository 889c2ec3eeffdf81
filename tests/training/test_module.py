"""The embedding module (lightning_embed/training/module.py): fp32 logits under bf16 autocast, bf16-mixed training
matching fp32, and the compile option."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.training.module import EmbeddingModule


def test_contrastive_logits_stay_fp32_under_bf16_autocast(tiny_backbones):
    module = EmbeddingModule(backbone=tiny_backbones["llama"])
    torch.manual_seed(0)
    q = F.normalize(torch.randn(8, 32), dim=-1)
    d = F.normalize(torch.randn(8, 32), dim=-1)
    reference = module._contrastive_loss(q, d, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = module._contrastive_loss(q, d, 0)
        plain = module.loss_fn(q, d, 0)  # the loss alone would run its matmul in bf16
    assert mixed.dtype == torch.float32 and torch.equal(mixed, reference)
    assert not torch.equal(plain, reference)


def _train_and_validate(backbone: str, precision: str, seed: int) -> float:
    L.seed_everything(seed, workers=True)
    module = EmbeddingModule(backbone=backbone, learning_rate=1e-3, query_max_length=16, document_max_length=32)
    data = PairDataModule(train="builtin:stdlib-code", batch_size=8, max_train_examples=64, max_val_examples=32,
                          seed=seed)
    trainer = L.Trainer(max_steps=6, precision=precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    evaluator = L.Trainer(precision="32-true", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return evaluator.validate(module, datamodule=data, verbose=False)[0]["val/loss"]  # both evaluated in fp32


def test_bf16_mixed_training_matches_fp32_held_out_loss(tiny_backbones):
    fp32 = _train_and_validate(tiny_backbones["llama"], "32-true", 0)
    bf16 = _train_and_validate(tiny_backbones["llama"], "bf16-mixed", 0)
    assert abs(bf16 - fp32) < 0.02 * fp32, (fp32, bf16)


def test_compile_option_is_recorded_and_auto_by_default(tiny_backbones):
    assert EmbeddingModule(backbone=tiny_backbones["bert"]).hparams.compile == "auto"
    assert EmbeddingModule(backbone=tiny_backbones["bert"], compile=True).hparams.compile is True
