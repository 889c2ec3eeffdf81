"""Run records: one JSON line per fit, appended atomically to a runs file, read back for fitting laws.

Schema, version 1 (``schema_version: 1``). Every record has every field; ``null`` where unknown (only ``data``,
added later within version 1, may be missing from older records: it reads as ``{}``).

=======================  =========================================================================
field                    meaning
=======================  =========================================================================
schema_version           1
run_id                   random hex id of the run (a resumed run keeps its id)
created                  when the line was written, ISO 8601 UTC
status                   ``completed``, ``failed`` (an exception) or ``interrupted`` (Ctrl+C, SIGTERM)
error                    one line naming the exception, for failed/interrupted runs
backbone                 what ``model.backbone`` named (alias, folder, hub id)
num_layers               blocks kept (``model.num_layers``), or null for all
num_blocks               blocks of the backbone as trained
total_params             every parameter once (4-bit weights at their logical size)
non_embedding_params     N: base-model parameters whose name lacks ``emb`` (adapters excluded)
trainable_params         parameters that require grad
tuning                   tuning strategy name (``full``, ``lora``, a plugin's name)
tuning_args              its options (``{"rank": 32}``)
steps                    optimizer steps taken
examples                 training examples (query + positive + negatives) seen, all ranks
batch_size               examples per optimizer step, all ranks
tokens                   real (attention-mask) tokens seen, queries and documents, all ranks
padded_tokens            computed positions (real + padding), all ranks
flops_model              model FLOP (see ``accounting``): what laws and budgets use
flops_hardware           hardware FLOP: padded positions, recomputation, GradCache's extra forward
accounting               ``exact`` (derived from the module) or ``paper`` (the study's 6N-style formulas)
budget                   the FLOP budget (``max_flops``) or null
val_loss                 held-out contrastive loss (the last validation), or null
initial_val_loss         held-out loss before the first training step (L0), or null
val_examples             held-out examples those losses average over, or null
metrics                  the last validation's retrieval metrics: ``ndcg@10``, ``mrr@10``, ``recall@1``...
metrics_step             optimizer step at which those were measured
seed                     the global seed (``seed_everything``), or null
world_size               processes that trained
duration_s               wall time of the fit, seconds (summed over resumptions)
train_time_s             time spent in training steps, seconds (validation excluded)
versions                 ``torch``, ``lightning``, ``transformers``, ``lightning-embed``
hparams                  the LightningModule's hyper-parameters
config                   the run's configuration (the CLI's, or model/data/trainer settings)
data                     fingerprint of each data source (``train``, ``val``, ``test``; null if absent):
                         ``source``, ``sha256`` (16 hex digits of the pairs or file) and, for a builtin
                         source, ``split``, ``pairs`` and the ``versions`` it was mined from; ``{}`` when
                         unknown (a data module other than PairDataModule, records written before it existed)
source_examples          training examples drawn from each named source of a mixture (``{}``: one source)
=======================  =========================================================================

Appending is atomic: the file is opened with ``O_APPEND`` and the whole line goes in one ``os.write``
(under an advisory lock where the OS has one), then ``fsync``. The file is never rewritten; a damaged
line is reported with its line number and left for the user to fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from lightning_embed.errors import UserError

SCHEMA_VERSION = 1
RunStatus = Literal["completed", "failed", "interrupted"]
STATUSES: tuple[str, ...] = ("completed", "failed", "interrupted")


@dataclass
class RunRecord:
    """One fit, as appended to the runs file (see the module docstring for every field)."""

    backbone: str
    tuning: str
    status: RunStatus = "completed"
    tuning_args: dict[str, Any] = field(default_factory=dict)
    total_params: int = 0
    non_embedding_params: int = 0
    trainable_params: int = 0
    num_layers: int | None = None
    num_blocks: int | None = None
    steps: int = 0
    examples: int = 0
    batch_size: int | None = None
    tokens: int = 0
    padded_tokens: int = 0
    flops_model: float = 0.0
    flops_hardware: float = 0.0
    accounting: Literal["exact", "paper"] = "exact"
    budget: float | None = None
    val_loss: float | None = None
    initial_val_loss: float | None = None
    val_examples: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_step: int | None = None
    seed: int | None = None
    world_size: int = 1
    duration_s: float = 0.0
    train_time_s: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    source_examples: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (NaN and infinities become null; odd objects become strings)."""
        return _jsonable(dataclasses.asdict(self))

    def to_json(self) -> str:
        """One line of strict JSON (no newline inside, none at the end)."""
        return json.dumps(self.to_dict(), allow_nan=False, sort_keys=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> RunRecord:
        """Validates and builds a record.

        Raises:
            ValueError: a missing or mistyped field, or a schema this version cannot read (the message
                is one clause; :func:`read_runs` adds the file and line).
        """
        if not isinstance(data, dict):
            raise ValueError(f"a record is a JSON object, not {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            if isinstance(version, int) and version > SCHEMA_VERSION:
                raise ValueError(f"schema_version {version} is newer than this lightning-embed reads "
                                 f"({SCHEMA_VERSION}); upgrade lightning-embed")
            raise ValueError(f"schema_version must be {SCHEMA_VERSION}, got {version!r}")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                if f.name in _ADDED_FIELDS:
                    continue  # a record written before the field existed: its default
                raise ValueError(f"field {f.name!r} is missing")
            value = data[f.name]
            kinds, nullable = _FIELD_TYPES[f.name]
            if value is None and nullable:
                kwargs[f.name] = None
                continue
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                names = "/".join(k.__name__ for k in kinds) + (" or null" if nullable else "")
                raise ValueError(f"field {f.name!r} must be {names}, got {json.dumps(value)[:60]}")
            kwargs[f.name] = value
        if kwargs["status"] not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {kwargs['status']!r}")
        # Unknown extra fields (from a newer minor writer) are ignored rather than rejected.
        return cls(**kwargs)


_NUM = (int, float)
#: Fields added within schema version 1: records written before them stay readable (and read as the default).
_ADDED_FIELDS = frozenset({"data", "initial_val_loss", "val_examples", "source_examples"})
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "backbone": ((str,), False), "tuning": ((str,), False), "status": ((str,), False),
    "tuning_args": ((dict,), False), "total_params": ((int,), False), "non_embedding_params": ((int,), False),
    "trainable_params": ((int,), False), "num_layers": ((int,), True), "num_blocks": ((int,), True),
    "steps": ((int,), False), "examples": ((int,), False), "batch_size": ((int,), True),
    "tokens": ((int,), False), "padded_tokens": ((int,), False), "flops_model": (_NUM, False),
    "flops_hardware": (_NUM, False), "accounting": ((str,), False), "budget": (_NUM, True),
    "val_loss": (_NUM, True), "initial_val_loss": (_NUM, True), "val_examples": ((int,), True),
    "metrics": ((dict,), False), "metrics_step": ((int,), True),
    "seed": ((int,), True), "world_size": ((int,), False), "duration_s": (_NUM, False),
    "train_time_s": (_NUM, False), "versions": ((dict,), False), "hparams": ((dict,), False),
    "config": ((dict,), False), "data": ((dict,), False), "source_examples": ((dict,), False),
    "error": ((str,), True), "run_id": ((str,), False),
    "created": ((str,), False), "schema_version": ((int,), False),
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(value, "ndim", 1) == 0:
        return _jsonable(item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if hasattr(value, "items"):  # AttributeDict, Namespace-like mappings
        with contextlib.suppress(Exception):
            return _jsonable(dict(value.items()))
    return str(value)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (used for hparams and configs of arbitrary objects)."""
    return _jsonable(value)


# ---------------------------------------------------------------------------------------------- writing


def check_runs_file(path: str | os.PathLike) -> Path:
    """Makes sure the runs file can be appended to (creating it and its folder), before training starts.

    Raises:
        UserError: the file or its folder cannot be created or is not writable.
    """
    target = Path(path).expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.close(fd)
    except OSError as err:
        raise UserError(f"cannot append run records to {str(target)!r}: {err.strerror or err}; choose another "
                        "runs_file (or runs_file=null to keep no record).") from None
    return target


@contextlib.contextmanager
def _locked(fd: int):
    try:
        import fcntl
    except ImportError:  # Windows: O_APPEND alone
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def append_run(path: str | os.PathLike, record: RunRecord) -> None:
    """Appends one record as one line, atomically; never rewrites what is there.

    The line goes out in a single ``os.write`` on an ``O_APPEND`` descriptor, so concurrent writers
    (several runs sharing a file) never interleave. If the file's last line lacks its newline (a
    writer died mid-line), a newline is written first so that the new record stays readable.
    """
    data = (record.to_json() + "\n").encode("utf-8")
    fd = os.open(Path(path).expanduser(), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        with _locked(fd):
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            written = os.write(fd, data)
            while written < len(data):  # only on a full disk or a signal; finish the line
                written += os.write(fd, data[written:])
            os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- reading


def read_runs(path: str | os.PathLike) -> list[RunRecord]:
    """Every record of a runs file, in order (blank lines skipped).

    Raises:
        UserError: a missing file, or damaged lines (each named by file and line number; the file is
            left as it is).
    """
    target = Path(path).expanduser()
    try:
        raw = target.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read runs file {str(target)!r}: {err.strerror or err}.") from None
    records, problems = [], []
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            records.append(RunRecord.from_dict(json.loads(line.decode("utf-8"))))
        except UnicodeDecodeError:
            problems.append(f"line {number}: not UTF-8 text")
        except json.JSONDecodeError as err:
            problems.append(f"line {number}: not valid JSON ({err.msg} at column {err.colno})")
        except ValueError as err:
            problems.append(f"line {number}: {err}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"damaged run record in {str(target)!r}: " + "; ".join(problems[:3]) + more
                        + ". Fix or delete those lines; the file was not changed.")
    return records


def installed_versions(dists, missing: str | None = None) -> dict[str, str]:
    """``{distribution: installed version}``; one not installed maps to ``missing``, or is left out when None."""
    out = {}
    for dist in dists:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            if missing is not None:
                out[dist] = missing
    return out


__all__ = ["RunRecord", "RunStatus", "SCHEMA_VERSION", "append_run", "check_runs_file", "installed_versions",
           "jsonable", "read_runs"]
