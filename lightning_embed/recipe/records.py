"""Run records as the laws see them: one :class:`Observation` per completed run.

Run records are JSON lines written by ``fit`` (the FLOP callback; schema in ``lightning_embed/flops/records.py``,
read with its ``read_runs``). This module is the one place that knows their field names, so the fitting
code depends only on :class:`Observation`; a record may be a ``RunRecord`` or a plain mapping.

The method *setting* a law is fitted per is the method's tuning strategy's to say
(:meth:`lightning_embed.strategy.TuningStrategy.law_setting`, from the tuning arguments): ``{rank: r}`` for
``lora``/``qlora``, ``{share: s}`` (the share of blocks trained) for ``freeze``, ``{}`` for ``full`` and
``bias``; a strategy that declares nothing gets its scalar options that differ from their defaults.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_embed.errors import UserError

#: Training settings copied into a law's ``hparams`` when every run of the law shares them.
HPARAM_KEYS = ("batch_size", "learning_rate", "temperature", "pooling", "query_max_length",
               "document_max_length", "train", "val")


@dataclass
class Observation:
    """One completed run, reduced to what a law needs."""

    method: str
    setting: dict[str, Any]
    n: float
    examples: float | None
    tokens: float | None
    loss: float
    flops: float | None = None
    budget: float | None = None
    accounting: str | None = None
    trainable: float | None = None
    backbone: str = ""
    num_layers: int | None = None
    source: str = ""
    hparams: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    initial_loss: float | None = None
    seed: int | None = None

    def data(self, unit: str) -> float | None:
        """The data quantity in ``unit`` (``examples`` or ``tokens``)."""
        return self.examples if unit == "examples" else self.tokens


def group_key(method: str, setting: dict[str, Any]) -> tuple:
    """Hashable key of a method setting."""
    return (method, tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in setting.items())))


def _get(record: Any, *names: str, default: Any = None) -> Any:
    """The first present field among ``names`` (dotted names reach into nested mappings)."""
    for name in names:
        value: Any = record
        for part in name.split("."):
            if isinstance(value, dict):
                value = value.get(part)
            else:
                value = getattr(value, part, None)
            if value is None:
                break
        if value is not None:
            return value
    return default


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def method_setting(name: str, args: dict[str, Any], record: Any = None) -> dict[str, Any]:
    """The method setting a law is fitted per, as the method's strategy reads it (see the module docstring).

    A method whose strategy is not installed keeps its scalar arguments, so its runs still group.
    """
    from lightning_embed.strategy import StrategyError, strategy_class

    try:
        cls = strategy_class(name)
    except StrategyError:
        return {k: v for k, v in sorted(args.items()) if isinstance(v, (int, float, str, bool))}
    return cls.law_setting(dict(args), record)


def observation(record: Any, source: str) -> Observation | None:
    """The observation of one record, or None when the run did not complete.

    Raises:
        UserError: a completed record without a tuning method.
    """
    status = _get(record, "status", default="completed")
    if status != "completed":
        return None
    tuning = _get(record, "tuning", "hparams.tuning")
    args = dict(_get(record, "tuning_args", default={}) or {})
    if isinstance(tuning, dict):  # {"name": "lora", "rank": 16} or class_path/init_args
        args = {**{k: v for k, v in tuning.items() if k not in ("name", "class_path", "init_args")},
                **(tuning.get("init_args") or {}), **args}
        tuning = tuning.get("name") or str(tuning.get("class_path", "")).rsplit(".", 1)[-1]
    if not tuning:
        raise UserError(f"{source}: the record names no tuning method (field 'tuning').")
    loss = _number(_get(record, "val_loss", "metrics.val_loss"))
    hparams = {}
    for key in HPARAM_KEYS:
        value = _get(record, key, f"hparams.{key}", f"config.model.{key}", f"config.data.{key}", f"config.{key}")
        if isinstance(value, (int, float, str, bool)):
            hparams[key] = value
    return Observation(
        method=str(tuning),
        setting=method_setting(str(tuning), args, record),
        n=_number(_get(record, "non_embedding_params")) or 0.0,
        examples=_number(_get(record, "examples")),
        tokens=_number(_get(record, "tokens")),
        loss=math.nan if loss is None else loss,
        flops=_number(_get(record, "flops_model", "flops.model")),
        budget=_number(_get(record, "budget")),
        accounting=_get(record, "accounting"),
        trainable=_number(_get(record, "trainable_params")),
        backbone=str(_get(record, "backbone", default="")),
        num_layers=_get(record, "num_layers"),
        source=source,
        hparams=hparams,
        steps=_get(record, "steps"),
        initial_loss=_number(_get(record, "initial_val_loss")),
        seed=_get(record, "seed"),
    )


def _records(path: Path) -> list[tuple[str, Any]]:
    from lightning_embed.flops.records import read_runs

    return [(f"{path} record {i} (run {r.run_id[:8]})", r) for i, r in enumerate(read_runs(path), 1)]


def read_observations(paths: list[Path]) -> tuple[list[Observation], list[dict[str, Any]]]:
    """Completed runs of every file, and per file ``{path, records, completed}``.

    Raises:
        UserError: every unreadable file or malformed record at once.
    """
    observations, files, problems = [], [], []
    for path in paths:
        try:
            records = _records(path)
        except UserError as err:  # unreadable file or damaged lines, each named
            problems.append(str(err).rstrip("."))
            continue
        completed = 0
        for source, record in records:
            try:
                obs = observation(record, source)
            except UserError as err:
                problems.append(str(err))
                continue
            if obs is not None:
                observations.append(obs)
                completed += 1
        files.append({"path": str(path), "records": len(records), "completed": completed})
    if problems:
        raise UserError("cannot read the run records: " + "; ".join(problems[:20])
                        + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "") + ".")
    return observations, files
