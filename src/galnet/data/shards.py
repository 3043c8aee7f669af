"""Sharded, resumable batch runs: the parts directory, its shards and its manifest.

``galnet predict`` and ``galnet fit`` write their results in shards, one ``.npz`` file per chunk of rows,
into ``<output>.parts/``, next to a ``manifest.json`` that records the input (file identities) and **every
option that changes a result** (zero point, sky σ, gain, pixel scale, PSF, catalog columns, model and its
checksum, backend, χ² options, fit options ...). ``--resume`` reuses the shards only when the manifest of the
new run is identical; otherwise it refuses with one line naming each differing option with its old and new
value. This module holds the one implementation of that contract, used by both commands (and by
:func:`galnet.fit.fit_catalog`, :func:`galnet.predict.predict_catalog`).

Crash safety: every file here is written to a temporary name and renamed (:mod:`galnet.io`), so a
process killed at any point (``kill -9``) leaves either the old file or the new one, never a truncated one;
temporary files are ignored and overwritten. A shard is trusted only if it reads back whole with the rows
expected. The manifest is written before the first shard and removed first when a run starts over.

This module imports only numpy, :mod:`galnet.errors`, :mod:`galnet.io` and the standard library.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GalnetError
from ..io import atomic_savez, atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_VERSION",
    "ResumeError",
    "file_id",
    "array_digest",
    "jsonable",
    "parts_dir",
    "chunk_bounds",
    "shard_path",
    "write_shard",
    "done_chunks",
    "load_shards",
    "manifest_differences",
    "prepare_parts",
]

#: Version of the manifest layout; a manifest of another version never matches (no resume across it).
MANIFEST_VERSION = 2
MANIFEST_NAME = "manifest.json"


class ResumeError(GalnetError, RuntimeError):
    """A run cannot resume (options differ from the earlier run) or its shards are inconsistent."""


# ============================================================================ identities
def file_id(path: str | os.PathLike) -> dict[str, Any]:
    """Identity of an input file for the manifest: absolute path, size (bytes) and mtime (integer s).

    Parameters
    ----------
    path : path-like
        An existing file or directory.

    Returns
    -------
    dict with ``path``, ``size``, ``mtime``.
    """
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "size": int(st.st_size), "mtime": int(st.st_mtime)}


def array_digest(array: Any) -> str | None:
    """SHA-256 (first 16 hex digits) of an array's shape, dtype and bytes; None for None.

    Used to record in-memory inputs (a PSF array, per-row σ values) in a manifest.
    """
    if array is None:
        return None
    a = np.ascontiguousarray(np.asarray(array))
    h = hashlib.sha256(f"{a.shape}{a.dtype.str}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples → lists, paths and numpy scalars → plain values)."""

    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(obj, default=default, sort_keys=True))


# ============================================================================ shards
def parts_dir(output: str | os.PathLike) -> Path:
    """``<output>.parts``: where the shards of a run go."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


def chunk_bounds(n_rows: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n_rows)`` in chunks of ``chunk_size`` (> 0) rows."""
    if int(chunk_size) < 1:
        raise ResumeError(f"chunk size must be a positive integer, got {chunk_size!r}")
    return [(s, min(n_rows, s + chunk_size)) for s in range(0, n_rows, int(chunk_size))]


def shard_path(pdir: Path, start: int, what: str = "part") -> Path:
    """Path of the shard of the chunk starting at row ``start`` (``what``: ``part`` or ``models``)."""
    return Path(pdir) / f"{what}-{int(start):012d}.npz"


def write_shard(pdir: Path, result: dict[str, Any]) -> None:
    """Write one chunk's results atomically.

    ``result`` holds ``rows`` (the input row numbers) and any arrays; ``model``/``resid`` cubes, when
    present, go to a separate ``models-`` shard written first, so that a catalog shard implies its models
    shard. Object arrays are stored as strings.
    """
    start = int(result["rows"][0])
    if "model" in result:
        atomic_savez(
            shard_path(pdir, start, "models"),
            {"rows": result["rows"], "model": result["model"], "resid": result["resid"]},
        )
    arrays = {}
    for k, v in result.items():
        if k in ("model", "resid"):
            continue
        v = np.asarray(v)
        if v.dtype.kind == "O":
            v = v.astype(str)
        arrays[k] = v
    atomic_savez(shard_path(pdir, start), arrays)


