"""Draw Sérsic ⊗ PSF model images from a parameter table into a FITS cube.

The table (FITS, ECSV, CSV or Parquet) needs columns ``x, y, mag, re_pix (or re), n, q, pa`` in
galnet's conventions (see docs/conventions.md); ``id`` is optional. The PSF is a FITS image (one
PSF for all rows) or cube (one per row): an effective PSF, odd-sized and centred. ``--noise``
adds Gaussian sky noise of that sigma (counts) and, with ``--gain``, Poisson noise of the source.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ..errors import InputDataError

log = logging.getLogger(__name__)

_REQUIRED = ("x", "y", "mag", "re_pix", "n", "q", "pa")
_ALIASES = {"re": "re_pix"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", type=Path, help="parameter table (FITS/ECSV/CSV/Parquet)")
    parser.add_argument("--psf", type=Path, required=True, help="PSF FITS image (P,P) or cube (N,P,P)")
    parser.add_argument("--out", type=Path, required=True, help="output FITS cube (N, H, W)")
    parser.add_argument("--shape", type=int, nargs=2, default=(61, 61), metavar=("H", "W"))
    parser.add_argument("--zeropoint", type=float, default=27.0)
    parser.add_argument("--exptime", type=float, default=1.0)
    parser.add_argument("--sky", type=float, default=0.0, help="constant sky level, counts/pixel")
    parser.add_argument("--noise", type=float, default=0.0, help="Gaussian sky noise sigma, counts")
    parser.add_argument("--gain", type=float, default=None, help="e-/count, adds source Poisson noise")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--batch-size", type=int, default=1024)


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


def run(args: argparse.Namespace) -> int:
    import torch
    from astropy.io import fits

    from ..params import validate_parameters
    from .model import render_sersic
    from .psf import validate_psf_image

    ids, params = read_parameter_table(args.table)
    validate_parameters(params, what=str(args.table))
    if not args.psf.exists():
        raise InputDataError(f"{args.psf}: no such PSF file")
    psf = validate_psf_image(fits.getdata(args.psf), name=str(args.psf))
    if psf.ndim == 3 and len(psf) != len(params):
        raise InputDataError(f"{args.psf}: PSF cube has {len(psf)} stamps for {len(params)} rows")
    rng = np.random.default_rng(args.seed)
    cube = np.empty((len(params), *args.shape), dtype=np.float32)
    for start in range(0, len(params), args.batch_size):
        sl = slice(start, start + args.batch_size)
        psf_b = psf[sl] if psf.ndim == 3 else psf
        img = render_sersic(torch.as_tensor(params[sl]), torch.as_tensor(psf_b), shape=args.shape,
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
    ids = np.asarray(ids)
    id_col = (fits.Column("id", format="K", array=ids.astype(np.int64))
              if np.issubdtype(ids.dtype, np.integer)
              else fits.Column("id", format="64A", array=ids.astype(str)))
    ids_hdu = fits.BinTableHDU.from_columns([id_col], name="IDS")
    fits.HDUList([fits.PrimaryHDU(cube, header=hdr), ids_hdu]).writeto(args.out, overwrite=True)
    print(f"wrote {len(cube)} stamps {tuple(args.shape)} to {args.out}")
    return 0
