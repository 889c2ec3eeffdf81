"""Streaming shards: split across ranks and workers with each pair once per epoch, shuffle buffer, the
duplicate-positive rule, exact resume, CLI end to end, bad input, and 2-process gloo DDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from lightning_embed.cli.app import main
from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.data.streaming import StreamLoader, stream_shards
from lightning_embed.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def write_shards(folder: Path, jsonl: int = 3, parquet: int = 1, rows: int = 12, duplicates: bool = False) -> str:
    """``jsonl + parquet`` shards of ``rows`` pairs each; with ``duplicates`` every positive appears twice."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(jsonl + parquet):
        queries = [f"shard {s} question {i}" for i in range(rows)]
        ids = [(s * rows + i) // 2 if duplicates else s * rows + i for i in range(rows)]
        positives = [f"answer {k} " + "word " * (k % 3) for k in ids]
        if s < jsonl:
            (folder / f"part-{s:02d}.jsonl").write_text(
                "".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in zip(queries, positives)))
        else:
            pq.write_table(pa.table({"query": queries, "positive": positives}), folder / f"part-{s:02d}.parquet",
                           row_group_size=5)
    return str(folder / "part-*")


def queries(batch) -> list[str]:
    """A collator that keeps the texts (to check which pairs went where)."""
    return [e.query for e in batch]


def positives(batch) -> list[str]:
    return [e.positive for e in batch]


def stream_batches(pattern: str, *, world: int = 1, rank: int = 0, workers: int = 0, epoch: int = 0,
                   skip: int | None = None, collate=queries, **kw) -> list[list[str]]:
    data = PairDataModule(train=pattern, streaming=True, batch_size=4, **kw)
    data.collator = collate
    stream = data._make_stream()
    stream.num_replicas, stream.rank = world, rank
    stream.set_epoch(epoch)
    if skip is not None:
        stream.skip_once(epoch, skip)
    return list(StreamLoader(stream, None, workers))


