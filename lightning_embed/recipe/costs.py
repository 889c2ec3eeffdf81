"""What a method setting trains and costs on a candidate model: trainable parameters, FLOP per example.

Two accountings, as ``lightning_embed.flops``:

- ``paper``: the study's per-token formulas (full 6N, freeze 2N + 4N_t, lora/qlora/bias 4N + 2N_t; N
  without embeddings, N_t the trainable non-embedding parameters, attention ignored) times the tokens of
  an example (14 query + 64 document by default, the study's averages). Pure arithmetic on the catalogue's
  cached counts: no torch, so ``recipe`` answers at once.
- ``exact``: :class:`lightning_embed.flops.FlopModel` of the candidate built on the ``meta`` device with the
  tuning strategy applied (attention and the real backward included). Building costs about half a second
  per model and setting, so results are cached in ``$LIGHTNING_EMBED_CACHE/recipe-flops.json``, keyed by
  the configuration, the strategy spec, the lengths and the FLOP model's source (a changed FLOP model
  invalidates them).
"""

from __future__ import annotations

import hashlib
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from lightning_embed.errors import UserError
from lightning_embed.recipe.catalogue import ModelCounts, ModelEntry, cache_dir, config_key

Accounting = Literal["exact", "paper"]
#: Methods the paper formulas cover (qlora costs as lora: its base weights are frozen the same way).
PAPER_METHODS = ("full", "freeze", "lora", "qlora", "bias")


def trained_blocks(share: float, depth: int) -> int:
    """Blocks trained for a share of the depth: rounded half up, at least one (as the freeze strategy)."""
    return min(depth, max(1, math.floor(share * depth + 0.5)))


def tuning_spec(method: str, setting: dict[str, Any]) -> str | dict[str, Any]:
    """The ``model.tuning`` config value of a method setting (``{name: lora, rank: 16}``)."""
    if method == "full" and not setting:
        return "full"
    if method == "freeze" and "share" in setting:
        # The freeze strategy takes a float as a fraction of the depth: one spec fits every model.
        return {"name": "freeze", "blocks": float(setting["share"])}
    return {"name": method, **setting}


def trainable_params(counts: ModelCounts, method: str, setting: dict[str, Any]) -> int | None:
    """N_t: non-embedding parameters a method setting trains on a model (None: cannot say or not possible).

    LoRA adapts every linear layer of every block (the strategy's default): r * (in + out) each. Freezing
    trains the top k blocks and the final norm. Bias tuning trains the biases (none in Llama-style models,
    which makes it impossible there).
    """
    if method == "full":
        return counts.non_embedding
    if method in ("lora", "qlora"):
        rank = setting.get("rank")
        return int(rank) * counts.lora_in_out if isinstance(rank, int) and rank > 0 else None
    if method == "freeze":
        if "share" in setting:
            k = trained_blocks(float(setting["share"]), counts.num_blocks)
        elif "blocks" in setting:
            k = min(int(setting["blocks"]), counts.num_blocks)
        else:
            return None
        return k * counts.block // counts.num_blocks + counts.final_norm
    if method == "bias":
        return counts.bias or None
    return None


def paper_flops_per_token(method: str, n: float, n_t: float) -> float:
    """The study's training FLOP per token (the same formulas as ``lightning_embed.flops``)."""
    if method == "full":
        return 6.0 * n
    if method == "freeze":
        return 2.0 * n + 4.0 * n_t
    return 4.0 * n + 2.0 * n_t


def _flops_source_hash() -> str:
    # Hash the FLOP model's source rather than importing it: importing pulls torch (seconds).
    import importlib.util

    digest = hashlib.sha256()
    for module in ("lightning_embed.flops", "lightning_embed.flop_probe"):
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise UserError(f"--accounting exact needs {module}, which this installation lacks; "
                            "use --accounting paper.")
        digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()[:16]


def _cache_path() -> Path:
    return cache_dir() / "recipe-flops.json"


@lru_cache(maxsize=1)
def _read_cache() -> dict[str, float]:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(new: dict[str, float]) -> None:
    try:
        cache = {**_read_cache(), **new}
        path = _cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(new)}")
        tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
        tmp.replace(path)
        _read_cache.cache_clear()
    except OSError:
        pass  # an unwritable cache only costs the rebuild next time


def exact_flops_per_example(
    entries: list[tuple[ModelEntry, str, dict[str, Any]]], query_tokens: float, document_tokens: float,
) -> list[float | None]:
    """Exact model FLOP of one training example for each ``(model, method, setting)``, cached on disk.

    Returns:
        One number per entry; None where the strategy cannot tune the model (e.g. bias on Llama).
    """
    version = _flops_source_hash()
    keys = []
    for entry, method, setting in entries:
        spec = json.dumps(tuning_spec(method, setting), sort_keys=True)
        keys.append(f"{version}|{config_key(entry.config)}|{spec}|{query_tokens}|{document_tokens}")
    cache = _read_cache()
    missing = [i for i, k in enumerate(keys) if k not in cache]
    fresh: dict[str, float] = {}
    if missing:
        import warnings

        from lightning_embed.flops import FlopModel
        from lightning_embed.recipe.catalogue import meta_model
        from lightning_embed.strategy import StrategyError, apply_strategy, build_strategy

        for i in missing:
            entry, method, setting = entries[i]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tuned = apply_strategy(build_strategy(tuning_spec(method, setting)), meta_model(entry.config))
                    flops = FlopModel.from_module(tuned).per_example(query_tokens, document_tokens).model
            except (StrategyError, UserError, NotImplementedError, RuntimeError):
                # The strategy rejects the model, or its module cannot be probed on meta (e.g. 4-bit
                # weights): cached too, and shown as "cannot tune".
                flops = -1.0
            fresh[keys[i]] = float(flops)
        _write_cache(fresh)
    values = [fresh.get(k, cache.get(k)) for k in keys]
    return [None if v is None or v < 0 else v for v in values]


def flops_per_example(
    entries: list[tuple[ModelEntry, str, dict[str, Any]]], accounting: Accounting, query_tokens: float,
    document_tokens: float,
) -> list[float | None]:
    """Model FLOP of one training example for each ``(model, method, setting)`` (None: not possible)."""
    if accounting == "exact":
        return exact_flops_per_example(entries, query_tokens, document_tokens)
    out: list[float | None] = []
    for entry, method, setting in entries:
        n_t = trainable_params(entry.counts, method, setting)
        if method not in PAPER_METHODS or n_t is None:
            out.append(None)
        else:
            out.append(paper_flops_per_token(method, entry.counts.non_embedding, n_t) * (query_tokens + document_tokens))
    return out
