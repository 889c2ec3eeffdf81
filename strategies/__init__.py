"""Built-in tuning strategies, registered through the ``lightning_embed.strategies`` entry points
exactly like a third party's (the core never imports this package)."""
