"""The model catalogue: candidate backbones, their parameter counts, and how to load each for ``fit``.

A family is one YAML file (the shipped ones live in ``lightning_embed/resources/catalogue/``)::

    schema_version: 1
    family: pythia
    description: EleutherAI's Pythia suite (GPT-NeoX) ...
    base_config: {model_type: gpt_neox, vocab_size: 50304, ...}   # fields every member shares
    models:
      - name: pythia-14m
        backbone: EleutherAI/pythia-14m      # what `fit` loads (model.backbone)
        num_layers: null                     # optional truncation (model.num_layers)
        config: {hidden_size: 128, num_hidden_layers: 6, ...}   # merged over base_config
        counts: {total: ..., non_embedding: ..., ...}           # optional cache, see below

``config`` is a Hugging Face configuration (``model_type`` plus its fields). Parameter counts are derived
from it by building the model on the ``meta`` device (no weights, no download) and counting with
:func:`lightning_embed.models.backbones.count_parameters`. Building needs torch and transformers (seconds), so the
shipped files carry the counts (``counts:``) and the recipe never builds a model; a user's file without
counts is counted once and the result cached in ``$LIGHTNING_EMBED_CACHE/catalogue-counts.json``.
``python -m lightning_embed.recipe.catalogue FILE...`` (re)writes the ``counts`` of family files.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from lightning_embed.errors import UserError
from lightning_embed.models import cache_dir

SCHEMA_VERSION = 1
#: Bump when the way counts are derived changes, so stale cached counts are recomputed.
COUNTS_VERSION = 3


@dataclass(frozen=True)
class ModelCounts:
    """Parameter counts of one architecture, everything the recipe needs to cost every method.

    Attributes:
        total: every parameter (tied weights once).
        non_embedding: without parameters whose name contains ``emb`` (the study's N).
        num_blocks: transformer blocks.
        block: parameters of all blocks together (blocks are identical, so one is ``block / num_blocks``).
        final_norm: parameters of the norm after the blocks (frozen-block tuning trains it with the top
            blocks); 0 for post-LN encoders such as BERT.
        bias: parameters named ``*.bias`` outside the head and embeddings (what bias-only tuning trains,
            as counted in N_t).
        lora_in_out: sum over every linear layer inside the blocks of ``in + out``; LoRA of rank r on all
            of them trains ``r * lora_in_out`` parameters.
    """

    total: int
    non_embedding: int
    num_blocks: int
    block: int
    final_norm: int
    bias: int
    lora_in_out: int


@dataclass(frozen=True)
class ModelEntry:
    """One candidate backbone.

    Attributes:
        name: the catalogue name (``pythia-410m``).
        family: the family it belongs to.
        backbone: what ``fit`` loads (``model.backbone``): alias, hub id or folder.
        num_layers: truncation passed as ``model.num_layers`` (None = all blocks).
        config: the Hugging Face configuration the counts derive from.
        counts: its parameter counts.
    """

    name: str
    family: str
    backbone: str
    num_layers: int | None
    config: dict[str, Any] = field(repr=False)
    counts: ModelCounts


@dataclass(frozen=True)
class Family:
    """A family of candidate backbones (one catalogue file)."""

    name: str
    description: str
    models: tuple[ModelEntry, ...]
    source: str


# ---- counting -------------------------------------------------------------------------------------------


def config_key(config: dict[str, Any]) -> str:
    """A stable hash of a configuration (the key of the counts cache)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(f"{COUNTS_VERSION}:{text}".encode()).hexdigest()[:20]


def meta_model(config: dict[str, Any]):
    """Builds the base model (no LM head) of a configuration on the ``meta`` device: shapes, no memory.

    Raises:
        UserError: the configuration has no or an unknown ``model_type``.
    """
    import torch
    from transformers import AutoConfig, AutoModel

    config = dict(config)
    model_type = config.pop("model_type", None)
    if not model_type:
        raise UserError(f"a catalogue configuration needs a model_type; got keys {sorted(config)}.")
    try:
        hf_config = AutoConfig.for_model(model_type, **config)
    except ValueError as err:
        raise UserError(f"cannot build a configuration of model_type {model_type!r}: {err}") from None
    with torch.device("meta"):
        return AutoModel.from_config(hf_config)


def count_model(model) -> ModelCounts:
    """Counts a (meta or real) base model; see :class:`ModelCounts` for what each number is."""
    from torch import nn

    from lightning_embed.models.backbones import count_parameters, find_blocks
    from lightning_embed.strategy import backbone_parts

    total, non_emb = count_parameters(model)
    _, blocks = find_blocks(model)
    # The strategies' own split (embeddings / blocks / final norm / head), so the counts here are what
    # freeze and bias tuning actually train: the head (BERT's pooler) never trains, it gets no gradient.
    parts = backbone_parts(model)
    params = dict(model.named_parameters())
    final_norm = sum(params[n].numel() for n in parts.final_norm_params)
    head = set(parts.head_params)
    # N_t as the FLOP model counts it: trainable parameters whose name lacks "emb".
    bias = sum(p.numel() for name, p in params.items()
               if name.endswith("bias") and name not in head and "emb" not in name)
    lora_in_out = 0
    for module in blocks.modules():
        if isinstance(module, nn.Linear):
            lora_in_out += module.in_features + module.out_features
        elif type(module).__name__ == "Conv1D":  # GPT-2's transposed linear: weight is (in, out)
            lora_in_out += sum(module.weight.shape)
    return ModelCounts(
        total=total, non_embedding=non_emb, num_blocks=len(blocks),
        block=sum(p.numel() for p in blocks.parameters()), final_norm=final_norm, bias=bias,
        lora_in_out=lora_in_out,
    )


def _cache_file() -> Path:
    return cache_dir() / "catalogue-counts.json"


def _read_cache() -> dict[str, dict[str, int]]:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


@lru_cache(maxsize=256)
def _counts_cached(key: str, config_json: str) -> ModelCounts:
    cached = _read_cache().get(key)
    if cached is not None:
        try:
            return ModelCounts(**cached)
        except TypeError:
            pass  # an older layout: recount
    counts = count_model(meta_model(json.loads(config_json)))
    try:
        cache = _read_cache()
        cache[key] = asdict(counts)
        path = _cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(cache)}")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs the recount next time
    return counts


