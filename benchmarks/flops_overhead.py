"""Overhead of FLOP counting: FlopCallback's per-step cost against the step it counts, and one-off costs.

Measures, in one real ``Trainer.fit`` of an EmbeddingModule on fixed-shape synthetic pairs:

- the time spent inside ``FlopCallback.on_train_batch_end`` per step (token stats of the masks, one
  all-reduce when distributed, one host copy, the count, throughput bookkeeping, logging);
- the step time (from ``on_train_batch_start`` to ``on_train_batch_end``, optimizer step included);
- one-off costs: deriving the FLOP model (probe forwards) and, with a budget, sampling the loader.

Run::

    python benchmarks/flops_overhead.py                                  # tiny GPT-NeoX (CPU friendly)
    python benchmarks/flops_overhead.py --backbone smollm2-135m --num-layers 4 --batch-size 16
    python benchmarks/flops_overhead.py --meta pythia-2.8b               # probe time on the meta device

The target is an overhead below 1% of the step time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from lightning_embed.flops.callback import FlopCallback  # noqa: E402
from lightning_embed.flops.model import FlopModel  # noqa: E402


class TimedFlopCallback(FlopCallback):
    """FlopCallback that times its own per-step hook."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hook_times: list[float] = []
        self.setup_time = 0.0

    def setup(self, trainer, pl_module, stage):
        t = time.perf_counter()
        super().setup(trainer, pl_module, stage)
        self.setup_time = time.perf_counter() - t

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        t = time.perf_counter()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.hook_times.append(time.perf_counter() - t)


class StepTimer(Callback):
    """Wall time of each training step (forward, backward, optimizer step)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)


def synthetic_data(batches: int, batch_size: int, query_len: int, doc_len: int, vocab: int):
    """Fixed-shape pairs with some padding (a quarter of the rows are half length)."""
    from lightning_embed.data.batches import PairBatch

    def mask(rows: int, width: int) -> torch.Tensor:
        m = torch.ones(rows, width, dtype=torch.long)
        m[: rows // 4, width // 2 :] = 0
        return m

    g = torch.Generator().manual_seed(0)
    data = [PairBatch({"input_ids": torch.randint(5, vocab, (batch_size, query_len), generator=g),
                       "attention_mask": mask(batch_size, query_len)},
                      {"input_ids": torch.randint(5, vocab, (batch_size, doc_len), generator=g),
                       "attention_mask": mask(batch_size, doc_len)}, 0, torch.arange(batch_size))
            for _ in range(batches)]

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(data, batch_size=None, shuffle=False)

    return Data()


def run_fit(args) -> None:
    from lightning_embed.training.module import EmbeddingModule

    backbone = args.backbone
    if backbone == "tiny":
        from lightning_embed.testing import make_tiny_backbone

        backbone = str(make_tiny_backbone("gpt_neox", tempfile.mkdtemp(), hidden=128, layers=4, heads=4))
    module = EmbeddingModule(backbone=backbone, num_layers=args.num_layers, tuning=args.tuning)
    vocab = int(module.backbone.config.vocab_size)
    data = synthetic_data(args.steps + args.warmup, args.batch_size, args.query_len, args.doc_len, vocab)
    flop_cb = TimedFlopCallback(max_flops=None, runs_file=None, log_every_n_steps=args.log_every)
    timer = StepTimer()
    trainer = L.Trainer(max_steps=args.steps + args.warmup, callbacks=[flop_cb, timer], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="auto", devices=1, precision=args.precision)
    trainer.fit(module, data)
    hooks = flop_cb.hook_times[args.warmup :]
    steps = timer.times[args.warmup :]
    hook_ms, step_ms = statistics.median(hooks) * 1e3, statistics.median(steps) * 1e3
    chip = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device: {trainer.strategy.root_device} ({chip}), "
          f"threads {torch.get_num_threads()}, backbone {args.backbone} (layers {args.num_layers or 'all'}), "
          f"tuning {args.tuning}, batch {args.batch_size} x ({args.query_len} + {args.doc_len}) tokens")
    print(f"step time (median of {len(steps)}): {step_ms:.2f} ms")
    print(f"FlopCallback per step (median): {hook_ms * 1e3:.0f} us  (mean {statistics.mean(hooks) * 1e6:.0f} us, "
          f"max {max(hooks) * 1e6:.0f} us)")
    print(f"overhead: {hook_ms / step_ms:.3%} of the step time (target < 1%)")
    print(f"one-off setup (FLOP model probe): {flop_cb.setup_time:.2f} s")
    print(f"last metrics: { {k: round(v, 4) for k, v in flop_cb.last_metrics.items()} }")


def run_meta(name: str) -> None:
    from transformers import AutoModel, GPTNeoXConfig

    sizes = {"pythia-160m": (12, 768, 12, 3072), "pythia-1b": (16, 2048, 8, 8192), "pythia-2.8b": (32, 2560, 32, 10240)}
    layers, width, heads, ffn = sizes[name]
    config = GPTNeoXConfig(vocab_size=50304, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=ffn, rotary_pct=0.25, max_position_embeddings=2048)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    t = time.perf_counter()
    flops = FlopModel.from_module(model)
    print(f"{name} on meta: FLOP model derived in {time.perf_counter() - t:.2f} s; "
          f"{flops.per_example(14, 64).model:.4g} model FLOP per (14 + 64)-token example")
    t = time.perf_counter()
    for _ in range(10000):
        flops.per_example(14, 64)
    print(f"per_example(): {(time.perf_counter() - t) / 10000 * 1e6:.1f} us per call")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tiny", help="'tiny' (a random GPT-NeoX, width 128) or any backbone")
    parser.add_argument("--num-layers", type=int, default=None)
    parser.add_argument("--tuning", default="full")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--query-len", type=int, default=32)
    parser.add_argument("--doc-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--log-every", type=int, default=1, help="log every step: the worst case")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--meta", default=None, help="only time the probe of a Pythia size on the meta device")
    args = parser.parse_args()
    if args.meta:
        run_meta(args.meta)
    else:
        run_fit(args)


if __name__ == "__main__":
    main()
