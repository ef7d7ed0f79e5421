"""The machinery under :mod:`apq_lib.config`: fields that declare their checks
(:func:`param`), the generic check of every declared rule, and the typed build of a
dataclass tree from a YAML mapping (unknown keys, wrong types and impossible values raise
:class:`ConfigError` naming the dotted key)."""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, field
from typing import Any, Optional

import yaml

__all__ = ["ConfigError", "param", "field_rules", "check_fields", "leaf_fields",
           "apply_overrides", "load_yaml", "key_dict"]


class ConfigError(ValueError):
    """A profile or override is invalid; the message names the dotted key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


# --------------------------------------------------------------------------- field rules
_RULES = {"gt", "ge", "lt", "le", "choices", "nonempty", "length", "finite", "cache"}


def param(default: Any = MISSING, *, default_factory: Any = MISSING, **rules: Any) -> Any:
    """A dataclass field with declared checks: ``gt/ge/lt/le`` (bounds), ``choices``
    (allowed values), ``nonempty``/``length`` (lists), ``finite`` (default True for
    floats), ``cache`` (False: never part of an artifact key; ``"changed"``: part of it
    only when the value differs from the default, so a new field keeps the keys of existing
    profiles). For a list the value rules apply to every element; ``None`` (an Optional
    field left out) passes."""
    bad = sorted(set(rules) - _RULES)
    if bad:
        raise TypeError(f"param(): unknown rule(s) {bad}; use {sorted(_RULES)}")
    return field(default=default, default_factory=default_factory, metadata={"rules": rules})


def field_rules(f: dataclasses.Field) -> dict:
    return dict(f.metadata.get("rules", {}))


def _check_value(x: Any, key: str, r: dict) -> None:
    if isinstance(x, float) and r.get("finite", True) and not math.isfinite(x):
        raise ConfigError(f"{key}: must be a finite number, got {x!r}")
    if "choices" in r and x not in r["choices"]:
        raise ConfigError(f"{key}: {x!r} is not supported; choose from {list(r['choices'])}")
    for rule, ok, word in (("gt", lambda a, b: a > b, ">"), ("ge", lambda a, b: a >= b, ">="),
                           ("lt", lambda a, b: a < b, "<"), ("le", lambda a, b: a <= b, "<=")):
        if rule in r and isinstance(x, (int, float)) and not ok(x, r[rule]):
            raise ConfigError(f"{key}: must be {word} {r[rule]}, got {x!r}")


def check_fields(obj: Any, path: str = "") -> None:
    """Apply every field's declared rules to a dataclass instance (recursively)."""
    for f in dataclasses.fields(obj):
        v, r = getattr(obj, f.name), field_rules(f)
        key = f"{path}.{f.name}" if path else f.name
        if v is None:
            continue
        if dataclasses.is_dataclass(v):
            check_fields(v, key)
            continue
        if isinstance(v, list):
            _check(not r.get("nonempty") or len(v) > 0, key, "must not be empty")
            _check("length" not in r or len(v) == r["length"], key,
                   f"needs exactly {r.get('length')} entries, got {len(v)}")
            for j, x in enumerate(v):
                if dataclasses.is_dataclass(x):
                    check_fields(x, f"{key}[{j}]")
                    if hasattr(x, "check"):
                        x.check(f"{key}[{j}]")
                else:
                    _check_value(x, f"{key}[{j}]", r)
        else:
            _check_value(v, key, r)


def key_dict(obj: Any) -> dict:
    """``dataclasses.asdict(obj)`` without the fields declared ``cache="changed"`` that hold
    their default (what a cache key or a stored spec records of a section)."""
    out = dataclasses.asdict(obj)
    for f in dataclasses.fields(obj):
        if field_rules(f).get("cache") == "changed":
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if getattr(obj, f.name) == default:
                out.pop(f.name)
    return out


def leaf_fields(cls: type, path: str = "") -> list[str]:
    """Dotted names of every non-section field of ``cls`` (sections expanded)."""
    hints, out = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        key = f"{path}.{f.name}" if path else f.name
        tp = hints[f.name]
        out += leaf_fields(tp, key) if dataclasses.is_dataclass(tp) else [key]
    return out


# --------------------------------------------------------------------------- loading
def _tname(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """The YAML ``value`` as type ``tp``; a mismatch raises :class:`ConfigError` naming the
    dotted key (and the list index of a bad element)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        alts = " or ".join(_tname(a) if a is not type(None) else "null" for a in args)
        raise ConfigError(errors[0] if len(errors) == 1 and "[" in errors[0].split(":")[0]
                          else f"{key}: expected {alts}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {_tname(args[0]) if args else 'values'}"
                              f", got {value!r}")
        return [_coerce(x, args[0] if args else Any, f"{key}[{j}]") for j, x in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    ok = {float: isinstance(value, (int, float)) and not isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str)}.get(tp)
    if ok is None:
        ok = isinstance(value, tp)
    if not ok:
        raise ConfigError(f"{key}: expected {_tname(tp)}, got {value!r}")
    return float(value) if tp is float else value


def _build(cls: type, data: Any, path: str, base: Any = None) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'profile'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(f"{dotted}: unknown key; allowed keys are {sorted(fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            sub = getattr(base, key) if base is not None else None
            values[key] = _build(tp, value, dotted, sub)
        else:
            values[key] = _coerce(value, tp, dotted)
    if base is not None:
        for k, v in values.items():
            setattr(base, k, v)
        return base
    missing = [n for n, f in fields.items() if n not in values and f.default is MISSING
               and f.default_factory is MISSING]
    if missing:
        raise ConfigError(f"{path or 'profile'}: needs {missing}")
    return cls(**values)


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
    cur[parts[-1]] = value


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML without the two ways a profile can silently mean something else or blow
    up: a key given twice in one mapping (YAML keeps the last) and aliases (``*name``:
    a few lines of nested aliases expand to gigabytes). Both are refused at parse time,
    naming the line, before anything is expanded."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            ev = self.peek_event()
            raise ConfigError(f"line {ev.start_mark.line + 1}: alias *{ev.anchor} — profiles "
                              f"do not use YAML anchors or aliases; write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} appears "
                                  f"twice in one section (first on line {seen[key]}); keep one")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_yaml(text: str, where: str = "profile") -> Any:
    """Parse a profile's YAML strictly (:class:`_StrictLoader`); errors name ``where`` and
    the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {e}") from e


def apply_overrides(raw: dict, overrides: Optional[Mapping]) -> dict:
    """Merge ``{"supernet.n_random_subnets": 10, "data": {"batch_size": 64}}`` into raw."""
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides: expected a mapping of dotted keys to values, e.g. "
                          f"{{'data.batch_size': 64}}, got {type(overrides).__name__} "
                          f"{overrides!r}")
    out = json.loads(json.dumps(raw))
    for k, v in (overrides or {}).items():
        if not isinstance(k, str):
            raise ConfigError(f"overrides: key {k!r} is not a string")
        if isinstance(v, Mapping) and "." not in k and isinstance(out.get(k), dict):
            for kk, vv in v.items():
                _set_dotted(out, f"{k}.{kk}", vv)
        else:
            _set_dotted(out, k, v)
    return out


