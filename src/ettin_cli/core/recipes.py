"""Recipes are data: `recipes/shared.yaml` holds what every size shares, `recipes/<size>.yaml` what differs.

No size-specific number lives in Python. A recipe is the shared file deep-merged with a size file (the size
file wins), or any YAML file given with `--recipe` (merged over the shared file the same way).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

from ettin_cli.core.errors import EttinError

SHARED_NAME = "shared"
# Files in recipes/ that are not student sizes.
NON_SIZE_RECIPES = {SHARED_NAME, "data", "demo", "export", "adapt"}
T = TypeVar("T")


def recipes_dir() -> Path:
    """The recipes folder: `$ETTIN_RECIPES`, else `recipes/` at the top of the checkout this package lives in."""
    env = os.environ.get("ETTIN_RECIPES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "recipes"


def available_sizes() -> list[str]:
    """Sizes that have a recipe file, smallest first (`17m`, `32m`, ..., `1b`)."""
    names = [p.stem for p in recipes_dir().glob("*.yaml") if p.stem not in NON_SIZE_RECIPES]
    return sorted(names, key=_size_key)


def _size_key(name: str) -> float:
    units = {"k": 1e3, "m": 1e6, "b": 1e9}
    try:
        return float(name[:-1]) * units[name[-1].lower()]
    except (KeyError, ValueError, IndexError):
        return float("inf")


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one YAML mapping, with a one-line error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise EttinError(f"recipe file not found: {path}")
    return parse_yaml_mapping(path.read_text(encoding="utf-8"), str(path))


def parse_yaml_mapping(text: str, where: str, *, first_line: int = 1, what: str = "YAML") -> dict[str, Any]:
    """One YAML mapping from `text` (empty: {}); a syntax error or a non-mapping is one line naming `where` and,
    for a syntax error, the line (`first_line` is the line of `where` that `text` starts on)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + first_line}" if mark is not None else ""
        raise EttinError(f"{where}{at}: invalid {what} ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EttinError(f"{where}: the {what} must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `override` merged in, recursively for nested mappings."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_recipe(size: str | None = None, recipe_file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The shared recipe merged with a size's file (or with `recipe_file`)."""
    folder = recipes_dir()
    shared = read_yaml(folder / f"{SHARED_NAME}.yaml")
    if recipe_file is not None:
        return deep_merge(shared, read_yaml(recipe_file))
    if size is None:
        return shared
    sizes = available_sizes()
    if size not in sizes:
        raise EttinError(f"unknown size '{size}': choose one of {', '.join(sizes)}")
    return deep_merge(shared, read_yaml(folder / f"{size}.yaml"))


DATA_RECIPE = "data.yaml"


def load_data_recipe(recipe_file: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], str]:
    """`recipes/data.yaml` (or `--recipe FILE`): the defaults of mine, select and mix, and where they came from.

    The one place the data recipe is read; each step takes its section through `recipe_section` and builds its
    typed config with `from_recipe`.
    """
    path = Path(recipe_file) if recipe_file is not None else recipes_dir() / DATA_RECIPE
    return read_yaml(path), str(path)


def recipe_section(recipe: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    """One mapping of a recipe (`mining`, `selection`, `mix`); a one-line error when it is not one."""
    value = recipe.get(name) or {}
    if not isinstance(value, dict):
        raise EttinError(f"{where}: '{name}' must be a mapping")
    return value


def from_recipe(cls: type[T], section: dict[str, Any], **overrides: Any) -> T:
    """A `cls` (a dataclass) whose fields come from `overrides` where given (not None), else from the recipe
    `section`, else from the field's default: the defaults live in the recipe, a command-line option overrides
    one value."""
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if overrides.get(f.name) is not None:
            values[f.name] = overrides[f.name]
        elif f.name in section:
            values[f.name] = section[f.name]
    return cls(**values)
