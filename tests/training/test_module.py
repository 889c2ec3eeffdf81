"""Throughput options: length-grouped batching by token length, fp32 logits under bf16 autocast, compile."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from lightning_embed.data.batches import PairCollator, PairExample
from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.data.sampling import PairBatchSampler
from lightning_embed.training.module import EmbeddingModule


def _examples(n: int = 480) -> list[PairExample]:
    # Query and document lengths vary independently, as in real data.
    return [PairExample(" ".join(["word"] * (2 + (i * 7) % 20)) + f" q{i}",
                        " ".join(["tok"] * (3 + (i * 13) % 90)) + f" d{i}", (), i) for i in range(n)]


def _real_share(batches, examples, collate) -> float:
    real = computed = 0
    for b in batches:
        batch = collate([examples[i] for i in b])
        for enc in (batch.queries, batch.documents):
            real += int(enc["attention_mask"].sum())
            computed += enc["attention_mask"].numel()
    return real / computed


def test_token_lengths_count_prompt_truncation_and_negatives(tiny_backbones):
    from lightning_embed.models.backbones import load_tokenizer

    tok = load_tokenizer(tiny_backbones["llama"])
    collate = PairCollator(tok, query_max_length=6, document_max_length=50, document_prompt="doc: ")
    ex = [PairExample("a b c d e f g h i j", "x y", ("z", "w w w")), PairExample("a", "x", ("y", "z"))]
    lengths = collate.token_lengths(ex)
    batch = collate(ex)
    assert [q for q, _ in lengths] == batch.queries["attention_mask"].sum(1).tolist()
    docs = batch.documents["attention_mask"].sum(1).tolist()  # positives, then each query's negatives
    assert [d for _, d in lengths] == [docs[0] + docs[2] + docs[3], docs[1] + docs[4] + docs[5]]
    assert lengths[0][0] == 6  # truncated


def test_group_by_length_token_lengths_cut_padding_and_are_seed_reproducible(tiny_backbones):
    from lightning_embed.models.backbones import load_tokenizer

    examples = _examples()
    collate = PairCollator(load_tokenizer(tiny_backbones["llama"]), 16, 64)
    lengths = collate.token_lengths(examples)

    def sampler(seed, group, lens=None):
        s = PairBatchSampler(examples, 8, shuffle=True, drop_last=True, group_by_length=group, seed=seed,
                             lengths=lens)
        return list(s)

    mixed, by_chars, by_tokens = sampler(0, False), sampler(0, True), sampler(0, True, lengths)
    shares = [_real_share(b, examples, collate) for b in (mixed, by_chars, by_tokens)]
    assert shares[0] < shares[1] < shares[2] and shares[2] > 0.85, shares
    assert by_tokens == sampler(0, True, lengths)  # reproducible by seed
    assert by_tokens != sampler(1, True, lengths)
    widths = [max(lengths[i][1] for i in b) for b in by_tokens]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)  # buckets visited at random
    assert sorted(i for b in by_tokens for i in b) == sorted(i for b in mixed for i in b)  # same examples


def test_data_module_groups_by_the_collators_token_lengths(tiny_backbones):
    from lightning_embed.models.backbones import load_tokenizer

    data = PairDataModule(train="builtin:stdlib-code", batch_size=8, group_by_length=True, max_train_examples=400)
    data.collator = PairCollator(load_tokenizer(tiny_backbones["llama"]), 256, 1024)
    data.setup("fit")
    examples = data.train_examples
    plain = PairDataModule(train="builtin:stdlib-code", batch_size=8, max_train_examples=400)
    plain.collator = data.collator
    plain.setup("fit")
    grouped = _real_share(list(data._train_sampler), examples, data.collator)
    mixed = _real_share(list(plain._train_sampler), examples, data.collator)
    assert isinstance(data._train_sampler._lengths[0], tuple)  # sorted by token, not character, lengths
    assert grouped > mixed + 0.1, (grouped, mixed)


def test_contrastive_logits_stay_fp32_under_bf16_autocast(tiny_backbones):
    module = EmbeddingModule(backbone=tiny_backbones["llama"])
    torch.manual_seed(0)
    q = F.normalize(torch.randn(8, 32), dim=-1)
    d = F.normalize(torch.randn(8, 32), dim=-1)
    reference = module._contrastive_loss(q, d, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = module._contrastive_loss(q, d, 0)
        plain = module.loss_fn(q, d, 0)  # the loss alone would run its matmul in bf16
    assert mixed.dtype == torch.float32 and torch.equal(mixed, reference)
    assert not torch.equal(plain, reference)


def _train_and_validate(backbone: str, precision: str, seed: int) -> float:
    L.seed_everything(seed, workers=True)
    module = EmbeddingModule(backbone=backbone, learning_rate=1e-3, query_max_length=16, document_max_length=32)
    data = PairDataModule(train="builtin:stdlib-code", batch_size=8, max_train_examples=64, max_val_examples=32,
                          seed=seed)
    trainer = L.Trainer(max_steps=6, precision=precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    evaluator = L.Trainer(precision="32-true", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return evaluator.validate(module, datamodule=data, verbose=False)[0]["val/loss"]  # both evaluated in fp32


def test_bf16_mixed_training_matches_fp32_held_out_loss(tiny_backbones):
    fp32 = _train_and_validate(tiny_backbones["llama"], "32-true", 0)
    bf16 = _train_and_validate(tiny_backbones["llama"], "bf16-mixed", 0)
    assert abs(bf16 - fp32) < 0.02 * fp32, (fp32, bf16)


def test_compile_option_is_recorded_and_auto_by_default(tiny_backbones):
    assert EmbeddingModule(backbone=tiny_backbones["bert"]).hparams.compile == "auto"
    assert EmbeddingModule(backbone=tiny_backbones["bert"], compile=True).hparams.compile is True
