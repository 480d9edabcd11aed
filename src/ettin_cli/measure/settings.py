"""The precision/attention/padding settings a measurement sweeps, and which of them this machine can run.

`ettin bench` times each setting and `ettin doctor` checks each one's numbers against a slow reference; both ask
`plan_settings` which settings to run, so they agree on what the hardware supports and why a setting is skipped
(the reason `hardware.resolve_precision` gives: no GPU, no flash-attn, pre-Ampere GPU). `sync` is the one device
barrier a timed region ends with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ettin_cli.core.errors import EttinError
from ettin_cli.core.hardware import ATTNS, DTYPES, Precision, resolve_precision

PADDINGS = ("auto", "padded", "unpadded", "both")
_SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_SHORT_ATTN = {"sdpa": "SDPA", "eager": "eager", "flash_attention_2": "FA2"}


@dataclass(frozen=True)
class Setting:
    """One precision/attention/padding combination to measure."""

    dtype: str
    attn: str
    unpadded: bool

    @property
    def label(self) -> str:
        """The bench table's name: `fp32+SDPA`, `bf16+FA2 unpadded`."""
        text = f"{_SHORT_DTYPE.get(self.dtype, self.dtype)}+{_SHORT_ATTN.get(self.attn, self.attn)}"
        if self.attn == "flash_attention_2":
            text += " unpadded" if self.unpadded else " padded"
        return text

    @property
    def name(self) -> str:
        """The doctor's name (and its `--only` value): `fp32+sdpa`, `bf16+fa2`."""
        return f"{_SHORT_DTYPE.get(self.dtype, self.dtype)}+{_SHORT_ATTN.get(self.attn, self.attn).lower()}"

    @property
    def precision(self) -> Precision:
        return Precision(self.dtype, self.attn)


# The published precision/attention ablation, in table order.
ABLATION = (
    Setting("float32", "sdpa", False),
    Setting("bfloat16", "sdpa", False),
    Setting("bfloat16", "flash_attention_2", False),
    Setting("bfloat16", "flash_attention_2", True),
)


def plan_settings(device: str, dtypes: Sequence[str] = ("auto",), attns: Sequence[str] = ("auto",),
                  padding: str = "auto", ablation: bool = False, *, settings: Sequence[Setting] | None = None,
                  capability: tuple[int, int] | None = None,
                  fa2_available: bool | None = None) -> list[tuple[Setting, str | None]]:
    """The settings to run on `device`, each with `None` or the reason it is skipped.

    `settings` lists them explicitly (`ablation` gives the four published ones); otherwise every (dtype, attn)
    pair, with `padding` `auto` (unpadded exactly when Flash Attention 2 runs), `padded`, `unpadded` or `both`.
    `capability` and `fa2_available` stand in for the GPU facts, so the plan is testable without a GPU.
    """
    if padding not in PADDINGS:
        raise EttinError(f"--padding must be one of {', '.join(PADDINGS)}, got '{padding}'")
    # A typo is an error; only what the hardware cannot run becomes a skipped row.
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise EttinError(f"--dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    for attn in attns:
        if attn not in ATTNS:
            raise EttinError(f"--attn must be one of {', '.join(ATTNS)}, got '{attn}'")
    if ablation:
        settings = ABLATION
    if settings is not None:
        wanted = [(s.dtype, s.attn, "unpadded" if s.unpadded else "padded") for s in settings]
    else:
        wanted = [(d, a, padding) for d in (dtypes or ["auto"]) for a in (attns or ["auto"])]
    plan: list[tuple[Setting, str | None]] = []
    for dtype, attn, pad in wanted:
        try:
            precision = resolve_precision(device, dtype, attn, capability=capability, fa2_available=fa2_available)
        except EttinError as exc:
            shown_dtype = dtype if dtype != "auto" else "float32"
            shown_attn = attn if attn != "auto" else "sdpa"
            options = [pad == "unpadded"] if pad != "both" else [False, True]
            for unpadded in options:
                plan.append((Setting(shown_dtype, shown_attn, unpadded), str(exc)))
            continue
        fa2 = precision.attn == "flash_attention_2"
        options = {"auto": [fa2], "padded": [False], "unpadded": [True], "both": [False, True]}[pad]
        for unpadded in options:
            setting = Setting(precision.dtype, precision.attn, unpadded)
            reason = None
            if unpadded and not fa2:
                if pad == "both":
                    continue  # `both` only adds the unpadded variant where it exists
                reason = "unpadded inputs need --attn flash_attention_2 (SDPA and eager run padded batches)"
            plan.append((setting, reason))
    # Same setting asked twice (e.g. auto and its explicit value): keep the first.
    seen: set[Setting] = set()
    unique = []
    for setting, reason in plan:
        if setting not in seen:
            seen.add(setting)
            unique.append((setting, reason))
    return unique


def sync(device: str) -> None:
    """Wait for the device's queued work, so a timer read after it covers the work (no-op on CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
