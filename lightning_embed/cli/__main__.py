"""``python -m lightning_embed.cli``: the same as ``lightning-embed``."""

from lightning_embed.cli.main import main

main()
