"""Quiet by default: library messages a user of lightning-embed cannot act on are filtered where they arise.

Each filter names one message and says why it says nothing to the user of this tool: bars of weights being
loaded, Lightning's tips, deprecation notes about code the user did not write, bitsandbytes' note on a
missing CPU kernel (kept when 4-bit quantisation is actually used: then it matters). ``--verbose`` on the
command line or ``LIGHTNING_EMBED_VERBOSE=1`` turns every filter off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

#: Environment variable: show every library message (same as ``--verbose``).
VERBOSE_ENV = "LIGHTNING_EMBED_VERBOSE"

# Warnings about library internals, matched by message.
_WARNING_MESSAGES = (
    ".*does not have many workers.*", ".*LeafSpec.*", ".*`isinstance\\(treespec, LeafSpec\\)`.*",
    ".*Found .* module\\(s\\) in eval mode.*", ".*GPU available but not used.*", ".*tensorboardX.*",
    ".*is smaller than the logging interval.*", ".*num_workers.*", ".*LightningCLI's args parameter.*",
    ".*all_gather is deprecated.*",
    # TensorBoard and CSV share one version folder by design (lightning_embed.training.loggers): nothing is lost.
    ".*Experiment logs directory .* exists and is not empty.*",
    # Lightning's advertisement for its cloud logger, on every Trainer.
    ".*litlogger.*", ".*Tip:.*",
    # Lightning's summary sizes bf16-mixed weights as fp32 (which they are: only the compute is bf16).
    ".*is not supported by the model summary.*",
    # A fit without a validation set hands Lightning an empty list of loaders, on purpose.
    ".*Total length of .* across ranks is zero.*",
)
# Loggers whose records below ERROR are chatter for this tool's user.
_CHATTY_LOGGERS = ("transformers", "lightning.pytorch.utilities.rank_zero", "torch.distributed",
                   "lightning.fabric.utilities.rank_zero")


def verbose() -> bool:
    """Whether the user asked for every library message (``LIGHTNING_EMBED_VERBOSE=1`` or ``--verbose``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class _BitsAndBytesKernelNote(logging.Filter):
    """Holds back bitsandbytes' "Failed to load CPU gemm_4bit_forward" note; :func:`bitsandbytes_note` tells it.

    bitsandbytes logs it on import, and peft and transformers import bitsandbytes whenever it is installed,
    so every run would print it; it concerns 4-bit layers on a CPU only (QLoRA).
    """

    held: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "gemm_4bit_forward" in message and not verbose():
            type(self).held = message
            return False
        return True


_BNB_FILTER = _BitsAndBytesKernelNote()


def install_library_filters() -> None:
    """Filters that must be in place before the libraries import (cheap; imports nothing heavy)."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_BNB_FILTER)


def bitsandbytes_note() -> None:
    """Shows the held-back bitsandbytes kernel note, once: call where 4-bit layers are built."""
    message, _BitsAndBytesKernelNote.held = _BitsAndBytesKernelNote.held, None
    if message:
        logging.getLogger("lightning_embed").warning("bitsandbytes (4-bit layers): %s", message)


def quiet_third_party() -> None:
    """Silences library chatter for the rest of the process (commands call it first); off when verbose."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    install_library_filters()
    if verbose():
        return
    for pattern in _WARNING_MESSAGES:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers.*")
    # Deprecations inside libraries are for their developers, not for the user of a command.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Around a model load: no "Loading weights" bar and no transformers report (restored afterwards).

    Used by the Python API (``lightning_embed.load``), which must not change the caller's logging for good.
    """
    if verbose():
        yield
        return
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


__all__ = ["VERBOSE_ENV", "bitsandbytes_note", "install_library_filters", "quiet_loading", "quiet_third_party",
           "verbose"]
