"""Embedding texts with a trained model: ``lightning_embed.load(PATH).encode(texts)``.

:func:`load` takes a checkpoint written by ``lightning-embed fit``, a folder written by ``lightning-embed
export`` (or any sentence-transformers / Hugging Face model folder), or a backbone name (the untrained
baseline) and returns an :class:`Encoder`. Every route embeds exactly as the trained module does: the same
tokenizer and padding side, prompts, pooling over the attention mask and L2 normalisation, so a checkpoint,
its export and ``SentenceTransformer(export)`` give the same vectors.

Texts are truncated as in training: ``prompt="query"`` at the run's ``query_max_length``,
``prompt="document"`` at its ``document_max_length``, anything else at the longer of the two. The export
carries the same three lengths (sentence-transformers' ``query_length``, ``document_length`` and
``max_seq_length``, used by ``encode_query``, ``encode_document`` and ``encode``), so the routes agree.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_embed.errors import UserError
from lightning_embed.models.pooling import POOLING_MODES, pool, prompt_token_count, without_prompt
from lightning_embed.training.distributed_checkpoint import is_distributed_checkpoint, read_distributed_checkpoint

#: The file an export writes with everything :func:`load` needs besides the weights and tokenizer.
EXPORT_CONFIG = "lightning_embed.json"
#: Our pooling names and sentence-transformers' names for the same computation.
ST_POOLING = {"mean": "mean", "last": "lasttoken", "cls": "cls", "weighted_mean": "weightedmean"}
# Above this many texts, encode() shows a progress bar unless told otherwise.
_PROGRESS_THRESHOLD = 512
# Baselines and foreign folders without a length of their own truncate here (capped by the model).
_DEFAULT_MAX_LENGTH = 512


class Encoder:
    """A text-embedding model ready for inference.

    Build one with :func:`load` (or :meth:`from_module` during training) rather than directly.

    Args:
        model: the backbone (a plain or peft-wrapped Hugging Face base model).
        tokenizer: its tokenizer, with a pad token.
        pooling: ``mean``, ``last``, ``cls`` or ``weighted_mean`` (see :func:`lightning_embed.models.pooling.pool`).
        normalize: whether the model was trained on L2-normalised embeddings (the default of :meth:`encode`).
        query_prompt: text the run prepended to queries (``prompt="query"``).
        document_prompt: text the run prepended to documents (``prompt="document"``).
        max_length: texts (prompt included) are truncated to this many tokens, except as below.
        query_max_length: the truncation length of ``prompt="query"`` texts; None: ``max_length``.
        document_max_length: the truncation length of ``prompt="document"`` texts; None: ``max_length``.
        name: a label for tables and MTEB results.
        device: where to run; None: where the model already is.
        info: what is known about the model (backbone, tuning, hyper-parameters, FLOP, metrics).
        pool_prompt: pool the prompt's tokens too; False leaves them out (``model.pool_prompt: false``).
        truncate_dim: keep the first this many coordinates of every embedding (Matryoshka); None: all.
    """

    def __init__(self, model: nn.Module, tokenizer, *, pooling: str = "mean", normalize: bool = True,
                 query_prompt: str = "", document_prompt: str = "", max_length: int = 256, name: str = "model",
                 device: str | torch.device | None = None, info: dict[str, Any] | None = None,
                 query_max_length: int | None = None, document_max_length: int | None = None,
                 pool_prompt: bool = True, truncate_dim: int | None = None) -> None:
        if pooling not in POOLING_MODES:
            raise UserError(f"pooling={pooling!r} is not one of {', '.join(POOLING_MODES)}.")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.model = model if device is None else model.to(device)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt
        self.max_length = int(max_length)
        self.query_max_length = int(query_max_length or max_length)
        self.document_max_length = int(document_max_length or max_length)
        self.name = name
        self.info = dict(info or {})
        self.pool_prompt = bool(pool_prompt)
        self.truncate_dim = truncate_dim

    @classmethod
    def from_module(cls, module, name: str = "model") -> Encoder:
        """Wraps a live :class:`~lightning_embed.training.module.EmbeddingModule` (no copy; used during training)."""
        h = module.hparams
        return cls(module.backbone, module.tokenizer, pooling=h.pooling, normalize=h.normalize,
                   query_prompt=h.query_prompt, document_prompt=h.document_prompt,
                   max_length=max(h.query_max_length, h.document_max_length), name=name,
                   info={"hparams": dict(h)}, query_max_length=h.query_max_length,
                   document_max_length=h.document_max_length, pool_prompt=h.get("pool_prompt", True))

    @property
    def device(self) -> torch.device:
        """The device the model runs on."""
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @property
    def dimension(self) -> int:
        """Size of an embedding (``truncate_dim`` when set)."""
        hidden = int(getattr(self.model.config, "hidden_size", 0) or 0)
        return min(hidden, self.truncate_dim) if self.truncate_dim and hidden else hidden

    def prompt_text(self, prompt: str | None) -> str:
        """The text prepended for ``prompt``: None (nothing), ``query``, ``document`` or a literal string."""
        if prompt is None:
            return ""
        if prompt == "query":
            return self.query_prompt
        if prompt == "document":
            return self.document_prompt
        return prompt

    def encode(self, texts: str | Sequence[str], batch_size: int = 32, prompt: str | None = None,
               normalize: bool | None = None, show_progress: bool | None = None,
               convert_to_numpy: bool = False, dimension: int | None = None):
        """Embeds texts.

        Texts are sorted by length so each batch pads little, and the result is returned in input order.
        The model runs in eval mode without gradients (its mode is restored afterwards).

        Args:
            texts: one text or a list of them.
            batch_size: texts per forward pass.
            prompt: ``"query"`` or ``"document"`` prepend the prompt the model was trained with for that
                side and truncate at that side's trained length; any other string is prepended as is;
                None prepends nothing.
            normalize: L2-normalise (cosine similarity is then a dot product); None: as the model was
                trained (normalised unless it was trained with ``normalize: false``).
            show_progress: a progress bar; None: only for more than 512 texts.
            convert_to_numpy: return a numpy array instead of a tensor.
            dimension: keep the first this many coordinates (a Matryoshka-trained model), re-normalised when
                ``normalize``; None: ``truncate_dim`` (all coordinates when that is None too).

        Returns:
            float32 embeddings on the CPU, shape (len(texts), dimension), or (dimension,) for one string.

        Raises:
            UserError: an empty or whitespace-only text (it would embed as nothing but the prompt, or as a
                zero vector), named by its position.
        """
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        for i, text in enumerate(items):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str")
        check_texts(items)
        if batch_size < 1:
            raise UserError(f"batch_size={batch_size} must be at least 1.")
        prefix = self.prompt_text(prompt)
        max_length = {"query": self.query_max_length, "document": self.document_max_length}.get(prompt or "",
                                                                                            self.max_length)
        # Counted as sentence-transformers counts them, so an export's include_prompt=False agrees.
        skip = 0 if self.pool_prompt else prompt_token_count(self.tokenizer, prefix)
        dimension = dimension or self.truncate_dim
        hidden = int(getattr(self.model.config, "hidden_size", 0) or 0)
        if dimension is not None and (dimension < 1 or (hidden and dimension > hidden)):
            raise UserError(f"dimension={dimension} must be between 1 and the embedding size {hidden}.")
        normalize = self.normalize if normalize is None else normalize
        show = len(items) > _PROGRESS_THRESHOLD if show_progress is None else show_progress
        # Longest first: the first batch shows at once whether memory suffices.
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))
        chunks: list[torch.Tensor] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), _progress(show, len(items), self.name) as advance:
                for start in range(0, len(items), batch_size):
                    batch = [prefix + items[i] for i in order[start:start + batch_size]]
                    chunks.append(self._embed(batch, normalize, max_length, skip, dimension))
                    advance(len(batch))
        finally:
            self.model.train(was_training)
        if chunks:
            sorted_emb = torch.cat(chunks)
            out = torch.empty_like(sorted_emb)
            out[torch.tensor(order)] = sorted_emb
        else:
            out = torch.empty(0, dimension or self.dimension)
        if single:
            out = out[0]
        return out.numpy() if convert_to_numpy else out

    def _embed(self, texts: list[str], normalize: bool, max_length: int, skip: int = 0,
               dimension: int | None = None) -> torch.Tensor:
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                                 return_tensors="pt")
        device = self.device
        # Only these two, as in training: token_type_ids exist for some tokenizers and default to zeros.
        mask = encoded["attention_mask"].to(device)
        out = self.model(input_ids=encoded["input_ids"].to(device), attention_mask=mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        emb = pool(hidden, without_prompt(mask, skip), self.pooling)
        if dimension is not None:
            emb = emb[:, :dimension]
        if normalize:
            emb = F.normalize(emb, dim=-1)
        return emb.float().cpu()

    def __repr__(self) -> str:
        return (f"Encoder({self.name!r}, pooling={self.pooling!r}, normalize={self.normalize}, "
                f"max_length={self.max_length}, device={self.device})")


class _progress:
    """A rich progress bar (or nothing) as a context manager yielding ``advance(n)``."""

    def __init__(self, show: bool, total: int, label: str) -> None:
        self.show, self.total, self.label = show, total, label
        self._bar = None

    def __enter__(self):
        if not self.show:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("encoding {task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), transient=True)
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


# ---------------------------------------------------------------------------------------------- loading


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a ``lightning-embed fit`` checkpoint safely (``weights_only=True``) and checks it is one of ours.

    A distributed checkpoint folder (FSDP2 / sharded) is consolidated in memory, model weights only.

    Raises:
        UserError: a missing file, a file that is not a checkpoint, or a checkpoint of another model.
    """
    import pickle

    file = Path(path).expanduser()
    if not file.exists():
        raise UserError(f"checkpoint {str(path)!r} does not exist.")
    if is_distributed_checkpoint(file):  # an FSDP2 / sharded run's folder: consolidated in memory
        ckpt = read_distributed_checkpoint(file)
    elif not file.is_file():
        raise UserError(f"{str(path)!r} is a folder, not a checkpoint file or a distributed checkpoint folder.")
    else:
        try:
            ckpt = _torch_load(file)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError) as err:
            # (the safe unpickler raises KeyError/IndexError on some bytes that are not a pickle at all)
            raise UserError(f"{path}: not a PyTorch checkpoint that loads safely ({_first_line(err)}).") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "backbone" not in hparams or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a lightning-embed checkpoint: it holds no EmbeddingModule "
                        "hyper-parameters. Use a checkpoint written by `lightning-embed fit`.")
    return ckpt


