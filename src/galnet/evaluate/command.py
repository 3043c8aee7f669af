"""Compare measurement catalogs with the truth of a dataset and write a report folder.

Example::

    galnet evaluate --truth data/test.h5 --catalog network=net.fits --catalog fit=fit.fits \\
        --catalog hybrid=hyb.fits --out report/

Catalog rows are matched to the dataset by ``id``; galaxies missing from a catalog count as not
measured by that method (its metrics use the rows it has; a "common rows" table compares all
methods on the same galaxies). Time per galaxy is read from the catalog header keyword
``TPERGAL`` (seconds) when present, or given with ``--time NAME=SECONDS``.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from pathlib import Path

import numpy as np

from ..catalog import id_key
from ..errors import InputDataError
from ..options import check_output_path, positive_int
from ..params import IX_MAG, IX_N, IX_Q, IX_RE, N_PARAMS, PARAMETERS

__all__ = ["add_arguments", "run", "load_truth", "load_catalog", "load_galfit_headers", "TIME_KEYWORD"]

log = logging.getLogger(__name__)

#: Catalog header keyword holding the wall time per galaxy in seconds.
TIME_KEYWORD = "TPERGAL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``galnet evaluate``."""
    parser.add_argument("--truth", required=True, help="dataset HDF5 file with the true parameters (images, "
                        "psfs, sky_sigma, params, ids)")
    parser.add_argument("--catalog", action="append", default=[], metavar="NAME=PATH",
                        help="a method's catalog (FITS/ECSV/CSV/Parquet, galnet columns); repeatable")
    parser.add_argument("--galfit-headers", metavar="DIR",
                        help="folder of GALFIT output blocks named <id>.fits (or ..._<id>.fits): "
                        "method 'galfit'")
    parser.add_argument("--time", action="append", default=[], metavar="NAME=SECONDS",
                        help="wall time per galaxy of a method (overrides the catalog's TPERGAL)")
    parser.add_argument("--limit", type=positive_int, default=None, help="use only the first N truth stamps")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--title", default="galnet evaluation", help="report title")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def load_truth(path, *, limit: int | None = None):
    """A :class:`~galnet.evaluate.report.TruthSet` from a dataset file (schema of :mod:`galnet.data.h5`).

    Parameters
    ----------
    path : path of the ``.h5`` split
    limit : int, optional
        First ``limit`` rows only.
    """
    from ..catalog import duplicate_ids
    from ..conventions import DEFAULT_ZEROPOINT, HSC_PIXEL_SCALE
    from ..data import read_arrays, read_meta
    from ..data.h5 import check_split_shapes
    from .report import TruthSet

    meta = read_meta(path)
    shapes = check_split_shapes(path, required=("images", "psfs", "sky_sigma", "params"))
    if len(shapes["params"]) != 2 or shapes["params"][1] != N_PARAMS:
        raise InputDataError(f"{path}: params must have shape (N, {N_PARAMS}), got {shapes['params']}")
    if shapes["images"][0] == 0:
        raise InputDataError(f"{path}: the truth dataset has no rows")
    arrays = read_arrays(path, 0, limit, keys=[k for k in shapes if k != "masks"])
    if "ids" in arrays:
        dups = duplicate_ids(arrays["ids"])
        if dups:
            k, rows = next(iter(dups.items()))
            raise InputDataError(f"{path}: {len(dups)} duplicated truth id(s), e.g. id {k} at rows "
                                 f"{', '.join(map(str, rows[:4]))}; catalogs cannot be matched unambiguously")
    gain = meta.get("gain")
    if gain is not None and not (isinstance(gain, (int, float)) and math.isfinite(gain) and gain > 0):
        raise InputDataError(f"{path}: meta gain {gain!r} is not a positive number")
    if gain is None and "sigma_maps" not in arrays:
        log.warning("%s: no gain in meta: the σ map is the sky noise only", path)
    return TruthSet.from_arrays(arrays, zeropoint=float(meta.get("zeropoint", DEFAULT_ZEROPOINT)),
                                gain=gain, pixel_scale=float(meta.get("pixel_scale", HSC_PIXEL_SCALE)))


