"""The schema of `python -m probe_lab.extract` (conf/extract.yaml, whose comments describe each key):
which model, which texts, which layers, how token positions become rows, and where the store goes.

Checked when the config becomes these objects; what needs the model (its depth, its tokenizer's chat
template) is checked once the model's config is read (`probe_lab.extract.layers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from omegaconf import MISSING

from probe_lab.errors import ProbeLabError

TEXT_PLACEHOLDER = "{text}"
CHAT_TEMPLATE = "chat"  # dataset.template=chat: the tokenizer's own chat template


class Pooling(StrEnum):
    last = "last"  # the last real (non-padding) token of each text: one row per text
    mean = "mean"  # the mean over a text's real tokens: one row per text
    tokens = "tokens"  # every real token: one row per token, recording its text and position


class ModelDtype(StrEnum):
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class PaddingSide(StrEnum):
    right = "right"  # real tokens keep positions 0..n-1 and, in a causal model, never see the padding
    left = "left"  # positions are passed to the model counted from each text's first real token


@dataclass
class ExtractModelSettings:
    path: str = MISSING
    revision: str | None = None
    dtype: ModelDtype = ModelDtype.bfloat16
    device: str = "auto"
    device_map: str | None = None
    padding_side: PaddingSide = PaddingSide.right


@dataclass
class ExtractDatasetSettings:
    path: str = MISSING
    text_column: str = "text"
    label_column: str = "label"
    template: str | None = None
    max_length: int = 512

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ProbeLabError(f"dataset.max_length must be positive, got {self.max_length}")
        if self.template is not None and self.template != CHAT_TEMPLATE and TEXT_PLACEHOLDER not in self.template:
            raise ProbeLabError(
                f"dataset.template must hold the placeholder {TEXT_PLACEHOLDER} (or be {CHAT_TEMPLATE})"
            )


@dataclass
class ExtractConfig:
    """`python -m probe_lab.extract model.path=M dataset.path=D layers=[...] pooling=last output=STORE`."""

    model: ExtractModelSettings = field(default_factory=ExtractModelSettings)
    dataset: ExtractDatasetSettings = field(default_factory=ExtractDatasetSettings)
    layers: Any = field(default_factory=lambda: [-1])  # a list of indices or fractions, or "all"
    pooling: Pooling = Pooling.last
    output: str = MISSING
    batch_tokens: int = 16384
    max_batch_size: int = 256
    shard_mb: float = 256.0
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_tokens < 1 or self.max_batch_size < 1:
            raise ProbeLabError("batch_tokens and max_batch_size must be positive")
        if self.shard_mb <= 0:
            raise ProbeLabError(f"shard_mb must be positive, got {self.shard_mb}")
