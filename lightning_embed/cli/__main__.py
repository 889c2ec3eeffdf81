"""``python -m lightning_embed.cli``: the same as ``lightning-embed``."""

from lightning_embed.cli.app import main

main()
