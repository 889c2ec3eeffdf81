"""Run records read as observations (lightning_embed/recipe/records.py)."""

from __future__ import annotations


def test_freeze_block_counts_become_shares():
    from lightning_embed.recipe.records import method_setting

    assert method_setting("freeze", {"blocks": 6}, {"num_blocks": 24}) == {"share": 0.25}
    assert method_setting("freeze", {"blocks": 0.5}) == {"share": 0.5}
    assert method_setting("lora", {"rank": 32, "alpha": 64.0}) == {"rank": 32}
    assert method_setting("full", {}) == {}
