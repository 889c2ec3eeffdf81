"""Pairs from Hugging Face hub datasets: ``hf:ORG/NAME[:CONFIG][@SPLIT]`` as a data source.

The dataset is loaded with :func:`datasets.load_dataset`, so its cache (``HF_DATASETS_CACHE``), token and
``HF_HUB_OFFLINE`` apply exactly as they do for any ``datasets`` user: a dataset downloaded once loads
offline afterwards. ``NAME`` may also be the folder of a downloaded dataset repository (e.g.
``huggingface-cli download --repo-type dataset ORG/NAME --local-dir DIR``, or a ``git clone`` of it): that is
how ``datasets`` itself treats a folder of data files with a dataset card, so an offline mirror goes through
the same loader, configs and splits as the hub.

Rows then go through the same column options, validation, hard negatives and prompts as file sources
(:func:`lightning_embed.data.reading.read_examples`); a negatives column of plain text (the triplet layout
``anchor, positive, negative`` of many hub datasets) is one hard negative per row.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lightning_embed.errors import UserError

HUB_PREFIX = "hf:"
#: Splits tried, in order, for a held-out role (``val``/``test``) when the spec names none.
_HELD_OUT_SPLITS = ("validation", "dev", "test")


@dataclass(frozen=True)
class HubSpec:
    """A parsed ``hf:`` source.

    Attributes:
        name: the dataset id (``ORG/NAME``) or a local dataset repository folder.
        config: the dataset's configuration (subset), or None for its default.
        split: the split, or None to choose by role (``train``; ``validation``/``dev``/``test`` for held-out).
    """

    name: str
    config: str | None = None
    split: str | None = None

    def __str__(self) -> str:
        config, split = (f":{self.config}" if self.config else ""), (f"@{self.split}" if self.split else "")
        return HUB_PREFIX + self.name + config + split


def is_hub_spec(spec: str) -> bool:
    """Whether a data source string names a hub dataset (``hf:...``)."""
    return spec.startswith(HUB_PREFIX)


def parse_hub_spec(spec: str) -> HubSpec:
    """Splits ``hf:ORG/NAME[:CONFIG][@SPLIT]`` into its parts.

    Raises:
        UserError: no dataset name, or an empty config or split.
    """
    body = spec[len(HUB_PREFIX):] if is_hub_spec(spec) else spec
    split = config = None
    # The split and config come last and never hold a "/", which tells them from a folder's path.
    if "@" in body and "/" not in body.rsplit("@", 1)[1]:
        body, split = body.rsplit("@", 1)
        if not split:
            raise UserError(f"data source {spec!r} ends in '@' with no split; write hf:ORG/NAME@SPLIT, e.g. @train.")
    if ":" in body and "/" not in body.rsplit(":", 1)[1]:
        body, config = body.rsplit(":", 1)
        if not config:
            raise UserError(f"data source {spec!r} has ':' but no config; write hf:ORG/NAME:CONFIG or drop the ':'.")
    if not body:
        raise UserError(f"data source {spec!r} names no dataset; write hf:ORG/NAME[:CONFIG][@SPLIT], "
                        "e.g. hf:sentence-transformers/all-nli:pair@train.")
    return HubSpec(os.path.expanduser(body) if body.startswith(("~", ".", "/")) else body, config, split)


def _download_hint(hub: HubSpec) -> str:
    args = ", ".join(repr(a) for a in (hub.name, hub.config) if a)
    return (f"download it once with network (HF_HUB_OFFLINE=0 python -c \"import datasets; "
            f"datasets.load_dataset({args})\"), or use a local copy: hf:DIR for a downloaded dataset "
            "repository folder, or a save_to_disk folder as the path")


def _offline() -> bool:
    flags = (os.environ.get(v, "").strip().lower() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f in ("1", "true", "yes", "on") for f in flags)


def _call(hub: HubSpec, spec: str, fn: Callable[[], Any]) -> Any:
    """Runs a ``datasets`` call, turning its failures into one-line UserErrors about ``spec``."""
    import datasets

    try:
        return fn()
    except ConnectionError:  # raised for an unreachable hub and for HF_HUB_OFFLINE alike
        why = "HF_HUB_OFFLINE is set" if _offline() else "no network"
        raise UserError(f"hub dataset {hub.name!r} ({spec}) is not in the datasets cache and the Hugging Face hub "
                        f"is unreachable ({why}); {_download_hint(hub)}.") from None
    except datasets.exceptions.DatasetNotFoundError:
        raise UserError(f"hub dataset {hub.name!r} ({spec}) does not exist or is private (log in with "
                        "`hf auth login` for a private one); check the name on huggingface.co/datasets.") from None
    except ValueError as err:
        message = " ".join(str(err).split())
        if "BuilderConfig" in message or "Config name is missing" in message:
            configs = _config_names(hub)
            raise UserError(f"{spec}: the dataset has no config {hub.config!r}"
                            + (f"; its configs: {', '.join(configs)}" if configs else "")
                            + " (write hf:ORG/NAME:CONFIG).") from None
        raise UserError(f"{spec}: cannot load the dataset ({message}).") from None
    except (FileNotFoundError, datasets.exceptions.DataFilesNotFoundError) as err:
        raise UserError(f"{spec}: {' '.join(str(err).split()).rstrip('.') or 'no data files found'}.") from None


def _config_names(hub: HubSpec) -> list[str]:
    import datasets

    try:
        return list(datasets.get_dataset_config_names(hub.name))
    except Exception:  # noqa: BLE001 - only a hint for an error message already being raised
        return []


def split_names(hub: HubSpec, spec: str | None = None) -> list[str]:
    """The splits of a hub dataset's config (from its card or cached metadata; no data is downloaded)."""
    import datasets

    return list(_call(hub, spec or str(hub), lambda: datasets.get_dataset_split_names(hub.name, hub.config)))