def _torch_load(file: Path) -> dict[str, Any]:
    """``torch.load`` memory-mapped: a fit checkpoint holds the optimizer state too (about twice the weights),
    which inference never reads; mapped, only the tensors used are read from disk."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(file, map_location="cpu", weights_only=True)  # the legacy (non-zip) format


def module_hparams(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, Any]:
    """The checkpoint's EmbeddingModule arguments (LightningCLI's private ``_`` keys dropped).

    Raises:
        UserError: arguments this version of EmbeddingModule does not take.
    """
    from lightning_embed.models.checkpoint_model import module_arguments

    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if not str(k).startswith("_")}
    accepted = module_arguments()
    unknown = sorted(set(hparams) - accepted)
    if unknown:
        raise UserError(f"{path} was written by another version of lightning-embed: EmbeddingModule takes no "
                        f"{', '.join(unknown)}.")
    return hparams


def load_module(path: str | Path, ckpt: dict[str, Any] | None = None, *, trust_remote_code: bool = False):
    """Rebuilds the trained :class:`~lightning_embed.training.module.EmbeddingModule` of a checkpoint, in eval mode.

    The module is built from the checkpoint's hyper-parameters (which loads the backbone), then its
    weights are loaded; frozen weights that the checkpoint leaves out are refilled from the backbone by
    the module's own ``on_load_checkpoint``. ``trust_remote_code`` comes from the caller only: the
    checkpoint's own setting is ignored, so a crafted file cannot switch on code it ships.

    Raises:
        UserError: not one of our checkpoints, a backbone that cannot be found, or weights that do not fit.
    """
    from lightning_embed.training.module import EmbeddingModule

    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    hparams = {**module_hparams(ckpt, path), "trust_remote_code": trust_remote_code}
    if isinstance(hparams.get("loss"), dict):
        # Embedding needs no loss, and a file must not name a class to import and run: the default stands in.
        hparams["loss"] = "infonce"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = EmbeddingModule(**hparams)
    except UserError as err:
        raise UserError(f"{path}: cannot rebuild its model: {err}") from None
    module.on_load_checkpoint(ckpt)
    result = module.load_state_dict(ckpt["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        example = (result.missing_keys or result.unexpected_keys)[0]
        raise UserError(f"{path}: its weights do not fit the model rebuilt from its hyper-parameters "
                        f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected, e.g. "
                        f"{example!r}); was the backbone {hparams['backbone']!r} changed since training?")
    module.eval()
    return module


def checkpoint_info(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint tells about its run: steps, FLOP and validation metrics (FlopCallback state)."""
    info: dict[str, Any] = {"global_step": ckpt.get("global_step"), "epoch": ckpt.get("epoch")}
    for state in (ckpt.get("callbacks") or {}).values():
        # Found by shape rather than by key: the key is the callback's state_key, which may carry arguments.
        if isinstance(state, dict) and isinstance(state.get("counter"), dict) and "flops_model" in state["counter"]:
            info["flops"] = {k: state["counter"].get(k) for k in ("flops_model", "flops_hardware", "tokens",
                                                                   "examples", "batches", "train_time_s")}
            info["flops"]["accounting"] = state.get("accounting")
            info["flops"]["budget"] = state.get("max_flops")
            info["run_id"] = state.get("run_id")
            info["metrics"] = {k: v for k, v in (state.get("val_metrics") or {}).items()}
            initial = state.get("initial")
            if initial and len(initial) == 2:  # (untrained held-out loss, held-out examples)
                info["val_examples"] = initial[1]
            if state.get("hardware"):
                info["hardware"] = state["hardware"]
    return info