def counts_for(config: dict[str, Any]) -> ModelCounts:
    """Parameter counts of a configuration: from the disk cache, else by building it on ``meta`` once."""
    return _counts_cached(config_key(config), json.dumps(config, sort_keys=True, default=str))


# ---- loading families -----------------------------------------------------------------------------------


def _catalogue_dir() -> Path:
    # Next to the package's modules (package data `resources/**/*`); importlib.resources would fail while
    # lightning_embed is a namespace package (no __init__.py).
    return Path(__file__).resolve().parent.parent / "resources" / "catalogue"


@lru_cache(maxsize=1)
def shipped_families() -> dict[str, str]:
    """Family name -> file name of every family shipped with the package."""
    out = {}
    for item in sorted(_catalogue_dir().iterdir(), key=lambda p: p.name):
        if item.name.endswith((".yaml", ".yml")):
            out[item.name.rsplit(".", 1)[0]] = item.name
    return out


def _yaml_load(text: str):
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader keeps `recipe` fast
    return yaml.load(text, Loader=loader)


def parse_family(data: Any, source: str) -> Family:
    """Validates a family mapping (one catalogue file) and counts models that carry no cached counts.

    Raises:
        UserError: every problem of the file at once.
    """
    problems: list[str] = []
    if not isinstance(data, dict):
        raise UserError(f"{source}: a catalogue file must be a mapping with 'family' and 'models'.")
    if data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        problems.append(f"schema_version {data.get('schema_version')!r} is not supported (expected {SCHEMA_VERSION})")
    name = data.get("family")
    if not isinstance(name, str) or not name:
        problems.append("'family' (a name) is missing")
    base = data.get("base_config") or {}
    if not isinstance(base, dict):
        problems.append("'base_config' must be a mapping")
        base = {}
    raw_models = data.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        problems.append("'models' must be a non-empty list")
        raw_models = []
    entries = []
    for i, raw in enumerate(raw_models):
        where = f"models[{i}]"
        if not isinstance(raw, dict):
            problems.append(f"{where} must be a mapping")
            continue
        missing = [k for k in ("name", "backbone") if not raw.get(k)]
        if missing:
            problems.append(f"{where} lacks {', '.join(missing)}")
            continue
        config = {**base, **(raw.get("config") or {})}
        num_layers = raw.get("num_layers")
        if num_layers is not None:
            if not isinstance(num_layers, int) or num_layers < 1:
                problems.append(f"{where} ({raw['name']}): num_layers must be a positive integer")
                continue
            config["num_hidden_layers"] = num_layers
        if "model_type" not in config:
            problems.append(f"{where} ({raw['name']}): the configuration has no model_type")
            continue
        entries.append((raw, config, num_layers))
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems) + ".")
    models = []
    for raw, config, num_layers in entries:
        cached = raw.get("counts")
        counts = ModelCounts(**cached) if isinstance(cached, dict) else counts_for(config)
        models.append(ModelEntry(str(raw["name"]), name, str(raw["backbone"]), num_layers, config, counts))
    return Family(name, str(data.get("description", "")), tuple(models), source)


