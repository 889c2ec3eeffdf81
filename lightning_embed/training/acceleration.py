"""Faster kernels that keep the math: which attention implementation to train with, and when to compile.

Both choices are made when training starts, once the device, the precision and the number of steps are
known, and only when the user left them open (``attn_implementation: null``, ``compile: auto``):

- **Attention.** PyTorch's CPU flash-attention kernel is slow in bf16 for short sequences: for one SmolLM2
  attention layer, forward plus backward, the plain matmul-softmax-matmul ("eager") attention is several times
  faster up to 128 tokens, the two are close at 256 and flash wins at 512; in fp32 flash is never much slower
  (``benchmarks/bench_attention.py``, ``benchmarks/results/attention-cpu-2026-11-28.txt``). So on CPU, in bf16,
  for texts of at most
  :data:`EAGER_MAX_LENGTH` tokens, training uses :func:`fp32_score_attention` (eager, with the scores and
  softmax in fp32 so that it is as accurate as the flash kernel). On CUDA, when batches may be packed,
  training uses FlexAttention with a document block mask (:mod:`lightning_embed.training.flex_packing`): SDPA would
  take a dense 4-D mask and compute every masked score, FlexAttention skips the empty tiles (unmeasured on
  a GPU so far: ``benchmarks/gpu_check.py`` measures it). Everywhere else the backbone keeps its own
  (``sdpa``).
- **Compilation.** ``torch.compile`` fuses the elementwise work (norms, rotary, SiLU, autocast casts) that
  dominates a bf16 step on CPU. It paid for SmolLM2 (full and LoRA) after minutes of compilation and not for
  all-MiniLM-L6-v2 (a small encoder: little elementwise work to fuse;
  ``benchmarks/results/throughput-compile-packed-cpu-2026-11-28.txt``). ``compile: auto`` turns it on for
  decoders in runs of at least
  :data:`AUTO_COMPILE_MIN_STEPS` optimizer steps on a single CPU process with a C++ compiler (what
  inductor needs there), for tuning strategies that do not opt out
  (:attr:`~lightning_embed.strategy.TuningStrategy.auto_compile`; QLoRA does). On GPUs ``auto`` leaves
  it off: unmeasured so far; ``compile: true`` turns it on anywhere.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import torch

from lightning_embed.training.flex_packing import FLEX_ATTENTION, flex_available, register_flex_attention

#: Longest text (tokens) for which CPU bf16 training switches to eager attention.
EAGER_MAX_LENGTH = 256
#: Shortest run (optimizer steps) that ``compile: auto`` compiles.
AUTO_COMPILE_MIN_STEPS = 500


#: Name under which :func:`fp32_score_attention` is registered with Hugging Face's attention interface.
FP32_SCORE_ATTENTION = "lightning_embed_fp32_scores"


def training_attention(device: torch.device, precision: str, max_length: int, *, packs: bool = False) -> str | None:
    """The attention implementation to train with when the user chose none, or None to keep the backbone's.

    Args:
        device: the training device.
        precision: Lightning's precision string (``"bf16-mixed"``, ``"32-true"``, ...).
        max_length: the longest text a batch may hold (the larger of the query and document max lengths).
        packs: batches may be packed (``pack_sequences`` true or auto, no GradCache or ``split_by_length``).
    """
    if device.type == "cpu" and precision.startswith("bf16") and max_length <= EAGER_MAX_LENGTH:
        register_fp32_score_attention()
        return FP32_SCORE_ATTENTION
    if device.type == "cuda" and packs and flex_available():
        register_flex_attention()
        return FLEX_ATTENTION
    return None


def fp32_score_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                         **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with the scores and softmax in fp32, the value product in the autocast dtype.

    Hugging Face's eager attention multiplies queries and keys in bf16 under autocast, which rounds every
    score to 8 significant bits before the softmax: its output errs several times more than the flash
    kernel's (``test_fp32_score_attention_is_as_accurate_as_sdpa_and_handles_gqa_and_masks``). In fp32
    the error is the flash kernel's, for a little more attention time.
    Signature and return value of Hugging Face's attention interface (``AttentionInterface``).
    """
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # grouped-query attention: each key/value head serves ``groups`` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    with torch.autocast(device_type=query.device.type, enabled=False):
        scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask, torch.finfo(torch.float32).min)
            else:
                scores = scores + attention_mask.float()
        probs = torch.softmax(scores, dim=-1)
        probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs.to(value.dtype), value)
    return output.transpose(1, 2).contiguous(), probs


