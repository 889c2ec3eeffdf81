"""Export round trips on tiny models: sentence-transformers and transformers load the folder and embed
exactly as the trained module; lightning_embed.load agrees; bad input fails cleanly and atomically."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from lightning_embed.cli.app import main
from lightning_embed.errors import UserError
from lightning_embed.models.encoder import load
from lightning_embed.models.export import export_checkpoint
from lightning_embed.testing import assert_close_relative
from tests.models.checkpoints import DOCUMENTS, QUERIES, reference_embeddings, train_checkpoint


@pytest.fixture(scope="module")
def left_padded_llama(tiny_backbones, tmp_path_factory) -> str:
    """The tiny Llama with a tokenizer that pads on the left (as many decoder tokenizers do)."""
    folder = tmp_path_factory.mktemp("left") / "llama"
    shutil.copytree(tiny_backbones["llama"], folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["padding_side"] = "left"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return str(folder)


LORA = {"name": "lora", "rank": 4}


CASES = [
    ("gpt_neox", "full", "mean", True),
    ("gpt_neox", LORA, "weighted_mean", True),
    ("llama-left", "full", "last", True),
    ("llama", LORA, "last", True),
    ("bert", "full", "cls", False),
    ("bert", LORA, "mean", True),
]


@pytest.mark.parametrize(("arch", "tuning", "pooling", "normalize"), CASES,
                         ids=[f"{a}-{t if isinstance(t, str) else 'lora'}-{p}" for a, t, p, _ in CASES])
def test_round_trip_through_sentence_transformers(arch, tuning, pooling, normalize, tiny_backbones,
                                                  left_padded_llama, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    backbone = left_padded_llama if arch == "llama-left" else tiny_backbones[arch]
    ckpt, module = train_checkpoint(backbone, tmp_path / "run", tuning=tuning, pooling=pooling, normalize=normalize)
    if arch == "llama-left":
        assert module.tokenizer.padding_side == "left"
    ref_q, ref_d = reference_embeddings(module)
    out = export_checkpoint(ckpt, tmp_path / "export")

    st = SentenceTransformer(str(out), device="cpu")
    st_q = torch.as_tensor(st.encode(QUERIES, prompt_name="query", batch_size=32))
    st_d = torch.as_tensor(st.encode(DOCUMENTS, prompt_name="document", batch_size=32))
    assert F.cosine_similarity(st_q, ref_q).min() > 0.9999
    assert F.cosine_similarity(st_d, ref_d).min() > 0.9999
    if not normalize:  # raw vectors: their lengths must match too
        assert_close_relative(st_q, ref_q, what="query embeddings")

    for source in (ckpt, out):
        encoder = load(source, device="cpu")
        q = encoder.encode(QUERIES, prompt="query")
        d = encoder.encode(DOCUMENTS, prompt="document", batch_size=2)  # several batches, order restored
        assert F.cosine_similarity(q, ref_q).min() > 0.9999, source
        assert F.cosine_similarity(d, ref_d).min() > 0.9999, source

    plain = AutoModel.from_pretrained(str(out))
    assert "Peft" not in type(plain).__name__ and not any("lora" in n for n, _ in plain.named_parameters())
    # Training moved the model: the export is not just the untrained backbone.
    base = load(backbone, device="cpu")
    base.pooling, base.query_prompt = pooling, "q: "
    assert F.cosine_similarity(base.encode(QUERIES, prompt="query"), ref_q).min() < 0.9999


def test_folder_layout_configs_and_model_card(lora_run, tmp_path):
    out = export_checkpoint(lora_run, tmp_path / "model")
    modules = json.loads((out / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_lasttoken"]
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 48
    st_config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"query": "q: ", "document": "d: "}
    assert st_config["similarity_fn_name"] == "cosine"
    meta = json.loads((out / "lightning_embed.json").read_text())
    assert meta["tuning"]["name"] == "lora" and meta["training"]["flops"]["flops_model"] > 0
    card = (out / "README.md").read_text()
    for fragment in ("library_name: sentence-transformers", "lora (rank=4", "training FLOP", "ndcg@10",
                     "pairs.jsonl", "examples seen"):
        assert fragment in card, fragment
    assert not list(tmp_path.glob(".model.*")), "temporary folders left behind"


def test_overwrite_replaces_atomically(lora_run, tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export_checkpoint(lora_run, target)
    assert (target / "keep.txt").read_text() == "mine"
    export_checkpoint(lora_run, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_failure_leaves_nothing_behind(lora_run, tmp_path, monkeypatch):
    import lightning_embed.models.export as export_module

    def broken(module, folder, hparams, info):
        (folder / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "_write", broken)
    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(lora_run, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_and_bad_inputs(lora_run, tmp_path, capsys):
    out = tmp_path / "cli_model"
    main(["export", str(lora_run), "--output", str(out)])
    assert (out / "modules.json").is_file()

    def fails(args: list[str], *fragments: str) -> None:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lightning-embed: error:"), err
        for fragment in fragments:
            assert fragment in err[0], err[0]

    fails(["export", str(lora_run), "--output", str(out)], "not empty", "--overwrite")
    fails(["export", str(tmp_path / "nope.ckpt"), "--output", str(tmp_path / "a")], "nope.ckpt", "does not exist")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 0}, foreign)
    fails(["export", str(foreign), "--output", str(tmp_path / "b")], "not a lightning-embed checkpoint")
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    fails(["export", str(junk), "--output", str(tmp_path / "c")], "junk.ckpt")
    fails(["export", str(lora_run)], "-o DIR")
    main(["export", str(lora_run), "-o", str(out), "--overwrite"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli_model", "foreign.ckpt", "junk.ckpt"]


def test_encoder_api(tiny_backbones):
    encoder = load(tiny_backbones["bert"], device="cpu")
    texts = ["short", "a much longer text that needs padding in its batch", "mid length text"]
    together = encoder.encode(texts, batch_size=2)
    alone = torch.stack([encoder.encode(t) for t in texts])
    assert together.shape == (3, encoder.dimension) and alone.shape == together.shape
    assert F.cosine_similarity(together, alone).min() > 0.9999
    assert torch.allclose(together.norm(dim=-1), torch.ones(3))
    raw = encoder.encode(texts, normalize=False, convert_to_numpy=True)
    assert raw.shape == (3, encoder.dimension) and not (abs((raw**2).sum(-1) - 1) < 1e-4).all()
    assert encoder.encode([]).shape == (0, encoder.dimension)
    assert not encoder.model.training
    literal = encoder.encode(texts, prompt="search: ")
    assert F.cosine_similarity(literal, together).min() < 0.9999
    with pytest.raises(UserError, match="does not exist"):
        load("./missing-model.ckpt")
