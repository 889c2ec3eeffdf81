"""A small pairs file for the command-line tests."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def write_pairs(path: Path, n: int = 48, negatives: int = 0) -> Path:
    """A learnable toy task: the query names two words, the positive repeats them in a sentence."""
    with path.open("w") as f:
        for i in range(n):
            a, b = WORDS[i % len(WORDS)], WORDS[(i * 7 + 3) % len(WORDS)]
            row = {"query": f"{a} {b} {i}", "positive": f"the {a} and the {b} number {i} here"}
            if negatives:
                row["negatives"] = [f"the {WORDS[(i + j + 5) % len(WORDS)]} thing {i + j}" for j in range(negatives)]
            f.write(json.dumps(row) + "\n")
    return path
