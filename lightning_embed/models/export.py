"""``lightning-embed export``: a checkpoint becomes a Hugging Face + sentence-transformers folder.

The folder holds the backbone with adapters merged (the tuning strategy's ``export``), in
``model.safetensors`` with its ``config.json`` and tokenizer, so ``transformers.AutoModel`` loads it; the
sentence-transformers files (``modules.json``, ``sentence_bert_config.json``, ``1_Pooling``, ``2_Normalize``,
``config_sentence_transformers.json`` with the query/document prompts), so ``SentenceTransformer(folder)``
embeds exactly as the trained module did; ``lightning_embed.json`` for :func:`lightning_embed.load`; and a
model card (``README.md``).

The sentence-transformers files use the long-standing ``sentence_transformers.models.*`` module names and
one-flag-per-mode pooling config, which every sentence-transformers release from 2.x to 6.x reads (the per-side
query and document lengths are added only when the installed release reads them: 6.x).

The folder is written beside its destination under a temporary name and renamed into place at the end, so
a failure never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from lightning_embed.cli.terminal import Heartbeat
from lightning_embed.errors import UserError
from lightning_embed.flops.records import installed_versions
from lightning_embed.models.encoder import (
    EXPORT_CONFIG,
    ST_POOLING,
    checkpoint_info,
    load_module,
    module_hparams,
    read_checkpoint,
)
from lightning_embed.models.model_card import model_card

EXPORT_FORMAT_VERSION = 1


def export(checkpoint: str, output: str | None = None, overwrite: bool = False,
           trust_remote_code: bool = False) -> None:
    """Export a checkpoint as a Hugging Face and sentence-transformers model folder.

    The folder loads with ``transformers.AutoModel.from_pretrained(DIR)`` (adapters merged),
    ``sentence_transformers.SentenceTransformer(DIR)`` (same embeddings as the trained model, prompts
    ``query`` and ``document``) and ``lightning_embed.load(DIR)``; it carries a model card.

    Args:
        checkpoint: a ``.ckpt`` file written by ``lightning-embed fit``, or the distributed checkpoint folder of
            an FSDP2 / sharded run (read as is, no consolidation step).
        output: the folder to create.
        overwrite: replace ``output`` if it exists and is not empty.
        trust_remote_code: run code shipped with the backbone (custom architectures); only if you trust it.
            Never taken from the checkpoint itself.
    """
    from lightning_embed.cli.app import _quiet_third_party

    if not output:
        raise UserError("say where to write the model: lightning-embed export CHECKPOINT -o DIR")
    _quiet_third_party()  # loading bars and library warnings say nothing to the user of a command
    folder = export_checkpoint(checkpoint, output, overwrite=overwrite, trust_remote_code=trust_remote_code,
                               progress=Heartbeat("export", total=3, unit="steps", every=0, rate=False))
    print(f"exported {checkpoint} to {folder} (loads with transformers, sentence-transformers and "
          "lightning_embed.load)")


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, *, overwrite: bool = False,
                      runs_file: str | os.PathLike | None = None, trust_remote_code: bool = False,
                      progress: Heartbeat | None = None) -> Path:
    """Exports a checkpoint (see :func:`export`); returns the folder.

    Args:
        checkpoint: a checkpoint of ``lightning-embed fit``.
        output: the folder to create.
        overwrite: replace an existing non-empty ``output``.
        runs_file: the runs file holding this run's record (for the model card); None: look for
            ``runs.jsonl`` beside the checkpoint, in its parents and in the working directory.
        trust_remote_code: run code shipped with the backbone; from the caller only, never the checkpoint.
        progress: told each phase done (read, rebuilt, written); the CLI prints them in a log.

    Raises:
        UserError: a checkpoint that is not ours, an existing non-empty ``output`` without ``overwrite``.
    """
    target = _check_target(Path(output).expanduser(), overwrite)
    tick = progress or (lambda n=1, note="": None)
    ckpt = read_checkpoint(checkpoint)
    tick(1, note=f"read {checkpoint}")
    hparams = module_hparams(ckpt, checkpoint)
    module = load_module(checkpoint, ckpt, trust_remote_code=trust_remote_code)
    tick(1, note=f"rebuilt {hparams.get('backbone')} with its trained weights")
    info = checkpoint_info(ckpt)
    info["run"] = _find_run(Path(checkpoint), info.get("run_id"), runs_file)
    info["config"] = _find_config(Path(checkpoint))
    if not info.get("metrics"):
        info["metrics"] = _logged_metrics(Path(checkpoint))
    info["source_checkpoint"] = str(Path(checkpoint).expanduser().resolve())
    folder = export_module(module, target, overwrite=overwrite, hparams=hparams, info=info)
    tick(1, note=f"wrote {folder}")
    return folder


def export_module(module, output: str | os.PathLike, *, overwrite: bool = False,
                  hparams: dict[str, Any] | None = None, info: dict[str, Any] | None = None) -> Path:
    """Exports a live :class:`~lightning_embed.training.module.EmbeddingModule` (e.g. right after training).

    The module is not changed (LoRA merges into a copy).
    """
    target = _check_target(Path(output).expanduser(), overwrite)
    if hparams is None:
        hparams = {k: v for k, v in module.hparams.items() if not k.startswith("_")}
    hparams = dict(hparams)
    info = dict(info or {})
    info.setdefault("name", target.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write(module, tmp, hparams, info)
        _apply_umask(tmp)
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _check_target(target: Path, overwrite: bool) -> Path:
    if target.exists():
        if not target.is_dir():
            raise UserError(f"{target} exists and is a file, not a folder; choose another --output.")
        if any(target.iterdir()) and not overwrite:
            raise UserError(f"{target} exists and is not empty; choose another --output or pass --overwrite "
                            "to replace it.")
    from lightning_embed.cli.outputs import check_output

    # The export is written beside the target first, then moved: the parent must take new entries.
    check_output(target.parent, "--output", "folder")
    return target


def _apply_umask(folder: Path) -> None:
    # mkdtemp (and some writers) create private 0700/0600 entries; an export is shared like any folder.
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _move_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    # Replace: move the old folder aside first, so there is never a moment with neither in place.
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / "model")
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old / "model", target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _write(module, folder: Path, hparams: dict[str, Any], info: dict[str, Any]) -> None:
    model = module.tuning.export(module.backbone)
    if hparams.get("bidirectional"):
        _check_bidirectional(model, module.backbone_info.is_decoder)
    # trust_remote_code as the module was built (from the caller for a checkpoint, never the file's own)
    pooler = _original_pooler(model, hparams, bool(module.hparams.get("trust_remote_code", False)))
    if pooler is not None:
        # Training drops an encoder's own pooler (it never feeds the embedding); the export carries the base
        # model's, unchanged, so every loader finds the weights its class expects and reports nothing missing.
        model.pooler = pooler
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        if pooler is not None:
            model.pooler = None  # the export may be the live module's backbone (full tuning): leave it as it was
    module.tokenizer.save_pretrained(folder)
    max_len = max(int(hparams.get("query_max_length", 64)), int(hparams.get("document_max_length", 256)))
    # sentence-transformers leaves the prompt out of pooling by zeroing the first columns, right for right padding
    # only; padding never changes an embedding here, so a left-padding tokenizer is exported padding right.
    right = {} if hparams.get("pool_prompt", True) else {"padding_side": "right"}
    _patch_json(folder / "tokenizer_config.json", {"model_max_length": max_len, **right})
    pooling = hparams.get("pooling", "mean")
    normalize = bool(hparams.get("normalize", True))
    hidden = int(getattr(model.config, "hidden_size", 0) or 0)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
        _write_json(folder / "2_Normalize" / "config.json", {})
    _write_json(folder / "modules.json", modules)
    _write_json(folder / "sentence_bert_config.json", _st_transformer_config(hparams, max_len))
    (folder / "1_Pooling").mkdir()
    _write_json(folder / "1_Pooling" / "config.json",
                _st_pooling_config(pooling, hidden, bool(hparams.get("pool_prompt", True))))
    query_prompt, document_prompt = hparams.get("query_prompt", ""), hparams.get("document_prompt", "")
    _write_json(folder / "config_sentence_transformers.json", {
        "__version__": installed_versions(("sentence-transformers", "transformers", "torch")),
        "model_type": "SentenceTransformer",
        "prompts": {"query": query_prompt, "document": document_prompt},
        # No default prompt: a plain encode() adds none, as lightning_embed.load(...).encode() does;
        # encode_query() / encode_document() (and prompt_name=...) add the trained prompts.
        "default_prompt_name": None,
        "similarity_fn_name": "cosine" if normalize else "dot",
    })
    meta = {
        "format_version": EXPORT_FORMAT_VERSION,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone": hparams.get("backbone"),
        "tuning": hparams.get("tuning"),
        "max_seq_length": max_len,
        "hparams": hparams,
        "training": {k: v for k, v in info.items() if k not in ("run", "config")},
        "versions": installed_versions(("lightning-embed", "torch", "transformers", "peft")),
    }
    _write_json(folder / EXPORT_CONFIG, meta)
    (folder / "README.md").write_text(model_card(hparams, info, hidden, max_len, name=info.get("name", folder.name)),
                                      encoding="utf-8")


def _original_pooler(model, hparams: dict[str, Any], trust_remote_code: bool):
    """The base model's pooler (BERT's dense + tanh over [CLS]) where training dropped it, else None."""
    if getattr(model, "pooler", False) is not None or not hparams.get("backbone"):
        return None  # no pooler attribute, or one that is still there
    from transformers import AutoModel

    from lightning_embed.cli.quiet import quiet_loading
    from lightning_embed.models.backbones import resolve_backbone

    path, gguf = resolve_backbone(str(hparams["backbone"]))
    try:
        with quiet_loading():
            base = AutoModel.from_pretrained(path, gguf_file=gguf, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None  # the base model cannot be read here: the export then lacks the unused pooler, as before
    pooler = getattr(base, "pooler", None)
    return pooler if isinstance(pooler, torch.nn.Module) else None


def _st_transformer_config(hparams: dict[str, Any], max_len: int) -> dict[str, Any]:
    """``sentence_bert_config.json``: one length for ``encode``, the trained one per side where supported.

    sentence-transformers 6 truncates ``encode_query`` / ``encode_document`` at ``query_length`` /
    ``document_length``; releases before it pass every key to their ``Transformer`` and fail on unknown
    ones, so the per-side lengths are written only when the installed release reads them.
    """
    config: dict[str, Any] = {"max_seq_length": max_len, "do_lower_case": False}
    if _st_reads_side_lengths():
        config["query_length"] = int(hparams.get("query_max_length", max_len))
        config["document_length"] = int(hparams.get("document_max_length", max_len))
    return config


def _st_reads_side_lengths() -> bool:
    try:
        from sentence_transformers.models import Transformer
    except ImportError:
        return False
    return {"query_length", "document_length"} <= set(getattr(Transformer, "config_keys", ()))


def _check_bidirectional(model, is_decoder: bool) -> None:
    """Refuses to write a ``bidirectional`` decoder whose saved config would not make it attend both ways."""
    from lightning_embed.models.bidirectional import attends_both_ways, attends_causally

    if is_decoder and (attends_causally(model) or not attends_both_ways(model)):
        raise UserError(f"the model was trained with bidirectional attention, but {type(model).__name__} does not "
                        "attend both ways with config.is_causal=false in this transformers version; an export "
                        "would silently run causal, so none is written.")


def _st_pooling_config(pooling: str, hidden: int, include_prompt: bool = True) -> dict[str, Any]:
    mode = ST_POOLING[pooling]
    return {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": mode == "weightedmean",
        "pooling_mode_lasttoken": mode == "lasttoken",
        "include_prompt": include_prompt,
    }


def _find_run(checkpoint: Path, run_id: str | None, runs_file) -> dict[str, Any] | None:
    """The run record with ``run_id`` from a runs file, if one can be found (for the model card only)."""
    if not run_id:
        return None
    if runs_file is not None:
        candidates = [Path(runs_file)]
    else:
        parents = list(checkpoint.expanduser().resolve().parents)[:4]
        candidates = [p / "runs.jsonl" for p in parents] + [Path.cwd() / "runs.jsonl"]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    if run_id in line:
                        record = json.loads(line)
                        if record.get("run_id") == run_id:
                            return record
        except (OSError, json.JSONDecodeError):
            continue  # a damaged runs file only costs the model card some detail
    return None


def _logged_metrics(checkpoint: Path) -> dict[str, float]:
    """The last held-out metrics in the CSV log beside the checkpoint (``version_N/metrics.csv``), if any."""
    import csv

    latest: dict[str, float] = {}
    for parent in list(checkpoint.expanduser().resolve().parents)[:2]:
        path = parent / "metrics.csv"
        if not path.is_file():
            continue
        try:
            with path.open(encoding="utf-8", newline="") as handle:
                for row in csv.DictReader(handle):
                    for key, value in row.items():
                        if key and key.startswith("val/") and value not in (None, ""):
                            latest[key] = float(value)
        except (OSError, ValueError, csv.Error):
            return {}  # a damaged log only costs the model card its metrics
        return latest
    return latest


def _find_config(checkpoint: Path) -> dict[str, Any] | None:
    """The ``config.yaml`` LightningCLI saved for the run (the data section names the training data)."""
    import yaml

    for parent in list(checkpoint.expanduser().resolve().parents)[:3]:
        path = parent / "config.yaml"
        if path.is_file():
            try:
                config = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                return None
            return config if isinstance(config, dict) else None
    return None



def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def _patch_json(path: Path, updates: dict[str, Any]) -> None:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data.update(updates)
    _write_json(path, data)


__all__ = ["export", "export_checkpoint", "export_module"]
