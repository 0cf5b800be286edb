"""Which layers to take from a model, and taking them: forward hooks on exactly those blocks.

Layer k is Hugging Face's `hidden_states[k]` of `output_hidden_states=True`: 0 is the input of the
first block (the embeddings), k in 1..L-1 the output of block k (the residual stream after it), and L
the model's `last_hidden_state` (after the final norm, where the model has one, as Hugging Face
defines it). Only the requested layers are kept, each pooled as soon as it is produced, and when the
deepest one requested is below L the forward pass stops right after its block.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from probe_lab.errors import ProbeLabError

Pool = Callable[[torch.Tensor], torch.Tensor]  # hidden states (B, T, D) → rows (k, D)


def resolve_layers(spec: Any, depth: int) -> list[int]:
    """`layers` as hidden_states indices in 0..depth, ascending and distinct: `all`, or a list of
    indices (negative ones count from the end, -1 = depth) and fractions of depth (0.5 = the middle)."""
    if isinstance(spec, str):
        if spec != "all":
            raise ProbeLabError(f"layers must be a list of indices or fractions, or all; got {spec!r}")
        return list(range(depth + 1))
    items = list(spec) if hasattr(spec, "__iter__") else [spec]  # a list, or Hydra's ListConfig
    if not items:
        raise ProbeLabError("layers is empty")
    chosen = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise ProbeLabError(f"layers: {item!r} is neither a layer index nor a fraction of depth")
        if isinstance(item, float):
            if not 0.0 <= item <= 1.0:
                raise ProbeLabError(f"layers: the fraction {item} is outside 0..1")
            index = round(item * depth)
        else:
            index = item + depth + 1 if item < 0 else item
        if not 0 <= index <= depth:
            raise ProbeLabError(
                f"layers: {item} is beyond the model's depth (hidden_states 0..{depth}, or -1..-{depth + 1})"
            )
        chosen.add(index)
    return sorted(chosen)


def find_blocks(model: nn.Module, depth: int) -> nn.ModuleList:
    """The model's list of `depth` blocks (the largest ModuleList of that length)."""
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == depth]
    if not candidates:
        raise ProbeLabError(f"model.path: found no list of {depth} blocks in the model to take layers from")
    return max(candidates, key=lambda blocks: sum(p.numel() for p in blocks.parameters()))


class _Enough(Exception):
    """Raised by the hook of the deepest layer needed: the rest of the forward pass is not run."""


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


class LayerCapture:
    """Forward hooks on `model` that pool hidden_states[k] for each k in `layers` with `pool`.

    `run(**inputs)` runs one forward pass and returns the pooled rows of each layer, in `layers` order.
    Use as a context manager (the hooks are removed on exit)."""

    def __init__(self, model: nn.Module, layers: Sequence[int], depth: int) -> None:
        self.model, self.layers, self.depth = model, list(layers), depth
        self.blocks = find_blocks(model, depth)
        self.pool: Pool | None = None
        self._taken: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []
        self.stops_early = max(self.layers) < depth
        self.accepts = set(inspect.signature(model.forward).parameters)

    def __enter__(self) -> LayerCapture:
        deepest = max(self.layers)
        for k in self.layers:
            if k == 0:
                self._handles.append(
                    self.blocks[0].register_forward_pre_hook(self._input_hook(deepest == 0), with_kwargs=True)
                )
            elif k < self.depth:
                self._handles.append(self.blocks[k - 1].register_forward_hook(self._output_hook(k, k == deepest)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def run(self, pool: Pool, **inputs: Any) -> list[torch.Tensor]:
        self.pool, self._taken = pool, {}
        try:
            extra = {"use_cache": False} if "use_cache" in self.accepts else {}
            output = self.model(**inputs, **extra)
        except _Enough:
            output = None
        if self.depth in self.layers:
            self._taken[self.depth] = pool(output.last_hidden_state)
        return [self._taken[k] for k in self.layers]

    def _input_hook(self, last: bool) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self._take(0, args[0] if args else kwargs["hidden_states"], last)

        return hook

    def _output_hook(self, k: int, last: bool) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            self._take(k, _hidden(output), last)

        return hook

    def _take(self, k: int, hidden: torch.Tensor, last: bool) -> None:
        assert self.pool is not None
        self._taken[k] = self.pool(hidden)
        if last:
            raise _Enough


def pooling(kind: str, mask: torch.Tensor) -> Pool:
    """A pool for one batch whose real tokens are `mask` (B, T) of 0/1 on the host, padding on either
    side: `last` — each text's last real token; `mean` — the mean over its real tokens (summed in
    float32); `tokens` — every real token, text by text, in position order.

    Which rows `last` and `tokens` take is worked out here, on the host, from the mask: picking them
    is then one gather on the device, which never waits for the device (a boolean mask would read
    its count back, stalling the host until the model got there). The indices and weights are moved
    to each device a layer comes from once per batch (a model spread over GPUs has several)."""
    real = mask.bool()
    if kind == "last":
        columns = real.shape[1] - 1 - real.flip(1).to(torch.uint8).argmax(1)
        rows = torch.arange(len(real)) * real.shape[1] + columns
    elif kind == "tokens":
        rows = real.reshape(-1).nonzero().squeeze(1)
    else:
        rows = real.to(torch.float32)[..., None]  # weights of the mean
    on_device: dict[torch.device, torch.Tensor] = {}

    def pool(hidden: torch.Tensor) -> torch.Tensor:
        if tuple(hidden.shape[:2]) != tuple(real.shape):
            raise ProbeLabError(
                f"model.path: a block gave hidden states of shape {tuple(hidden.shape)} for a batch of "
                f"{tuple(real.shape)} tokens; expected (batch, tokens, width)"
            )
        taken = on_device.get(hidden.device)
        if taken is None:
            taken = on_device[hidden.device] = rows.to(hidden.device, non_blocking=True)
        if kind == "mean":
            return ((hidden.float() * taken).sum(1) / taken.sum(1)).to(hidden.dtype)
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, taken)

    return pool