@lru_cache(maxsize=32)
def load_shipped_family(name: str) -> Family:
    """A family shipped with the package, by name (``pythia``)."""
    file = shipped_families()[name]
    text = (_catalogue_dir() / file).read_text()
    return parse_family(_yaml_load(text), f"catalogue/{file}")


def load_family_file(path: str | Path) -> Family:
    """A user's family file (same format as the shipped ones; ``counts`` may be left out)."""
    path = Path(path).expanduser()
    try:
        data = _yaml_load(path.read_text())
    except OSError as err:
        raise UserError(f"cannot read catalogue file {str(path)!r}: {err.strerror or err}.") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {err}") from None
    return parse_family(data, str(path))


def model_from_folder(path: str | Path) -> ModelEntry:
    """A candidate from a local Hugging Face model folder (its ``config.json``; no weights are read)."""
    folder = Path(path).expanduser()
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{str(folder)!r} has no readable config.json: {err}.") from None
    # Drop bookkeeping fields so equal architectures share one cache entry.
    dropped = {"transformers_version", "architectures"}
    config = {k: v for k, v in config.items() if not k.startswith("_") and k not in dropped}
    return ModelEntry(folder.name, "local", str(folder), None, config, counts_for(config))


def resolve_models(spec: str | None, default_family: str = "pythia") -> list[ModelEntry]:
    """The candidates named by ``--models``.

    Args:
        spec: comma-separated shipped family names (``pythia``), model names of a shipped family
            (``pythia-410m``), family files (``my.yaml``) or local model folders; ``all`` for every shipped
            family; None for ``default_family``.
        default_family: the family used when ``spec`` is None.

    Raises:
        UserError: every unknown name at once, each with the closest known names.
    """
    items = [s.strip() for s in (spec or default_family).split(",") if s.strip()]
    families = shipped_families()
    by_model = {m.name: m for fam in families for m in load_shipped_family(fam).models}
    out: list[ModelEntry] = []
    problems: list[str] = []
    for item in items:
        path = Path(item).expanduser()
        if item == "all":
            out.extend(m for fam in families for m in load_shipped_family(fam).models)
        elif item in families:
            out.extend(load_shipped_family(item).models)
        elif item in by_model:
            out.append(by_model[item])
        elif item.endswith((".yaml", ".yml")) and path.is_file():
            out.extend(load_family_file(path).models)
        elif path.is_dir():
            out.append(model_from_folder(path))
        else:
            close = difflib.get_close_matches(item, [*families, *by_model], n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(f"{item!r}{hint}")
    if problems:
        raise UserError(
            f"unknown model famil{'ies' if len(problems) > 1 else 'y'} or model(s): {'; '.join(problems)}. "
            f"Shipped families: {', '.join(families)} (or 'all'); a family file (.yaml) or a local model "
            "folder also works."
        )
    unique: dict[tuple[str, int | None], ModelEntry] = {}
    for m in out:
        unique.setdefault((m.backbone, m.num_layers), m)
    return list(unique.values())


# ---- refreshing shipped counts --------------------------------------------------------------------------


def refresh_counts(path: str | Path) -> Family:
    """Recounts every model of a family file and writes the counts into it (meta models; seconds each)."""
    path = Path(path)
    data = _yaml_load(path.read_text())
    base = data.get("base_config") or {}
    for raw in data["models"]:
        config = {**base, **(raw.get("config") or {})}
        if raw.get("num_layers") is not None:
            config["num_hidden_layers"] = raw["num_layers"]
        raw["counts"] = asdict(count_model(meta_model(config)))
    header = "".join(line + "\n" for line in path.read_text().splitlines() if line.startswith("#"))
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, width=110, default_flow_style=None))
    return load_family_file(path)


if __name__ == "__main__":  # python -m lightning_embed.recipe.catalogue lightning_embed/resources/catalogue/*.yaml
    for arg in sys.argv[1:]:
        fam = refresh_counts(arg)
        print(f"{arg}: {len(fam.models)} models counted")
