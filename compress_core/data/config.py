"""Experiment configuration: ``hyperparams/*.py`` files, typed overrides, checks.

Each experiment is a plain Python file exposing ``get_config()`` that returns an
``ml_collections.ConfigDict`` (flax-examples style), optionally with a
``validate(config)`` function. :func:`load_config` imports it by path, applies
command line overrides such as ``prune.ratio=0.5`` or ``--config.prune.ratio=0.5``
(parsed according to the type of the existing field), locks the result and
validates it. Every mistake a user can make raises a one-line :class:`UserError`.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import itertools
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from ml_collections import ConfigDict, FieldReference
from ml_collections.config_dict import RequiredValueError

from compress_core.errors import UserError, check
from compress_core.fileio import atomic_write_json

_PREFIX = "--config."
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")
_NONE = ("none", "null")
_module_counter = itertools.count()


def load_config(path: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """Load ``get_config()`` from the Python file ``path``, apply ``overrides``, validate.

    Each override is ``a.b.c=value`` (a leading ``--config.`` is accepted). The file is
    executed afresh on every call, so each call returns an independent config. The
    result is locked (no new fields) and, if the file defines ``validate(config)``,
    that hook has been run on it. Raises :class:`UserError` on any bad input.
    """
    path = os.fspath(path)
    check(os.path.isfile(path), f"config file not found: '{path}'")
    name = f"_compress_hparams_{next(_module_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    check(
        spec is not None and spec.loader is not None,
        f"cannot import config file '{path}'",
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # only while executing (dataclasses etc. need it)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(
            f"syntax error in config file '{path}' line {e.lineno}: {e.msg}"
        ) from None
    except Exception as e:  # noqa: BLE001 - any failure of the user's file is a user error
        raise UserError(f"config file '{path}' failed to import: {_one_line(e)}") from None
    finally:
        del sys.modules[name]
    get_config = getattr(module, "get_config", None)
    check(callable(get_config), f"config file '{path}' does not define get_config()")
    try:
        cfg = get_config()
    except Exception as e:  # noqa: BLE001
        raise UserError(f"get_config() in '{path}' failed: {_one_line(e)}") from None
    check(
        isinstance(cfg, ConfigDict),
        f"get_config() in '{path}' returned {type(cfg).__name__}, expected ConfigDict",
    )
    for override in overrides:
        apply_override(cfg, override)
    _check_required(cfg, "")
    cfg.lock()
    validate = getattr(module, "validate", None)
    if callable(validate):
        try:
            validate(cfg)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a failing check of the user's file is a user error
            raise UserError(f"validate() in '{path}' failed: {_one_line(e)}") from None
    return cfg


def _one_line(e: BaseException) -> str:
    """``Type: message`` of an exception on one line."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def apply_override(cfg: ConfigDict, override: str) -> None:
    """Set one existing field of ``cfg`` from ``'a.b.c=value'`` (typed by the field)."""
    text = override.removeprefix(_PREFIX)
    key, sep, raw = text.partition("=")
    key = key.strip()
    check(
        bool(sep) and bool(key),
        f"malformed config override {override!r} (expected field=value)",
    )
    parent, leaf = _parent(cfg, key)
    fields = dict(parent.items(preserve_field_references=True))
    if leaf not in fields:
        raise UserError(_unknown(parent, key, key.split(".")[:-1]))
    current = fields[leaf]
    if isinstance(current, ConfigDict):
        raise UserError(
            f"config field '{key}' is a group; override one of its fields "
            f"({', '.join(current.keys())})"
        )
    is_ref = isinstance(current, FieldReference)
    field_type = current.get_type() if is_ref else type(current)
    if is_ref and raw.strip().lower() in _NONE:
        value = None
    else:
        value = _parse(key, raw, field_type)
    try:
        parent[leaf] = value
    except (TypeError, ValueError) as e:
        raise UserError(
            f"config field '{key}' rejected {raw!r}: {e}".replace("\n", " ")
        ) from None


def _parse(key: str, raw: str, field_type: type) -> Any:
    """Parse override string ``raw`` as a value of ``field_type``."""

    def bad() -> UserError:
        return UserError(
            f"config field '{key}' expects {field_type.__name__}, got {raw!r}"
        )

    s = raw.strip()
    if field_type is bool:
        if s.lower() in _TRUE + _FALSE:
            return s.lower() in _TRUE
        raise bad()
    if field_type in (int, float):  # int("0.5") fails; float("3") is fine
        try:
            return field_type(s)
        except ValueError:
            raise bad() from None
    if field_type is str:
        return raw
    try:
        value = ast.literal_eval(s)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        if field_type is type(None):
            return raw  # an untyped None field given a bare word: keep it as a string
        raise bad() from None
    if field_type is type(None):
        return value
    if field_type in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad()
        return field_type(value)
    if not isinstance(value, field_type):
        raise bad()
    return value


