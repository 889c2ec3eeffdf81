"""Attention forward + backward: PyTorch's sdpa kernels against plain eager attention, by length and dtype.

One SmolLM2-135M attention layer's shapes (9 heads of 64), a padding + causal mask as a padded batch has,
fp32 and bf16. Prints milliseconds per forward + backward for sdpa's flash kernel, sdpa's math kernel and
eager (matmul, masked fp32 softmax, matmul, as Hugging Face's eager attention), best of ``--repeats``.
This is what :func:`lightning_embed.training.acceleration.training_attention` was decided from.

    python benchmarks/bench_attention.py
    python benchmarks/bench_attention.py --lengths 64,256 --dtypes bf16
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def measure(length: int, rows: int, dtype: torch.dtype, device: str, repeats: int, heads: int = 9,
            head_dim: int = 64) -> dict[str, float]:
    torch.manual_seed(0)
    q, k, v = (torch.randn(rows, heads, length, head_dim, dtype=dtype, device=device, requires_grad=True)
               for _ in range(3))
    lengths = torch.randint(length // 4, length + 1, (rows,), device=device)
    real = torch.arange(length, device=device)[None, :] < lengths[:, None]
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    mask = (causal[None] & real[:, None, :])[:, None]
    grad = torch.randn_like(q)

    def sdpa(backend):
        def run():
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out.backward(grad)
        return run

    def eager():
        scores = (q @ k.transpose(-1, -2)) * head_dim ** -0.5
        scores = scores.masked_fill(~mask, torch.finfo(dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
        (probs @ v).backward(grad)

    flash = SDPBackend.FLASH_ATTENTION if device == "cpu" else SDPBackend.EFFICIENT_ATTENTION
    return {"sdpa-flash" if device == "cpu" else "sdpa-efficient": _time(sdpa(flash), repeats),
            "sdpa-math": _time(sdpa(SDPBackend.MATH), repeats), "eager": _time(eager, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="64,128,256,512")
    parser.add_argument("--dtypes", default="bf16,fp32")
    parser.add_argument("--tokens", type=int, default=2048, help="rows x length per measurement (at least 8 rows)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device={device} threads={torch.get_num_threads()}; ms per forward + backward (best of {args.repeats})")
    for dtype_name in args.dtypes.split(","):
        for length in (int(x) for x in args.lengths.split(",")):
            rows = max(8, args.tokens // length)
            times = measure(length, rows, DTYPES[dtype_name], device, args.repeats)
            best = min(times, key=times.get)
            cells = "  ".join(f"{name} {ms:7.1f}" for name, ms in times.items())
            print(f"{dtype_name:5s} length {length:4d} rows {rows:3d}: {cells}   fastest: {best}", flush=True)


if __name__ == "__main__":
    main()
