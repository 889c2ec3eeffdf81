"""Does bf16 mixed precision (and packing, eager attention, length grouping) hold the held-out loss of fp32?

Trains ``EmbeddingModule(backbone=..., num_layers=...)`` for the same number of steps (same examples per
step count, same schedule) under each setting and several seeds, then validates every run in fp32 on the
held-out split of ``builtin:stdlib-code``; prints each run, the mean and standard deviation per setting,
and the difference of means against fp32 next to the seed-to-seed spread.

    python benchmarks/bench_precision_quality.py                      # smollm2-135m truncated to 4 blocks
    python benchmarks/bench_precision_quality.py --steps 20 --seeds 2 # shorter
    python benchmarks/bench_precision_quality.py --settings fp32,bf16-mixed,fp32+group,bf16-mixed+group
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402

from lightning_embed.data.datamodule import PairDataModule  # noqa: E402
from lightning_embed.training.module import EmbeddingModule  # noqa: E402

SETTINGS = {  # name -> (precision, EmbeddingModule options, PairDataModule options)
    "fp32": ("32-true", {}, {}),
    "bf16-mixed": ("bf16-mixed", {}, {}),  # fit's default here: packed rows, eager attention on CPU
    "fp32-padded": ("32-true", {"pack_sequences": False}, {}),
    "bf16-padded": ("bf16-mixed", {"pack_sequences": False}, {}),
    "bf16-padded-sdpa": ("bf16-mixed", {"pack_sequences": False, "attn_implementation": "sdpa"}, {}),
    "fp32+group": ("32-true", {}, {"group_by_length": True}),
    "bf16-mixed+group": ("bf16-mixed", {}, {"group_by_length": True}),
}


def run(args, precision: str, module_options: dict, data_options: dict, seed: int) -> tuple[float, float]:
    L.seed_everything(seed, verbose=False)
    module = EmbeddingModule(backbone=args.backbone, num_layers=args.num_layers, tuning=args.tuning,
                             learning_rate=args.learning_rate, query_max_length=64, document_max_length=64,
                             **module_options)
    data = PairDataModule(train="builtin:stdlib-code", batch_size=args.batch_size, seed=seed, val_batch_size=32,
                          **data_options)
    common = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    L.Trainer(max_steps=args.steps, precision=precision, num_sanity_val_steps=0, limit_val_batches=0,
              **common).fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    metrics = L.Trainer(precision="32-true", **common).validate(module, datamodule=data, verbose=False)[0]
    return metrics["val/loss"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--tuning", default="full")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--settings", default="fp32-padded,bf16-padded-sdpa,bf16-padded,bf16-mixed",
                        help=f"comma-separated, the first is the reference: {', '.join(SETTINGS)}")
    args = parser.parse_args()
    settings = args.settings.split(",")
    results: dict[str, list[tuple[float, float]]] = {s: [] for s in settings}
    for seed in range(args.seeds):  # settings alternate within each seed
        for name in settings:
            loss, seconds = run(args, *SETTINGS[name], seed)
            results[name].append((loss, seconds))
            print(f"seed {seed} {name:18s} held-out loss {loss:.4f}  train {seconds:.0f} s", flush=True)
    print(f"\n{args.backbone} num_layers={args.num_layers} tuning={args.tuning} steps={args.steps} "
          f"batch={args.batch_size} lr={args.learning_rate} seeds={args.seeds} (held-out loss evaluated in fp32)")
    base = [loss for loss, _ in results[settings[0]]]
    for name in settings:
        losses = [loss for loss, _ in results[name]]
        sd = statistics.stdev(losses) if len(losses) > 1 else float("nan")
        diff = statistics.mean(losses) - statistics.mean(base)
        paired = [a - b for a, b in zip(losses, base)]
        print(f"{name:18s} mean {statistics.mean(losses):.4f} sd {sd:.4f}  diff vs {settings[0]} {diff:+.4f} "
              f"(paired per seed: {' '.join(f'{p:+.4f}' for p in paired)})  "
              f"train time median {statistics.median(s for _, s in results[name]):.0f} s")


if __name__ == "__main__":
    main()
