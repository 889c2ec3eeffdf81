"""Real-token throughput and held-out loss: lightning-embed against sentence-transformers' trainer.

Systems, on the same backbone, data (``builtin:stdlib-code``), batch size, learning rate and schedule
(AdamW, weight decay 0.1, 10% warm-up then cosine), max lengths and number of steps:

- ``st-fp32``: ``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss`` (scale 40 = lightning-embed's
  temperature 0.025), its defaults (fp32, random batches);
- ``st-bf16``: the same with ``bf16=True`` (its best on this hardware);
- ``le-default``: ``lightning-embed fit`` as it comes: ``EmbeddingModule`` + ``PairDataModule`` at their
  defaults and the precision ``fit`` picks (:func:`lightning_embed.training.precision.default_precision`: bf16-mixed
  on a CPU with AMX/AVX512-BF16 or a bf16 GPU). That includes sequence packing (``pack_sequences: auto``,
  :mod:`lightning_embed.training.packing`: queries and documents in packed rows, one forward per step), the training
  attention of :mod:`lightning_embed.training.acceleration` (eager on CPU in bf16 for short texts) and
  ``compile: auto`` (off for a run this short);
- ``le-padded``: ``le-default`` without packing (padded batches, as sentence-transformers computes them):
  packing's share, and a check that packing leaves the held-out loss alone;
- ``le-fast`` (``--systems``): plus ``compile=True`` (its compilation falls in the warm-up steps: keep
  ``--warmup`` >= 3);
- ``le-sdpa`` (``--systems``): ``le-padded`` with the backbone's sdpa attention: the attention switch's share;
- ``le-split`` (``--systems``): ``split_by_length=True`` (length-sorted micro-batches instead of packing);
- ``le-fp32`` (``--systems``): fp32: the old default, the same work as ``st-fp32``;
- ``le-grouped`` (``--systems``): plus ``group_by_length=True`` (changes which examples share a batch, so it
  is an option, not a default).

lightning-embed runs with ``symmetric=False`` so both optimise the same loss (MNRL is query->document only),
and with gradient clipping at norm 1.0 (``gradient_clip_val``), the HF Trainer's default ``max_grad_norm``.
The systems alternate, ``--repeats`` rounds (round r uses data seed r for every system); each reports the
steady-state seconds per step (step-start to step-start, from a Lightning callback / an HF
``TrainerCallback``, first ``--warmup`` steps skipped), real (non-padding) tokens per second over the timed
steps, the share of real tokens among computed positions, MFU (hardware FLOP of
:class:`lightning_embed.flops.model.FlopModel` per second over a bf16 or fp32 matmul peak measured in the same
run), and the held-out loss after training: InfoNCE query->document at temperature 0.025, in fp32, on the
first ``--val-examples`` pairs of the held-out split, the same evaluation for every system. Medians over
rounds and ratios to ST are printed.

    python benchmarks/bench_throughput.py --quick                  # a few minutes
    python benchmarks/bench_throughput.py --workloads smollm2-full
    python benchmarks/bench_throughput.py --systems st-bf16,le-default,le-padded,le-sdpa,le-fast
    python benchmarks/bench_throughput.py                          # all three workloads (~25 min, 2 cores)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lightning_embed.data.batches import PairCollator  # noqa: E402
from lightning_embed.data.datamodule import PairDataModule  # noqa: E402
from lightning_embed.data.reading import read_examples  # noqa: E402
from lightning_embed.flops.model import FlopModel, TokenStats  # noqa: E402
from lightning_embed.losses.infonce import InfoNCELoss  # noqa: E402
from lightning_embed.models.backbones import load_tokenizer, resolve_backbone  # noqa: E402
from lightning_embed.models.pooling import pool  # noqa: E402
from lightning_embed.training.module import EmbeddingModule  # noqa: E402
from lightning_embed.training.precision import default_precision  # noqa: E402


@dataclass(frozen=True)
class Workload:
    name: str
    backbone: str
    tuning: dict
    batch_size: int
    max_length: int = 64
    learning_rate: float = 1e-4


WORKLOADS = {
    "smollm2-full": Workload("smollm2-full", "smollm2-135m", {"name": "full"}, 16, learning_rate=2e-5),
    "smollm2-lora": Workload("smollm2-lora", "smollm2-135m", {"name": "lora", "rank": 16}, 16, learning_rate=2e-4),
    "minilm-full": Workload("minilm-full", "all-minilm-l6-v2", {"name": "full"}, 32, learning_rate=5e-5),
}
SYSTEMS = ("st-fp32", "st-bf16", "le-default", "le-padded")
#: lightning-embed systems: precision (None: fit's default), then EmbeddingModule and PairDataModule options
#: beyond the defaults. le-default is what ``fit`` does for a run this short (``compile: auto`` stays off
#: below 500 steps); the others fix ``compile``.
LE_SETTINGS = {
    "le-default": (None, {}, {}),
    "le-padded": (None, {"pack_sequences": False, "compile": False}, {}),
    "le-fast": (None, {"compile": True}, {}),
    "le-sdpa": (None, {"attn_implementation": "sdpa", "pack_sequences": False, "compile": False}, {}),
    "le-split": (None, {"split_by_length": True, "compile": False}, {}),
    "le-fp32": ("32-true", {"compile": False}, {}),
    "le-grouped": (None, {"compile": False}, {"group_by_length": True}),
}


# ---------------------------------------------------------------------------------------------- helpers


def matmul_peak(dtype: torch.dtype, device: str, m: int = 2048, k: int = 2048, n: int = 2048,
                seconds: float = 1.5) -> float:
    """Measured FLOP/s of an (m x k) @ (k x n) matmul."""
    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    _sync(device)
    return 2 * m * k * n * count / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def held_out_loss(backbone: torch.nn.Module, tokenizer, val, batch_size: int, max_length: int, device: str) -> float:
    """Mean query->document InfoNCE (temperature 0.025, fp32) over full batches of the held-out pairs."""
    collate = PairCollator(tokenizer, max_length, max_length)
    loss_fn = InfoNCELoss(0.025, symmetric=False, gather_across_devices=False)
    was_training = backbone.training
    backbone.eval()
    losses = []
    with torch.no_grad():
        for i in range(0, len(val) - batch_size + 1, batch_size):
            batch = collate(val[i : i + batch_size])
            emb = []
            for enc in (batch.queries, batch.documents):
                enc = {k: v.to(device) for k, v in enc.items()}
                hidden = backbone(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[0]
                emb.append(F.normalize(pool(hidden.float(), enc["attention_mask"], "mean"), dim=-1))
            losses.append(float(loss_fn(*emb)))
    backbone.train(was_training)
    return statistics.mean(losses)


@dataclass
class Timing:
    """Per-step start stamps, the end of the last step, and each step's masks' token stats."""

    starts: list
    end: float
    stats: list  # TokenStats per step

    def summary(self, warmup: int, flop_model: FlopModel) -> dict:
        times = [b - a for a, b in zip(self.starts, [*self.starts[1:], self.end])][warmup:]
        stats = self.stats[warmup : warmup + len(times)]
        real = sum(s.real_tokens for s in stats)
        padded = sum(s.padded_tokens for s in stats)
        hw = sum(flop_model.count(s).hardware for s in stats)
        total = sum(times)
        return {"s_per_step": statistics.median(times), "real_tok_s": real / total, "real_share": real / padded,
                "hw_flops_s": hw / total, "steps_timed": len(times)}


def _step_stats(masks, computed=None) -> TokenStats:
    """Token stats of a step; where an encoding was computed in another shape (``computed``: the module's
    (positions, squared widths) per mask, micro-batches or packed rows), those positions."""
    total = TokenStats()
    for m, c in zip(masks, computed or [None] * len(masks)):
        s = TokenStats.from_mask(m)
        if c is not None:
            s = TokenStats(s.rows, s.real_tokens, s.real_squares, *c)
        total = TokenStats(*(getattr(total, f) + getattr(s, f) for f in
                             ("rows", "real_tokens", "real_squares", "padded_tokens", "padded_squares")))
    return total


# --------------------------------------------------------------------------------------- lightning-embed


class _LightningStamps(L.Callback):
    def __init__(self):
        self.starts, self.stats, self.end = [], [], 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        _sync(module.device.type)
        self.starts.append(time.perf_counter())
        self.stats.append(_step_stats([batch.queries["attention_mask"], batch.documents["attention_mask"]],
                                      module.computed_positions(batch)))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        _sync(module.device.type)
        self.end = time.perf_counter()


def run_lightning_embed(w: Workload, system: str, steps: int, seed: int):
    precision, module_options, data_options = LE_SETTINGS[system]
    # A fresh compiler state per run: dynamo's per-code caches fill up across runs in one process (each new
    # module is a new guard) and, at its recompile limit, silently run eager, as later rounds did before this.
    torch._dynamo.reset()
    torch.manual_seed(seed)
    module = EmbeddingModule(backbone=w.backbone, tuning=w.tuning, symmetric=False, learning_rate=w.learning_rate,
                             query_max_length=w.max_length, document_max_length=w.max_length, **module_options)
    data = PairDataModule(train="builtin:stdlib-code", batch_size=w.batch_size, seed=seed, **data_options)
    stamps = _LightningStamps()
    trainer = L.Trainer(max_steps=steps, precision=precision or default_precision(), logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[stamps], devices=1,
                        gradient_clip_val=1.0)
    flop_model = FlopModel.from_module(module.backbone)  # probed before compiling (its hooks would recompile)
    trainer.fit(module, datamodule=data)
    return module.backbone, Timing(stamps.starts, stamps.end, stamps.stats), flop_model


# ------------------------------------------------------------------------------------ sentence-transformers


def run_sentence_transformers(w: Workload, system: str, steps: int, seed: int):
    import datasets
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers import models as st_models
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from lightning_embed.strategy import build_strategy

    torch.manual_seed(seed)
    folder = resolve_backbone(w.backbone)[0]
    # Plain text, like lightning-embed: sentence-transformers 6 would otherwise wrap every text of a model with
    # a chat template (SmolLM2's adds a ~27-token system prompt) -- different inputs, different math.
    transformer = st_models.Transformer(
        folder, max_seq_length=w.max_length, module_output_name="token_embeddings",
        modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}})
    if transformer.tokenizer.pad_token is None:
        transformer.tokenizer.pad_token = transformer.tokenizer.eos_token
    if w.tuning["name"] != "full":  # the very same adapters as lightning-embed's strategy
        transformer.auto_model = build_strategy(w.tuning).apply(transformer.auto_model)
    model = SentenceTransformer(modules=[transformer, st_models.Pooling(transformer.get_embedding_dimension(), "mean")])

    step_masks: list = []

    class CountingLoss(MultipleNegativesRankingLoss):
        def forward(self, sentence_features, labels=None):
            step_masks.append([f["attention_mask"] for f in sentence_features])
            return super().forward(sentence_features, labels)

    class Stamps(TrainerCallback):
        def __init__(self):
            self.starts, self.end = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            _sync("cuda" if torch.cuda.is_available() else "cpu")
            self.starts.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            _sync("cuda" if torch.cuda.is_available() else "cpu")
            self.end = time.perf_counter()

    examples = read_examples("builtin:stdlib-code")
    train = datasets.Dataset.from_dict({"anchor": [e.query for e in examples],
                                        "positive": [e.positive for e in examples]})
    args = SentenceTransformerTrainingArguments(
        output_dir="/tmp/bench_throughput_st", max_steps=steps, per_device_train_batch_size=w.batch_size,
        learning_rate=w.learning_rate, weight_decay=0.1, warmup_ratio=0.1, lr_scheduler_type="cosine",
        bf16=system == "st-bf16", seed=seed, data_seed=seed, dataloader_drop_last=True, report_to="none",
        save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    stamps = Stamps()
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train,
                                         loss=CountingLoss(model, scale=40.0), callbacks=[stamps])
    trainer.train()
    stats = [_step_stats(m) for m in step_masks]
    backbone = model[0].auto_model
    return backbone, Timing(stamps.starts, stamps.end, stats), FlopModel.from_module(backbone)


# ------------------------------------------------------------------------------------------------- main


def _is_bf16(system: str) -> bool:
    if system.startswith("st-"):
        return system == "st-bf16"
    return (LE_SETTINGS[system][0] or default_precision()) == "bf16-mixed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated: {', '.join(WORKLOADS)}")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (data seed = round)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps per run")
    parser.add_argument("--val-examples", type=int, default=128, help="held-out pairs for the loss")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--quick", action="store_true",
                        help="1 round, 3 timed steps after 3 warm-up, 64 held-out pairs")
    parser.add_argument("--json", help="write every run's numbers to this file")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps, args.warmup, args.val_examples = 1, 3, 3, 64
    systems = args.systems.split(",")
    unknown = [s for s in systems if s not in LE_SETTINGS and s not in ("st-fp32", "st-bf16")]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from st-fp32, st-bf16, {', '.join(LE_SETTINGS)}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak = {"fp32": 0.0, "bf16": 0.0}

    def measure_peak() -> None:  # the best of several measurements (the machine may be shared), at two shapes
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            for shape in ((2048, 2048, 2048), (1024, 576, 1536)):
                peak[name] = max(peak[name], matmul_peak(dtype, device, *shape))

    measure_peak()
    print(f"device={device} threads={torch.get_num_threads()} matmul peak: fp32 {peak['fp32'] / 1e9:,.0f} GFLOP/s, "
          f"bf16 {peak['bf16'] / 1e9:,.0f} GFLOP/s", flush=True)
    val = read_examples("builtin:stdlib-code", split="val")[: args.val_examples]
    records = []
    for wname in args.workloads.split(","):
        w = WORKLOADS[wname]
        tokenizer = load_tokenizer(w.backbone)
        total = args.warmup + args.steps
        for r in range(args.repeats):
            for system in systems:
                t0 = time.perf_counter()
                if system.startswith("st-"):
                    backbone, timing, flop_model = run_sentence_transformers(w, system, total, seed=r)
                else:
                    backbone, timing, flop_model = run_lightning_embed(w, system, total, seed=r)
                s = timing.summary(args.warmup, flop_model)
                bf16 = _is_bf16(system)
                s["mfu"] = s["hw_flops_s"] / peak["bf16" if bf16 else "fp32"]
                s["mfu_vs_bf16_peak"] = s["hw_flops_s"] / peak["bf16"]
                s["val_loss"] = held_out_loss(backbone, tokenizer, val, w.batch_size, w.max_length, device)
                rec = {"workload": wname, "system": system, "round": r, **s}
                records.append(rec)
                print(f"[{wname} round {r + 1}/{args.repeats}] {system:16s} {s['s_per_step']:7.3f} s/step "
                      f"{s['real_tok_s']:8.0f} real tok/s  real share {s['real_share']:.2f}  MFU {s['mfu']:.2f}  "
                      f"held-out loss {s['val_loss']:.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
                del backbone
                gc.collect()
            measure_peak()
            print(f"matmul peak so far: fp32 {peak['fp32'] / 1e9:,.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:,.0f} GFLOP/s")
        for rec in records:  # MFU against the best peak seen in the whole run
            if rec["workload"] == wname:
                bf16 = _is_bf16(rec["system"])
                rec["mfu"] = rec["hw_flops_s"] / peak["bf16" if bf16 else "fp32"]
                rec["mfu_vs_bf16_peak"] = rec["hw_flops_s"] / peak["bf16"]
        print_table(records, wname, systems, args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"peak": peak, "args": vars(args), "records": records}, handle, indent=1)


def print_table(records, wname, systems, args) -> None:
    rows = {s: [r for r in records if r["workload"] == wname and r["system"] == s] for s in systems}
    med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], float)}
           for s, rs in rows.items() if rs}
    w = WORKLOADS[wname]
    print(f"\n{wname}: {w.backbone} tuning={w.tuning} batch={w.batch_size} max_length={w.max_length} "
          f"lr={w.learning_rate} steps={args.warmup}+{args.steps} (warm-up+timed) repeats={args.repeats} "
          f"(medians)")
    print(f"{'system':16s} {'s/step':>7s} {'real tok/s':>10s} {'vs st-fp32':>10s} {'vs st-bf16':>10s} "
          f"{'real share':>10s} {'MFU':>6s} {'MFU/bf16pk':>10s} {'held-out loss (per round)':>28s}")
    for s, m in med.items():
        ratio = {b: (m["real_tok_s"] / med[b]["real_tok_s"]) if b in med else float("nan")
                 for b in ("st-fp32", "st-bf16")}
        losses = " ".join(f"{r['val_loss']:.3f}" for r in rows[s])
        print(f"{s:16s} {m['s_per_step']:7.3f} {m['real_tok_s']:10.0f} {ratio['st-fp32']:9.2f}x "
              f"{ratio['st-bf16']:9.2f}x "
              f"{m['real_share']:10.2f} {m['mfu']:6.2f} {m['mfu_vs_bf16_peak']:10.2f}   {m['val_loss']:.4f} ({losses})")
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())
