"""EmbeddingModule: backbone + tuning strategy + pooling + L2 normalisation + contrastive loss."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lightning_embed.errors import UserError
from lightning_embed.evaluation.metrics import retrieval_metrics
from lightning_embed.losses import LossSpec, build_loss, call_loss
from lightning_embed.losses.matryoshka import MatryoshkaLoss, check_matryoshka
from lightning_embed.models.backbones import describe, hf_model, load_backbone, load_tokenizer
from lightning_embed.models.bidirectional import attends_causally, make_bidirectional
from lightning_embed.models.pooling import PoolingMode, pool, prompt_token_count
from lightning_embed.strategy import TuningStrategy, apply_strategy, build_strategy, strategy_spec
from lightning_embed.training.acceleration import auto_compile, make_room_to_compile, switch_training_attention
from lightning_embed.training.encoding import EncodingOptions, EncodingPath, choose_encoding_path, resolve_packing
from lightning_embed.training.options import check_options
from lightning_embed.training.packing import packing_problem
from lightning_embed.training.schedule import warmup_then_decay

TuningSpec = str | dict[str, Any] | None


class EmbeddingModule(L.LightningModule):
    """Contrastive fine-tuning of a pretrained language model into a text-embedding model.

    Args:
        backbone: bundled alias (``smollm2-135m``, ``all-minilm-l6-v2``), local folder, ``.gguf`` file or
            hub id.
        tuning: fine-tuning method: a registered name (``full``, ``lora``, ...), ``{name: lora, rank: 32}``,
            or ``{class_path: ..., init_args: {...}}``. ``lightning-embed strategies`` lists them.
        pooling: ``mean`` (the study's choice), ``last``, ``cls`` or ``weighted_mean``.
        normalize: L2-normalise embeddings (cosine similarity).
        temperature: softmax temperature of the loss (0.025 = inverse temperature 40, as the study).
        symmetric: average the query->document and document->query losses (as the study; InfoNCE only).
        loss: the contrastive loss: ``infonce`` (the study's InfoNCE), ``gte`` (GTE's improved contrastive loss:
            query-query and document-document in-batch negatives in the partition function), or your own class
            as ``{class_path: my_module.MyLoss, init_args: {...}}`` (:mod:`lightning_embed.losses`).
        matryoshka_dims: Matryoshka training: the loss is computed on each of these leading slices of every
            embedding (re-normalised) and summed, e.g. ``[576, 256, 128, 64]`` (list the full size first to keep
            training it); strictly decreasing, at most the hidden size. One forward per batch
            (:mod:`lightning_embed.losses.matryoshka`). None: the full embedding only.
        matryoshka_weights: one weight per ``matryoshka_dims`` entry (default 1 each).
        pool_prompt: pool the query/document prompt's tokens too (default); ``false`` pools only the text after
            the prompt (sentence-transformers' ``include_prompt=False``), in training, ``encode`` and the export.
        bidirectional: make every attention layer of a decoder backbone (Llama, Qwen2, GPT-NeoX, Mistral, ...)
            attend both ways (LLM2Vec, GritLM), packing included; the export keeps it (``is_causal: false`` in
            its config.json, honoured by transformers without remote code). On an encoder: a note, nothing to do.
        gather_across_devices: under DDP, use every rank's documents as negatives (gathered with gradients).
        learning_rate: peak learning rate of AdamW.
        weight_decay: AdamW weight decay (0.1 as the study), on matrices only (not biases or norms).
        warmup_ratio: share of the steps spent in linear warm-up.
        lr_schedule: after warm-up, ``cosine`` to 0 (as the study), ``linear`` to 0, or ``constant``.
        betas: AdamW betas.
        query_max_length: queries are truncated to this many tokens.
        document_max_length: documents are truncated to this many tokens.
        query_prompt: text prepended to every query (an instruction prefix).
        document_prompt: text prepended to every document.
        num_layers: keep only the first ``num_layers`` blocks of the backbone (a smaller model of the family).
        attn_implementation: ``sdpa``, ``eager`` or ``flex`` (FlexAttention; trains on GPUs). None (default):
            ``sdpa``, except in training on CPU in bf16 with texts of at most 256 tokens (eager with fp32 scores,
            faster there than the CPU flash kernel and as accurate: ``benchmarks/results/attention-cpu-2026-11-28.txt``)
            and on CUDA with packed batches (``flex``, :mod:`lightning_embed.training.flex_packing`); restored
            after ``fit`` (:mod:`lightning_embed.training.acceleration`).
        gradient_checkpointing: recompute activations in the backward pass (less memory, one more forward).
            Applies inside every transformer block; works under DDP, FSDP and FSDP2 and nests with
            ``gradcache_chunk_size``.
        trust_remote_code: run code shipped with a hub model; only if you trust it.
        gradcache_chunk_size: gradient caching (GradCache, Gao et al. 2021): encode each batch in
            mini-batches of this many texts (queries and documents separately) and back-propagate the
            loss of the whole batch one mini-batch at a time. Loss and gradients equal those of the
            uncached batch (every in-batch, hard and cross-device negative included) while activation
            memory is that of one mini-batch, for one extra forward pass. Dropout masks and mixed
            precision match between the two passes; gradient accumulation, gradient clipping and every
            Lightning strategy (DDP: one all-reduce per step) work unchanged. None: no caching. See
            :mod:`lightning_embed.training.gradcache` for how and its limitations (a chunk at or above the batch
            size only costs the extra forward; with dropout the masks are drawn per mini-batch).
        split_by_length: encode each batch's queries and documents in length-sorted micro-batches, each
            cut to its own longest text (:mod:`lightning_embed.training.unpadding`): the same batch, embeddings, loss
            and gradients with fewer padding positions computed. Needs right padding (the default of the
            bundled tokenizers); with left padding nothing is split. Under GradCache the micro-batches
            are its mini-batches (at most ``gradcache_chunk_size`` rows each). Off by default: on CPU in bf16
            it computed fewer positions yet ran slower per step (the step there is bound by elementwise work,
            not matmuls; ``benchmarks/results/throughput-cpu-2026-11-28.json``, ``--systems le-split``); it is meant
            for compute-bound accelerators. Packing
            (``pack_sequences``) removes more padding in one forward pass and is the default where it applies.
        pack_sequences: encode each batch's queries and documents together in one forward pass over
            packed rows (:mod:`lightning_embed.training.packing`): texts laid end to end, a block-diagonal attention
            mask and position ids restarting per text, so each text is encoded as alone: the same batch,
            embeddings, loss and gradients with almost no padding computed (speed per step:
            ``benchmarks/results/throughput-packed-cpu-2026-11-28.txt``). ``auto`` (default): on when the backbone
            can (eager or sdpa attention,
            ``position_ids``, and a check when training starts that a few texts embed the same packed and
            padded) and neither ``split_by_length`` nor GradCache is set; ``true`` insists (an error
            otherwise); ``false``: padded batches.
        compile: compile the backbone with ``torch.compile`` (dynamic shapes) when training starts: same
            math, fused elementwise kernels, paid for by minutes of compilation
            (``benchmarks/results/throughput-compile-packed-cpu-2026-11-28.txt``). ``auto``
            (default): on for decoders in runs of at least 500 steps on a single CPU process with a C++
            compiler, off elsewhere (GPUs: not measured yet); the choice and its reason are printed when
            training starts. ``true``/``false`` force it (:mod:`lightning_embed.training.acceleration`;
            ``benchmarks/bench_throughput.py --systems le-default,le-fast``).

    Distributed training uses Lightning's strategies unchanged: ``ddp``, ``fsdp`` (GPUs; each transformer
    block and the tuning strategy's :meth:`~lightning_embed.strategy.TuningStrategy.fsdp_wrap_modules`
    become FSDP units unless the strategy sets its own ``auto_wrap_policy``) and FSDP2 through
    ``ModelParallelStrategy`` (:meth:`configure_model` shards each block and the backbone with
    ``fully_shard`` over the data-parallel mesh). ``configs/ddp.yaml``, ``configs/fsdp.yaml`` and
    ``configs/fsdp2.yaml`` set them up.
    """

    def __init__(
        self,
        backbone: str = "smollm2-135m",
        tuning: TuningSpec = "full",
        pooling: PoolingMode = "mean",
        normalize: bool = True,
        temperature: float = 0.025,
        symmetric: bool = True,
        loss: LossSpec = "infonce",
        matryoshka_dims: list[int] | None = None,
        matryoshka_weights: list[float] | None = None,
        pool_prompt: bool = True,
        bidirectional: bool = False,
        gather_across_devices: bool = True,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.1,
        warmup_ratio: float = 0.1,
        lr_schedule: Literal["cosine", "linear", "constant"] = "cosine",
        betas: tuple[float, float] = (0.9, 0.999),
        query_max_length: int = 64,
        document_max_length: int = 256,
        query_prompt: str = "",
        document_prompt: str = "",
        num_layers: int | None = None,
        attn_implementation: Literal["sdpa", "eager", "flex"] | None = None,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        gradcache_chunk_size: int | None = None,
        split_by_length: bool = False,
        pack_sequences: bool | Literal["auto"] = "auto",
        compile: bool | Literal["auto"] = "auto",
    ) -> None:
        super().__init__()
        strategy = build_strategy(tuning)
        check_options(pooling, temperature, learning_rate, weight_decay, warmup_ratio, query_max_length,
                      document_max_length, gradcache_chunk_size, split_by_length, pack_sequences)
        self.save_hyperparameters(ignore=["tuning"])
        # A serialisable form of the strategy, so checkpoints load with weights_only=True.
        self.hparams["tuning"] = strategy_spec(strategy)
        self.tuning: TuningStrategy = strategy
        self.tokenizer = load_tokenizer(backbone, trust_remote_code=trust_remote_code)
        raw = load_backbone(
            backbone, num_layers=num_layers, attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
        self.backbone_info = describe(raw)
        problems = check_matryoshka(matryoshka_dims, matryoshka_weights, self.backbone_info.hidden_size)
        if problems:
            raise UserError("model options: " + "; ".join(problems) + ".")
        if bidirectional:
            make_bidirectional(raw, backbone, is_decoder=self.backbone_info.is_decoder)
        if pack_sequences is True and (problem := packing_problem(raw)):
            raise UserError(f"pack_sequences cannot pack for backbone {backbone!r}: {problem}; set "
                            "model.pack_sequences: false (or model.split_by_length: true).")
        self.backbone: nn.Module = apply_strategy(strategy, raw, backbone)
        # from_pretrained returns eval mode and Lightning keeps submodule modes: train like everyone else.
        self.backbone.train()
        if gradient_checkpointing:
            self._enable_gradient_checkpointing()
        self.loss_fn = build_loss(loss, temperature=temperature, symmetric=symmetric,
                                  gather_across_devices=gather_across_devices)
        if matryoshka_dims:
            self.loss_fn = MatryoshkaLoss(self.loss_fn, matryoshka_dims, matryoshka_weights, normalize=normalize)
        #: Prompt tokens left out of pooling (queries, documents), counted as sentence-transformers counts them.
        self.prompt_lengths = ((0, 0) if pool_prompt else
                               (prompt_token_count(self.tokenizer, query_prompt),
                                prompt_token_count(self.tokenizer, document_prompt)))
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        #: What chooses the encoding path (:mod:`lightning_embed.training.encoding`).
        self.encoding_options = EncodingOptions(pack_sequences, split_by_length, gradcache_chunk_size)
        self._encoding: EncodingPath | None = None  # chosen at fit start, or on first use outside a fit
        self._attention_before_fit: str | None = None
        self.gradient_checkpointing = gradient_checkpointing

    # ---- encoding -------------------------------------------------------------------------------------

    def encode_batch(self, encoding: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embeds a tokenised batch: backbone, pooling over real tokens, L2 normalisation (fp32 out)."""
        out = self.backbone(input_ids=encoding["input_ids"], attention_mask=encoding["attention_mask"])
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        # pooling_mask: the attention mask without the prompt's tokens (pool_prompt: false)
        emb = pool(hidden, encoding.get("pooling_mask", encoding["attention_mask"]), self.hparams.pooling)
        return F.normalize(emb, dim=-1) if self.hparams.normalize else emb

    def make_collator(self):
        """The collator that tokenises pairs for this model (lengths, prompts, tokenizer)."""
        from lightning_embed.data.batches import PairCollator

        return PairCollator(
            self.tokenizer,
            query_max_length=self.hparams.query_max_length,
            document_max_length=self.hparams.document_max_length,
            query_prompt=self.hparams.query_prompt,
            document_prompt=self.hparams.document_prompt,
        )

    @property
    def gradcache_chunk_size(self) -> int | None:
        """GradCache mini-batch size, or None (the FLOP model counts GradCache's extra forward)."""
        return self.encoding_options.gradcache_chunk_size

    @gradcache_chunk_size.setter
    def gradcache_chunk_size(self, value: int | None) -> None:
        self.choose_encoding(gradcache_chunk_size=value)

    def choose_encoding(self, **changes: Any) -> None:
        """Changes encoding options (``pack_sequences``, ``split_by_length``, ``gradcache_chunk_size``).

        The path is chosen again on next use (or at fit start); the hyper-parameters, and so the run record,
        follow.
        """
        self.encoding_options = dataclasses.replace(self.encoding_options, **changes)
        self.hparams.update(changes)
        self._encoding = None

    @property
    def encoding(self) -> EncodingPath:
        """The encoding path (padded, GradCache, split or packed), chosen once: at fit start or on first use."""
        if self._encoding is None:
            self._encoding, _ = choose_encoding_path(self, self.encoding_options)
        return self._encoding

    def encode_pair_batch(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Query and document embeddings of a :class:`~lightning_embed.data.batches.PairBatch`, on the encoding path."""
        return self.encoding.encode(batch)

    def micro_batch_plans(self, batch) -> list[list[tuple[list[int], int]] | None]:
        """The length-sorted micro-batches (queries, documents) a batch is encoded in (None: as one)."""
        path = self.encoding
        return path.micro_batch_plans(batch) if hasattr(path, "micro_batch_plans") else [None, None]

    @property
    def causal(self) -> bool:
        """Whether the backbone attends causally: a decoder not made ``bidirectional`` (nor loaded so)."""
        return self.backbone_info.is_decoder and attends_causally(self.backbone)

    def packing_enabled(self) -> bool:
        """Whether batches are encoded packed (the encoding path is the packed one)."""
        return self.encoding.kind == "packed"

    def _resolve_packing(self) -> tuple[bool, str | None]:
        """Decides ``pack_sequences`` for this backbone: (pack?, why; None when there is nothing to say)."""
        return resolve_packing(self, self.encoding_options)

    def computed_positions(self, batch) -> list[tuple[int, int] | None]:
        """(positions, squared widths) the encoding path would compute per encoding of a batch.

        None: its padded shape, as given. A packed batch is one forward over queries and documents together:
        its total is reported on the queries. During a fit, the FLOP callback reads what the path actually
        computed (``encoding.computed``) instead.
        """
        return self.encoding.plan(batch)

    def forward(self, batch) -> torch.Tensor:
        """Contrastive loss of a :class:`~lightning_embed.data.batches.PairBatch`."""
        queries, documents = self.encode_pair_batch(batch)
        # A mixture source without in-batch negatives (lightning_embed.data.mixtures) marks its batches.
        return self._contrastive_loss(queries, documents, batch.num_negatives,
                                      getattr(batch, "in_batch_negatives", True))

    def _contrastive_loss(self, queries: torch.Tensor, documents: torch.Tensor, num_negatives: int,
                          in_batch_negatives: bool = True) -> torch.Tensor:
        # Logits and loss in fp32 under mixed precision: autocast would run the similarity matmul in
        # bf16/fp16 even on fp32 embeddings (about 3 significant digits on logits up to 1/temperature).
        with torch.autocast(device_type=queries.device.type, enabled=False):
            return call_loss(self.loss_fn, queries.float(), documents.float(), num_negatives, in_batch_negatives)

    # ---- steps ----------------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self(batch)
        # Mean over ranks: under DDP with cross-device negatives, the loss of the whole global batch.
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def held_out_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The held-out loss of a batch and its query and document embeddings (``val/loss`` per batch)."""
        queries, documents = self.encode_pair_batch(batch)
        # The held-out loss is computed without cross-device gathering: it must not depend on world size.
        parts = self.loss_fn.modules() if isinstance(self.loss_fn, nn.Module) else [self.loss_fn]
        losses = [m for m in parts if getattr(m, "gather_across_devices", False)]
        for m in losses:
            m.gather_across_devices = False
        try:
            loss = self._contrastive_loss(queries, documents, batch.num_negatives)
        finally:
            for m in losses:
                m.gather_across_devices = True
        return loss, queries, documents

    def _eval_step(self, batch, stage: str) -> None:
        loss, queries, documents = self.held_out_loss(batch)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=len(batch), sync_dist=True)
        b = len(batch)
        self._val_outputs.append((queries.detach().cpu(), documents[:b].detach().cpu(), batch.positive_ids.cpu()))

    def on_validation_epoch_start(self) -> None:
        self._val_outputs.clear()

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self) -> None:
        self._log_retrieval("val")

    def on_test_epoch_end(self) -> None:
        self._log_retrieval("test")

    def _log_retrieval(self, stage: str) -> None:
        distributed = self.trainer.world_size > 1
        if not self._val_outputs and not distributed:
            return
        outputs, self._val_outputs = self._val_outputs, []
        if outputs:
            queries, positives, ids = (torch.cat([o[i] for o in outputs]) for i in range(3))
        else:  # this rank had no batch; it still takes part in the gathers
            queries = positives = torch.zeros(0, 0)
            ids = torch.zeros(0, dtype=torch.long)
        if distributed:
            # The last global batch may leave ranks with different numbers of rows (or none).
            queries, positives, ids = (self._gather_rows(t) for t in (queries, positives, ids))
            if len(ids) == 0:
                return
        # One row per distinct document: duplicates of a positive would split its relevance.
        doc_ids, first = _unique_first(ids)
        metrics = retrieval_metrics(queries, positives[first], ids, doc_ids)
        for name, value in metrics.items():
            # Every rank computed the same value from the gathered embeddings; sync_dist keeps it available to
            # callbacks (ModelCheckpoint monitoring it) on every rank.
            self.log(f"{stage}/{name}", value, prog_bar=name == "ndcg@10", sync_dist=True)

    def _gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenates every rank's rows (rank order; row counts and widths may differ), on the CPU."""
        shape = torch.tensor([tensor.shape[0], tensor.shape[1] if tensor.ndim > 1 else 0], device=self.device)
        shapes = self.all_gather(shape).view(-1, 2).tolist()
        rows = max(r for r, _ in shapes)
        trailing = (max(w for _, w in shapes),) if tensor.ndim > 1 else ()
        padded = tensor.new_zeros((rows, *trailing))
        if tensor.numel():  # ranks with rows all have the full width; an empty rank sends zeros
            padded[: tensor.shape[0]] = tensor
        gathered = self.all_gather(padded.to(self.device))
        return torch.cat([g[:r] for g, (r, _) in zip(gathered, shapes)]).cpu()

    # ---- optimisation ---------------------------------------------------------------------------------

    def configure_optimizers(self):
        decay, no_decay = [], []
        matrices = getattr(self, "_matrix_params", set())
        for name, p in self.backbone.named_parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 or _unwrapped_name(name) in matrices else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": self.hparams.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        # The fused kernel (the HF Trainer's default too): the same update, several times faster on CPU, where
        # the unfused step over SmolLM2-135M's parameters takes about a second. Plain tensors on CPU/CUDA only
        # (not FSDP's DTensors or flat parameters, which keep the default implementation).
        params = decay + no_decay
        fused = bool(params) and all(type(p) is nn.Parameter and not hasattr(p, "device_mesh")
                                     and p.device.type in ("cpu", "cuda")
                                     and p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params)
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.learning_rate, betas=tuple(self.hparams.betas),
                                      fused=fused or None)
        if fused:
            # Lightning refuses to clip gradients of an optimizer that unscales inside its step. bf16 has no
            # scaler; an fp16 GradScaler then unscales before the step, as for the unfused optimizer.
            optimizer._step_supports_amp_scaling = False
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = warmup_then_decay(total, self.hparams.warmup_ratio, self.hparams.lr_schedule)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints: only what cannot be rebuilt from the backbone -----------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        state = checkpoint["state_dict"]
        # FSDP and FSDP2 load the weights inside the strategy, strictly and before on_load_checkpoint could
        # fill the frozen ones in: their (sharded) checkpoints keep the full state.
        if len(trainable) < len(state) and not _strategy_loads_weights(self._trainer):
            # Frozen weights are reloaded from the backbone, so adapter checkpoints stay small.
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k in trainable}
            checkpoint["lightning_embed_partial_state"] = True
        checkpoint["lightning_embed"] = {"backbone_info": self.backbone_info.__dict__}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("lightning_embed_partial_state"):
            state = checkpoint["state_dict"]
            for key, value in self.state_dict().items():
                state.setdefault(key, value)

    # ---- distributed: FSDP units and FSDP2 sharding ---------------------------------------------------

    def configure_model(self) -> None:
        """Shards the backbone for Lightning's FSDP strategies (nothing to do for the others).

        - ``ModelParallelStrategy`` (FSDP2): ``fully_shard`` each module of the tuning strategy's
          :meth:`~lightning_embed.strategy.TuningStrategy.fsdp_wrap_modules`, each transformer block and
          then the backbone, over the ``data_parallel`` dimension of ``self.device_mesh``. Frozen and
          trainable parameters (LoRA) may share a unit. Tensor parallelism is not supported: set the
          strategy's ``tensor_parallel_size`` to 1 and ``data_parallel_size`` to the number of processes.
        - ``FSDPStrategy`` (FSDP1, GPUs): the same modules become FSDP units through ``wrap`` (Lightning's
          manual wrapping; the strategy wraps the root), unless the strategy was given an
          ``auto_wrap_policy``, which then decides. Use ``use_orig_params: true`` (Lightning's default),
          which frozen and LoRA parameters need.

        Lightning calls this hook at every ``fit``/``validate``/``test``; it shards only once.
        """
        # FSDP1 (use_orig_params) turns every parameter into a 1-D view of its shard: note the matrices now,
        # while their shapes are still whole, for configure_optimizers' weight-decay groups.
        if not hasattr(self, "_matrix_params"):
            self._matrix_params = {_unwrapped_name(n) for n, p in self.backbone.named_parameters() if p.ndim >= 2}
        mesh = self.device_mesh
        if mesh is not None:
            self._fully_shard(mesh)
            return
        trainer = self._trainer
        from lightning.pytorch.strategies import FSDPStrategy

        if trainer is not None and isinstance(trainer.strategy, FSDPStrategy):
            if "auto_wrap_policy" not in trainer.strategy.kwargs:
                self._wrap_fsdp_units()

    def _shard_units(self) -> list[nn.Module]:
        """Modules to shard on their own, innermost first: the tuning strategy's extras, then the blocks."""
        from lightning_embed.models.backbones import find_blocks

        _, blocks = find_blocks(self.backbone)
        units: list[nn.Module] = []
        for module in [*self.tuning.fsdp_wrap_modules(self.backbone), *blocks]:
            if all(module is not u for u in units):
                units.append(module)
        return units

    def _fully_shard(self, mesh) -> None:
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if isinstance(self.backbone, FSDPModule):
            return
        names = mesh.mesh_dim_names or ()
        if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
            raise UserError(
                f"ModelParallelStrategy runs with tensor_parallel_size={mesh['tensor_parallel'].size()}, but "
                "lightning-embed shards with FSDP2 only (no tensor parallelism): set the strategy's "
                "tensor_parallel_size: 1 and data_parallel_size to the number of processes (nodes x devices), "
                "as configs/fsdp2.yaml does.")
        dp_mesh = mesh["data_parallel"] if "data_parallel" in names else mesh
        for module in self._shard_units():
            fully_shard(module, mesh=dp_mesh)
        fully_shard(self.backbone, mesh=dp_mesh)

    def _wrap_fsdp_units(self) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import wrap

        if any(isinstance(m, FullyShardedDataParallel) for m in self.backbone.modules()):
            return
        parents = {id(child): (parent, name) for parent in self.backbone.modules()
                   for name, child in parent.named_children()}
        for module in self._shard_units():
            parent, name = parents[id(module)]
            setattr(parent, name, wrap(module))  # wrap() uses the strategy's FSDP settings (enable_wrap)
        # The backbone is a unit too (as under FSDP2): left to Lightning's root unit, the embeddings and final
        # norm took another first step than under DDP (docs/bugs.md); the blocks did not.
        self.backbone = wrap(self.backbone)

    def on_fit_start(self) -> None:
        notes = [self._choose_training_attention()]
        # With the training attention (packing depends on it), before compiling.
        self._encoding, why = choose_encoding_path(self, self.encoding_options)
        notes.append(why)
        if not getattr(self.backbone, "_compiled_call_impl", None):
            compile_, why = self._compile_choice()
            notes.append(f"torch.compile {'on' if compile_ else 'off'} ({why})" if why else None)
            if compile_:
                notes.append(make_room_to_compile())
                self.backbone.compile(dynamic=True)  # in place: parameter names and checkpoints unchanged
        if self.trainer.is_global_zero:
            from lightning_embed.cli.reporting import print_parameter_table, print_training_notes

            print_parameter_table(self)
            print_training_notes(notes)

    def teardown(self, stage: str) -> None:
        if self._attention_before_fit is not None:  # encode/evaluate after fit run as loaded
            hf_model(self.backbone).set_attn_implementation(self._attention_before_fit)
            self._attention_before_fit = None

    def _choose_training_attention(self) -> str | None:
        """Switches to the faster attention for this device and precision when the user chose none."""
        if self.hparams.attn_implementation is not None:
            return None
        longest = max(self.hparams.query_max_length, self.hparams.document_max_length)
        options = self.encoding_options
        packs = options.pack_sequences is not False and not options.other_scheme
        self._attention_before_fit, note = switch_training_attention(self.backbone, self.device,
                                                                     str(self.trainer.precision), longest, packs=packs)
        return note

    def _compile_choice(self) -> tuple[bool, str | None]:
        """Whether to compile the backbone now, and why (None: the user said so)."""
        setting = self.hparams.compile
        if setting != "auto":
            return bool(setting), None
        steps = self.trainer.estimated_stepping_batches
        steps = int(steps) if steps != float("inf") else 10**9
        decision = auto_compile(self.device, steps, self.trainer.world_size, type(self.tuning).auto_compile,
                                decoder=self.backbone_info.is_decoder)
        return decision.compile, f"compile: auto, {decision.reason}"

    def _enable_gradient_checkpointing(self) -> None:
        model = self.backbone
        if hasattr(model, "enable_input_require_grads"):
            # Frozen embeddings would otherwise give checkpointed blocks inputs without grad (no backward).
            model.enable_input_require_grads()
        if not hasattr(model, "gradient_checkpointing_enable"):
            raise UserError(f"{type(model).__name__} does not support gradient checkpointing.")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _strategy_loads_weights(trainer) -> bool:
    """Whether the trainer's strategy restores model weights itself (FSDP, FSDP2) instead of the module."""
    if trainer is None:
        return False
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    return isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))


def _unique_first(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct ids and the index of each one's first occurrence."""
    uniq, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((len(uniq),), len(ids), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(ids)), reduce="amin")
    return uniq, first


def _unwrapped_name(name: str) -> str:
    """A parameter's name without the wrappers' path segments (FSDP1, activation checkpointing)."""
    wrappers = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")
    return ".".join(part for part in name.split(".") if part not in wrappers)