def test_ranks_and_workers_see_each_pair_once(tmp_path):
    pattern = write_shards(tmp_path / "data")  # 48 pairs: 6 global batches of 2 x 4
    single = stream_batches(pattern, shuffle_buffer=7)
    assert len(single) == 12 and len({q for b in single for q in b}) == 48
    for workers in (0, 2):
        ranks = [stream_batches(pattern, world=2, rank=r, workers=workers, shuffle_buffer=7) for r in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == 6  # ranks in step, or DDP would hang
        seen = [q for r in ranks for b in r for q in b]
        assert len(seen) == len(set(seen)) == 48
        if workers:  # workers tokenize alternate batches; the loader yields them in the stream's order
            assert ranks == [stream_batches(pattern, world=2, rank=r, shuffle_buffer=7) for r in (0, 1)]


def test_shuffle_buffer_orders_by_seed_and_epoch(tmp_path):
    pattern = write_shards(tmp_path / "data")
    first = stream_batches(pattern, shuffle_buffer=16)
    assert first == stream_batches(pattern, shuffle_buffer=16)
    assert first != stream_batches(pattern, shuffle_buffer=16, epoch=1)
    assert first != stream_batches(pattern, shuffle_buffer=16, seed=1)
    flat = [q for b in stream_batches(pattern, shuffle_buffer=0) for q in b]
    shards = {q.split()[1] for q in flat[:12]}
    assert len(shards) == 1  # no buffer: shard after shard (in the epoch's shard order)


def test_duplicate_positives_are_kept_out_of_one_global_batch(tmp_path):
    pattern = write_shards(tmp_path / "data", duplicates=True)
    ranks = [stream_batches(pattern, world=2, rank=r, collate=positives, shuffle_buffer=0) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) >= 5
    for a, b in zip(*ranks):
        assert len(set(a + b)) == 8, (a, b)
    mixed = stream_batches(pattern, collate=positives, shuffle_buffer=0, unique_positives_per_batch=False)
    assert any(len(set(b)) < 4 for b in mixed)  # without the rule, the file's neighbours share a batch


def test_skip_resumes_at_the_same_batch(tmp_path):
    pattern = write_shards(tmp_path / "data")
    full = stream_batches(pattern, workers=2, epoch=1)
    assert stream_batches(pattern, workers=2, epoch=1, skip=5) == full[5:]


def test_mixture_of_streams_takes_each_batch_from_one_source(tmp_path):
    write_shards(tmp_path / "data", jsonl=2, parquet=1, rows=8)
    train = {"a": {"path": str(tmp_path / "data" / "part-0[01].jsonl")},
             "b": {"path": str(tmp_path / "data" / "part-02.parquet")}}
    for mixture, count in (("proportional", 6), ("round_robin", 4), ("weighted", 6)):
        data = PairDataModule(train=train, streaming=True, batch_size=2, mixture=mixture, shuffle_buffer=4)
        data.collator = queries
        stream = data._make_stream()
        stream.num_replicas = 2
        epoch = [(s, [e.query for e in b]) for s, b in stream.sequence(0)]
        sources = [s for s, _ in epoch]
        assert len(sources) == count and set(sources) == {0, 1}, mixture
        for s, batch in epoch:
            assert {q.split()[1] for q in batch} <= ({"0", "1"} if s == 0 else {"2"})
        if mixture == "proportional":
            assert sorted(q for _, b in epoch for q in b) == sorted(
                f"shard {s} question {i}" for s in range(3) for i in range(8))
    with pytest.raises(UserError, match="same_source_batches"):
        PairDataModule(train=train, streaming=True, same_source_batches=False)


def test_bad_streams(tmp_path):
    with pytest.raises(UserError, match="no shard matches"):
        stream_batches(str(tmp_path / "missing-*.jsonl"))
    short = write_shards(tmp_path / "short", jsonl=1, parquet=0, rows=3)
    with pytest.raises(UserError, match="fewer than one batch"):
        stream_batches(short)
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.csv").write_text("query,positive\n")
    with pytest.raises(UserError, match="not a .jsonl or .parquet"):
        stream_shards(str(tmp_path / "mixed" / "*"))
    pq.write_table(pa.table({"question": ["q"] * 8, "positive": ["p"] * 8}), tmp_path / "cols.parquet")
    with pytest.raises(UserError, match="no column 'query'"):
        stream_batches(str(tmp_path / "cols.parquet"))
    with pytest.raises(UserError, match="builtin"):
        PairDataModule(train="builtin:stdlib-code", streaming=True)
    with pytest.raises(UserError, match="group_by_length"):
        PairDataModule(train=short, streaming=True, group_by_length=True)
    with pytest.raises(UserError, match="max_steps"):
        PairDataModule(train=short, streaming=True, max_train_examples=100)


def _config(tmp_path: Path, pattern: str, backbone: str, root: Path) -> Path:
    config = {
        "seed_everything": 0,
        "model": {"backbone": backbone, "query_max_length": 16, "document_max_length": 24, "learning_rate": 1e-3,
                  "warmup_ratio": 0.0, "lr_schedule": "constant"},
        "data": {"train": pattern, "streaming": True, "shuffle_buffer": 10, "batch_size": 4, "num_workers": 1},
        "trainer": {"max_steps": 6, "logger": False, "enable_progress_bar": False, "accelerator": "cpu",
                    "precision": "32-true", "default_root_dir": str(root),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"every_n_train_steps": 3, "save_top_k": -1}}]},
        "flops": {"runs_file": str(root / "runs.jsonl")},
    }
    path = tmp_path / f"{root.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_fit_streams_and_resumes_exactly(tiny_backbones, tmp_path):
    pattern = write_shards(tmp_path / "data", jsonl=1, parquet=1, rows=16)  # 8 batches of 4 per epoch
    backbone = tiny_backbones["gpt_neox"]
    main(["fit", "--config", str(_config(tmp_path, pattern, backbone, tmp_path / "straight"))])
    record = json.loads((tmp_path / "straight" / "runs.jsonl").read_text().splitlines()[-1])
    assert record["steps"] == 6 and record["examples"] == 24
    assert record["data"]["train"]["shards"] == 2 and record["data"]["train"]["source"] == pattern
    half = next((tmp_path / "straight").rglob("*step=3.ckpt"))
    main(["fit", "--config", str(_config(tmp_path, pattern, backbone, tmp_path / "resumed")), f"--ckpt_path={half}"])
    straight = torch.load(next((tmp_path / "straight").rglob("*step=6.ckpt")), weights_only=True)["state_dict"]
    resumed = torch.load(next((tmp_path / "resumed").rglob("*step=6.ckpt")), weights_only=True)["state_dict"]
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6, msg=key)


