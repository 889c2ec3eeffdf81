"""Query/document pairs for contrastive fine-tuning: reading them, batching them, tokenizing them.

Sources: ``.jsonl``, ``.csv``/``.tsv``, ``.parquet``, a saved Hugging Face dataset folder, or ``builtin:NAME``
(:func:`builtin_sources`). Every row is validated when the data module is set up, so a bad file fails before
training starts, with the file and line in a one-line :class:`~lightning_embed.errors.UserError`.

In-batch contrastive training treats every other document of a batch as a negative of a query, so two
examples that share a positive, a query, or whose hard negative is the other's positive would teach the
model to push apart texts that match. :class:`PairBatchSampler` keeps such examples in different batches.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning
import torch
from torch.utils.data import DataLoader

from lightning_embed import python_code_source, stdlib_source
from lightning_embed.errors import UserError
from lightning_embed.hub_data import HUB_PREFIX, hub_rows
from lightning_embed.sampling import PairBatchSampler, held_out_sampler
from lightning_embed.unpadding import right_padded

BUILTIN_PREFIX = "builtin:"
#: Builtin sources: name -> module with ``DESCRIPTION``, ``prepare()`` and ``load(split, num_negatives)``.
_BUILTINS = {"stdlib-code": stdlib_source, "python-code": python_code_source}
_FORMATS = ".jsonl, .csv, .tsv, .parquet, a saved Hugging Face dataset folder, hf:ORG/NAME or builtin:NAME"


def builtin_sources() -> list[str]:
    """Names usable as ``builtin:NAME`` data sources."""
    return sorted(_BUILTINS)


def describe_builtin_sources() -> dict[str, str]:
    """Each builtin source's name and a one-line description (for ``lightning-embed data``)."""
    return {name: module.DESCRIPTION for name, module in sorted(_BUILTINS.items())}


def _builtin(spec: str):
    name = spec[len(BUILTIN_PREFIX):]
    if name not in _BUILTINS:
        raise UserError(f"unknown builtin data source {spec!r}; known: "
                        + ", ".join(BUILTIN_PREFIX + n for n in builtin_sources()) + ".")
    return _BUILTINS[name]


@dataclass(frozen=True)
class PairExample:
    """One training pair.

    Attributes:
        query: the query text (without prompt).
        positive: the document that answers it (without prompt).
        negatives: hard negatives: documents that look relevant but are not.
        positive_id: equal ids if and only if identical positive text, stable over a dataset split.
    """

    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    positive_id: int = 0


@dataclass
class PairBatch:
    """A tokenized batch of B pairs with k hard negatives each.

    Attributes:
        queries: ``input_ids`` and ``attention_mask``, shape (B, Lq).
        documents: the same keys, shape (B * (1 + k), Ld): rows 0..B-1 are the positives, then query i's k
            hard negatives at rows B + i*k .. B + i*k + k - 1.
        num_negatives: k, the same for every query of a run.
        positive_ids: (B,) long, the examples' ``positive_id``.
        query_lengths: each query's real token count, on the host (None: read from the mask when needed);
            it lets the model cut the batch into length-sorted micro-batches without a device sync
            (:mod:`lightning_embed.unpadding`).
        document_lengths: the same for the documents' rows.
    """

    queries: dict[str, torch.Tensor]
    documents: dict[str, torch.Tensor]
    num_negatives: int
    positive_ids: torch.Tensor
    query_lengths: list[int] | None = None
    document_lengths: list[int] | None = None

    def __len__(self) -> int:
        return int(self.positive_ids.shape[0])

    def pin_memory(self) -> PairBatch:
        """A copy in pinned memory (called by ``DataLoader(pin_memory=True)``)."""
        return PairBatch({k: v.pin_memory() for k, v in self.queries.items()},
                         {k: v.pin_memory() for k, v in self.documents.items()},
                         self.num_negatives, self.positive_ids.pin_memory(), self.query_lengths,
                         self.document_lengths)


def _host_lengths(attention_mask: torch.Tensor) -> list[int] | None:
    return attention_mask.sum(1).tolist() if right_padded(attention_mask) else None


