"""`ettin doctor`: prove, in about a minute and offline, that the fast paths this machine would use are right.

A long GPU run trusts three shortcuts: the teacher's fast path (only the last hidden state dotted with the
difference of two lm_head rows, length-sorted batches, packed with Flash Attention 2), the student's unpadded
(packed) batches, and mixed-precision training. Each is checked here against the slow, obviously-correct
computation on tiny random models built in a temp folder (nothing is downloaded):

- a tiny Qwen2 causal LM with a byte-level BPE tokenizer in the mxbai-rerank-v2 layout (the teacher), loaded
  through `label.teacher.load_teacher` exactly as `ettin score` loads the real one;
- a tiny ModernBERT backbone with a WordPiece tokenizer, made into the recipe's student by
  `train.student.build_student` exactly as `ettin train` does.

For every precision/attention the machine supports (fp32 + SDPA, bf16 + SDPA, bf16 + FA2) it checks: teacher
fast path vs the naive full forward (fp32, padded, full vocabulary); student batch (padded, or packed under FA2,
with proof that no padding position was processed) vs each pair alone in fp32; one optimizer step lowers the
MSE to the teacher; under torchrun, an all_reduce across ranks; and the pairs/s of each path. A setting the
machine cannot run is a `skip` with the reason.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ettin_cli.core.errors import EttinError
from ettin_cli.core.hardware import (
    FA2_KERNEL_REPO,
    Precision,
    fa2_backend,
    fa2_description,
    is_flash_attention_2,
    resolve_device,
)
from ettin_cli.io.beir import load_beir
from ettin_cli.label.teacher import load_teacher
from ettin_cli.measure.settings import Setting, plan_settings, sync
from ettin_cli.measure.tiny_models import build_tiny_backbone, build_tiny_teacher

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

STATUSES = ("pass", "fail", "skip")
# The doctor's settings (`--only` takes their names): bench's ablation without FA2 on padded batches, which
# checks nothing the padded SDPA row and the packed FA2 row do not.
SETTINGS = (Setting("float32", "sdpa", False), Setting("bfloat16", "sdpa", False),
            Setting("bfloat16", "flash_attention_2", True))
# Largest allowed |fast - reference|, as a share of the largest |reference| score. fp32 differs
# only by summation order; bf16 keeps 8 mantissa bits, so a few 1e-2 over a forward pass is rounding, while a
# wrong head row, a wrong last-token index or a padding leak moves scores by their own size (~100%).
TOLERANCE = {"float32": 1e-4, "bfloat16": 6e-2}


class StudentBuilder(Protocol):
    """`train.student.build_student`, handed in by the command: the doctor checks the student `ettin train`
    builds, and `measure/` sits below `train/`, so it is given the builder rather than importing it."""

    def __call__(self, base_model: str, *, max_length: int, precision: Precision, seed: int, device: str,
                 for_training: bool) -> CrossEncoder: ...


class StudentFactory(Protocol):
    """The tiny student on this run's backbone and device, at a precision, for inference or training."""
    def __call__(self, precision: Precision, *, for_training: bool) -> CrossEncoder: ...


@dataclass
class Check:
    """One row of the report: `status` is pass, fail or skip; `figure` the number that decided it."""

    name: str
    status: str
    figure: str = ""
    detail: str = ""
    device: str = ""

    def as_json(self) -> dict[str, str]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------
# Tiny models and pairs (offline)
# ---------------------------------------------------------------------------------------------------------


