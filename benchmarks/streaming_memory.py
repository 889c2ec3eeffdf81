"""Streaming: peak memory on 5M pairs against 50k, time to the first step, data pipeline against a training step.

Writes two synthetic parquet sets (``--large`` and ``--small`` pairs, shards of 500k rows in row groups of
50k), then, each in a fresh process so that peak RSS is the run's own:

1. ``fit``: SmolLM2-135M (bundled), ``PairDataModule(train=GLOB, streaming=True, batch_size=16,
   num_workers=1)``, ``--steps`` steps. It reports the peak RSS of the training process and of its
   loader worker, the time from the process start (imports included) and from ``fit()`` to the end of the
   first step, and the mean time of the steps after the first.
2. ``pipeline``: the same stream and collator (the model's tokenizer, max lengths 32 / 96) iterated through
   the training loader alone for ``--pipeline-batches`` batches: examples per second of the data path.

The targets: peak RSS on ``--large`` within 300 MiB of ``--small``; the first step within 30 s of ``fit()``;
the pipeline at least 10x the examples per second a training step consumes. Prints a report fit for
``benchmarks/results/``:

    python benchmarks/streaming_memory.py > benchmarks/results/streaming-memory-cpu-DATE.txt
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning_embed.training.precision import cpu_model  # light: no torch import

_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
          "romeo sierra tango uniform victor whiskey xray yankee zulu sort list file read write parse open close "
          "return value error string number index table column row query answer model train data stream").split()
_SHARD_ROWS = 500_000
_ROW_GROUP = 50_000

_CHILD = r'''
import time
START = time.perf_counter()
import json, resource, sys, warnings
warnings.filterwarnings("ignore")
import lightning as L
import torch

from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.training.module import EmbeddingModule
from lightning_embed.training.precision import default_precision

mode, pattern, steps, batches = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
# compile off: its one-off compilation is not the data pipeline's start-up (the fit's default is "auto").
module = EmbeddingModule(backbone="smollm2-135m", query_max_length=32, document_max_length=96, compile=False)
data = PairDataModule(train=pattern, streaming=True, batch_size=16, num_workers=1, shuffle_buffer=10_000)
result = {"mode": mode}
if mode == "pipeline":
    data.collator = module.make_collator()
    loader = data.train_dataloader()
    t0, n = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        if i == 0:
            result["first_batch_s"] = time.perf_counter() - t0  # worker start, shuffle buffer filled, tokenized
            t0 = time.perf_counter()
            continue
        n += len(batch)
        if i == batches:
            break
    result["examples_per_s"] = n / (time.perf_counter() - t0)
else:
    marks, ready = [], []

    class Clock(L.Callback):
        def on_train_batch_start(self, *args):
            ready.append(time.perf_counter())

        def on_train_batch_end(self, *args):
            marks.append(time.perf_counter())

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, precision=default_precision(),
                        callbacks=[Clock()])
    fit_start = time.perf_counter()
    trainer.fit(module, data)
    result.update(first_step_from_start_s=marks[0] - START, first_step_from_fit_s=marks[0] - fit_start,
                  first_batch_from_fit_s=ready[0] - fit_start,
                  step_s=(marks[-1] - marks[0]) / (len(marks) - 1), steps=len(marks))
result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
result["worker_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print("RESULT " + json.dumps(result))
'''


def write_pairs(folder: Path, pairs: int, seed: int = 0) -> str:
    """Synthetic query/positive pairs (queries ~8 words, positives ~40) in parquet shards; returns the glob.

    Texts are 50k random word sequences, reshuffled per row group, each made unique by the pair's 8-digit
    number (joined by Arrow), so the small and large sets differ in size only, not in text lengths.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = np.array(_WORDS)
    base = {name: pa.array([" ".join(words[r]) for r in rng.integers(0, len(words), size=(_ROW_GROUP, n))])
            for name, n in (("query", 8), ("positive", 40))}
    for shard, start in enumerate(range(0, pairs, _SHARD_ROWS)):
        rows = min(_SHARD_ROWS, pairs - start)
        with pq.ParquetWriter(folder / f"part-{shard:04d}.parquet", pa.schema({"query": pa.string(),
                                                                               "positive": pa.string()})) as writer:
            for group in range(0, rows, _ROW_GROUP):
                n = min(_ROW_GROUP, rows - group)
                # Fixed-width numbers: both sets' texts then have the same token lengths (so the same shapes).
                ids = pa.array([f"{i:08d}" for i in range(start + group, start + group + n)])
                columns = {name: pc.binary_join_element_wise(texts.take(pa.array(rng.permutation(_ROW_GROUP)[:n])),
                                                             ids, " ") for name, texts in base.items()}
                writer.write_table(pa.table(columns), row_group_size=_ROW_GROUP)
    return str(folder / "part-*.parquet")


