"""Synthetic run records from a known law (shared by the tests of laws, recipe limits and validate)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lightning_embed.flops.records import RunRecord
from lightning_embed.recipe.catalogue import load_shipped_family
from lightning_embed.recipe.costs import paper_flops_per_token, trainable_params

SHARED = {"E": 1.0, "a": 0.3, "beta": 1.2}
K = {"full": 40.0, "lora": 15.0, "freeze": 120.0}
SETTINGS = {"full": {}, "lora": {"rank": 16}, "freeze": {"share": 0.25}}
MODELS = load_shipped_family("pythia").models[1:6]  # pythia-31m .. pythia-1b: 5 sizes
TOKENS = 78


def l0(n):
    """The untrained loss rises with N, as for truncated SmolLM2 (deeper = further from the embedding task)."""
    return 2.4 + 0.12 * np.log(np.asarray(n, dtype=float) / 1e7)


def true_loss(method: str, n, d, form: str = "per-model"):
    """The per-model law with S(N) = N^a (log S linear in log N: the per-model form can represent it exactly),
    or with ``form="anchored"`` the anchored (logistic) law with the same k, a, beta."""
    c = SHARED
    dc = K[method] * np.asarray(n, dtype=float) ** c["a"]
    d = np.asarray(d, dtype=float)
    if form == "anchored":
        return c["E"] + (l0(n) - c["E"]) / (1.0 + (d / dc) ** c["beta"])
    return c["E"] + (l0(n) - c["E"]) * (1.0 + d / dc) ** -c["beta"]


def records(methods=("full", "lora", "freeze"), budgets=None, models=None, noise=0.0, seeds=(0,), rng_seed=0,
            with_l0=True, form: str = "per-model") -> list[RunRecord]:
    """An iso-FLOP sweep whose losses follow the law of ``form`` (log-normal noise of sd ``noise``)."""
    rng = np.random.default_rng(rng_seed)
    budgets = np.logspace(14, 17, 5) if budgets is None else budgets
    out = []
    for method in methods:
        setting = SETTINGS[method]
        for budget in budgets:
            for m in models or MODELS:
                n = m.counts.non_embedding
                n_t = trainable_params(m.counts, method, setting)
                per_example = paper_flops_per_token(method, n, n_t) * TOKENS
                examples = int(budget // per_example)
                if examples < 32:
                    continue
                for seed in seeds:
                    loss = float(true_loss(method, n, examples, form))
                    loss *= math.exp(rng.normal(0, noise)) if noise else 1.0
                    args = {"blocks": setting["share"]} if method == "freeze" else setting
                    out.append(RunRecord(
                        backbone=m.backbone, tuning=method, tuning_args=args, non_embedding_params=n,
                        total_params=m.counts.total, trainable_params=n_t, num_blocks=m.counts.num_blocks,
                        examples=examples, tokens=examples * TOKENS, batch_size=32, steps=examples // 32,
                        flops_model=float(examples * per_example), accounting="paper", budget=float(budget),
                        val_loss=loss, initial_val_loss=float(l0(n)) if with_l0 else None, seed=seed,
                        val_examples=500 if with_l0 else None, hparams={"learning_rate": 1e-4, "batch_size": 32},
                    ))
    return out


def write(path: Path, recs: list[RunRecord]) -> Path:
    path.write_text("".join(r.to_json() + "\n" for r in recs))
    return path
