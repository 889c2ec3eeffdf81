"""The model card (``README.md``) of an export, with sentence-transformers-style metadata.

The YAML front matter uses the keys the Hugging Face hub and sentence-transformers' own cards use:
``base_model`` (the real hub id, also for a bundled alias), ``base_model_relation``, ``license`` (the base
model's), ``library_name``, ``pipeline_tag``, ``tags``, ``datasets`` (hub ids only) and a ``model-index``
with the held-out metrics at the end of training. The body says how the base model was obtained (e.g. a
dequantised GGUF), the data, the training settings and FLOP, the held-out metrics with the number of
held-out pairs behind them, the hardware the run trained on and the library versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lightning_embed.data.reading import BUILTIN_PREFIX
from lightning_embed.models.backbones import BACKBONE_SOURCES

_VERSIONED = ("lightning-embed", "torch", "transformers", "sentence-transformers", "peft", "lightning")
# Our metric names and how sentence-transformers' information-retrieval cards name them.
_METRIC_NAMES = {"ndcg@10": "NDCG@10", "mrr@10": "MRR@10", "recall@1": "Recall@1", "recall@10": "Recall@10",
                 "map@100": "MAP@100"}


def base_model(backbone: str) -> dict[str, str | None]:
    """The hub id, license and provenance of a backbone (alias table, or a hub id as given)."""
    source = BACKBONE_SOURCES.get(backbone.lower())
    if source is not None:
        return {"hub_id": source["hub_id"], "license": source.get("license"), "provenance": source.get("provenance")}
    # A hub id is owner/name; local folders are not linked as a base model.
    is_hub_id = "/" in backbone and not backbone.startswith((".", "/", "~")) and not Path(backbone).exists()
    return {"hub_id": backbone if is_hub_id else None, "license": _folder_license(backbone), "provenance": None}


def _folder_license(backbone: str) -> str | None:
    """The ``license`` of a local model folder's own card, if it states one."""
    card = Path(backbone).expanduser() / "README.md"
    try:
        text = card.read_text(encoding="utf-8") if card.is_file() else ""
    except OSError:
        return None
    if not text.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def _strategy(hparams: dict[str, Any]) -> tuple[str, str]:
    tuning = hparams.get("tuning") or {"name": "full"}
    if isinstance(tuning, str):
        tuning = {"name": tuning}
    name = tuning.get("name") or str(tuning.get("class_path", "?")).rsplit(".", 1)[-1]
    args = {k: v for k, v in (tuning.get("init_args") or tuning).items() if k not in ("name", "class_path")}
    return name, f"{name} ({', '.join(f'{k}={v}' for k, v in args.items())})" if args else name


def _hub_datasets(data: dict[str, Any]) -> list[str]:
    specs = [data.get("train")] if isinstance(data.get("train"), str) else []
    return [s for s in specs if "/" in s and not s.startswith((".", "/", "~", BUILTIN_PREFIX)) and not Path(s).exists()]


def _held_out_source(data: dict[str, Any]) -> str:
    if data.get("val"):
        return str(data["val"])
    train = str(data.get("train") or "")
    return f"{train} (held-out split)" if train.startswith(BUILTIN_PREFIX) else "validation data"


def front_matter(hparams: dict[str, Any], info: dict[str, Any], name: str) -> dict[str, Any]:
    """The card's YAML metadata (see the module docstring)."""
    run = info.get("run") or {}
    data = ((info.get("config") or {}).get("data") or (run.get("config") or {}).get("data") or {})
    base = base_model(str(hparams.get("backbone", "")))
    tuning, _ = _strategy(hparams)
    meta: dict[str, Any] = {}
    if base["hub_id"]:
        meta["base_model"] = base["hub_id"]
        meta["base_model_relation"] = "finetune"
    if base["license"]:
        meta["license"] = base["license"]
    meta.update({"library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity",
                 "tags": ["sentence-transformers", "sentence-similarity", "feature-extraction", "lightning-embed",
                          f"tuning-{tuning}"]})
    if datasets := _hub_datasets(data):
        meta["datasets"] = datasets
    metrics = _metrics(info)
    scored = {k: v for k, v in metrics.items() if k != "loss"}
    if scored:
        size = held_out_size(info)
        dataset = {"name": _held_out_source(data) + (f" ({size} pairs)" if size else ""),
                   "type": _held_out_source(data), "split": "validation"}
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "information-retrieval", "name": "Information Retrieval"},
            "dataset": dataset,
            "metrics": [{"type": f"cosine_{k}", "value": round(float(v), 4),
                         "name": f"Cosine {_METRIC_NAMES.get(k, k)}"} for k, v in scored.items()],
        }]}]
    return meta


