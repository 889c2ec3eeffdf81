"""The FLOP model against torch's FlopCounterMode, the study's numbers, budgets and the FlopCallback."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_embed.errors import UserError
from lightning_embed.flops.budget import dry_run, parse_budget, plan_budget, report_table, sample_loader
from lightning_embed.flops.model import (
    FlopCount,
    FlopModel,
    TokenStats,
    infer_paper_method,
    paper_flops_per_token,
    parameter_counts,
)
from lightning_embed.models.backbones import count_parameters, find_blocks, load_backbone

LORA_TARGETS = {"gpt_neox": ["query_key_value", "dense"], "llama": ["q_proj", "v_proj", "o_proj"],
                "bert": ["query", "value"]}


def _tune(model, arch: str, method: str):
    """Freezes/wraps by hand, so the FLOP model is checked independently of any strategy plugin."""
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(target_modules=LORA_TARGETS[arch], r=4))
    if method == "bias":
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith("bias") or "norm" in name)  # Llama has no biases: norms instead
    elif method == "freeze":
        _, blocks = find_blocks(model)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in blocks[-1].parameters():
            p.requires_grad_(True)
    return model


def _measured(model, ids, mask) -> int:
    """FLOP of forward + backward of sum(last_hidden_state), as torch counts them."""
    with FlopCounterMode(display=False) as counter:
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        if hidden.requires_grad:
            hidden.sum().backward()
    return counter.get_total_flops()


def _padded_batch(rows: int = 3, width: int = 20):
    torch.manual_seed(0)
    ids = torch.randint(5, 400, (rows, width))
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0
    mask[2, 6:] = 0
    return ids, mask


@pytest.mark.parametrize("arch", ["gpt_neox", "llama", "bert"])
@pytest.mark.parametrize("method", ["full", "lora", "bias", "freeze"])
def test_analytic_count_matches_flop_counter(tiny_backbones, arch, method):
    model = _tune(load_backbone(tiny_backbones[arch], attn_implementation="eager"), arch, method).train()
    flops = FlopModel.from_module(model)
    ids, mask = _padded_batch()
    # Hardware FLOP: what the padded batch computes.
    assert flops.batch(mask).hardware == pytest.approx(_measured(model, ids, mask), rel=0.02)
    # Model FLOP: each row on its real tokens only.
    rows = sum(_measured(model, ids[i : i + 1, :n], mask[i : i + 1, :n]) for i, n in enumerate(mask.sum(-1).tolist()))
    assert flops.batch(mask).model == pytest.approx(rows, rel=0.02)
    # Inference: forward only.
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert flops.batch(mask, train=False).hardware == pytest.approx(counter.get_total_flops(), rel=0.02)


@pytest.mark.parametrize("spec", ["full", "lora", "bias", {"name": "freeze", "blocks": 1}])
def test_registered_strategies_are_costed_from_the_module(tiny_backbones, spec):
    from lightning_embed.strategy import build_strategy

    model = build_strategy(spec).apply(load_backbone(tiny_backbones["gpt_neox"], attn_implementation="eager")).train()
    ids, mask = _padded_batch()
    assert FlopModel.from_module(model).batch(mask).hardware == pytest.approx(_measured(model, ids, mask), rel=0.02)


def test_third_party_strategy_needs_no_code(tiny_backbones):
    from lightning_embed.strategy import TuningStrategy

    class NormTuning(TuningStrategy):
        name = "norm"

        def apply(self, backbone):
            for n, p in backbone.named_parameters():
                p.requires_grad_("norm" in n)
            return backbone

    model = NormTuning().apply(load_backbone(tiny_backbones["gpt_neox"], attn_implementation="eager")).train()
    ids, mask = _padded_batch()
    flops = FlopModel.from_module(model)
    assert flops.batch(mask).hardware == pytest.approx(_measured(model, ids, mask), rel=0.02)
    assert flops.paper_method == "lora"  # backward through the whole network: 4N + 2N_t


def test_qlora_counts_the_4bit_forward_flop_counter_misses(tiny_backbones):
    from lightning_embed.strategy import build_strategy

    model = build_strategy("qlora").apply(load_backbone(tiny_backbones["llama"], attn_implementation="eager")).train()
    flops = FlopModel.from_module(model)  # 4-bit layers cannot run on meta stand-ins: real-weight probe
    ids, mask = _padded_batch()
    stats = TokenStats.from_mask(mask)
    base_forward = sum(op.forward.over(stats.rows, stats.padded_tokens, stats.padded_squares)
                       for op in flops.ops if op.name.endswith("base_layer"))
    # bitsandbytes runs the 4-bit forward as a custom op torch's counter does not see; all else matches.
    assert flops.batch(mask).hardware == pytest.approx(_measured(model, ids, mask) + base_forward, rel=1e-9)
    assert flops.paper_method == "lora" and flops.params.non_embedding == count_parameters(
        load_backbone(tiny_backbones["llama"]))[1]


@pytest.mark.parametrize("arch", ["gpt_neox", "llama", "bert"])
def test_probe_runs_on_meta_stand_ins_of_real_weights(tiny_backbones, arch):
    from lightning_embed.flops.probe import _probe_once

    model = _tune(load_backbone(tiny_backbones[arch], attn_implementation="eager"), arch, "lora")
    meta, _ = _probe_once(model, 8, False, on_meta=True)  # raises if the meta path broke
    real, _ = _probe_once(model, 8, False, on_meta=False)
    def seen(events):
        return [(e.name, e.flop, e.requires, reaches) for e, reaches, _ in events]

    assert seen(meta) == seen(real)


@pytest.mark.parametrize("arch", ["gpt_neox", "llama", "bert"])
@pytest.mark.parametrize("method", ["full", "freeze"])
def test_recomputation_under_checkpointing_is_hardware_only(tiny_backbones, arch, method):
    plain = _tune(load_backbone(tiny_backbones[arch], attn_implementation="eager"), arch, method)
    model = _tune(load_backbone(tiny_backbones[arch], attn_implementation="eager"), arch, method)
    # As EmbeddingModule does: frozen embeddings would otherwise leave checkpointed blocks without grad.
    model.enable_input_require_grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids, mask = _padded_batch()
    flops = FlopModel.from_module(model)
    assert flops.batch(mask, recompute=True).hardware == pytest.approx(_measured(model, ids, mask), rel=0.02)
    # The method's own cost does not change with checkpointing.
    assert flops.batch(mask).model == FlopModel.from_module(plain).batch(mask).model


def test_gradcache_adds_one_forward_to_hardware_only(tiny_backbones):
    flops = FlopModel.from_module(load_backbone(tiny_backbones["gpt_neox"], attn_implementation="eager"))
    base, cached = flops.sequence(30), flops.sequence(30, gradcache=True)
    assert cached.model == base.model
    assert cached.hardware == base.hardware + flops.sequence(30, train=False).hardware


def test_meta_device_and_sdpa(tiny_backbones):
    from transformers import AutoModel

    from lightning_embed.testing import tiny_config

    config = tiny_config("llama", 512)
    config._attn_implementation = "eager"
    real = FlopModel.from_module(AutoModel.from_config(config))
    with torch.device("meta"):
        meta = FlopModel.from_module(AutoModel.from_config(config))
        config._attn_implementation = "sdpa"
        sdpa = FlopModel.from_module(AutoModel.from_config(config))
    assert meta.sequence(37) == real.sequence(37) and meta.params == real.params
    # SDPA counts the same attention matmuls (torch's counter sees 0 on CPU); only its fused backward
    # recomputes the scores, which is hardware.
    assert sdpa.sequence(37).model == real.sequence(37).model
    assert sdpa.sequence(37).hardware > real.sequence(37).hardware


def test_batch_is_the_sum_of_its_rows(tiny_backbones):
    flops = FlopModel.from_module(load_backbone(tiny_backbones["bert"], attn_implementation="eager"))
    _, mask = _padded_batch()
    lengths = mask.sum(-1).tolist()
    assert flops.batch(mask).model == pytest.approx(sum(flops.sequence(n).model for n in lengths))
    assert flops.batch(mask).hardware == pytest.approx(3 * flops.sequence(20).hardware)
    example = flops.per_example(10, 30, num_negatives=2)
    assert example.model == pytest.approx(flops.sequence(10).model + 3 * flops.sequence(30).model)
    assert sum([FlopCount(1, 2), FlopCount(3, 4)]) == FlopCount(4, 6) and 2 * FlopCount(1, 2) == FlopCount(2, 4)


# ---------------------------------------------------------------------------------------------- paper

PYTHIA = {  # layers, d_model, heads, FFN, non-embedding parameters (Pythia model cards)
    "pythia-14m": (6, 128, 4, 512, 1_189_888),
    "pythia-31m": (6, 256, 8, 1024, 4_739_072),
    "pythia-70m": (6, 512, 8, 2048, 18_915_328),
    "pythia-160m": (12, 768, 12, 3072, 85_056_000),
    "pythia-410m": (24, 1024, 16, 4096, 302_311_424),
    "pythia-1b": (16, 2048, 8, 8192, 805_736_448),
    "pythia-1.4b": (24, 2048, 16, 8192, 1_208_602_624),
    "pythia-2.8b": (32, 2560, 32, 10240, 2_517_652_480),
}


def _pythia(name: str):
    from transformers import AutoModel, GPTNeoXConfig

    layers, width, heads, ffn, _ = PYTHIA[name]
    config = GPTNeoXConfig(vocab_size=50304, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=ffn, rotary_pct=0.25, max_position_embeddings=2048)
    config._attn_implementation = "eager"
    with torch.device("meta"):
        return AutoModel.from_config(config)


@pytest.mark.parametrize("name", list(PYTHIA))
def test_pythia_parameter_counts(name):
    model = _pythia(name)
    n = PYTHIA[name][4]
    assert count_parameters(model)[1] == n
    assert parameter_counts(model).non_embedding == n


def test_paper_replays_the_study():
    flops = FlopModel.from_module(_pythia("pythia-14m"), accounting="paper")
    assert flops.paper_method == "full" and flops.params.non_embedding == 1_189_888
    per_example = flops.per_example(14, 64).model
    assert per_example == 6 * 1_189_888 * 78
    assert 1.5e15 / per_example == pytest.approx(2.69e6, rel=0.002)
    report = dry_run(_Module(_pythia("pythia-14m")), None, "1.5e15", accounting="paper", query_tokens=14,
                     document_tokens=64, batch_size=1)
    assert report.examples == math.floor(1.5e15 / per_example)
    assert paper_flops_per_token("freeze", 100, 10) == 240
    assert paper_flops_per_token("lora", 100, 10) == paper_flops_per_token("bias", 100, 10) == 420
    with pytest.raises(UserError, match="knows the methods"):
        paper_flops_per_token("prefix", 100, 10)


def test_paper_methods_are_inferred_and_adapters_left_out_of_n(tiny_backbones):
    from lightning_embed.strategy import build_strategy

    path = tiny_backbones["gpt_neox"]
    plain = load_backbone(path)
    n = count_parameters(plain)[1]
    specs = [("full", "full"), ("lora", "lora"), ("bias", "bias"), ({"name": "freeze", "blocks": 1}, "freeze")]
    for spec, method in specs:
        model = build_strategy(spec).apply(load_backbone(path))
        assert infer_paper_method(model) == method
        counts = parameter_counts(model)
        assert counts.non_embedding == n  # LoRA's adapters are N_t, not N
        assert counts.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("bad", [-1, 0, "abc", True, float("nan"), "inf"])
def test_bad_budgets_are_user_errors(bad):
    from lightning_embed.flops.callback import FlopCallback

    with pytest.raises(UserError, match="max_flops"):
        FlopCallback(max_flops=bad)


def test_budget_strings_and_too_small_budgets(tiny_backbones):
    assert parse_budget("1.5e15") == 1.5e15 and parse_budget(None) is None
    flops = FlopModel.from_module(load_backbone(tiny_backbones["gpt_neox"]))
    _, mask = _padded_batch()
    sample = sample_loader([{"attention_mask": mask}])
    step = flops.batch(mask).model
    assert plan_budget(flops, 3.5 * step, sample).steps == 3
    assert plan_budget(flops, 3 * step, sample).steps == 3
    with pytest.raises(UserError, match="does not buy one training step"):
        plan_budget(flops, 0.5 * step, sample)


# ---------------------------------------------------------------------------------------------- callback


class _Module:
    def __init__(self, backbone):
        self.backbone = backbone


WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    with path.open("w") as f:
        for i in range(48):  # varied lengths, so padding and per-row lengths matter
            query = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 5)) + f" {i}"
            doc = f"def f{i}(x):\n    return x + {i}  # " + " ".join(WORDS[: 1 + i % 7])
            f.write(json.dumps({"query": query, "positive": doc}) + "\n")
    return str(path)


def _fit(tiny_backbones, pairs_file, callback, *, ckpt_path=None, callbacks=(), module_cls=None, **trainer_kwargs):
    import lightning as L

    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.training.module import EmbeddingModule

    L.seed_everything(0)
    # Padded batches: the counts are checked against the masks (packed counting: tests/test_packing.py).
    module = (module_cls or EmbeddingModule)(backbone=tiny_backbones["gpt_neox"], attn_implementation="eager",
                                             pack_sequences=False)
    data = PairDataModule(train=pairs_file, val=pairs_file, batch_size=4, max_val_examples=8)
    defaults = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0)
    trainer = L.Trainer(callbacks=[callback, *callbacks], **{**defaults, **trainer_kwargs})
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer


def test_fit_stops_at_the_budget_and_records_it(tiny_backbones, pairs_file, tmp_path):
    from lightning_embed.flops.callback import FlopCallback
    from lightning_embed.flops.records import read_runs

    runs = tmp_path / "runs.jsonl"
    # estimate_batches=1: the plan comes from one batch, so the real steps cost more or less than planned.
    callback = FlopCallback(max_flops=6e8, runs_file=str(runs), estimate_batches=1, log_every_n_steps=1)
    trainer = _fit(tiny_backbones, pairs_file, callback)
    total, budget = callback.counter.flops_model, callback.max_flops
    last_step = callback.last_metrics["flops/step_model"]
    assert total - last_step < budget  # it never ran a step after reaching the budget ...
    assert total >= budget or trainer.global_step == callback.planned_steps  # ... and stops at it or the plan
    assert total <= budget + last_step  # at most one step over
    assert trainer.global_step > 12  # more than one pass: the budget, not max_epochs=1, decides
    (record,) = read_runs(runs)
    assert record.status == "completed" and record.budget == budget and record.steps == trainer.global_step
    assert record.flops_model == total and record.examples == 4 * record.steps
    assert record.val_loss is not None and record.metrics_step == record.steps and "ndcg@10" in record.metrics
    assert record.tokens < record.padded_tokens and record.flops_model < record.flops_hardware


def test_counts_match_the_batches_seen_and_reach_the_loggers(tiny_backbones, pairs_file):
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import Logger

    from lightning_embed.flops.callback import FlopCallback

    class Masks(Callback):
        def __init__(self):
            self.masks = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.masks += [batch.queries["attention_mask"].clone(), batch.documents["attention_mask"].clone()]

    class Collect(Logger):
        name, version = "collect", 0
        logged: list = []

        def log_hyperparams(self, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.logged.append((step, dict(metrics)))

    masks, logger = Masks(), Collect()
    # No budget: counts stay on the device between log steps (every 3) and are flushed at the end (7).
    callback = FlopCallback(runs_file=None, log_every_n_steps=3)
    trainer = _fit(tiny_backbones, pairs_file, callback, callbacks=[masks], max_steps=7, logger=logger)
    flops = FlopModel.from_module(trainer.lightning_module.backbone)
    expected = sum(flops.batch(m) for m in masks.masks)
    assert callback.counter.flops_model == pytest.approx(expected.model)
    assert callback.counter.flops_hardware == pytest.approx(expected.hardware)
    assert callback.counter.tokens == sum(int(m.sum()) for m in masks.masks)
    steps = [step for step, metrics in logger.logged if "flops/total_model" in metrics]
    assert steps == [3, 6]
    last = [m for _, m in logger.logged if "flops/total_model" in m][-1]
    assert "throughput/tokens_per_sec" in last and last["flops/step_model"] > 0


class _FixedShapePairs:
    """Batches with the same token stats in every step (padding included), in any order: a resumed run
    must then count exactly what an uninterrupted one does, whatever the data order after resuming."""

    @staticmethod
    def make(batches: int = 6):
        import lightning as L

        from lightning_embed.data.batches import PairBatch

        def batch(seed: int) -> PairBatch:
            g = torch.Generator().manual_seed(seed)
            q_mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 3 + [0] * 5, [1] * 8])
            d_mask = torch.tensor([[1] * 12, [1] * 7 + [0] * 5, [1] * 12, [1] * 4 + [0] * 8])
            return PairBatch({"input_ids": torch.randint(5, 300, (4, 8), generator=g), "attention_mask": q_mask},
                             {"input_ids": torch.randint(5, 300, (4, 12), generator=g), "attention_mask": d_mask},
                             0, torch.arange(4))

        class Data(L.LightningDataModule):
            def train_dataloader(self):
                return torch.utils.data.DataLoader([batch(i) for i in range(batches)], batch_size=None, shuffle=True)

        return Data()


def test_resumed_run_counts_like_an_uninterrupted_one(tiny_backbones, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_embed.flops.callback import FlopCallback
    from lightning_embed.training.module import EmbeddingModule
    from lightning_embed.flops.records import read_runs

    # Every step has the same stats, so the budget can be sized to buy exactly 10 steps (> one epoch of 6).
    batch = _FixedShapePairs.make().train_dataloader().dataset[0]
    per_step = FlopModel.from_module(load_backbone(tiny_backbones["gpt_neox"])).count(
        TokenStats.from_mask(batch.queries["attention_mask"]) + TokenStats.from_mask(batch.documents["attention_mask"]))
    budget, runs = 10.5 * per_step.model, tmp_path / "runs.jsonl"

    def fit(callback, callbacks=(), ckpt_path=None):
        L.seed_everything(0)
        module = EmbeddingModule(backbone=tiny_backbones["gpt_neox"], attn_implementation="eager")
        trainer = L.Trainer(callbacks=[callback, *callbacks], logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=bool(callbacks), max_epochs=1)
        trainer.fit(module, _FixedShapePairs.make(), ckpt_path=ckpt_path)
        return trainer

    whole_cb = FlopCallback(max_flops=budget, runs_file=str(runs))
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    whole = fit(whole_cb, [saver])
    assert whole.global_step == whole_cb.planned_steps == 10
    mid_epoch = tmp_path / "ckpt" / "epoch=0-step=4.ckpt"
    resumed_cb = FlopCallback(max_flops=budget, runs_file=str(runs))
    resumed = fit(resumed_cb, ckpt_path=str(mid_epoch))
    assert resumed.global_step == whole.global_step
    for field in ("flops_model", "flops_hardware", "examples", "tokens", "padded_tokens"):
        assert getattr(resumed_cb.counter, field) == getattr(whole_cb.counter, field), field
    first, second = read_runs(runs)  # one valid line per run
    assert first.run_id == second.run_id and (first.flops_model, first.steps) == (second.flops_model, second.steps)


_DDP_SCRIPT = """
import json, os, sys
import torch, lightning as L
from lightning_embed.data.batches import PairBatch
from lightning_embed.flops.callback import FlopCallback
from lightning_embed.flops.model import FlopModel
from lightning_embed.models.backbones import load_backbone
from lightning_embed.training.module import EmbeddingModule
from lightning_embed.flops.records import read_runs

