"""``laws plot`` (lightning_embed/recipe/plot.py)."""

from __future__ import annotations

import pytest

from lightning_embed.errors import UserError
from lightning_embed.recipe import laws_plot


def test_laws_plot_writes_pngs(fitted, tmp_path):
    runs, laws = fitted
    both = laws_plot(laws.path, [runs], tmp_path / "laws.png")
    frontier = laws_plot(laws.path, None, tmp_path / "frontier.png", kind="frontier")
    for path in (both, frontier):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    with pytest.raises(UserError) as err:
        laws_plot(tmp_path / "none.yaml", [tmp_path / "none.jsonl"], tmp_path / "x.pdf")
    assert "laws file" in str(err.value) and "run-record" in str(err.value) and ".png" in str(err.value)