def load(path: str | Path, device: str | torch.device | None = None, *, max_length: int | None = None,
         trust_remote_code: bool = False) -> Encoder:
    """Loads a model for inference.

    Args:
        path: a checkpoint of ``lightning-embed fit`` (a ``.ckpt`` file, or the distributed checkpoint folder
            of an FSDP2 / sharded run, consolidated in memory), a folder of ``lightning-embed export``,
            a sentence-transformers or Hugging Face model folder, or a backbone alias / hub id (untrained:
            mean pooling, normalised, no prompts).
        device: ``cpu``, ``cuda``, ...; None: the GPU when there is one.
        max_length: truncate every text to this many tokens; None: as trained (queries at the run's
            ``query_max_length``, documents at its ``document_max_length``, other texts at the longer).
        trust_remote_code: run code shipped with the model (hub models of custom architectures); only
            the caller can turn it on, never the file or folder being loaded.

    Raises:
        UserError: a missing path, a checkpoint that is not ours, an unusable folder.

    Example:
        >>> encoder = lightning_embed.load("outputs/quickstart/checkpoints/last.ckpt")  # doctest: +SKIP
        >>> encoder.encode(["how to sort a list"], prompt="query").shape  # doctest: +SKIP
        torch.Size([1, 576])
    """
    from lightning_embed.cli.quiet import quiet_loading

    with quiet_loading():  # no loading bars or load reports: the result is checked here
        return _load(path, device, max_length, trust_remote_code)


