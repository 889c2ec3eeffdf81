"""What the FLOP accounting reads from the module that trains, written down as a :class:`typing.Protocol`.

:class:`~lightning_embed.flops.callback.FlopCallback` and :func:`~lightning_embed.flops.budget.dry_run` cost any
LightningModule that has these attributes; :class:`~lightning_embed.training.module.EmbeddingModule` is one
(``tests/flops`` checks it). Everything is read, nothing is called that trains or changes the module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class EncodingReport(Protocol):
    """The part of an encoding path the callback reads (:class:`~lightning_embed.training.encoding.EncodingPath`)."""

    #: ``padded``, ``gradcache``, ``split`` or ``packed``.
    kind: str
    #: Per encoding of the last batch (queries, documents): (positions computed, sum of squared row widths), or
    #: None where the encoding ran as its padded shape.
    computed: list[tuple[int, int] | None]


@runtime_checkable
class CostedModule(Protocol):
    """A module the FLOP accounting can cost exactly.

    Attributes:
        backbone: the tuned backbone; the FLOP model probes it (:mod:`lightning_embed.flops.probe`).
        tuning: the tuning strategy; its ``name`` picks the paper formula, its ``hparams()`` go to the run record.
        backbone_info: the untuned backbone's description (blocks, parameter counts) for the run record.
        gradient_checkpointing: recomputation adds a forward to the hardware count.
        gradcache_chunk_size: GradCache adds a forward to the hardware count (None: off).
        hparams: the module's options, recorded in the run record.
        encoding: the encoding path; after each training step its ``computed`` says which positions ran.
    """

    backbone: nn.Module
    tuning: Any
    backbone_info: Any
    gradient_checkpointing: bool
    gradcache_chunk_size: int | None
    hparams: Mapping[str, Any]

    @property
    def encoding(self) -> EncodingReport: ...

    def make_collator(self) -> Callable[[list], Any]:
        """The collator that tokenises pairs for this module (used when a data module has none yet)."""
        ...
