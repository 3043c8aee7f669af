"""``galnet fit``: batched least-squares Sérsic ⊗ PSF fits of stamps, written as a galnet catalog.

Inputs: an HDF5 split from ``galnet simulate`` (images, psfs, sky_sigma, ids, optional sigma_maps),
a FITS image or cube (with ``--psf``), or a directory of FITS cutouts (read by :mod:`galnet.data`). Every
input row appears in the output; rows that cannot be fitted are flagged (see ``galnet.flags``) and logged.
This module only parses the arguments: the run (batches, shards, ``--resume``, the catalog) is
:func:`galnet.fit.fit_catalog`.
"""

from __future__ import annotations

import argparse

import numpy as np

from ..options import finite_float, nonnegative_float, positive_float, positive_int
from .config import ERROR_SCALES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input",
                        help="HDF5 split (.h5/.hdf5), FITS image/cube, or a directory of FITS cutouts")
    parser.add_argument("-o", "--output", required=True,
                        help="catalog (.fits default; .ecsv, .csv, .parquet)")
    parser.add_argument("--psf", help="PSF FITS image (P, P) or cube (N, P, P) (FITS inputs)")
    parser.add_argument("--sigma", help="sigma map FITS (same shape as the input)")
    parser.add_argument("--mask", help="bad-pixel mask FITS (non-zero = bad, as GALFIT)")
    parser.add_argument("--mask-neighbours", action=argparse.BooleanOptionalAction, default=True,
                        help="detect the other sources on each stamp and mask them (grown by a few px; the "
                        "target's segment is never masked), combined with --mask / the dataset's masks; "
                        "rows with masked sources get the NEIGHBOURS_MASKED flag and n_masked > 0 "
                        "(default: on; --no-mask-neighbours to fit all pixels)")
    parser.add_argument("--start", default="moments",
                        help="moments | catalog:FILE (e.g. network predictions) | feedme:FILE")
    parser.add_argument("--n-grid", default="", help="comma-separated Sérsic indices to start from "
                        "(keeps the lowest chi2), e.g. 1,4; default: one start")
    parser.add_argument("--fit-sky", action="store_true", help="fit a constant sky per stamp")
    parser.add_argument("--zeropoint", type=finite_float, default=None, help="magnitude zero point (default: "
                        "dataset meta / MAGZPT header / 27.0)")
    parser.add_argument("--gain", type=positive_float, default=None,
                        help="e-/ADU for the data-based sigma map")
    parser.add_argument("--read-noise", type=nonnegative_float, default=0.0,
                        help="read noise, e- (GALFIT RDNOISE)")
    parser.add_argument("--sky-sigma", type=positive_float, default=None,
                        help="sky noise, counts/px (FITS inputs)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="stamps per batch")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="worker processes, one torch thread each (default 1: this process, with "
                        "torch's default threads); use the number of cores: fits scale with processes, "
                        "not threads")
    parser.add_argument("--max-iter", type=positive_int, default=100)
    parser.add_argument("--error-scale", choices=ERROR_SCALES, default="none",
                        help="none: covariance errors as GALFIT's (default); chi2nu: times sqrt(chi2nu); "
                        "correlated: times the residual-correlation factor (correlated coadd noise)")
    parser.add_argument("--limit", type=positive_int, default=None, help="fit only the first N stamps")
    parser.add_argument("--detect-snr", type=nonnegative_float, default=3.0,
                        help="rows whose detection S/N near the stamp centre is below this get NO_SOURCE and "
                        "NaN values, not fitted (galnet.detection; default 3; 0: no test)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from <output>.parts/ (same input and options)")
    parser.add_argument("--max-batches", type=positive_int, default=None,
                        help="stop after this many new batches, without the catalog (continue with --resume)")
    parser.add_argument("--keep-parts", action="store_true",
                        help="keep <output>.parts/ after the catalog is written")
    parser.add_argument("--pixel-scale", type=positive_float, default=None,
                        help="arcsec/px (default meta or 0.168)")


def run(args: argparse.Namespace) -> int:
    from ..data.shards import parts_dir
    from ..flags import Flag, any_set
    from ..options import float_list
    from ..params import PARAMETERS, index
    from .catalog import fit_catalog

    lo, hi = PARAMETERS[index("n")].fit_bounds
    n_grid = float_list(args.n_grid, option="--n-grid", lo=lo, hi=hi)
    args._interrupt_hint = (f"finished batches are kept in {parts_dir(args.output)}/; "
                            "rerun the same command with --resume to continue")
    table = fit_catalog(
        args.input, args.output, psf=args.psf, sigma=args.sigma, mask=args.mask, sky_sigma=args.sky_sigma,
        resume=args.resume, max_batches=args.max_batches, start=args.start, n_grid=tuple(n_grid),
        fit_sky=bool(args.fit_sky), mask_neighbours=bool(args.mask_neighbours), zeropoint=args.zeropoint,
        gain=args.gain, read_noise=args.read_noise, pixel_scale=args.pixel_scale, batch_size=args.batch_size,
        workers=args.workers, max_iter=args.max_iter, error_scale=args.error_scale, limit=args.limit,
        detect_snr=args.detect_snr, keep_parts=args.keep_parts,
    )
    if table is None:
        print(f"galnet fit: stopped after {args.max_batches} batch(es); continue with --resume")
        return 0
    flags = np.asarray(table["flags"])
    n_ok = int(np.sum(np.asarray(table["status"]) >= 0))
    dt = float(table.meta.get("TPERGAL", 0.0)) * len(table)
    counts = ", ".join(f"{int(any_set(flags, f).sum())} {f.name}" for f in (Flag.BAD_INPUT, Flag.NO_SOURCE,
                                                                            Flag.FAILED))
    print(f"galnet fit: {n_ok}/{len(table)} stamps fitted ({counts}) in {dt:.1f} s -> {args.output}")
    return 0