class PairCollator:
    """Tokenizes a list of :class:`PairExample` into a :class:`PairBatch`.

    Pads dynamically to the longest text of the batch, on the tokenizer's ``padding_side``.

    Args:
        tokenizer: a Hugging Face tokenizer with a pad token.
        query_max_length: queries (prompt included) are truncated to this many tokens.
        document_max_length: documents (prompt included) are truncated to this many tokens.
        query_prompt: text prepended to every query, e.g. ``"query: "``.
        document_prompt: text prepended to every document (positives and negatives).
        pad_to_multiple_of: pad lengths up to a multiple of this (tensor-core friendly shapes); the padded
            length may then exceed the max length by less than this.
    """

    def __init__(self, tokenizer, query_max_length: int = 64, document_max_length: int = 256,
                 query_prompt: str = "", document_prompt: str = "", pad_to_multiple_of: int | None = None):
        if tokenizer.pad_token is None:
            raise UserError("the tokenizer has no pad token; set one (e.g. tokenizer.pad_token = "
                            "tokenizer.eos_token) or load it with lightning_embed.models.load_tokenizer.")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise UserError(f"pad_to_multiple_of={pad_to_multiple_of} must be a positive integer or None.")
        self.tokenizer = tokenizer
        self.query_max_length = query_max_length
        self.document_max_length = document_max_length
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt
        self.pad_to_multiple_of = pad_to_multiple_of
        for kind, prompt, limit in (("query", query_prompt, query_max_length),
                                    ("document", document_prompt, document_max_length)):
            if limit < 1:
                raise UserError(f"{kind}_max_length={limit} must be at least 1.")
            # The prompt's own tokens (with the special ones) count against the limit; at the limit, every
            # text would be cut away entirely.
            used = len(tokenizer(prompt)["input_ids"])
            if prompt and used >= limit:
                raise UserError(f"the {kind} prompt {prompt!r} alone takes {used} tokens, leaving no room for text "
                                f"within {kind}_max_length={limit}; raise {kind}_max_length or shorten the prompt.")

    def _encode(self, texts: list[str], prompt: str, max_length: int) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer([prompt + text for text in texts], padding=True, truncation=True,
                                 max_length=max_length, pad_to_multiple_of=self.pad_to_multiple_of,
                                 return_tensors="pt")
        # Only these two: token_type_ids exist for some tokenizers only and the backbones default them.
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def token_lengths(self, examples: Sequence[PairExample]) -> list[tuple[int, int]]:
        """Each example's (query, documents) token counts after prompts and truncation (without padding).

        The documents' count adds up the positive and the hard negatives. ``group_by_length`` sorts by these.
        """
        def counts(texts: list[str], prompt: str, max_length: int) -> list[int]:
            ids = self.tokenizer([prompt + t for t in texts], truncation=True, max_length=max_length)["input_ids"]
            return [len(i) for i in ids]

        queries = counts([e.query for e in examples], self.query_prompt, self.query_max_length)
        k = len(examples[0].negatives) if examples else 0
        docs = counts([d for e in examples for d in (e.positive, *e.negatives)], self.document_prompt,
                      self.document_max_length)
        return [(q, sum(docs[i * (1 + k):(i + 1) * (1 + k)])) for i, q in enumerate(queries)]

    def __call__(self, examples: Sequence[PairExample]) -> PairBatch:
        """Tokenizes one batch; every example must carry the same number of negatives."""
        if not examples:
            raise ValueError("cannot collate an empty batch")
        k = len(examples[0].negatives)
        if any(len(e.negatives) != k for e in examples):
            raise UserError("examples of one batch carry different numbers of hard negatives; truncate them all "
                            "to the same count (PairDataModule does this with num_negatives).")
        documents = [e.positive for e in examples] + [n for e in examples for n in e.negatives]
        queries = self._encode([e.query for e in examples], self.query_prompt, self.query_max_length)
        docs = self._encode(documents, self.document_prompt, self.document_max_length)
        return PairBatch(
            queries=queries,
            documents=docs,
            num_negatives=k,
            positive_ids=torch.tensor([e.positive_id for e in examples], dtype=torch.long),
            # Host-side lengths (the masks are still on the CPU here): only where cutting padding is safe.
            query_lengths=_host_lengths(queries["attention_mask"]),
            document_lengths=_host_lengths(docs["attention_mask"]),
        )


