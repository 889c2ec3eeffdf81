"""Held-out code retrieval after the same training steps with Matryoshka, bidirectional attention or GTE's loss.

Trains ``EmbeddingModule(backbone=..., num_layers=...)`` from the same seed on ``builtin:python-code`` for the
same number of steps under each system, then embeds the held-out split (packages never trained on) and
scores nDCG@10 of every query against all held-out documents, at the full dimension and at each of
``--dims`` (the first coordinates, re-normalised). Prints one line per system and the 64-dimension score as
a fraction of the full one, fit for ``benchmarks/results/``:

    python benchmarks/bench_embedding_options.py --output benchmarks/results/embedding-options-cpu-DATE.txt
    python benchmarks/bench_embedding_options.py --systems plain,matryoshka --steps 40   # shorter
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from lightning_embed.data.datamodule import PairDataModule  # noqa: E402
from lightning_embed.evaluation.metrics import retrieval_metrics  # noqa: E402
from lightning_embed.losses.matryoshka import truncate  # noqa: E402
from lightning_embed.training.module import EmbeddingModule  # noqa: E402
from lightning_embed.training.precision import cpu_model  # noqa: E402

SYSTEMS = {  # name -> EmbeddingModule options on top of the shared ones
    "plain": {},
    "matryoshka": {"matryoshka_dims": "the hidden size, then --dims"},
    "bidirectional": {"bidirectional": True},
    "gte": {"loss": "gte"},
}


def held_out(module: EmbeddingModule, data: PairDataModule, dims: list[int]) -> dict[int, float]:
    """nDCG@10 on the held-out split at each dimension (0: the full embedding)."""
    module.eval()
    queries, positives, ids = [], [], []
    with torch.no_grad():
        for batch in data.val_dataloader():
            q, d = module.encode_pair_batch(batch)
            queries.append(q)
            positives.append(d[:len(batch)])
            ids.append(batch.positive_ids)
    q, p, ids = torch.cat(queries), torch.cat(positives), torch.cat(ids)
    uniq, first = _unique_first(ids)
    return {dim: retrieval_metrics(truncate(q, dim or None, True), truncate(p[first], dim or None, True), ids,
                                   uniq)["ndcg@10"] for dim in [0, *dims]}


def _hidden_size(backbone: str) -> int:
    from transformers import AutoConfig

    from lightning_embed.models.backbones import resolve_backbone

    return int(AutoConfig.from_pretrained(resolve_backbone(backbone)[0]).hidden_size)


def _unique_first(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    uniq, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((len(uniq),), len(ids), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(ids)), reduce="amin")
    return uniq, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--num-layers", type=int, default=4, help="keep the first N blocks (0: all)")
    parser.add_argument("--systems", default="plain,matryoshka,bidirectional")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--max-val-examples", type=int, default=500)
    parser.add_argument("--dims", default="256,128,64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the report lines (not Lightning's output) to this file")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 on a shared 2-core machine; 0: torch's default)")
    args = parser.parse_args()
    report: list[str] = []

    def say(line: str) -> None:
        report.append(line)
        print(line, flush=True)

    dims = [int(d) for d in args.dims.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    say(f"command: python benchmarks/bench_embedding_options.py {' '.join(sys.argv[1:])}".rstrip())
    say(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    say(f"cpu: {cpu_model()}, {os.cpu_count()} logical cores shared with other jobs "
        f"(1-min load average {os.getloadavg()[0]:.1f} at the start)")
    say(f"backbone: {args.backbone} first {args.num_layers or 'all'} blocks, full tuning, bf16-mixed, "
        f"{args.steps} steps x batch {args.batch_size}, lr {args.learning_rate}, max length {args.max_length}, "
        f"seed {args.seed}, {torch.get_num_threads()} torch threads; held-out: builtin:python-code val "
        f"({args.max_val_examples} pairs max), nDCG@10 against all held-out documents")
    rows = {}
    for name in args.systems.split(","):
        options = dict(SYSTEMS[name])
        if "matryoshka_dims" in options:  # the full size first, then the smaller --dims
            full = _hidden_size(args.backbone)
            options["matryoshka_dims"] = [full, *[d for d in dims if d < full]]
        L.seed_everything(args.seed, verbose=False)
        module = EmbeddingModule(backbone=args.backbone, num_layers=args.num_layers or None, tuning="full",
                                 learning_rate=args.learning_rate, query_max_length=args.max_length,
                                 document_max_length=args.max_length, compile=False, **options)
        data = PairDataModule(train="builtin:python-code", batch_size=args.batch_size, seed=args.seed,
                              val_batch_size=64, max_val_examples=args.max_val_examples)
        common = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu")
        start = time.perf_counter()
        L.Trainer(max_steps=args.steps, precision="bf16-mixed", num_sanity_val_steps=0, limit_val_batches=0,
                  **common).fit(module, datamodule=data)
        seconds = time.perf_counter() - start
        scores = held_out(module, data, dims)
        rows[name] = scores
        cells = "  ".join(f"{d or 'full'}d {s:.4f}" for d, s in scores.items())
        say(f"{name:14s} nDCG@10  {cells}  (64d / full {scores.get(64, float('nan')) / scores[0]:.3f})  "
            f"train {seconds:.0f} s")
    say(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.output:
        tmp = f"{args.output}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write("\n".join(report) + "\n")
        os.replace(tmp, args.output)


if __name__ == "__main__":
    main()
