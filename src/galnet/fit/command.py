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
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from ..errors import InputDataError, PSFError
from ..options import check_output_path, finite_float, nonnegative_float, positive_float, positive_int

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


def _read_fits(path, what: str) -> tuple[np.ndarray, dict]:
    from ..catalog import open_fits

    path = Path(path)
    try:
        with open_fits(path, what) as hdul:
            hdu = next((h for h in hdul if h.data is not None), None)
            if hdu is None:
                raise InputDataError(f"{path}: no image data in any HDU")
            return np.asarray(hdu.data, dtype=float), dict(hdu.header)
    except (OSError, ValueError, EOFError) as exc:
        if isinstance(exc, InputDataError):
            raise
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
        from ..catalog import open_fits

        self.path = Path(path)
        self.what = what
        hdul = stack.enter_context(open_fits(self.path, what))
        try:
            self.hdu = next((h for h in hdul if h.data is not None), None)
        except (OSError, ValueError, EOFError) as exc:
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
    from ..manifest import file_id

    path = Path(path)
    return file_id(path) if path.exists() else str(path)


def _open_hdf5(inp: Path, args, stack):
    """(n_rows, fingerprint, zeropoint, meta, read(start, stop) -> batch) of an HDF5 split."""

    from ..catalog import unique_ids
    from ..conventions import DEFAULT_ZEROPOINT
    from ..data import read_arrays, read_meta
    from ..data.h5 import check_split_shapes
    from ..flags import Flag

    meta = read_meta(inp)
    shapes = check_split_shapes(inp, required=("images", "psfs"))
    if "sky_sigma" not in shapes and "sigma_maps" not in shapes:
        raise InputDataError(f"{inp}: needs a 'sky_sigma' or a 'sigma_maps' dataset")
    n = shapes["images"][0]
    keys = [k for k in ("images", "psfs", "sky_sigma", "sigma_maps", "masks") if k in shapes]
    all_ids = np.arange(n)
    if "ids" in shapes:
        all_ids = read_arrays(inp, keys=["ids"])["ids"]
        if all_ids.dtype.kind in "SO":
            all_ids = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in all_ids])
        all_ids = unique_ids(all_ids, where=str(inp))
    try:
        zp = args.zeropoint if args.zeropoint is not None else float(meta.get("zeropoint", DEFAULT_ZEROPOINT))
    except (TypeError, ValueError):
        raise InputDataError(f"{inp}: meta zeropoint {meta.get('zeropoint')!r} is not a number") from None
    gain = args.gain if args.gain is not None else meta.get("gain")
    if gain is not None and not (isinstance(gain, (int, float)) and np.isfinite(gain) and gain > 0):
        log.warning("%s: meta gain %r is not a positive number; the sigma map is the sky noise only",
                    inp, gain)
        gain = None

    def read(start: int, stop: int):
        arr = read_arrays(inp, start, stop, keys=keys)
        ids = all_ids[start:stop]
        images = arr["images"].astype(float)
        flags = np.zeros(len(images), np.int64)
        if "sigma_maps" in arr:
            sigma = arr["sigma_maps"].astype(float)
        else:
            sky = arr["sky_sigma"].astype(float)
            bad_sky = ~(np.isfinite(sky) & (sky > 0))
            if bad_sky.any():  # a given sky sigma that is not > 0: the stamp-border estimate, flagged
                from ..predict.inputs import border_sigma

                est = border_sigma(images[bad_sky])
                for k, i in enumerate(np.flatnonzero(bad_sky)[:5]):
                    log.warning("%s row %d (id %s): sky_sigma %r is not a positive number; the stamp-border "
                                "estimate %.4g is used (flag BAD_SIGMA)",
                                inp, start + i, ids[i], sky[i], est[k])
                sky[bad_sky] = est
                flags[bad_sky] |= int(Flag.BAD_SIGMA)
            if gain:
                sigma = sigma_from_data(images, gain=float(gain), sky_sigma=sky, read_noise=args.read_noise)
            else:
                sigma = np.broadcast_to(sky[:, None, None], images.shape)
        return ids, images, arr["psfs"].astype(float), sigma, arr.get("masks"), zp, 1.0, None, flags

    read.ids = all_ids
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
    if psf_src.ndim not in (2, 3):
        raise InputDataError(
            f"{args.psf}: a PSF must be an image (P, P) or a cube (N, P, P), got {psf_src.shape}")
    if psf_src.ndim == 3 and psf_src.shape[0] != shape3[0]:
        raise InputDataError(
            f"{args.psf}: PSF cube has {psf_src.shape[0]} PSFs for {shape3[0]} stamps in {inp}")
    if psf_src.ndim == 2:  # one PSF for every stamp: one that cannot be repaired is a clear error now
        from ..predict.inputs import prepare_psf

        try:
            prepare_psf(psf_src.all(), max(psf_src.shape) | 1, name=f"PSF {args.psf}")
        except PSFError as exc:
            raise InputDataError(str(exc)) from None
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
    from ..flags import Flag

    def number(key: str, default: float) -> float:
        v = header.get(key, default)
        try:
            v = float(v if v is not None else default)
        except (TypeError, ValueError):
            raise InputDataError(f"{inp}: header {key} = {v!r} is not a number") from None
        return v

    if gain is not None:
        try:
            gain = float(gain)
        except (TypeError, ValueError):
            raise InputDataError(f"{inp}: header GAIN = {gain!r} is not a number") from None
        if not (np.isfinite(gain) and gain > 0):
            log.warning("%s: header GAIN = %r is not a positive number; ignored", inp, gain)
            gain = None
    exptime = number("EXPTIME", 1.0) or 1.0
    ncomb = number("NCOMBINE", 1.0) or 1.0
    rdn = args.read_noise or number("RDNOISE", 0.0)
    sky_header = "SKYSIG" in header and args.sky_sigma is None
    sky_sig = args.sky_sigma if args.sky_sigma is not None else number("SKYSIG", 0.0)
    zp = args.zeropoint if args.zeropoint is not None else number("MAGZPT", DEFAULT_ZEROPOINT)
    if not np.isfinite(zp):
        raise InputDataError(f"{inp}: header MAGZPT = {zp!r} is not a finite number; give --zeropoint")

    def read(start: int, stop: int):
        ids, images, bad = read_images(start, stop)
        flags = np.zeros(len(images), np.int64)
        psf = psf_src.rows(start, stop) if psf_src.ndim == 3 else psf_src.all()
        sigma = None if sig_src is None else sig_src.rows(start, stop, shape3)
        if sigma is None and gain:
            sky = np.full(len(images), sky_sig, dtype=float)
            if not (np.isfinite(sky_sig) and sky_sig > 0):  # no usable SKYSIG: the stamp-border estimate
                from ..predict.inputs import border_sigma

                sky = border_sigma(images)
                if sky_header:
                    flags |= int(Flag.BAD_SIGMA)
            sigma = sigma_from_data(images, gain=float(gain), sky_sigma=sky, read_noise=rdn, ncombine=ncomb)
        elif sigma is None and args.sky_sigma is not None:
            sigma = np.full(images.shape, float(args.sky_sigma))
        mask = None if mask_src is None else mask_src.rows(start, stop, shape3) != 0
        return ids, images, psf, sigma, mask, zp, exptime, bad, flags

    read.ids = all_ids if inp.is_dir() else None
    if sky_header and not (np.isfinite(sky_sig) and sky_sig > 0):
        log.warning("%s: header SKYSIG = %r is not a positive number; the stamp-border estimate is used "
                    "(flag BAD_SIGMA)", inp, header.get("SKYSIG"))
    return shape3[0], fingerprint, zp, {}, read


