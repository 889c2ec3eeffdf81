"""Where a CPU training step goes at a realistic batch: forward, backward, optimizer, data, callbacks; MFU.

Runs ``lightning-embed fit`` itself (its trainer, callbacks and defaults: packing, bf16-mixed where the CPU
has it, ``compile: auto``) for SmolLM2-135M full fine-tuning and LoRA r16 on ``builtin:python-code`` at
each of ``--batch-sizes`` (128), with Lightning's ``SimpleProfiler``, and prints per workload the mean seconds
per step after ``--warmup`` steps, split into

- forward: the strategy's ``training_step`` (encoding, pooling, loss);
- backward: the strategy's ``backward``;
- optimizer: the module's ``optimizer_step`` less the two above and its callback hooks (clipping, AdamW, zeroing);
- data: ``train_dataloader_next`` (collation and tokenization in the training process);
- callbacks: every callback hook of the step (FLOP counter, progress, checkpointing);
- other: the rest of ``run_training_batch`` and the module's batch hooks (the loop between batches, a few
  microseconds, is not timed);

and MFU: the run record's hardware FLOP per step over the mean step time, over the matmul peak of the run's
precision measured in the same process (the best of three 2048^3 and 4096x1024x4096 matmuls, before and after).

    python benchmarks/step_breakdown.py > benchmarks/results/step-breakdown-cpu-DATE.txt
    python benchmarks/step_breakdown.py --smoke        # a tiny model, seconds: the test suite runs this
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from lightning.pytorch.profilers import SimpleProfiler  # noqa: E402

WORKLOADS = {"full": ({"name": "full"}, 5e-5), "lora": ({"name": "lora", "rank": 16}, 5e-4)}


class DurationsProfiler(SimpleProfiler):
    """``SimpleProfiler`` that also writes its raw durations (seconds per call, by action) to a JSON file."""

    def __init__(self, durations_file: str):
        super().__init__(dirpath=str(Path(durations_file).parent), filename="profile")  # its report: a file
        self.durations_file = durations_file

    def teardown(self, stage: str | None) -> None:
        Path(self.durations_file).write_text(json.dumps(dict(self.recorded_durations)))
        super().teardown(stage)


def peaks(smoke: bool = False) -> dict[str, float]:
    shapes, seconds = (((256, 256, 256),), 0.1) if smoke else (((2048, 2048, 2048), (4096, 1024, 4096)), 1.5)
    from bench_throughput import matmul_peak  # beside this script

    return {name: max(matmul_peak(dtype, "cpu", *shape, seconds=seconds) for shape in shapes for _ in range(3))
            for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))}


def run(workload: str, batch_size: int, args, folder: Path) -> dict:
    """One ``fit``: the profiler's durations and the run record."""
    from lightning_embed.cli.app import main

    tuning, rate = WORKLOADS[workload]
    root = folder / f"{workload}-{batch_size}"
    durations = root / "durations.json"
    root.mkdir(parents=True)
    argv = ["fit", f"--model.backbone={args.backbone}", f"--model.tuning={json.dumps(tuning)}",
            f"--model.learning_rate={rate}", "--model.query_max_length=32", "--model.document_max_length=64",
            f"--data.train={args.train}", f"--data.batch_size={batch_size}", "--data.max_val_examples=32",
            f"--trainer.max_steps={args.warmup + args.steps}", f"--trainer.default_root_dir={root}",
            "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.num_sanity_val_steps=0",
            "--trainer.limit_val_batches=0", "--flops.initial_validation=false", f"--flops.runs_file={root}/runs.jsonl",
            "--trainer.profiler=step_breakdown.DurationsProfiler",
            f"--trainer.profiler.durations_file={durations}", *args.fit_args]
    with contextlib.redirect_stdout(sys.stderr):  # fit's progress to stderr: stdout is the report
        main(argv)
    return {"durations": json.loads(durations.read_text()),
            "record": json.loads((root / "runs.jsonl").read_text().splitlines()[-1])}


_OUTER_HOOKS = (".on_train_batch_start", ".on_train_batch_end")  # called around run_training_batch
_INNER_HOOKS = (".on_before_backward", ".on_after_backward", ".on_before_optimizer_step", ".on_before_zero_grad")


