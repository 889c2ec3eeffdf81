"""Tiny trained checkpoints and the embeddings they must reproduce, shared by the model and evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from lightning_embed.data.batches import PairExample
from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.training.module import EmbeddingModule

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()


QUERIES = ["alpha bravo", "return the number of items", "split a string into words please", "x"]


DOCUMENTS = ["the alpha and the bravo here", "def length(items):\n    return len(items)",
             "text.split() splits on whitespace", "open a file and read its lines"]


def write_pairs(path: Path, n: int = 32) -> Path:
    with path.open("w") as f:
        for i in range(n):
            a, b = WORDS[i % len(WORDS)], WORDS[(i * 5 + 3) % len(WORDS)]
            f.write(json.dumps({"query": f"{a} {b} {i}", "positive": f"the {a} and the {b} number {i}"}) + "\n")
    return path


def train_checkpoint(backbone: str, root: Path, *, steps: int = 3, callbacks=(), val: bool = False,
                     **model_args) -> tuple[Path, EmbeddingModule]:
    """A few steps at a high learning rate (so LoRA's B matrices leave zero), saved like `fit` saves."""
    L.seed_everything(0)
    root.mkdir(parents=True, exist_ok=True)
    pairs = write_pairs(root / "pairs.jsonl")
    args = {"learning_rate": 1e-2, "query_max_length": 32, "document_max_length": 48, "warmup_ratio": 0.0,
            "lr_schedule": "constant", "query_prompt": "q: ", "document_prompt": "d: ", **model_args}
    module = EmbeddingModule(backbone=backbone, **args)
    data = PairDataModule(train=str(pairs), val=str(pairs) if val else None, batch_size=8)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", callbacks=list(callbacks),
                        num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    path = root / "model.ckpt"
    trainer.save_checkpoint(path)
    module.eval()
    return path, module


def reference_embeddings(module: EmbeddingModule) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and documents embedded by the trained module itself (its collator, prompts, pooling)."""
    batch = module.make_collator()([PairExample(q, d) for q, d in zip(QUERIES, DOCUMENTS)])
    with torch.no_grad():
        return module.encode_batch(batch.queries), module.encode_batch(batch.documents)