def _metrics(info: dict[str, Any]) -> dict[str, float]:
    run = info.get("run") or {}
    raw = info.get("metrics") or run.get("metrics") or {}
    return {k.removeprefix("val/"): float(v) for k, v in raw.items() if isinstance(v, (int, float))}


def held_out_size(info: dict[str, Any]) -> int | None:
    """The number of held-out pairs behind the metrics (checkpoint state, else the run record)."""
    run = info.get("run") or {}
    size = info.get("val_examples") or run.get("val_examples")
    return int(size) if size else None


def versions() -> dict[str, str]:
    """Installed versions of the libraries an export depends on."""
    from lightning_embed.flops.records import installed_versions

    return installed_versions(_VERSIONED)


def model_card(hparams: dict[str, Any], info: dict[str, Any], dimension: int, max_length: int,
               name: str = "model") -> str:
    """The README.md of an export: metadata, usage, the model, its training, what it scored.

    Args:
        hparams: the EmbeddingModule arguments of the run.
        info: what the checkpoint and run record tell (steps, FLOP, metrics, held-out size, hardware, config).
        dimension: the embedding size.
        max_length: the export's ``max_seq_length``.
        name: the model's name in the ``model-index``.
    """
    backbone = str(hparams.get("backbone", "?"))
    base = base_model(backbone)
    _, strategy = _strategy(hparams)
    normalize = bool(hparams.get("normalize", True))
    run = info.get("run") or {}
    flops = info.get("flops") or {}
    data = ((info.get("config") or {}).get("data") or (run.get("config") or {}).get("data") or {})
    shown = f"[{base['hub_id']}](https://huggingface.co/{base['hub_id']})" if base["hub_id"] else f"`{backbone}`"
    lines = ["---", yaml.safe_dump(front_matter(hparams, info, name), sort_keys=False, allow_unicode=True).strip(),
             "---", "", f"# Text-embedding model fine-tuned from {base['hub_id'] or backbone}", "",
             f"Fine-tuned from {shown} with lightning-embed by contrastive fine-tuning "
             f"({loss_name(hparams.get('loss'))} with in-batch negatives), following Ziarko et al., "
             "*Repurposing Language Models into Embedding Models: Finding the Compute-Optimal Recipe* (NeurIPS 2024)."]
    if base["hub_id"] and base["hub_id"] != backbone:
        lines += ["", f"The base model was the bundled `{backbone}`: {base['hub_id']}, {base['provenance']}."]
    if base["license"]:
        lines += ["", f"License: the base model's, `{base['license']}`."]
    lines += ["", "## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
              'model = SentenceTransformer("PATH/TO/THIS/FOLDER")',
              'queries = model.encode_query(["how do I sort a list?"])  # query prompt, query length',
              'documents = model.encode_document(["sorted(items) returns a new sorted list"])',
              "print(model.similarity(queries, documents))", "```", "",
              "`model.encode(texts)` adds no prompt (as `lightning_embed.load(...).encode(texts)`); "
              "`encode_query` / `encode_document` add the trained prompts and cut at the trained lengths.", "",
              "```python", "import lightning_embed", "",
              'encoder = lightning_embed.load("PATH/TO/THIS/FOLDER")',
              'vectors = encoder.encode(["how do I sort a list?"], prompt="query")', "```", "",
              "`transformers.AutoModel.from_pretrained` loads it too (adapters are merged into the weights); "
              "then pool its last hidden states and normalise as the table below says.", "",
              "## Model", "", "| | |", "|---|---|", f"| base model | {shown} |"]
    if hparams.get("num_layers"):
        lines.append(f"| blocks kept | first {hparams['num_layers']} |")
    if hparams.get("bidirectional"):
        lines.append("| attention | bidirectional (`is_causal: false` in config.json) |")
    if hparams.get("pool_prompt") is False:
        lines.append("| prompt tokens | left out of pooling (`include_prompt: false`) |")
    if hparams.get("matryoshka_dims"):
        dims = ", ".join(str(d) for d in hparams["matryoshka_dims"])
        lines.append(f"| Matryoshka dimensions | {dims} (`SentenceTransformer(DIR, truncate_dim=d)`) |")
    lines += [f"| pooling | {hparams.get('pooling', 'mean')} (over the attention mask) |",
              f"| normalised | {'yes (L2)' if normalize else 'no'} |",
              f"| similarity | {'cosine' if normalize else 'dot product'} |",
              f"| query prompt | {_prompt(hparams.get('query_prompt'))} |",
              f"| document prompt | {_prompt(hparams.get('document_prompt'))} |",
              f"| max sequence length | queries {hparams.get('query_max_length')}, documents "
              f"{hparams.get('document_max_length')}, other texts {max_length} tokens (as trained) |",
              f"| embedding dimension | {dimension} |", "", "## Training", "", "| | |", "|---|---|",
              f"| tuning strategy | {strategy} |",
              f"| loss | {loss_name(hparams.get('loss'))}, temperature {hparams.get('temperature')} "
              f"(symmetric: {hparams.get('symmetric')}) |",
              f"| learning rate | {hparams.get('learning_rate')} ({hparams.get('lr_schedule')}, warm-up "
              f"{hparams.get('warmup_ratio')}, weight decay {hparams.get('weight_decay')}) |"]
    if data.get("train"):
        keys = ("train", "max_train_examples", "num_negatives", "batch_size", "val")
        described = ", ".join(f"{k}={data[k]}" for k in keys if data.get(k) not in (None, "", [], {}))
        lines.append(f"| data | {described} |")
    if info.get("global_step") is not None:
        lines.append(f"| optimizer steps | {info['global_step']} |")
    if flops:
        lines += [f"| examples seen | {flops.get('examples')} |", f"| tokens seen | {flops.get('tokens')} |",
                  f"| training FLOP | {_sci(flops.get('flops_model'))} ({flops.get('accounting')} accounting; "
                  f"hardware {_sci(flops.get('flops_hardware'))}) |"]
        if flops.get("budget"):
            lines.append(f"| FLOP budget | {_sci(flops['budget'])} |")
        if flops.get("train_time_s"):
            lines.append(f"| training time | {flops['train_time_s']:.0f} s |")
    if info.get("hardware"):
        lines.append(f"| hardware | {info['hardware']} |")
    if run.get("seed") is not None:
        lines.append(f"| seed | {run['seed']} |")
    if data.get("train"):
        lines += ["", "## Training data", "", f"- training pairs: `{data['train']}`"
                  + (" (built into lightning-embed: mined from the Python standard library, docstring summary -> "
                     "function code)" if str(data["train"]).startswith(BUILTIN_PREFIX) else "")]
        for split, print_ in (run.get("data") or {}).items():
            # what exactly was read (lightning_embed.data.fingerprints)
            if isinstance(print_, dict) and print_.get("sha256"):
                lines.append(f"- {split} fingerprint: `{print_.get('source')}` sha256 `{print_['sha256']}`")
    metrics = _metrics(info)
    if metrics:
        size = held_out_size(info)
        on = f" on {size} held-out pairs of {_held_out_source(data)}" if size else f" on {_held_out_source(data)}"
        lines += ["", "## Evaluation", "", f"Held-out retrieval metrics at the end of training{on} (each query "
                  "against all held-out documents):", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
        if not size:
            lines += ["", "The number of held-out pairs was not recorded with this checkpoint."]
    lines += ["", "## Framework versions", ""] + [f"- {k}: {v}" for k, v in versions().items()] + [""]
    return "\n".join(lines)


def loss_name(spec) -> str:
    """The contrastive loss of ``model.loss`` (a name, a ``{name: ...}`` or a ``class_path`` mapping) in words."""
    if isinstance(spec, dict):
        spec = spec.get("name") or spec.get("class_path", "?")
    names = {"infonce": "InfoNCE", "gte": "GTE's improved contrastive loss"}
    return names.get(str(spec or "infonce").lower(), f"`{spec}`")


def _prompt(text) -> str:
    return f"`{text!r}`" if text else "none"


def _sci(value) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else "?"


__all__ = ["base_model", "front_matter", "held_out_size", "model_card", "versions"]
