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
from .errors import InputDataError
from .flags import describe as describe_flags
from .params import PARAMETERS

__all__ = ["make_catalog", "write_table", "read_table", "catalog_params", "TABLE_FORMATS"]

#: File extensions understood by :func:`write_table` / :func:`read_table` → astropy format name.
TABLE_FORMATS = {
    ".fits": "fits",
    ".fit": "fits",
    ".fits.gz": "fits",
    ".ecsv": "ascii.ecsv",
    ".csv": "ascii.csv",
    ".parquet": "parquet",
}


def _format_for(path: Path) -> str:
    name = path.name.lower()
    for ext, fmt in sorted(TABLE_FORMATS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(ext):
            return fmt
    raise InputDataError(
        f"{path}: unknown table format; use one of {', '.join(sorted(TABLE_FORMATS))}"
    )


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
    params[:, 6] = wrap_pa(params[:, 6])
    units = {"pix": u.pix, "mag": u.mag, "deg": u.deg, "": u.dimensionless_unscaled}
    t = Table()
    t["id"] = Column(np.asarray(ids))
    if len(t) != b:
        raise InputDataError(f"{len(t)} ids for {b} parameter rows")
    for j, spec in enumerate(PARAMETERS):
        t[spec.column] = Column(params[:, j], unit=units[spec.unit], description=spec.description)
        if spec.name == "re":
            t["re_arcsec"] = Column(params[:, j] * pixel_scale, unit=u.arcsec,
                                    description="half-light radius along the semi-major axis")
    if errors is not None:
        errors = np.asarray(errors, dtype=float)
        for j, spec in enumerate(PARAMETERS):
            t[spec.column + "_err"] = Column(errors[:, j], unit=units[spec.unit])
            if spec.name == "re":
                t["re_arcsec_err"] = Column(errors[:, j] * pixel_scale, unit=u.arcsec)
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
    fmt = _format_for(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    out = table
    if fmt in ("ascii.csv", "parquet"):
        out = table.copy(copy_data=False)
        out.meta = {k: v for k, v in table.meta.items() if isinstance(v, (str, int, float))}
    out.write(tmp, format=fmt, overwrite=True)
    tmp.replace(path)
    return path


def read_table(path):
    """Read a table written by :func:`write_table` (or any FITS/ECSV/CSV/Parquet table)."""
    from astropy.table import Table

    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path}: no such file")
    fmt = _format_for(path)
    try:
        if fmt == "parquet":  # astropy's reader needs pandas; pyarrow alone suffices
            import pyarrow.parquet as pq

            arrow = pq.read_table(path)
            return Table({name: arrow.column(name).to_numpy() for name in arrow.column_names})
        return Table.read(path, format=fmt)
    except InputDataError:
        raise
    except Exception as exc:  # astropy raises many types for corrupt files
        raise InputDataError(f"{path}: cannot read table: {exc}") from exc


def catalog_params(table) -> np.ndarray:
    """The (B, 7) parameter array of a galnet catalog (``re_pix`` column as ``re``)."""
    missing = [p.column for p in PARAMETERS if p.column not in table.colnames]
    if missing:
        raise InputDataError(f"catalog lacks column(s) {', '.join(missing)}")
    return np.stack([np.asarray(table[p.column], dtype=float) for p in PARAMETERS], axis=1)
