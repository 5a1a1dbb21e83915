"""YAML configs into typed dataclasses (docs/DESIGN.md, "Formats": unknown keys are errors that name the path).

    cfg = load_config("service.yaml", ServiceConfig)            # a file
    cfg = from_dict({"resolution": 64}, ServiceConfig)          # a mapping (missing fields keep defaults)
    cfg = apply_overrides(cfg, ["resolution=64", "render.tile_size=16"])   # command-line style

Nested dataclasses, `list[...]`, `tuple[...]`, `dict[str, ...]`, `Literal[...]`, `X | None` and the
scalars bool/int/float/str are checked; an int is accepted where a float is expected, and so is a string
like `3e-4` (PyYAML reads exponent floats without a dot as strings); nothing else is coerced. Every error is a ConfigError whose message starts with the dotted path of the bad value
(e.g. `model.depth: expected int, got str 'deep'`). `to_dict` is the inverse, for checkpoint metadata.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def load_config(path: str | os.PathLike, cls: type[T]) -> T:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return from_dict(data, cls)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def from_dict(data: Any, cls: type[T], path: str = "") -> T:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '<root>'}: expected a mapping for {cls.__name__}, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        where = ", ".join(_join(path, k) for k in unknown)
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} for {cls.__name__} "
                          f"(known: {', '.join(sorted(fields))})")
    kwargs = {name: _convert(value, hints[name], _join(path, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # the dataclass's own __post_init__ checks
        raise ConfigError(f"{path or cls.__name__}: {exc}") from None


def to_dict(cfg: Any) -> Any:
    """A dataclass config -> plain dicts/lists/scalars (YAML- and JSON-safe)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """`a.b=value` strings (value parsed as YAML) applied on top of a config; returns a new config."""
    data = to_dict(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value")
        node, parts = data, key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{'.'.join(parts[:i + 1])}: not a section, cannot set {key.strip()}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"{key.strip()}: unknown key")
        node[parts[-1]] = yaml.safe_load(raw)
    return from_dict(data, type(cfg))


# ---------------------------------------------------------------------------------------------- internals
_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _convert(value: Any, hint: Any, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, path)
            except ConfigError as exc:
                errors.append(str(exc).split(": ", 1)[-1])
        raise ConfigError(f"{path}: {' / '.join(errors)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected one of {list(args)}, got {_describe(value)}")
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_dict(value, hint, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {_describe(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_describe(value)}")
        kt, vt = args or (Any, Any)
        return {_convert(k, kt, path): _convert(v, vt, _join(path, k)) for k, v in value.items()}
    if hint is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads `3e-4` as a string; YAML 1.2 and users mean a float
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected float, got {_describe(value)}")
        return float(value)
    if hint in (int, bool, str):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{path}: expected {hint.__name__}, got {_describe(value)}")
        return value
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a path string, got {_describe(value)}")
        return Path(value)
    raise ConfigError(f"{path}: unsupported config type {hint!r}")
