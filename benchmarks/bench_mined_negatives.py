"""Do mined hard negatives help? Held-out code retrieval after training with and without them, same steps.

Takes a fixed random subset of ``builtin:python-code``'s training pairs, mines hard negatives for it with the
untrained backbone (``lightning_embed.mine_hard_negatives``: corpus = the subset's positives, NV-Retriever's
relative margin), then trains the backbone twice from the same start for the same number of steps on the
same pairs: once with in-batch negatives only, once with the mined negatives as well
(``num_negatives=K``). Each model (and the untrained one) is scored by nDCG@10 on the held-out split
(packages never seen in training) as an mteb retrieval task over all held-out positives.

    python benchmarks/bench_mined_negatives.py                                  # MiniLM-L6, 150 steps
    python benchmarks/bench_mined_negatives.py --steps 40 --pairs 1000          # shorter
    python benchmarks/bench_mined_negatives.py --output benchmarks/results/mined-negatives-cpu-DATE.txt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402

from lightning_embed import mine_hard_negatives  # noqa: E402
from lightning_embed.data.datamodule import PairDataModule  # noqa: E402
from lightning_embed.data.reading import read_examples  # noqa: E402
from lightning_embed.evaluation.evaluate import resolve_tasks, run_mteb  # noqa: E402
from lightning_embed.evaluation.mteb_tasks import write_retrieval_task  # noqa: E402
from lightning_embed.models.encoder import Encoder, load  # noqa: E402
from lightning_embed.training.module import EmbeddingModule  # noqa: E402
from lightning_embed.training.precision import cpu_model  # noqa: E402


def train(args, train_file: Path, num_negatives: int, seed: int) -> tuple[EmbeddingModule, float]:
    L.seed_everything(seed, verbose=False)
    module = EmbeddingModule(backbone=args.backbone, learning_rate=args.learning_rate, warmup_ratio=0.1,
                             query_max_length=args.query_max_length, document_max_length=args.document_max_length,
                             compile=False)
    data = PairDataModule(train=str(train_file), num_negatives=num_negatives, batch_size=args.batch_size, seed=seed)
    start = time.perf_counter()
    L.Trainer(max_steps=args.steps, max_epochs=-1, precision=args.precision, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
              accelerator="cpu").fit(module, datamodule=data)
    return module, time.perf_counter() - start


def score(encoder: Encoder, task) -> float:
    return run_mteb(encoder, [task], batch_size=64)[task.name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="all-minilm-l6-v2")
    parser.add_argument("--pairs", type=int, default=3000, help="training pairs (a fixed random subset)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-negatives", type=int, default=1)
    parser.add_argument("--relative-margin", type=float, default=0.05)
    parser.add_argument("--range-min", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--query-max-length", type=int, default=32)
    parser.add_argument("--document-max-length", type=int, default=128)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args()

    lines = [f"command: python benchmarks/bench_mined_negatives.py {' '.join(sys.argv[1:])}".rstrip(),
             f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"cpu: {cpu_model()}, {os.cpu_count()} logical cores shared with other jobs "
             f"(1-min load average {os.getloadavg()[0]:.1f} at the start)"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subset = read_examples("builtin:python-code", split="train", max_examples=args.pairs)
        pairs_file = work / "pairs.jsonl"
        pairs_file.write_text("".join(json.dumps({"query": e.query, "positive": e.positive}) + "\n" for e in subset))
        held_out = write_retrieval_task(read_examples("builtin:python-code", split="val"), work / "heldout.jsonl")
        (task,) = resolve_tasks([f"python-code-heldout=retrieval:{held_out}"])

        base = load(args.backbone, device="cpu", max_length=args.document_max_length)
        start = time.perf_counter()
        report = mine_hard_negatives(str(pairs_file), base, num_negatives=args.num_negatives,
                                     relative_margin=args.relative_margin, range_min=args.range_min,
                                     batch_size=64, output=work / "mined.jsonl", show_progress=True)
        mine_seconds = time.perf_counter() - start
        # Both runs train on the same pairs: those the mining kept.
        plain_file = work / "plain.jsonl"
        plain_file.write_text("".join(json.dumps({"query": r["query"], "positive": r["positive"]}) + "\n"
                                      for r in report.rows))
        lines += [f"backbone: {args.backbone}; pairs: {len(subset)} from builtin:python-code train (fixed subset), "
                  f"{len(report.rows)} kept after mining ({report.dropped} dropped); held-out: "
                  f"{len(task.data['queries'])} queries over {len(task.data['corpus'])} documents (unseen packages)",
                  f"mining: untrained {args.backbone}, corpus = the {report.corpus_size} distinct positives, "
                  f"K={args.num_negatives}, relative margin {args.relative_margin}, range_min {args.range_min}: "
                  f"{mine_seconds:.1f} s",
                  f"training: {args.steps} steps, batch {args.batch_size}, lr {args.learning_rate}, "
                  f"{args.precision}, max lengths {args.query_max_length}/{args.document_max_length}; the mined "
                  f"run encodes {1 + args.num_negatives}x the documents per step",
                  "", "metric: nDCG@10 on the held-out retrieval task (mteb)"]
        base_score = score(base, task)
        lines.append(f"untrained            {base_score:.4f}")
        print("\n".join(lines), flush=True)
        results: dict[str, list[float]] = {"in-batch only": [], f"+ {args.num_negatives} mined": []}
        for seed in range(args.seeds):
            for name, file, k in (("in-batch only", plain_file, 0), (f"+ {args.num_negatives} mined", work /
                                                                      "mined.jsonl", args.num_negatives)):
                module, seconds = train(args, file, k, seed)
                value = score(Encoder.from_module(module, name), task)
                results[name].append(value)
                line = f"{name:<20} {value:.4f}  (seed {seed}, {seconds:.0f} s training, {value - base_score:+.4f} " \
                       "vs untrained)"
                lines.append(line)
                print(line, flush=True)
        for name, values in results.items():
            lines.append(f"mean {name:<15} {sum(values) / len(values):.4f} over {len(values)} seed(s)")
    text = "\n".join(lines) + "\n"
    print("\n".join(lines[-len(results):]))
    if args.output is not None:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
