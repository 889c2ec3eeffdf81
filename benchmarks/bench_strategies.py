"""Seconds per training step and peak memory of each tuning strategy.

Usage::

    python benchmarks/bench_strategies.py                    # tiny GPT-NeoX and SmolLM2-135M, all built-ins
    python benchmarks/bench_strategies.py --models tiny --strategies lora qlora --steps 5

Each (model, strategy) runs in a fresh child process so its memory is measured alone; the autocast
settings run one after the other in it, each with its own peak. A step is forward + symmetric InfoNCE on
mean-pooled embeddings (batch 8 = 4 query/document pairs, sequence 64) + backward + AdamW; each setting
starts with an untimed warm-up step (the first one allocates AdamW's state, so every peak includes it).

Memory method (CPU): resident set size (RSS) from ``/proc/self/status``, in MiB above the RSS of the
process just before loading the model (torch, transformers, peft and bitsandbytes already imported).
The weights are first copied out of the safetensors memory map, as moving to a device would. ``model`` is
the RSS after applying the strategy (QLoRA's 4-bit blocks, not the fp32 originals it quantised). ``peak``
is the high-water mark ``VmHWM`` over a setting's steps, reset just before them by writing 5 to
``/proc/self/clear_refs`` (Linux >= 4.0): weights + gradients + AdamW state + activations. glibc is told
to return large freed blocks (``MALLOC_MMAP_THRESHOLD_``, ``malloc_trim``) so RSS tracks live memory.
On CUDA (``--device cuda``) the numbers come from ``torch.cuda.max_memory_allocated`` instead.

Timing on a shared CPU is noisy: ``--threads 1`` is steadier when other processes compete for cores.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

DEFAULT_STRATEGIES = ["full", "lora", "qlora", "freeze", "bias"]


def _rss_bytes(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _release_freed_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: RSS may then over-state live memory a little
        pass


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child(model_name: str, spec: str, autocast: list[bool], steps: int, batch: int, seq: int, device: str) -> dict:
    """Runs one configuration in this process and returns its measurements."""
    warnings.simplefilter("ignore")
    import torch
    import torch.nn.functional as F

    from lightning_embed.models.backbones import load_backbone
    from lightning_embed.strategy import build_strategy, parameter_summary

    torch.manual_seed(0)
    strategy = build_strategy(json.loads(spec) if spec.startswith("{") else spec)
    _import_everything(model_name)  # so the baseline below already holds the code, and "model" is weights
    _release_freed_memory()
    base_rss = _rss_bytes()
    backbone = load_backbone(model_name)
    # transformers maps safetensors files into memory: weights are file pages that become resident only
    # when touched and stay mapped while any tensor of the file lives. Copy them into ordinary memory,
    # as moving to a device would, so RSS counts what the process holds (and QLoRA's dropped fp32
    # weights really leave).
    with torch.no_grad():
        for t in [*backbone.parameters(), *backbone.buffers()]:
            t.data = t.data.clone()
    _release_freed_memory()
    problems = strategy.validate(backbone)
    if problems:
        return {"skipped": problems[0]}
    t0 = time.perf_counter()
    model = strategy.apply(backbone)
    apply_s = time.perf_counter() - t0
    del backbone
    model.to(device)
    _release_freed_memory()
    model_bytes = _rss_bytes() - base_rss
    if device.startswith("cuda"):
        base_cuda = torch.cuda.memory_allocated()
    summary = parameter_summary(model)

    vocab = model.get_input_embeddings().num_embeddings if hasattr(model, "get_input_embeddings") else 500
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, min(vocab, 30000), (batch, seq), generator=g).to(device)
    mask = torch.ones_like(ids)
    mask[1::2, seq // 2 :] = 0  # half the rows padded, as real batches are
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1)
    dtype = torch.bfloat16

    def step(autocast: bool) -> None:
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=autocast):
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        emb = F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1).float()
        q, d = emb[0::2], emb[1::2]
        logits = q @ d.T / 0.025
        labels = torch.arange(len(q), device=logits.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    cuda = device.startswith("cuda")
    results = {}
    for ac in autocast:
        _release_freed_memory()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        peak_reset = _reset_peak()
        step(ac)  # warm-up: allocates AdamW state (the first setting), first-call overheads
        times = []
        for _ in range(steps):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            step(ac)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out = {
            "s_per_step": statistics.median(times),
            "min_s": min(times),
            "apply_s": apply_s,
            "trainable": summary.trainable,
            "total": summary.total,
            "model_MiB": model_bytes / 2**20,
            "peak_MiB": ((_rss_bytes("VmHWM") if peak_reset else _maxrss_bytes()) - base_rss) / 2**20,
            "peak_method": "VmHWM" if peak_reset else "ru_maxrss (lifetime; includes loading)",
        }
        if cuda:
            out["model_MiB"] = base_cuda / 2**20
            out["peak_MiB"] = torch.cuda.max_memory_allocated() / 2**20
            out["peak_method"] = "cuda max_memory_allocated"
        results["on" if ac else "off"] = out
    return results


def _import_everything(model_name: str) -> None:
    """Imports what loading and wrapping will import (tens of MiB of code) without allocating weights."""
    import peft  # noqa: F401
    import torch
    from transformers import AutoConfig, AutoModel

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        pass
    from lightning_embed.models.backbones import resolve_backbone

    path, gguf = resolve_backbone(model_name)
    config = AutoConfig.from_pretrained(path, gguf_file=gguf)
    with torch.device("meta"):
        AutoModel.from_config(config)


def _maxrss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m"],
                        help="'tiny' (a random 2-block GPT-NeoX, width 32), a bundled alias, folder or hub id")
    parser.add_argument("--strategies", nargs="+", default=DEFAULT_STRATEGIES,
                        help="names or JSON specs, e.g. '{\"name\": \"lora\", \"rank\": 32}'")
    parser.add_argument("--autocast", nargs="+", choices=["off", "on"], default=["off", "on"], help="bf16 autocast")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each child (default: torch's)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "SPEC", "AUTOCAST"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        model, spec, autocast = args.child
        settings = [a == "on" for a in autocast.split(",")]
        print(json.dumps(child(model, spec, settings, args.steps, args.batch, args.seq, args.device)))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tiny_dir = None
    rows = []
    header = (
        f"{'model':14} {'strategy':8} {'bf16':4} {'s/step':>8} {'min s':>8} {'trainable':>12} {'model MiB':>10} "
        f"{'peak MiB':>9}"
    )
    print(f"batch {args.batch}, seq {args.seq}, {args.steps} timed steps (median and min), device {args.device}, "
          f"torch threads {args.threads or 'default'}")
    print(header)
    print("-" * len(header))
    for model_name in args.models:
        path = model_name
        if model_name == "tiny":
            if tiny_dir is None:
                from lightning_embed.testing import make_tiny_backbone

                tiny_dir = tempfile.mkdtemp(prefix="bench-tiny-")
                make_tiny_backbone("gpt_neox", tiny_dir)
            path = tiny_dir
        for spec in args.strategies:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", path, spec, ",".join(args.autocast),
                   "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq),
                   "--device", args.device]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            # A fixed mmap threshold makes glibc return every large freed block, so RSS = live memory.
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "HF_HUB_OFFLINE": "1"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            label = spec if len(spec) <= 8 else spec[:8]
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{model_name[:14]:14} {label:8} failed: {tail}")
                rows.append({"model": model_name, "strategy": spec, "error": tail})
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            if "skipped" in res:
                print(f"{model_name[:14]:14} {label:8} n/a: {res['skipped'][:80]}")
                rows.append({"model": model_name, "strategy": spec, **res})
                continue
            for ac, r in res.items():
                rows.append({"model": model_name, "strategy": spec, "autocast": ac, **r})
                print(
                    f"{model_name[:14]:14} {label:8} {ac:4} {r['s_per_step']:8.3f} {r['min_s']:8.3f} "
                    f"{r['trainable']:12,} {r['model_MiB']:10.1f} {r['peak_MiB']:9.1f}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
