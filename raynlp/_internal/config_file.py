"""Typed YAML configs shared by every recipe: read a file, apply `--set a.b=value` overrides, validate.

A config is checked completely before anything starts, and an error names the field:

    raynlp: error: config field train.batch_size: Input should be greater than 0 (got -1)
"""

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from raynlp.errors import RaynlpError

Config = TypeVar("Config", bound=BaseModel)


class Section(BaseModel):
    """A config section: unknown keys are errors (a typo must not be silently ignored), values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """`["train.epochs=3", "scaling.use_gpu=true"]` applied to a config tree; values are read as YAML."""
    for item in overrides:
        if "=" not in item:
            raise RaynlpError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=3")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), yaml.safe_load(raw))
    return tree


def validate(schema: type[Config], tree: dict) -> Config:
    try:
        return schema.model_validate(tree)
    except ValidationError as e:
        raise RaynlpError(_describe(e)) from None


def load(schema: type[Config], path: str | Path | None, overrides: list[str] | None = None,
         values: dict | None = None, **defaults) -> Config:
    """Read a YAML file (if any) over `defaults`, apply `--set` overrides, then `values` ({"http.port": 8001},
    from dedicated CLI flags, taken as they are), and validate against `schema`."""
    tree: dict = dict(defaults)
    if path is not None:
        tree.update(read_yaml(Path(path)))
    apply_overrides(tree, overrides or [])
    for dotted, value in (values or {}).items():
        _set(tree, dotted, value)
    return validate(schema, tree)


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise RaynlpError(f"config file {path} does not exist; see configs/ for examples")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RaynlpError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise RaynlpError(f"config file {path} must hold a mapping of sections")
    return loaded


def _set(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            raise RaynlpError(f"--set {dotted}: {key} is not a section")
        tree = node
    tree[keys[-1]] = value


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    more = f"; and {error.error_count() - 1} more" if error.error_count() > 1 else ""
    if not first["loc"]:
        return f"config: {message}{more}"
    field = ".".join(str(p) for p in first["loc"])
    got = f" (got {first['input']!r})" if first["type"] != "missing" and not isinstance(first["input"], dict) else ""
    return f"config field {field}: {message}{got}{more}"
