"""Extraction from Hugging Face models into a store: values, pooling, padding, resume, bad input, CLI.

Every model is a tiny random-initialised one built here (tests/tiny_models.py): nothing is downloaded.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import run_here
from tiny_models import save_model, write_texts

from probe_lab.errors import ProbeLabError
from probe_lab.extract import journal as extraction_journal
from probe_lab.extract import plan
from probe_lab.extract import run as extraction
from probe_lab.extract.capture import LayerCapture, find_blocks, pooling, resolve_layers
from probe_lab.extract.forward import ChunkBuffers
from probe_lab.extract.texts import read_texts
from probe_lab.settings.extract import (
    ExtractConfig,
    ExtractDatasetSettings,
    ExtractModelSettings,
    ModelDtype,
    PaddingSide,
    Pooling,
)
from probe_lab.store import ActivationStore
from probe_lab.store.manifest import shard_name


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: save_model(root / kind, kind) for kind in ("llama", "gpt2", "bert")}


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "texts.csv"
    write_texts(path, n=40)
    return path


def settings(model: Path, dataset: Path, output: Path, **values) -> ExtractConfig:
    model_values = {key: values.pop(key) for key in ("dtype", "padding_side") if key in values}
    dataset_values = {key: values.pop(key) for key in ("template", "max_length", "text_column") if key in values}
    return ExtractConfig(
        model=ExtractModelSettings(path=str(model), device="cpu", **{"dtype": ModelDtype.float32, **model_values}),
        dataset=ExtractDatasetSettings(path=str(dataset), **dataset_values),
        output=str(output),
        progress=False,
        **values,
    )


class ReferenceModels:
    """Hugging Face's own models and tokenizers, loaded once per folder, for the expected values."""

    loaded: ClassVar[dict[Path, tuple]] = {}

    @classmethod
    def hidden_states(cls, path: Path, text: str) -> tuple[torch.Tensor, ...]:
        """hidden_states of one text, unbatched, float32, with output_hidden_states=True."""
        from transformers import AutoModel, AutoTokenizer

        if path not in cls.loaded:
            cls.loaded[path] = (AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval())
        tokenizer, model = cls.loaded[path]
        with torch.no_grad():
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            return tuple(h[0] for h in model(ids, output_hidden_states=True).hidden_states)


@pytest.mark.parametrize(
    ("kind", "padding_side", "pooling"),
    [
        ("llama", PaddingSide.right, Pooling.last),
        ("llama", PaddingSide.left, Pooling.last),
        ("llama", PaddingSide.left, Pooling.tokens),
        ("llama", PaddingSide.right, Pooling.mean),
        ("gpt2", PaddingSide.right, Pooling.tokens),
        ("gpt2", PaddingSide.left, Pooling.mean),
        ("gpt2", PaddingSide.left, Pooling.last),
        ("bert", PaddingSide.right, Pooling.last),
        ("bert", PaddingSide.left, Pooling.tokens),
        ("bert", PaddingSide.right, Pooling.mean),
    ],
)
def test_extracted_rows_equal_hugging_face_hidden_states(models, texts, tmp_path, kind, padding_side, pooling) -> None:
    """Batched with texts of other lengths, padded on either side, each text's rows are those of its
    own unbatched forward pass: hidden_states[k] for k = 0 (embeddings), 1, and the last."""
    out = tmp_path / "store"
    summary = extraction.extract(
        settings(models[kind], texts, out, layers=[0, 1, -1], pooling=pooling, padding_side=padding_side)
    )
    store = ActivationStore.open(out)
    depth = 3 if kind == "llama" else 2
    assert summary.layers == [0, 1, depth] and store.layers == 3 and store.dtype == torch.float32
    assert store.provenance["layers"] == [0, 1, depth] and store.provenance["pooling"] == pooling.value
    store.scan()  # the checksums hold
    table, every = store.table(), np.arange(store.rows)
    rows = torch.stack([table.read(every, layer) for layer in range(3)], dim=1)
    samples = store.samples()
    written = read_texts(ExtractDatasetSettings(path=str(texts)))
    for index in (0, 7, 19, 39):
        expected = ReferenceModels.hidden_states(models[kind], written.texts[index])
        mine = rows[samples[:, 0] == index]
        for position, k in enumerate((0, 1, depth)):
            states = expected[k]
            want = {"last": states[-1:], "mean": states.mean(0, keepdim=True), "tokens": states}[pooling.value]
            torch.testing.assert_close(mine[:, position], want, atol=2e-5, rtol=1e-4)
    if pooling is Pooling.tokens:
        counts = np.bincount(samples[:, 0])
        assert all(np.array_equal(samples[samples[:, 0] == i, 1], np.arange(count)) for i, count in enumerate(counts))
    else:
        np.testing.assert_array_equal(samples, np.stack([np.arange(40), np.full(40, -1)], axis=1))
    np.testing.assert_array_equal(np.asarray(store.labels), written.labels[samples[:, 0]])


