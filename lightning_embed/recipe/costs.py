"""What a method setting trains and costs on a candidate model: trainable parameters, FLOP per example.

Every answer comes from the method's tuning strategy (found by name in the strategy registry), never from
a table here: its ``trainable_params``, ``paper_flops_per_token`` and ``tuning_spec`` classmethods.

Two accountings, as ``lightning_embed.flops.model``:

- ``paper``: the strategy's per-token formula (the study's: full 6N, freeze 2N + 4N_t, lora/qlora/bias
  4N + 2N_t; N without embeddings, N_t the trainable non-embedding parameters, attention ignored) times the
  tokens of an example (14 query + 64 document by default, the study's averages). For the built-in
  strategies this is arithmetic on the catalogue's cached counts: no torch, so ``recipe`` answers at once.
  A strategy that declares neither its N_t nor its formula is measured instead: the candidate is built on
  the ``meta`` device and tuned (about half a second, cached on disk like exact FLOP below).
- ``exact``: :class:`lightning_embed.flops.model.FlopModel` of the candidate built on the ``meta`` device with the
  tuning strategy applied (attention and the real backward included). Building costs about half a second
  per model and setting, so results are cached in ``$LIGHTNING_EMBED_CACHE/recipe-flops.json``, keyed by
  the configuration, the strategy spec, the lengths and the FLOP model's source (a changed FLOP model
  invalidates them).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lightning_embed.errors import UserError
from lightning_embed.recipe.catalogue import ModelCounts, ModelEntry, cache_dir, config_key

if TYPE_CHECKING:
    from lightning_embed.strategy import TuningStrategy

Accounting = Literal["exact", "paper"]


def _strategy(method: str) -> type[TuningStrategy]:
    from lightning_embed.strategy import strategy_class

    return strategy_class(method)


def method_problem(method: str) -> str | None:
    """Why ``method`` cannot be costed at all (not installed, or its plugin fails to import), else None."""
    from lightning_embed.strategy import StrategyError

    try:
        _strategy(method)
    except StrategyError as err:
        return str(err).rstrip(".")
    return None


def tuning_spec(method: str, setting: dict[str, Any]) -> str | dict[str, Any]:
    """The ``model.tuning`` config value of a method setting (``{name: lora, rank: 16}``), by its strategy."""
    return _strategy(method).tuning_spec(dict(setting))


def trainable_params(counts: ModelCounts, method: str, setting: dict[str, Any]) -> int | None:
    """N_t a method setting trains on a model, as its strategy declares it (None: it cannot say or tune).

    Built-ins: LoRA adapts every linear layer of every block, r * (in + out) each; freezing trains the top
    k blocks and the final norm; bias tuning the biases (none in Llama-style models, so impossible there).
    :func:`trainable_on` also measures strategies that do not declare it.
    """
    return _strategy(method).trainable_params(counts, dict(setting))


def paper_flops_per_token(method: str, n: float, n_t: float) -> float:
    """The strategy's paper FLOP per token (:func:`lightning_embed.flops.model.paper_flops_per_token`, torch-free).

    Raises:
        UserError: the strategy declares no formula (it is measured on a tuned model: :func:`paper_costs`).
    """
    per_token = _strategy(method).paper_flops_per_token(n, n_t)
    if per_token is None:
        raise UserError(f"tuning strategy {method!r} declares no paper FLOP formula; it is measured on the tuned "
                        "model (recipe.costs.paper_costs).")
    return float(per_token)


def _measured(entries: list[tuple[ModelEntry, str, dict[str, Any]]]) -> list[tuple[int, float] | None]:
    """``(N_t, paper FLOP per token)`` of each entry, measured on its meta-device model tuned by the strategy.

    For strategies that leave either to the default. Cached on disk beside exact FLOP, keyed by the
    configuration, the strategy spec and the strategy's source file. None: the strategy rejects the model.
    """
    import inspect

    keys = []
    for entry, method, setting in entries:
        cls = _strategy(method)
        source = hashlib.sha256(Path(inspect.getfile(cls)).read_bytes()).hexdigest()[:12]
        spec = json.dumps(cls.tuning_spec(dict(setting)), sort_keys=True)
        keys.append(f"measure|{_flops_source_hash()}|{source}|{config_key(entry.config)}|{spec}")
    cache = _read_cache()
    fresh: dict[str, Any] = {}
    for key, (entry, method, setting) in zip(keys, entries):
        if key in cache or key in fresh:
            continue
        import warnings

        from lightning_embed.models.parameters import parameter_counts
        from lightning_embed.recipe.catalogue import meta_model
        from lightning_embed.strategy import StrategyError, apply_strategy, build_strategy

        cls = _strategy(method)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tuned = apply_strategy(build_strategy(cls.tuning_spec(dict(setting))), meta_model(entry.config))
            params = parameter_counts(tuned)
            n_t = params.trainable_non_embedding
            per_token = cls.paper_flops_per_token(entry.counts.non_embedding, n_t, tuned)
            fresh[key] = [n_t, float(per_token)] if n_t and per_token is not None else None
        except (StrategyError, UserError, NotImplementedError, RuntimeError):
            fresh[key] = None  # cached too, and shown as "cannot tune"
    if fresh:
        _write_cache(fresh)
    values = [fresh[k] if k in fresh else cache.get(k) for k in keys]
    return [None if v is None else (int(v[0]), float(v[1])) for v in values]


def trainable_on(entries: list[tuple[ModelEntry, str, dict[str, Any]]]) -> list[int | None]:
    """N_t of each ``(model, method, setting)``: declared by the strategy, else measured on a meta model."""
    usable = [not method_problem(method) for _, method, _ in entries]
    declared = [trainable_params(e.counts, method, setting) if ok else None
                for ok, (e, method, setting) in zip(usable, entries)]
    todo = [i for i, n_t in enumerate(declared) if n_t is None and usable[i] and _declares_nothing(entries[i][1])]
    for i, measured in zip(todo, _measured([entries[i] for i in todo])):
        declared[i] = None if measured is None else measured[0]
    return declared


def _declares_nothing(method: str) -> bool:
    from lightning_embed.strategy import TuningStrategy

    return _strategy(method).trainable_params.__func__ is TuningStrategy.trainable_params.__func__


def paper_costs(
    entries: list[tuple[ModelEntry, str, dict[str, Any]]], tokens: float,
) -> list[float | None]:
    """Paper-accounting FLOP of one example of ``tokens`` tokens for each entry (None: cannot tune).

    The strategy's declared N_t and formula where it has them; otherwise both measured on the tuned meta
    model (:func:`_measured`), so a third-party strategy is costed exactly as its training run counts.
    """
    out: list[float | None] = [None] * len(entries)
    todo = []
    for i, (entry, method, setting) in enumerate(entries):
        if method_problem(method):
            continue
        cls = _strategy(method)
        n_t = cls.trainable_params(entry.counts, dict(setting))
        per_token = None if n_t is None else cls.paper_flops_per_token(entry.counts.non_embedding, n_t)
        if per_token is not None:
            out[i] = float(per_token) * tokens
        elif n_t is not None or _declares_nothing(method):
            todo.append(i)
    for i, measured in zip(todo, _measured([entries[i] for i in todo])):
        out[i] = None if measured is None else measured[1] * tokens
    return out


def _flops_source_hash() -> str:
    # Hash the FLOP model's source rather than importing it: importing pulls torch (seconds).
    import importlib.util

    digest = hashlib.sha256()
    for module in ("lightning_embed.flops.model", "lightning_embed.flops.probe"):
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise UserError(f"--accounting exact needs {module}, which this installation lacks; "
                            "use --accounting paper.")
        digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()[:16]


def _cache_path() -> Path:
    return cache_dir() / "recipe-flops.json"


@lru_cache(maxsize=1)
def _read_cache() -> dict[str, Any]:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(new: dict[str, Any]) -> None:
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
        if method_problem(method):
            keys.append(None)
            continue
        spec = json.dumps(tuning_spec(method, setting), sort_keys=True)
        keys.append(f"{version}|{config_key(entry.config)}|{spec}|{query_tokens}|{document_tokens}")
    cache = _read_cache()
    missing = [i for i, k in enumerate(keys) if k is not None and k not in cache]
    fresh: dict[str, float] = {}
    if missing:
        import warnings

        from lightning_embed.flops.model import FlopModel
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
    values = [None if k is None else fresh.get(k, cache.get(k)) for k in keys]
    return [None if v is None or v < 0 else v for v in values]


def flops_per_example(
    entries: list[tuple[ModelEntry, str, dict[str, Any]]], accounting: Accounting, query_tokens: float,
    document_tokens: float,
) -> list[float | None]:
    """Model FLOP of one training example for each ``(model, method, setting)`` (None: not possible)."""
    if accounting == "exact":
        return exact_flops_per_example(entries, query_tokens, document_tokens)
    return paper_costs(entries, query_tokens + document_tokens)