def repair_psfs(psf, b: int, ids=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Make a batch's PSF(s) usable for the fitter, as ``galnet predict`` does.

    A PSF that is not normalised is renormalised; an even-sized, non-square or off-centre one is re-centred
    and cropped/padded to an odd size (:func:`galnet.predict.inputs.prepare_psf`, which uses
    :func:`galnet.simulate.recenter_psf`): those rows get ``PSF_FIXED``. A PSF that cannot be repaired
    (NaN, non-positive sum ...) makes its rows ``BAD_INPUT``. A usable PSF is returned unchanged.

    Parameters
    ----------
    psf : ndarray, shape (P, Q) (one PSF for the batch) or (B, P, Q)
    b : int
        Rows in the batch.
    ids : array_like (B,), optional
        For the messages.

    Returns
    -------
    psf : ndarray (S, S) or (B, S, S), float64, S odd
    fixed, bad : ndarray (B,) of bool
    messages : list of str (B,)
    """
    from ..predict.inputs import prepare_psf, prepare_psfs

    arr = np.asarray(psf, dtype=float)
    fixed = np.zeros(b, bool)
    bad = np.zeros(b, bool)
    msgs = [""] * b
    if arr.ndim == 2:
        size = max(arr.shape) | 1
        try:
            out, was_fixed = prepare_psf(arr, size, name="psf")
        except PSFError as exc:
            bad[:] = True
            msgs = [f"bad PSF: {exc}; "] * b
            out = np.zeros((size, size))
            out[size // 2, size // 2] = 1.0
            return out, fixed, bad, msgs
        if was_fixed:
            fixed[:] = True
            msgs = ["PSF renormalised / re-centred (PSF_FIXED); "] * b
            return np.asarray(out, dtype=float), fixed, bad, msgs
        return arr, fixed, bad, msgs
    if arr.ndim != 3 or arr.shape[0] != b:
        raise InputDataError(f"psf: expected (P, P) or ({b}, P, P), got shape {arr.shape}")
    size = max(arr.shape[1:]) | 1
    names = [f"PSF of id {v}" for v in (ids if ids is not None else range(b))]
    out, fixed, bad = prepare_psfs(arr, size, names=names)
    out = out.astype(float)
    keep = ~fixed & ~bad
    if keep.any() and arr.shape[1:] == (size, size):
        out[keep] = arr[keep]
    for i in np.flatnonzero(fixed):
        msgs[i] = "PSF renormalised / re-centred (PSF_FIXED); "
    for i in np.flatnonzero(bad):
        msgs[i] = "bad PSF (see the log); not fitted; "
    return out, fixed, bad, msgs


def _fit_batch(batch, args, cfg, start_mode, start_table, n_grid, fitter, masker=None):
    """Check, mask neighbours and fit one batch with ``fitter``; returns (FitResult, n_masked).

    Before fitting, each row's PSF is repaired (``PSF_FIXED``) or refused (``BAD_INPUT``); a row whose id
    is not in the start catalog is ``BAD_INPUT``; a blank stamp is ``NO_SOURCE``: such rows are not fitted
    (NaN values, status ``NOT_FITTED``). A fit that ends with non-finite values is ``FAILED``.
    ``masker``: :func:`galnet.fit.neighbour_mask` (default) or a :class:`galnet.fit.FitPool`'s.
    """
    from ..catalog import _id_key
    from ..detection import no_source
    from ..flags import Flag
    from .masking import neighbour_mask
    from .solver import FitResult, FitStatus, fit_multistart
    from .starts import catalog_start, feedme_start, moments_start, with_n

    ids, images, psf, sigma, mask, zp, exptime, bad, read_flags = batch
    b = len(images)
    ids = np.asarray(ids)
    pre = np.asarray(read_flags, dtype=np.int64).copy()
    msgs = [""] * b
    skip = np.zeros(b, bool) if bad is None else np.asarray(bad, dtype=bool).copy()
    pre[skip] |= int(Flag.BAD_INPUT)
    psf, psf_fixed, psf_bad, psf_msgs = repair_psfs(psf, b, ids)
    pre[psf_fixed] |= int(Flag.PSF_FIXED)
    pre[psf_bad] |= int(Flag.BAD_INPUT)
    skip |= psf_bad
    msgs = [m + pm for m, pm in zip(msgs, psf_msgs)]
    if start_mode == "moments":
        init = None
    elif start_table is not None:
        path = start_mode.split(":", 1)[1]
        init = catalog_start(start_table, ids)
        keys = {_id_key(v) for v in np.asarray(start_table["id"])}
        missing = np.array([_id_key(v) not in keys for v in ids], dtype=bool)
        for i in np.flatnonzero(missing):
            msgs[i] += f"no row with id {ids[i]} in start catalog {path}; not fitted; "
        for i in np.flatnonzero(missing)[:5]:
            log.warning("no row with id %s in start catalog %s; row flagged BAD_INPUT", ids[i], path)
        pre[missing] |= int(Flag.BAD_INPUT)
        skip |= missing
        nonfinite = ~missing & ~np.all(np.isfinite(init), axis=1)
        for i in np.flatnonzero(nonfinite):
            msgs[i] += f"the start catalog {path} has no finite parameters for id {ids[i]}; not fitted; "
        pre[nonfinite] |= int(Flag.BAD_INPUT)
        skip |= nonfinite
    else:
        init = feedme_start(start_mode.split(":", 1)[1], b)
    # blank stamps (no detectable source) are not fitted
    if getattr(args, "detect_snr", 0) > 0 and (~skip).any():
        rows = np.flatnonzero(~skip)
        if sigma is not None:
            sig = np.asarray(sigma, dtype=float)[rows]
        else:
            from ..predict.inputs import border_sigma

            img_m = images[rows]
            if mask is not None:
                img_m = np.where(np.asarray(mask)[rows] != 0, np.nan, img_m)
            sig = border_sigma(img_m)
        sub_bad = None if mask is None else np.asarray(mask)[rows] != 0
        blank, snr = no_source(images[rows], sig, threshold=args.detect_snr, mask=sub_bad)
        # stamps with too few good pixels are left to the fitter, which flags them FEW_GOOD_PIXELS
        sig_full = np.broadcast_to(sig if np.ndim(sig) == 3 else np.asarray(sig)[:, None, None],
                                   images[rows].shape)
        good = np.isfinite(images[rows]) & np.isfinite(sig_full) & (sig_full > 0)
        if sub_bad is not None:
            good &= ~sub_bad
        blank &= good.reshape(rows.size, -1).sum(axis=1) >= cfg.min_good_pixels
        for k in np.flatnonzero(blank):
            msgs[rows[k]] += f"no detectable source (detection S/N {snr[k]:.2f} < {args.detect_snr:g}); "
        pre[rows[blank]] |= int(Flag.NO_SOURCE)
        skip[rows[blank]] = True
    res = FitResult.empty(b)
    rows = np.flatnonzero(~skip)
    n_masked = np.zeros(b, dtype=np.int64)
    if rows.size:
        sub_img = images[rows]
        sub_psf = psf[rows] if psf.ndim == 3 else psf
        sub_sig = None if sigma is None else np.asarray(sigma)[rows]
        sub_mask = None if mask is None else np.asarray(mask)[rows]
        sub_init = None if init is None else np.asarray(init, dtype=float)[rows]
        if args.mask_neighbours:
            # around the start position when there is one (hybrid / feedme), else the stamp centre
            centre = None if sub_init is None else sub_init[:, :2]
            try:
                nb, nm = (masker or neighbour_mask)(sub_img, sub_sig, mask=sub_mask, centre=centre,
                                                    psf=sub_psf)
            except InputDataError as exc:  # e.g. a PSF cube that does not match the batch: fit unmasked
                log.error("batch starting at id %s: neighbour masking skipped: %s", ids[0], exc)
            else:
                sub_mask = nb if sub_mask is None else (np.asarray(sub_mask) != 0) | nb
                n_masked[rows] = nm
        kw = dict(sigma=sub_sig, mask=sub_mask, fit_sky=args.fit_sky, zeropoint=zp, exptime=exptime,
                  config=cfg)
        try:
            if n_grid:
                base = sub_init
                if base is None:
                    sig_w = (None if sub_sig is None
                             else np.where(np.isfinite(sub_sig) & (sub_sig > 0), sub_sig, np.inf))
                    masked = (sub_img if sub_mask is None
                              else np.where(np.asarray(sub_mask) != 0, np.nan, sub_img))
                    base = moments_start(masked, sigma=sig_w, zeropoint=zp, exptime=exptime)
                sub = fit_multistart(sub_img, sub_psf, [with_n(base, n) for n in n_grid], fitter=fitter, **kw)
            else:
                sub = fitter(sub_img, sub_psf, init=sub_init, **kw)
        except (InputDataError, PSFError) as exc:  # a whole batch unusable: flag and go on
            log.error("batch starting at id %s: %s; rows flagged BAD_INPUT", ids[0], exc)
            sub = FitResult.empty(rows.size)
            sub.flags[:] = int(Flag.BAD_INPUT)
            sub.messages = [f"{exc}; "] * rows.size
        res.take(sub, rows)
    res.flags |= pre
    res.messages = [m + r for m, r in zip(msgs, res.messages)]
    res.flags[n_masked > 0] |= int(Flag.NEIGHBOURS_MASKED)
    # a fit that ends with non-finite values failed: NaN row, FAILED
    failed = (res.status >= 0) & ~np.all(np.isfinite(res.params), axis=1)
    for i in np.flatnonzero(failed):
        res.messages[i] += "the fit ended with non-finite values (FAILED); "
    res.flags[failed] |= int(Flag.FAILED)
    res.status[failed] = int(FitStatus.NOT_FITTED)
    for name in ("params", "errors"):
        getattr(res, name)[failed] = np.nan
    for name in ("sky", "sky_err", "chi2", "chi2nu"):
        getattr(res, name)[failed] = np.nan
    for i, msg in enumerate(res.messages):
        if msg:
            log.warning("id %s: %s", ids[i], msg.strip().rstrip(";"))
    return res, n_masked


_RESULT_COLUMNS = ("params", "errors", "sky", "sky_err", "chi2", "ndof", "chi2nu", "niter", "status", "flags")


def _manifest(args, fingerprint: dict, n_rows: int, n_grid: list[float], output: Path, *,
              zeropoint: float, pixel_scale: float) -> dict:
    """What must match for ``--resume`` to reuse shards: the input and every option that changes results
    (see :mod:`galnet.manifest`). Parallelism (``--workers``) is not recorded: it changes no value."""
    from ..manifest import MANIFEST_VERSION, jsonable

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
        "zeropoint": zeropoint,
        "gain": args.gain,
        "read_noise": args.read_noise,
        "sky_sigma": args.sky_sigma,
        "pixel_scale": pixel_scale,
        "mask_neighbours": bool(args.mask_neighbours),
        "max_iter": args.max_iter,
        "detect_snr": float(args.detect_snr),
        "output": output.name,
    }
    return jsonable(manifest)  # as read back from manifest.json


def run(args: argparse.Namespace) -> int:
    from ..catalog import _format_for, check_table_writable, duplicate_ids, make_catalog, write_table
    from ..conventions import HSC_PIXEL_SCALE
    from ..flags import Flag, any_set
    from ..manifest import chunk_bounds, done_chunks, load_shards, parts_dir, prepare_parts, write_shard
    from ..options import float_list
    from ..params import PARAMETERS, index
    from .parallel import FitPool
    from .solver import FitConfig, fit_stamps

    inp = Path(args.input)
    if not inp.exists():
        raise InputDataError(f"{inp}: no such input")
    output = Path(args.output)
    _format_for(output)  # fail early on an unknown extension, not after the fits
    check_output_path(output, option="--output")
    cfg = FitConfig(max_iter=args.max_iter, max_batch=args.batch_size)
    lo, hi = PARAMETERS[index("n")].fit_bounds
    n_grid = float_list(args.n_grid, option="--n-grid", lo=lo, hi=hi)
    start_mode = args.start
    if not (start_mode == "moments" or start_mode.startswith(("catalog:", "feedme:"))):
        raise InputDataError(f"--start {start_mode!r}: use moments, catalog:FILE or feedme:FILE")
    start_table = None
    if start_mode.startswith("catalog:"):
        from ..catalog import read_table

        start_path = start_mode.split(":", 1)[1]
        start_table = read_table(start_path)
        if "id" not in start_table.colnames:
            raise InputDataError(f"start catalog {start_path}: no 'id' column to match the stamps by")
        dups = duplicate_ids(start_table["id"])
        if dups:
            k, rows = next(iter(dups.items()))
            raise InputDataError(
                f"start catalog {start_path}: {len(dups)} duplicated id(s), e.g. id {k} at rows "
                f"{', '.join(map(str, rows[:4]))}; ids must be unique to match the stamps")
    elif start_mode.startswith("feedme:"):
        from .galfit_io import read_feedme

        read_feedme(start_mode.split(":", 1)[1])  # a bad feedme fails here, before any work
    args._interrupt_hint = (f"finished batches are kept in {parts_dir(output)}/; "
                            "rerun the same command with --resume to continue")

    t_wall = time.perf_counter()
    with contextlib.ExitStack() as stack:
        opener = _open_hdf5 if inp.suffix.lower() in (".h5", ".hdf5") else _open_fits
        n_all, fingerprint, zp, meta, read = opener(inp, args, stack)
        n = n_all if args.limit is None else max(0, min(n_all, args.limit))
        if n == 0:
            raise InputDataError(f"{inp}: no stamps to fit")
        if getattr(read, "ids", None) is not None:
            check_table_writable(output, read.ids[:n])
        pixel_scale = args.pixel_scale or float(meta.get("pixel_scale", HSC_PIXEL_SCALE))
        pdir = parts_dir(output)
        prepare_parts(pdir, _manifest(args, fingerprint, n, n_grid, output, zeropoint=zp,
                                      pixel_scale=pixel_scale), args.resume)
        bounds = chunk_bounds(n, args.batch_size)
        done = done_chunks(pdir, bounds) if args.resume else set()
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
    flags = cols["flags"]
    counts = ", ".join(f"{int(any_set(flags, f).sum())} {f.name}" for f in (Flag.BAD_INPUT, Flag.NO_SOURCE,
                                                                            Flag.FAILED))
    n_nostart = sum("no row with id" in str(m) for m in cat("messages"))
    if n_nostart:
        log.warning("%d stamp(s) had no row in the start catalog %s (flagged BAD_INPUT, not fitted)",
                    n_nostart, start_mode.split(":", 1)[1])
    log.info("fitted %d/%d stamps in %.1f s (%.1f ms/galaxy; %.1f s wall this run); catalog %s", n_ok,
             len(ids), dt, 1e3 * dt / max(len(ids), 1), time.perf_counter() - t_wall, output)
    print(f"galnet fit: {n_ok}/{len(ids)} stamps fitted ({counts}) in {dt:.1f} s -> {output}")
    return 0
