"""Host tensors page-locked where they are (`cudaHostRegister`), by the threads that filled them.

`torch.empty(..., pin_memory=True)` allocates through PyTorch's caching host allocator, which
page-locks each new allocation with `cudaHostAlloc`, one at a time and an order of magnitude slower
than registering memory already written (BENCHMARKS.md, "Holding a split in pinned host memory").
So a split held in host memory for a whole fit is read into ordinary memory and registered in place.
PyTorch can allocate this way too (`PYTORCH_CUDA_ALLOC_CONF=pinned_use_cuda_host_register:True`), but
only for the whole process and only when set before CUDA starts, so a library cannot choose it for the
one split that needs it.

`page_locked(tensor)` registers a contiguous CPU tensor's memory with the CUDA driver and ties the
registration to the tensor: it is undone when the tensor is freed. Where registration fails (a
driver or system limit), the tensor is copied into memory from the caching host allocator instead.
"""

from __future__ import annotations

import functools
import logging
import weakref

import torch

log = logging.getLogger(__name__)


def page_locked(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` (contiguous, on the CPU) page-locked in place, or a pinned copy of it where the CUDA
    driver refuses to register its memory. The result's host-to-device copies run asynchronously."""
    if not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise ValueError("page_locked needs a contiguous CPU tensor")
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes == 0:
        return tensor
    cudart = torch.cuda.cudart()
    pointer = tensor.data_ptr()
    status = cudart.cudaHostRegister(pointer, nbytes, 0)
    if status != cudart.cudaError.success:
        _warn_once(status)
        return tensor.pin_memory()
    # The registration ends before the tensor's memory can be freed: the finalizer runs when the tensor
    # object dies, while it still holds its storage. Not at interpreter exit, when CUDA may be gone.
    weakref.finalize(tensor, _unregister, pointer).atexit = False
    return tensor


@functools.cache
def _warn_once(status: object) -> None:
    """One line per process and kind of refusal, however many blocks are refused."""
    log.warning("could not page-lock host memory in place (%s): pinning copies instead", status)


def _unregister(pointer: int) -> None:
    """Undo a registration once no copy queued out of the memory can still be running."""
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaHostUnregister(pointer)
