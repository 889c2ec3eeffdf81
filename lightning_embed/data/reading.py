"""Reading query/document pairs: ``.jsonl``, ``.csv``/``.tsv``, ``.parquet``, a saved Hugging Face dataset
folder, ``hf:ORG/NAME`` or ``builtin:NAME``, each row validated with its file and line
(a bad row fails before training starts, in one :class:`~lightning_embed.errors.UserError` line naming it)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from lightning_embed.data import python_code_source, stdlib_source
from lightning_embed.data.batches import PairExample
from lightning_embed.data.hub import HUB_PREFIX, hub_rows
from lightning_embed.errors import UserError

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
            ``hf:ORG/NAME[:CONFIG][@SPLIT]`` (:mod:`lightning_embed.data.hub`) or ``builtin:NAME``.
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
