"""Catalog contract: one row per input, columns named from the parameter table, with units.

Every batch output of galnet (``fit``, ``predict``) is built by :func:`make_catalog` and written by
:func:`write_table`, so that columns, units, flags and metadata are identical across stages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import __version__
from .conventions import CONVENTIONS_VERSION, DEFAULT_ZEROPOINT, HSC_PIXEL_SCALE, wrap_pa
from .errors import GalnetError, InputDataError
from .flags import describe as describe_flags
from .io import atomic_write
from .params import IX_PA, PARAMETERS

__all__ = ["make_catalog", "write_table", "read_table", "catalog_params", "TABLE_FORMATS", "table_format",
           "check_table_writable", "unique_ids", "duplicate_ids", "id_key", "open_fits", "raise_if_truncated"]

#: File extensions understood by :func:`write_table` / :func:`read_table` → astropy format name.
TABLE_FORMATS = {
    ".fits": "fits",
    ".fit": "fits",
    ".fits.gz": "fits",
    ".ecsv": "ascii.ecsv",
    ".csv": "ascii.csv",
    ".parquet": "parquet",
}


def table_format(path: Path) -> str:
    """The astropy format name of a catalog path, from its extension (:data:`TABLE_FORMATS`).

    Parameters
    ----------
    path : Path

    Returns
    -------
    str, e.g. ``"fits"``, ``"ascii.ecsv"``.

    Raises
    ------
    InputDataError
        An unknown extension (the message lists the known ones).
    """
    name = path.name.lower()
    for ext, fmt in sorted(TABLE_FORMATS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(ext):
            return fmt
    raise InputDataError(
        f"{path}: unknown table format; use one of {', '.join(sorted(TABLE_FORMATS))}"
    )


def open_fits(path, what: str = "FITS", **kwargs):
    """``astropy.io.fits.open`` that turns every way a file can be unreadable into one clear error.

    A truncated file (astropy only warns, then returns short or zero-filled data), a corrupt or non-FITS
    file, a broken gzip stream: all raise :class:`~galnet.errors.InputDataError` naming the file and
    ``what`` it was read as. Use it as ``with open_fits(path, "PSF") as hdul:``.

    Parameters
    ----------
    path : path
    what : str
        What the file is (``"PSF"``, ``"stamp cube"`` ...), for the message.
    **kwargs
        Passed to :func:`astropy.io.fits.open` (``memmap``, ``lazy_load_hdus`` ...).
    """
    import warnings
    import zlib

    from astropy.io import fits
    from astropy.utils.exceptions import AstropyUserWarning

    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path}: no such {what} file")
    if path.is_dir():
        raise InputDataError(f"{path}: is a directory, not a {what} file")
    kwargs.setdefault("lazy_load_hdus", False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AstropyUserWarning)
            hdul = fits.open(path, **kwargs)
    except (OSError, ValueError, TypeError, EOFError, IndexError, KeyError, zlib.error) as exc:
        raise InputDataError(f"{path}: cannot read {what} (corrupt or not FITS: {exc})") from exc
    try:
        raise_if_truncated(caught)
    except OSError as exc:
        hdul.close()
        raise InputDataError(f"{path}: cannot read {what}: the file is truncated ({exc})") from None
    except BaseException:  # a warning turned into an error by the caller's filters: close the file first
        hdul.close()
        raise
    if len(hdul) == 0:
        hdul.close()
        raise InputDataError(f"{path}: cannot read {what}: no HDU in the file")
    if kwargs.get("memmap") and any(h.is_image and any(k in h.header for k in ("BZERO", "BSCALE", "BLANK"))
                                    for h in hdul):
        hdul.close()  # scaled integers (e.g. uint16 with BZERO) cannot be memory-mapped as floats
        return open_fits(path, what, **{**kwargs, "memmap": False})
    return hdul


def _non_ascii(values) -> tuple[int, str] | None:
    """(index, value) of the first non-ASCII string in ``values``, or None."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "USO":
        return None
    for i, v in enumerate(arr.ravel()):
        text = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        if not text.isascii():
            return i, text
    return None


def check_table_writable(path, ids=None, columns: dict | None = None) -> None:
    """Check, before any computation, that a catalog with these ids and columns can be written to ``path``.

    FITS tables hold ASCII text only: a non-ASCII column name, id or string value would fail only when
    the catalog is written, after the whole run. Other formats (ECSV, CSV, Parquet) take UTF-8.

    Parameters
    ----------
    path : path
        The catalog to write (its extension gives the format).
    ids : array_like, optional
        The ``id`` column.
    columns : dict of str → array_like, optional
        Other columns (carried input-catalog columns).

    Raises
    ------
    InputDataError
        One line naming the column, the row and the value, and suggesting an ECSV or Parquet output.
    """
    if table_format(Path(path)) != "fits":
        return
    hint = "FITS tables hold ASCII text only; write .ecsv or .parquet instead"
    for name, values in {"id": ids, **(columns or {})}.items():
        if not str(name).isascii():
            raise InputDataError(f"{path}: column name {name!r} is not ASCII; {hint}")
        if values is None:
            continue
        bad = _non_ascii(values)
        if bad is not None:
            raise InputDataError(
                f"{path}: column {name!r} row {bad[0]} value {bad[1]!r} is not ASCII; {hint}")


