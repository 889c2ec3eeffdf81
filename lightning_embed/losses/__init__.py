"""Contrastive losses, chosen by ``model.loss``: a registered name or a ``class_path`` to your own class.

Every loss is a ``torch.nn.Module`` called as ``loss(queries, documents, num_negatives)`` on the batch's
L2-normalised fp32 embeddings: ``queries`` (B, H), ``documents`` (B*(1+k), H) with the B positives first
(row i is query i's) and then each query's k hard negatives (query i's at rows B+i*k .. B+i*k+k-1). It returns
a scalar. The module computes it on embeddings only, so GradCache, packing, split batches and Matryoshka work
with any loss. A loss that gathers other ranks' embeddings should keep a ``gather_across_devices`` attribute:
the held-out loss switches it off so that ``val/loss`` does not depend on the number of processes.

Registered names: ``infonce`` (:class:`~lightning_embed.losses.infonce.InfoNCELoss`, the study's symmetric InfoNCE, the
default) and ``gte`` (:class:`~lightning_embed.losses.gte.GTELoss`). Your own loss, with no edit of
lightning-embed::

    # my_losses.py
    import torch
    import torch.nn.functional as F

    class MarginLoss(torch.nn.Module):
        def __init__(self, margin: float = 0.2, temperature: float = 0.025):
            super().__init__()
            self.margin, self.temperature = margin, temperature

        def forward(self, queries, documents, num_negatives=0):
            scores = queries @ documents.T
            b = queries.shape[0]
            scores = scores - self.margin * F.one_hot(torch.arange(b), scores.shape[1])  # additive margin
            return F.cross_entropy(scores / self.temperature, torch.arange(b))

    # config.yaml
    model:
      loss:
        class_path: my_losses.MarginLoss
        init_args: {margin: 0.1}

The module's ``temperature``, ``symmetric`` and ``gather_across_devices`` are passed to a class whose
``__init__`` takes them and whose ``init_args`` do not set them.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from lightning_embed.errors import UserError
from lightning_embed.losses.gte import GTELoss
from lightning_embed.losses.infonce import InfoNCELoss
from lightning_embed.training.class_paths import import_subclass, unknown_options

#: A loss as a config value: a registered name, ``{name: ..., OPTION: ...}`` or ``{class_path:, init_args:}``.
LossSpec = str | dict[str, Any] | None

#: Registered losses by name.
LOSSES: dict[str, type[nn.Module]] = {"infonce": InfoNCELoss, "gte": GTELoss}
# The module's options a loss may take (filled in unless the loss's own arguments set them).
_SHARED = ("temperature", "symmetric", "gather_across_devices")


def build_loss(spec: LossSpec, *, temperature: float = 0.025, symmetric: bool = True,
               gather_across_devices: bool = True) -> nn.Module:
    """Turns ``model.loss`` into a loss module.

    Args:
        spec: ``infonce`` (None means it too), ``gte``, ``{name: gte, temperature: 0.01}``, or
            ``{class_path: pkg.module.Class, init_args: {...}}`` (a ``torch.nn.Module`` subclass).
        temperature: the module's temperature, passed to a loss that takes one.
        symmetric: the module's ``symmetric``, passed to a loss that takes it.
        gather_across_devices: passed to a loss that takes it.

    Raises:
        UserError: an unknown name, a class that cannot be imported, options the class does not take.

    Example:
        >>> build_loss("gte", temperature=0.01)
        GTELoss()
    """
    shared = {"temperature": temperature, "symmetric": symmetric, "gather_across_devices": gather_across_devices}
    if spec is None:
        spec = "infonce"
    if isinstance(spec, str):
        return _instantiate(_registered(spec), {}, shared, spec)
    if isinstance(spec, dict):
        spec = dict(spec)
        if "class_path" in spec:
            return _instantiate(_import(str(spec["class_path"])), dict(spec.get("init_args") or {}), shared,
                                str(spec["class_path"]))
        if "name" in spec:
            name = str(spec.pop("name"))
            return _instantiate(_registered(name), spec, shared, name)
        raise UserError(f"model.loss needs a name ({', '.join(LOSSES)}) or a class_path; got keys {sorted(spec)}.")
    raise UserError(f"model.loss must be a name or a mapping, not {type(spec).__name__}.")


def takes_keyword(loss: nn.Module, name: str) -> bool:
    """Whether ``loss(...)`` accepts the keyword ``name`` (by name, or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(loss.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def call_loss(loss: nn.Module, queries, documents, num_negatives: int, in_batch_negatives: bool = True):
    """``loss(queries, documents, num_negatives)``; a batch without in-batch negatives passes the keyword too.

    Raises:
        UserError: such a batch (a mixture source with ``in_batch_negatives: false``) for a loss without the keyword.
    """
    if in_batch_negatives:
        return loss(queries, documents, num_negatives)
    if not takes_keyword(loss, "in_batch_negatives"):
        raise UserError(f"model.loss {type(loss).__name__} takes no in_batch_negatives keyword, so it cannot train "
                        "on a mixture source with in_batch_negatives: false; use model.loss infonce or gte, or add "
                        "the keyword to the loss.")
    return loss(queries, documents, num_negatives, in_batch_negatives=False)


def _registered(name: str) -> type:
    try:
        return LOSSES[name.lower()]
    except KeyError:
        raise UserError(f"unknown loss {name!r}: use one of {', '.join(LOSSES)}, or a class_path to your own "
                        "loss class (model.loss: {class_path: my_module.MyLoss}).") from None


def _import(path: str) -> type:
    cls, why = import_subclass(path, nn.Module, "loss class", "torch.nn.Module")
    if cls is None:
        raise UserError(why)
    return cls


def _instantiate(cls: type, kwargs: dict[str, Any], shared: dict[str, Any], label: str) -> nn.Module:
    why = unknown_options(cls, kwargs)
    if why:
        raise UserError(f"loss {label!r} {why}.")
    params = inspect.signature(cls.__init__).parameters
    for key in _SHARED:
        if key in params and key not in kwargs:
            kwargs[key] = shared[key]
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"loss {label!r}: {err}") from None


__all__ = ["LOSSES", "GTELoss", "InfoNCELoss", "LossSpec", "build_loss", "call_loss", "takes_keyword"]
