"""The tuning-strategy plugin contract and its registry.

A *tuning* strategy decides which parameters of the backbone train and how the backbone is wrapped
(frozen, LoRA-wrapped, quantised, ...). Lightning already uses "strategy" for DDP/FSDP, hence the name.

The core never imports a strategy directly: every strategy, the built-in ones included, is found through
the entry-point group ``lightning_embed.strategies``. A third party adds one with one class and one line
in its ``pyproject.toml``::

    [project.entry-points."lightning_embed.strategies"]
    norm = "my_package.norm:NormTuning"

The exact FLOP model derives the backward cost from which parameters require gradients, so a strategy
never reports its own cost. What the scaling-law tooling needs to know about a *method* (its per-token FLOP
formula under the study's ``paper`` accounting, the "setting" a law is fitted per, how many parameters it
trains on a model of given counts) is declared by classmethods of the strategy, each with a default, so a
third-party strategy is costed, swept, fitted and recommended without declaring anything; see
:class:`TuningStrategy`.

Importing this module (and a strategy that needs torch only inside its methods) does not import torch:
``recipe`` asks the strategies and must answer in well under a second.

Helpers for strategy authors (the built-ins use them too): :func:`raise_if_problems` (value checks in
``__init__``, all reported at once), :func:`apply_strategy` (validate, then apply), :func:`backbone_parts`
(embeddings / blocks / final norm / head of any architecture, from the module tree), :func:`is_norm`,
:func:`is_linear`, :func:`set_trainable`, :func:`parameter_summary` and :func:`trainable_state_dict`.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

from lightning_embed.errors import UserError
from lightning_embed.training.class_paths import import_subclass, unknown_options

if TYPE_CHECKING:  # torch is imported where it is used: the recipe consults strategies without it
    import torch
    from torch import nn

    from lightning_embed.recipe.catalogue import ModelCounts

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
    #: Whether ``compile: auto`` may ``torch.compile`` a backbone this strategy tuned (False for custom
    #: kernels inductor cannot trace, as bitsandbytes' 4-bit matmuls).
    auto_compile: ClassVar[bool] = True

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

    # -- method knowledge: what FLOP accounting, laws, sweeps and the recipe ask of a method ------------
    # Classmethods, because they answer for a method *setting* (the options a law is fitted per) without
    # an instance or a model. Each has a default, so a strategy that declares nothing still works.

    #: The keys of the method's law setting with the values ``sweep plan`` tries when none are given
    #: (LoRA: ``{"rank": (16,)}``); empty for a method with no setting (full tuning).
    setting_defaults: ClassVar[dict[str, tuple[Any, ...]]] = {}

    @classmethod
    def paper_flops_per_token(
        cls, non_embedding: float, trainable: float, tuned: nn.Module | None = None,
    ) -> float | None:
        """Training FLOP per token as the study counts them (attention ignored), for ``paper`` accounting.

        The default derives the formula from which parameters of ``tuned`` train
        (:func:`lightning_embed.flops.model.backward_reach`): 6N when every base parameter trains; 2N + 4N_t when
        only whole top blocks (and what follows them) train, since the backward pass stops at the lowest
        trained block; otherwise 4N + 2N_t, the backward pass running through the whole network with
        weight gradients only for N_t. Built-in strategies override it with their fixed formula.

        Args:
            non_embedding: N, the base model's parameters whose name lacks ``emb``.
            trainable: N_t, the trainable parameters whose name lacks ``emb``.
            tuned: the module this strategy's :meth:`apply` returned (weights may be on ``meta``).

        Returns:
            FLOP per token, or None when the formula needs ``tuned`` and none was given (the recipe then
            builds the candidate on the ``meta`` device, tunes it and asks again).
        """
        if tuned is None:
            return None
        from lightning_embed.flops.model import backward_reach

        n, n_t = float(non_embedding), float(trainable)
        reach = backward_reach(tuned)
        if reach == "all":
            return 6.0 * n
        if reach == "top":
            return 2.0 * n + 4.0 * n_t
        return 4.0 * n + 2.0 * n_t

    @classmethod
    def law_setting(cls, options: dict[str, Any], record: Any = None) -> dict[str, Any]:
        """The setting a scaling law is fitted per, from the strategy's options (a run record's tuning args).

        Runs with equal settings share one law. The default keeps every scalar option that differs from
        its ``__init__`` default, so runs with the default options have the setting ``{}``.

        Args:
            options: the options as given to ``__init__`` (missing ones take their defaults).
            record: the run record they come from, if any (for depth-dependent settings).
        """
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                    if k != "self" and p.default is not p.empty}
        return {k: v for k, v in sorted(options.items())
                if isinstance(v, (int, float, str, bool)) and (k not in defaults or defaults[k] != v)}

    @classmethod
    def tuning_spec(cls, setting: dict[str, Any]) -> str | dict[str, Any]:
        """The ``model.tuning`` config value that trains with a law setting (default: the setting as options)."""
        return {"name": cls.name, **setting}

    @classmethod
    def trainable_params(cls, counts: ModelCounts, setting: dict[str, Any]) -> int | None:
        """N_t, the non-embedding parameters a setting trains on a model with these counts, without building it.

        Args:
            counts: the candidate's parameter counts (:class:`lightning_embed.recipe.catalogue.ModelCounts`).
            setting: the law setting.

        Returns:
            The count, or None when it cannot be said from the counts. The default is None: the recipe
            then builds the candidate on the ``meta`` device, applies the strategy and counts (once, cached),
            and reports the candidate as "cannot tune" when the strategy rejects the model.
        """
        return None

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
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


@lru_cache(maxsize=None)
def _load(name: str) -> StrategyEntry:
    # One entry point at a time: asking about one strategy imports only that one (and not a plugin's torch).
    ep = _entry_points()[name]
    package = ep.dist.name if getattr(ep, "dist", None) is not None else "?"
    try:
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, TuningStrategy)):
            raise TypeError(f"{ep.value} is not a TuningStrategy subclass")
        if not cls.name:  # documented: the name defaults to the entry-point name
            cls.name = ep.name
        return StrategyEntry(ep.name, ep.value, package, cls, None)
    except Exception as err:  # a broken plugin must not take the others down
        return StrategyEntry(ep.name, ep.value, package, None, f"{type(err).__name__}: {err}")


def _entries() -> dict[str, StrategyEntry]:
    return {name: _load(name) for name in _entry_points()}


def available_strategies() -> dict[str, StrategyEntry]:
    """Every strategy registered under the entry-point group, loaded or with its load error."""
    return dict(_entries())


def strategy_names() -> list[str]:
    """Names of every registered strategy, sorted, without importing any of them."""
    return sorted(_entry_points())


def refresh_strategies() -> None:
    """Forgets the cached registry (after installing a plugin in a running process)."""
    _entry_points.cache_clear()
    _load.cache_clear()


def strategy_class(name: str) -> type[TuningStrategy]:
    """The class registered under ``name``.

    Raises:
        StrategyError: unknown name (listing the known ones) or a plugin that failed to import.
    """
    names = _entry_points()
    if name not in names:
        known = ", ".join(sorted(names)) or "none installed"
        close = difflib.get_close_matches(name, list(names), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise StrategyError(f"unknown tuning strategy {name!r}.{hint} Available: {known}.")
    entry = _load(name)
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


def strategy_spec(strategy: TuningStrategy) -> dict[str, Any]:
    """A plain-data spec that :func:`build_strategy` turns back into an equal strategy."""
    for name, entry in available_strategies().items():
        if entry.cls is type(strategy):
            return {"name": name, **strategy.hparams()}
    cls = type(strategy)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": strategy.hparams()}


def _class_from_path(path: str) -> type[TuningStrategy]:
    for entry in _entries().values():
        if entry.cls is not None and f"{entry.cls.__module__}.{entry.cls.__qualname__}" == path:
            return entry.cls
    cls, why = import_subclass(path, TuningStrategy, "tuning strategy class", "TuningStrategy")
    if cls is None:
        raise StrategyError(why)
    return cls


def _instantiate(cls: type[TuningStrategy], kwargs: dict[str, Any], label: str) -> TuningStrategy:
    why = unknown_options(cls, kwargs)
    if why:
        raise StrategyError(f"tuning strategy {label!r} {why}.")
    try:
        return cls(**kwargs)
    except StrategyError:
        raise  # already names the strategy and lists every problem
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


# ---------------------------------------------------------------------------------------------------------
# Helpers for strategy authors (built-in and third-party alike).


def raise_if_problems(strategy: str, problems: list[str]) -> None:
    """Raises one :class:`StrategyError` listing every problem, so a user fixes them all in one go.

    Constructors use it for value-only checks (``rank=0``, negative dropout); backbone-dependent checks
    belong in :meth:`TuningStrategy.validate`, which returns its list instead.

    Args:
        strategy: the strategy's short name, for the message.
        problems: one sentence each; nothing is raised when empty.

    Raises:
        StrategyError: when ``problems`` is not empty.
    """
    if problems:
        raise StrategyError(f"tuning strategy {strategy!r}: " + "; ".join(p.rstrip(".") for p in problems) + ".")


def apply_strategy(strategy: TuningStrategy, backbone: nn.Module, name: str | None = None) -> nn.Module:
    """Validates ``strategy`` against ``backbone`` (every problem at once), then applies it.

    Args:
        strategy: the tuning strategy.
        backbone: the untuned backbone.
        name: how the user named the backbone (hub id, folder, alias), for the message; None: its kind.

    Raises:
        StrategyError: listing everything :meth:`TuningStrategy.validate` found.
    """
    problems = strategy.validate(backbone)
    if problems:
        which = repr(name) if name is not None else f"this {backbone_kind(backbone)} backbone"
        raise StrategyError(f"tuning strategy {strategy!r} cannot tune {which}: "
                            + "; ".join(p.rstrip(".") for p in problems) + ".")
    return strategy.apply(backbone)


def is_norm(module: nn.Module) -> bool:
    """Whether a module is a normalisation layer (LayerNorm, RMSNorm, ``LlamaRMSNorm``, ...).

    Model families define their own RMSNorm classes, so the class name decides, not ``isinstance``.
    """
    from torch import nn

    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "Norm" in type(module).__name__


@dataclass(frozen=True)
class BackboneParts:
    """Where each parameter of a backbone sits relative to its transformer blocks.

    Derived from the module tree (:func:`backbone_parts`), not from a table per family, so it holds for
    GPT-NeoX, Llama, BERT, GPT-2, Qwen and the like. Every name is a ``named_parameters``/``named_modules``
    name of the backbone as given (unwrapped).

    Attributes:
        blocks_path: dotted path of the blocks' ``ModuleList`` (``layers``, ``encoder.layer``, ``h``).
        blocks: module name of each block, bottom to top.
        block_params: parameter names of each block, bottom to top.
        embedding_params: parameters registered before the blocks (token/position embeddings and
            their norm, e.g. BERT's ``embeddings.LayerNorm``).
        input_embedding: module name of the token embedding (``get_input_embeddings()``), or ``""``.
        final_norm_params: parameters of norm layers registered after the blocks (``norm``,
            ``final_layer_norm``); empty for post-LN encoders such as BERT.
        head_params: other parameters after the blocks (BERT's ``pooler``). They do not feed
            ``last_hidden_state``, so no built-in strategy trains them (they would never get a gradient).
    """

    blocks_path: str
    blocks: tuple[str, ...]
    block_params: tuple[tuple[str, ...], ...]
    embedding_params: tuple[str, ...]
    input_embedding: str
    final_norm_params: tuple[str, ...]
    head_params: tuple[str, ...]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def linear_layers(self, backbone: nn.Module) -> list[str]:
        """Module names of every linear layer inside the blocks (``nn.Linear`` and GPT-2's ``Conv1D``)."""
        prefixes = tuple(b + "." for b in self.blocks)
        return [n for n, m in backbone.named_modules() if n.startswith(prefixes) and is_linear(m)]


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` (bitsandbytes' 4-bit layers included) or transformers' ``Conv1D`` (GPT-2 family)."""
    from torch import nn

    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def backbone_parts(backbone: nn.Module) -> BackboneParts:
    """Splits a backbone's parameters into embeddings, blocks, final norm and head.

    Registration order decides "before" and "after" the blocks: every Hugging Face base model registers
    its embeddings first and its final norm (and pooler) last.

    Raises:
        BackboneError: when the blocks cannot be found.
    """
    from lightning_embed.models.backbones import find_blocks

    path, blocks = find_blocks(backbone)
    block_names = tuple(f"{path}.{i}" if path else str(i) for i in range(len(blocks)))
    per_block: list[list[str]] = [[] for _ in blocks]
    owner = {}
    for mname, module in backbone.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            owner[f"{mname}.{pname}" if mname else pname] = module
    before: list[str] = []
    final: list[str] = []
    head: list[str] = []
    seen_blocks = False
    prefix = f"{path}." if path else ""
    for name, _ in backbone.named_parameters():
        if name.startswith(prefix) and name[len(prefix):].split(".", 1)[0].isdigit():
            per_block[int(name[len(prefix):].split(".", 1)[0])].append(name)
            seen_blocks = True
        elif not seen_blocks:
            before.append(name)
        elif is_norm(owner[name]):
            final.append(name)
        else:
            head.append(name)
    input_embedding = ""
    get = getattr(backbone, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if emb is not None:
        input_embedding = next((n for n, m in backbone.named_modules() if m is emb), "")
    return BackboneParts(
        blocks_path=path,
        blocks=block_names,
        block_params=tuple(tuple(b) for b in per_block),
        embedding_params=tuple(before),
        input_embedding=input_embedding,
        final_norm_params=tuple(final),
        head_params=tuple(head),
    )


def backbone_kind(backbone: nn.Module) -> str:
    """``model_type (ClassName)`` for messages, e.g. ``llama (LlamaModel)``."""
    kind = getattr(getattr(backbone, "config", None), "model_type", None)
    return f"{kind} ({type(backbone).__name__})" if kind else type(backbone).__name__


def set_trainable(backbone: nn.Module, names: set[str] | frozenset[str]) -> None:
    """Makes exactly the named parameters require gradients, every other one frozen."""
    for name, p in backbone.named_parameters():
        p.requires_grad_(name in names)


@dataclass(frozen=True)
class ParameterSummary:
    """Parameter counts of a (possibly wrapped or quantised) model.

    Attributes:
        total: every unique parameter, 4-bit weights counted by their logical (unpacked) size.
        trainable: the ones that require gradients.
    """

    total: int
    trainable: int

    @property
    def share(self) -> float:
        """Trainable fraction of the total (0 for an empty model)."""
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.trainable:,} of {self.total:,} parameters train ({100 * self.share:.3g}%)"


def parameter_summary(model: nn.Module) -> ParameterSummary:
    """Total and trainable parameter counts (shared parameters once, 4-bit weights at their logical size)."""
    from lightning_embed.models.parameters import parameter_counts  # torch: not needed to list strategies

    counts = parameter_counts(model)
    return ParameterSummary(counts.total, counts.trainable)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require gradients, by ``named_parameters`` name (detached).

    With the strategy re-applied to a freshly loaded base, ``model.load_state_dict(state, strict=False)``
    restores the trained model exactly: every built-in strategy re-applies deterministically (same module
    tree, same parameter names; QLoRA re-quantises the base weights to the same 4-bit codes).
    """
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