def _load(path: str | Path, device, max_length: int | None, trust_remote_code: bool) -> Encoder:
    device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    p = Path(path).expanduser()
    name = p.stem if p.suffix == ".ckpt" else (p.name or str(path))
    if p.is_file() or is_distributed_checkpoint(p):
        from lightning_embed.models.checkpoint_model import rebuild_backbone

        ckpt = read_checkpoint(p)
        h = module_hparams(ckpt, p)
        # The backbone alone, without the training module (which would import Lightning: seconds).
        model, tokenizer = rebuild_backbone(p, ckpt, h, trust_remote_code=trust_remote_code)
        info = {"source": str(p), "kind": "checkpoint", "hparams": h, **checkpoint_info(ckpt)}
        return Encoder(model, tokenizer, pooling=h.get("pooling", "mean"), normalize=h.get("normalize", True),
                       query_prompt=h.get("query_prompt", ""), document_prompt=h.get("document_prompt", ""),
                       max_length=max_length or max(h.get("query_max_length", 64), h.get("document_max_length", 256)),
                       name=name, device=device, info=info, pool_prompt=h.get("pool_prompt", True),
                       **_side_lengths(h, max_length))
    if p.is_dir():
        if (p / EXPORT_CONFIG).is_file():
            return _load_export(p, device, max_length, trust_remote_code)
        if (p / "config.json").is_file() or (p / "modules.json").is_file():
            return load_pretrained(str(p), device=device, max_length=max_length, trust_remote_code=trust_remote_code)
        raise UserError(f"{path!s} is a folder but not a model: it has no {EXPORT_CONFIG}, modules.json or "
                        "config.json.")
    if p.suffix in (".ckpt", ".pt", ".pth") or str(path).startswith((".", "/", "~")):
        raise UserError(f"{str(path)!r} does not exist.")
    return load_pretrained(str(path), device=device, max_length=max_length, trust_remote_code=trust_remote_code)


