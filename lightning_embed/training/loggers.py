"""Default logs of a fit: TensorBoard, with a CSV file beside it in the same folder.

Lightning's own default is one logger (TensorBoard when installed, else CSV). A fit of lightning-embed
writes both into ``DEFAULT_ROOT/lightning_logs/version_N/``: the event file for ``tensorboard --logdir``
and ``metrics.csv`` for scripts and the model card of ``lightning-embed export`` (which reads it).
"""

from __future__ import annotations

import os
from typing import Any


def default_loggers(root: str | os.PathLike | None, name: str = "lightning_logs") -> list[Any]:
    """A TensorBoard and a CSV logger sharing one ``version_N`` folder under ``root``.

    Args:
        root: the trainer's ``default_root_dir`` (None: the working directory).
        name: the folder under ``root`` that holds the versions.
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    save_dir = os.fspath(root) if root is not None else os.getcwd()
    tensorboard = TensorBoardLogger(save_dir=save_dir, name=name)
    # Same version as TensorBoard's (decided from the folders there now), so both land in one folder.
    csv = CSVLogger(save_dir=save_dir, name=name, version=tensorboard.version)
    return [tensorboard, csv]


__all__ = ["default_loggers"]
