"""Config loading shared by the pipeline and standalone stages.

YAML file + ``--set section.field=value`` overrides, validated by pydantic models
that forbid unknown fields. A bad value becomes one ``ConfigError`` line naming the
field and what is allowed, never a traceback.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from stages.core.errors import ConfigError


class StrictModel(BaseModel):
    """Base for every config section: unknown fields are errors, values re-validated on set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects section.field=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` set (values parsed as YAML scalars)."""
    import copy

    merged = copy.deepcopy(data)
    for item in overrides:
        keys, value = parse_override(item)
        node = merged
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"--set {item}: {'.'.join(keys[: depth + 1])} is a value, not a section"
                )
            node = child
        node[keys[-1]] = value
    return merged


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Allowed field names at ``loc`` inside ``model`` (for 'unknown key' messages)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = _unwrap_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def format_validation_error(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        name = prefix + ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            allowed = _field_names(model, loc[:-1])
            lines.append(f"unknown key '{name}'; allowed: {', '.join(allowed)}")
        else:
            value = err.get("input")
            shown = repr(value) if not isinstance(value, dict) else "a mapping"
            lines.append(f"bad value for '{name}' ({shown}): {err['msg']}")
    return "; ".join(lines)


def validate(model: type[BaseModel], data: dict[str, Any], prefix: str = "") -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, prefix)) from None


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay whole (as MLflow params)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}