def _invalid_rows(params: np.ndarray) -> np.ndarray:
    """Rows whose parameters cannot be a measurement: re <= 0, n <= 0, q <= 0 or q > 1, or non-finite
    mag/re/n/q where the row is not all-NaN (all-NaN rows are "not measured" already)."""
    finite_any = np.isfinite(params).any(axis=1)
    with np.errstate(invalid="ignore"):
        q = params[:, IX_Q]
        bad = (params[:, IX_RE] <= 0) | (params[:, IX_N] <= 0) | (q <= 0) | (q > 1)
    bad |= finite_any & ~np.isfinite(params[:, [IX_MAG, IX_RE, IX_N, IX_Q]]).all(axis=1)
    return bad


def load_catalog(name: str, path, ids, *, time_per_galaxy: float | None = None):
    """A :class:`~galnet.evaluate.report.MethodResult` from a galnet catalog, aligned with ``ids``.

    Parameters
    ----------
    name : str
        Method name.
    path : path of the catalog
    ids : array (B,)
        Truth ids in truth order; rows are matched on the catalog's ``id`` column (as strings), or
        taken in order when the catalog has no ``id`` and the same length.
    time_per_galaxy : float, optional
        Seconds; default: the ``TPERGAL`` header keyword, if any.
    """
    from ..catalog import catalog_params, duplicate_ids, read_table
    from .report import MethodResult

    table = read_table(path)
    try:
        params = catalog_params(table)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InputDataError):
            raise InputDataError(f"{path}: {exc}") from None
        raise InputDataError(f"{path}: parameter columns are not numeric ({exc})") from None
    bad = _invalid_rows(params)
    if bad.any():
        ex = np.flatnonzero(bad)[:3]
        if "id" in table.colnames:
            ex = np.asarray(table["id"])[ex]
        log.warning("%s: %d row(s) with impossible parameters (re_pix <= 0, n <= 0, q outside (0, 1] or "
                    "NaN; e.g. id %s) are treated as not measured", path, int(bad.sum()),
                    ", ".join(map(str, ex)))
        params = params.copy()
        params[bad] = np.nan
    flags = np.asarray(table["flags"], dtype=np.int64) if "flags" in table.colnames else np.zeros(len(table),
                                                                                                   dtype=np.int64)
    err_cols = [f"{p.column}_err" for p in PARAMETERS]
    errors = None
    if all(c in table.colnames for c in err_cols):  # 1-sigma errors in catalog units
        errors = np.column_stack([np.asarray(table[c], dtype=np.float64) for c in err_cols])
        errors[bad] = np.nan
    sky = np.array(table["sky"], dtype=np.float64) if "sky" in table.colnames else None
    if sky is not None:
        sky[bad] = np.nan
    b = len(ids)
    out_p, out_f = np.full((b, N_PARAMS), np.nan), np.zeros(b, dtype=np.int64)
    out_e = None if errors is None else np.full((b, N_PARAMS), np.nan)
    out_s = None if sky is None else np.full(b, np.nan)
    if "id" in table.colnames:
        dups = duplicate_ids(table["id"])
        if dups:
            k, rows = next(iter(dups.items()))
            raise InputDataError(f"{path}: {len(dups)} duplicated id(s), e.g. id {k} at rows "
                                 f"{', '.join(map(str, rows[:4]))}; a catalog with duplicate ids cannot be "
                                 "matched to the truth unambiguously")
        lookup = {id_key(v): i for i, v in enumerate(np.asarray(table["id"]))}
        idx = np.array([lookup.get(id_key(v), -1) for v in ids])
        hit = idx >= 0
        if not hit.any():
            first = id_key(table["id"][0]) if len(table) else None
            raise InputDataError(f"{path}: no catalog id matches a truth id (e.g. truth {id_key(ids[0])!r}, "
                                 f"catalog {first!r})")
        out_p[hit], out_f[hit] = params[idx[hit]], flags[idx[hit]]
        if out_e is not None:
            out_e[hit] = errors[idx[hit]]
        if out_s is not None:
            out_s[hit] = sky[idx[hit]]
        if (~hit).any():
            log.info("%s: %d of %d truth ids not in the catalog (not measured)", path, int((~hit).sum()), b)
    elif len(table) == b:
        out_p, out_f, out_e, out_s = params, flags, errors, sky
    else:
        raise InputDataError(f"{path}: no 'id' column and {len(table)} rows for {b} truth stamps")
    if time_per_galaxy is None:
        meta = {str(k).upper(): v for k, v in table.meta.items()}
        try:
            time_per_galaxy = float(meta[TIME_KEYWORD]) if TIME_KEYWORD in meta else None
        except (TypeError, ValueError):
            time_per_galaxy = None
    upper = {str(k).upper(): v for k, v in table.meta.items()}
    network_only = str(upper.get("REFINE", "")).strip() == "0" and "niter" not in table.colnames
    return MethodResult(name=name, params=out_p, flags=out_f, time_per_galaxy=time_per_galaxy,
                        source=str(path), errors=out_e, network_only=network_only, sky=out_s)


