"""Mixtures of named sources: single-source batches, mixing rules, per-source prompts and in-batch negatives,
per-source counts in the run record, exact resume, bad input, and 2-process gloo DDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from lightning_embed.cli.app import main
from lightning_embed.data.batches import PairCollator
from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.data.mixtures import MixtureCollator, MixtureView, mixture_sampler
from lightning_embed.data.sampling import PairBatchSampler
from lightning_embed.errors import UserError
from lightning_embed.losses.infonce import InfoNCELoss

ROOT = Path(__file__).resolve().parents[2]


def write_source(path: Path, tag: str, n: int, negatives: int = 0, query_key: str = "query") -> Path:
    """n distinct pairs whose texts name their source (``tag``) and index."""
    with path.open("w") as f:
        for i in range(n):
            row = {query_key: f"{tag} question {i}", "positive": f"{tag} answer number {i} " + "word " * (i % 3)}
            if negatives:
                row["negatives"] = [f"{tag} wrong answer {i} {j}" for j in range(negatives)]
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture()
def two_sources(tmp_path) -> dict[str, Path]:
    return {"qa": write_source(tmp_path / "qa.jsonl", "qa", 24, negatives=1),
            "nli": write_source(tmp_path / "nli.jsonl", "nli", 16, negatives=1, query_key="premise")}


def data_module(sources: dict[str, Path], **kw) -> PairDataModule:
    train = {"qa": {"path": str(sources["qa"])},
             "nli": {"path": str(sources["nli"]), "query_column": "premise", "in_batch_negatives": False}}
    for name, extra in kw.pop("extra", {}).items():
        train[name].update(extra)
    data = PairDataModule(train=train, num_negatives=1, batch_size=4, **kw)
    data.setup("fit")
    return data


def batch_sources(data: PairDataModule) -> list[int]:
    sampler = data._train_sampler
    sources = sampler.source_sequence()
    assert None not in sources, "every batch must come from one source"
    return sources


def test_proportional_draws_every_example_once_in_single_source_batches(two_sources):
    data = data_module(two_sources, mixture="proportional", seed=3)
    batches = data._train_sampler.batches()
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(40))  # 24 + 16 pairs, batches of 4: each exactly once per epoch
    assert Counter(batch_sources(data)) == {0: 6, 1: 4}
    assert batch_sources(data) != [0] * 6 + [1] * 4  # interleaved, not one source after the other
    again = data_module(two_sources, mixture="proportional", seed=3)
    assert again._train_sampler.batches() == batches  # a function of the seed (and epoch) only
    data._train_sampler.set_epoch(1)
    assert data._train_sampler.batches() != batches


def test_round_robin_alternates_until_the_smallest_source_is_spent(two_sources):
    data = data_module(two_sources, mixture="round_robin")
    assert batch_sources(data) == [0, 1] * 4


def test_weighted_follows_the_weights(tmp_path):
    sources = {"a": write_source(tmp_path / "a.jsonl", "a", 400), "b": write_source(tmp_path / "b.jsonl", "b", 400)}
    data = PairDataModule(train={"a": {"path": str(sources["a"]), "weight": 3.0}, "b": {"path": str(sources["b"])}},
                          mixture="weighted", batch_size=4)
    data.setup("fit")
    counts = Counter(batch_sources(data))
    assert sum(counts.values()) == 200
    assert 0.65 < counts[0] / 200 < 0.85  # weight 3 : 1, 200 draws


def test_mixed_batches_when_asked(two_sources):
    data = data_module(two_sources, same_source_batches=False, extra={"nli": {"in_batch_negatives": True}})
    assert None in data._train_sampler.source_sequence()
    with pytest.raises(UserError, match="same_source_batches"):
        data_module(two_sources, same_source_batches=False)  # nli has in_batch_negatives: false
    with pytest.raises(UserError, match="round_robin"):
        data_module(two_sources, same_source_batches=False, mixture="round_robin",
                    extra={"nli": {"in_batch_negatives": True}})


def test_ranks_share_the_source_of_every_step_and_no_example(two_sources):
    data = data_module(two_sources)
    examples, offsets = data.train_examples, data._offsets

    def sampler(rank: int):
        def make(a, b, where):
            return PairBatchSampler(examples[a:b], 2, shuffle=True, drop_last=True, num_replicas=2, rank=rank)
        return mixture_sampler(data.sources, offsets, len(examples), mixture="proportional",
                               same_source_batches=True, make=make)

    rank0, rank1 = list(sampler(0)), list(sampler(1))
    assert len(rank0) == len(rank1) == 10
    for a, b in zip(rank0, rank1):
        assert set(a).isdisjoint(b)
        assert len({sampler(0).source_of(i) for i in a + b}) == 1
        assert a.counts == b.counts  # the global batch's count, the same on every rank
    assert len({i for batch in rank0 + rank1 for i in batch}) == 40


def test_bad_sources(two_sources, tmp_path):
    with pytest.raises(UserError, match="weight"):
        data_module(two_sources, extra={"qa": {"weight": 0}})
    with pytest.raises(UserError, match="weight"):
        data_module(two_sources, extra={"qa": {"weight": -1.0}})
    with pytest.raises(UserError, match="num_negatives"):
        PairDataModule(train={"nli": {"path": str(two_sources["nli"]), "in_batch_negatives": False}})
    with pytest.raises(UserError, match="unknown mixture"):
        data_module(two_sources, mixture="zipper")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="'nli'.*no examples"):
        data_module({"qa": two_sources["qa"], "nli": empty})
    with pytest.raises(UserError, match="'nli'.*fewer than one batch"):
        data_module({"qa": two_sources["qa"], "nli": write_source(tmp_path / "few.jsonl", "f", 3, 1, "premise")})


def test_loss_without_in_batch_negatives_scores_own_candidates_only():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(4, 8), dim=-1)
    d = F.normalize(torch.randn(4 * 3, 8), dim=-1)  # 4 positives, then 2 hard negatives per query
    loss = InfoNCELoss(temperature=0.05)
    own = torch.stack([torch.stack([q[i] @ d[i], q[i] @ d[4 + 2 * i], q[i] @ d[5 + 2 * i]]) for i in range(4)])
    expected = F.cross_entropy(own / 0.05, torch.zeros(4, dtype=torch.long))
    got = loss(q, d, num_negatives=2, in_batch_negatives=False)
    assert abs(got.item() - expected.item()) <= 1e-6 * expected.abs().item()
    assert abs(got.item() - loss(q, d, num_negatives=2).item()) > 1e-3  # in-batch negatives do change it


def test_collator_uses_the_source_prompts_and_marks_the_batch(two_sources, tiny_backbones):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_backbones["llama"])
    data = data_module(two_sources, extra={"nli": {"query_prompt": "premise: "}})
    collator = MixtureCollator(PairCollator(tokenizer, query_prompt="query: "), data.sources)
    view = MixtureView(data.train_examples, data._offsets)
    sampler = data._train_sampler
    first = {}
    for indices in sampler:
        batch = collator(view[indices])
        first.setdefault(batch.source, batch)
    assert set(first) == {"qa", "nli"}
    qa, nli = first["qa"], first["nli"]
    assert tokenizer.decode(qa.queries["input_ids"][0], skip_special_tokens=True).startswith("query: qa question")
    assert tokenizer.decode(nli.queries["input_ids"][0], skip_special_tokens=True).startswith("premise: nli")
    assert qa.in_batch_negatives and not nli.in_batch_negatives
    assert qa.source_counts == {"qa": 4} and nli.source_counts == {"nli": 4}


def _config(tmp_path: Path, sources: dict[str, Path], backbone: str, root: Path, **data) -> Path:
    config = {
        "seed_everything": 0,
        "model": {"backbone": backbone, "query_max_length": 16, "document_max_length": 24, "learning_rate": 1e-3,
                  "warmup_ratio": 0.0, "lr_schedule": "constant"},
        "data": {"train": {"qa": {"path": str(sources["qa"]), "weight": 2.0},
                           "nli": {"path": str(sources["nli"]), "query_column": "premise",
                                   "in_batch_negatives": False, "query_prompt": "premise: "}},
                 "mixture": "weighted", "num_negatives": 1, "batch_size": 4, **data},
        "trainer": {"max_steps": 6, "logger": False, "enable_progress_bar": False, "accelerator": "cpu",
                    "precision": "32-true", "default_root_dir": str(root),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"every_n_train_steps": 3, "save_top_k": -1}}]},
        "flops": {"runs_file": str(root / "runs.jsonl")},
    }
    path = tmp_path / f"{root.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_fit_from_yaml_records_examples_per_source_and_resumes_exactly(two_sources, tiny_backbones, tmp_path):
    backbone = tiny_backbones["gpt_neox"]
    main(["fit", "--config", str(_config(tmp_path, two_sources, backbone, tmp_path / "straight"))])
    record = json.loads((tmp_path / "straight" / "runs.jsonl").read_text().splitlines()[-1])
    assert record["steps"] == 6
    assert set(record["source_examples"]) <= {"qa", "nli"} and sum(record["source_examples"].values()) == 24
    assert set(record["data"]["train"]["sources"]) == {"qa", "nli"}
    half = next((tmp_path / "straight").rglob("*step=3.ckpt"))
    main(["fit", "--config", str(_config(tmp_path, two_sources, backbone, tmp_path / "resumed")),
          f"--ckpt_path={half}"])
    straight = torch.load(next((tmp_path / "straight").rglob("*step=6.ckpt")), weights_only=True)
    resumed = torch.load(next((tmp_path / "resumed").rglob("*step=6.ckpt")), weights_only=True)
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    resumed_record = json.loads((tmp_path / "resumed" / "runs.jsonl").read_text().splitlines()[-1])
    assert resumed_record["source_examples"] == record["source_examples"]


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    code = "from lightning_embed.cli.app import main; main()"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("data, fragment", [
    ({"train": {"qa": {"path": "QA", "weight": 0}}}, "weight"),
    ({"mixture": "zipper"}, "zipper"),
    ({"train": {"qa": {"path": "QA"}, "nli": {"path": "EMPTY"}}}, "no examples"),
], ids=["zero-weight", "unknown-mixture", "empty-source"])
def test_bad_input_is_one_line_and_exit_2(two_sources, tiny_backbones, tmp_path, data, fragment):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    config = _config(tmp_path, two_sources, tiny_backbones["llama"], tmp_path / "bad")
    text = config.read_text().replace("weight: 2.0", "weight: 1.0")
    loaded = yaml.safe_load(text)
    spec = json.loads(json.dumps(data).replace("QA", str(two_sources["qa"])).replace("EMPTY", str(empty)))
    loaded["data"].update(spec)
    config.write_text(yaml.safe_dump(loaded))
    result = run_cli(["fit", "--config", str(config)])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("lightning-embed: error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr[-2000:]


def test_shipped_mixture_config_parses(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "mixture.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert set(printed["data"]["train"]) == {"stdlib", "libraries"}
    assert printed["data"]["mixture"] == "weighted"


# ---------------------------------------------------------------------------------------------- DDP

_DDP_SCRIPT = textwrap.dedent('''
    import json, os, sys, warnings
    from pathlib import Path

    import lightning as L
    import torch

    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.training.module import EmbeddingModule

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    backbone, out = sys.argv[1], Path(sys.argv[2])
    seen = []


    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append({"step": trainer.global_step, "source": batch.source,
                         "ids": batch.positive_ids.tolist(), "in_batch": batch.in_batch_negatives})


    L.seed_everything(0)
    module = EmbeddingModule(backbone=backbone, query_max_length=16, document_max_length=24, warmup_ratio=0.0,
                             lr_schedule="constant", pack_sequences=False)
    train = {"qa": {"path": str(out / "qa.jsonl")},
             "nli": {"path": str(out / "nli.jsonl"), "query_column": "premise", "in_batch_negatives": False}}
    data = PairDataModule(train=train, num_negatives=1, batch_size=2, num_workers=1)
    L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False, max_epochs=1, callbacks=[Record()],
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


def test_ddp_two_processes_one_source_per_step_no_example_twice(two_sources, tiny_backbones, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(script), tiny_backbones["gpt_neox"], str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    rank0, rank1 = (json.loads((tmp_path / f"seen{r}.json").read_text()) for r in (0, 1))
    assert len(rank0) == len(rank1) == 10  # 40 pairs, global batches of 2 x 2
    ids = []
    for a, b in zip(rank0, rank1):
        assert a["step"] == b["step"] and a["source"] == b["source"], (a, b)
        assert a["in_batch"] == b["in_batch"] == (a["source"] == "qa")
        ids += a["ids"] + b["ids"]
    assert len(ids) == len(set(ids)) == 40, "every example once per epoch, on one rank"
    assert {a["source"] for a in rank0} == {"qa", "nli"}
