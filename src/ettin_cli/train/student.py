"""The Ettin reranker student: a 5-module Sentence Transformers CrossEncoder on a ModernBERT backbone.

The head is the recipe's (../shared/RECIPE.md): a plain `AutoModel` Transformer (not
AutoModelForSequenceClassification, whose pooler reads padded positions and so cannot take packed inputs),
CLS pooling, Dense(H, H, no bias, GELU), LayerNorm(H), Dense(H, 1, bias, identity) writing the `scores`
output that CrossEncoder reads. The CrossEncoder activation is identity, so `predict` returns the raw logit
on the teacher's scale, and the MSE loss compares raw numbers with raw teacher logits.

Because the backbone is loaded with the `feature-extraction` task, Sentence Transformers' Transformer module
packs text batches without padding (`DataCollatorWithFlattening` + flash-attn varlen kernels) whenever Flash
Attention 2 is active; Pooling then reads CLS rows straight from the packed sequence (`cu_seq_lens_q`). The
MSE loss calls `model.preprocess`, so training takes that unpadded path too. `check_unpadding` says (loudly)
when FA2 was asked for but the packed path is not active. On CPU everything runs in fp32 with SDPA.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ettin_cli.core.console import logger
from ettin_cli.core.errors import EttinError
from ettin_cli.core.hardware import Precision, is_flash_attention_2, torch_dtype
from ettin_cli.core.sources import resolve_source
from ettin_cli.label.fit import folder_kind

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

STUDENT_MODULES = ("Transformer", "Pooling", "Dense", "LayerNorm", "Dense")
# CLS is the recipe's pooling (the Ettin encoders were pre-trained for it); `mean` is for a backbone trained with
# mean pooling (all-MiniLM-L6-v2, the demo's), whose CLS row carries little of the pair's meaning.
POOLING_MODES = ("cls", "mean")
# `default`: the head as Sentence Transformers initialises it (the release). `target-mean`: the output layer
# starts at the targets' mean with small weights, so the first steps learn the order of the scores instead of
# removing a random offset (what a short run on a small batch otherwise spends its budget on).
HEAD_INITS = ("default", "target-mean")
# `model.head`: `auto` keeps the head of a cross-encoder base and builds a new one on a bare encoder; `keep`
# requires a cross-encoder base; `new` builds a new head on the base's encoder even when it has one of its own.
HEAD_CHOICES = ("auto", "keep", "new")
# `model.head_activation`: what a kept head whose activation is not identity (a sigmoid) gets: `refuse` (one line)
# or `identity` (replaced, so `predict` returns the raw logit the MSE loss compares with the teacher's).
HEAD_ACTIVATIONS = ("refuse", "identity")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_base_model(base_model: str) -> str:
    """Refuse a base model that is neither an existing local folder nor shaped like a Hub id (`owner/name`)."""
    path = Path(base_model).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise EttinError(f"--base-model {base_model}: not a model folder (no config.json in it)")
        return str(path)
    if base_model.startswith((".", "/", "~")) or not _HUB_ID.match(base_model):
        raise EttinError(f"--base-model {base_model}: the path does not exist (and it is not a Hub id owner/name)")
    return base_model


def local_model_files(base_model: str) -> Path:
    """The folder holding `base_model`'s config files: the folder itself, or the Hub id's snapshot (only its JSON
    files are fetched; offline, the local Hub cache answers, as `core.sources.resolve_source` decides)."""

    source = resolve_source(base_model, option="--base-model", offline_hint="--base-model DIR (a local copy)")
    if source.is_local:
        return Path(source.path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source.repo_id, allow_patterns=["*.json"]))
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: one line either way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EttinError(f"--base-model {base_model}: cannot read its config files ({first[:200]})") from None


def is_cross_encoder(folder: Path) -> bool:
    """Whether a model folder holds a scoring head of its own, from its files alone: a Sentence Transformers
    CrossEncoder config, a modules.json whose last module writes `scores`, or a transformers
    *ForSequenceClassification config (the head of the released cross-encoders of earlier versions)."""
    import json

    kind, _ = folder_kind(folder)
    if kind == "cross-encoder":
        return True
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        last = json.loads((folder / modules[-1]["path"] / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False
    return last.get("module_output_name") == "scores"


def head_plan(base_model: str, head: str) -> tuple[str, Path]:
    """`keep` (continue from the base's own head) or `new` (a new head on its encoder), and the local folder.

    `auto` keeps the head of a cross-encoder base; `keep` on a bare encoder is refused (there is no head to keep).
    """
    if head not in HEAD_CHOICES:
        raise EttinError(f"model.head must be one of {', '.join(HEAD_CHOICES)}, got {head!r}")
    folder = local_model_files(base_model)
    crossencoder = is_cross_encoder(folder)
    if head == "keep" and not crossencoder:
        raise EttinError(f"--base-model {base_model}: model.head is keep, but it is a bare encoder without a "
                         "scoring head (set model.head: auto or new)")
    return ("keep" if crossencoder and head != "new" else "new"), folder


def load_cross_encoder_base(base_model: str, *, max_length: int | None, precision: Precision,
                            head_activation: str = "refuse", device: str = "cpu") -> CrossEncoder:
    """A cross-encoder base as the student: the whole model, its trained head included, to continue training.

    Its head must fit the recipe's target: one output (a raw score), and an identity activation; a sigmoid (or
    any other) activation would squash `predict` against raw-logit targets, so it is refused in one line unless
    `head_activation` is `identity` (then replaced). `max_length=None` keeps the model's own.
    """
    import torch
    from sentence_transformers import CrossEncoder

    if head_activation not in HEAD_ACTIVATIONS:
        raise EttinError(f"model.head_activation must be one of {', '.join(HEAD_ACTIVATIONS)}, "
                         f"got {head_activation!r}")
    if max_length is not None and max_length < 8:
        raise EttinError(f"--max-length must be at least 8 tokens, got {max_length}")
    try:
        model = CrossEncoder(base_model, device=device, max_length=max_length,
                             model_kwargs=model_kwargs_for(precision, for_training=True))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EttinError(f"--base-model {base_model}: could not load it as a cross-encoder ({first})") from None
    outputs = getattr(model, "num_labels", 1)
    if outputs != 1:
        raise EttinError(f"--base-model {base_model}: its head has {outputs} outputs; the recipe trains one raw "
                         "score (set model.head: new for a new head on its encoder)")
    activation = model.activation_fn
    if not isinstance(activation, torch.nn.Identity):
        name = type(activation).__name__
        if head_activation != "identity":
            raise EttinError(f"--base-model {base_model}: its activation is {name}, which would squash the "
                             "teacher's raw-logit targets; set model.head_activation: identity in the recipe to "
                             "train its raw logits")
        logger.info(f"head: activation {name} replaced by Identity (model.head_activation: identity)")
        model.activation_fn = torch.nn.Identity()
    return model


def model_kwargs_for(precision: Precision, *, for_training: bool) -> dict[str, Any]:
    """`model_kwargs` for loading the backbone with `precision`.

    Training keeps fp32 master weights and gets bf16 from autocast (the trainer's `bf16=True`); Flash Attention
    casts q/k/v to the autocast dtype, so packed FA2 works with fp32 weights. Inference loads weights in the
    target dtype directly.
    """
    import torch

    dtype = torch.float32 if for_training else torch_dtype(precision.dtype)
    return {"dtype": dtype, "attn_implementation": precision.attn}


def build_student(
    base_model: str,
    *,
    max_length: int | None,
    precision: Precision,
    seed: int = 12,
    device: str = "cpu",
    for_training: bool = True,
    pooling: str = "cls",
) -> CrossEncoder:
    """A fresh student: the backbone from `base_model` plus a newly initialised (seeded) 4-module head.

    `max_length=None` keeps the backbone's maximum (Sentence Transformers caps the tokenizer's `model_max_length`
    at the config's `max_position_embeddings`), as the release did; a number cuts longer pairs.
    """
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import LayerNorm, Pooling

    base_model = check_base_model(base_model)
    if pooling not in POOLING_MODES:
        raise EttinError(f"model.pooling must be one of {', '.join(POOLING_MODES)}, got {pooling!r}")
    if max_length is not None and max_length < 8:
        raise EttinError(f"--max-length must be at least 8 tokens, got {max_length}")
    try:
        transformer = Transformer(
            base_model,
            transformer_task="feature-extraction",
            model_kwargs=model_kwargs_for(precision, for_training=for_training),
            processor_kwargs={"model_max_length": max_length} if max_length is not None else {},
        )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EttinError(f"--base-model {base_model}: could not load it ({first})") from None
    hidden = transformer.get_embedding_dimension()
    # The head is initialised from the run's seed, so two runs with the same seed start from the same weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = [
            Pooling(hidden, pooling_mode=pooling),
            Dense(hidden, hidden, bias=False, activation_function=torch.nn.GELU()),
            LayerNorm(hidden),
            Dense(hidden, 1, bias=True, activation_function=torch.nn.Identity(), module_output_name="scores"),
        ]
    model = CrossEncoder(modules=[transformer, *head], activation_fn=torch.nn.Identity(), device=device)
    if not for_training and precision.dtype != "float32":
        model.to(torch_dtype_of(precision))
    check_student(model)
    return model


def init_head(model: CrossEncoder, mode: str, targets: Any, *, seed: int = 12) -> dict[str, float] | None:
    """Initialise the output Dense(H, 1) per `mode` from the training targets; return what was set (or None).

    `target-mean` sets the bias to the targets' mean and draws the weights so that the initial scores spread
    about 10 % of the targets' standard deviation: the start predicts the mean (MSE = the targets' variance)
    and the gradient goes to ordering the pairs from the first step.
    """
    import torch

    if mode not in HEAD_INITS:
        raise EttinError(f"model.head_init must be one of {', '.join(HEAD_INITS)}, got {mode!r}")
    if mode == "default":
        return None
    values = torch.as_tensor(targets, dtype=torch.float64)
    if values.numel() == 0:
        raise EttinError("model.head_init target-mean: no training targets to take the mean of")
    mean, std = float(values.mean()), float(values.std()) if values.numel() > 1 else 1.0
    out = model[4].linear
    # LayerNorm feeds unit-variance features, so weights of std s give scores of std about s * sqrt(H).
    weight_std = 0.1 * max(std, 1e-6) / out.in_features ** 0.5
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out.weight.copy_(torch.randn(out.weight.shape, generator=generator, dtype=torch.float64) * weight_std)
        out.bias.fill_(mean)
    return {"bias": mean, "weight_std": weight_std, "targets_std": std}


def torch_dtype_of(precision: Precision):
    """The torch dtype of `precision` (helper kept here so callers need not import hardware and torch)."""

    return torch_dtype(precision.dtype)


def load_student(path: str | Path, *, precision: Precision | None = None, device: str | None = None,
                 max_length: int | None = None) -> CrossEncoder:
    """Load a saved student (a `final/` folder or a checkpoint) in `precision` for inference."""
    from sentence_transformers import CrossEncoder

    path = Path(path)
    if not (path / "modules.json").is_file():
        raise EttinError(f"{path}: not a Sentence Transformers model folder (no modules.json)")
    kwargs: dict[str, Any] = {}
    if precision is not None:
        kwargs["model_kwargs"] = model_kwargs_for(precision, for_training=False)
    model = CrossEncoder(str(path), device=device, max_length=max_length, **kwargs)
    check_student(model)
    return model


def check_student(model: CrossEncoder) -> None:
    """Assert the recipe's structure: 5 modules in order, identity activation, one `scores` output."""
    import torch

    names = tuple(type(m).__name__ for m in model)
    if names != STUDENT_MODULES:
        raise EttinError(f"not an Ettin reranker student: modules are {', '.join(names)}, "
                         f"expected {', '.join(STUDENT_MODULES)}")
    if getattr(model[1], "pooling_mode", None) not in POOLING_MODES:
        raise EttinError(f"not an Ettin reranker student: pooling is {model[1].pooling_mode!r}, "
                         f"expected one of {', '.join(POOLING_MODES)}")
    if model[4].module_output_name != "scores" or model[4].out_features != 1:
        raise EttinError("not an Ettin reranker student: the last Dense must write one `scores` value")
    hidden = model[2].in_features
    if (model[2].out_features != hidden or model[2].linear.bias is not None
            or not isinstance(model[2].activation_function, torch.nn.GELU) or model[4].in_features != hidden
            or tuple(model[3].norm.normalized_shape) != (hidden,)):
        raise EttinError("not an Ettin reranker student: the head must be Dense(H, H, no bias, GELU), "
                         "LayerNorm(H), Dense(H, 1)")
    if not isinstance(model.activation_fn, torch.nn.Identity):
        raise EttinError(f"not an Ettin reranker student: activation is {type(model.activation_fn).__name__}, "
                         "expected Identity (raw logits)")


