"""Typed configs: dataclasses loaded from YAML, overridable with ``key.sub=value``.

Every config in lodit is a (nested) dataclass. :func:`load_config` reads a YAML file, applies
command-line overrides, and converts the result into the dataclass, checking every key and type.
Unknown keys and wrong types raise :class:`~lodit.errors.ConfigError` naming the key and the file,
so a typo never silently falls back to a default. :func:`save_config` writes the resolved config
next to a run's outputs.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union, get_args, get_origin

import yaml

from lodit.errors import ConfigError, LoditError
from lodit.files import write_text

C = TypeVar("C")


def from_dict(cls: type[C], data: Mapping[str, Any] | None, *, source: str = "<config>", saved: bool = False) -> C:
    """Build dataclass ``cls`` from a plain mapping, checking keys and types.

    ``saved``: ``data`` is a config lodit wrote itself (a checkpoint's ``config.json``), which lists
    every field, so fields that don't apply to the chosen variant (e.g. an encoder's) are not refused.
    """
    token = _SAVED.set(saved)
    try:
        return _convert(cls, {} if data is None else data, key="", source=source)
    finally:
        _SAVED.reset(token)


_SAVED: contextvars.ContextVar[bool] = contextvars.ContextVar("lodit_config_saved", default=False)


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-data (YAML/JSON-able) form of a config dataclass."""
    return _plain(config)


def shipped_configs_dir() -> Path | None:
    """The YAML configs shipped with lodit: the copy installed with the package (``lodit/configs``
    in a wheel), else a source checkout's top-level ``configs/``; None if neither is there."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "configs", package.parent / "configs"):
        if candidate.is_dir():
            return candidate
    return None


def resolve_config_path(path: str | os.PathLike) -> Path:
    """``path``, or for a relative ``configs/...`` path that does not exist here, the shipped config
    of that name, so ``--config configs/dit/tta.yaml`` works from any folder and from a wheel."""
    path = Path(path)
    if path.exists() or path.is_absolute() or not path.parts or path.parts[0] != "configs":
        return path
    shipped = shipped_configs_dir()
    if shipped is not None and shipped.joinpath(*path.parts[1:]).is_file():
        return shipped.joinpath(*path.parts[1:])
    return path


class _Loader(yaml.SafeLoader):
    """YAML with only ``true``/``false`` as booleans (as in YAML 1.2).

    PyYAML follows YAML 1.1, where ``no``, ``off``, ``yes``, ``on``, ``y`` and ``n`` are booleans
    too, so ``mixed_precision: no`` would arrive as ``False``. Those words stay strings here; a
    boolean field still accepts them (see :func:`_convert`).
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "y": True, "false": False, "no": False, "off": False, "n": False}


