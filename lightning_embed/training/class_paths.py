"""Classes a config names by dotted path (a tuning strategy, a loss): import one, and check its options.

Both plug-in points (:mod:`lightning_embed.strategy`, :mod:`lightning_embed.losses`) take
``{class_path: my_module.MyClass, init_args: {...}}``; they share these two checks and raise their own errors.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any


def import_subclass(path: str, base: type, what: str, base_name: str) -> tuple[type | None, str | None]:
    """``(class, None)`` when ``path`` names a subclass of ``base``, else ``(None, why not)``.

    Args:
        path: ``module.Class``.
        base: the class it must derive from.
        what: what the class is, for the message (``"loss class"``).
        base_name: ``base`` as a user knows it (``"torch.nn.Module"``).
    """
    module_name, _, attr = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        return None, f"cannot import {what} {path!r}: {err}."
    if not (isinstance(cls, type) and issubclass(cls, base)):
        return None, f"{what} {path!r} is not a {base_name} subclass."
    return cls, None


def unknown_options(cls: type, kwargs: dict[str, Any]) -> str | None:
    """Why ``cls(**kwargs)`` would not take some of ``kwargs`` (naming the options it has), or None."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    unknown = [k for k in kwargs if k not in params or k == "self"]
    if not unknown:
        return None
    valid = ", ".join(p for p in params if p != "self") or "none"
    return f"has no option(s) {', '.join(unknown)}; its options: {valid}"


__all__ = ["import_subclass", "unknown_options"]