def unpadding_active(model: CrossEncoder) -> bool:
    """True when the backbone runs Flash Attention 2 on packed (unpadded) text batches."""
    transformer = model[0]

    return (is_flash_attention_2(getattr(transformer.config, "_attn_implementation", None))
            and bool(getattr(transformer, "can_flatten_inputs", False)))


def check_unpadding(model: CrossEncoder, precision: Precision) -> bool:
    """Warn loudly when FA2 + unpadded inputs were asked for but are not what the model runs; return the state.

    Padded FA2 is slower than bf16 + SDPA at every size (RECIPE.md), so a silent fallback would waste most of
    a GPU run; the warning names the actual attention and the likely fix.
    """
    active = unpadding_active(model)
    if precision.unpadded and not active:
        actual = getattr(model[0].config, "_attn_implementation", None)
        logger.warning(
            "!!! Flash Attention 2 with unpadded inputs was requested but is NOT active "
            f"(attention: {actual}, packed inputs: {bool(getattr(model[0], 'can_flatten_inputs', False))}). "
            "Training will run with padded batches and be several times slower. Check `ettin env`, "
            "install a Flash Attention 2 backend (`make install TORCH=cuda` fetches the prebuilt `kernels` one) "
            "and use an Ampere-or-newer GPU. !!!")
    elif active:
        logger.info("attention: Flash Attention 2 on unpadded (packed) inputs")
    return active


def count_parameters(model: CrossEncoder) -> int:
    """All parameters, backbone and head (the recipe's 'params (with head)')."""
    return sum(p.numel() for p in model.parameters())