def _child(mode: str, pattern: str, steps: int, batches: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", _CHILD, mode, pattern, str(steps), str(batches)],
                          capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{mode} on {pattern} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=5_000_000, help="pairs of the large set")
    parser.add_argument("--small", type=int, default=50_000, help="pairs of the small set")
    parser.add_argument("--steps", type=int, default=2, help="training steps per fit (at least 2)")
    parser.add_argument("--pipeline-batches", type=int, default=200, help="batches timed through the data path")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        t = time.perf_counter()
        large = write_pairs(Path(tmp) / "large", args.large)
        write_s = time.perf_counter() - t
        small = write_pairs(Path(tmp) / "small", args.small)
        size = sum(p.stat().st_size for p in (Path(tmp) / "large").iterdir())
        fits = {name: _child("fit", pattern, args.steps, 0) for name, pattern in (("small", small), ("large", large))}
        pipe = _child("pipeline", large, 0, args.pipeline_batches)
    print(f"command: python benchmarks/streaming_memory.py --large {args.large} --small {args.small} "
          f"--steps {args.steps} --pipeline-batches {args.pipeline_batches}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical cores shared with other jobs (1-min load average "
          f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)")
    print(f"python: {platform.python_version()}")
    print(f"data: {args.large} pairs in {-(-args.large // _SHARD_ROWS)} parquet shards, {size / 2**20:.0f} MiB "
          f"(written in {write_s:.0f} s); {args.small} pairs; queries ~8 words, positives ~40")
    print("run: SmolLM2-135M full fine-tuning, batch 16, max lengths 32/96, streaming, 1 loader worker, "
          "shuffle buffer 10000")
    for name in ("small", "large"):
        f = fits[name]
        print(f"fit {name:5s}: peak RSS {f['peak_rss_mib']:.0f} MiB (trainer) + {f['worker_peak_rss_mib']:.0f} MiB "
              f"(loader worker); first batch in {f['first_batch_from_fit_s']:.1f} s, first step done "
              f"{f['first_step_from_fit_s']:.1f} s after fit() "
              f"({f['first_step_from_start_s']:.1f} s after process start); step {f['step_s']:.2f} s")
    total = {n: fits[n]["peak_rss_mib"] + fits[n]["worker_peak_rss_mib"] for n in fits}
    diff = total["large"] - total["small"]
    step_rate = 16 / fits["large"]["step_s"]
    ratio = pipe["examples_per_s"] / step_rate
    print(f"peak RSS, large - small (trainer + worker): {diff:+.0f} MiB (target within 300): "
          f"{'met' if abs(diff) <= 300 else 'NOT met'}")
    first = fits["large"]
    print(f"first step after fit() on the large set: {first['first_step_from_fit_s']:.1f} s (target < 30): "
          f"{'met' if first['first_step_from_fit_s'] < 30 else 'NOT met'}; of which the first batch was ready at "
          f"{first['first_batch_from_fit_s']:.1f} s and the step itself took the rest")
    print(f"data pipeline alone on the large set: first batch {pipe['first_batch_s']:.1f} s after the loader "
          f"starts (worker start, 10000-row shuffle buffer filled, packed, tokenized)")
    print(f"data pipeline: {pipe['examples_per_s']:.0f} examples/s (1 worker, tokenization included) against "
          f"{step_rate:.1f} examples/s consumed by a training step: {ratio:.0f}x (target >= 10): "
          f"{'met' if ratio >= 10 else 'NOT met'}")


if __name__ == "__main__":
    main()
