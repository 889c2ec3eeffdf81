"""Training attention and ``compile: auto``: chosen at fit start, only when the user left them open."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.models.backbones import hf_model
from lightning_embed.strategy import strategy_class
from lightning_embed.testing import assert_close_relative
from lightning_embed.training import acceleration
from lightning_embed.training.acceleration import (
    AUTO_COMPILE_MIN_STEPS,
    FP32_SCORE_ATTENTION,
    auto_compile,
    fp32_score_attention,
    training_attention,
)
from lightning_embed.training.module import EmbeddingModule

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_eager_attention_only_on_cpu_in_bf16_for_short_texts():
    assert training_attention(CPU, "bf16-mixed", 64) == FP32_SCORE_ATTENTION
    assert training_attention(CPU, "bf16-true", 256) == FP32_SCORE_ATTENTION
    assert training_attention(CPU, "bf16-mixed", 512) is None  # flash wins on long texts
    assert training_attention(CPU, "32-true", 64) is None  # fp32 flash is as fast
    assert training_attention(CUDA, "bf16-mixed", 64) is None  # GPUs keep their fused kernels


def test_auto_compile_only_for_long_single_process_cpu_runs(monkeypatch):
    monkeypatch.setattr(acceleration, "_has_cxx_compiler", lambda: True)
    assert auto_compile(CPU, AUTO_COMPILE_MIN_STEPS, 1, True).compile
    assert not auto_compile(CPU, AUTO_COMPILE_MIN_STEPS - 1, 1, True).compile
    assert not auto_compile(CUDA, 10**6, 1, True).compile
    assert not auto_compile(CPU, 10**6, 2, True).compile
    assert not auto_compile(CPU, 10**6, 1, False).compile
    assert not auto_compile(CPU, 10**6, 1, True, decoder=False).compile
    monkeypatch.setattr(acceleration, "_has_cxx_compiler", lambda: False)
    decision = auto_compile(CPU, 10**6, 1, True)
    assert not decision.compile and "C++ compiler" in decision.reason


def test_qlora_opts_out_of_auto_compile():
    assert strategy_class("qlora").auto_compile is False  # bitsandbytes kernels
    assert strategy_class("lora").auto_compile is True


class _SeenAttention(L.Callback):
    def __init__(self):
        self.seen: set[str] = set()

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen.add(hf_model(module.backbone).config._attn_implementation)


def _fit(module: EmbeddingModule, precision: str, steps: int = 2) -> _SeenAttention:
    seen = _SeenAttention()
    data = PairDataModule(train="builtin:stdlib-code", batch_size=4, max_train_examples=16, seed=0)
    trainer = L.Trainer(max_steps=steps, precision=precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[seen])
    trainer.fit(module, datamodule=data)
    return seen


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_bf16_cpu_training_uses_eager_attention_and_restores_it(tiny_backbones, arch):
    module = EmbeddingModule(backbone=tiny_backbones[arch], query_max_length=16, document_max_length=32)
    before = hf_model(module.backbone).config._attn_implementation
    assert before == "sdpa"
    assert _fit(module, "bf16-mixed").seen == {FP32_SCORE_ATTENTION}
    assert hf_model(module.backbone).config._attn_implementation == before  # encode/export as loaded


def test_attention_is_left_alone_when_chosen_or_in_fp32(tiny_backbones):
    chosen = EmbeddingModule(backbone=tiny_backbones["llama"], attn_implementation="sdpa", query_max_length=16,
                             document_max_length=32)
    assert _fit(chosen, "bf16-mixed").seen == {"sdpa"}
    fp32 = EmbeddingModule(backbone=tiny_backbones["llama"], query_max_length=16, document_max_length=32)
    assert _fit(fp32, "32-true").seen == {"sdpa"}


def test_lora_backbone_switches_attention_inside_the_adapter_wrapper(tiny_backbones):
    module = EmbeddingModule(backbone=tiny_backbones["llama"], tuning={"name": "lora", "rank": 4},
                             query_max_length=16, document_max_length=32)
    assert _fit(module, "bf16-mixed").seen == {FP32_SCORE_ATTENTION}


class _Heads(torch.nn.Module):
    num_key_value_groups = 3
    training = False


def test_fp32_score_attention_is_as_accurate_as_sdpa_and_handles_gqa_and_masks():
    torch.manual_seed(0)
    rows, heads, kv_heads, length, dim = 4, 6, 2, 24, 16
    q = torch.randn(rows, heads, length, dim, dtype=torch.float64) * 3
    k = torch.randn(rows, kv_heads, length, dim, dtype=torch.float64) * 3
    v = torch.randn(rows, kv_heads, length, dim, dtype=torch.float64)
    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None, None].expand(rows, 1, -1, -1).clone()
    allowed[0, :, :, :5] = False  # left padding in row 0
    allowed[0, :, :5, :5] = torch.eye(5, dtype=torch.bool)  # (padding queries see themselves)
    exact = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), attn_mask=allowed).transpose(1, 2)
    for mask in (allowed, torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)):
        out, _ = fp32_score_attention(_Heads(), q.float(), k.float(), v.float(), mask)
        assert_close_relative(out.double(), exact, what="fp32-score attention against float64")
    q16, k16, v16 = (x.bfloat16() for x in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(
        q16.double(), k16.double().repeat_interleave(3, 1), v16.double().repeat_interleave(3, 1),
        attn_mask=allowed).transpose(1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = fp32_score_attention(_Heads(), q16, k16, v16, allowed)
        scores = torch.matmul(q16, k16.repeat_interleave(3, 1).transpose(2, 3)) * dim ** -0.5  # HF eager in bf16
        probs = torch.softmax(scores.masked_fill(~allowed, -1e4), -1, dtype=torch.float32).to(torch.bfloat16)
        bf16_eager = torch.matmul(probs, v16.repeat_interleave(3, 1)).transpose(1, 2)
    assert (ours.double() - ref).abs().mean() < 0.5 * (bf16_eager.double() - ref).abs().mean()


def test_compile_auto_stays_off_for_short_runs(tiny_backbones):
    module = EmbeddingModule(backbone=tiny_backbones["llama"], query_max_length=16, document_max_length=32)
    _fit(module, "32-true")
    assert not getattr(module.backbone, "_compiled_call_impl", None)


def test_compile_auto_compiles_long_runs(tiny_backbones, monkeypatch):
    if not acceleration._has_cxx_compiler():
        pytest.skip("no C++ compiler for inductor")
    monkeypatch.setattr(acceleration, "AUTO_COMPILE_MIN_STEPS", 2)
    torch.manual_seed(0)
    module = EmbeddingModule(backbone=tiny_backbones["llama"], query_max_length=16, document_max_length=32)
    eager = EmbeddingModule(backbone=tiny_backbones["llama"], query_max_length=16, document_max_length=32,
                            compile=False)
    eager.load_state_dict(module.state_dict())
    _fit(module, "32-true", steps=3)
    _fit(eager, "32-true", steps=3)
    assert getattr(module.backbone, "_compiled_call_impl", None) is not None
    # Same math: the compiled run lands on the same weights.
    pairs = list(zip(module.named_parameters(), eager.named_parameters(), strict=True))
    assert_close_relative({n: a for (n, a), _ in pairs}, {n: b for (n, _), (_, b) in pairs}, what="weights")


def test_a_backbone_that_cannot_switch_attention_keeps_its_own(tiny_backbones, monkeypatch):
    from lightning_embed.training.acceleration import switch_training_attention

    module = EmbeddingModule(backbone=tiny_backbones["llama"])
    model = hf_model(module.backbone)

    def refuse(*args, **kwargs):
        raise ValueError("this model does not support the attention interface")

    monkeypatch.setattr(model, "set_attn_implementation", refuse)
    previous, note = switch_training_attention(module.backbone, CPU, "bf16-mixed", 64)
    assert previous is None and "kept sdpa" in note
    assert model.config._attn_implementation == "sdpa"


def test_fit_start_prints_its_choices(tiny_backbones, capsys):
    module = EmbeddingModule(backbone=tiny_backbones["llama"], query_max_length=16, document_max_length=32)
    _fit(module, "bf16-mixed")
    out = capsys.readouterr().out
    assert "attention: eager with fp32 scores" in out and "packing: on" in out
    assert "torch.compile off (compile: auto, 2 steps < 500" in out


def test_two_modules_compiled_in_one_process_both_compile(tiny_backbones, tmp_path, monkeypatch):
    """Fitting a second module with ``compile: true`` in the same process (a sweep, a notebook) compiles it
    too: dynamo's recompile limit, shared through the backbone class's forward, is raised for it, where it
    would otherwise run eager without a word. The limit starts at 1 here, as if earlier modules had used up
    the default budget."""
    import lightning as L
    import torch._dynamo
    import torch._dynamo.config as dynamo_config
    from torch._dynamo.utils import counters

    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.training import acceleration
    from lightning_embed.training.module import EmbeddingModule

    if not acceleration._has_cxx_compiler():
        pytest.skip("no C++ compiler: inductor cannot compile on CPU")
    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    # Not monkeypatch: its undo deletes the attribute, which dynamo's config module takes as "hide this option",
    # and every later torch.compile / flex_attention in the process fails (docs/bugs.md).
    before_limit = getattr(dynamo_config, name)
    setattr(dynamo_config, name, 1)
    monkeypatch.setattr(acceleration, "_compiled", {"modules": 0, "base_limit": None})
    torch._dynamo.reset()
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(f'{{"query": "query {i}", "positive": "document {i} about things"}}\n' for i in range(8)))
    graphs = []
    try:
        for num_layers in (None, 1):  # one backbone class, another graph (fewer blocks): a recompile
            module = EmbeddingModule(backbone=tiny_backbones["llama"], compile=True, num_layers=num_layers,
                                     query_max_length=16, document_max_length=24)
            before = counters["stats"]["unique_graphs"]
            L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, precision="32-true",
                      default_root_dir=tmp_path).fit(module, PairDataModule(train=str(pairs), batch_size=4))
            graphs.append(counters["stats"]["unique_graphs"] - before)
        assert graphs[0] >= 1 and graphs[1] >= 1, f"graphs compiled per fit: {graphs}"
        assert getattr(dynamo_config, name) == 2  # raised once, for the second module
    finally:
        setattr(dynamo_config, name, before_limit)
        torch._dynamo.reset()
