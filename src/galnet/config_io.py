"""The one config loader: TOML / JSON files into typed dataclasses, unknown keys refused, overrides merged.

Every configuration of galnet is a dataclass (:class:`galnet.simulate.SimulationConfig`,
:class:`galnet.train.TrainConfig`, :class:`galnet.fit.FitOptions`, :class:`galnet.predict.PredictOptions`).
This module turns a file or a nested dict into one of them, the same way for all:

* :func:`read_config` reads a ``.toml`` or ``.json`` file into a dict (a missing, unreadable, unparsable or
  empty file is a one-line :class:`~galnet.errors.ConfigError` naming the file);
* :func:`merge_overrides` merges command-line (or API) overrides over it: a nested table is merged key by
  key, any other value replaces the file's;
* :func:`build_config` builds the dataclass, recursing into fields that are dataclasses themselves, and
  refuses an unknown key or a value of the wrong type (checked against the field's annotation with
  :func:`galnet.options.check_field_type`) with a one-line error naming the dotted key;
* :func:`load_config` does the three in a row and prefixes any error with the file name.

Presets by name and other per-stage conventions (a dataset's ``config.json`` holding the simulation config
under ``config``) stay with their stage; validation of values (ranges, consistency) is the dataclass's own
``validate()``.

This module is at the bottom of the stage order (it imports only :mod:`galnet.errors`, :mod:`galnet.options`
and the standard library), so every stage may use it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError
from .options import check_field_type

__all__ = ["read_config", "merge_overrides", "build_config", "load_config"]

T = TypeVar("T")


def read_config(
    path: str | os.PathLike,
    *,
    what: str = "config",
    section: str | None = None,
    default_format: str = "toml",
    hint: str = "",
) -> dict[str, Any]:
    """Read a TOML or JSON config file into a dict.

    Parameters
    ----------
    path : path-like
        The file: ``.json`` is JSON, ``.toml`` is TOML, any other suffix is ``default_format``.
    what : str
        What the file holds, for the messages (``"preset"``, ``"training config"``).
    section : str, optional
        If the file's top level has a table of this name (``[train]``), that table is the config.
    default_format : {"toml", "json"}
        Format of a file whose suffix is neither ``.toml`` nor ``.json``.
    hint : str
        Appended to the message about an empty file (e.g. where an example is).

    Returns
    -------
    dict
        The file's (non-empty) top-level table, or its ``section`` table.

    Raises
    ------
    ConfigError
        One line naming the file: not found, not a file, unreadable, not UTF-8, a TOML / JSON syntax error,
        empty or not a table of keys.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: {what} file not found")
    if not p.is_file():
        raise ConfigError(f"{p}: {what} is not a file")
    fmt = {".json": "json", ".toml": "toml"}.get(p.suffix, default_format)
    try:
        if fmt == "json":
            data = json.loads(p.read_text())
        else:
            with open(p, "rb") as fh:
                data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the {what} ({exc})") from exc
    except ValueError as exc:  # TOML / JSON syntax, not UTF-8 text
        raise ConfigError(f"{p}: cannot parse the {what} ({' '.join(str(exc).split())})") from exc
    if section is not None and isinstance(data, dict) and isinstance(data.get(section), dict):
        data = data[section]
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{p}: the {what} is empty (or not a table of keys){hint}")
    return data


def merge_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``overrides`` merged over it: tables (dicts) key by key, recursively; values replace.

    Parameters
    ----------
    base, overrides : dict
        Nested config tables; neither is modified.

    Returns
    -------
    dict
        A new nested dict.
    """
    out = dict(base)
    for key, value in (overrides or {}).items():
        old = out.get(key)
        out[key] = merge_overrides(old, value) if isinstance(value, dict) and isinstance(old, dict) else value
    return out


def build_config(cls: type[T], data: Any, where: str = "") -> T:
    """Build the dataclass ``cls`` from a nested dict, refusing unknown keys and values of the wrong type.

    Parameters
    ----------
    cls : dataclass type
        Every field must have a default; a field whose default is a dataclass is built from a nested table.
    data : dict or cls
        The table (an instance of ``cls`` is returned as is).
    where : str
        Dotted key of ``data`` inside the whole config, for the messages (``""`` at the top).

    Returns
    -------
    cls instance
        Not validated beyond types (call its ``validate()`` where it has one).

    Raises
    ------
    ConfigError
        ``"<where>: unknown key(s) a, b; known: ..."``, ``"<key>: expected <type>, got ..."`` or
        ``"<where>: expected a table, got list"``.
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}unknown key(s) {', '.join(map(str, unknown))}; "
                          f"known: {', '.join(fields)}")
    defaults = cls()
    kwargs = {}
    for name, value in data.items():
        sub = getattr(defaults, name)
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(sub):
            kwargs[name] = build_config(type(sub), value, key)
        else:
            check_field_type(value, str(fields[name].type), key)
            kwargs[name] = value
    return cls(**kwargs)


def load_config(
    path: str | os.PathLike,
    cls: type[T],
    *,
    overrides: Mapping[str, Any] | None = None,
    what: str = "config",
    section: str | None = None,
    default_format: str = "toml",
) -> T:
    """Read a config file, merge overrides over it and build ``cls``: :func:`read_config`,
    :func:`merge_overrides`, :func:`build_config`.

    Parameters
    ----------
    path : path-like
        A ``.toml`` or ``.json`` file.
    cls : dataclass type
        What to build (e.g. :class:`galnet.fit.FitOptions`).
    overrides : dict, optional
        Nested values merged over the file's (command-line options).
    what, section, default_format
        As for :func:`read_config`.

    Returns
    -------
    cls instance

    Raises
    ------
    ConfigError
        One line naming the file and, for a bad key or value, the dotted key.
    """
    data = merge_overrides(read_config(path, what=what, section=section, default_format=default_format),
                           overrides)
    try:
        return build_config(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
