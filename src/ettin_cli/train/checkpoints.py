"""The output folder and its checkpoints: which run a folder holds, and which checkpoint a rerun continues from.

`OUT/ettin_run.json` holds the config a folder was started with (`TrainConfig.to_dict()`); a rerun with another
config is refused, naming the settings that differ. Every checkpoint gets a completion record once the trainer
has fully written it; a rerun (or `--resume`) continues from the newest checkpoint whose record and files check
out, moving a partial or corrupt one aside.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from ettin_cli import __version__
from ettin_cli.core.console import logger
from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import write_json_atomic
from ettin_cli.io.shards import describe_difference
from ettin_cli.publish.training_record import TRAINING_RECORD
from ettin_cli.train.config import TrainConfig

RUN_FILE = "ettin_run.json"
CHECKPOINT_RECORD = "ettin_checkpoint.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def check_output_dir(config: TrainConfig) -> str:
    """Read-only: "new", "resume" or "done" for this config's output folder; refuse a folder holding another run.

    Nothing is written here, so a run refused later for bad input leaves the folder as it was.
    """

    out = Path(config.output_dir)
    run_file = out / RUN_FILE
    if run_file.is_file():
        try:
            saved = TrainConfig.from_dict(json.loads(run_file.read_text(encoding="utf-8"))["config"])
        except (OSError, ValueError, KeyError, TypeError, EttinError) as exc:
            raise EttinError(f"{run_file}: unreadable run record ({str(exc)[:200]}); use another --output-dir") \
                from None
        if saved.identity() != config.identity():
            raise EttinError(f"{out} holds a run with a different config "
                             f"({describe_difference(saved.identity(), config.identity())}); use another --output-dir")
        return "done" if (out / "final" / TRAINING_RECORD).is_file() else "resume"
    if config.resume:
        raise EttinError(f"--resume: {out} holds no ettin train run to resume")
    if out.exists() and not out.is_dir():
        raise EttinError(f"{out}: exists and is not a directory; use another --output-dir")
    if out.exists() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise EttinError(f"{out} is not empty and holds no ettin train run; use another --output-dir")
    return "new"


def bind_output_dir(config: TrainConfig) -> None:
    """Write `OUT/ettin_run.json`, which ties the folder to this run's config (main process, once inputs passed)."""
    run_file = Path(config.output_dir) / RUN_FILE
    if not run_file.is_file():
        write_json_atomic(run_file, {"ettin_cli": __version__, "created": time.time(), "config": config.to_dict()})


def _checkpoints(out: Path) -> list[tuple[int, Path]]:
    found = []
    if out.is_dir():
        for p in out.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
    return sorted(found)


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint `path` cannot be resumed from, or None when it is complete and structurally sound.

    Complete = the completion record written after the trainer finished the checkpoint exists, every file it
    lists has the recorded size, the trainer state names this step, the weights' safetensors headers parse and
    the torch zip archives (optimizer, scheduler, RNG) have their central directory.
    """
    import zipfile

    record_path = path / CHECKPOINT_RECORD
    if not record_path.is_file():
        return "no completion record (interrupted while saving)"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        files = dict(record["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable completion record"
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            return f"missing {name}"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {size} recorded"
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unreadable trainer_state.json"
    step = int(CHECKPOINT_RE.match(path.name).group(1))
    if state.get("global_step") != step:
        return f"trainer_state.json is at step {state.get('global_step')}, not {step}"
    from safetensors import safe_open

    for name in files:
        f = path / name
        try:
            if name.endswith(".safetensors"):
                with safe_open(str(f), framework="pt") as handle:
                    handle.keys()
            elif name.endswith((".pt", ".pth", ".bin")) and zipfile.is_zipfile(f):
                with zipfile.ZipFile(f) as archive:
                    archive.namelist()
            elif name.endswith((".pt", ".pth")):
                return f"{name} is not a torch archive"
        except Exception as exc:  # noqa: BLE001 - any parse failure means the file is corrupt
            return f"{name} is corrupt ({type(exc).__name__})"
    return None


def write_checkpoint_record(path: Path, step: int) -> None:
    """Record a finished checkpoint: its files and sizes (written last, atomically)."""
    files = {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))
             if p.is_file() and p.name != CHECKPOINT_RECORD and not p.name.startswith(".")}
    write_json_atomic(path / CHECKPOINT_RECORD, {"step": step, "files": files, "written": time.time()})


def latest_complete_checkpoint(out: Path, *, move_aside: bool = True) -> Path | None:
    """The newest checkpoint that can be resumed from; newer broken ones are renamed `*.corrupt` (kept, not deleted).

    The rename matters: the trainer would otherwise pick the broken folder as "last checkpoint" and its
    rotation would count it.
    """
    for _step, path in reversed(_checkpoints(out)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning(f"checkpoint {path.name} is not usable: {problem}; falling back to the previous one")
        if move_aside:
            target = path.with_name(f"{path.name}.corrupt")
            n = 1
            while target.exists():
                n += 1
                target = path.with_name(f"{path.name}.corrupt{n}")
            path.rename(target)
            logger.warning(f"moved {path.name} to {target.name} (delete it when you no longer need it)")
    return None

