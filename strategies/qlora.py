"""QLoRA: 4-bit (NF4) frozen base weights through bitsandbytes, plus LoRA adapters in full precision."""

from __future__ import annotations

import copy
import functools
from typing import TYPE_CHECKING, Literal

from lightning_embed.strategy import backbone_parts, raise_if_problems
from strategies.lora import LoRATuning

if TYPE_CHECKING:  # torch only inside methods: the recipe reads these classes without it
    from torch import nn

_DTYPES = ("float32", "bfloat16", "float16")  # torch dtype names


class QLoRATuning(LoRATuning):
    """QLoRA (Dettmers et al., 2023): LoRA on a base whose block weights are stored in 4 bits.

    Every linear layer of every block is quantised (NF4 by default, with double quantisation of the
    scales), whether or not it gets an adapter; embeddings, norms and biases stay in full precision.
    Weight memory of the blocks drops about 7x against fp32; the adapters train exactly as in ``lora``.
    Works on CPU (bitsandbytes >= 0.48 has a CPU backend) and CUDA.

    Quantisation is deterministic, so a checkpoint needs only the adapters: re-applying the strategy to
    the same base weights rebuilds the same 4-bit codes. :meth:`export` dequantises the base and merges
    the adapters into a plain fp32 Hugging Face model.

    Example:
        >>> from lightning_embed.strategy import build_strategy
        >>> build_strategy({"name": "qlora", "rank": 16}).quant_type
        'nf4'
    """

    name = "qlora"
    auto_compile = False  # bitsandbytes 4-bit matmuls: inductor cannot trace them

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        embeddings: Literal["frozen", "lora", "train"] = "frozen",
        rslora: bool = False,
        quant_type: Literal["nf4", "fp4"] = "nf4",
        double_quant: bool = True,
        compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    ) -> None:
        """Configures QLoRA.

        Args:
            rank: rank r of each adapter.
            alpha: scaling numerator; the update is scaled by alpha / rank (alpha / sqrt(rank) with rslora).
            dropout: dropout on the adapter's input during training, in [0, 1).
            target_modules: which linear layers of the blocks get adapters (name suffixes such as
                ``q_proj``); default every one. All block linear layers are quantised regardless.
            embeddings: the input token embeddings stay ``frozen``, get a LoRA adapter (``lora``), or
                ``train`` fully; they are never quantised.
            rslora: rank-stabilised scaling alpha / sqrt(rank).
            quant_type: 4-bit data type: ``nf4`` (normal float, the QLoRA paper's) or ``fp4``.
            double_quant: also quantise the per-block scales (saves about 0.4 bit per weight).
            compute_dtype: dtype the 4-bit weights are dequantised to for each matmul; ``bfloat16``
                is faster on GPUs, ``float32`` matches the exported model most closely.
        """
        self.quant_type = quant_type
        self.double_quant = double_quant
        self.compute_dtype = compute_dtype
        super().__init__(rank, alpha, dropout, target_modules, embeddings, rslora)

    def _option_problems(self) -> list[str]:
        problems = super()._option_problems()
        if self.quant_type not in ("nf4", "fp4"):
            problems.append(f"quant_type must be 'nf4' or 'fp4', got {self.quant_type!r}")
        if not isinstance(self.double_quant, bool):
            problems.append(f"double_quant must be true or false, got {self.double_quant!r}")
        if self.compute_dtype not in _DTYPES:
            problems.append(f"compute_dtype must be one of {', '.join(_DTYPES)}, got {self.compute_dtype!r}")
        return problems

    def validate(self, backbone: nn.Module) -> list[str]:
        problems = super().validate(backbone)
        try:
            import bitsandbytes  # noqa: F401
        except Exception as err:  # ImportError, or a backend that fails to initialise
            problems.append(f"qlora needs bitsandbytes (pip install 'bitsandbytes>=0.48'): {type(err).__name__}: {err}")
        return problems

    def apply(self, backbone: nn.Module) -> nn.Module:
        # A bad option must fail before any weight is touched.
        raise_if_problems(self.name, self.validate(backbone))
        from lightning_embed.cli.quiet import bitsandbytes_note

        bitsandbytes_note()  # its note on a missing CPU kernel concerns 4-bit layers: shown only here
        for name in backbone_parts(backbone).linear_layers(backbone):
            _replace(backbone, name, self._quantise(backbone.get_submodule(name)))
        # peft wraps 4-bit layers with its bitsandbytes-aware LoRA layer only when the model says it is
        # 4-bit (transformers sets this flag when it quantises at load time; here we quantised ourselves).
        # The flag is removed again so nothing downstream treats the model as loaded by transformers.
        had_flag = "is_loaded_in_4bit" in vars(backbone)
        backbone.is_loaded_in_4bit = True
        try:
            return super().apply(backbone)
        finally:
            if not had_flag:
                del backbone.is_loaded_in_4bit

    def _quantise(self, layer: nn.Module) -> nn.Module:
        import bitsandbytes as bnb
        import torch
        from torch import nn

        weight = layer.weight.detach()
        if type(layer).__name__ == "Conv1D":  # GPT-2 stores (in, out); Linear4bit wants (out, in)
            weight = weight.t()
        out_features, in_features = weight.shape
        q = _linear4bit_class()(
            in_features,
            out_features,
            bias=layer.bias is not None,
            compute_dtype=getattr(torch, self.compute_dtype),
            compress_statistics=self.double_quant,
            quant_type=self.quant_type,
            device="meta",  # no throw-away fp32 allocation: both tensors are replaced below
        )
        # Moving an unquantised Params4bit to a real device is what quantises it (bitsandbytes' API),
        # so this quantises on whatever device the backbone is on (CPU here, CUDA if already moved).
        q.weight = bnb.nn.Params4bit(
            weight.float().contiguous(),
            requires_grad=False,
            compress_statistics=self.double_quant,
            quant_type=self.quant_type,
        ).to(weight.device)
        if layer.bias is not None:
            q.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        # bitsandbytes' CPU inference fast path repacks the weight in place on the first eval forward
        # (AVX512-BF16 machines); the repacked layout then breaks training, dequantisation (export) and
        # in_features below the 64-value quantisation block. Keep one layout throughout.
        q.support_avx512bf16_for_cpu = False
        return q

    def export(self, model: nn.Module) -> nn.Module:
        """A plain fp32 Hugging Face model: 4-bit weights dequantised, adapters merged in fp32.

        Works on a copy (the trained model stays usable). The result differs from the trained model only
        by float rounding: the 4-bit codes dequantise to exactly the weights the forward pass used.
        """
        import bitsandbytes as bnb
        import torch
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer

        model = copy.deepcopy(model)
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        for name, module in list(base.named_modules()):
            if isinstance(module, LoraLayer) and isinstance(module.get_base_layer(), bnb.nn.Linear4bit):
                linear = _dequantised(module.get_base_layer())
                with torch.no_grad():
                    for adapter in module.active_adapters:
                        if adapter in module.lora_A:
                            linear.weight += module.get_delta_weight(adapter).float()
                _replace(base, name, linear)
        for name, module in list(base.named_modules()):
            if isinstance(module, bnb.nn.Linear4bit):  # quantised layers that had no adapter
                _replace(base, name, _dequantised(module))
        # What is left of peft (adapters on the embeddings, if any) merges the ordinary way.
        return model.merge_and_unload() if isinstance(model, PeftModel) else base


