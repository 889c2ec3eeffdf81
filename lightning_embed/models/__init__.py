"""Backbones in, embedding models out: loading, pooling, attention, encoding, export."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where converted models and cached counts live (``$LIGHTNING_EMBED_CACHE`` or ``~/.cache/lightning-embed``).

    Here, not in :mod:`~lightning_embed.models.backbones`, so that light commands (``recipe``) find it without
    importing torch.
    """
    return Path(os.environ.get("LIGHTNING_EMBED_CACHE", Path.home() / ".cache" / "lightning-embed"))