def breakdown(durations: dict[str, list[float]], warmup: int) -> dict[str, float]:
    """Mean seconds per step of each part, after ``warmup`` steps (means, so that the parts add up).

    Lightning calls the batch start/end hooks outside ``run_training_batch`` and the backward/optimizer
    hooks inside the module's ``optimizer_step``; the step total is the batch, the data and the outer hooks.
    """
    batch = durations.get("run_training_batch", [])[warmup:]
    steps = len(batch)

    def one(suffix: str) -> list[float]:
        found = [v for k, v in durations.items() if k.endswith(suffix) and len(v) == steps + warmup]
        return found[0][warmup:] if found else [0.0] * steps

    def summed(prefixes: tuple[str, ...], suffixes: tuple[str, ...]) -> list[float]:
        keys = [k for k, v in durations.items()
                if k.startswith(prefixes) and k.endswith(suffixes) and len(v) == steps + warmup]
        return [sum(durations[k][warmup + i] for k in keys) for i in range(steps)]

    forward, backward = one("Strategy.training_step"), one("Strategy.backward")
    optimizer_step, data = one(".optimizer_step"), one("train_dataloader_next")
    outer_callbacks = summed(("[Callback]",), _OUTER_HOOKS)
    inner_callbacks = summed(("[Callback]",), _INNER_HOOKS)
    outer_module = summed(("[LightningModule]", "[Strategy]"), _OUTER_HOOKS)
    parts = {
        "forward": forward, "backward": backward,
        "optimizer": [o - f - b - c for o, f, b, c in zip(optimizer_step, forward, backward, inner_callbacks)],
        "data": data, "callbacks": [o + i for o, i in zip(outer_callbacks, inner_callbacks)],
    }
    totals = [sum(x) for x in zip(batch, data, outer_callbacks, outer_module)]
    out = {name: statistics.fmean(values) if values else 0.0 for name, values in parts.items()}
    out["total"] = statistics.fmean(totals) if totals else 0.0
    out["other"] = out["total"] - sum(out[name] for name in parts)  # the rest of the batch and module hooks
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--train", default="builtin:python-code")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--steps", type=int, default=4, help="timed steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="a tiny model, few steps: checks the script runs")
    parser.add_argument("fit_args", nargs="*", help="more `fit` arguments, e.g. --model.compile=true")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the profiler's class path: step_breakdown.*
    peak_before = peaks(args.smoke)
    print(f"command: python benchmarks/step_breakdown.py {' '.join(sys.argv[1:])}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    from lightning_embed.training.precision import describe_hardware

    print(f"hardware: {describe_hardware()}; {os.cpu_count()} logical cores; torch {torch.__version__}; "
          f"python {platform.python_version()}; 1-min load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:  # a tiny random Llama on 64 made-up pairs: the same code in seconds
            from lightning_embed.testing import make_tiny_backbone

            args.backbone = str(make_tiny_backbone("llama", Path(tmp) / "tiny-llama"))
            args.train = str(Path(tmp) / "pairs.jsonl")
            Path(args.train).write_text("".join(json.dumps({"query": f"question {i}", "positive": f"answer {i} " * 5})
                                                + "\n" for i in range(64)))
            args.batch_sizes = [min(b, 8) for b in args.batch_sizes]
        for batch_size in args.batch_sizes:
            for workload in args.workloads:
                results[workload, batch_size] = run(workload, batch_size, args, Path(tmp))
    peak_after = peaks(args.smoke)
    peak = {k: max(peak_before[k], peak_after[k]) for k in peak_before}
    print(f"matmul peak: bf16 {peak['bf16'] / 1e9:,.0f} GFLOP/s, fp32 {peak['fp32'] / 1e9:,.0f} GFLOP/s "
          f"(bf16 before {peak_before['bf16'] / 1e9:,.0f} / after {peak_after['bf16'] / 1e9:,.0f})")
    print(f"{args.steps} timed steps after {args.warmup}; mean seconds per step; MFU: hardware FLOP per second over "
          "the matmul peak of the run's precision")
    header = ("workload", "batch", "total", "forward", "backward", "optimizer", "data", "callbacks", "other",
              "tokens/s", "MFU")
    print(" ".join(f"{h:>10}" for h in header))
    for (workload, batch_size), result in results.items():
        parts = breakdown(result["durations"], args.warmup)
        record = result["record"]
        precision = record["config"]["trainer"]["precision"]
        hw_per_step = record["flops_hardware"] / record["steps"]
        tokens_per_step = record["tokens"] / record["steps"]
        mfu = hw_per_step / parts["total"] / peak["bf16" if "bf16" in str(precision) else "fp32"]
        row = [workload, batch_size, *(f"{parts[k]:.3f}" for k in header[2:9]),
               f"{tokens_per_step / parts['total']:.0f}", f"{mfu:.3f}"]
        print(" ".join(f"{c:>10}" for c in row))
        shares = ", ".join(f"{k} {parts[k] / parts['total']:.0%}" for k in header[3:9])
        print(f"{'':>10} shares: {shares}; precision {precision}, hardware FLOP per step {hw_per_step:.3g}, "
              f"real tokens per step {tokens_per_step:.0f}")
    print(f"1-min load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
