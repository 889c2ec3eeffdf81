"""Scale-out benchmark: GradCache memory, and DDP step time against one process (CPU, tiny Llama).

    python benchmarks/scale.py                 # both parts, a few minutes on 2 CPU cores
    python benchmarks/scale.py --part memory   # or: --part ddp

Memory. Every configuration trains ``--steps`` steps (forward, backward, AdamW) in a fresh Python
process, so nothing one configuration allocated inflates another. tracemalloc does not see torch's
allocations (they bypass Python's allocator) and torch has no caching allocator on CPU to query, so the
measure is the operating system's: each child reads its resident size just before the first step
(``/proc/self/statm``), resets the kernel's RSS high-water mark (``/proc/self/clear_refs``) and reads it
after the last step (``VmHWM`` in ``/proc/self/status``; where the reset is not allowed, the process's
``resource.getrusage(RUSAGE_SELF).ru_maxrss``), with glibc's mmap threshold fixed (see ``FIXED_MMAP``).
"step peak" = peak - before: the memory training adds on top of the interpreter, libraries, model and
data, i.e. activations, gradients and optimizer state (the last two are the same in every configuration).
Configurations: batch 32 without caching, batch 512 in GradCache mini-batches of 32 (target: step peak
within 1.5x of batch 32), and batch 512 without caching for contrast (``--no-uncached-large`` skips it).

DDP. Lightning's ``ddp`` on 2 processes (launched with torchrun, gloo, one thread each) against one
process (one thread), the same per-process batch, cross-device negatives on: the median step time over
the last steps, and examples per second. On a 2-core machine the two processes share the cores with
everything else, so read the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
QUERY_TOKENS, DOCUMENT_TOKENS = 32, 64


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Resets the kernel's RSS high-water mark (VmHWM) of this process, where Linux allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    """VmHWM (peak RSS since start or the last reset); ru_maxrss where /proc has no status."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _run_child(args: list[str], timeout: int = 1200, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, str(HERE), *args], capture_output=True, text=True,
                         env={**_env(), **(env or {})}, timeout=timeout, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------- memory


def memory_child(backbone: str, batch: int, chunk: int | None, steps: int) -> None:
    """One configuration in this (fresh) process; prints a JSON line."""
    import torch

    from lightning_embed.data.batches import PairBatch
    from lightning_embed.training.module import EmbeddingModule

    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = EmbeddingModule(backbone=backbone, gradcache_chunk_size=chunk)
    module.train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    vocab = module.backbone.config.vocab_size

    def tokens(rows, length):
        return {"input_ids": torch.randint(4, vocab, (rows, length)),
                "attention_mask": torch.ones(rows, length, dtype=torch.long)}

    batches = [PairBatch(tokens(batch, QUERY_TOKENS), tokens(batch, DOCUMENT_TOKENS), 0, torch.arange(batch))
               for _ in range(steps)]
    before = _rss_bytes()
    # Loading the model may have peaked higher than a small step will: measure the step's own high-water.
    reset = _reset_peak_rss()
    times = []
    for b in batches:
        t0 = time.perf_counter()
        loss = module(b)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    peak = _peak_rss_bytes()
    print(json.dumps({"batch": batch, "chunk": chunk, "before": before, "peak": peak, "peak_reset": reset,
                      "step_s": min(times)}))


#: glibc raises its mmap threshold to the size of each large block freed, so after the first step freed
#: activations stay in the heap and peak RSS measures the allocator's retention rather than live tensors
#: (with the default, GradCache's many short-lived mini-batch activations look several times larger). A
#: fixed threshold returns every block of 64 KiB or more to the OS when freed, so RSS follows live memory,
#: as the CUDA caching allocator's statistics would on a GPU. --default-malloc measures without it.
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def memory_part(backbone: str, steps: int, uncached_large: bool, default_malloc: bool = False) -> dict:
    configs = [(32, None), (512, 32)] + ([(512, None)] if uncached_large else [])
    rows = []
    for batch, chunk in configs:
        rows.append(_run_child(["memory-child", backbone, str(batch), str(chunk or 0), str(steps)],
                               env=None if default_malloc else FIXED_MMAP))
        r = rows[-1]
        print(f"  batch {batch:4d}  {'GradCache m=' + str(chunk) if chunk else 'no caching':16s}  "
              f"peak RSS {r['peak'] / 2**20:8.1f} MiB   before step {r['before'] / 2**20:8.1f} MiB   "
              f"step peak {(r['peak'] - r['before']) / 2**20:8.1f} MiB   step {r['step_s']:.2f} s", flush=True)
    small, cached = rows[0], rows[1]
    ratio = (cached["peak"] - cached["before"]) / max(1, small["peak"] - small["before"])
    print(f"  GradCache batch 512 / plain batch 32, step peak: {ratio:.2f}x (target <= 1.5x); "
          f"total peak RSS: {cached['peak'] / small['peak']:.2f}x")
    if len(rows) > 2:
        large = rows[2]
        print(f"  plain batch 512 / GradCache batch 512, step peak: "
              f"{(large['peak'] - large['before']) / max(1, cached['peak'] - cached['before']):.1f}x")
    return {"rows": rows, "ratio": ratio}


