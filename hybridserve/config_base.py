"""What every config of the project shares: the strict pydantic base, the error type and its
one-line-per-problem formatter, the YAML loader (duplicate keys are errors) and the override
merger. The scenario (config.py), the serve config and the deployment config build on it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names file, field and what is allowed."""


class Strict(BaseModel):
    """Base model: unknown fields are errors (a typo must not be ignored silently), and so are
    NaN and infinite floats, which pass `gt`/`ge` bounds and then break the arithmetic."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True
    )


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated in one mapping: plain YAML keeps the last value,
    so a pasted-twice field would silently override the first with no hint."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<:` merges may be overridden: only literal repeats are errors
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # unhashable key: the base constructor reports it
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r}, first on line {first.start_mark.line + 1}",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """The one YAML parser of the project: safe, and duplicate keys are errors."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file's top-level mapping; errors name the file, the line and `what` it should be."""
    p = Path(path)
    try:
        data = load_yaml(p.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{p}: cannot read {what}: {e.strerror}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}:{where}: not valid YAML ({getattr(e, 'problem', e)})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a YAML mapping of {what} fields at the top level")
    return data


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: `file: field a.b: message (got X)`."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{source}: field {loc}: {e['msg']}{got_s}")
    return "\n".join(lines)


class Provenance(Strict):
    """Where a data file's figures come from: its region, the date they are as of (an ISO
    date) and its source, said in words."""

    region: str
    date: str
    source: str = Field(min_length=20)

    @field_validator("date")
    @classmethod
    def _date(cls, v: str) -> str:
        try:
            dt.date.fromisoformat(v)
        except ValueError:
            raise ValueError("an ISO date, e.g. 2026-12-06") from None
        return v


def load_data_model(cls: type[M], name: str, path: str | Path | None = None) -> M:
    """A pydantic model from the built-in data file `name` (hybridserve/data/) or from `path`;
    ConfigError naming the file and the field."""
    from importlib import resources

    if path is None:
        source = f"hybridserve/data/{name}"
        text = resources.files("hybridserve.data").joinpath(name).read_text()
    else:
        source, text = str(path), Path(path).read_text()
    try:
        return cls.model_validate(load_yaml(text))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over` merged over it: mappings key by key, any other value replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`data` (a parsed config) with `overrides` merged over it, the one way every config takes
    them: a key may be dotted (`router.port`), mappings merge key by key, and None means "not
    given" (a CLI option left unset)."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        *path, last = key.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return deep_merge(data, nested)