def duplicate_ids(ids) -> dict[str, list[int]]:
    """``{id: [rows...]}`` of the ids that occur more than once (compared as text)."""
    arr = np.asarray(ids).ravel()
    if arr.dtype.kind in "iuU" and np.unique(arr).size == arr.size:  # fast path: no duplicates
        return {}
    keys = [id_key(v) for v in arr]
    rows: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        rows.setdefault(k, []).append(i)
    return {k: v for k, v in rows.items() if len(v) > 1}


def id_key(v) -> str:
    """An id as the text it is compared by: bytes decoded, integral floats as integers (``7.0`` → ``"7"``),
    surrounding spaces stripped.

    Parameters
    ----------
    v : any scalar id

    Returns
    -------
    str
    """
    v = v.decode() if isinstance(v, bytes) else v
    if isinstance(v, (float, np.floating)) and np.isfinite(v) and float(v).is_integer():
        v = int(v)
    return str(v).strip()


def unique_ids(ids, *, where: str = "input") -> np.ndarray:
    """The ids, made unique: the 2nd, 3rd ... occurrence of an id ``7`` become ``"7#2"``, ``"7#3"``.

    When there are duplicates the ids become strings, and a warning names how many and the first ones
    (a catalog with duplicate ids cannot be matched back to its input unambiguously).

    Parameters
    ----------
    ids : array_like (B,)
    where : str
        The input, for the warning.

    Returns
    -------
    ndarray (B,): ``ids`` unchanged when they are unique.
    """
    import logging

    ids = np.asarray(ids)
    dups = duplicate_ids(ids)
    if not dups:
        return ids
    out = np.array([id_key(v) for v in ids.ravel()], dtype=object)
    taken = set(out.tolist())
    for key, rows in dups.items():
        for k, r in enumerate(rows[1:], start=2):
            new, j = f"{key}#{k}", k
            while new in taken:
                j += 1
                new = f"{key}#{j}"
            taken.add(new)
            out[r] = new
    n_rows = sum(len(v) - 1 for v in dups.values())
    ex = "; ".join(f"{k} at rows {', '.join(map(str, v[:4]))}" for k, v in list(dups.items())[:3])
    logging.getLogger(__name__).warning(
        "%s: %d duplicated id(s) (%s); the repeats are renamed <id>#2, <id>#3 ... so that every output row "
        "has a unique id (%d row(s) renamed)", where, len(dups), ex, n_rows)
    return out.astype(str)


def make_catalog(
    ids,
    params,
    *,
    errors=None,
    flags=None,
    pixel_scale: float = HSC_PIXEL_SCALE,
    zeropoint: float = DEFAULT_ZEROPOINT,
    extra: dict | None = None,
    meta: dict | None = None,
):
    """Build the galnet catalog as an astropy Table.

    Parameters
    ----------
    ids : array_like, shape (B,)
        Input identifiers (kept as given).
    params : array_like, shape (B, 7)
        ``x, y, mag, re, n, q, pa`` in catalog conventions (NaN where unmeasured).
    errors : array_like, shape (B, 7), optional
        1-sigma errors in the same units (NaN where unknown).
    flags : array_like of int, shape (B,), optional
        Bits from :class:`galnet.flags.Flag`.
    pixel_scale : float
        arcsec / pixel, for ``re_arcsec``.
    extra : dict, optional
        More columns (name → array or astropy Column/Quantity), appended in order.
    meta : dict, optional
        Extra metadata (stored in the table header / ECSV meta).

    Returns
    -------
    astropy.table.Table with columns ``id, x, y, mag, re_pix, re_arcsec, n, q, pa``, ``*_err``,
    extra columns, and ``flags``.
    """
    import astropy.units as u
    from astropy.table import Column, Table

    params = np.asarray(params, dtype=float).copy()
    b = len(params)
    if params.ndim != 2 or params.shape[1] != len(PARAMETERS):
        raise InputDataError(f"params must have shape (B, {len(PARAMETERS)}), got {params.shape}")
    params[:, IX_PA] = wrap_pa(params[:, IX_PA])
    units = {"pix": u.pix, "mag": u.mag, "deg": u.deg, "": u.dimensionless_unscaled}
    t = Table()
    t["id"] = Column(np.asarray(ids))
    if len(t) != b:
        raise InputDataError(f"{len(t)} ids for {b} parameter rows")
    for j, spec in enumerate(PARAMETERS):
        t[spec.column] = Column(params[:, j], unit=units[spec.unit], description=spec.description)
        if spec.arcsec_column:
            t[spec.arcsec_column] = Column(params[:, j] * pixel_scale, unit=u.arcsec,
                                           description=spec.description)
    if errors is not None:
        errors = np.asarray(errors, dtype=float)
        for j, spec in enumerate(PARAMETERS):
            t[spec.column + "_err"] = Column(errors[:, j], unit=units[spec.unit])
            if spec.arcsec_column:
                t[spec.arcsec_column + "_err"] = Column(errors[:, j] * pixel_scale, unit=u.arcsec)
    for name, col in (extra or {}).items():
        t[name] = col
    t["flags"] = Column(
        np.zeros(b, dtype=np.int64) if flags is None else np.asarray(flags, dtype=np.int64),
        description="bit flags, see galnet.flags.Flag",
    )
    t.meta.update(
        {
            "GALNETV": __version__,
            "CONVVER": CONVENTIONS_VERSION,
            "ZEROPT": zeropoint,
            "PIXSCALE": pixel_scale,
            "FLAGBITS": json.dumps({k: v[0] for k, v in describe_flags().items()}),
        }
    )
    if meta:
        t.meta.update(meta)
    return t


