"""The tuning-strategy plugin contract and its registry.

A *tuning* strategy decides which parameters of the backbone train and how the backbone is wrapped
(frozen, LoRA-wrapped, quantised, ...). Lightning already uses "strategy" for DDP/FSDP, hence the name.

The core never imports a strategy directly: every strategy, the built-in ones included, is found through
the entry-point group ``lightning_embed.strategies``. A third party adds one with one class and one line
in its ``pyproject.toml``::

    [project.entry-points."lightning_embed.strategies"]
    norm = "my_package.norm:NormTuning"

The FLOP model derives the backward cost from which parameters require gradients, so a strategy never
reports its own cost.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, ClassVar

from torch import nn

from lightning_embed.errors import UserError

ENTRY_POINT_GROUP = "lightning_embed.strategies"


class StrategyError(UserError):
    """A tuning strategy was named or configured wrongly (a user mistake, reported without a traceback)."""


class TuningStrategy:
    """Base class of fine-tuning methods.

    Subclasses declare their options as typed ``__init__`` parameters (LightningCLI and
    ``lightning-embed strategies`` show them) and implement :meth:`apply`. Everything else has defaults.

    Example:
        >>> class NormTuning(TuningStrategy):
        ...     name = "norm"
        ...     def apply(self, backbone):
        ...         for n, p in backbone.named_parameters():
        ...             p.requires_grad_("norm" in n)
        ...         return backbone
    """

    #: Short name used in configs (``model.tuning: NAME``); defaults to the entry-point name.
    name: ClassVar[str] = ""

    def validate(self, backbone: nn.Module) -> list[str]:
        """Checks the options against the backbone before anything changes.

        Args:
            backbone: the loaded, untouched backbone.

        Returns:
            Every problem found, one sentence each (empty when all is well). All are reported at once.
        """
        return []

    def apply(self, backbone: nn.Module) -> nn.Module:
        """Freezes, wraps or quantises the backbone.

        Args:
            backbone: the loaded backbone; every parameter requires gradients on entry.

        Returns:
            The module to train. Its forward takes ``input_ids`` and ``attention_mask`` and returns an
            object with ``last_hidden_state``.
        """
        raise NotImplementedError

    def export(self, model: nn.Module) -> nn.Module:
        """Returns the plain backbone to use for inference (adapters merged). Identity by default."""
        return model

    def fsdp_wrap_modules(self, model: nn.Module) -> list[nn.Module]:
        """Modules FSDP should shard on their own (default: none beyond the transformer blocks)."""
        return []

    def hparams(self) -> dict[str, Any]:
        """The strategy's options as given to ``__init__`` (recorded in run records and checkpoints)."""
        out = {}
        for name in inspect.signature(type(self).__init__).parameters:
            if name != "self" and hasattr(self, name):
                out[name] = getattr(self, name)
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"


@dataclass(frozen=True)
class StrategyEntry:
    """One installed strategy: where it comes from and, once loaded, its class (or why it failed)."""

    name: str
    value: str
    package: str
    cls: type[TuningStrategy] | None
    error: str | None


@lru_cache(maxsize=1)
def _entries() -> dict[str, StrategyEntry]:
    found: dict[str, StrategyEntry] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        package = ep.dist.name if ep.dist is not None else "?"
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, TuningStrategy)):
                raise TypeError(f"{ep.value} is not a TuningStrategy subclass")
            found[ep.name] = StrategyEntry(ep.name, ep.value, package, cls, None)
        except Exception as err:  # a broken plugin must not take the others down
            found[ep.name] = StrategyEntry(ep.name, ep.value, package, None, f"{type(err).__name__}: {err}")
    return found


def available_strategies() -> dict[str, StrategyEntry]:
    """Every strategy registered under the entry-point group, loaded or with its load error."""
    return dict(_entries())


def refresh_strategies() -> None:
    """Forgets the cached registry (after installing a plugin in a running process)."""
    _entries.cache_clear()


def strategy_class(name: str) -> type[TuningStrategy]:
    """The class registered under ``name``.

    Raises:
        StrategyError: unknown name (listing the known ones) or a plugin that failed to import.
    """
    entries = _entries()
    entry = entries.get(name)
    if entry is None:
        known = ", ".join(sorted(entries)) or "none installed"
        close = difflib.get_close_matches(name, list(entries), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise StrategyError(f"unknown tuning strategy {name!r}.{hint} Available: {known}.")
    if entry.cls is None:
        raise StrategyError(
            f"tuning strategy {name!r} ({entry.value}, from package {entry.package!r}) failed to import: "
            f"{entry.error}. Reinstall or fix that package; the other strategies still work."
        )
    return entry.cls


def build_strategy(spec: str | dict[str, Any] | TuningStrategy | None) -> TuningStrategy:
    """Turns a config value into a strategy instance.

    Accepts ``"lora"``, ``{"name": "lora", "rank": 32}``, LightningCLI's
    ``{"class_path": ..., "init_args": {...}}``, an instance, or ``None`` (full fine-tuning).
    """
    if isinstance(spec, TuningStrategy):
        return spec
    if spec is None:
        spec = "full"
    if isinstance(spec, str):
        return _instantiate(strategy_class(spec), {}, spec)
    if isinstance(spec, dict):
        spec = dict(spec)
        if "class_path" in spec:
            cls = _class_from_path(spec["class_path"])
            return _instantiate(cls, dict(spec.get("init_args") or {}), spec["class_path"])
        if "name" not in spec:
            raise StrategyError(
                "model.tuning needs a 'name' (e.g. {name: lora, rank: 32}) or a 'class_path'; "
                f"got keys {sorted(spec)}."
            )
        name = spec.pop("name")
        return _instantiate(strategy_class(name), spec, name)
    raise StrategyError(f"model.tuning must be a name, a mapping or a TuningStrategy, not {type(spec).__name__}.")


def _class_from_path(path: str) -> type[TuningStrategy]:
    for entry in _entries().values():
        if entry.cls is not None and f"{entry.cls.__module__}.{entry.cls.__qualname__}" == path:
            return entry.cls
    module_name, _, attr = path.rpartition(".")
    try:
        import importlib

        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise StrategyError(f"cannot import tuning strategy class {path!r}: {err}.") from None
    if not (isinstance(cls, type) and issubclass(cls, TuningStrategy)):
        raise StrategyError(f"{path!r} is not a TuningStrategy subclass.")
    return cls


def _instantiate(cls: type[TuningStrategy], kwargs: dict[str, Any], label: str) -> TuningStrategy:
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if k not in params or k == "self"]
    if unknown and not accepts_any:
        valid = ", ".join(p for p in params if p != "self") or "none"
        raise StrategyError(f"tuning strategy {label!r} has no option(s) {', '.join(unknown)}; its options: {valid}.")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise StrategyError(f"tuning strategy {label!r}: {err}") from None


def strategy_arguments(cls: type[TuningStrategy]) -> list[tuple[str, str, Any]]:
    """``(name, type, default)`` of each ``__init__`` option, for listings and ``--help``."""
    out = []
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        ann = p.annotation
        type_name = ann if isinstance(ann, str) else getattr(ann, "__name__", repr(ann))
        out.append((name, str(type_name), None if p.default is p.empty else p.default))
    return out
