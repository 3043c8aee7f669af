"""Draw Sérsic ⊗ PSF model images from a parameter table into a FITS cube.

The table (FITS, ECSV, CSV or Parquet) needs columns ``x, y, mag, re_pix (or re), n, q, pa`` in
galnet's conventions (see docs/conventions.md); ``id`` is optional. The PSF is a FITS image (one
PSF for all rows) or cube (one per row): an effective PSF, odd-sized and centred. ``--noise``
adds Gaussian sky noise of that sigma (counts) and, with ``--gain``, Poisson noise of the source.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from ..catalog import raise_if_truncated
from ..errors import InputDataError
from ..io import atomic_write
from ..options import (
    check_output_path,
    finite_float,
    int_in_range,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)

log = logging.getLogger(__name__)

_REQUIRED = ("x", "y", "mag", "re_pix", "n", "q", "pa")
_ALIASES = {"re": "re_pix"}
#: Stamp sides accepted by ``--shape``, pixels.
SHAPE_RANGE = (3, 1024)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", type=Path, help="parameter table (FITS/ECSV/CSV/Parquet)")
    parser.add_argument("--psf", type=Path, required=True, help="PSF FITS image (P,P) or cube (N,P,P)")
    parser.add_argument("--out", type=Path, required=True, help="output FITS cube (N, H, W)")
    parser.add_argument("--shape", type=int_in_range(*SHAPE_RANGE), nargs=2, default=(61, 61),
                        metavar=("H", "W"), help="stamp shape, pixels (each in [3, 1024]; default 61 61)")
    parser.add_argument("--zeropoint", type=finite_float, default=27.0, help="mag of 1 count/s")
    parser.add_argument("--exptime", type=positive_float, default=1.0, help="exposure time, s")
    parser.add_argument("--sky", type=finite_float, default=0.0, help="constant sky level, counts/pixel")
    parser.add_argument("--noise", type=nonnegative_float, default=0.0,
                        help="Gaussian sky noise sigma, counts (>= 0; default 0: none)")
    parser.add_argument("--gain", type=positive_float, default=None,
                        help="e-/count (> 0), adds source Poisson noise (default: none)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="noise seed (>= 0)")
    parser.add_argument("--batch-size", type=positive_int, default=1024, help="rows rendered at once (> 0)")

def read_parameter_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ids and a (B, 7) parameter array; errors name the file, column or row."""
    from ..catalog import read_table

    table = read_table(path)
    for old, new in _ALIASES.items():
        if old in table.colnames and new not in table.colnames:
            table.rename_column(old, new)
    missing = [c for c in _REQUIRED if c not in table.colnames]
    if missing:
        raise InputDataError(
            f"{path}: missing column(s) {', '.join(missing)}; have {', '.join(table.colnames)}"
        )
    unknown = [c for c in table.colnames if c not in (*_REQUIRED, "id", "re_arcsec") and not
               c.endswith("_err")]
    if unknown:
        log.warning("%s: ignoring column(s) %s", path, ", ".join(unknown))
    try:
        params = np.stack([np.asarray(table[c], dtype=float) for c in _REQUIRED], axis=1)
    except (TypeError, ValueError) as exc:
        raise InputDataError(f"{path}: non-numeric parameter column: {exc}") from exc
    ids = np.asarray(table["id"]) if "id" in table.colnames else np.arange(len(table))
    return ids, params


def _read_psf(path: Path) -> np.ndarray:
    """The PSF image (P, P) or cube (N, P, P) of ``path`` as float64 (any dtype or byte order).

    Raises
    ------
    InputDataError
        Missing, unreadable or data-less FITS file, naming it.
    """
    from astropy.io import fits

    if not path.is_file():
        raise InputDataError(f"{path}: no such PSF file")
    try:
        with warnings.catch_warnings(record=True) as caught:  # a truncated file is an error
            warnings.simplefilter("always")
            with fits.open(path, memmap=False) as hdul:
                data = next((h.data for h in hdul if h.is_image and h.data is not None), None)
                data = None if data is None else np.asarray(data, dtype=np.float64)
        raise_if_truncated(caught)
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise InputDataError(f"{path}: cannot read the PSF FITS file ({exc})") from exc
    if data is None:
        raise InputDataError(f"{path}: no image data in the PSF FITS file")
    return data