def parse_yaml(text: str) -> Any:
    """YAML text as plain data (booleans only from ``true``/``false``); raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = resolve_config_path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file; give a YAML file (e.g. configs/dit/tiny.yaml)")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; check the path")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (invalid UTF-8 at byte {exc.start}); give a YAML config") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_one_line(exc)})") from None
    if data is None:
        # An empty file would otherwise train silently on built-in defaults, which nobody asks for.
        raise ConfigError(f"{path}: the config is empty; start from a shipped one (e.g. configs/tokenizer/tiny.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def load_config(
    cls: type[C],
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> C:
    """Load ``cls`` from a YAML file (or ``base``), then apply ``key.sub=value`` overrides."""
    data: dict[str, Any] = dict(base or {})
    source = "<defaults>"
    if path is not None:
        data = load_yaml(path)
        source = str(path)
    data = apply_overrides(data, overrides)
    where = source if not overrides else f"{source} (with command-line overrides)"
    return from_dict(cls, data, source=where)


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` set; the value is parsed as YAML."""
    result = json.loads(json.dumps(data, default=str)) if data else {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        dotted, raw = item.split("=", 1)
        keys = [k for k in dotted.strip().split(".") if k]
        if not keys:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = parse_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = result
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                path = ".".join(keys[: depth + 1])
                raise ConfigError(f"override {item!r}: {path} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return result


def save_config(config: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def config_hash(config: Any) -> str:
    """A short stable hash of a config's content (used to tie caches to their producer)."""
    blob = json.dumps(to_dict(config), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------- conversion


def _convert(tp: Any, value: Any, *, key: str, source: str) -> Any:
    name = key or "<top level>"
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {name} must be a mapping, got {_show(value)}")
        return _convert_dataclass(tp, value, key=key, source=source)

    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, key=key, source=source)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{source}: {name} must be {_type_name(tp)}, got {_show(value)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{source}: {name} must be one of {allowed}, got {_show(value)}")
        return value
    if origin in (list, Sequence) or tp is list:
        (item_tp,) = get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {name} must be a list, got {_show(value)}")
        return [_convert(item_tp, v, key=f"{key}[{i}]", source=source) for i, v in enumerate(value)]
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {name} must be a list, got {_show(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if len(args) != len(value):
            raise ConfigError(f"{source}: {name} must have {len(args)} items, got {len(value)}")
        return tuple(_convert(t, v, key=f"{key}[{i}]", source=source) for i, (t, v) in enumerate(zip(args, value)))
    if origin in (dict, Mapping) or tp is dict:
        key_tp, val_tp = get_args(tp) or (str, Any)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {name} must be a mapping, got {_show(value)}")
        return {
            _convert(key_tp, k, key=f"{key}.{k}", source=source): _convert(val_tp, v, key=f"{key}.{k}", source=source)
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise ConfigError(f"{source}: {name} must be true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{source}: {name} must be an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{source}: {name} must be a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{source}: {name} must be a string, got {_show(value)}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{source}: {name} must be {_type_name(tp)}, got {_show(value)}")


def _convert_dataclass(cls: type, value: Mapping[str, Any], *, key: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for k in value:
        if k not in fields:
            where = f"{key}.{k}" if key else str(k)
            known = ", ".join(fields)
            raise ConfigError(f"{source}: unknown key {where!r} (known keys here: {known})")
    kwargs = {}
    for fname in fields:
        if fname in value:
            sub = f"{key}.{fname}" if key else fname
            kwargs[fname] = _convert(hints[fname], value[fname], key=sub, source=source)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{source}: {key or 'config'}: {_one_line(exc)}") from None
    except ValueError as exc:  # __post_init__ validation
        raise ConfigError(f"{source}: {key or 'config'}: {_one_line(exc)}") from None
    except LoditError as exc:  # __post_init__ validation whose message names its keys itself
        raise ConfigError(f"{source}: {_one_line(exc)}") from None
    _check_applicable(obj, value, fields, key=key, source=source)
    return obj


def _check_applicable(obj: Any, given: Mapping[str, Any], fields: Mapping[str, dataclasses.Field], *, key: str,
                      source: str) -> None:
    """Refuse keys that don't apply to ``obj``'s variant (``obj.applicable_fields()``, e.g. the
    encoder's ``strides`` for a mel encoder).

    A key at its default value passes (a resolved ``config.yaml`` of a run lists every field); a
    config lodit saved itself is not checked (:func:`from_dict`'s ``saved``).
    """
    applicable = getattr(obj, "applicable_fields", None)
    if applicable is None or _SAVED.get():
        return
    allowed = applicable()
    for name in given:
        field = fields[name]
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if name not in allowed and _plain(getattr(obj, name)) != _plain(default):
            where = f"{key}.{name}" if key else name
            chosen = f"{key}.name" if key else "name"
            raise ConfigError(f"{source}: {where!r} does not apply when {chosen} is {getattr(obj, 'name', None)!r} "
                              f"(that takes: {', '.join(sorted(allowed))}); remove it")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