def _parent(cfg: ConfigDict, key: str) -> tuple[ConfigDict, str]:
    """Return the ConfigDict holding dotted ``key`` and the last name, or raise UserError."""
    *groups, leaf = key.split(".")
    node = cfg
    for i, name in enumerate(groups):
        fields = dict(node.items(preserve_field_references=True))
        if name not in fields:
            raise UserError(_unknown(node, key, groups[:i]))
        if not isinstance(fields[name], ConfigDict):
            raise UserError(
                f"unknown config field '{key}' "
                f"('{'.'.join(groups[: i + 1])}' is not a group)"
            )
        node = fields[name]
    return node, leaf


def _unknown(node: ConfigDict, key: str, groups: list[str]) -> str:
    """One-line message for unknown ``key`` whose part after ``groups`` is not in ``node``."""
    known = list(node.keys())
    bad, *rest = key.split(".")[len(groups) :]
    where = f"under '{'.'.join(groups)}'" if groups else "at top level"
    msg = f"unknown config field '{key}' (known fields {where}: {', '.join(known) or 'none'})"
    close = difflib.get_close_matches(bad, known, n=1)
    if close:
        msg += f"; did you mean '{'.'.join([*groups, close[0], *rest])}'?"
    return msg


def _check_required(cfg: ConfigDict, prefix: str) -> None:
    """Raise UserError for any required placeholder that was never set."""
    for name, value in cfg.items(preserve_field_references=True):
        key = prefix + name
        if isinstance(value, ConfigDict):
            _check_required(value, key + ".")
        elif isinstance(value, FieldReference):
            try:
                value.get()
            except RequiredValueError:
                raise UserError(
                    f"config field '{key}' is required; set it with {_PREFIX}{key}=..."
                ) from None


def get_field(cfg: ConfigDict, field: str) -> Any:
    """Return the value of dotted ``field``; KeyError (a code bug) if it does not exist."""
    node: Any = cfg
    for name in field.split("."):
        if not isinstance(node, ConfigDict) or name not in node:
            raise KeyError(f"config has no field '{field}'")
        node = node[name]
    return node


def check_range(
    cfg: ConfigDict,
    field: str,
    lo: float | None,
    hi: float | None,
    lo_inclusive: bool = True,
    hi_inclusive: bool = False,
) -> None:
    """Raise UserError unless ``field`` is a number within ``lo``..``hi`` (None: unbounded)."""
    value = get_field(cfg, field)
    lo_s, hi_s = (
        ("-inf" if lo is None else repr(lo)),
        ("inf" if hi is None else repr(hi)),
    )
    lb, rb = "[" if lo_inclusive else "(", "]" if hi_inclusive else ")"
    interval = f"{lb}{lo_s}, {hi_s}{rb}"
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = (
        is_num
        and (lo is None or (value >= lo if lo_inclusive else value > lo))
        and (hi is None or (value <= hi if hi_inclusive else value < hi))
    )
    check(ok, f"config field '{field}' must be in {interval}, got {value!r}")


def check_choice(cfg: ConfigDict, field: str, choices: Iterable[Any]) -> None:
    """Raise UserError unless ``field`` is one of ``choices``."""
    choices = list(choices)
    value = get_field(cfg, field)
    check(
        value in choices,
        f"config field '{field}' must be one of "
        f"{', '.join(map(repr, choices))}, got {value!r}",
    )


def check_positive(cfg: ConfigDict, field: str) -> None:
    """Raise UserError unless ``field`` is a number > 0."""
    value = get_field(cfg, field)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    check(ok, f"config field '{field}' must be > 0, got {value!r}")


def config_to_dict(cfg: ConfigDict) -> dict:
    """Return ``cfg`` as plain nested dicts/lists/scalars that ``json.dumps`` accepts."""
    return _jsonable(cfg.to_dict())


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value.tolist() if hasattr(value, "dtype") else value  # numpy -> python


def save_config(cfg: ConfigDict, path: str) -> None:
    """Write ``cfg`` as JSON to ``path`` atomically."""
    atomic_write_json(path, config_to_dict(cfg))


def flatten(cfg: ConfigDict) -> dict[str, Any]:
    """Return ``{'a.b.c': value}`` for every leaf of ``cfg`` (references resolved)."""
    out: dict[str, Any] = {}
    for name, value in cfg.items():
        if isinstance(value, ConfigDict):
            out.update({f"{name}.{k}": v for k, v in flatten(value).items()})
        else:
            out[name] = value
    return out
