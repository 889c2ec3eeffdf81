"""Fixtures shared by the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evaluation.task_files import WORDS, jsonl


@pytest.fixture()
def task_files(tmp_path) -> dict[str, Path]:
    """One small file (or folder) per local task kind."""
    files = {}
    files["sts"] = jsonl(tmp_path / "sts.jsonl", [
        {"text1": f"{w} story", "text2": f"{w} story" if i % 2 == 0 else f"{WORDS[(i + 5) % 12]} tale {i}",
         "score": 5.0 if i % 2 == 0 else float(i % 3)} for i, w in enumerate(WORDS)])
    # Each query's positive is the identical text, so any encoder ranks it first: nDCG@10 must be 1.
    files["retrieval"] = jsonl(tmp_path / "pairs.jsonl", [
        {"query": f"{w} bravo {i}", "positive": f"{w} bravo {i}", "negatives": [f"{w} other {i}"]}
        for i, w in enumerate(WORDS)])
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    jsonl(beir / "queries.jsonl", [{"_id": f"q{i}", "text": f"{w} question"} for i, w in enumerate(WORDS[:5])])
    jsonl(beir / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": f"{w} question"} for i, w in enumerate(WORDS)])
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(5))
    (beir / "qrels" / "test.tsv").write_text(qrels)
    files["beir"] = beir
    table = "text\tlabel\n" + "".join(f"{WORDS[i % 4]} {WORDS[(i + 1) % 4]} thing {i}\t{'ab'[i % 2]}\n"
                                      for i in range(16))
    (tmp_path / "cls.tsv").write_text(table)
    files["classification"] = tmp_path / "cls.tsv"
    files["clustering"] = jsonl(tmp_path / "clu.jsonl",
                                [{"text": f"{WORDS[i % 3]} story {i}", "label": WORDS[i % 3]} for i in range(15)])
    return files