def _load_export(folder: Path, device, max_length: int | None, trust_remote_code: bool = False) -> Encoder:
    from transformers import AutoModel, AutoTokenizer

    try:
        meta = json.loads((folder / EXPORT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{folder / EXPORT_CONFIG}: unreadable ({_first_line(err)}); export the model again.") from None
    h = meta.get("hparams") or {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The folder's own hparams never decide trust_remote_code: a crafted folder could switch on its code.
        model = AutoModel.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    return Encoder(model, tokenizer, pooling=h.get("pooling", "mean"), normalize=h.get("normalize", True),
                   query_prompt=h.get("query_prompt", ""), document_prompt=h.get("document_prompt", ""),
                   max_length=max_length or int(meta.get("max_seq_length") or h.get("document_max_length", 256)),
                   name=folder.name, device=device, info={"source": str(folder), "kind": "export", **meta},
                   pool_prompt=h.get("pool_prompt", True), **_side_lengths(h, max_length))


def load_pretrained(name: str, *, pooling: str | None = None, normalize: bool | None = None,
                    query_prompt: str | None = None, document_prompt: str | None = None,
                    max_length: int | None = None, num_layers: int | None = None, device=None,
                    trust_remote_code: bool = False) -> Encoder:
    """An encoder over a pretrained model: a backbone alias, hub id or folder (the untrained baseline).

    A sentence-transformers folder supplies its own pooling, normalisation, prompts and length; explicit
    arguments override them; otherwise mean pooling, normalised, no prompts.
    """
    from lightning_embed.models.backbones import load_backbone, load_tokenizer, resolve_backbone

    folder, _ = resolve_backbone(name)
    st = _sentence_transformers_settings(Path(folder)) if Path(folder).is_dir() else {}
    model = load_backbone(name, num_layers=num_layers, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    sides: dict[str, int | None] = {"query_max_length": None, "document_max_length": None}
    if max_length is None:
        limit = getattr(model.config, "max_position_embeddings", None) or _DEFAULT_MAX_LENGTH
        max_length = int(st.get("max_length") or min(_DEFAULT_MAX_LENGTH, limit))
        sides = {k: st.get(k) for k in sides}  # a folder's own per-side lengths, if it has them
    return Encoder(model, tokenizer, pooling=pooling or st.get("pooling", "mean"),
                   normalize=st.get("normalize", True) if normalize is None else normalize,
                   query_prompt=st.get("query_prompt", "") if query_prompt is None else query_prompt,
                   document_prompt=st.get("document_prompt", "") if document_prompt is None else document_prompt,
                   max_length=max_length, name=Path(name).name or name, device=device or "cpu",
                   info={"source": name, "kind": "pretrained"}, pool_prompt=st.get("pool_prompt", True),
                   **sides)


def _sentence_transformers_settings(folder: Path) -> dict[str, Any]:
    """Pooling, normalisation, prompts and length from a sentence-transformers folder (empty if it is none)."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return {}
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        out: dict[str, Any] = {"normalize": any(str(m.get("type", "")).endswith("Normalize") for m in modules)}
        for m in modules:
            if str(m.get("type", "")).endswith("Pooling"):
                cfg = json.loads((folder / m.get("path", "1_Pooling") / "config.json").read_text(encoding="utf-8"))
                out["pooling"] = _pooling_from_st(cfg, folder)
                out["pool_prompt"] = bool(cfg.get("include_prompt", True))
        bert_cfg = folder / "sentence_bert_config.json"
        if bert_cfg.is_file():
            bert = json.loads(bert_cfg.read_text(encoding="utf-8"))
            out["max_length"] = bert.get("max_seq_length")
            # sentence-transformers 6's per-task lengths (what encode_query / encode_document truncate at)
            out["query_max_length"], out["document_max_length"] = bert.get("query_length"), bert.get("document_length")
        st_cfg = folder / "config_sentence_transformers.json"
        if st_cfg.is_file():
            prompts = json.loads(st_cfg.read_text(encoding="utf-8")).get("prompts") or {}
            out["query_prompt"] = prompts.get("query", "")
            out["document_prompt"] = prompts.get("document", prompts.get("passage", ""))
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        raise UserError(f"{folder}: unreadable sentence-transformers configuration ({_first_line(err)}).") from None
    return out


def _pooling_from_st(cfg: dict[str, Any], folder: Path) -> str:
    mode = cfg.get("pooling_mode")
    if mode is None:  # the pre-6.0 format: one boolean per mode
        legacy = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                  "pooling_mode_lasttoken": "lasttoken", "pooling_mode_weightedmean_tokens": "weightedmean",
                  "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens"}
        active = [v for k, v in legacy.items() if cfg.get(k)]
        mode = active[0] if len(active) == 1 else tuple(active)
    ours = {v: k for k, v in ST_POOLING.items()}
    if not isinstance(mode, str) or mode not in ours:
        raise UserError(f"{folder}: pooling {mode!r} is not supported; lightning-embed pools with "
                        f"{', '.join(ST_POOLING.values())}.")
    return ours[mode]


def check_texts(texts: Sequence[str], what: str = "texts") -> None:
    """Refuses empty or whitespace-only texts, naming the first few positions.

    Raises:
        UserError: ``what[i]`` is empty (the model would embed nothing but a prompt, or a zero vector).
    """
    bad = [i for i, text in enumerate(texts) if not text.strip()]
    if bad:
        shown = ", ".join(f"{what}[{i}]" for i in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UserError(f"{shown} {'is' if len(bad) == 1 else 'are'} empty or only whitespace: an embedding "
                        "of nothing means nothing; drop or fill such texts first.")


def _side_lengths(hparams: dict[str, Any], override: int | None) -> dict[str, int | None]:
    """The trained query and document truncation lengths (both ``override`` when the caller gives one)."""
    if override:
        return {"query_max_length": override, "document_max_length": override}
    return {"query_max_length": hparams.get("query_max_length"),
            "document_max_length": hparams.get("document_max_length")}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


__all__ = ["EXPORT_CONFIG", "Encoder", "check_texts", "load", "load_module", "load_pretrained", "read_checkpoint"]
