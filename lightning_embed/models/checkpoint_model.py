"""The inference model of a ``fit`` checkpoint, rebuilt without Lightning.

:func:`lightning_embed.load` on a checkpoint needs the backbone with its tuning strategy applied, the
trained weights and the tokenizer: not the training module. Building the
:class:`~lightning_embed.training.module.EmbeddingModule` imports Lightning (and through it torchmetrics and
scipy.signal), which costs several times what loading the weights does; :func:`rebuild_backbone` does
what the module's constructor and ``load_state_dict`` do for the backbone, and nothing else.

The module's accepted arguments (to refuse checkpoints of other versions) are read from the source of
``EmbeddingModule.__init__`` with :mod:`ast`, for the same reason.
"""

from __future__ import annotations

import ast
import importlib.util
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

from lightning_embed.errors import UserError

_PREFIX = "backbone."


@lru_cache(maxsize=1)
def module_arguments() -> frozenset[str]:
    """The argument names of ``EmbeddingModule.__init__`` (without importing the module)."""
    spec = importlib.util.find_spec("lightning_embed.training.module")
    origin = getattr(spec, "origin", None)
    try:
        tree = ast.parse(Path(origin).read_text(encoding="utf-8")) if origin else None
    except (OSError, SyntaxError, ValueError):
        tree = None
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.ClassDef) and node.name == "EmbeddingModule":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args
                    return frozenset(a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]) - {"self"}
    # Installed without sources (a zip, a frozen app): ask the class itself.
    import inspect

    from lightning_embed.training.module import EmbeddingModule

    return frozenset(inspect.signature(EmbeddingModule.__init__).parameters) - {"self"}


def rebuild_backbone(path: str | Path, ckpt: dict[str, Any], hparams: dict[str, Any], *,
                     trust_remote_code: bool = False) -> tuple[nn.Module, Any]:
    """The trained backbone of a checkpoint, ready for inference (adapters merged), and its tokenizer.

    Args:
        path: the checkpoint (for messages).
        ckpt: the checkpoint as read by :func:`lightning_embed.models.encoder.read_checkpoint`.
        hparams: its EmbeddingModule arguments (:func:`lightning_embed.models.encoder.module_hparams`).
        trust_remote_code: from the caller only, never the checkpoint.

    Raises:
        UserError: a backbone that cannot be found, a strategy that cannot be rebuilt, weights that do not fit.
    """
    from lightning_embed.models.backbones import load_backbone, load_tokenizer
    from lightning_embed.strategy import apply_strategy, build_strategy

    backbone = hparams.get("backbone", "smollm2-135m")
    try:
        strategy = build_strategy(hparams.get("tuning", "full"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = load_tokenizer(backbone, trust_remote_code=trust_remote_code)
            raw = load_backbone(backbone, num_layers=hparams.get("num_layers"),
                                attn_implementation=hparams.get("attn_implementation"),
                                trust_remote_code=trust_remote_code)
            if hparams.get("bidirectional"):  # as the module did in training (config.is_causal = False)
                from lightning_embed.models.backbones import describe
                from lightning_embed.models.bidirectional import make_bidirectional

                make_bidirectional(raw, backbone, is_decoder=describe(raw).is_decoder)
            model = apply_strategy(strategy, raw, backbone)
    except UserError as err:
        raise UserError(f"{path}: cannot rebuild its model: {err}") from None
    state = ckpt["state_dict"]
    weights = {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX)}
    # Only the backbone holds weights; anything else is from another version of the module.
    unexpected = [k for k in state if not k.startswith(_PREFIX)]
    # Plain parameters take the checkpoint's tensors as they are (no copy of every weight); quantised ones
    # (QLoRA's 4-bit) must be copied into their own parameter class.
    plain = all(type(p) is nn.Parameter for p in model.parameters())
    result = model.load_state_dict(weights, strict=False, assign=plain)
    unexpected += [_PREFIX + k for k in result.unexpected_keys]
    # A partial checkpoint leaves frozen weights out: they are the backbone's own, loaded above.
    missing = [] if ckpt.get("lightning_embed_partial_state") else list(result.missing_keys)
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise UserError(f"{path}: its weights do not fit the model rebuilt from its hyper-parameters "
                        f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {example!r}); was the "
                        f"backbone {backbone!r} changed since training?")
    exported = strategy.export(model)
    exported.eval()
    return exported, tokenizer


__all__ = ["module_arguments", "rebuild_backbone"]
