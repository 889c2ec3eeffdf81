"""Tiny random backbones for tests and benchmarks, built from configs with a tokenizer trained on the fly.

Nothing here touches the network: the tokenizer is a small BPE trained on text that ships with Python.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

TinyArch = Literal["gpt_neox", "llama", "bert"]

_CORPUS = [
    "Return the number of items in a container.",
    "def length(items):\n    return len(items)",
    "Split a string into a list of words separated by whitespace.",
    "def split_words(text):\n    return text.split()",
    "Compute the mean of a list of numbers, raising ValueError when it is empty.",
    "class Counter(dict):\n    def most_common(self, n=None):\n        return sorted(self.items())",
    "Open a file and read its lines; the file is closed afterwards.",
    "with open(path) as handle:\n    for line in handle:\n        yield line.rstrip()",
    "The quick brown fox jumps over the lazy dog. Query document positive negative.",
    "import os, sys, json, re, math, random, collections, itertools, functools",
]


def _train_tokenizer(vocab_size: int, with_cls: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] if with_cls else ["<pad>", "<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token=specials[1]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    if with_cls:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def tiny_config(arch: TinyArch, vocab_size: int, *, hidden: int = 32, layers: int = 2, heads: int = 4):
    """A tiny config of the given shape (biases as in the real family: GPT-NeoX and BERT have them)."""
    from transformers import BertConfig, GPTNeoXConfig, LlamaConfig

    if arch == "gpt_neox":
        return GPTNeoXConfig(
            vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=4 * hidden, max_position_embeddings=256, rotary_pct=0.25, pad_token_id=0,
            bos_token_id=2, eos_token_id=3, architectures=["GPTNeoXForCausalLM"],
        )
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2), intermediate_size=3 * hidden, max_position_embeddings=256,
            pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=True,
            architectures=["LlamaForCausalLM"],
        )
    if arch == "bert":
        return BertConfig(
            vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=4 * hidden, max_position_embeddings=256, pad_token_id=0,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; choose gpt_neox, llama or bert")


def make_tiny_backbone(
    arch: TinyArch, directory: str | os.PathLike | None = None, *, hidden: int = 32, layers: int = 2,
    heads: int = 4, vocab_size: int = 512, seed: int = 0,
) -> Path:
    """Writes a tiny random model + tokenizer folder that ``load_backbone`` loads like any local model.

    Returns:
        The folder (a fresh temporary one when ``directory`` is None).
    """
    import torch
    from transformers import AutoModel

    folder = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix=f"tiny-{arch}-"))
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size, with_cls=arch == "bert")
    config = tiny_config(arch, len(tokenizer), hidden=hidden, layers=layers, heads=heads)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
