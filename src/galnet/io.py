"""Atomic file writes: the one implementation every stage uses.

Every file galnet writes (catalogs, HDF5 splits, shards, manifests, model cards and weights, checkpoints,
metrics) is written to a temporary file next to its destination and then renamed over it with
:func:`os.replace`, which is atomic on POSIX and Windows: a process killed at any point (``kill -9``, a full
disk, an exception in the writer) leaves either the old file or the new one, never a truncated one. The
temporary file is ``<name>.<pid>.<thread>.tmp``, unique per process and thread so that concurrent writers of
the same file never share it; it is removed when the write fails.

This module is at the bottom of the stage order (standard library only; numpy is imported by
:func:`atomic_savez` when called), so every stage may use it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["temporary_path", "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_savez"]


def temporary_path(path: str | os.PathLike) -> Path:
    """The temporary file an atomic write of ``path`` goes through: ``<name>.<pid>.<thread>.tmp``.

    Parameters
    ----------
    path : path-like
        The destination.

    Returns
    -------
    Path
        In the destination's directory; its name ends in ``.tmp``.
    """
    p = Path(path)
    return p.with_name(f"{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Write a file atomically with any writer: ``write(tmp)`` creates ``tmp``, which then replaces ``path``.

    Parameters
    ----------
    path : path-like
        The destination; its directory must exist.
    write : callable
        Called once with the temporary path (:func:`temporary_path`); must create that file completely
        and close it (e.g. ``lambda tmp: hdul.writeto(tmp)``, an ``h5py.File(tmp, "w")`` block, a
        ``safetensors`` ``save_file``).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    Exception
        Whatever ``write`` or the rename raise; the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`). Returns ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str, *, newline: str | None = None) -> Path:
    """Write ``text`` to ``path`` atomically, as :meth:`pathlib.Path.write_text` would (same bytes).

    Parameters
    ----------
    path : path-like
        The destination.
    text : str
        The whole content.
    newline : str, optional
        As for :func:`open` (``""``: no newline translation, e.g. for :mod:`csv` text).

    Returns
    -------
    Path
        ``path``.
    """

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline=newline) as fh:
            fh.write(text)

    return atomic_write(path, write)


def atomic_savez(path: str | os.PathLike, arrays: Mapping[str, Any]) -> Path:
    """:func:`numpy.savez` of ``arrays`` (name -> array) to ``path`` atomically. Returns ``path``."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    return atomic_write(path, write)
