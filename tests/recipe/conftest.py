"""Fixtures shared by the recipe tests."""

from __future__ import annotations

import pytest

from lightning_embed.recipe import laws_fit
from tests.recipe.runs_synthetic import TRUE, write_synthetic_runs


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Runs of all four methods, fitted once: (runs path, laws)."""
    root = tmp_path_factory.mktemp("laws")
    runs = write_synthetic_runs(root / "runs.jsonl", list(TRUE))
    laws = laws_fit([runs], root / "laws.yaml", quiet=True)
    return runs, laws