def test_stream_shorter_than_a_batch_is_one_line_and_exit_2(tiny_backbones, tmp_path):
    pattern = write_shards(tmp_path / "data", jsonl=1, parquet=0, rows=3)
    config = _config(tmp_path, pattern, tiny_backbones["llama"], tmp_path / "short")
    result = subprocess.run([sys.executable, "-c", "from lightning_embed.cli.app import main; main()", "fit",
                             "--config", str(config)], capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("lightning-embed: error:")]
    assert len(errors) == 1 and "fewer than one batch" in errors[0], result.stderr[-2000:]


_DDP_SCRIPT = textwrap.dedent('''
    import json, os, sys, warnings
    from pathlib import Path

    import lightning as L
    import torch

    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.training.module import EmbeddingModule

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    backbone, pattern, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    train = json.loads(pattern) if pattern.startswith("{") else pattern  # a mixture of streams, or one
    seen = []


    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append({"step": trainer.global_step, "epoch": trainer.current_epoch,
                         "ids": batch.positive_ids.tolist(), "source": getattr(batch, "source", None)})


    L.seed_everything(0)
    module = EmbeddingModule(backbone=backbone, query_max_length=16, document_max_length=24, warmup_ratio=0.0,
                             lr_schedule="constant", pack_sequences=False)
    data = PairDataModule(train=train, streaming=True, shuffle_buffer=8, batch_size=2, num_workers=2)
    L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False, max_epochs=2, callbacks=[Record()],
              default_root_dir=out).fit(module, data)
    rank = torch.distributed.get_rank()
    (out / f"seen{rank}.json").write_text(json.dumps(seen))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mixture", [False, True], ids=["one-stream", "mixture-of-streams"])
def test_ddp_two_processes_split_the_stream(tiny_backbones, tmp_path, mixture):
    pattern = write_shards(tmp_path / "data", jsonl=2, parquet=1, rows=8)  # 24 pairs: 6 global batches of 2 x 2
    if mixture:  # the same 24 pairs as two sources of 16 and 8
        pattern = json.dumps({"a": {"path": str(tmp_path / "data" / "part-0[01].jsonl")},
                              "b": {"path": str(tmp_path / "data" / "part-02.parquet"), "weight": 2.0}})
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(script), tiny_backbones["gpt_neox"], pattern, str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    rank0, rank1 = (json.loads((tmp_path / f"seen{r}.json").read_text()) for r in (0, 1))
    assert len(rank0) == len(rank1) == 12  # two epochs of 6 steps, the same on both ranks
    for epoch in (0, 1):
        ids = [i for r in (rank0, rank1) for step in r if step["epoch"] == epoch for i in step["ids"]]
        assert len(ids) == len(set(ids)) == 24, f"epoch {epoch}: every pair once, on one rank"
    orders = [[step["ids"] for step in rank0 if step["epoch"] == e] for e in (0, 1)]
    assert orders[0] != orders[1]  # a new order each epoch
    for a, b in zip(rank0, rank1):
        assert a["step"] == b["step"] and a["source"] == b["source"]  # one source per global step
    if mixture:
        assert [s["source"] for s in rank0].count("a") == 8  # every batch of each source once per epoch
