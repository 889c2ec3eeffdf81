"""Fixtures shared by the data tests."""

from __future__ import annotations

import pytest

from lightning_embed.models.backbones import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer(tiny_backbones):
    return load_tokenizer(tiny_backbones["llama"])