def make_batch(i):  # every batch has its own padded width: ranks pad differently
    g = torch.Generator().manual_seed(i)
    wq, wd = 6 + 2 * i, 10 + 3 * i
    qm = torch.ones(4, wq, dtype=torch.long); qm[1, wq // 2:] = 0
    dm = torch.ones(4, wd, dtype=torch.long); dm[2, 3:] = 0
    return PairBatch({"input_ids": torch.randint(5, 300, (4, wq), generator=g), "attention_mask": qm},
                     {"input_ids": torch.randint(5, 300, (4, wd), generator=g), "attention_mask": dm}, 0,
                     torch.arange(4))

class Data(L.LightningDataModule):
    def train_dataloader(self):
        return torch.utils.data.DataLoader([make_batch(i) for i in range(4)], batch_size=None)

if __name__ == "__main__":
    backbone, runs = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[FlopCallback(runs_file=runs)])
    trainer.fit(EmbeddingModule(backbone=backbone, attn_implementation="eager", pack_sequences=False), Data())
    if not trainer.is_global_zero:
        os._exit(0)  # skip C++ static destructors racing gloo's threads (docs/bugs.md)
    (record,) = read_runs(runs)
    flops = FlopModel.from_module(load_backbone(backbone, attn_implementation="eager"))
    batches = [make_batch(i) for i in range(4)]
    expected = sum(flops.batch(b.queries["attention_mask"]) + flops.batch(b.documents["attention_mask"])
                   for b in batches)
    print("RESULT", json.dumps({"record": [record.world_size, record.steps, record.examples, record.tokens,
                                           record.flops_model, record.flops_hardware],
                                "expected": [2, 2, 16, sum(int(b.queries["attention_mask"].sum()
                                                           + b.documents["attention_mask"].sum()) for b in batches),
                                             expected.model, expected.hardware]}), flush=True)
    os._exit(0)
