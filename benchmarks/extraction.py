"""Extraction against the model's own batched forward pass, over the same batches, in one process.

    python benchmarks/extraction.py [--hidden 2048] [--blocks 16] [--texts 2048] [--max-words 512]
                                    [--batch-tokens 65536] [--dtype bfloat16]

Builds a random-initialised Llama-style model (default 0.84B parameters: 2048 wide, 16 blocks,
5632-wide MLP, 32 heads, 4 KV heads, a 32,000-word word-level tokenizer) and texts of random words,
saves it to a temporary folder, then on the same texts and the same length-sorted batches measures:

- the plain forward pass: `model(input_ids, attention_mask)` batch by batch, tokens per second (the
  faster of two passes, the first meeting every batch shape cold) and peak device memory (the floor
  extraction is held to);
- `probe_lab.extract` with `pooling=last` over layers 4, 8, 12 and the last (a whole forward pass
  each batch), and with `pooling=tokens` over layer 8 (every token a row; the pass stops after
  block 8), each the faster of two extractions: tokens per second through the model, the ratio to
  the plain pass, peak device memory,
  and the time spent writing shards against the disk's sequential write of as many bytes (16 MiB
  writes, fsynced) in the same folder, plain and with each write's writeback started at once as the
  store writer does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from probe_lab.extract import plan
from probe_lab.extract.forward import padded_batch
from probe_lab.extract.run import extract
from probe_lab.settings.extract import ExtractConfig, ExtractDatasetSettings, ExtractModelSettings, ModelDtype, Pooling
from probe_lab.store.writer import start_writeback


def build_model(folder: Path, args: argparse.Namespace) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {
        token: index for index, token in enumerate(["[PAD]", "[UNK]", "[BOS]"] + [f"w{i}" for i in range(args.vocab)])
    }
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
    PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]"
    ).save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.blocks,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=4096,
        pad_token_id=0,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, args.dtype))
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, {args.dtype}")
    model.save_pretrained(folder)


def write_texts(path: Path, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    with open(path, "w") as file:
        file.write("text,label\n")
        for _ in range(args.texts):
            words = rng.integers(0, args.vocab, int(rng.integers(args.min_words, args.max_words + 1)))
            file.write(" ".join(f"w{w}" for w in words) + f",{int(rng.integers(0, 2))}\n")


def plain_forward(folder: Path, texts: Path, args: argparse.Namespace) -> tuple[float, int, int]:
    """(seconds, tokens, peak bytes) of the model's forward pass over the extraction's batches."""
    from transformers import AutoModel, AutoTokenizer

    from probe_lab.extract.texts import read_texts

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=getattr(torch, args.dtype)).to(device()).eval()
    ids = [
        row[: args.max_length]
        for row in tokenizer(read_texts(ExtractDatasetSettings(path=str(texts))).texts)["input_ids"]
    ]
    lengths = np.array([len(row) for row in ids])
    accepts = {"input_ids", "attention_mask"}
    batches = [
        padded_batch([ids[i] for i in batch], 0, ExtractModelSettings.padding_side, accepts)[0]
        for chunk in plan.chunks(np.ones(len(ids), dtype=np.int64), len(ids))
        for batch in plan.batches(lengths[chunk.first : chunk.stop], args.batch_tokens, 256)
    ]
    with torch.inference_mode():
        model(**{k: v[:1].to(device()) for k, v in batches[0].items()}, use_cache=False)  # warm-up
        synchronize()
        reset_peak()
        passes = []
        for _ in range(2):  # the first pass meets every batch shape cold (kernel selection): the second is timed
            start = time.perf_counter()
            for inputs in batches:
                model(**{k: v.to(device()) for k, v in inputs.items()}, use_cache=False)
            synchronize()
            passes.append(time.perf_counter() - start)
        seconds = min(passes)
    peak = peak_bytes()
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return seconds, int(lengths.sum()), peak


def sequential_write(folder: Path, nbytes: int, *, kick: bool) -> float:
    """Seconds to write `nbytes` in 16 MiB writes and fsync them; with `kick`, each write's writeback
    started as the store writer starts it (`start_writeback`), so the disk works from the first write."""
    block = os.urandom(16 * 2**20)
    path = folder / "sequential.bin"
    start = time.perf_counter()
    with open(path, "wb") as file:
        for index in range(max(1, nbytes // len(block))):
            file.write(block)
            if kick:
                start_writeback(file, index * len(block), len(block))
        file.flush()
        os.fsync(file.fileno())
    seconds = time.perf_counter() - start
    path.unlink()
    return seconds


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_bytes() -> int:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--min-words", type=int, default=32)
    parser.add_argument("--max-words", type=int, default=512)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-tokens", type=int, default=65536)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="probe_lab-extraction-"))
    folder, texts = scratch / "model", scratch / "texts.csv"
    build_model(folder, args)
    write_texts(texts, args)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None

    seconds, tokens, peak = plain_forward(folder, texts, args)
    rate = tokens / seconds
    print(f"plain forward: {tokens} tokens in {seconds:.2f} s = {rate:,.0f} tokens/s, peak {peak / 2**30:.2f} GiB")
    middle = args.blocks // 2
    runs = {
        f"last, layers 4, {middle}, {3 * args.blocks // 4}, last": {
            "layers": [4, middle, 3 * args.blocks // 4, -1],
            "pooling": Pooling.last,
        },
        f"tokens, layer {middle}": {"layers": [middle], "pooling": Pooling.tokens},
    }
    print(
        "| run | tokens/s | × plain | peak GiB | × plain | GB written | write s | × sequential write "
        "| × sequential write, writeback started per write | total s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, chosen in runs.items():
        reset_peak()
        settings = ExtractConfig(
            model=ExtractModelSettings(path=str(folder), dtype=ModelDtype(args.dtype), device=str(device())),
            dataset=ExtractDatasetSettings(path=str(texts), max_length=args.max_length),
            output=str(scratch / f"store-{chosen['pooling'].value}"),
            batch_tokens=args.batch_tokens,
            progress=False,
            overwrite=True,
            **chosen,
        )
        # The faster of two extractions, as for the plain pass: the first meets its batch shapes cold.
        summary = min((extract(settings) for _ in range(2)), key=lambda run: run.loop_seconds)
        extraction_peak = peak_bytes()
        floor = sequential_write(scratch, int(summary.gigabytes * 1e9), kick=False)
        kicked = sequential_write(scratch, int(summary.gigabytes * 1e9), kick=True)
        speed = summary.tokens / summary.loop_seconds
        memory = extraction_peak / peak if peak else float("nan")  # no device memory to count on a CPU
        print(
            f"| {name} | {speed:,.0f} | {speed / rate:.3f} | {extraction_peak / 2**30:.2f} | {memory:.3f} | "
            f"{summary.gigabytes:.2f} | {summary.write_seconds:.2f} | {summary.write_seconds / floor:.2f} | "
            f"{summary.write_seconds / kicked:.2f} | "
            f"{summary.seconds:.1f} |"
        )
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
