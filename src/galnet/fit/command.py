"""``galnet fit``: batched least-squares Sérsic ⊗ PSF fits of stamps, written as a galnet catalog.

Inputs: an HDF5 split from ``galnet simulate`` (images, psfs, sky_sigma, ids, optional sigma_maps),
a FITS image or cube (with ``--psf``), or a directory of FITS cutouts. Every input row appears in
the output; rows that cannot be fitted are flagged (see ``galnet.flags``) and logged.

The input is read one batch (``--batch-size`` stamps) at a time; each fitted batch is written atomically
as one shard ``<output>.parts/part-<start>.npz`` and dropped, so memory is bounded by the batch and a
killed run loses at most the batch in progress: ``--resume`` keeps the finished shards (after checking
in ``manifest.json`` that the input and the options that change results are the same) and fits the rest.
The catalog is assembled from the shards at the end (as ``galnet predict`` does).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import shutil
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
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from <output>.parts/ (same input and options)")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="stop after this many new batches, without the catalog (continue with --resume)")
    parser.add_argument("--keep-parts", action="store_true",
                        help="keep <output>.parts/ after the catalog is written")
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


class _FitsRows:
    """A FITS image (H, W) or cube (N, H, W) kept open for the run; rows are read when asked for
    (through the memory map for uncompressed files), so a large cube is never loaded whole."""

    def __init__(self, path, what: str, stack: contextlib.ExitStack) -> None:
        from astropy.io import fits

        self.path = Path(path)
        if not self.path.exists():
            raise InputDataError(f"{self.path}: no such {what} file")
        self.what = what
        try:
            hdul = stack.enter_context(fits.open(self.path))
            self.hdu = next((h for h in hdul if h.data is not None), None)
        except OSError as exc:
            raise InputDataError(f"{self.path}: cannot read {what}: {exc}") from exc
        if self.hdu is None:
            raise InputDataError(f"{self.path}: no image data in any HDU")
        self.header = dict(self.hdu.header)
        self.shape = tuple(self.hdu.data.shape)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))
        self._full: np.ndarray | None = None

    def all(self) -> np.ndarray:
        if self._full is None:
            self._full = np.asarray(self.hdu.data, dtype=float)
        return self._full

    def rows(self, start: int, stop: int, shape3: tuple[int, ...] | None = None) -> np.ndarray:
        """Rows ``start:stop`` of the data seen as ``shape3`` (default: a 2-D image is one row)."""
        own = (1, *self.shape) if self.ndim == 2 else self.shape
        if shape3 is not None and tuple(shape3) != own:  # same size, other layout: reshape it all (rare)
            return self.all().reshape(shape3)[start:stop]
        try:
            data = self.hdu.data
            return np.array((data[None] if self.ndim == 2 else data)[start:stop], dtype=float)
        except OSError as exc:
            raise InputDataError(f"{self.path}: cannot read {self.what}: {exc}") from exc


def _fits_shape(path: Path, what: str) -> tuple[tuple[int, ...], dict]:
    """Shape and header of the first HDU with data (the one :func:`_read_fits` reads), data not read."""
    with contextlib.ExitStack() as stack:
        f = _FitsRows(path, what, stack)
        return f.shape, f.header


def _file_fingerprint(path) -> dict | str:
    from ..predict.inputs import _file_id

    path = Path(path)
    return _file_id(path) if path.exists() else str(path)


def _open_hdf5(inp: Path, args, stack):
    """(n_rows, fingerprint, zeropoint, meta, read(start, stop) -> batch) of an HDF5 split."""
    import h5py

    from ..conventions import DEFAULT_ZEROPOINT
    from ..data import read_arrays, read_meta

    meta = read_meta(inp)
    with h5py.File(inp, "r") as f:
        if "images" not in f:
            raise InputDataError(f"{inp}: no 'images' dataset")
        n = f["images"].shape[0]
        keys = [k for k in ("images", "psfs", "sky_sigma", "ids", "sigma_maps", "masks") if k in f]
    zp = args.zeropoint if args.zeropoint is not None else float(meta.get("zeropoint", DEFAULT_ZEROPOINT))
    gain = args.gain if args.gain is not None else meta.get("gain")

    def read(start: int, stop: int):
        arr = read_arrays(inp, start, stop, keys=keys)
        ids = arr.get("ids", np.arange(start, stop))
        if getattr(ids, "dtype", None) is not None and ids.dtype.kind in "SO":
            ids = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in ids])
        images = arr["images"].astype(float)
        if "sigma_maps" in arr:
            sigma = arr["sigma_maps"].astype(float)
        elif gain:
            sigma = sigma_from_data(images, gain=float(gain), sky_sigma=arr["sky_sigma"],
                                    read_noise=args.read_noise)
        else:
            sigma = np.broadcast_to(arr["sky_sigma"].astype(float)[:, None, None], images.shape)
        return ids, images, arr["psfs"].astype(float), sigma, arr.get("masks"), zp, 1.0, None

    return n, {"kind": "hdf5", **_file_fingerprint(inp)}, zp, meta, read


def _open_fits(inp: Path, args, stack):
    """(n_rows, fingerprint, zeropoint, meta, read(start, stop) -> batch) of a FITS cube / image or a
    directory of FITS cutouts, with ``--psf``, ``--sigma``, ``--mask``."""
    from ..conventions import DEFAULT_ZEROPOINT

    if inp.is_dir():
        files = sorted(p for p in inp.iterdir() if p.name.lower().endswith((".fits", ".fit", ".fits.gz")))
        if not files:
            raise InputDataError(f"{inp}: no FITS files in directory")
        shapes: list = []
        header: dict = {}
        for fpath in files:  # shapes and headers only: the pixels are read batch by batch
            try:
                shp, hdr = _fits_shape(fpath, "cutout")
                header = header or hdr
            except InputDataError as exc:
                log.error("%s", exc)
                shp = None
            shapes.append(shp)
        good = [s for s in shapes if s is not None and len(s) == 2]
        if not good:
            raise InputDataError(f"{inp}: no readable 2-D cutouts")
        shape = max(set(good), key=good.count)
        all_ids = np.array([f.name for f in files])
        shape3 = (len(files), *shape)
        names = "\n".join(f.name for f in files).encode()
        fingerprint = {"kind": "directory", "dir": str(inp.resolve()), "n_files": len(files),
                       "names_sha256": hashlib.sha256(names).hexdigest()}

        def read_images(start: int, stop: int):
            cube = np.full((stop - start, *shape), np.nan)
            bad = np.zeros(stop - start, dtype=bool)
            for k, i in enumerate(range(start, stop)):
                d, got = None, shapes[i]
                if got == shape:
                    try:
                        d, _ = _read_fits(files[i], "cutout")
                    except InputDataError as exc:
                        log.error("%s", exc)
                    got = None if d is None else d.shape
                if got == shape:
                    cube[k] = d
                else:
                    bad[k] = True
                    log.error("%s: shape %s differs from the common %s (or unreadable); flagged BAD_INPUT",
                              files[i], got, shape)
            return all_ids[start:stop], cube, bad
    else:
        src = _FitsRows(inp, "image", stack)
        if src.ndim not in (2, 3):
            raise InputDataError(f"{inp}: expected an image (H, W) or a cube (N, H, W), got {src.shape}")
        header = src.header
        shape3 = (1, *src.shape) if src.ndim == 2 else src.shape
        fingerprint = {"kind": "fits", **_file_fingerprint(inp)}

        def read_images(start: int, stop: int):
            return np.arange(start, stop), src.rows(start, stop), None

    if not args.psf:
        raise InputDataError("FITS inputs need --psf")
    psf_src = _FitsRows(args.psf, "PSF", stack)
    fingerprint["psf"] = _file_fingerprint(args.psf)
    size = int(np.prod(shape3))
    sig_src = mask_src = None
    if args.sigma:
        sig_src = _FitsRows(args.sigma, "sigma", stack)
        if sig_src.size != size:
            raise InputDataError(f"{args.sigma}: sigma shape differs from the input {shape3}")
        fingerprint["sigma"] = _file_fingerprint(args.sigma)
    if args.mask:
        mask_src = _FitsRows(args.mask, "mask", stack)
        if mask_src.size != size:
            raise InputDataError(f"{args.mask}: mask shape {mask_src.shape} differs from the input {shape3}")
        fingerprint["mask"] = _file_fingerprint(args.mask)
    gain = args.gain if args.gain is not None else header.get("GAIN")
    exptime = float(header.get("EXPTIME", 1.0) or 1.0)
    ncomb = float(header.get("NCOMBINE", 1) or 1)
    rdn = args.read_noise or float(header.get("RDNOISE", 0.0) or 0.0)
    sky_sig = args.sky_sigma if args.sky_sigma is not None else float(header.get("SKYSIG", 0.0) or 0.0)
    zp = args.zeropoint if args.zeropoint is not None else float(header.get("MAGZPT", DEFAULT_ZEROPOINT))

    def read(start: int, stop: int):
        ids, images, bad = read_images(start, stop)
        psf = psf_src.rows(start, stop) if psf_src.ndim == 3 else psf_src.all()
        sigma = None if sig_src is None else sig_src.rows(start, stop, shape3)
        if sigma is None and gain:
            sigma = sigma_from_data(images, gain=float(gain), sky_sigma=sky_sig, read_noise=rdn,
                                    ncombine=ncomb)
        elif sigma is None and args.sky_sigma is not None:
            sigma = np.full(images.shape, float(args.sky_sigma))
        mask = None if mask_src is None else mask_src.rows(start, stop, shape3) != 0
        return ids, images, psf, sigma, mask, zp, exptime, bad

    return shape3[0], fingerprint, zp, {}, read


def _fit_batch(batch, args, cfg, start_mode, start_table, n_grid, fitter, masker=None):
    """Mask neighbours with ``masker`` and fit one batch with ``fitter``; returns (FitResult, n_masked).

    ``masker``: :func:`galnet.fit.neighbour_mask` (default) or a :class:`galnet.fit.FitPool`'s.
    """
    from ..flags import Flag
    from .masking import neighbour_mask
    from .solver import FitResult, fit_multistart
    from .starts import catalog_start, feedme_start, moments_start, with_n

    ids, images, psf, sigma, mask, zp, exptime, bad = batch
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
            nb, n_masked = (masker or neighbour_mask)(images, sigma, mask=mask, centre=centre, psf=psf)
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
    if bad is not None:  # unreadable cutouts, or of another shape than the rest
        res.flags[np.asarray(bad, dtype=bool)] |= int(Flag.BAD_INPUT)
    for i, msg in enumerate(res.messages):
        if msg:
            log.warning("id %s: %s", ids[i], msg.strip().rstrip(";"))
    return res, n_masked


_RESULT_COLUMNS = ("params", "errors", "sky", "sky_err", "chi2", "ndof", "chi2nu", "niter", "status", "flags")


def _manifest(args, fingerprint: dict, n_rows: int, n_grid: list[float], output: Path) -> dict:
    """What must match for ``--resume`` to reuse shards: the input and every option that changes results."""
    from ..predict.runner import MANIFEST_VERSION

    start: dict = {"mode": args.start}
    if ":" in args.start:
        start["file"] = _file_fingerprint(args.start.split(":", 1)[1])
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "tool": "galnet fit",
        "input": fingerprint,
        "n_rows": n_rows,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "start": start,
        "n_grid": n_grid,
        "fit_sky": bool(args.fit_sky),
        "zeropoint": args.zeropoint,
        "gain": args.gain,
        "read_noise": args.read_noise,
        "sky_sigma": args.sky_sigma,
        "mask_neighbours": bool(args.mask_neighbours),
        "max_iter": args.max_iter,
        "output": output.name,
    }
    return json.loads(json.dumps(manifest, default=str))  # as read back from manifest.json


def run(args: argparse.Namespace) -> int:
    from ..catalog import _format_for, make_catalog, write_table
    from ..conventions import HSC_PIXEL_SCALE
    from ..predict.runner import (
        _done_chunks,
        _prepare_parts,
        chunk_bounds,
        load_shards,
        parts_dir,
        write_shard,
    )
    from .parallel import FitPool
    from .solver import FitConfig, fit_stamps

    inp = Path(args.input)
    if not inp.exists():
        raise InputDataError(f"{inp}: no such input")
    output = Path(args.output)
    _format_for(output)  # fail early on an unknown extension, not after the fits
    if args.workers < 1:
        raise InputDataError(f"--workers must be >= 1, got {args.workers}")
    if args.batch_size < 1:
        raise InputDataError(f"--batch-size must be >= 1, got {args.batch_size}")
    cfg = FitConfig(max_iter=args.max_iter, max_batch=args.batch_size)
    n_grid = [float(v) for v in args.n_grid.split(",") if v.strip()]
    start_mode = args.start
    if not (start_mode == "moments" or start_mode.startswith(("catalog:", "feedme:"))):
        raise InputDataError(f"--start {start_mode!r}: use moments, catalog:FILE or feedme:FILE")
    start_table = None
    if start_mode.startswith("catalog:"):
        from ..catalog import read_table

        start_table = read_table(start_mode.split(":", 1)[1])

    t_wall = time.perf_counter()
    with contextlib.ExitStack() as stack:
        opener = _open_hdf5 if inp.suffix.lower() in (".h5", ".hdf5") else _open_fits
        n_all, fingerprint, zp, meta, read = opener(inp, args, stack)
        n = n_all if args.limit is None else max(0, min(n_all, args.limit))
        if n == 0:
            raise InputDataError(f"{inp}: no stamps to fit")
        pdir = parts_dir(output)
        _prepare_parts(pdir, _manifest(args, fingerprint, n, n_grid, output), args.resume)
        bounds = chunk_bounds(n, args.batch_size)
        done = _done_chunks(pdir, bounds, False) if args.resume else set()
        if done:
            log.info("resuming: %d of %d batches already fitted in %s", len(done), len(bounds), pdir)
        todo = [b for b in bounds if b[0] not in done]
        if args.max_batches is not None:
            todo = todo[: max(0, args.max_batches)]
        pool = FitPool(args.workers) if args.workers > 1 else None
        fitter = pool.fit_stamps if pool is not None else fit_stamps
        masker = pool.neighbour_mask if pool is not None else None
        try:
            for start, stop in todo:  # one batch in memory at a time; each written as a shard, then dropped
                batch = read(start, stop)
                t0 = time.perf_counter()
                res, n_masked = _fit_batch(batch, args, cfg, start_mode, start_table, n_grid, fitter, masker)
                shard = {"rows": np.arange(start, stop, dtype=np.int64), "ids": np.asarray(batch[0])}
                shard.update({k: getattr(res, k) for k in _RESULT_COLUMNS})
                shard["n_masked"] = n_masked
                shard["messages"] = np.array(res.messages, dtype=str)
                shard["seconds"] = np.array([time.perf_counter() - t0])
                write_shard(pdir, shard)
                log.info("rows %d..%d fitted (%.1f s)", start, stop - 1, float(shard["seconds"][0]))
        finally:
            if pool is not None:
                pool.close()

    left = len(bounds) - len(done) - len(todo)
    if left:
        log.info("stopped after %d batch(es); %d left in %s", len(todo), left, pdir)
        print(f"galnet fit: stopped after {len(todo)} batch(es), {left} left; continue with --resume")
        return 0

    # ---- assemble the catalog from the shards (every row exactly once)
    parts = load_shards(pdir, bounds, n)

    def cat(key):
        return np.concatenate([p[key] for p in parts])

    ids = cat("ids")
    cols = {k: cat(k) for k in _RESULT_COLUMNS}
    dt = float(cat("seconds").sum())  # fitting time over all runs (reading excluded, as before)
    pixel_scale = args.pixel_scale or float(meta.get("pixel_scale", HSC_PIXEL_SCALE))
    extra = {k: cols[k] for k in ("sky", "sky_err", "chi2", "ndof", "chi2nu", "niter", "status")}
    extra["n_masked"] = cat("n_masked")
    table = make_catalog(ids, cols["params"].reshape(-1, 7), errors=cols["errors"].reshape(-1, 7),
                         flags=cols["flags"], pixel_scale=pixel_scale, zeropoint=zp, extra=extra,
                         meta={"FITSTART": start_mode, "FITSKY": bool(args.fit_sky),
                               "NBMASK": bool(args.mask_neighbours), "TPERGAL": dt / max(len(ids), 1)})
    write_table(table, output)
    if not args.keep_parts:
        shutil.rmtree(pdir, ignore_errors=True)
    n_ok = int(np.sum(cols["status"] >= 0))
    log.info("fitted %d/%d stamps in %.1f s (%.1f ms/galaxy; %.1f s wall this run); catalog %s", n_ok,
             len(ids), dt, 1e3 * dt / max(len(ids), 1), time.perf_counter() - t_wall, output)
    print(f"galnet fit: {n_ok}/{len(ids)} stamps fitted in {dt:.1f} s -> {output}")
    return 0
