"""Fingerprints of training data: what identifies the exact pairs a run saw, for its run record.

A builtin source's pairs depend on the interpreter and the installed package versions (they are mined from
the code on the machine), and a file may be edited between runs. Runs on different data must not be pooled
into one scaling law without anyone noticing, so every run record carries, for each of its sources, a short
sha256 (16 hex digits) of the pairs or file it used:

- ``builtin:NAME``: the digest of the split's mined pairs, the pair count and the versions they were mined
  from (``python`` and, for ``builtin:python-code``, each mined package);
- ``hf:ORG/NAME``: the sha256 of the split's cached Arrow files and ``datasets``' fingerprint;
- a file: the sha256 of its bytes; a folder (a saved Hugging Face dataset): of its files' relative paths and
  bytes, in sorted order.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from lightning_embed.errors import UserError

_CHUNK = 1 << 20


def pairs_digest(pairs: Iterable[dict]) -> str:
    """A short sha256 (16 hex digits) of mined pairs: package, module, qualname, query and code, in order."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.get("package"), p["module"], p["qualname"], p["query"], p["positive"]],
                            ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def builtin_fingerprint(name: str) -> dict[str, Any]:
    """``{"train": sha, "val": sha, "versions": {...}, "sizes": {"train": n, "val": m}}`` of a builtin source.

    A builtin module may define ``fingerprint()`` and ``sizes()``; otherwise its ``load_pairs()`` (each pair
    with a ``split`` key) is digested and the versions are the Python version's.

    Raises:
        UserError: an unknown builtin name.
    """
    from lightning_embed.data.reading import BUILTIN_PREFIX, _builtin

    module = _builtin(BUILTIN_PREFIX + name)
    if hasattr(module, "fingerprint"):
        return {**module.fingerprint(), "sizes": module.sizes()}
    pairs = module.load_pairs()
    splits = {s: [p for p in pairs if p["split"] == s] for s in ("train", "val")}
    return {"train": pairs_digest(splits["train"]), "val": pairs_digest(splits["val"]),
            "versions": {"python": platform.python_version()},
            "sizes": {s: len(v) for s, v in splits.items()}}


def is_mined(name: str) -> bool:
    """Whether a builtin source's pairs are cached already (its fingerprint is then cheap; else it mines)."""
    from lightning_embed.data.reading import BUILTIN_PREFIX, _builtin

    module = _builtin(BUILTIN_PREFIX + name)
    if hasattr(module, "is_cached"):
        return bool(module.is_cached())
    return module.cache_path().is_file()


def file_sha256(path: str | Path) -> str:
    """Short sha256 (16 hex digits) of a file's bytes, or of a folder's files (relative path and bytes)."""
    target = Path(path)
    h = hashlib.sha256()
    files = sorted((p for p in target.rglob("*") if p.is_file()), key=lambda p: p.relative_to(target).as_posix()) \
        if target.is_dir() else [target]
    for file in files:
        if target.is_dir():
            h.update(file.relative_to(target).as_posix().encode("utf-8") + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()[:16]


def source_fingerprint(spec: str, split: Literal["train", "val"] = "train") -> dict[str, Any]:
    """The record entry of one data source as a run used it (a builtin source's ``split``).

    Returns:
        ``{"source", "split", "pairs", "sha256", "versions"}`` for ``builtin:NAME``;
        ``{"source", "sha256", "bytes"}`` for a file or folder; ``{"source", "split", "pairs", "sha256",
        "fingerprint"}`` for ``hf:`` (:func:`lightning_embed.data.hub.hub_fingerprint`).

    Raises:
        UserError: an unknown builtin name, or a path that cannot be read.
    """
    from lightning_embed.data.hub import HUB_PREFIX
    from lightning_embed.data.reading import BUILTIN_PREFIX

    if spec.startswith(HUB_PREFIX):
        from lightning_embed.data.hub import hub_fingerprint

        return hub_fingerprint(spec, split)
    if spec.startswith(BUILTIN_PREFIX):
        found = builtin_fingerprint(spec[len(BUILTIN_PREFIX):])
        return {"source": spec, "split": split, "pairs": found["sizes"][split], "sha256": found[split],
                "versions": found["versions"]}
    target = Path(spec)
    try:
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) if target.is_dir() \
            else target.stat().st_size
        return {"source": spec, "sha256": file_sha256(target), "bytes": size}
    except OSError as err:
        raise UserError(f"cannot read {spec!r} to fingerprint it: {err.strerror or err}.") from None


def data_fingerprints(datamodule: Any) -> dict[str, Any]:
    """``{"train": entry, "val": entry, "test": entry}`` for a :class:`~lightning_embed.data.datamodule.PairDataModule`
    (an absent split: None); ``{}`` for any other data module (its sources are unknown)."""
    from lightning_embed.data.datamodule import PairDataModule

    if not isinstance(datamodule, PairDataModule):
        return {}
    specs = {"train": (datamodule.train, "train"), "val": (datamodule.val_source, "val"),
             "test": (datamodule.test, "val")}
    found = {role: source_fingerprint(spec, split) if spec is not None else None
             for role, (spec, split) in specs.items()
             if role != "train" or (datamodule.sources is None and not getattr(datamodule, "streaming", False))}
    if getattr(datamodule, "streaming", False):
        from lightning_embed.data.streaming import stream_fingerprint

        found["train"] = stream_fingerprint(datamodule.train) if datamodule.sources is None else {
            "sources": {name: stream_fingerprint(s.path) for name, s in datamodule.sources.items()}}
    elif datamodule.sources is not None:  # a mixture: each named source's fingerprint
        found["train"] = {"sources": {name: source_fingerprint(s.path, "train")
                                      for name, s in datamodule.sources.items()}}
    return found


__all__ = ["builtin_fingerprint", "data_fingerprints", "file_sha256", "is_mined", "pairs_digest", "source_fingerprint"]