# ----------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Columns:
    query: str
    positive: str
    negatives: str
    num_negatives: int

    def needed(self) -> list[str]:
        return [self.query, self.positive] + ([self.negatives] if self.num_negatives else [])


def _check_columns(where: str, found: Sequence[str], columns: _Columns) -> None:
    for option, name in (("query_column", columns.query), ("positive_column", columns.positive),
                         ("negatives_column", columns.negatives)):
        if option == "negatives_column" and not columns.num_negatives:
            continue
        if name not in found:
            hint = " (or set num_negatives=0)" if option == "negatives_column" else ""
            raise UserError(f"{where} has no column {name!r} (columns found: {', '.join(found) or 'none'}); "
                            f"set {option} to the right one{hint}.")


def jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """``("line N", object)`` for every non-blank line of a JSON-lines file; a bad line is a UserError."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: line {number} is not valid JSON ({err.msg} at column {err.colno}); "
                                "a .jsonl file holds one JSON object per line.") from None
            if not isinstance(row, dict):
                kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(row), "number")
                raise UserError(f"{path}: line {number} is a JSON {kind}, not an object; "
                                "a .jsonl file holds one JSON object per line.")
            yield f"line {number}", row


def _csv_rows(path: Path, delimiter: str, columns: _Columns) -> Iterator[tuple[str, dict]]:
    # utf-8-sig: spreadsheet exports often start with a byte-order mark that would rename the first column.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        try:
            _check_columns(str(path), reader.fieldnames or [], columns)
            for row in reader:
                yield f"line {reader.line_num}", row
        except csv.Error as err:
            raise UserError(f"{path}: line {reader.line_num} is not valid {path.suffix[1:].upper()}: {err}.") from None


def _table_rows(where: str, found: list[str], read: Callable[[list[str]], list[dict]],
                columns: _Columns) -> Iterator[tuple[str, dict]]:
    _check_columns(where, found, columns)
    for index, row in enumerate(read(columns.needed())):  # only the needed columns are materialised
        yield f"row {index}", row


def _source_rows(spec: str, columns: _Columns, split: Literal["train", "val"]) -> Iterator[tuple[str, dict]]:
    """(location, row) pairs of a source, location naming the line or row for error messages."""
    if spec.startswith(BUILTIN_PREFIX):
        yield from _builtin(spec).load(split, columns.num_negatives)
        return
    if spec.startswith(HUB_PREFIX):
        yield from hub_rows(spec, columns, split)
        return
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    if not path.exists():
        raise UserError(f"data file {spec!r} does not exist; give a path to {_FORMATS}.")
    try:
        if path.is_dir():
            yield from _hf_rows(path, columns)
        elif suffix == ".jsonl":
            for location, row in jsonl_rows(path):
                _check_columns(f"{path}: {location}", list(row), columns)
                yield location, row
        elif suffix in (".csv", ".tsv"):
            yield from _csv_rows(path, "\t" if suffix == ".tsv" else ",", columns)
        elif suffix == ".parquet":
            import pyarrow
            import pyarrow.parquet as pq

            try:
                found = pq.read_schema(path).names
            except pyarrow.ArrowException as err:
                raise UserError(f"{path} is not a readable parquet file: {err}") from None
            yield from _table_rows(str(path), found, lambda cols: pq.read_table(path, columns=cols).to_pylist(),
                                   columns)
        else:
            raise UserError(f"unsupported data file {spec!r} (extension {path.suffix or 'none'!r}); "
                            f"use {_FORMATS}.")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; re-save it as UTF-8.") from None
    except OSError as err:  # a disk error, a file removed or made unreadable while it is read
        raise UserError(f"cannot read data file {path}: {err.strerror or err}.") from None


def _hf_rows(path: Path, columns: _Columns) -> Iterator[tuple[str, dict]]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"{path} is a folder but not a saved Hugging Face dataset ({err}); give {_FORMATS}.") from None
    if isinstance(dataset, datasets.DatasetDict):
        raise UserError(f"{path} holds several splits ({', '.join(dataset)}); point to one split's folder, "
                        f"e.g. {path / next(iter(dataset))}.")
    yield from _table_rows(str(path), dataset.column_names, lambda cols: dataset.select_columns(cols).to_list(),
                           columns)


def _text(where: str, row: dict, column: str, what: str) -> str:
    value = row.get(column)
    if not isinstance(value, str):
        raise UserError(f"{where}: {what} (column {column!r}) must be text, got "
                        f"{'nothing' if value is None else type(value).__name__}; fix that example or drop it.")
    if not value.strip():
        raise UserError(f"{where}: empty {what} text (column {column!r}); fill it in or drop that example.")
    return value


def _negatives(where: str, row: dict, columns: _Columns, positive: str) -> tuple[str, ...]:
    if not columns.num_negatives:
        return ()
    value = row.get(columns.negatives)
    if isinstance(value, str):  # csv/tsv cells hold a JSON-encoded list
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError:
            raise UserError(f"{where}: the {columns.negatives!r} cell is not a JSON list of strings, e.g. "
                            '["first negative", "second negative"].') from None
    if value is None:
        value = []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise UserError(f"{where}: column {columns.negatives!r} must be a list of non-empty strings.")
    if len(value) < columns.num_negatives:
        raise UserError(f"{where}: {len(value)} hard negatives in column {columns.negatives!r} but "
                        f"num_negatives={columns.num_negatives}; lower num_negatives to at most {len(value)} "
                        "or add negatives to that example.")
    chosen = tuple(value[: columns.num_negatives])
    if positive in chosen:
        raise UserError(f"{where}: a hard negative is identical to the positive; remove it from that example.")
    return chosen


def read_examples(spec: str, *, query_column: str = "query", positive_column: str = "positive",
                  negatives_column: str = "negatives", num_negatives: int = 0,
                  split: Literal["train", "val"] = "train", max_examples: int | None = None) -> list[PairExample]:
    """Reads and validates one data source into examples with split-wide ``positive_id``s.

    Args:
        spec: a ``.jsonl``/``.csv``/``.tsv``/``.parquet`` file, a saved Hugging Face dataset folder,
            ``hf:ORG/NAME[:CONFIG][@SPLIT]`` (:mod:`lightning_embed.hub_data`) or ``builtin:NAME``.
        query_column: column (key) holding the query text.
        positive_column: column holding the positive document.
        negatives_column: column holding the list of hard negatives (JSON-encoded in csv/tsv).
        num_negatives: keep each example's first this many negatives; fewer is an error.
        split: which split of a builtin source, or of a hub source that names none (files have just one).
        max_examples: keep a fixed random subset of this many (nested: a larger subset contains a smaller
            one; independent of the training seed, so seeds compare on the same data).

    Raises:
        UserError: a missing or unreadable source, a missing column, a bad row, or no rows at all.
    """
    columns = _Columns(query_column, positive_column, negatives_column, num_negatives)
    if spec.startswith(BUILTIN_PREFIX):  # builtin rows have fixed keys; the column options are for files
        columns = _Columns("query", "positive", "negatives", num_negatives)
    where_prefix = spec if spec.startswith((BUILTIN_PREFIX, HUB_PREFIX)) else str(Path(spec).expanduser())
    raw = []
    for location, row in _source_rows(spec, columns, split):
        where = f"{where_prefix}: {location}"
        query = _text(where, row, columns.query, "query")
        positive = _text(where, row, columns.positive, "positive")
        raw.append((query, positive, _negatives(where, row, columns, positive)))
    if not raw:
        raise UserError(f"data source {spec!r} holds no examples; it needs one pair per line/row.")
    if max_examples is not None and len(raw) > max_examples:
        keep = torch.randperm(len(raw), generator=torch.Generator().manual_seed(0))[:max_examples]
        raw = [raw[i] for i in sorted(keep.tolist())]
    ids: dict[str, int] = {}
    return [PairExample(q, p, negs, ids.setdefault(p, len(ids))) for q, p, negs in raw]


class _TrainLoader(DataLoader):
    # Stateful in Lightning's sense (state_dict/load_state_dict), so Lightning knows the loader resumes
    # mid-epoch and does not warn of "unreliable results". The position is restored through the data
    # module's own checkpoint state, which Lightning loads before any loader is built (docs/bugs.md:
    # the loader state comes back too late), so loading the loader's copy has nothing left to do.
    def state_dict(self) -> dict[str, int]:
        owner = getattr(self, "owner", None)
        return owner.state_dict() if owner is not None else {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        return None


class _BatchView(torch.utils.data.Dataset):
    # The sampler yields whole batches (lists of indices), so the loader indexes with a list.
    def __init__(self, examples: list[PairExample]):
        self.examples = examples

    def __getitem__(self, indices: list[int]) -> list[PairExample]:
        return [self.examples[i] for i in indices]

    def __len__(self) -> int:
        return len(self.examples)


# ---------------------------------------------------------------------------------------------- the module


class PairDataModule(lightning.LightningDataModule):
    """Query/positive pairs (and optional hard negatives) for contrastive fine-tuning.

    The collator (tokenizer, max lengths, prompts) comes from the model: at setup the data module takes
    ``trainer.lightning_module.make_collator()`` unless ``collator`` was set by hand
    (``datamodule.collator = PairCollator(tokenizer)``). All sources are read and validated at setup.

    Args:
        train: training pairs: a ``.jsonl``, ``.csv``, ``.tsv`` or ``.parquet`` file, a saved Hugging Face
            dataset folder, a hub dataset ``hf:ORG/NAME[:CONFIG][@SPLIT]`` (default split ``train``; loaded
            through ``datasets.load_dataset`` and its cache), or ``builtin:NAME`` (``builtin:stdlib-code``: Python docstrings -> code;
            ``builtin:python-code``: the same from the standard library and the installed dependencies).
        val: validation pairs, same kinds (``hf:`` without a split reads ``validation``, ``dev`` or ``test``);
            None: a builtin ``train`` source's held-out split, else none.
        test: test pairs, same kinds (a builtin source gives its held-out split); None: no test set.
        query_column: column (jsonl key) holding the query text.
        positive_column: column holding the positive (relevant) document.
        negatives_column: column holding a list of hard-negative documents (in csv/tsv a JSON-encoded
            list); only read when ``num_negatives > 0``.
        num_negatives: hard negatives per query (each example keeps its first this many; an example with
            fewer is an error). 0: only the other documents of the batch act as negatives.
        batch_size: training pairs per batch (per process); a query's in-batch negatives are the other
            documents of its batch.
        val_batch_size: validation/test pairs per batch; None: ``batch_size``.
        max_train_examples: train on a fixed random subset of this many pairs (None: all); a larger
            subset contains a smaller one, whatever the seed.
        max_val_examples: validate on a fixed random subset of this many pairs (None: all).
        unique_positives_per_batch: keep pairs that share a positive or a query, or whose hard negative
            is another's positive, out of one training batch (they would be false in-batch negatives).
            Validation batches always do this.
        num_workers: DataLoader worker processes for tokenization (0: in the training process).
        seed: seed of the training order; each epoch gets its own reproducible order.
        group_by_length: build training batches from pairs of similar token length (less padding, faster:
            on ``builtin:stdlib-code`` at batch 16 and max lengths 64, real tokens are 88% of the computed
            positions instead of 58%); batches are still visited in a random, seeded order. It changes which
            pairs share a batch (and so the in-batch negatives), hence it is an option. Sequence packing
            (several texts per row, block-diagonal attention) is deliberately not offered: measured with the
            FLOP model on this data (SmolLM2-135M, batch 16, max lengths 64), grouped batches cost 757M
            hardware FLOP per real token, packing into rows of 64/128/256 tokens 708M/749M/847M where the
            attention runs over the whole packed row (CPU, SDPA with a mask), i.e. at most 6.5% less before
            the cost of the masks and per-text position ids; only a varlen kernel (flash-attention 2 on GPU,
            649M) would pay, 14% below grouped batches.
    """

    def __init__(self, train: str = "builtin:stdlib-code", val: str | None = None, test: str | None = None,
                 query_column: str = "query", positive_column: str = "positive",
                 negatives_column: str = "negatives", num_negatives: int = 0, batch_size: int = 32,
                 val_batch_size: int | None = None, max_train_examples: int | None = None,
                 max_val_examples: int | None = None, unique_positives_per_batch: bool = True,
                 num_workers: int = 0, seed: int = 0, group_by_length: bool = False):
        super().__init__()
        if num_negatives < 0:
            raise UserError(f"num_negatives={num_negatives} must be 0 or more.")
        if batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise UserError(f"batch sizes must be at least 1 (batch_size={batch_size}, val_batch_size={val_batch_size}).")
        if batch_size < 2 and num_negatives == 0:
            raise UserError(f"batch_size={batch_size} with num_negatives=0 leaves a query no negative to contrast "
                            "with; raise batch_size to 2 or more, or add hard negatives (num_negatives > 0).")
        for name, value in (("max_train_examples", max_train_examples), ("max_val_examples", max_val_examples)):
            if value is not None and value < 1:
                raise UserError(f"{name}={value} must be at least 1, or None for all examples.")
        if num_workers < 0:
            raise UserError(f"num_workers={num_workers} must be 0 or more.")
        for spec in (train, val, test):
            if spec is not None and spec.startswith(BUILTIN_PREFIX):
                _builtin(spec)  # an unknown name fails now, not at setup
        self.train, self.val, self.test = train, val, test
        self.query_column, self.positive_column, self.negatives_column = query_column, positive_column, negatives_column
        self.num_negatives, self.batch_size = num_negatives, batch_size
        self.val_batch_size = val_batch_size if val_batch_size is not None else batch_size
        self.max_train_examples, self.max_val_examples = max_train_examples, max_val_examples
        self.unique_positives_per_batch, self.num_workers = unique_positives_per_batch, num_workers
        self.seed, self.group_by_length = seed, group_by_length
        #: Tokenizes batches; taken from the model at setup when left None.
        self.collator: PairCollator | None = None
        self._collator_from_model = False
        self.train_examples: list[PairExample] | None = None
        self.val_examples: list[PairExample] | None = None
        self.test_examples: list[PairExample] | None = None
        self._train_sampler: PairBatchSampler | None = None
        self._resume_position: tuple[int, int] | None = None
        self._token_lengths: tuple[object, list, list[tuple[int, int]]] | None = None

    @property
    def val_source(self) -> str | None:
        """The validation source actually used: ``val``, or a builtin ``train`` source's held-out split."""
        if self.val is None and self.train.startswith(BUILTIN_PREFIX):
            return self.train
        return self.val

    def prepare_data(self) -> None:
        """Mines and caches builtin sources (once, on one process per machine)."""
        for spec in {self.train, self.val_source, self.test} - {None}:
            if spec.startswith(BUILTIN_PREFIX):
                _builtin(spec).prepare()

    def _read(self, spec: str, split: Literal["train", "val"], max_examples: int | None) -> list[PairExample]:
        return read_examples(spec, query_column=self.query_column, positive_column=self.positive_column,
                             negatives_column=self.negatives_column, num_negatives=self.num_negatives,
                             split=split, max_examples=max_examples)

    def setup(self, stage: str | None = None) -> None:
        """Reads and validates the splits the stage needs, and takes the collator from the model.

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, or None for all.
        """
        # A collator the model made is remade for each model: a data module reused across backbones (a
        # sweep) must not tokenize for the previous one. A collator set by hand is kept.
        if (self.collator is None or self._collator_from_model) and self.trainer is not None:
            make = getattr(self.trainer.lightning_module, "make_collator", None)
            if callable(make):
                self.collator, self._collator_from_model = make(), True
        if stage in (None, "fit"):
            if self.train_examples is None:
                self.train_examples = self._read(self.train, "train", self.max_train_examples)
            self._train_sampler = self._make_train_sampler(self.train_examples)  # fails now if no batch fits
        if stage in (None, "fit", "validate") and self.val_examples is None and self.val_source is not None:
            self.val_examples = self._read(self.val_source, "val", self.max_val_examples)
        if stage in (None, "fit", "validate") and self.val_examples is not None:
            self._eval_sampler(self.val_examples, self.val_source)  # fails now, before training, if too few
        if stage in (None, "test") and self.test_examples is None and self.test is not None:
            self.test_examples = self._read(self.test, "val", None)

    def _make_train_sampler(self, examples: list[PairExample]) -> PairBatchSampler:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        if len(examples) < self.batch_size * world:
            raise UserError(f"{self.train} has {len(examples)} training examples, fewer than one batch "
                            f"(batch_size={self.batch_size} x {world} process(es)); lower batch_size or add data.")
        lengths = None
        if self.group_by_length and self.collator is not None and hasattr(self.collator, "token_lengths"):
            # Token counts as this model's collator will cut them; computed once per collator.
            cached = self._token_lengths
            if cached is None or cached[0] is not self.collator or cached[1] is not examples:
                self._token_lengths = cached = (self.collator, examples, self.collator.token_lengths(examples))
            lengths = cached[2]
        sampler = PairBatchSampler(examples, self.batch_size, shuffle=True, drop_last=True, seed=self.seed,
                                   unique=self.unique_positives_per_batch, group_by_length=self.group_by_length,
                                   num_replicas=world, rank=rank, lengths=lengths)
        if len(sampler) == 0:
            distinct = len({e.positive for e in examples})
            raise UserError(f"{self.train} has only {distinct} distinct positives, too few for one batch of "
                            f"{self.batch_size} distinct positives per process; lower batch_size or set "
                            "unique_positives_per_batch=False.")
        return sampler

    def _loader(self, examples: list[PairExample], sampler: PairBatchSampler, kind: type = DataLoader) -> DataLoader:
        if self.collator is None:
            raise UserError("the data module has no collator to tokenize batches: train it with an EmbeddingModule "
                            "(which provides make_collator()), or set datamodule.collator = PairCollator(tokenizer).")
        # A generator of its own: a loader otherwise draws its base seed from the global generator each
        # epoch, so a resumed run (which starts its loaders at other times) would draw other dropout masks.
        return kind(_BatchView(examples), sampler=sampler, batch_size=None, collate_fn=self.collator,
                    num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                    pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(self.seed))

    def _eval_loader(self, examples: list[PairExample] | None, where: str | None) -> DataLoader | list:
        if examples is None:
            return []  # Lightning skips a stage whose loader is empty
        return self._loader(examples, self._eval_sampler(examples, where))

    def _eval_sampler(self, examples: list[PairExample], where: str | None) -> PairBatchSampler:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        return held_out_sampler(examples, self.val_batch_size, world, rank, where or "the held-out set")

    def train_dataloader(self) -> DataLoader:
        """Shuffled (by seed and epoch), conflict-free, full batches."""
        if self.train_examples is None:
            self.setup("fit")
        self._train_sampler = self._make_train_sampler(self.train_examples)  # for the current process layout
        self._train_sampler.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0)
        self.position_sampler(self._train_sampler)
        loader = self._loader(self.train_examples, self._train_sampler, _TrainLoader)
        loader.owner = self
        return loader

    def position_sampler(self, sampler: PairBatchSampler) -> None:
        """Moves ``sampler`` to the position a checkpoint recorded (once; nothing when none was loaded)."""
        if self._resume_position is None:
            return
        epoch, done = self._resume_position
        self._resume_position = None
        if done >= len(sampler):
            # Saved at the end of an epoch: Lightning goes on with the next one, and may iterate the
            # loader before it calls set_epoch for it.
            sampler.set_epoch(epoch + 1)
        else:
            sampler.set_epoch(epoch)
            sampler.skip_once(epoch, done)

    # Lightning restores the loop counters of a mid-epoch checkpoint but restarts a plain DataLoader at the
    # epoch's first batch, which would replay batches; the data module's own checkpoint state (restored
    # before the loaders are built) records how far into the epoch training got, and the sampler skips it.
    def state_dict(self) -> dict[str, int]:
        """The position in the training epoch (saved in checkpoints for an exact mid-epoch resume)."""
        if self.trainer is None or self._train_sampler is None:
            return {}
        # `processed` counts batches whose optimisation step is done (a prefetched batch is not).
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": int(self._train_sampler.epoch), "batches_done": int(done)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Makes the next training loader resume after the batches a checkpoint had trained on."""
        if state_dict:
            self._resume_position = (int(state_dict["epoch"]), int(state_dict["batches_done"]))

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in file order, distinct positives per batch; empty when there is no val set."""
        if self.val_examples is None and self.val_source is not None:
            self.setup("validate")
        return self._eval_loader(self.val_examples, self.val_source)

    def test_dataloader(self) -> DataLoader:
        """Test batches in file order, distinct positives per batch."""
        if self.test is None:
            raise UserError("no test data: set the data module's test option to a file or builtin:NAME.")
        if self.test_examples is None:
            self.setup("test")
        return self._eval_loader(self.test_examples, self.test)
