"""The one exception type for user mistakes.

Anything raised as a :class:`UserError` is printed by the CLI as a single line (what is wrong and how to
fix it) with a non-zero exit status and no traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A user mistake: bad input, a missing file, an option that makes no sense."""