@functools.cache
def _linear4bit_class() -> type[nn.Module]:
    """bitsandbytes' ``Linear4bit`` whose ``state_dict`` loads back with ``load_state_dict``.

    Built on first use so that listing strategies does not import bitsandbytes.
    """
    import bitsandbytes as bnb
    from bitsandbytes.functional import QuantState

    class QuantLinear4bit(bnb.nn.Linear4bit):
        # Linear4bit saves its quantisation statistics as extra ``weight.*`` entries (absmax, quant_map,
        # ...) but does not read them back, so ``load_state_dict(model.state_dict())`` fails with
        # "unexpected keys" (and Lightning loads checkpoints strictly). Read them back, so a state dict
        # restores exactly the 4-bit codes and statistics it was saved with.
        def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                                  unexpected_keys, error_msgs):
            stats_prefix = prefix + "weight."
            stats = {k[len(stats_prefix):]: v for k, v in state_dict.items() if k.startswith(stats_prefix)}
            rest = {k: v for k, v in state_dict.items() if not k.startswith(stats_prefix)}
            super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                          error_msgs)
            if stats:
                self.weight.quant_state = QuantState.from_dict(stats, device=self.weight.device)

    return QuantLinear4bit


def _dequantised(layer: nn.Module) -> nn.Linear:
    import bitsandbytes.functional as F
    from torch import nn

    weight = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    out = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    out.weight = nn.Parameter(weight, requires_grad=False)
    if layer.bias is not None:
        out.bias = nn.Parameter(layer.bias.detach().float().clone(), requires_grad=False)
    return out


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)
