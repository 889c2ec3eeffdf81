"""Training on a mixture of named sources, each batch drawn from one source.

In-batch negatives from another source are easy to tell apart (a code snippet against a question about
a film), so the contrastive signal of a mixed batch is weak. BGE, nomic, E5 and sentence-transformers'
round-robin and proportional samplers therefore draw every batch from one source; this module does the
same for :class:`~lightning_embed.data.datamodule.PairDataModule` when ``train`` is a mapping of
:class:`MixtureSource`.

Under DDP every rank derives the same sequence of sources from the shared seed and the epoch, and takes
its slice of one global, conflict-free batch of that source, so the negatives a loss gathers across
devices come from one source too. The order is a function of (seed, epoch) only, so a checkpoint's
"batches done" resumes it exactly.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from lightning_embed.data.batches import PairBatch, PairCollator, PairExample
from lightning_embed.data.sampling import PairBatchSampler
from lightning_embed.errors import UserError

MixtureName = Literal["proportional", "round_robin", "weighted"]
MIXTURES: tuple[str, ...] = ("proportional", "round_robin", "weighted")


@dataclass
class MixtureSource:
    """One named source of a training mixture.

    Args:
        path: the pairs: a ``.jsonl``/``.csv``/``.tsv``/``.parquet`` file, a saved Hugging Face dataset
            folder, or ``builtin:NAME``.
        weight: share of the batches under ``mixture: weighted`` (relative to the other weights; must be
            positive). The other mixtures ignore it.
        query_column: column holding the query; None: the data module's ``query_column``.
        positive_column: column holding the positive; None: the data module's ``positive_column``.
        negatives_column: column holding the hard negatives; None: the data module's ``negatives_column``.
        query_prompt: prompt prepended to this source's queries; None: the model's ``query_prompt``.
        document_prompt: prompt prepended to this source's documents; None: the model's.
        in_batch_negatives: False for classification-like data (NLI, labels), where another example of
            the batch may well be relevant to a query: its queries are contrasted only with their own hard
            negatives (needs ``num_negatives`` >= 1).
    """

    path: str
    weight: float = 1.0
    query_column: str | None = None
    positive_column: str | None = None
    negatives_column: str | None = None
    query_prompt: str | None = None
    document_prompt: str | None = None
    in_batch_negatives: bool = True


@dataclass
class MixturePairBatch(PairBatch):
    """A :class:`~lightning_embed.data.batches.PairBatch` that knows its source.

    Attributes:
        source: the source every example comes from; None for a batch mixing sources.
        in_batch_negatives: False: the loss contrasts each query with its own hard negatives only.
        source_counts: examples per source in the *global* batch of this step (all ranks together), so
            counting them on one rank counts the run.
    """

    source: str | None = None
    in_batch_negatives: bool = True
    source_counts: dict[str, int] = field(default_factory=dict)

    def pin_memory(self) -> MixturePairBatch:
        """A copy in pinned memory (called by ``DataLoader(pin_memory=True)``)."""
        base = PairBatch.pin_memory(self)
        return MixturePairBatch(base.queries, base.documents, base.num_negatives, base.positive_ids,
                                base.query_lengths, base.document_lengths, self.source, self.in_batch_negatives,
                                dict(self.source_counts))


def mixture_sources(train: Mapping[str, MixtureSource | Mapping], num_negatives: int) -> dict[str, MixtureSource]:
    """Checks a mapping of named sources (plain dicts become :class:`MixtureSource`).

    Raises:
        UserError: no source, a bad name, a weight of 0 or less, a source without a path, or a source
            without in-batch negatives but also without hard negatives.
    """
    if not train:
        raise UserError("data.train is an empty mapping; name at least one source, e.g. "
                        "{code: {path: pairs.jsonl}}, or give a single path.")
    sources = {}
    for name, source in train.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise UserError(f"mixture source name {name!r} must be non-empty text without '/' (it names the "
                            "train/source_examples/NAME metric).")
        if isinstance(source, Mapping):
            unknown = set(source) - set(MixtureSource.__dataclass_fields__)
            if unknown:
                raise UserError(f"mixture source {name!r} has unknown option(s) {', '.join(sorted(unknown))}; "
                                f"known: {', '.join(MixtureSource.__dataclass_fields__)}.")
            if "path" not in source:
                raise UserError(f"mixture source {name!r} has no path; set {name}.path to its data file.")
            source = MixtureSource(**source)
        elif isinstance(source, str):
            source = MixtureSource(path=source)
        if not isinstance(source, MixtureSource):
            raise UserError(f"mixture source {name!r} must be a mapping with a path, got {type(source).__name__}.")
        if not isinstance(source.weight, (int, float)) or not source.weight > 0:
            raise UserError(f"mixture source {name!r} has weight {source.weight}; weights must be positive "
                            "(drop the source to leave it out).")
        if not source.in_batch_negatives and num_negatives < 1:
            raise UserError(f"mixture source {name!r} sets in_batch_negatives: false, so its queries are contrasted "
                            "with their hard negatives only; set num_negatives to 1 or more.")
        sources[name] = source
    return sources


class _Indices(list):
    # A rank's slice of one global batch, carrying the global batch's examples per source: the loader
    # hands it to the dataset as it is (also across worker processes, lists pickle their attributes).
    counts: dict[int, int]


class MixtureBatchSampler(PairBatchSampler):
    """Global batches over several sources, each batch from one source (or, optionally, mixed).

    Indices address the sources' examples concatenated in source order (``offsets[i]`` is source i's
    first). Every source is packed by its own :class:`~lightning_embed.data.sampling.PairBatchSampler`
    (conflict-free global batches of ``batch_size * num_replicas``); the mixture then orders them:

    - ``proportional``: every batch of every source once per epoch, sources interleaved at random, so a
      source's share of the batches is its share of the examples.
    - ``round_robin``: the sources in turn; the epoch ends when the smallest source runs out (as
      sentence-transformers' round-robin sampler), so every source gets as many batches.
    - ``weighted``: as many batches as ``proportional``, each from a source drawn with probability
      proportional to its weight; a source that runs out starts a new pass in a new order.

    With ``same_source_batches=False`` the examples of all sources are shuffled together (``proportional``
    only): batches mix sources.

    Args:
        samplers: one (training, ``drop_last``) sampler per source, in source order.
        offsets: each source's first index in the concatenation.
        weights: each source's weight (``weighted``).
        mixture: the mixing rule.
        same_source_batches: every batch from one source.
        mixed: with ``same_source_batches=False``: one sampler over all examples.
    """

    def __init__(self, samplers: Sequence[PairBatchSampler], offsets: Sequence[int], weights: Sequence[float],
                 mixture: MixtureName = "proportional", same_source_batches: bool = True,
                 mixed: PairBatchSampler | None = None):
        # As PairBatchSampler, DistributedSampler.__init__ is not called (no process group needed).
        first = samplers[0]
        self.num_replicas, self.rank, self.epoch, self.seed = first.num_replicas, first.rank, 0, first.seed
        self.shuffle, self.drop_last, self.batch_size = True, True, first.batch_size
        self.samplers, self.offsets, self.weights = list(samplers), list(offsets), list(weights)
        self.mixture, self.same_source_batches, self.mixed = mixture, same_source_batches, mixed
        if not same_source_batches and mixed is None:
            raise ValueError("same_source_batches=False needs the sampler over all examples (mixed)")
        if same_source_batches:
            for s, sampler in enumerate(self.samplers):  # sources of equal size would share one order otherwise
                sampler.seed = self.seed * 7919 + s
        self._packed: tuple[int, list[list[int]]] | None = None
        self._skip: tuple[int, int] | None = None

    def source_of(self, index: int) -> int:
        """The source (position) an index belongs to."""
        return bisect_right(self.offsets, index) - 1

    def _source_batches(self, source: int, epoch: int) -> list[list[int]]:
        sampler, offset = self.samplers[source], self.offsets[source]
        sampler.set_epoch(epoch)
        return [[offset + i for i in batch] for batch in sampler.batches()]

    def batches(self) -> list[list[int]]:
        """The global batches (all processes together) of the current epoch."""
        if self._packed is not None and self._packed[0] == self.epoch:
            return self._packed[1]
        if not self.same_source_batches:
            self.mixed.set_epoch(self.epoch)
            packed = self.mixed.batches()
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            per_source = [self._source_batches(s, self.epoch) for s in range(len(self.samplers))]
            counts = [len(b) for b in per_source]
            if self.mixture == "round_robin":
                labels = list(range(len(counts))) * min(counts)
            elif self.mixture == "proportional":
                labels = [s for s, n in enumerate(counts) for _ in range(n)]
                labels = [labels[i] for i in torch.randperm(len(labels), generator=generator).tolist()]
            else:
                weights = torch.tensor(self.weights, dtype=torch.float64)
                labels = torch.multinomial(weights, sum(counts), replacement=True, generator=generator).tolist()
            packed, used, passes = [], [0] * len(counts), [0] * len(counts)
            for s in labels:
                if used[s] == len(per_source[s]):
                    # Only `weighted` gets here: a further pass over the source, in an order of its own.
                    passes[s] += 1
                    per_source[s] = self._source_batches(s, self.epoch + passes[s] * 1_000_003)
                    used[s] = 0
                packed.append(per_source[s][used[s]])
                used[s] += 1
            for s in range(len(counts)):
                self.samplers[s].set_epoch(self.epoch)
        self._packed = (self.epoch, packed)
        return packed

    def __iter__(self) -> Iterator[list[int]]:
        start = self.rank * self.batch_size
        batches = self.batches()
        first = self._skip[1] if self._skip is not None and self._skip[0] == self.epoch else 0
        self._skip = None
        for batch in batches[first:]:
            mine = _Indices(batch[start : start + self.batch_size])
            mine.counts = {}
            for i in batch:
                s = self.source_of(i)
                mine.counts[s] = mine.counts.get(s, 0) + 1
            yield mine

    def source_sequence(self) -> list[int | None]:
        """The source of each global batch of the current epoch (None: a batch mixing sources)."""
        sources = []
        for batch in self.batches():
            found = {self.source_of(i) for i in batch}
            sources.append(found.pop() if len(found) == 1 else None)
        return sources


class MixtureView(torch.utils.data.Dataset):
    """The concatenated examples, indexed by a :class:`MixtureBatchSampler`'s slices."""

    def __init__(self, examples: list[PairExample], offsets: Sequence[int]):
        self.examples, self.offsets = examples, list(offsets)

    def __getitem__(self, indices: list[int]) -> _SourceExamples:
        batch = _SourceExamples(self.examples[i] for i in indices)
        batch.sources = [bisect_right(self.offsets, i) - 1 for i in indices]
        batch.counts = dict(getattr(indices, "counts", {}))
        return batch

    def __len__(self) -> int:
        return len(self.examples)


class _SourceExamples(list):
    sources: list[int]
    counts: dict[int, int]


class MixtureCollator:
    """Tokenizes a batch with its source's prompts and marks it with the source (:class:`MixturePairBatch`).

    Args:
        base: the model's collator (tokenizer, max lengths, prompts).
        sources: the named sources, in source order (their prompts and ``in_batch_negatives``).
    """

    def __init__(self, base: PairCollator, sources: Mapping[str, MixtureSource]):
        self.base, self.names, self.sources = base, list(sources), list(sources.values())
        self.collators = [self._for(source) for source in self.sources]

    def _for(self, source: MixtureSource) -> PairCollator:
        if source.query_prompt is None and source.document_prompt is None:
            return self.base
        base = self.base
        def pick(own, default):
            return default if own is None else own

        # A new collator (not a copy), so a prompt too long for the max length fails here, by name.
        return PairCollator(base.tokenizer, base.query_max_length, base.document_max_length,
                            pick(source.query_prompt, base.query_prompt),
                            pick(source.document_prompt, base.document_prompt), base.pad_to_multiple_of)

    def token_lengths(self, examples: Sequence[PairExample]) -> list[tuple[int, int]]:
        """Token counts as the base collator cuts them (used by ``group_by_length``)."""
        return self.base.token_lengths(examples)

    def __call__(self, examples: Sequence[PairExample]) -> MixturePairBatch:
        sources = set(getattr(examples, "sources", [None]))
        source = sources.pop() if len(sources) == 1 else None
        batch = (self.base if source is None else self.collators[source])(examples)
        counts = getattr(examples, "counts", {}) or {}
        return MixturePairBatch(batch.queries, batch.documents, batch.num_negatives, batch.positive_ids,
                                batch.query_lengths, batch.document_lengths,
                                None if source is None else self.names[source],
                                True if source is None else self.sources[source].in_batch_negatives,
                                {self.names[s]: int(n) for s, n in sorted(counts.items())})


def check_mixed_batches(names: Sequence[str], sources: Sequence[MixtureSource], mixture: str) -> None:
    """Options that need single-source batches fail with ``same_source_batches=False``."""
    if mixture != "proportional":
        raise UserError(f"mixture={mixture!r} orders single-source batches; with same_source_batches=false the "
                        "sources are shuffled together (use mixture: proportional) or set same_source_batches: true.")
    for name, source in zip(names, sources):
        if not source.in_batch_negatives:
            raise UserError(f"mixture source {name!r} sets in_batch_negatives: false, which needs batches from one "
                            "source; set same_source_batches: true.")
        if source.query_prompt is not None or source.document_prompt is not None:
            raise UserError(f"mixture source {name!r} has prompts of its own, which need batches from one source; "
                            "set same_source_batches: true or use the model's prompts.")


__all__ = ["MIXTURES", "MixtureBatchSampler", "MixtureCollator", "MixturePairBatch", "MixtureSource", "MixtureView",
           "check_mixed_batches", "mixture_sources"]


def read_mixture(sources: Mapping[str, MixtureSource], read) -> tuple[list[PairExample], list[int]]:
    """Reads every source (``read(source)`` -> its examples) and concatenates them in source order.

    Returns:
        The examples, with ``positive_id`` equal across sources for equal positive text, and each source's
        first index.

    Raises:
        UserError: from ``read``, naming the source that failed (e.g. one with no rows).
    """
    examples: list[PairExample] = []
    offsets: list[int] = []
    ids: dict[str, int] = {}
    for name, source in sources.items():
        try:
            part = read(source)
        except UserError as err:
            raise UserError(f"mixture source {name!r}: {err}") from None
        offsets.append(len(examples))
        examples.extend(PairExample(e.query, e.positive, e.negatives, ids.setdefault(e.positive, len(ids)))
                        for e in part)
    return examples, offsets


def mixture_sampler(sources: Mapping[str, MixtureSource], offsets: Sequence[int], total: int, *,
                    mixture: MixtureName, same_source_batches: bool, make) -> MixtureBatchSampler:
    """The training sampler of a mixture of ``total`` examples.

    ``make(start, stop, where)`` builds the :class:`~lightning_embed.data.sampling.PairBatchSampler` of the
    examples ``start:stop`` (``where`` names them in errors).

    Raises:
        UserError: an unknown mixture, a source too small for one global batch, or options that need
            single-source batches.
    """
    if mixture not in MIXTURES:
        raise UserError(f"unknown mixture {mixture!r}; use one of {', '.join(MIXTURES)}.")
    names, values = list(sources), list(sources.values())
    weights = [s.weight for s in values]
    if not same_source_batches:
        check_mixed_batches(names, values, mixture)
        mixed = make(0, total, "the mixture")
        return MixtureBatchSampler([mixed], offsets, weights, mixture, False, mixed=mixed)
    bounds = [*offsets, total]
    samplers = [make(bounds[i], bounds[i + 1], f"mixture source {names[i]!r}") for i in range(len(names))]
    return MixtureBatchSampler(samplers, offsets, weights, mixture, True)
