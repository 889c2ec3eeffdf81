"""Pair files and varied-length examples shared by the data tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from lightning_embed.data.batches import PairExample

ROWS = [
    {"query": f"how do I do task {i}?", "positive": f"def task_{i}(): return {i}",
     "negatives": [f"def other_{i}_{j}(): return -{j}" for j in range(3)]}
    for i in range(12)
]


def write(path: Path, rows: list[dict] = ROWS, columns=("query", "positive", "negatives")) -> Path:
    """Writes rows in the format the suffix names (csv/tsv negatives as JSON-encoded strings)."""
    rows = [{new: row[old] for old, new in zip(("query", "positive", "negatives"), columns) if old in row}
            for row in rows]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix in (".csv", ".tsv"):
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()} for row in rows)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:  # a saved Hugging Face dataset folder
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def bad(tmp_path, name: str, content: str) -> str:
    """A file of the given content, to be refused."""
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return str(path)


def varied_length_examples(n: int = 480) -> list[PairExample]:
    """Examples whose query and document lengths vary independently, as in real data."""
    return [PairExample(" ".join(["word"] * (2 + (i * 7) % 20)) + f" q{i}",
                        " ".join(["tok"] * (3 + (i * 13) % 90)) + f" d{i}", (), i) for i in range(n)]


def real_token_share(batches, examples, collate) -> float:
    """The share of computed token positions that are real tokens, not padding."""
    real = computed = 0
    for b in batches:
        batch = collate([examples[i] for i in b])
        for enc in (batch.queries, batch.documents):
            real += int(enc["attention_mask"].sum())
            computed += enc["attention_mask"].numel()
    return real / computed
