"""load(checkpoint) rebuilds the backbone alone (no Lightning import) and embeds as the trained module."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch.nn.functional as F

from lightning_embed.models.checkpoint_model import module_arguments
from lightning_embed.models.encoder import load
from tests.models.checkpoints import DOCUMENTS, QUERIES, reference_embeddings, train_checkpoint


def test_module_arguments_match_the_class():
    from lightning_embed.training.module import EmbeddingModule

    assert module_arguments() == set(inspect.signature(EmbeddingModule.__init__).parameters) - {"self"}


@pytest.mark.parametrize("tuning", ["freeze", "bias", "qlora"])
def test_checkpoint_of_each_strategy_embeds_as_the_module(tuning, tiny_backbones, tmp_path):
    spec = {"name": "qlora", "rank": 4} if tuning == "qlora" else tuning
    ckpt, module = train_checkpoint(tiny_backbones["gpt_neox"], tmp_path / "run", tuning=spec)
    ref_q, ref_d = reference_embeddings(module)
    encoder = load(ckpt, device="cpu")
    # qlora: the module dequantises 4-bit codes per forward, the rebuilt model once (fp32 order of additions)
    floor = 0.999 if tuning == "qlora" else 0.9999
    assert F.cosine_similarity(encoder.encode(QUERIES, prompt="query"), ref_q).min() > floor
    assert F.cosine_similarity(encoder.encode(DOCUMENTS, prompt="document"), ref_d).min() > floor


def test_loading_a_checkpoint_does_not_import_lightning(tiny_backbones, tmp_path):
    ckpt, _ = train_checkpoint(tiny_backbones["llama"], tmp_path / "run", steps=1)
    code = ("import sys, lightning_embed\nlightning_embed.load(sys.argv[1], device='cpu').encode(['a'])\n"
            "print('lightning' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