def test_the_forward_pass_stops_after_the_deepest_block_asked_for(models) -> None:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(models["llama"]).eval()
    blocks = find_blocks(model, 3)
    ran = []
    for index, block in enumerate(blocks):
        block.register_forward_hook(lambda *_, index=index: ran.append(index))
    ids = torch.tensor([[2, 10, 11, 12]])
    with LayerCapture(model, [0, 1], 3) as capture, torch.no_grad():
        taken = capture.run(lambda h: h[0], input_ids=ids, attention_mask=torch.ones_like(ids))
    assert ran == [0] and capture.stops_early  # hidden_states[1] is block 0's output: blocks 1 and 2 never ran
    expected = model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(taken[1], expected[1][0])


def test_layers_resolve_from_indices_fractions_and_all() -> None:
    assert resolve_layers([-1, 0, 0.5, 2], 4) == [0, 2, 4]
    assert resolve_layers("all", 2) == [0, 1, 2]
    with pytest.raises(ProbeLabError, match=r"layers: 5 is beyond the model's depth \(hidden_states 0..4"):
        resolve_layers([5], 4)
    with pytest.raises(ProbeLabError, match="layers: -6 is beyond"):
        resolve_layers([-6], 4)


def test_chunks_ramp_up_and_down_around_whole_texts() -> None:
    """The first chunk's pass and the last chunk's writing overlap nothing: both are one shard."""
    lengths = np.random.default_rng(0).integers(1, 40, 2000)  # 40,000 rows, shards of 1,000
    chunks = plan.chunks(lengths, 1000)
    shards = [-(-chunk.rows // 1000) for chunk in chunks]
    assert shards[:3] == [1, 2, plan.CHUNK_SHARDS] and shards[-2:] == [1, 1]
    assert max(shards) == plan.CHUNK_SHARDS and max(chunk.rows for chunk in chunks) <= plan.CHUNK_SHARDS * 1000
    assert [chunk.first for chunk in chunks[1:]] == [chunk.stop for chunk in chunks[:-1]]
    assert (chunks[0].first, chunks[-1].stop) == (0, 2000)
    assert [chunk.rows for chunk in chunks] == [int(lengths[c.first : c.stop].sum()) for c in chunks]
    long_text = plan.chunks(np.array([3, 50, 3]), 10)  # a text longer than a chunk is a chunk of its own
    assert [(c.first, c.stop, c.rows) for c in long_text] == [(0, 1, 3), (1, 2, 50), (2, 3, 3)]


def test_write_time_counts_overlapping_spans_once() -> None:
    assert extraction.covered_seconds([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0), (5.5, 5.7)]) == 4.0
    assert extraction.covered_seconds([]) == 0.0


def test_pooling_refuses_hidden_states_not_shaped_as_the_batch() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    hidden = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    assert torch.equal(pooling("tokens", mask)(hidden), hidden[mask.bool()])
    assert torch.equal(pooling("last", mask)(hidden), hidden[[0, 1], [1, 2]])
    for kind in ("last", "tokens", "mean"):
        with pytest.raises(ProbeLabError, match=r"hidden states of shape \(2, 5, 4\) for a batch of \(2, 3\)"):
            pooling(kind, mask)(torch.zeros(2, 5, 4))


def _interrupted(models, texts, output: Path, monkeypatch, *, shards: int = 1, **config) -> int:
    """An extraction into `output` stopped (KeyboardInterrupt) after `shards` journal writes of complete
    shards; returns how many shards the last journal lists."""
    journal = extraction_journal.write_journal
    writes = []

    def crash_after_the_shards(*args) -> None:
        journal(*args)
        writes.append(args)
        if len(writes) == shards + 1:  # the journal of the empty store, then one per complete chunk
            raise KeyboardInterrupt

    monkeypatch.setattr(extraction_journal, "write_journal", crash_after_the_shards)
    with pytest.raises(KeyboardInterrupt):
        extraction.extract(settings(models["gpt2"], texts, output, **config))
    monkeypatch.undo()
    return len(writes[-1][2])


def test_a_resumed_extraction_writes_the_store_an_uninterrupted_one_does(models, texts, tmp_path, monkeypatch) -> None:
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    config = {"layers": [1, -1], "pooling": Pooling.tokens, "shard_mb": 0.01}  # 80 rows a shard: several shards
    extraction.extract(settings(models["gpt2"], texts, whole, **config))
    journaled = _interrupted(models, texts, resumed, monkeypatch, shards=3, **config)  # three chunks' shards
    with pytest.raises(ProbeLabError, match=r"an unfinished extraction.*run the same extraction again to resume"):
        ActivationStore.open(resumed)
    (resumed / shard_name(journaled)).write_bytes(b"half a shard")  # as a killed process leaves it
    with pytest.raises(ProbeLabError, match="an unfinished extraction with another pooling"):
        extraction.extract(settings(models["gpt2"], texts, resumed, **(config | {"pooling": Pooling.mean})))
    summary = extraction.extract(settings(models["gpt2"], texts, resumed, **config))
    assert summary.resumed_shards == journaled > 3
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in whole.iterdir())
    for file in whole.iterdir():
        assert (resumed / file.name).read_bytes() == file.read_bytes(), file.name
    assert not (resumed / "extraction.json").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"text_column": "sentence"}, r"no column 'sentence' \(dataset.text_column\); it has 'text', 'label'"),
        ({"layers": [9]}, r"layers: 9 is beyond the model's depth"),
        ({"model": "missing-model"}, r"model.path \(missing-model\): not a folder, and not in the local .*nothing is"),
        ({"rows": ["the movie,2"]}, r"row 0: label '2' in 'label' is not 0 or 1"),
        ({"rows": []}, r"holds no rows"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(models, tmp_path, change, message) -> None:
    dataset = tmp_path / "texts.csv"
    rows = change.pop("rows", ["the movie was good,1", "bad,0"])
    dataset.write_text("\n".join(["text,label", *rows]) + "\n")
    model = models["llama"] if "model" not in change else Path(change.pop("model"))
    with pytest.raises(ProbeLabError, match=message):
        extraction.extract(settings(model, dataset, tmp_path / "store", **change))
    assert not (tmp_path / "store").exists()


def test_texts_read_alike_from_csv_jsonl_and_parquet(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts, labels = write_texts(tmp_path / "texts.csv", n=12)
    with open(tmp_path / "texts.jsonl", "w") as file:
        for text, label in zip(texts, labels.tolist(), strict=True):
            file.write(json.dumps({"text": text, "label": label, "source": "x"}) + "\n")
    pq.write_table(pa.table({"text": texts, "label": labels}), tmp_path / "texts.parquet")
    for suffix in ("csv", "jsonl", "parquet"):
        read = read_texts(ExtractDatasetSettings(path=str(tmp_path / f"texts.{suffix}"), template="Review: {text}"))
        assert read.texts == [f"Review: {text}" for text in texts]
        np.testing.assert_array_equal(read.labels, labels)


def test_the_chat_template_and_max_length_shape_the_tokens(models, texts, tmp_path) -> None:
    plain = extraction.extract(settings(models["llama"], texts, tmp_path / "plain", pooling=Pooling.tokens))
    chat = extraction.extract(
        settings(models["llama"], texts, tmp_path / "chat", pooling=Pooling.tokens, template="chat", max_length=8)
    )
    assert chat.truncated > 0 and plain.truncated == 0
    store = ActivationStore.open(tmp_path / "chat")
    assert store.provenance["dataset"]["template"] == "chat" and store.provenance["truncated"] == chat.truncated
    assert np.bincount(store.samples()[:, 0]).max() == 8


def run_cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", module, *args, f"hydra.run.dir={cwd / 'run'}"]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300)


def test_extract_then_train_from_the_command_line(models, tmp_path) -> None:
    texts = tmp_path / "texts.csv"
    write_texts(texts, n=120)
    store = tmp_path / "store"
    done = run_cli(
        "probe_lab.extract",
        f"model.path={models['llama']}",
        f"dataset.path={texts}",
        "layers=[1,-1]",
        f"output={store}",
        "model.dtype=bfloat16",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "extracted 120 texts" in done.stdout and "× layers [1,3] × 32 bfloat16" in done.stdout
    assert ActivationStore.open(store).dtype == torch.bfloat16
    with pytest.raises(ProbeLabError, match=r"already exists and is not empty"):  # a complete store stays
        extraction.extract(settings(models["llama"], texts, store))
    assert ActivationStore.open(store).rows == 120
    trained = run_cli("probe_lab", "data=store", f"data.path={store}", "data.layer=1", "backend=sklearn", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["auroc"] > 0.5


def test_a_template_without_its_placeholder_is_refused_from_the_command_line(models, texts, tmp_path) -> None:
    done = run_cli(
        "probe_lab.extract",
        f"model.path={models['llama']}",
        f"dataset.path={texts}",
        "dataset.template='Review: text'",
        f"output={tmp_path / 'store'}",
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == "probe_lab.extract: error: dataset.template must hold the placeholder {text} (or be chat)"
    )
    assert not (tmp_path / "store").exists()


def test_a_token_store_splits_by_sample_and_reports_test_metrics_per_sample(models, tmp_path) -> None:
    from probe_lab.data.splits import split_dataset

    texts = tmp_path / "texts.csv"
    write_texts(texts, n=80)
    store_path = tmp_path / "tokens"
    extraction.extract(settings(models["gpt2"], texts, store_path, layers=[1], pooling=Pooling.tokens))
    dataset = ActivationStore.open(store_path).dataset()
    assert dataset.groups is not None and len(dataset) > 80
    splits = split_dataset(dataset, 0.2, 0.2, seed=42)  # the training run's default seed
    sides = [set(part.groups.tolist()) for part in (splits.train, splits.val, splits.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])  # no sample on two sides
    assert [len(side) for side in sides] == [48, 16, 16]  # the fractions count samples
    assert sum(len(part) for part in (splits.train, splits.val, splits.test)) == len(dataset)
    # the training run in this process (`run_here`): its metrics and printed summary
    trained = run_here("data=store", f"data.path={store_path}", "backend=sklearn", run_dir=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_per_sample"]["samples"] == 16 and metrics["n_test"] == int(
        np.isin(dataset.groups, sorted(sides[2])).sum()
    )
    assert set(metrics["test_per_sample"]) == {"samples", "max", "mean"}
    assert "16 test samples: AUROC" in trained.stdout


def test_rows_of_one_sample_with_two_labels_are_refused() -> None:
    from probe_lab.data.dataset import ActivationDataset
    from probe_lab.data.splits import split_dataset

    dataset = ActivationDataset(np.zeros((40, 2), dtype=np.float32), np.tile([0, 1], 20), name="rows")
    dataset.groups = np.repeat(np.arange(20), 2)
    with pytest.raises(ProbeLabError, match="rows: sample 0 has rows of both labels"):
        split_dataset(dataset, 0.2, 0.2, seed=0)


def test_extract_help_describes_each_setting_and_follows_the_overrides() -> None:
    from probe_lab.cli_help import extract_help

    text = extract_help(["pooling=tokens", "layers=[2,-1]"])
    for setting in ("model.path=???", "dataset.path=???", "output=???", "pooling=tokens", "layers=[2,-1]"):
        assert re.search(rf"^  {re.escape(setting)}\s+\S", text, re.MULTILINE), setting
    assert re.search(r"^  model\.padding_side=right\s+right \| left", text, re.MULTILINE), text
    assert "python -m probe_lab data=store data.path=STORE" in text and "hydra" not in text.split("Hydra:")[0]


def test_a_model_spread_by_accelerate_gives_the_same_rows(models, texts, tmp_path) -> None:
    """model.device_map=auto (accelerate places the blocks: on the CPU here, on a GPU where there is one)
    gives the rows of the model on the CPU (to float32 rounding: a GPU sums in another order)."""
    plain = tmp_path / "plain"
    extraction.extract(settings(models["llama"], texts, plain, layers=[1, -1]))
    spread = settings(models["llama"], texts, tmp_path / "spread", layers=[1, -1])
    spread.model.device_map = "auto"
    extraction.extract(spread)
    first, second = ActivationStore.open(plain), ActivationStore.open(tmp_path / "spread")
    rows = np.arange(first.rows)
    for layer in range(2):
        torch.testing.assert_close(
            second.table().read(rows, layer), first.table().read(rows, layer), atol=2e-5, rtol=1e-4
        )
    assert second.provenance["model"] == first.provenance["model"]


def test_resuming_is_refused_for_another_model_or_dataset_and_overwrite_starts_afresh(
    models, texts, tmp_path, monkeypatch
) -> None:
    config = {"layers": [1], "pooling": Pooling.tokens, "shard_mb": 0.01}
    output = tmp_path / "store"
    _interrupted(models, texts, output, monkeypatch, **config)
    with pytest.raises(ProbeLabError, match=r"an unfinished extraction with another model; .*overwrite=true"):
        extraction.extract(settings(models["llama"], texts, output, **config))
    edited = tmp_path / "edited.csv"
    edited.write_text(texts.read_text().replace("good", "fine", 1))
    with pytest.raises(ProbeLabError, match=r"an unfinished extraction with another dataset; "):
        extraction.extract(settings(models["gpt2"], edited, output, **config))

    # overwrite=true: the unfinished store of the other settings is replaced by a complete one of these
    summary = extraction.extract(settings(models["llama"], edited, output, overwrite=True, **config))
    assert summary.resumed_shards == 0
    whole = tmp_path / "whole"
    extraction.extract(settings(models["llama"], edited, whole, **config))
    assert sorted(p.name for p in output.iterdir()) == sorted(p.name for p in whole.iterdir())
    for file in whole.iterdir():
        if file.name != "manifest.json":  # it names its own output folder
            assert (output / file.name).read_bytes() == file.read_bytes(), file.name
    assert ActivationStore.open(output).rows == ActivationStore.open(whole).rows


def test_a_hub_name_in_the_local_cache_is_found_and_its_commit_recorded(models, tmp_path, monkeypatch) -> None:
    """model.path=org/name reads the snapshot Hugging Face's cache holds (nothing is downloaded)."""
    import shutil

    import huggingface_hub.constants

    from probe_lab.extract.model import locate

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    shutil.copytree(models["llama"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = locate(ExtractModelSettings(path="tiny-org/tiny-llama", device="cpu"))
    assert source.commit == commit and source.folder == repo / "snapshots" / commit
    with pytest.raises(ProbeLabError, match=r"not in the local Hugging Face cache \(nothing is downloaded\)"):
        locate(ExtractModelSettings(path="tiny-org/not-cached", device="cpu"))


def test_the_progress_counts_texts_and_shows_tokens_per_second(models, texts, tmp_path, capsys) -> None:
    import dataclasses

    config = dataclasses.replace(settings(models["gpt2"], texts, tmp_path / "store", layers=[1]), progress=True)
    extraction.extract(config)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("extract:")]
    assert lines, "no progress line"
    assert re.fullmatch(r"extract: 40 of 40 text \(100%\), [\d,]+ tok/s  \(\d+ s\)", lines[-1]), lines[-1]


def test_chunk_buffers_made_ahead_are_taken_in_turn_and_remade_for_other_rows() -> None:
    buffers = ChunkBuffers(8, pinned=False)
    buffers.prepare((2, 3), torch.bfloat16, chunks=5)
    assert buffers.preparing is not None
    prepared = [buffer.data_ptr() for buffer in buffers.preparing.result()]
    first, second, third = (buffers.take((n, 2, 3), torch.bfloat16) for n in (8, 5, 2))
    assert (first.shape, second.shape, third.shape) == ((8, 2, 3), (5, 2, 3), (2, 2, 3))
    assert [first.data_ptr(), second.data_ptr()] == prepared  # the buffers made ahead, in turn
    assert third.data_ptr() == first.data_ptr()  # the first buffer again, not a new one
    other = buffers.take((4, 2, 3), torch.float32)  # rows of another dtype: a buffer of their own
    assert other.dtype == torch.float32 and other.data_ptr() not in prepared


def test_chunk_buffers_for_one_chunk_make_one_and_report_a_failure_when_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    one = ChunkBuffers(8, pinned=False)
    one.prepare((3,), torch.float16, chunks=1)
    assert one.preparing is not None
    assert [slot is None for slot in one.preparing.result()] == [False, True]
    failing = ChunkBuffers(8, pinned=True)

    def refused(tensor: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no page-locked memory")

    monkeypatch.setattr("probe_lab.extract.forward.page_locked", refused)
    failing.prepare((3,), torch.float16, chunks=2)
    with pytest.raises(RuntimeError, match="no page-locked memory"):
        failing.take((8, 3), torch.float16)
