"""The ``lightning-embed`` command: its subcommands, and what it prints."""


def __getattr__(name: str):
    # `main` on first use: importing a sibling (quiet, terminal) must not import the whole command and torch.
    if name == "main":
        from lightning_embed.cli.app import main

        return main
    raise AttributeError(f"module 'lightning_embed.cli' has no attribute {name!r}")


__all__ = ["main"]
