"""Planning the push of a trained model folder: which files go, which card goes with them, and a smoke test.

The folder's own README.md is the card unless `--replace-card`; without one (or with `--replace-card`) the card
is rendered from `ettin_training.json` (`TrainingRecord.render_card`), with `model_id` set to the repo id so
the usage snippet names the published model. The model is loaded as a `CrossEncoder` and scores a smoke pair
before anything is sent, so a broken folder fails in seconds with nothing uploaded.
"""

from __future__ import annotations

from pathlib import Path

from ettin_cli import __version__
from ettin_cli.core.console import logger
from ettin_cli.core.errors import EttinError
from ettin_cli.publish.export_card import with_export_section
from ettin_cli.publish.plan import CARD_NAME, PlannedFile, UploadPlan, card_metadata, validate_repo_id
from ettin_cli.publish.training_record import TRAINING_RECORD, TrainingRecord

TRAINING_ARGS = "training_args.bin"
SMOKE_PAIR = ("what does a reranker do?", "A reranker scores each query and document pair for relevance.")


def local_files(folder: Path) -> list[Path]:
    """Every regular file under `folder`, sorted, without hidden files/folders (.git, .cache, temp files)."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if path.is_file():
            out.append(path)
    return out


def check_model(model_dir: Path) -> int:
    """Load `model_dir` as a CrossEncoder (local files only) and score a smoke pair; return its parameter count.

    The published models are single-score rerankers, so the smoke pair must give exactly one finite score.
    """
    import numpy as np

    try:
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(str(model_dir), device="cpu", local_files_only=True)
        scores = np.asarray(model.predict([SMOKE_PAIR], show_progress_bar=False, convert_to_numpy=True))
    except EttinError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        raise EttinError(f"{model_dir}: does not load as a sentence-transformers CrossEncoder ({reason[:300]})") \
            from None
    if scores.size != 1:
        raise EttinError(f"{model_dir}: a reranker must give one score per pair, the smoke pair gave shape "
                         f"{tuple(scores.shape)}")
    if not np.isfinite(scores).all():
        raise EttinError(f"{model_dir}: the smoke pair scored {float(scores.reshape(-1)[0])} (not finite)")
    return int(sum(p.numel() for p in model.parameters()))


def _render_card(record: TrainingRecord, repo_id: str | None, folder: Path) -> str:
    try:
        return record.render_card(repo_id)
    except EttinError as exc:
        raise EttinError(f"{folder / TRAINING_RECORD}: {exc}") from None


def plan_model_push(model_dir: str | Path, repo_id: str, *, replace_card: bool = False,
                    commit_message: str | None = None, check: bool = True,
                    include_training_args: bool = False) -> UploadPlan:
    """Validate a trained model folder and list what its push uploads (the card as described above)."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise EttinError(f"{folder}: not a directory (expected a trained model folder, e.g. OUT/final)")
    repo_id = validate_repo_id(repo_id)
    files = local_files(folder)
    if not files:
        raise EttinError(f"{folder}: the folder is empty")
    record = TrainingRecord.read(folder)

    existing = folder / CARD_NAME
    own_card = existing.read_bytes() if existing.is_file() else None
    # `ettin train` writes the card before the repo id is known (its usage snippet names a local path) and keeps
    # its hash in the record: an untouched copy is refreshed with the repo id, an edited one is the user's.
    untouched = own_card is not None and record is not None and record.wrote_card(own_card)
    if own_card is not None and not replace_card and not untouched:
        try:
            card = own_card.decode("utf-8")
        except UnicodeDecodeError:
            raise EttinError(f"{existing}: not valid UTF-8 text") from None
        note = "the folder's own card, kept (use --replace-card to regenerate it)"
    else:
        if record is None:
            raise EttinError(f"{folder / TRAINING_RECORD}: not found; it is needed to write the model card "
                             "(push the output of `ettin train`, or put a README.md in the folder)")
        card = _render_card(record, repo_id, folder)
        if own_card is None:
            note = "generated from ettin_training.json"
        elif replace_card:
            note = "regenerated from ettin_training.json, replacing the folder's README.md"
        else:
            note = "the card `ettin train` wrote, with the repo id filled in"
    # `ettin export` files (onnx/, openvino/) go up with the model; the card lists them with their parity.
    with_exports = with_export_section(card, folder, repo_id)
    if with_exports != card:
        card, note = with_exports, f"{note}; exports section from onnx/ and openvino/ parity.json"
    card_metadata(card, str(existing))
    # The model check comes last: it is the slow one (imports torch, loads the weights).
    parameters = None
    if check:
        parameters = check_model(folder)
        logger.info(f"{folder}: loads as a CrossEncoder ({parameters:,} parameters) and scores a smoke pair")

    # training_args.bin is a pickle of the trainer's arguments (local paths, the run's settings): useless to
    # users of the model and unsafe to unpickle, so it stays home unless asked for.
    skipped = [p for p in files if p.name == TRAINING_ARGS and not include_training_args]
    if skipped:
        logger.info(f"{folder}: not uploading {TRAINING_ARGS} (pass --include-training-args to upload it)")
    planned = [PlannedFile.local(p.relative_to(folder).as_posix(), p)
               for p in files if p != existing and p not in skipped]
    planned.append(PlannedFile.card(card, note=note))
    planned.sort(key=lambda f: f.path_in_repo)
    size = record.size if record is not None else None
    message = commit_message or (f"Upload Ettin reranker {size} with ettin-cli {__version__}" if size
                                 else f"Upload reranker with ettin-cli {__version__}")
    facts = {"model_dir": str(folder), "parameters": parameters, "size": size}
    return UploadPlan(repo_id, "model", planned, card, note, message, facts)
