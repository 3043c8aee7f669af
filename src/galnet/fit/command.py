"""``galnet fit``: batched least-squares Sérsic ⊗ PSF fits of stamps, written as a galnet catalog.

Inputs: an HDF5 split from ``galnet simulate`` (images, psfs, sky_sigma, ids, optional sigma_maps),
a FITS image or cube (with ``--psf``), or a directory of FITS cutouts. Every input row appears in
the output; rows that cannot be fitted are flagged (see ``galnet.flags``) and logged.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import InputDataError

log = logging.getLogger(__name__)


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
    parser.add_argument("--zeropoint", type=float, default=None, help="magnitude zero point (default: "
                        "dataset meta / MAGZPT header / 27.0)")
    parser.add_argument("--gain", type=float, default=None, help="e-/ADU for the data-based sigma map")
    parser.add_argument("--read-noise", type=float, default=0.0, help="read noise, e- (GALFIT RDNOISE)")
    parser.add_argument("--sky-sigma", type=float, default=None, help="sky noise, counts/px (FITS inputs)")
    parser.add_argument("--batch-size", type=int, default=256, help="stamps per batch")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes, one torch thread each (default 1: this process, with "
                        "torch's default threads); use the number of cores: fits scale with processes, "
                        "not threads")
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--limit", type=int, default=None, help="fit only the first N stamps")
    parser.add_argument("--pixel-scale", type=float, default=None, help="arcsec/px (default meta or 0.168)")


def _read_fits(path, what: str) -> tuple[np.ndarray, dict]:
    from astropy.io import fits

    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path}: no such {what} file")
    try:
        with fits.open(path) as hdul:
            hdu = next((h for h in hdul if h.data is not None), None)
            if hdu is None:
                raise InputDataError(f"{path}: no image data in any HDU")
            return np.asarray(hdu.data, dtype=float), dict(hdu.header)
    except OSError as exc:
        raise InputDataError(f"{path}: cannot read {what}: {exc}") from exc


def sigma_from_data(images: np.ndarray, *, gain: float, sky_sigma, read_noise: float = 0.0,
                    ncombine: float = 1.0) -> np.ndarray:
    """GALFIT-style σ map (counts): ``sqrt(sky_sigma² + max(data, 0)/(gain·ncombine) + (rdnoise/gain)²)``.

    Parameters
    ----------
    images : ndarray (B, H, W), sky-subtracted counts
    gain : float, e-/count; sky_sigma : float or (B,), counts/px; read_noise : e-
    """
    sky = np.asarray(sky_sigma, dtype=float).reshape(-1, 1, 1) if np.ndim(sky_sigma) else float(sky_sigma)
    var = sky**2 + np.maximum(np.nan_to_num(images), 0.0) / (gain * ncombine) + (read_noise / gain) ** 2
    return np.sqrt(var)


def _iter_hdf5(path: Path, batch: int, limit: int | None):
    try:
        from ..data import read_arrays, read_meta
    except ImportError:  # pragma: no cover - galnet.data is part of the package
        read_arrays = read_meta = None
    import h5py

    if read_meta is not None:
        meta = read_meta(path)
    else:
        with h5py.File(path, "r") as f:
            meta = json.loads(f.attrs.get("meta", "{}"))
    with h5py.File(path, "r") as f:
        if "images" not in f:
            raise InputDataError(f"{path}: no 'images' dataset")
        n = f["images"].shape[0]
        keys = [k for k in ("images", "psfs", "sky_sigma", "ids", "sigma_maps", "masks") if k in f]
    n = n if limit is None else min(n, limit)
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        if read_arrays is not None:
            arr = read_arrays(path, start, stop, keys=keys)
        else:
            with h5py.File(path, "r") as f:
                arr = {k: f[k][start:stop] for k in keys}
        ids = arr.get("ids", np.arange(start, stop))
        if getattr(ids, "dtype", None) is not None and ids.dtype.kind in "SO":
            ids = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in ids])
        yield start, ids, arr, meta


def _fit_batches(batches, args, cfg, start_mode, start_table, n_grid, fitter, rows) -> None:
    """Mask neighbours and fit every batch with ``fitter``; appends (ids, FitResult, n_masked) to ``rows``."""
    from ..flags import Flag
    from .masking import neighbour_mask
    from .solver import FitResult, fit_multistart
    from .starts import catalog_start, feedme_start, moments_start, with_n

    for ids, images, psf, sigma, mask, zp, exptime in batches:
        b = len(images)
        if start_mode == "moments":
            init = None
        elif start_table is not None:
            init = catalog_start(start_table, ids)
            for i in np.flatnonzero(~np.all(np.isfinite(init), axis=1)):
                log.error("row %s: id %s has no usable start in %s", i, ids[i], start_mode)
        else:
            init = feedme_start(start_mode.split(":", 1)[1], b)
        n_masked = np.zeros(b, dtype=np.int64)
        if args.mask_neighbours:
            # around the start position when there is one (hybrid / feedme), else the stamp centre
            centre = None if init is None else np.asarray(init, dtype=float)[:, :2]
            try:
                nb, n_masked = neighbour_mask(images, sigma, mask=mask, centre=centre, psf=psf)
            except InputDataError as exc:  # e.g. a PSF cube that does not match the batch: fit unmasked
                log.error("batch starting at id %s: neighbour masking skipped: %s", ids[0], exc)
            else:
                mask = nb if mask is None else (np.asarray(mask) != 0) | nb
        kw = dict(sigma=sigma, mask=mask, fit_sky=args.fit_sky, zeropoint=zp, exptime=exptime, config=cfg)
        try:
            if n_grid:
                base = init
                if base is None:
                    sig_w = (None if sigma is None
                             else np.where(np.isfinite(sigma) & (sigma > 0), sigma, np.inf))
                    masked = images if mask is None else np.where(np.asarray(mask) != 0, np.nan, images)
                    base = moments_start(masked, sigma=sig_w, zeropoint=zp, exptime=exptime)
                res = fit_multistart(images, psf, [with_n(base, n) for n in n_grid], fitter=fitter, **kw)
            else:
                res = fitter(images, psf, init=init, **kw)
        except InputDataError as exc:  # a whole batch unusable (e.g. bad shared PSF): flag and go on
            log.error("batch starting at id %s: %s; rows flagged BAD_INPUT", ids[0], exc)
            res = FitResult.empty(b)
            res.flags[:] = int(Flag.BAD_INPUT)
        res.flags[n_masked > 0] |= int(Flag.NEIGHBOURS_MASKED)
        for i, msg in enumerate(res.messages):
            if msg:
                log.warning("id %s: %s", ids[i], msg.strip().rstrip(";"))
        rows.append((ids, res, n_masked))


def run(args: argparse.Namespace) -> int:
    from ..catalog import make_catalog, write_table
    from ..conventions import DEFAULT_ZEROPOINT, HSC_PIXEL_SCALE
    from .parallel import FitPool
    from .solver import FitConfig, FitResult, fit_stamps

    inp = Path(args.input)
    if not inp.exists():
        raise InputDataError(f"{inp}: no such input")
    cfg = FitConfig(max_iter=args.max_iter, max_batch=args.batch_size)
    n_grid = [float(v) for v in args.n_grid.split(",") if v.strip()]
    start_mode = args.start
    if not (start_mode == "moments" or start_mode.startswith(("catalog:", "feedme:"))):
        raise InputDataError(f"--start {start_mode!r}: use moments, catalog:FILE or feedme:FILE")
    start_table = None
    if start_mode.startswith("catalog:"):
        from ..catalog import read_table

        start_table = read_table(start_mode.split(":", 1)[1])

    # ---- collect batches: (ids, images, psf, sigma, mask, zeropoint, exptime)
    batches = []
    meta: dict = {}
    if inp.suffix.lower() in (".h5", ".hdf5"):
        for _start, ids, arr, meta in _iter_hdf5(inp, args.batch_size, args.limit):
            zp = (args.zeropoint if args.zeropoint is not None
                  else float(meta.get("zeropoint", DEFAULT_ZEROPOINT)))
            gain = args.gain if args.gain is not None else meta.get("gain")
            images = arr["images"].astype(float)
            if "sigma_maps" in arr:
                sigma = arr["sigma_maps"].astype(float)
            elif gain:
                sigma = sigma_from_data(images, gain=float(gain), sky_sigma=arr["sky_sigma"],
                                        read_noise=args.read_noise)
            else:
                sigma = np.broadcast_to(arr["sky_sigma"].astype(float)[:, None, None], images.shape)
            batches.append((ids, images, arr["psfs"].astype(float), sigma, arr.get("masks"), zp, 1.0))
    else:
        if inp.is_dir():
            files = sorted(p for p in inp.iterdir() if p.name.lower().endswith((".fits", ".fit", ".fits.gz")))
            if not files:
                raise InputDataError(f"{inp}: no FITS files in directory")
            imgs, ids, hdr0, bad = [], [], {}, []
            for fpath in files:
                try:
                    data, hdr = _read_fits(fpath, "cutout")
                    hdr0 = hdr0 or hdr
                except InputDataError as exc:
                    log.error("%s", exc)
                    data = None
                imgs.append(data)
                ids.append(fpath.name)
            shapes = [d.shape for d in imgs if d is not None and d.ndim == 2]
            if not shapes:
                raise InputDataError(f"{inp}: no readable 2-D cutouts")
            shape = max(set(shapes), key=shapes.count)
            cube = np.full((len(imgs), *shape), np.nan)
            for i, d in enumerate(imgs):
                if d is not None and d.shape == shape:
                    cube[i] = d
                else:
                    bad.append(i)
                    log.error("%s: shape %s differs from the common %s (or unreadable); flagged BAD_INPUT",
                              files[i], None if d is None else d.shape, shape)
            header = hdr0
            ids = np.array(ids)
        else:
            cube, header = _read_fits(inp, "image")
            if cube.ndim == 2:
                cube = cube[None]
            ids = np.arange(len(cube))
        if not args.psf:
            raise InputDataError("FITS inputs need --psf")
        psf, _ = _read_fits(args.psf, "PSF")
        sigma = None
        if args.sigma:
            sigma, _ = _read_fits(args.sigma, "sigma")
            sigma = sigma.reshape(cube.shape) if sigma.size == cube.size else None
            if sigma is None:
                raise InputDataError(f"{args.sigma}: sigma shape differs from the input {cube.shape}")
        gain = args.gain if args.gain is not None else header.get("GAIN")
        exptime = float(header.get("EXPTIME", 1.0) or 1.0)
        if sigma is None and gain:
            ncomb = float(header.get("NCOMBINE", 1) or 1)
            rdn = args.read_noise or float(header.get("RDNOISE", 0.0) or 0.0)
            sky_sig = (args.sky_sigma if args.sky_sigma is not None
                       else float(header.get("SKYSIG", 0.0) or 0.0))
            sigma = sigma_from_data(cube, gain=float(gain), sky_sigma=sky_sig, read_noise=rdn, ncombine=ncomb)
        elif sigma is None and args.sky_sigma is not None:
            sigma = np.full(cube.shape, float(args.sky_sigma))
        mask = None
        if args.mask:
            mask, _ = _read_fits(args.mask, "mask")
            if mask.size != cube.size:
                raise InputDataError(
                    f"{args.mask}: mask shape {mask.shape} differs from the input {cube.shape}")
            mask = mask.reshape(cube.shape) != 0
        zp = (args.zeropoint if args.zeropoint is not None
              else float(header.get("MAGZPT", DEFAULT_ZEROPOINT)))
        if args.limit:
            cube, ids = cube[: args.limit], ids[: args.limit]
        for s in range(0, len(cube), args.batch_size):
            sl = slice(s, s + args.batch_size)
            p = psf[sl] if psf.ndim == 3 else psf
            batches.append((ids[sl], cube[sl], p, None if sigma is None else sigma[sl],
                            None if mask is None else mask[sl], zp, exptime))

    # ---- fit
    rows = []
    if args.workers < 1:
        raise InputDataError(f"--workers must be >= 1, got {args.workers}")
    pool = FitPool(args.workers) if args.workers > 1 else None
    fitter = pool.fit_stamps if pool is not None else fit_stamps
    t0 = time.perf_counter()
    try:
        _fit_batches(batches, args, cfg, start_mode, start_table, n_grid, fitter, rows)
    finally:
        if pool is not None:
            pool.close()
    dt = time.perf_counter() - t0
    ids = np.concatenate([r[0] for r in rows])
    n_masked_all = np.concatenate([r[2] for r in rows])
    cat_res = FitResult.empty(len(ids))
    k = 0
    for _, r, _ in rows:
        n = len(r.params)
        cat_res.take(r, np.arange(k, k + n))
        k += n
    pixel_scale = args.pixel_scale or float(meta.get("pixel_scale", HSC_PIXEL_SCALE))
    extra = {
        "sky": cat_res.sky, "sky_err": cat_res.sky_err, "chi2": cat_res.chi2, "ndof": cat_res.ndof,
        "chi2nu": cat_res.chi2nu, "niter": cat_res.niter, "status": cat_res.status,
        "n_masked": n_masked_all,
    }
    table = make_catalog(ids, cat_res.params, errors=cat_res.errors, flags=cat_res.flags,
                         pixel_scale=pixel_scale, zeropoint=batches[0][5] if batches else DEFAULT_ZEROPOINT,
                         extra=extra, meta={"FITSTART": start_mode, "FITSKY": bool(args.fit_sky),
                                            "NBMASK": bool(args.mask_neighbours),
                                            "TPERGAL": dt / max(len(ids), 1)})
    write_table(table, args.output)
    n_ok = int(np.sum(cat_res.status >= 0))
    log.info("fitted %d/%d stamps in %.1f s (%.1f ms/galaxy); catalog %s", n_ok, len(ids), dt,
             1e3 * dt / max(len(ids), 1), args.output)
    print(f"galnet fit: {n_ok}/{len(ids)} stamps fitted in {dt:.1f} s -> {args.output}")
    return 0