"""


def test_ddp_counts_every_rank_exactly(tiny_backbones, tmp_path):
    import subprocess
    import sys

    script = tmp_path / "ddp_fit.py"
    script.write_text(_DDP_SCRIPT)
    import os
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # torchrun, as a user launches DDP (ddp_spawn's children sometimes aborted at exit, after training).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={port}", str(script),
                           tiny_backbones["gpt_neox"], str(tmp_path / "runs.jsonl")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["record"] == result["expected"]  # two processes, all-reduced: exact, padding included


def test_failed_fit_is_recorded_as_failed(tiny_backbones, pairs_file, tmp_path):
    from lightning_embed.flops.callback import FlopCallback
    from lightning_embed.training.module import EmbeddingModule
    from lightning_embed.flops.records import read_runs

    class Crashing(EmbeddingModule):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise RuntimeError("out of cheese")
            return super().training_step(batch, batch_idx)

    runs = tmp_path / "runs.jsonl"
    with pytest.raises(RuntimeError, match="cheese"):
        _fit(tiny_backbones, pairs_file, FlopCallback(runs_file=str(runs), accounting="paper"), module_cls=Crashing)
    (record,) = read_runs(runs)
    assert record.status == "failed" and record.error == "RuntimeError: out of cheese" and record.steps == 2
    # Paper accounting: full fine-tuning costs 6N per real token; hardware stays exact.
    assert record.accounting == "paper" and record.flops_model == 6 * record.non_embedding_params * record.tokens


def test_bad_setup_fails_before_training_without_a_record(tiny_backbones, pairs_file, tmp_path):
    from lightning_embed.flops.callback import FlopCallback

    runs = tmp_path / "runs.jsonl"
    with pytest.raises(UserError, match="does not buy one training step"):
        _fit(tiny_backbones, pairs_file, FlopCallback(max_flops=1e3, runs_file=str(runs)))
    assert runs.read_text() == ""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot append run records"):
        _fit(tiny_backbones, pairs_file, FlopCallback(runs_file=str(blocker / "runs.jsonl")))


def test_dry_run_matches_the_callback_plan(tiny_backbones, pairs_file):
    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.training.module import EmbeddingModule

    module = EmbeddingModule(backbone=tiny_backbones["gpt_neox"], attn_implementation="eager")
    data = PairDataModule(train=pairs_file, batch_size=4)
    report = dry_run(module, data, 5e8)
    assert report.steps == math.floor(5e8 / report.per_step.model)
    assert report.examples == 4 * report.steps and report.steps_per_epoch == 12
    assert 0 < report.padding < 1 and report.per_step.hardware > report.per_step.model
    assert report_table(report).row_count >= 8
    with pytest.raises(UserError, match="budget must be a positive"):
        dry_run(module, data, "-3")
