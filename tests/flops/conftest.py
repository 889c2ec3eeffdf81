"""Fixtures shared by the FLOP tests."""

from __future__ import annotations

import json

import pytest

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    with path.open("w") as f:
        for i in range(48):  # varied lengths, so padding and per-row lengths matter
            query = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 5)) + f" {i}"
            doc = f"def f{i}(x):\n    return x + {i}  # " + " ".join(WORDS[: 1 + i % 7])
            f.write(json.dumps({"query": query, "positive": doc}) + "\n")
    return str(path)
