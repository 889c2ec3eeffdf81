"""Output a log file can read: plain progress lines and tables at natural width when stdout is not a terminal.

A terminal gets rich's live bars; a file, a pipe or a cluster log gets one self-contained line every
``LIGHTNING_EMBED_PROGRESS_EVERY`` seconds (default 20) instead, since a live bar written to a file only
shows its last frame, after the work is done. :class:`PlainProgressBar` is the Lightning callback that
replaces the bar of ``fit``, ``validate``, ``test`` and ``predict`` (:mod:`lightning_embed.cli.progress`);
:class:`Heartbeat` is the same for the loops of other commands (``evaluate``, ``export``, ``sweep run``,
``laws baseline``); :func:`console` is a rich console that renders tables at their natural width in a file
instead of wrapping them mid-value.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import TextIO

from lightning_embed.errors import UserError

#: Environment variable: seconds between two plain progress lines.
EVERY_ENV = "LIGHTNING_EMBED_PROGRESS_EVERY"
DEFAULT_EVERY_S = 20.0  # a line is due at the first step after this: 20 s keeps gaps under 30 s for steps under 10 s
# A file has no width: wide enough that no table or line of ours wraps.
_FILE_WIDTH = 1000


def interactive(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stdout) is a terminal, where live bars render."""
    stream = sys.stdout if stream is None else stream
    if "ipykernel" in sys.modules and stream in (sys.stdout, sys.stderr):
        return True  # a notebook renders live bars although its streams are not terminals
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def console(stderr: bool = False):
    """A rich console: the terminal's width on a terminal, natural width (no wrapping) in a file."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if interactive(stream):
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=_FILE_WIDTH, soft_wrap=True)


def progress_every() -> float:
    """Seconds between plain progress lines (``LIGHTNING_EMBED_PROGRESS_EVERY``, default 20)."""
    raw = os.environ.get(EVERY_ENV, "").strip()
    if not raw:
        return DEFAULT_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise UserError(f"{EVERY_ENV}={raw!r} must be a number of seconds (0 or more).")
    return value


def duration(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03`` style, as progress bars write it."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = round(max(0.0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def number(value: float) -> str:
    """A rate or count, readable: thousands separated, small values to 3 significant digits."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


class Heartbeat:
    """Plain progress lines for a loop of known (or unknown) length, at most one per interval.

    Prints nothing on a terminal unless ``always`` (live bars show progress there), so loops can use it
    unconditionally. The first item and the last (``done()``) always print a line.

    Args:
        label: what is progressing, e.g. ``evaluate`` or ``sweep run``.
        total: the number of items, None if unknown.
        unit: what an item is (``texts``, ``runs``).
        every: seconds between lines; None: :func:`progress_every`.
        stream: where lines go (default stdout).
        always: print even on a terminal.
        rate: show items per second and the ETA (off for a few uneven phases).
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "items", every: float | None = None,
                 stream: TextIO | None = None, always: bool = False, rate: bool = True) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.every = progress_every() if every is None else every
        self.stream = stream
        self.enabled = always or not interactive(stream)
        self.rate = rate
        self.count = 0
        self._t0 = time.monotonic()
        self._last: float | None = None

    def __call__(self, n: int = 1, note: str = "") -> None:
        """Counts ``n`` more items done; prints a line if the interval has passed."""
        self.count += n
        now = time.monotonic()
        if self.enabled and (self._last is None or now - self._last >= self.every):
            self._print(now, note)

    def done(self, note: str = "") -> None:
        """The closing line (with the total time)."""
        if self.enabled:
            self._print(time.monotonic(), note or "done")

    def _print(self, now: float, note: str) -> None:
        self._last = now
        elapsed = now - self._t0
        parts = [f"{self.label}: {self.count:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"]
        if self.rate and elapsed > 0 and self.count:
            parts.append(f"{number(self.count / elapsed)} {self.unit}/s")
        parts.append(f"elapsed {duration(elapsed)}")
        if self.rate and self.total and self.count and self.count < self.total:
            parts.append(f"ETA {duration(elapsed / self.count * (self.total - self.count))}")
        if note:
            parts.append(note)
        print(" · ".join(parts), file=self.stream or sys.stdout, flush=True)


__all__ = ["EVERY_ENV", "Heartbeat", "console", "duration", "interactive", "progress_every"]
