"""Tiny random-initialised Hugging Face models and a word-level tokenizer, built and saved locally
(nothing is downloaded), and labelled texts for them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

WORDS = [f"w{i}" for i in range(60)] + ["good", "bad", "the", "movie", "was", "very"]
SPECIAL = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]


def save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    fast.chat_template = "{% for m in messages %}[BOS] user {{ m['content'] }} [EOS]{% endfor %} the"
    fast.save_pretrained(folder)


def save_model(folder: Path, kind: str) -> Path:
    """A 3-block Llama-style, 2-block GPT-2-style or 2-block BERT-style model with its tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vocab = len(SPECIAL) + len(WORDS)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=0,
        )
        model = LlamaForCausalLM(config)
    elif kind == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=2, eos_token_id=3
            )
        )
    else:
        config = BertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
        )
        model = BertModel(config)
    model.save_pretrained(folder)
    save_tokenizer(folder)
    return folder


def write_texts(path: Path, n: int = 40, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """n labelled texts of 1 to 30 words (label 1: "good" in it), as a CSV with text and label columns."""
    rng = np.random.default_rng(seed)
    texts, labels = [], rng.integers(0, 2, n)
    for label in labels:
        words = list(rng.choice(WORDS[:60], size=int(rng.integers(0, 30))))
        words.insert(int(rng.integers(0, len(words) + 1)), "good" if label else "bad")
        texts.append(" ".join(words))
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels.tolist(), strict=True))
    return texts, labels