def doctor_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` (query, document) pairs of real text from the demo collection shipped in the package.

    Document lengths vary a lot, which is what makes padding (and so a padding bug) visible.
    """
    data = load_beir(Path(__file__).resolve().parents[1] / "demo_data")
    rng = random.Random(seed)
    queries, docs = list(data.queries.values()), list(data.corpus.values())
    pairs = []
    for _ in range(n):
        doc = rng.choice(docs)
        words = doc.split()
        pairs.append((rng.choice(queries), " ".join(words[: rng.randint(4, max(5, len(words)))])))
    return pairs


def _texts(pairs: Sequence[tuple[str, str]]) -> list[str]:
    return [t for pair in pairs for t in pair]


# ---------------------------------------------------------------------------------------------------------
# What this machine can run
# ---------------------------------------------------------------------------------------------------------


def _plain(reason: str | None) -> str:
    """"--attn flash_attention_2 needs a CUDA GPU; ..." -> "needs a CUDA GPU; ..." (a row names its setting)."""
    return re.sub(r"^--\w+ \S+?:? ", "", reason or "")


def _max_rel_diff(got, ref) -> tuple[float, float]:
    """(max |got - ref|, the scale the tolerance is a share of: max |ref|)."""
    import numpy as np

    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(got - ref).max()), max(1e-6, float(np.abs(ref).max()))


def _compare(got: Any, reference: Any, precision: Precision, what: str) -> tuple[float, float, list[str]]:
    """(max |got - reference|, the tolerance, [the problem] when it is exceeded, else [])."""
    diff, scale = _max_rel_diff(got, reference)
    tol = TOLERANCE[precision.dtype] * scale
    return diff, tol, [f"{what} by {diff:.3g} (tolerance {tol:.3g})"] if diff > tol else []


# ---------------------------------------------------------------------------------------------------------
# Teacher
# ---------------------------------------------------------------------------------------------------------


def naive_teacher_scores(path: Path, sequences: Sequence[Sequence[int]], device: str) -> Any:
    """The reference: full causal-LM forward in fp32, left-padded with an attention mask, whole vocabulary,
    `logit("1") - logit("0")` at the last position. Slow and plainly right."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    yes = tokenizer("1", add_special_tokens=False)["input_ids"][0]
    no = tokenizer("0", add_special_tokens=False)["input_ids"][0]
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="sdpa")
    model.to(device).eval()
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, width - len(seq):] = torch.tensor(list(seq))
        mask[i, width - len(seq):] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                       use_cache=False).logits[:, -1, :].float()
    return (logits[:, yes] - logits[:, no]).cpu().numpy().astype(np.float32)


def check_teacher(path: Path, pairs: Sequence[tuple[str, str]], device: str, label: str,
                  precision: Precision) -> tuple[list[Check], Any]:
    """Teacher fast path (as `ettin score` runs it) vs the naive forward; returns the checks and the reference."""
    queries, docs = [q for q, _ in pairs], [d for _, d in pairs]
    teacher = load_teacher(str(path), "mxbai-v2", device=device, dtype=precision.dtype, attn=precision.attn,
                           max_length=512)
    teacher.score(queries[:4], docs[:4])  # warm-up (kernels, allocator) before timing
    before = (teacher.stats.tokens, teacher.stats.padding_tokens)
    sync(device)
    start = time.perf_counter()
    fast = teacher.score(queries, docs)
    sync(device)
    fast_s = time.perf_counter() - start
    tokens, padding = teacher.stats.tokens - before[0], teacher.stats.padding_tokens - before[1]
    sequences = teacher.encode_pairs(queries, docs)[0]
    start = time.perf_counter()
    reference = naive_teacher_scores(path, sequences, device)
    sync(device)
    naive_s = time.perf_counter() - start
    diff, tol, problems = _compare(fast, reference, precision, "fast path differs from the naive forward")
    if precision.unpadded and padding:
        problems.append(f"packed (FA2) path processed {padding} padding positions, expected 0")
    name = f"teacher fast path = naive forward ({label})"
    check = Check(name, "fail" if problems else "pass", f"max|Δ| {diff:.2g} (tol {tol:.2g})",
                  "; ".join(problems) or f"{len(pairs)} pairs, {tokens} tokens, {padding} padding positions; "
                  f"tolerance {TOLERANCE[precision.dtype]:g} x max|reference score|", device)
    speed = Check(f"teacher pairs/s ({label})", "pass", f"{len(pairs) / fast_s:.0f} pairs/s",
                  f"fast path {len(pairs) / fast_s:.0f} pairs/s vs naive full forward (fp32, padded) "
                  f"{len(pairs) / naive_s:.0f} pairs/s", device)
    return [check, speed], reference


# ---------------------------------------------------------------------------------------------------------
# Student
# ---------------------------------------------------------------------------------------------------------


def student_unpadded(model) -> bool:
    """True when the student's backbone will pack text batches (FA2 varlen, either backend)."""
    return (is_flash_attention_2(getattr(model[0].config, "_attn_implementation", None))
            and bool(getattr(model[0], "can_flatten_inputs", False)))


class _TokenCounter:
    """Counts the input positions the backbone's embedding layer really processes (padding included)."""

    def __init__(self, model) -> None:
        self.positions = 0
        self._handle = model[0].model.get_input_embeddings().register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.positions += int(args[0].numel())

    def close(self) -> None:
        self._handle.remove()


def _student_scores(model, pairs: Sequence[tuple[str, str]], device: str):
    """The `scores` output for `pairs` in one batch, through `model.preprocess` as the MSE loss calls it."""
    import torch

    features = model.preprocess(list(pairs))
    features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
    return model(features)["scores"].reshape(-1)


def _real_tokens(model, pairs: Sequence[tuple[str, str]]) -> int:
    """Real tokens in `pairs`, each tokenized alone (so no padding can be in the count)."""
    return sum(len(model.tokenizer(q, d, truncation=True, max_length=model.max_length)["input_ids"])
               for q, d in pairs)


def check_student(student: StudentFactory, pairs: Sequence[tuple[str, str]], device: str, label: str,
                  precision: Precision, reference: Any) -> list[Check]:
    """Student batch (padded, or packed when FA2 is active) vs each pair alone in fp32 (`reference`)."""
    import torch

    model = student(precision, for_training=False)
    model.eval()
    unpadded = student_unpadded(model)
    real = _real_tokens(model, pairs)
    with torch.inference_mode():
        _student_scores(model, pairs[:4], device)  # warm-up
        counter = _TokenCounter(model)
        sync(device)
        start = time.perf_counter()
        try:
            got = _student_scores(model, pairs, device).float().cpu().numpy()
        finally:
            counter.close()
        sync(device)
        seconds = time.perf_counter() - start
    diff, tol, problems = _compare(got, reference, precision, "batched scores differ from each pair alone")
    if precision.unpadded and not unpadded:
        problems.append(f"FA2 was asked for but the student runs padded "
                        f"(attention {model[0].config._attn_implementation})")
    if unpadded and counter.positions != real:
        problems.append(f"reported unpadded, but the backbone processed {counter.positions} positions for "
                        f"{real} real tokens")
    path = "unpadded" if unpadded else "padded"
    padding = counter.positions - real
    checks = [
        Check(f"student {path} batch = pairs alone ({label})", "fail" if problems else "pass",
              f"max|Δ| {diff:.2g} (tol {tol:.2g})",
              "; ".join(problems) or f"tokens processed {counter.positions}, real {real} "
              f"({padding} padding); tolerance {TOLERANCE[precision.dtype]:g} x max|reference score|", device),
        Check(f"student pairs/s ({label})", "pass", f"{len(pairs) / seconds:.0f} pairs/s",
              f"{path} batch of {len(pairs)}, {padding / max(1, counter.positions):.0%} padding", device),
    ]
    return checks


def student_reference(student: StudentFactory, pairs: Sequence[tuple[str, str]], device: str) -> Any:
    """Each pair alone (no padding at all) through the fp32 + SDPA student: the ground truth for batching."""
    import numpy as np
    import torch

    model = student(Precision("float32", "sdpa"), for_training=False)
    model.eval()
    with torch.inference_mode():
        return np.array([float(_student_scores(model, [pair], device)[0]) for pair in pairs], dtype=np.float32)


def check_training_step(student: StudentFactory, pairs: Sequence[tuple[str, str]], targets: Any, device: str,
                        label: str, precision: Precision) -> Check:
    """One gradient step on the MSE to the teacher's scores, under the precision's autocast, must lower the MSE.

    The step is plain gradient descent sized (Polyak) to cut the loss by 20% to first order: lr = 0.2 * loss /
    |grad|^2. A right gradient then lowers the loss whatever its scale; a wrong one (a broken backward, a
    padding leak in the packed path, an overflow) does not. A fixed Adam learning rate could overshoot on a
    loss that is already small, and fail a healthy machine.
    """
    import torch

    model = student(precision, for_training=True)
    model.train()
    target = torch.as_tensor(targets, dtype=torch.float32, device=device)
    device_type = "cuda" if device.startswith("cuda") else "cpu"

    def autocast():
        if precision.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)

    with autocast():
        loss = torch.nn.functional.mse_loss(_student_scores(model, pairs, device).float(), target)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm2 = float(sum(g.float().pow(2).sum() for g in grads))
    before = float(loss.detach())
    finite = all(bool(torch.isfinite(g).all()) for g in grads) and norm2 == norm2
    if finite and norm2 > 0:
        lr = 0.2 * before / norm2
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(lr * p.grad)
    with torch.no_grad(), autocast():
        after = float(torch.nn.functional.mse_loss(_student_scores(model, pairs, device).float(), target))
    ok = finite and norm2 > 0 and after < before
    how = "fp32" if precision.dtype == "float32" else "bf16 autocast, fp32 weights"
    detail = f"MSE to the teacher {before:.4g} -> {after:.4g} after one gradient step ({how}; 20% expected)"
    if not finite:
        detail = "non-finite gradients; " + detail
    elif norm2 == 0:
        detail = "all gradients are zero; " + detail
    elif not ok:
        detail = "the step did not lower the loss; " + detail
    return Check(f"one training step lowers MSE ({label})", "pass" if ok else "fail", f"{before:.3g} -> {after:.3g}",
                 detail, device)


# ---------------------------------------------------------------------------------------------------------
# Ranks
# ---------------------------------------------------------------------------------------------------------


def check_all_reduce(device: str) -> Check:
    """Under torchrun: all ranks all_reduce (rank + 1); the sum must be world * (world + 1) / 2."""
    if not all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return Check("all_reduce across ranks", "skip", "", "not under torchrun (RANK/WORLD_SIZE unset)", device)
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    created = not dist.is_initialized()
    try:
        if created:
            if device.startswith("cuda"):
                torch.cuda.set_device(device)
            dist.init_process_group(backend, timeout=timedelta(seconds=60))
        rank, world = dist.get_rank(), dist.get_world_size()
        value = torch.tensor([float(rank + 1)], device=device)
        dist.all_reduce(value)
        got, expected = float(value.item()), world * (world + 1) / 2
    except Exception as exc:  # a hung or broken fabric is exactly what this check is for
        return Check("all_reduce across ranks", "fail", "", f"{backend}: {type(exc).__name__}: {exc}", device)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
    status = "pass" if got == expected else "fail"
    return Check("all_reduce across ranks", status, f"{got:g} (expected {expected:g})",
                 f"{backend}, world size {world}, rank {rank}", device)


# ---------------------------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------------------------


def _failed(name: str, device: str, exc: Exception) -> Check:
    """An exception inside a check is that check failing, with its one-line reason (never a traceback)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return Check(name, "fail", "", f"{type(exc).__name__}: {first}", device)


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """No download while the doctor runs: the Hub (and so the `kernels` FA2 binaries) is read from the cache only.

    `huggingface_hub` and `kernels` read `constants.HF_HUB_OFFLINE` at call time; the environment variables
    cover libraries that read them instead. Everything is restored afterwards.
    """
    from huggingface_hub import constants

    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    saved_env = {k: os.environ.get(k) for k in names}
    saved = constants.HF_HUB_OFFLINE
    os.environ.update({k: "1" for k in names})
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_doctor(build_student: StudentBuilder, device: str = "auto", *, num_pairs: int = 16,
               only: Sequence[str] | None = None, workdir: str | os.PathLike[str] | None = None) -> list[Check]:
    """Every check on `device` (auto: the GPU when visible), for the settings in `only` (default: all three).

    The tiny models are built in a temp folder (under `workdir` when given) and removed afterwards; the student
    is made from the tiny backbone by `build_student` (`train.student.build_student`, as `ettin train` does).
    """
    import numpy as np
    import torch

    if num_pairs < 8:
        raise EttinError(f"--pairs must be at least 8, got {num_pairs}")
    names = [s.name for s in SETTINGS]
    for name in only or ():
        if name not in names:
            raise EttinError(f"--only {name}: not a setting; choose from {', '.join(names)}")
    device = resolve_device(device)
    plan = [(s, reason) for s, reason in plan_settings(device, settings=SETTINGS) if not only or s.name in only]
    pairs = doctor_pairs(num_pairs)
    checks: list[Check] = []
    with offline(), tempfile.TemporaryDirectory(prefix="ettin-doctor-", dir=workdir) as tmp:
        with torch.random.fork_rng(devices=[]):
            teacher_path = build_tiny_teacher(Path(tmp) / "teacher", _texts(pairs))
            backbone = build_tiny_backbone(Path(tmp) / "backbone", _texts(pairs))

        def student(precision: Precision, *, for_training: bool) -> CrossEncoder:
            return build_student(str(backbone), max_length=256, precision=precision, seed=12, device=device,
                                 for_training=for_training)

        reference = student_reference(student, pairs, device)
        targets: Any = None  # the naive teacher's scores: what the training step distils
        for setting, reason in plan:
            label, precision = setting.name, setting.precision
            if reason is not None:
                for what in ("teacher fast path", "student batch", "one training step"):
                    checks.append(Check(f"{what} ({label})", "skip", "", _plain(reason), device))
                continue
            try:
                teacher_checks, teacher_reference = check_teacher(teacher_path, pairs, device, label, precision)
                targets = teacher_reference if targets is None else targets
            except Exception as exc:
                teacher_checks = [_failed(f"teacher fast path = naive forward ({label})", device, exc)]
            checks.extend(teacher_checks)
            if precision.unpadded and teacher_checks[0].status == "fail" and fa2_backend() == "kernels":
                teacher_checks[0].detail += (f" (with the `kernels` backend, FA2 loads {FA2_KERNEL_REPO} from the Hub "
                                             "cache, offline here: `make install TORCH=cuda` fetches it once)")
            try:
                checks.extend(check_student(student, pairs, device, label, precision, reference))
            except Exception as exc:
                checks.append(_failed(f"student batch = pairs alone ({label})", device, exc))
            step_targets = targets if targets is not None else np.zeros(len(pairs), dtype=np.float32)
            try:
                checks.append(check_training_step(student, pairs, step_targets, device, label, precision))
            except Exception as exc:
                checks.append(_failed(f"one training step lowers MSE ({label})", device, exc))
    checks.append(check_all_reduce(device))
    return checks


def failures(checks: Sequence[Check]) -> list[str]:
    """One line per failed check: `name: detail`."""
    return [f"{c.name}: {c.detail}" for c in checks if c.status == "fail"]


def report(checks: Sequence[Check]) -> dict[str, Any]:
    """The `--json` document: `{"fa2_backend": ..., "checks": [{name, status, figure, detail, device}]}`."""
    return {"fa2_backend": fa2_description(), "checks": [c.as_json() for c in checks]}


def print_table(checks: Sequence[Check]) -> None:
    """The report as a rich table (check, device, result, figure) on stdout, then the FA2 backend line."""
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    colour = {"pass": "green", "fail": "bold red", "skip": "yellow"}
    table = Table(title="ettin doctor")
    for header in ("check", "device", "result", "figure"):
        table.add_column(header, overflow="fold")
    for c in checks:
        result = c.status if c.status != "skip" else f"skip: {c.detail}"
        table.add_row(escape(c.name), escape(c.device), f"[{colour[c.status]}]{escape(result)}[/]", escape(c.figure))
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    counts = {s: sum(c.status == s for c in checks) for s in STATUSES}
    console.print(f"Flash Attention 2 backend: {escape(fa2_description())}", highlight=False)
    console.print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped", highlight=False)