def _check_ids(ids: np.ndarray, path: Path) -> np.ndarray:
    """Ids as written to the ``IDS`` HDU: integers, or ASCII strings of at most 64 characters."""
    ids = np.asarray(ids)
    if np.issubdtype(ids.dtype, np.integer):
        return ids.astype(np.int64)
    text = ids.astype(str)
    for i, value in enumerate(text):
        if not value.isascii() or len(value) > 64:
            raise InputDataError(f"{path}: row {i}: id {value!r} must be ASCII, at most 64 characters (FITS)")
    return text


def run(args: argparse.Namespace) -> int:
    """Run ``galnet render``; returns the exit status."""
    import torch
    from astropy.io import fits

    from ..params import validate_parameters
    from .model import render_sersic
    from .psf import check_psf

    check_output_path(args.out, option="--out")
    ids, params = read_parameter_table(args.table)
    if len(params) == 0:
        raise InputDataError(f"{args.table}: the parameter table has no rows")
    validate_parameters(params, what=str(args.table))
    ids = _check_ids(ids, args.table)
    psf = check_psf(_read_psf(args.psf), name=str(args.psf))
    if psf.ndim == 3 and len(psf) != len(params):
        raise InputDataError(f"{args.psf}: PSF cube has {len(psf)} stamps for {len(params)} rows")
    shape = (int(args.shape[0]), int(args.shape[1]))
    need = len(params) * shape[0] * shape[1] * 4
    avail = _physical_memory()
    if avail and need > 0.5 * avail:
        raise InputDataError(f"--shape {shape[0]} {shape[1]} x {len(params)} rows needs "
                             f"{need / 2**30:.1f} GiB for the output cube, more than half of this "
                             f"machine's {avail / 2**30:.1f} GiB")
    rng = np.random.default_rng(args.seed)
    cube = np.empty((len(params), *shape), dtype=np.float32)
    for start in range(0, len(params), args.batch_size):
        sl = slice(start, start + args.batch_size)
        psf_b = psf[sl] if psf.ndim == 3 else psf
        img = render_sersic(torch.as_tensor(params[sl]), torch.as_tensor(psf_b), shape=shape,
                            zeropoint=args.zeropoint, exptime=args.exptime, sky=args.sky,
                            validate=False).numpy()
        if args.gain:
            img = rng.poisson(np.clip(img, 0, None) * args.gain) / args.gain
        if args.noise > 0:
            img = img + rng.normal(0.0, args.noise, img.shape)
        cube[sl] = img
    hdr = fits.Header()
    hdr["BUNIT"] = "count"
    hdr["MAGZERO"] = (args.zeropoint, "zero point: mag of 1 count / s")
    hdr["EXPTIME"] = args.exptime
    hdr["SKYSIG"] = (args.noise, "Gaussian sky noise sigma added, counts")
    hdr["GAIN"] = (args.gain or 0.0, "e-/count for source Poisson noise (0 = none)")
    hdr["NOISESD"] = (args.seed, "noise seed")
    hdr["ORIGIN"] = "galnet render"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    id_col = (fits.Column("id", format="K", array=ids) if np.issubdtype(ids.dtype, np.integer)
              else fits.Column("id", format="64A", array=ids))
    ids_hdu = fits.BinTableHDU.from_columns([id_col], name="IDS")
    hdul = fits.HDUList([fits.PrimaryHDU(cube, header=hdr), ids_hdu])
    atomic_write(args.out, lambda tmp: hdul.writeto(tmp, overwrite=True))
    print(f"wrote {len(cube)} stamps {shape} to {args.out}")
    return 0


def _physical_memory() -> int:
    """Bytes of physical memory (0 if unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0