def register_fp32_score_attention() -> None:
    """Makes :data:`FP32_SCORE_ATTENTION` a valid ``attn_implementation`` (with eager's additive masks)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(FP32_SCORE_ATTENTION, fp32_score_attention)
    AttentionMaskInterface.register(FP32_SCORE_ATTENTION, eager_mask)


def switch_training_attention(backbone: torch.nn.Module, device: torch.device, precision: str,
                              max_length: int, *, packs: bool = False) -> tuple[str | None, str | None]:
    """Switches ``backbone`` to :func:`training_attention`'s choice, if any (arguments as there).

    Returns:
        ``(previous, note)``: the implementation to restore after training (None: nothing was switched) and a
        line saying what happened (None: nothing to say).
    """
    from lightning_embed.models.backbones import hf_model

    model = hf_model(backbone)
    wanted = training_attention(device, precision, max_length, packs=packs)
    current = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if model is None or wanted is None or wanted == current:
        return None, None
    if wanted == FLEX_ATTENTION and any(getattr(model.config, name, 0.0) or 0.0 for name in
                                        ("attention_dropout", "attention_probs_dropout_prob")):
        return None, f"attention: kept {current} (FlexAttention has no attention dropout, this backbone uses it)"
    try:
        model.set_attn_implementation(wanted)
    except (ValueError, NotImplementedError, AttributeError) as err:  # a model without HF's attention interface
        return None, f"attention: kept {current} ({type(model).__name__} cannot switch: {str(err).splitlines()[0]})"
    if wanted == FLEX_ATTENTION:
        return current, (f"attention: FlexAttention for training (CUDA: packed rows with a document block mask, "
                         f"empty tiles skipped), {current} again after fit")
    return current, (f"attention: eager with fp32 scores for training (CPU, bf16, texts <= {max_length} tokens: "
                     f"faster than {current} there), {current} again after fit")


@dataclass(frozen=True)
class CompileDecision:
    """Whether ``compile: auto`` compiles, and the reason (printed at the start of training)."""

    compile: bool
    reason: str


def auto_compile(device: torch.device, steps: int, world_size: int, strategy_compiles: bool,
                 decoder: bool = True) -> CompileDecision:
    """What ``compile: auto`` does for this run (see the module docstring for the measurements).

    Args:
        device: the training device.
        steps: optimizer steps the run plans (``trainer.estimated_stepping_batches``).
        world_size: number of training processes.
        strategy_compiles: the tuning strategy's :attr:`~lightning_embed.strategy.TuningStrategy.auto_compile`.
        decoder: the backbone is a decoder (encoders such as all-MiniLM-L6-v2 ran slower compiled).
    """
    if device.type != "cpu":
        return CompileDecision(False, f"not on {device.type} (auto compiles on CPU only; set compile: true)")
    if world_size > 1:
        return CompileDecision(False, "several processes (set compile: true to compile each)")
    if not decoder:
        return CompileDecision(False, "an encoder (all-MiniLM-L6-v2 ran 0.96x compiled; set compile: true to try)")
    if not strategy_compiles:
        return CompileDecision(False, "the tuning strategy opts out (custom kernels)")
    if steps < AUTO_COMPILE_MIN_STEPS:
        return CompileDecision(False, f"{steps} steps < {AUTO_COMPILE_MIN_STEPS}: compilation would not pay")
    if not _has_cxx_compiler():
        return CompileDecision(False, "no C++ compiler found (inductor needs one on CPU)")
    return CompileDecision(True, f"{steps} steps >= {AUTO_COMPILE_MIN_STEPS}")


#: Modules this process has compiled, and dynamo's recompile limit before the first (see make_room_to_compile).
_compiled = {"modules": 0, "base_limit": None}


def make_room_to_compile() -> str | None:
    """Gives the module about to be compiled dynamo's full recompile budget; returns a note when it had to.

    Dynamo keeps its compiled graphs per code object, and every backbone of one class shares its class's
    ``forward``: modules compiled earlier in this process (a sweep or notebook fitting one module after
    another) use up the same recompile limit, and once it is reached dynamo runs the new module eager,
    saying nothing. So each module compiled after the first raises the limit by the budget the first one
    had, keeping the earlier modules' graphs (identical modules still share one).
    """
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    limit = int(getattr(dynamo_config, name))
    if _compiled["base_limit"] is None:
        _compiled["base_limit"] = limit
    earlier = _compiled["modules"]
    _compiled["modules"] += 1
    if not earlier:
        return None
    raised = limit + int(_compiled["base_limit"])
    setattr(dynamo_config, name, raised)
    if hasattr(dynamo_config, "accumulated_recompile_limit"):
        dynamo_config.accumulated_recompile_limit = max(int(dynamo_config.accumulated_recompile_limit), raised)
    return (f"dynamo's recompile limit raised {limit} -> {raised}: {earlier} module(s) compiled earlier in this "
            "process share its graph cache")


def _has_cxx_compiler() -> bool:
    try:
        from torch._inductor import config

        cxx = config.cpp.cxx[0] if config.cpp.cxx and config.cpp.cxx[0] else None
    except Exception:  # noqa: BLE001 - a torch without inductor: no compiling
        return False
    return any(shutil.which(c) for c in ([cxx] if cxx else ["g++", "clang++", "c++"]))
