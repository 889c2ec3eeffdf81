"""Synthetic run records from known Chinchilla-form laws, one per method (shared by the recipe tests).

Full fine-tuning is best at small budgets, LoRA above ~1e17 FLOP, as in the study.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lightning_embed.flops.records import RunRecord
from lightning_embed.recipe.catalogue import load_shipped_family
from lightning_embed.recipe.costs import paper_flops_per_token, trainable_params

# The synthetic truth: full fine-tuning best at small budgets, LoRA above ~1e17 FLOP (as in the study).
TRUE = {
    ("full", ()): {"E": 0.55, "A": 30.0, "alpha": 0.32, "B": 25.0, "beta": 0.34},
    ("lora", (("rank", 16),)): {"E": 0.30, "A": 35.0, "alpha": 0.30, "B": 60.0, "beta": 0.33},
    ("freeze", (("share", 0.25),)): {"E": 0.60, "A": 32.0, "alpha": 0.30, "B": 30.0, "beta": 0.32},
    ("bias", ()): {"E": 0.70, "A": 40.0, "alpha": 0.30, "B": 40.0, "beta": 0.30},
}


NOISE = 0.005


PYTHIA_TRAIN = 7  # pythia-14m .. pythia-1.4b carry runs; 2.8b and up are extrapolation


def chinchilla_loss(key, n, d):
    c = TRUE[key]
    return c["E"] + c["A"] / n ** c["alpha"] + c["B"] / d ** c["beta"]


def write_synthetic_runs(path: Path, methods, *, budgets=None, models=None, noise=NOISE, seed=0, extra=()) -> Path:
    """Run records of an iso-FLOP sweep whose losses follow TRUE (paper accounting, 78 tokens/example)."""
    rng = np.random.default_rng(seed)
    budgets = np.logspace(15, 18, 7) if budgets is None else budgets
    models = load_shipped_family("pythia").models[:PYTHIA_TRAIN] if models is None else models
    lines = []
    for key in methods:
        method, setting = key[0], dict(key[1])
        for budget in budgets:
            for m in models:
                n_t = trainable_params(m.counts, method, setting)
                per_example = paper_flops_per_token(method, m.counts.non_embedding, n_t) * 78
                examples = int(budget // per_example)
                if examples < 32:
                    continue
                loss = chinchilla_loss(key, m.counts.non_embedding, examples) * math.exp(rng.normal(0, noise))
                args = {"blocks": setting["share"]} if method == "freeze" else setting
                record = RunRecord(
                    backbone=m.backbone, tuning=method, tuning_args=args, non_embedding_params=m.counts.non_embedding,
                    total_params=m.counts.total, trainable_params=n_t, num_blocks=m.counts.num_blocks,
                    examples=examples, tokens=examples * 78, batch_size=32, steps=examples // 32,
                    flops_model=float(examples * per_example), accounting="paper", budget=float(budget),
                    val_loss=float(loss), hparams={"learning_rate": 1e-4, "temperature": 0.025},
                )
                lines.append(record.to_json())
    lines += [RunRecord(**r).to_json() for r in extra]
    path.write_text("\n".join(lines) + "\n")
    return path
