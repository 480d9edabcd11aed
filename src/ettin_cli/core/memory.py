"""Out-of-memory handling shared by every step that runs a model outside training (score, eval, bench).

accelerate already knows what an out-of-memory error looks like on each backend (CUDA, ROCm, XPU, MPS, CPU
allocator, cuDNN's not-supported) and how to give the memory back (`gc` plus the device cache of whatever
accelerator is present); these two helpers only add torch's own `OutOfMemoryError` type and Python's
`MemoryError`, which accelerate matches by message alone.
"""

from __future__ import annotations


def is_oom(exc: BaseException) -> bool:
    """True when `exc` means the batch did not fit in device (or host) memory: worth a smaller retry."""
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    if isinstance(exc, Exception) and should_reduce_batch_size(exc):
        return True
    # A one-line EttinError raised after splitting down to one pair still says so (bench stops probing on it).
    return "out of memory" in str(exc).lower()


def release_device_memory(*objects: object) -> None:
    """Drop references the caller passes, collect garbage and empty the accelerator's cache."""
    from accelerate.utils.memory import release_memory

    release_memory(*objects)