def resolve_split(hub: HubSpec, role: Literal["train", "val"], spec: str | None = None) -> str:
    """The split a source reads: the one named, else ``train`` for training and the first of
    ``validation``/``dev``/``test`` for held-out data (a dataset with a single split: that one).

    Raises:
        UserError: the named split does not exist, or none fits the role; the message lists the splits.
    """
    spec = spec or str(hub)
    names = split_names(hub, spec)
    if hub.split is not None:
        if hub.split not in names:
            raise UserError(f"{spec}: no split {hub.split!r}; the dataset's splits are {', '.join(names)} "
                            "(write hf:ORG/NAME@SPLIT).")
        return hub.split
    wanted = ("train",) if role == "train" else _HELD_OUT_SPLITS
    for name in wanted:
        if name in names:
            return name
    if len(names) == 1:
        return names[0]
    raise UserError(f"{spec}: say which split to read ({', '.join(names)}), e.g. {spec}@{names[0]}.")


def load_hub_dataset(spec: str, role: Literal["train", "val"] = "train"):
    """The :class:`datasets.Dataset` of one ``hf:`` source's split (downloaded or read from the cache).

    Args:
        spec: ``hf:ORG/NAME[:CONFIG][@SPLIT]`` (``NAME`` may be a local dataset repository folder).
        role: ``train`` or ``val``: which split to take when the spec names none (:func:`resolve_split`).

    Raises:
        UserError: offline and not cached, an unknown dataset, config or split.
    """
    import datasets

    hub = parse_hub_spec(spec)
    if hub.name.startswith(("/", ".")) and not os.path.isdir(hub.name):
        raise UserError(f"{spec}: folder {hub.name} does not exist; hf: takes a hub id ORG/NAME or the folder of "
                        "a downloaded dataset repository.")
    split = resolve_split(hub, role, spec)
    return _call(hub, spec, lambda: datasets.load_dataset(hub.name, hub.config, split=split))


def hub_rows(spec: str, columns, role: Literal["train", "val"]) -> Iterator[tuple[str, dict]]:
    """(``"row N"``, row) of a hub source, only the needed columns, checked as a file's columns are.

    Args:
        spec: the ``hf:`` source.
        columns: the data module's column choice (:class:`lightning_embed.data.reading._Columns`).
        role: ``train`` or ``val``.
    """
    from lightning_embed.data.reading import _table_rows

    dataset = load_hub_dataset(spec, role)
    feature = dataset.features.get(columns.negatives) if columns.num_negatives else None
    # Triplet datasets (anchor, positive, negative) hold one negative as text, not a list.
    one_negative = getattr(feature, "dtype", None) in ("string", "large_string")

    def rows(cols: list[str]) -> list[dict]:
        found = dataset.select_columns(cols).to_list()
        return [{**r, columns.negatives: [r[columns.negatives]]} for r in found] if one_negative else found

    yield from _table_rows(spec, dataset.column_names, rows, columns)


def hub_shards(spec: str, role: Literal["train", "val"] = "train", dataset=None) -> list[Path]:
    """The cached Arrow files of one ``hf:`` split, in row order, to stream (``streaming: true``).

    ``datasets`` downloads a split once and keeps it on disk as Arrow files; a stream reads them a record
    batch at a time, memory-mapped, so the split never has to fit in memory (only on disk), and training
    needs no network once the split is cached.

    Args:
        spec: the ``hf:`` source.
        role: ``train`` or ``val`` (which split a spec without one names).
        dataset: the split, when the caller has loaded it already.

    Raises:
        UserError: as :func:`load_hub_dataset`, or a split that is not a set of cached files.
    """
    dataset = dataset if dataset is not None else load_hub_dataset(spec, role)
    files = [Path(entry["filename"]) for entry in dataset.cache_files]
    if not files or dataset._indices is not None:
        raise UserError(f"{spec}: the split is not a set of cached Arrow files that can be streamed; set "
                        "streaming: false to read it into memory.")
    return files


def hub_fingerprint(spec: str, role: Literal["train", "val"] = "train") -> dict[str, Any]:
    """The run record's entry for a hub source: its split, row count, a short sha256 of the split's cached
    Arrow files and ``datasets``' own fingerprint (which follows the dataset's revision and data files)."""
    import hashlib

    dataset = load_hub_dataset(spec, role)
    digest = hashlib.sha256()
    for entry in dataset.cache_files:
        with open(entry["filename"], "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return {"source": spec, "split": resolve_split(parse_hub_spec(spec), role, spec), "pairs": dataset.num_rows,
            "sha256": digest.hexdigest()[:16], "fingerprint": str(dataset._fingerprint)}


__all__ = ["HUB_PREFIX", "HubSpec", "hub_fingerprint", "hub_rows", "hub_shards", "is_hub_spec", "load_hub_dataset",
           "parse_hub_spec", "resolve_split", "split_names"]