def write_table(table, path, *, overwrite: bool = True) -> Path:
    """Write a table, format from the extension (FITS default, ECSV, CSV, Parquet); atomic."""
    path = Path(path)
    fmt = table_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = table
    if fmt in ("ascii.csv", "parquet"):
        out = table.copy(copy_data=False)
        out.meta = {k: v for k, v in table.meta.items() if isinstance(v, (str, int, float))}
    return atomic_write(path, lambda tmp: out.write(tmp, format=fmt, overwrite=True))


def read_table(path):
    """Read a table written by :func:`write_table` (or any FITS/ECSV/CSV/Parquet table)."""
    from astropy.table import Table

    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path}: no such file")
    fmt = table_format(path)
    try:
        if fmt == "parquet":  # astropy's reader needs pandas; pyarrow alone suffices
            import pyarrow.parquet as pq

            arrow = pq.read_table(path)
            return Table({name: arrow.column(name).to_numpy() for name in arrow.column_names})
        if fmt == "fits":
            with open_fits(path, "table") as hdul:
                hdu = next((h for h in hdul if isinstance(h, (fits_mod().BinTableHDU, fits_mod().TableHDU))),
                           None)
                if hdu is None:
                    raise InputDataError(f"{path}: no table HDU in the file")
                return Table.read(hdu)
        return Table.read(path, format=fmt)
    except InputDataError:
        raise
    except Exception as exc:  # astropy raises many types for corrupt files
        raise InputDataError(f"{path}: cannot read table: {exc}") from exc


def read_fits_checked(path, label: str, reader, *, detail: str = ""):
    """``reader(Path(path))`` with a missing, truncated or corrupt FITS file turned into one clear error.

    Parameters
    ----------
    path : path
    label : str
        What the file is, first in the messages (``"PSF library"``, ``"background"``).
    reader : callable
        Reads the open-able file (e.g. with :func:`astropy.io.fits.open`) and returns what it read.
    detail : str
        Inserted after "cannot read" in the message of an unreadable file (e.g. ``" HDU 'SCI'"``).

    Raises
    ------
    InputDataError
        ``"{label} {path}: file not found"`` or ``"{label} {path}: cannot read{detail} (...)"``; galnet's
        own errors raised by ``reader`` pass through unchanged.
    """
    import warnings

    p = Path(path)
    if not p.exists():
        raise InputDataError(f"{label} {path}: file not found")
    try:
        with warnings.catch_warnings(record=True) as caught:  # a truncated file is an error
            warnings.simplefilter("always")
            out = reader(p)
        raise_if_truncated(caught)
    except (OSError, KeyError, IndexError, ValueError, TypeError) as exc:  # corrupt or truncated FITS
        if isinstance(exc, GalnetError):
            raise
        raise InputDataError(f"{label} {path}: cannot read{detail} ({exc})") from exc
    return out


def raise_if_truncated(caught: list) -> None:
    """Raise :class:`OSError` if astropy warned that a FITS file is truncated; re-emit its other warnings.

    ``caught`` is the list of a ``warnings.catch_warnings(record=True)`` block around a FITS read.
    """
    import warnings

    for w in caught:
        if "truncated" in str(w.message):
            raise OSError(str(w.message))
    for w in caught:  # the others as they were, where astropy raised them
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def fits_mod():
    """``astropy.io.fits`` (imported lazily)."""
    from astropy.io import fits

    return fits


def catalog_params(table) -> np.ndarray:
    """The (B, 7) parameter array of a galnet catalog (``re_pix`` column as ``re``)."""
    missing = [p.column for p in PARAMETERS if p.column not in table.colnames]
    if missing:
        raise InputDataError(f"catalog lacks column(s) {', '.join(missing)}")
    cols = []
    for p in PARAMETERS:
        try:
            cols.append(np.asarray(table[p.column], dtype=float))
        except (TypeError, ValueError):
            raise InputDataError(f"catalog column {p.column!r} is not numeric "
                                 f"(e.g. {table[p.column][0]!r})") from None
    return np.stack(cols, axis=1)
