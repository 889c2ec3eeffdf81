"""FlexAttention for packed rows: the same embeddings, loss and gradients as padded batches.

On CPU FlexAttention runs its unfused reference implementation (no compile), the same code path as on GPUs
up to the kernel: the BlockMask built from the document ids, the attention interface, the unpacking.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_embed.data.batches import PairExample
from lightning_embed.errors import UserError
from lightning_embed.models.backbones import hf_model
from lightning_embed.models.pooling import pool
from lightning_embed.testing import assert_close_relative
from lightning_embed.training.acceleration import FP32_SCORE_ATTENTION, switch_training_attention, training_attention
from lightning_embed.training.flex_packing import FLEX_ATTENTION, document_block_mask, flex_available
from lightning_embed.training.module import EmbeddingModule
from lightning_embed.training.packing import PACKING_TOLERANCE, decide_packing, pack_and_encode, packing_mismatch

pytestmark = pytest.mark.skipif(not flex_available(), reason="this torch has no FlexAttention")

TEXTS = ("a", "The quick brown fox jumps over the lazy dog.", "def add(x, y):\n    return x + y",
         "Packing must not change a single embedding, whatever the length.", "short", "two words")


def _examples(n: int = 10) -> list[PairExample]:
    return [PairExample(" ".join(["word"] * (1 + (i * 5) % 11)) + f" q{i}",
                        " ".join(["tok"] * (2 + (i * 17) % 40)) + f" d{i}", (), i) for i in range(n)]


def _module(backbone: str, attention: str, pack: bool) -> EmbeddingModule:
    torch.manual_seed(0)
    return EmbeddingModule(backbone=backbone, query_max_length=16, document_max_length=48,
                           attn_implementation=attention, pack_sequences=pack)


def _packed_embeddings(module: EmbeddingModule, attention: str, causal: bool) -> torch.Tensor:
    tok = module.tokenizer
    encodings = [dict(tok(list(t), padding=True, return_tensors="pt")) for t in (TEXTS[:3], TEXTS[3:])]
    encodings = [{k: v for k, v in e.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                 for e in encodings]
    lengths = [e["attention_mask"].sum(1).tolist() for e in encodings]
    with torch.no_grad():
        hidden, mask, plan = pack_and_encode(module.backbone, attention, causal, encodings, lengths,
                                             tok.pad_token_id or 0)
    assert len(plan.rows) < len(TEXTS)  # several texts really share a row
    return F.normalize(pool(hidden, mask, "mean"), dim=-1)


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_flex_packed_embeddings_equal_padded(tiny_backbones, arch):
    module = _module(tiny_backbones[arch], "flex", True).eval()
    assert hf_model(module.backbone).config._attn_implementation == FLEX_ATTENTION
    packed = _packed_embeddings(module, FLEX_ATTENTION, causal=arch == "llama")
    tok = module.tokenizer
    with torch.no_grad():
        enc = tok(list(TEXTS), padding=True, return_tensors="pt")
        hf_model(module.backbone).set_attn_implementation("sdpa")
        padded = F.normalize(pool(module.backbone(**enc).last_hidden_state, enc["attention_mask"], "mean"), dim=-1)
    assert_close_relative(packed, padded, what="flex packed embeddings")


@pytest.mark.parametrize("causal", [True, False])
def test_flex_mask_matches_the_dense_mask_causal_or_not(tiny_backbones, causal):
    # Non-causal packing of a decoder is what bidirectional attention for decoders asks of it.
    module = _module(tiny_backbones["llama"], "flex", True).eval()
    flex = _packed_embeddings(module, FLEX_ATTENTION, causal)
    hf_model(module.backbone).set_attn_implementation("sdpa")
    dense = _packed_embeddings(module, "sdpa", causal)
    assert_close_relative(flex, dense, what=f"flex vs dense mask, causal={causal}")
    other = _packed_embeddings(module, "sdpa", not causal)
    assert (flex - other).norm() > 1e-2 * flex.norm()  # causality really changes the embeddings


def test_document_block_mask_keeps_texts_and_filler_apart():
    segment = torch.tensor([[0, 0, 1, 1, 1, -1], [0, 0, 0, 0, 0, 0]])
    dense = document_block_mask(segment, causal=True).to_dense()  # (rows, 1, q tiles, kv tiles): one tile here
    assert dense.shape[0] == 2 and bool(dense.all())
    mask = document_block_mask(segment, causal=True).mask_mod
    q, kv = torch.arange(6)[:, None], torch.arange(6)[None, :]
    allowed = mask(torch.tensor(0), torch.tensor(0), q, kv)
    expected = (segment[0][:, None] == segment[0][None, :]) & (q >= kv)
    assert torch.equal(allowed, expected)


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_flex_step_has_the_padded_loss(tiny_backbones, arch, pack):
    # Gradients cannot be compared here (FlexAttention has no CPU backward): benchmarks/gpu_check.py does it.
    # Unpacked, the BlockMask comes from the model's own mask function (causal or not) and the padding.
    flex = _module(tiny_backbones[arch], "flex", pack)
    whole = _module(tiny_backbones[arch], "sdpa", False)
    whole.load_state_dict(flex.state_dict())
    batch = flex.make_collator()(_examples())
    with torch.no_grad():
        losses = [module.eval()(batch) for module in (flex, whole)]
    assert flex.packing_enabled() is pack
    assert_close_relative(losses[0], losses[1], what="loss")


def test_flex_refuses_to_train_on_cpu(tiny_backbones):
    flex = _module(tiny_backbones["llama"], "flex", True)
    with pytest.raises(UserError, match="cannot train on CPU"):
        flex(flex.make_collator()(_examples(4)))


def test_flex_passes_the_fit_start_check(tiny_backbones):
    module = _module(tiny_backbones["llama"], "flex", "auto")
    assert packing_mismatch(module.backbone, FLEX_ATTENTION, True, module.tokenizer) < PACKING_TOLERANCE / 10
    pack, note = decide_packing(True, module.backbone, module.tokenizer, causal=True, other_scheme=False)
    assert pack and "checked equal to padded" in note


def test_flex_is_chosen_on_cuda_for_packed_batches_only():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert training_attention(cuda, "bf16-mixed", 64, packs=True) == FLEX_ATTENTION
    assert training_attention(cuda, "bf16-mixed", 64, packs=False) is None
    # CPU keeps its choices, packing or not
    assert training_attention(cpu, "bf16-mixed", 64, packs=True) == FP32_SCORE_ATTENTION
    assert training_attention(cpu, "32-true", 64, packs=True) is None


def test_switching_to_flex_names_it_and_skips_attention_dropout(tiny_backbones):
    llama = _module(tiny_backbones["llama"], None, "auto")
    previous, note = switch_training_attention(llama.backbone, torch.device("cuda"), "bf16-mixed", 64, packs=True)
    assert previous == "sdpa" and "FlexAttention" in note
    assert hf_model(llama.backbone).config._attn_implementation == FLEX_ATTENTION
    bert = _module(tiny_backbones["bert"], None, "auto")
    dropout = hf_model(bert.backbone).config.attention_probs_dropout_prob
    previous, note = switch_training_attention(bert.backbone, torch.device("cuda"), "bf16-mixed", 64, packs=True)
    if dropout:
        assert previous is None and "dropout" in note
        assert hf_model(bert.backbone).config._attn_implementation == "sdpa"


def test_flex_under_bf16_autocast_matches_sdpa(tiny_backbones):
    # Rotary embeddings leave queries and keys in fp32 beside bf16 values under autocast: one dtype for the kernel.
    module = _module(tiny_backbones["llama"], "flex", True).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        flex = _packed_embeddings(module, FLEX_ATTENTION, causal=True)
        hf_model(module.backbone).set_attn_implementation("sdpa")
        dense = _packed_embeddings(module, "sdpa", causal=True)
    assert_close_relative(flex.float(), dense.float(), rel=2e-2, what="bf16 flex vs sdpa")
