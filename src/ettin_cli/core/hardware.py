"""What the hardware supports, and the precision/attention choices that follow from it.

`auto` everywhere in the CLI means: bf16 + Flash Attention 2 (unpadded inputs) on a GPU that supports both
(compute capability >= 8.0 and an FA2 backend importable), otherwise fp32 + SDPA. The logic is plain
functions of (device, capability, package present), so it is tested on CPU with the GPU facts passed in.

Flash Attention 2 comes from one of two backends, and either counts as "FA2 available":

- `kernels` (the `gpu` extra, what the release recommends): prebuilt FA2 binaries from the Hub kernel repo
  `kernels-community/flash-attn2`, nothing compiled. transformers uses it by itself when a model is loaded
  with `attn_implementation="flash_attention_2"` and the `flash_attn` package is absent (the model's config then
  reads the kernel repo's name instead of `flash_attention_2`).
- `flash-attn` (the `gpu-compile` extra): the Dao-AILab package, compiled against the installed torch.
  transformers prefers it when both are present.
"""

from __future__ import annotations

import importlib.util
import platform
from dataclasses import dataclass

from ettin_cli.core.errors import EttinError

DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTNS = ("auto", "sdpa", "eager", "flash_attention_2")


# The Hub kernel transformers falls back to for `flash_attention_2` when `flash_attn` is not installed.
FA2_KERNEL_REPO = "kernels-community/flash-attn2"
FA2_BACKENDS = ("flash-attn", "kernels")


def fa2_backend() -> str | None:
    """Which Flash Attention 2 backend transformers will use: `flash-attn`, `kernels`, or None.

    Same order as transformers: the compiled `flash_attn` package wins; else the `kernels` package (prebuilt
    FA2 fetched from the Hub kernel repo on first use and cached). Neither means no FA2.
    """
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash-attn"
    if importlib.util.find_spec("kernels") is not None:
        return "kernels"
    return None


def flash_attn_installed() -> bool:
    """True when some Flash Attention 2 backend (`flash-attn` or `kernels`) is importable."""
    return fa2_backend() is not None


def is_flash_attention_2(attn_implementation: str | None) -> bool:
    """True for the attention a model reports when it runs FA2: `flash_attention_2` or the FA2 Hub kernel.

    With the `kernels` backend, a model loaded with `flash_attention_2` reports `kernels-community/flash-attn2`
    (possibly with a `:function` or `@revision` suffix) in `config._attn_implementation`.
    """
    if not attn_implementation:
        return False
    return attn_implementation == "flash_attention_2" or attn_implementation.split("@")[0].split(":")[0] \
        == FA2_KERNEL_REPO


def fa2_description() -> str:
    """One line for `ettin env` / `ettin doctor`: which FA2 backend is active, or how to get one."""
    import torch

    backend = fa2_backend()
    unused = "" if torch.cuda.is_available() else "; unused here: no CUDA GPU"
    if backend == "kernels":
        return f"kernels (prebuilt {FA2_KERNEL_REPO}, no compiling){unused}"
    if backend == "flash-attn":
        return f"flash-attn (compiled package){unused}"
    return "none (make install TORCH=cuda installs the prebuilt `kernels` backend)"


def resolve_device(device: str | None) -> str:
    """`None`/`auto` -> `cuda` when a GPU is visible (the local rank's under torchrun), else `cpu`."""
    import os

    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EttinError(f"--device {device}: no CUDA GPU is visible on this machine")
    return device


@dataclass(frozen=True)
class Precision:
    """The resolved dtype and attention implementation for a model on a device."""

    dtype: str
    attn: str

    @property
    def unpadded(self) -> bool:
        """Flash Attention 2 runs on packed (unpadded) sequences; SDPA/eager on padded batches."""
        return self.attn == "flash_attention_2"


def resolve_precision(
    device: str,
    dtype: str = "auto",
    attn: str = "auto",
    *,
    capability: tuple[int, int] | None = None,
    fa2_available: bool | None = None,
) -> Precision:
    """Pick dtype and attention for `device`; refuse combinations the hardware cannot run, with a reason."""
    if dtype not in DTYPES:
        raise EttinError(f"--dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    if attn not in ATTNS:
        raise EttinError(f"--attn must be one of {', '.join(ATTNS)}, got '{attn}'")
    on_gpu = device.startswith("cuda")
    if on_gpu and capability is None:
        import torch

        capability = torch.cuda.get_device_capability(device)
    if fa2_available is None:
        fa2_available = flash_attn_installed()
    ampere = bool(on_gpu and capability is not None and capability >= (8, 0))
    if dtype == "auto":
        dtype = "bfloat16" if ampere else "float32"
    if attn == "auto":
        attn = "flash_attention_2" if (ampere and fa2_available and dtype in ("bfloat16", "float16")) else "sdpa"
    if attn == "flash_attention_2":
        if not on_gpu:
            raise EttinError("--attn flash_attention_2 needs a CUDA GPU; use --attn sdpa on CPU")
        if not fa2_available:
            raise EttinError("--attn flash_attention_2: the flash_attn package is not installed, nor the "
                             "prebuilt `kernels` backend (make install TORCH=cuda, or pip install kernels)")
        if dtype not in ("bfloat16", "float16"):
            raise EttinError("--attn flash_attention_2 needs --dtype bfloat16 or float16")
    if dtype == "bfloat16" and on_gpu and not ampere:
        raise EttinError("--dtype bfloat16 needs a GPU with compute capability >= 8.0 (Ampere or newer)")
    return Precision(dtype=dtype, attn=attn)


def torch_dtype(name: str):
    """`"bfloat16"` -> `torch.bfloat16`."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def describe() -> dict[str, str]:
    """A flat summary of the machine for `ettin env` and for manifests."""
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": str(torch.cuda.is_available()),
        "gpu_count": str(torch.cuda.device_count()),
        "flash_attn_installed": str(flash_attn_installed()),
        "flash_attn_backend": fa2_description(),
        "cpu_threads": str(torch.get_num_threads()),
    }
    for i in range(torch.cuda.device_count()):
        cap = torch.cuda.get_device_capability(i)
        info[f"gpu{i}"] = f"{torch.cuda.get_device_name(i)} (sm_{cap[0]}{cap[1]})"
    device = resolve_device("auto")
    info["auto_device"] = device
    prec = resolve_precision(device)
    info["auto_precision"] = f"{prec.dtype} + {prec.attn}" + (" (unpadded)" if prec.unpadded else "")
    return info
