"""Overhead of EmbeddingModule + Lightning Trainer against a bare PyTorch loop doing the same math.

Same model weights, same pre-tokenised batches, same loss, optimiser and schedule; the two loops alternate
in one process, several rounds, and the medians of steady-state seconds per step are compared (the first
steps of each run are warm-up and not timed). Target: overhead <= 5%.

    python benchmarks/bench_module_overhead.py --backbone tiny --steps 30
    python benchmarks/bench_module_overhead.py --backbone smollm2-135m --steps 8 --batch-size 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lightning_embed.data.batches import PairCollator  # noqa: E402
from lightning_embed.data.reading import read_examples  # noqa: E402
from lightning_embed.losses.infonce import InfoNCELoss  # noqa: E402
from lightning_embed.models.backbones import load_backbone  # noqa: E402
from lightning_embed.models.pooling import pool  # noqa: E402
from lightning_embed.training.module import EmbeddingModule, warmup_then_decay  # noqa: E402


def make_batches(module: EmbeddingModule, n: int, batch_size: int, qlen: int, dlen: int):
    examples = read_examples("builtin:stdlib-code")[: n * batch_size]
    collate = PairCollator(module.tokenizer, query_max_length=qlen, document_max_length=dlen)
    return [collate(examples[i * batch_size:(i + 1) * batch_size]) for i in range(n)]


def bare_loop(backbone_name: str, state: dict, batches, lr: float, precision: str, warmup: int) -> list[float]:
    backbone = load_backbone(backbone_name)
    backbone.load_state_dict(state)
    backbone.train()
    loss_fn = InfoNCELoss(0.025)
    decay = [p for p in backbone.parameters() if p.ndim >= 2]
    no_decay = [p for p in backbone.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=lr,
                            fused=True)  # as EmbeddingModule (fused AdamW by default)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_then_decay(len(batches), 0.1, "cosine"))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    def embed(enc):
        hidden = backbone(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        return F.normalize(pool(hidden, enc["attention_mask"], "mean"), dim=-1)

    stamps = []
    for batch in batches:
        stamps.append(time.perf_counter())
        with autocast:
            loss = loss_fn(embed(batch.queries), embed(batch.documents), batch.num_negatives)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    stamps.append(time.perf_counter())
    return _per_step(stamps, warmup)


class _Stamps(L.Callback):
    def __init__(self):
        self.stamps: list[float] = []

    def on_train_batch_start(self, *args):
        self.stamps.append(time.perf_counter())

    def on_train_end(self, *args):
        self.stamps.append(time.perf_counter())


def lightning_loop(backbone_name: str, state: dict, batches, lr: float, precision: str, warmup: int) -> list[float]:
    module = EmbeddingModule(backbone=backbone_name, learning_rate=lr)
    module.backbone.load_state_dict(state)
    stamps = _Stamps()
    from lightning.pytorch.callbacks import RichProgressBar

    trainer = L.Trainer(
        max_steps=len(batches), precision=precision, logger=False, enable_checkpointing=False,
        enable_model_summary=False, callbacks=[stamps, RichProgressBar()], num_sanity_val_steps=0,
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return _per_step(stamps.stamps, warmup)


def _per_step(stamps: list[float], warmup: int) -> list[float]:
    return [b - a for a, b in zip(stamps[warmup:-1], stamps[warmup + 1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tiny", help="'tiny' (random Llama shape) or any backbone name")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--query-length", type=int, default=32)
    parser.add_argument("--document-length", type=int, default=96)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    args = parser.parse_args()

    name = args.backbone
    if name == "tiny":
        from lightning_embed.testing import make_tiny_backbone

        name = str(make_tiny_backbone("llama", hidden=128, layers=4, heads=4, vocab_size=2000))
    torch.manual_seed(0)
    reference = EmbeddingModule(backbone=name)
    state = {k: v.clone() for k, v in reference.backbone.state_dict().items()}
    batches = make_batches(reference, args.steps + args.warmup, args.batch_size, args.query_length,
                           args.document_length)
    real_tokens = sum(int(b.queries["attention_mask"].sum() + b.documents["attention_mask"].sum()) for b in batches)
    tokens_per_step = real_tokens / len(batches)
    del reference

    bare, lit = [], []
    for r in range(args.rounds):
        bare.append(statistics.median(bare_loop(name, state, batches, 1e-4, args.precision, args.warmup)))
        lit.append(statistics.median(lightning_loop(name, state, batches, 1e-4, args.precision, args.warmup)))
        print(f"round {r + 1}: bare {bare[-1]:.4f} s/step, lightning-embed {lit[-1]:.4f} s/step", flush=True)
    b, m = statistics.median(bare), statistics.median(lit)
    print(f"\nbackbone={args.backbone} batch={args.batch_size} lengths={args.query_length}/{args.document_length} "
          f"precision={args.precision} steps={args.steps} rounds={args.rounds} threads={torch.get_num_threads()}")
    print(f"bare PyTorch loop : {b:.4f} s/step  {tokens_per_step / b:,.0f} real tokens/s")
    print(f"lightning-embed   : {m:.4f} s/step  {tokens_per_step / m:,.0f} real tokens/s")
    print(f"ratio lightning-embed / bare = {m / b:.3f}  (overhead {100 * (m / b - 1):+.1f}%, target <= +5%)")


if __name__ == "__main__":
    main()