# ---------------------------------------------------------------------------------------------------- ddp


def ddp_child(backbone: str, pairs: str, batch: int, steps: int, devices: int) -> None:
    import warnings

    import lightning as L
    import torch

    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.training.module import EmbeddingModule

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    times: list[float] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, *args):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, *args):
            times.append(time.perf_counter() - self.t0)

    L.seed_everything(0)
    module = EmbeddingModule(backbone=backbone, query_max_length=QUERY_TOKENS, document_max_length=DOCUMENT_TOKENS,
                             warmup_ratio=0.0, lr_schedule="constant")
    data = PairDataModule(train=pairs, batch_size=batch)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        max_steps=steps, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[Timer()])
    trainer.fit(module, data)
    if trainer.is_global_zero:
        measured = times[len(times) // 3:]  # skip warm-up steps
        print(json.dumps({"devices": devices, "batch": batch, "step_s": statistics.median(measured),
                          "examples_per_s": devices * batch / statistics.median(measured)}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_part(backbone: str, work: Path, batch: int, steps: int) -> dict:
    pairs = work / "pairs.jsonl"
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()
    with pairs.open("w") as f:
        for i in range(2 * batch * (steps + 2)):
            q = " ".join(words[(i * j) % len(words)] for j in range(1, 12))
            d = " ".join(words[(i + j * 3) % len(words)] for j in range(40))
            f.write(json.dumps({"query": f"{q} {i}", "positive": f"{d} {i}"}) + "\n")
    single = _run_child(["ddp-child", backbone, str(pairs), str(batch), str(steps), "1"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(HERE), "ddp-child", backbone, str(pairs), str(batch), str(steps), "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=1200, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"DDP run failed:\n{out.stderr[-4000:]}")
    ddp = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
    for r in (single, ddp):
        print(f"  {r['devices']} process(es) x batch {r['batch']}: step {r['step_s'] * 1000:7.1f} ms (median), "
              f"{r['examples_per_s']:7.1f} examples/s")
    print(f"  DDP step time / one process: {ddp['step_s'] / single['step_s']:.2f}x; "
          f"throughput {ddp['examples_per_s'] / single['examples_per_s']:.2f}x")
    return {"single": single, "ddp": ddp}


# --------------------------------------------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "memory-child":
        backbone, batch, chunk, steps = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        return memory_child(backbone, batch, chunk or None, steps)
    if len(sys.argv) > 1 and sys.argv[1] == "ddp-child":
        return ddp_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["all", "memory", "ddp"], default="all")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="training steps per memory configuration")
    parser.add_argument("--ddp-batch", type=int, default=32, help="examples per process in the DDP comparison")
    parser.add_argument("--ddp-steps", type=int, default=12)
    parser.add_argument("--no-uncached-large", action="store_true", help="skip batch 512 without caching")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's dynamic mmap threshold (RSS then includes freed, retained heap)")
    args = parser.parse_args()
    os.environ.update(_env())
    sys.path.insert(0, str(ROOT))
    from lightning_embed.testing import make_tiny_backbone

    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        work = Path(tmp)
        backbone = str(make_tiny_backbone("llama", work / "llama", hidden=args.hidden, layers=args.layers, heads=4))
        print(f"tiny Llama: hidden {args.hidden}, {args.layers} blocks; queries {QUERY_TOKENS} tokens, "
              f"documents {DOCUMENT_TOKENS} tokens; CPU, 1 thread per process", flush=True)
        if args.part in ("all", "memory"):
            allocator = "glibc default" if args.default_malloc else "fixed 64 KiB mmap threshold"
            print(f"GradCache memory (fresh process per configuration, peak RSS, {allocator}):", flush=True)
            memory_part(backbone, args.steps, not args.no_uncached_large, args.default_malloc)
        if args.part in ("all", "ddp"):
            print("DDP step time (Lightning ddp, gloo, torchrun) against one process:", flush=True)
            ddp_part(backbone, work, args.ddp_batch, args.ddp_steps)


if __name__ == "__main__":
    main()