def done_chunks(pdir: Path, bounds: list[tuple[int, int]], *, need_models: bool = False) -> set[int]:
    """Starts of the chunks whose shard is complete and readable (to skip on resume).

    A shard that cannot be read, or that holds other rows than its chunk, is logged and recomputed.
    """
    done = set()
    for start, stop in bounds:
        p = shard_path(pdir, start)
        if not p.is_file() or (need_models and not shard_path(pdir, start, "models").is_file()):
            continue
        try:
            with np.load(p) as z:
                rows = z["rows"]
            if len(rows) == stop - start and rows[0] == start and rows[-1] == stop - 1:
                done.add(start)
            else:
                log.warning("%s: holds rows %d..%d, expected %d..%d; recomputed", p, rows[0], rows[-1],
                            start, stop - 1)
        except Exception as exc:  # noqa: BLE001 - any unreadable shard is recomputed
            log.warning("%s: unreadable shard (%s); recomputed", p, exc)
    return done


def load_shards(pdir: Path, bounds: list[tuple[int, int]], n_rows: int, *,
                error: type[GalnetError] = ResumeError) -> list[dict[str, np.ndarray]]:
    """The arrays of every shard, in row order, after checking that they hold rows ``0..n_rows-1`` once each.

    Raises
    ------
    ResumeError (or ``error``)
        A shard is missing or unreadable, or rows are lost or duplicated.
    """
    parts = []
    for start, _stop in bounds:
        p = shard_path(pdir, start)
        if not p.is_file():
            raise error(f"{p}: shard missing when assembling the catalog")
        try:
            with np.load(p) as z:
                parts.append({k: z[k] for k in z.files})
        except Exception as exc:  # noqa: BLE001 - a corrupt shard is a clear error
            raise error(f"{p}: unreadable shard ({exc}); rerun with --resume to recompute it") from exc
    rows = np.concatenate([p["rows"] for p in parts]) if parts else np.zeros(0, np.int64)
    if len(rows) != n_rows or not np.array_equal(rows, np.arange(n_rows)):
        counts = np.bincount(rows, minlength=n_rows) if len(rows) else np.zeros(n_rows, int)
        raise error(
            f"{pdir}: shards hold {len(rows)} rows for {n_rows} inputs "
            f"({int((counts == 0).sum())} missing, {int((counts > 1).sum())} duplicated)"
        )
    return parts


# ============================================================================ manifest
def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: d}


def manifest_differences(old: dict, new: dict, *, ignore: tuple[str, ...] = ("output",)) -> list[str]:
    """``["name (was OLD, now NEW)", ...]`` for every entry that differs between two manifests.

    Nested entries are named with dots (``input.mtime``); entries missing on one side read as absent.
    """
    fo, fn = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(set(fo) | set(fn), key=lambda k: (k.split(".")[0] != "manifest_version", k)):
        if key.split(".")[0] in ignore:
            continue
        a, b = fo.get(key, "absent"), fn.get(key, "absent")
        if a != b:
            diffs.append(f"{key} (was {a!r}, now {b!r})")
    return diffs


def prepare_parts(pdir: Path, manifest: dict, resume: bool, *,
                  error: type[GalnetError] = ResumeError) -> None:
    """Make the parts directory of a run: check the manifest on resume, else start over.

    Parameters
    ----------
    pdir : Path
        ``<output>.parts``.
    manifest : dict
        JSON-able description of the input and of every result-changing option (see :func:`jsonable`).
    resume : bool
        Keep the shards of an earlier run when its manifest is identical (except ``output``).
    error : exception class
        Raised when resuming is refused.

    Raises
    ------
    ResumeError (or ``error``)
        ``resume`` and the earlier run differs: the message names every differing option with its old and
        new value. Nothing is removed then.
    """
    pdir = Path(pdir)
    manifest = jsonable(manifest)
    mpath = pdir / MANIFEST_NAME
    if resume and mpath.is_file():
        try:
            old = json.loads(mpath.read_text())
        except (OSError, ValueError) as exc:
            raise error(f"{mpath}: unreadable manifest ({exc}); run without --resume to start over") from exc
        diffs = manifest_differences(old, manifest)
        if diffs:
            raise error(
                f"{pdir}: cannot resume: the earlier run differs in {'; '.join(diffs)}; "
                "run with the earlier options, or without --resume to start over"
            )
        return
    if pdir.exists() or pdir.is_symlink():
        if not pdir.is_dir():
            raise error(f"{pdir} exists and is not a directory; remove it or choose another output")
        if not resume:
            log.warning("%s: removing the shards of an earlier run (use --resume to continue it)", pdir)
        if mpath.exists():
            mpath.unlink()  # first: a half-removed directory is never taken for a resumable run
        shutil.rmtree(pdir)
    pdir.mkdir(parents=True)
    atomic_write_text(mpath, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