def load_galfit_headers(directory, ids, *, name: str = "galfit", time_per_galaxy: float | None = None):
    """Method ``galfit`` from a folder of GALFIT output image blocks (``<id>.fits`` / ``..._<id>.fits``).

    The Sérsic component's parameters are read with :func:`galnet.fit.galfit_io.read_galfit_header`;
    coordinates must refer to the same stamps as the truth (GALFIT's and galnet's pixel
    conventions are the same).
    """
    from ..fit.galfit_io import read_galfit_header
    from .report import MethodResult

    d = Path(directory)
    if not d.is_dir():
        raise InputDataError(f"{d}: not a directory")
    files = sorted(p for p in d.iterdir() if p.name.lower().endswith((".fits", ".fits.gz", ".fit")))
    if not files:
        raise InputDataError(f"{d}: no FITS files")
    lookup = {id_key(v): i for i, v in enumerate(ids)}
    b = len(ids)
    params, flags = np.full((b, N_PARAMS), np.nan), np.zeros(b, dtype=np.int64)
    n_ok = 0
    for f in files:
        stem = re.sub(r"\.(fits|fit)(\.gz)?$", "", f.name, flags=re.I)
        m = re.search(r"([^_]+)$", stem)
        i = lookup.get(stem, lookup.get(m.group(1) if m else "", None))
        if i is None:
            log.warning("%s: no truth id matches the file name; skipped", f)
            continue
        try:
            res = read_galfit_header(f)
        except InputDataError as exc:
            log.error("%s", exc)
            continue
        params[i], flags[i] = res.params, res.flags
        n_ok += 1
    if n_ok == 0:
        raise InputDataError(f"{d}: no GALFIT block matched a truth id")
    return MethodResult(name=name, params=params, flags=flags, time_per_galaxy=time_per_galaxy, source=str(d))


def _pairs(values: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        if "=" not in v:
            raise InputDataError(f"{what} {v!r}: use NAME=VALUE")
        k, val = v.split("=", 1)
        if not k.strip():
            raise InputDataError(f"{what} {v!r}: empty name")
        out.append((k.strip(), val.strip()))
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``galnet evaluate``."""
    from .report import evaluate_methods, format_summary, write_report

    check_output_path(args.out, option="--out", directory=True)
    times = {}
    for k, v in _pairs(args.time, "--time"):
        try:
            times[k] = float(v)
        except ValueError:
            raise InputDataError(f"--time {k}={v}: not a number of seconds") from None
        if not math.isfinite(times[k]) or times[k] < 0:
            raise InputDataError(f"--time {k}={v}: must be a finite number of seconds >= 0")
    cats = _pairs(args.catalog, "--catalog")
    if not cats and not args.galfit_headers:
        raise InputDataError("give at least one --catalog NAME=PATH or --galfit-headers DIR")
    truth = load_truth(args.truth, limit=args.limit)
    methods = [load_catalog(n, p, truth.ids, time_per_galaxy=times.get(n)) for n, p in cats]
    if args.galfit_headers:
        methods.append(load_galfit_headers(args.galfit_headers, truth.ids,
                                           time_per_galaxy=times.get("galfit")))
    ev = evaluate_methods(truth, methods, progress=not args.no_progress)
    notes = [f"truth: {args.truth}"] + [f"{m.name}: {m.source}" for m in methods]
    path = write_report(ev, args.out, title=args.title, notes=notes, progress=not args.no_progress)
    print(format_summary(ev))
    print(f"galnet evaluate: report {path}")
    return 0
