"""The model and tokenizer an extraction runs, from a local folder or the local Hugging Face cache.

Nothing is downloaded: `model.path` is a folder, or a hub name whose snapshot is already in the cache
(`huggingface_hub.snapshot_download(local_files_only=True)`). The model is loaded as its base
`AutoModel` (the text stack without a language-model head, for decoders and encoders alike), in
`model.dtype`, on `model.device` or spread by accelerate with `model.device_map=auto`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from probe_lab.errors import ProbeLabError
from probe_lab.settings.extract import ExtractModelSettings

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from, as the store's provenance records it."""

    folder: Path
    name: str  # model.path as given
    revision: str | None
    commit: str | None  # the cached snapshot's commit hash, when it came from the hub cache
    config_sha256: str
    weights: dict[str, int]  # weight file → bytes

    def identity(self) -> dict[str, Any]:
        return {
            "path": self.name,
            "revision": self.revision,
            "commit": self.commit,
            "config_sha256": self.config_sha256,
            "weights": self.weights,
        }


def locate(settings: ExtractModelSettings) -> ModelSource:
    """The model's folder and identity, or one line saying why there is none (nothing is downloaded)."""
    given = Path(settings.path).expanduser()
    commit = None
    if given.is_dir():
        folder = given
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

        try:
            folder = Path(snapshot_download(settings.path, revision=settings.revision, local_files_only=True))
        except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
            raise ProbeLabError(
                f"model.path ({settings.path}): not a folder, and not in the local Hugging Face cache "
                "(nothing is downloaded)"
            ) from None
        commit = folder.name
    config = folder / "config.json"
    if not config.is_file():
        raise ProbeLabError(f"model.path ({settings.path}): {folder} has no config.json; not a Hugging Face model")
    weights = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.suffix in WEIGHT_SUFFIXES}
    digest = hashlib.sha256(config.read_bytes()).hexdigest()
    return ModelSource(folder, settings.path, settings.revision, commit, digest, weights)


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ProbeLabError(f"model.path ({source.name}): no usable tokenizer ({str(err).splitlines()[0]})") from None


def load_config(source: ModelSource) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ProbeLabError(f"model.path ({source.name}): unreadable config ({str(err).splitlines()[0]})") from None


def depth(config: Any) -> int:
    """L: the number of blocks of the model's text stack."""
    text = _text_config(config)
    depth = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    if not isinstance(depth, int) or depth < 1:
        raise ProbeLabError("model.path: its config names no number of layers (num_hidden_layers)")
    return depth


def hidden_size(config: Any) -> int:
    """D: the width of the model's hidden states."""
    text = _text_config(config)
    size = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    if not isinstance(size, int):
        raise ProbeLabError("model.path: its config names no hidden size")
    return size


def _text_config(config: Any) -> Any:
    """The config of the text stack (a multimodal model's holds one per part)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


@dataclass(frozen=True)
class ModelPlacement:
    """Where the model runs, decided once from model.device and model.device_map: on `device`, or
    spread by accelerate's `device_map` (then `device` is None)."""

    device: torch.device | None
    device_map: str | None

    @classmethod
    def of(cls, settings: ExtractModelSettings) -> ModelPlacement:
        if settings.device_map:
            return cls(None, settings.device_map)
        return cls(device(settings.device), None)

    @property
    def on_gpu(self) -> bool:
        """Whether the model runs on a GPU (in part, with a device_map): its rows then reach the host
        by asynchronous copies, into page-locked memory."""
        if self.device_map:
            return torch.cuda.is_available()
        assert self.device is not None
        return self.device.type == "cuda"


def load_model(source: ModelSource, settings: ExtractModelSettings, placement: ModelPlacement) -> torch.nn.Module:
    """The base model in eval mode, in `settings.dtype`, at `placement`."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    dtype = getattr(torch, settings.dtype.value)
    spread: dict[str, Any] = {"device_map": placement.device_map} if placement.device_map else {}
    # A base model loaded from a checkpoint with a head reports the head's weights as unused: expected.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(source.folder, dtype=dtype, local_files_only=True, **spread)
    except (OSError, ValueError) as err:
        raise ProbeLabError(
            f"model.path ({source.name}): could not load the model ({str(err).splitlines()[0]})"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    if placement.device is not None:
        model.to(placement.device)
    return model.eval()


def device(name: str) -> torch.device:
    """model.device: auto is the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise ProbeLabError(f"model.device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ProbeLabError(f"model.device={name}: no CUDA device is available")
    return chosen


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a batch's token ids go: the device of the input embeddings (the first block with device_map)."""
    return model.get_input_embeddings().weight.device
