"""Fitting a whole input into a galnet catalog: :func:`fit_catalog` (files) and :func:`fit_source` (any
:class:`~galnet.data.InputSource`), the library form of ``galnet fit``.

The input is read through :mod:`galnet.data` (HDF5 split, FITS cube or image with a PSF and optional σ-map
and mask files, or a directory of FITS cutouts) one batch (``batch_size`` stamps) at a time, as read
(:meth:`~galnet.data.InputSource.read_rows`: stored sizes, NaN pixels kept). Each batch is checked (PSF
repaired or refused, start found, blank stamps ``NO_SOURCE``), masked (neighbours), fitted and written
atomically as one shard ``<output>.parts/part-<start>.npz``, then dropped, so memory is bounded by the batch
and a killed run loses at most the batch in progress: ``resume=True`` keeps the finished shards (after
checking in ``manifest.json`` that the input and the options that change results are the same, see
:mod:`galnet.data.shards`) and fits the rest. The catalog is assembled from the shards at the end, every
input row exactly once (as :func:`galnet.predict.predict_catalog` does).

σ of the pixels: the input's σ map where it has one; else, as GALFIT, from the data,
``σ² = sky_σ² + max(data, 0)/(gain·NCOMBINE) + (RDNOISE/gain)²`` with the gain of the input (meta, header
``GAIN``) or the option; else the sky σ; else (no sky σ and no gain) the fitter's own estimate. A given sky σ
that is not a positive number is replaced by the stamp-border estimate and the row flagged ``BAD_SIGMA``.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import (
    check_table_writable,
    duplicate_ids,
    id_key,
    make_catalog,
    read_table,
    table_format,
    write_table,
)
from ..conventions import DEFAULT_ZEROPOINT, HSC_PIXEL_SCALE
from ..data import Chunk, InputSource, border_sigma, open_source, prepare_fit_psfs, sigma_from_data
from ..data.shards import (
    MANIFEST_VERSION,
    chunk_bounds,
    done_chunks,
    file_id,
    jsonable,
    load_shards,
    parts_dir,
    prepare_parts,
    write_shard,
)
from ..errors import ConfigError, InputDataError, PSFError
from ..flags import Flag
from ..options import check_output_path
from ..params import IX_X, IX_Y, N_PARAMS, PARAMETERS, index

log = logging.getLogger(__name__)

__all__ = ["FitOptions", "fit_catalog", "fit_source"]

#: Result arrays of a batch written to its shard.
_RESULT_COLUMNS = ("params", "errors", "sky", "sky_err", "chi2", "ndof", "chi2nu", "niter", "status", "flags")


@dataclass
class FitOptions:
    """Options of a fit run (``galnet fit``'s, without the reading options).

    Attributes
    ----------
    start : str
        ``"moments"`` (image moments), ``"catalog:FILE"`` (a catalog with ``id`` and the parameter columns,
        e.g. network predictions: the hybrid mode) or ``"feedme:FILE"`` (a GALFIT feedme).
    n_grid : tuple of float
        Sérsic indices to start from, keeping the lowest χ² (empty: one start).
    fit_sky : bool
        Fit a constant sky per stamp.
    mask_neighbours : bool
        Detect the other sources on each stamp and mask them (:func:`galnet.fit.neighbour_mask`).
    zeropoint : float, optional
        Magnitude zero point (default: the input's meta / ``MAGZPT`` header, else 27).
    gain : float, optional
        e- / count for the σ map from the data (default: the input's meta / ``GAIN`` header).
    read_noise : float
        Read noise, e- (default: the ``RDNOISE`` header, else 0).
    pixel_scale : float, optional
        Arcsec / pixel (default: the input's meta, else 0.168).
    batch_size : int
        Stamps per batch (the unit of reading, shards and resuming).
    workers : int
        Worker processes, one torch thread each (1: this process; :class:`galnet.fit.FitPool`).
    error_scale : str
        ``"none"`` (GALFIT's convention, default), ``"chi2nu"`` or ``"correlated"`` (× the
        residual-correlation factor: correlated noise of coadds; :mod:`galnet.fit.uncertainty`).
    max_iter : int
        Iteration limit per galaxy.
    limit : int, optional
        Fit only the first ``limit`` rows.
    detect_snr : float
        Rows whose detection S/N near the stamp centre is below this are ``NO_SOURCE``, not fitted (0: no
        test).
    keep_parts : bool
        Keep ``<output>.parts/`` after the catalog is written.
    """

    start: str = "moments"
    n_grid: tuple[float, ...] = ()
    fit_sky: bool = False
    mask_neighbours: bool = True
    zeropoint: float | None = None
    gain: float | None = None
    read_noise: float = 0.0
    pixel_scale: float | None = None
    batch_size: int = 256
    workers: int = 1
    max_iter: int = 100
    error_scale: str = "none"
    limit: int | None = None
    detect_snr: float = 3.0
    keep_parts: bool = False


@dataclass
class _Context:
    """What every batch of a run needs: the resolved zero point, gain, exposure and noise keywords, the start
    catalog, the fitter's configuration."""

    zeropoint: float
    gain: float | None
    exptime: float
    ncombine: float
    read_noise: float
    pixel_scale: float
    start_table: Any
    config: Any


@dataclass
class _Batch:
    """One batch as the fitter takes it (float64 stamps, PSFs, σ, mask) plus the reading flags."""

    ids: np.ndarray
    images: np.ndarray
    psf: np.ndarray
    sigma: np.ndarray | None
    mask: np.ndarray | None
    zeropoint: float
    exptime: float
    bad: np.ndarray
    flags: np.ndarray
    offset: np.ndarray


# ============================================================================== API
def fit_catalog(
    source_or_path,
    output,
    *,
    psf=None,
    sigma=None,
    mask=None,
    sky_sigma=None,
    resume: bool = False,
    max_batches: int | None = None,
    source_kwargs: dict | None = None,
    **options,
):
    """Fit every stamp of an input and write a catalog (the Python form of ``galnet fit``).

    Parameters
    ----------
    source_or_path : path or InputSource
        HDF5 split, FITS stamp cube or image, or directory of FITS cutouts (:func:`galnet.data.open_source`),
        or a source already opened.
    output : path
        Catalog (``.fits`` default; ``.parquet``, ``.csv``, ``.ecsv``).
    psf : path or ndarray, optional
        PSF image (P, P) or cube (N, P, P) (FITS inputs; cutouts without their own PSF).
    sigma, mask : path, optional
        σ-map (counts) and bad-pixel mask (non-zero = bad) FITS files, one plane per stamp (FITS inputs).
    sky_sigma : float, optional
        Sky σ, counts / pixel, where the input gives none.
    resume : bool
        Continue an interrupted run from ``<output>.parts/`` (same input and options).
    max_batches : int, optional
        Stop after this many new batches, without the catalog (continue with ``resume``).
    source_kwargs : dict, optional
        More arguments of the source (``image_hdu`` ...).
    **options
        Fields of :class:`FitOptions` (``start``, ``n_grid``, ``fit_sky``, ``zeropoint``, ``gain`` ...).

    Returns
    -------
    astropy.table.Table (the catalog written), or None when stopped by ``max_batches`` before the end.

    Raises
    ------
    InputDataError, ConfigError
        Unreadable input, bad options or start catalog (before any work).
    ResumeError
        ``resume`` with a different input or options, or rows lost when assembling.

    Examples
    --------
    >>> from galnet.fit import fit_catalog
    >>> cat = fit_catalog("test.h5", "fit.fits", start="catalog:pred.fits", workers=2)   # doctest: +SKIP
    """
    opts = FitOptions(**options)
    if isinstance(source_or_path, InputSource):
        source = source_or_path
    else:
        source = open_source(source_or_path, psf=psf, sigma=sigma, mask=mask, sky_sigma=sky_sigma,
                             **{k: getattr(opts, k) for k in ("zeropoint", "gain", "pixel_scale")},
                             **(source_kwargs or {}))
    return fit_source(source, output, opts, resume=resume, max_batches=max_batches)


def fit_source(source: InputSource, output, options: FitOptions | None = None, *, resume: bool = False,
               max_batches: int | None = None):
    """Fit every row of ``source`` and write the catalog ``output`` (see :func:`fit_catalog`).

    Parameters
    ----------
    source : InputSource
    output : path
    options : FitOptions
    resume : bool
    max_batches : int, optional

    Returns
    -------
    astropy.table.Table, or None when stopped by ``max_batches`` before the end.
    """
    options = options or FitOptions()
    output = Path(output)
    ctx = _prepare(source, output, options)
    sizes = source.native_sizes()
    if sizes is not None:  # rows of differing sizes: read at the most common stored size
        source.stamp_size, source.psf_size = sizes
    n = source.n_rows if options.limit is None else max(0, min(source.n_rows, options.limit))
    if n == 0:
        raise InputDataError(f"{source.describe()}: no stamps to fit")
    ids = source.id_sample()
    if ids is not None:
        check_table_writable(output, ids[:n])
    pdir = parts_dir(output)
    prepare_parts(pdir, _manifest(source, options, ctx, n, output), resume)
    bounds = chunk_bounds(n, options.batch_size)
    done = done_chunks(pdir, bounds) if resume else set()
    if done:
        log.info("resuming: %d of %d batches already fitted in %s", len(done), len(bounds), pdir)
    todo = [b for b in bounds if b[0] not in done]
    if max_batches is not None:
        todo = todo[: max(0, max_batches)]
    _fit_batches(source, todo, options, ctx, pdir)
    left = len(bounds) - len(done) - len(todo)
    if left:
        log.info("stopped after %d batch(es); %d left in %s", len(todo), left, pdir)
        return None
    return _assemble(pdir, bounds, n, options, ctx, output)


# ============================================================================== before any work
def _prepare(source: InputSource, output: Path, options: FitOptions) -> _Context:
    """Check the output, the options and the start before any work; the run's :class:`_Context`."""
    from .config import FitConfig

    table_format(output)  # fail early on an unknown extension, not after the fits
    check_output_path(output, option="--output")
    lo, hi = PARAMETERS[index("n")].fit_bounds
    for v in options.n_grid:
        if not (math.isfinite(v) and lo <= v <= hi):
            raise ConfigError(f"n_grid: {v!r} is not a Sérsic index within [{lo:g}, {hi:g}]")
    header = source.header

    def number(key: str, default: float) -> float:
        v = header.get(key, default)
        try:
            return float(v if v is not None else default)
        except (TypeError, ValueError):
            raise InputDataError(f"{source.describe()}: header {key} = {v!r} is not a number") from None

    return _Context(
        zeropoint=_zeropoint(source, options),
        gain=_gain(source, options),
        exptime=number("EXPTIME", 1.0) or 1.0,
        ncombine=number("NCOMBINE", 1.0) or 1.0,
        read_noise=options.read_noise or number("RDNOISE", 0.0),
        pixel_scale=float(options.pixel_scale or source.meta.get("pixel_scale") or HSC_PIXEL_SCALE),
        start_table=_start_table(options.start),
        config=FitConfig(max_iter=options.max_iter, max_batch=options.batch_size,
                         error_scale=options.error_scale),
    )


def _zeropoint(source: InputSource, options: FitOptions) -> float:
    zp = options.zeropoint if options.zeropoint is not None else source.meta.get("zeropoint")
    try:
        zp = DEFAULT_ZEROPOINT if zp is None else float(zp)
    except (TypeError, ValueError):
        raise InputDataError(f"{source.describe()}: meta zeropoint {zp!r} is not a number") from None
    if not math.isfinite(zp):
        raise InputDataError(
            f"{source.describe()}: zero point {zp!r} is not a finite number; give --zeropoint")
    return zp


def _gain(source: InputSource, options: FitOptions) -> float | None:
    gain = options.gain if options.gain is not None else source.meta.get("gain")
    if gain is not None and not (isinstance(gain, (int, float)) and np.isfinite(gain) and gain > 0):
        log.warning("%s: gain %r is not a positive number; the sigma map is the sky noise only",
                    source.describe(), gain)
        return None
    return None if gain is None else float(gain)


def _start_table(start: str):
    """The start catalog of ``catalog:FILE`` (checked), None otherwise; a bad start fails here."""
    if not (start == "moments" or start.startswith(("catalog:", "feedme:"))):
        raise InputDataError(f"--start {start!r}: use moments, catalog:FILE or feedme:FILE")
    if start.startswith("feedme:"):
        from .galfit_io import read_feedme

        read_feedme(start.split(":", 1)[1])  # a bad feedme fails here, before any work
    if not start.startswith("catalog:"):
        return None
    path = start.split(":", 1)[1]
    table = read_table(path)
    if "id" not in table.colnames:
        raise InputDataError(f"start catalog {path}: no 'id' column to match the stamps by")
    dups = duplicate_ids(table["id"])
    if dups:
        k, rows = next(iter(dups.items()))
        raise InputDataError(
            f"start catalog {path}: {len(dups)} duplicated id(s), e.g. id {k} at rows "
            f"{', '.join(map(str, rows[:4]))}; ids must be unique to match the stamps")
    return table


def _manifest(source: InputSource, options: FitOptions, ctx: _Context, n_rows: int, output: Path) -> dict:
    """What must match for ``resume`` to reuse shards: the input, its reading settings and every option that
    changes results (see :mod:`galnet.data.shards`). ``workers`` is not recorded: it changes no value."""
    start: dict = {"mode": options.start}
    if ":" in options.start:
        path = Path(options.start.split(":", 1)[1])
        start["file"] = file_id(path) if path.exists() else str(path)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "tool": "galnet fit",
        "input": source.fingerprint(),
        **source.settings(),
        "n_rows": n_rows,
        "limit": options.limit,
        "batch_size": options.batch_size,
        "start": start,
        "n_grid": list(options.n_grid),
        "fit_sky": bool(options.fit_sky),
        "zeropoint": ctx.zeropoint,
        "gain": ctx.gain,
        "read_noise": ctx.read_noise,
        "pixel_scale": ctx.pixel_scale,
        "mask_neighbours": bool(options.mask_neighbours),
        "max_iter": options.max_iter,
        "error_scale": options.error_scale,
        "detect_snr": float(options.detect_snr),
        "output": output.name,
    }
    return jsonable(manifest)  # as read back from manifest.json


# ============================================================================== the batches
def _fit_batches(source: InputSource, todo: list[tuple[int, int]], options: FitOptions, ctx: _Context,
                 pdir: Path) -> None:
    """Read, fit and write the shard of each batch ``todo``, one batch in memory at a time."""
    from .parallel import FitPool
    from .solver import fit_stamps

    pool = FitPool(options.workers) if options.workers > 1 else None
    fitter = pool.fit_stamps if pool is not None else fit_stamps
    masker = pool.neighbour_mask if pool is not None else None
    try:
        for start, stop in todo:
            batch = _batch(source.read_rows(start, stop), ctx)
            t0 = time.perf_counter()
            res, n_masked = _fit_batch(batch, options, ctx, fitter, masker)
            if np.any(batch.offset):  # to the input's frame (cutouts cropped/padded to the common size)
                res.params[:, [IX_X, IX_Y]] += batch.offset
            shard = {"rows": np.arange(start, stop, dtype=np.int64), "ids": np.asarray(batch.ids)}
            shard.update({k: getattr(res, k) for k in _RESULT_COLUMNS})
            shard["n_masked"] = n_masked
            shard["messages"] = np.array(res.messages, dtype=str)
            shard["seconds"] = np.array([time.perf_counter() - t0])
            write_shard(pdir, shard)
            log.info("rows %d..%d fitted (%.1f s)", start, stop - 1, float(shard["seconds"][0]))
    finally:
        if pool is not None:
            pool.close()


def _batch(chunk: Chunk, ctx: _Context) -> _Batch:
    """The fitter's inputs of a chunk as read: float64 stamps and PSFs, the σ of every pixel."""
    images = np.asarray(chunk.images, dtype=float)
    sigma, sigma_flags = _sigma(chunk, images, ctx)
    return _Batch(ids=np.asarray(chunk.ids), images=images, psf=np.asarray(chunk.psfs, dtype=float),
                  sigma=sigma, mask=chunk.mask, zeropoint=ctx.zeropoint, exptime=ctx.exptime, bad=chunk.bad,
                  flags=chunk.flags | sigma_flags,
                  offset=np.zeros((len(images), 2)) if chunk.offset is None else chunk.offset)


def _sigma(chunk: Chunk, images: np.ndarray, ctx: _Context) -> tuple[np.ndarray | None, np.ndarray]:
    """σ (B, H, W) of a chunk as read (None: the fitter estimates it), and ``BAD_SIGMA`` flags (B,).

    The input's σ map where a row has one; else from the sky σ and the data (with a gain) or the sky σ; a
    given sky σ that is not a positive number is replaced by the stamp-border estimate (``BAD_SIGMA``).
    """
    b = len(images)
    flags = np.zeros(b, np.int64)
    maps = chunk.sigma_maps
    has_map = np.zeros(b, bool) if maps is None else np.isfinite(maps).reshape(b, -1).any(axis=1)
    if maps is not None and has_map.all():
        return np.asarray(maps, dtype=float), flags
    given = np.zeros(b, bool) if chunk.sky_given is None else np.asarray(chunk.sky_given, bool)
    if not (ctx.gain or given.any() or maps is not None):
        return None, flags  # no noise information: the fitter's own estimate
    sky = np.asarray(chunk.sky_sigma, dtype=float).copy()
    fix = ~(np.isfinite(sky) & (sky > 0)) & ~has_map
    if fix.any():  # a given sky sigma that is not a positive number, or none: the stamp-border estimate
        est = border_sigma(images[fix])
        for i in np.flatnonzero(fix & given)[:5]:
            log.warning("row %d (id %s): sky sigma %r is not a positive number; the stamp-border estimate "
                        "%.4g is used (flag BAD_SIGMA)", chunk.start + i, chunk.ids[i], sky[i],
                        est[np.searchsorted(np.flatnonzero(fix), i)])
        sky[fix] = est
        flags[fix & given] |= int(Flag.BAD_SIGMA)
    if ctx.gain:
        sigma = sigma_from_data(images, gain=ctx.gain, sky_sigma=sky, read_noise=ctx.read_noise,
                                ncombine=ctx.ncombine)
    else:
        sigma = np.broadcast_to(sky[:, None, None], images.shape)
    if maps is not None:
        sigma = np.array(sigma)
        sigma[has_map] = maps[has_map]
    return sigma, flags


def _starts(batch: _Batch, options: FitOptions, ctx: _Context, pre: np.ndarray, skip: np.ndarray,
            msgs: list[str]):
    """Start parameters (B, 7) of the batch, or None for moment starts; rows without a usable start in the
    start catalog are ``BAD_INPUT`` and skipped (``pre``, ``skip``, ``msgs`` in place)."""
    from .starts import catalog_start, feedme_start

    ids, b = batch.ids, len(batch.images)
    if options.start == "moments":
        return None
    if ctx.start_table is None:
        return feedme_start(options.start.split(":", 1)[1], b)
    path = options.start.split(":", 1)[1]
    init = catalog_start(ctx.start_table, ids)
    keys = {id_key(v) for v in np.asarray(ctx.start_table["id"])}
    missing = np.array([id_key(v) not in keys for v in ids], dtype=bool)
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
    return init


def _skip_blank(batch: _Batch, options: FitOptions, ctx: _Context, pre: np.ndarray, skip: np.ndarray,
                msgs: list[str]) -> None:
    """Rows without a detectable source (and enough good pixels to tell): ``NO_SOURCE``, skipped (in
    place)."""
    from ..detection import no_source

    images, sigma, mask = batch.images, batch.sigma, batch.mask
    rows = np.flatnonzero(~skip)
    if sigma is not None:
        sig = np.asarray(sigma, dtype=float)[rows]
    else:
        img_m = images[rows]
        if mask is not None:
            img_m = np.where(np.asarray(mask)[rows] != 0, np.nan, img_m)
        sig = border_sigma(img_m)
    sub_bad = None if mask is None else np.asarray(mask)[rows] != 0
    blank, snr = no_source(images[rows], sig, threshold=options.detect_snr, mask=sub_bad)
    # stamps with too few good pixels are left to the fitter, which flags them FEW_GOOD_PIXELS
    sig_full = np.broadcast_to(sig if np.ndim(sig) == 3 else np.asarray(sig)[:, None, None],
                               images[rows].shape)
    good = np.isfinite(images[rows]) & np.isfinite(sig_full) & (sig_full > 0)
    if sub_bad is not None:
        good &= ~sub_bad
    blank &= good.reshape(rows.size, -1).sum(axis=1) >= ctx.config.min_good_pixels
    for k in np.flatnonzero(blank):
        msgs[rows[k]] += f"no detectable source (detection S/N {snr[k]:.2f} < {options.detect_snr:g}); "
    pre[rows[blank]] |= int(Flag.NO_SOURCE)
    skip[rows[blank]] = True


def _fit_batch(batch: _Batch, options: FitOptions, ctx: _Context, fitter, masker=None):
    """Check, mask neighbours and fit one batch with ``fitter``; returns (FitResult, n_masked).

    Before fitting, each row's PSF is repaired (``PSF_FIXED``) or refused (``BAD_INPUT``); a row whose id
    is not in the start catalog is ``BAD_INPUT``; a blank stamp is ``NO_SOURCE``: such rows are not fitted
    (NaN values, status ``NOT_FITTED``). A fit that ends with non-finite values is ``FAILED``.
    ``masker``: :func:`galnet.fit.neighbour_mask` (default) or a :class:`galnet.fit.FitPool`'s.
    """
    from .solver import FitResult

    b = len(batch.images)
    pre = np.asarray(batch.flags, dtype=np.int64).copy()
    skip = np.asarray(batch.bad, dtype=bool).copy()
    pre[skip] |= int(Flag.BAD_INPUT)
    psf, psf_fixed, psf_bad, msgs = prepare_fit_psfs(batch.psf, b, batch.ids)
    pre[psf_fixed] |= int(Flag.PSF_FIXED)
    pre[psf_bad] |= int(Flag.BAD_INPUT)
    skip |= psf_bad
    init = _starts(batch, options, ctx, pre, skip, msgs)
    if options.detect_snr > 0 and (~skip).any():  # blank stamps (no detectable source) are not fitted
        _skip_blank(batch, options, ctx, pre, skip, msgs)
    res = FitResult.empty(b)
    rows = np.flatnonzero(~skip)
    n_masked = np.zeros(b, dtype=np.int64)
    if rows.size:
        sub, n_masked[rows] = _fit_rows(batch, psf, init, rows, options, ctx, fitter, masker)
        res.take(sub, rows)
    res.flags |= pre
    res.messages = [m + r for m, r in zip(msgs, res.messages)]
    res.flags[n_masked > 0] |= int(Flag.NEIGHBOURS_MASKED)
    _fail_nonfinite(res)
    for i, msg in enumerate(res.messages):
        if msg:
            log.warning("id %s: %s", batch.ids[i], msg.strip().rstrip(";"))
    return res, n_masked


def _fit_rows(batch: _Batch, psf: np.ndarray, init, rows: np.ndarray, options: FitOptions, ctx: _Context,
              fitter, masker):
    """Fit the rows ``rows`` of a batch (neighbours masked first); (FitResult of those rows, n_masked)."""
    from .masking import neighbour_mask
    from .solver import FitResult, fit_multistart
    from .starts import moments_start, with_n

    sub_img = batch.images[rows]
    sub_psf = psf[rows] if psf.ndim == 3 else psf
    sub_sig = None if batch.sigma is None else np.asarray(batch.sigma)[rows]
    sub_mask = None if batch.mask is None else np.asarray(batch.mask)[rows]
    sub_init = None if init is None else np.asarray(init, dtype=float)[rows]
    n_masked = np.zeros(rows.size, dtype=np.int64)
    if options.mask_neighbours:
        # around the start position when there is one (hybrid / feedme), else the stamp centre
        centre = None if sub_init is None else sub_init[:, [IX_X, IX_Y]]
        try:
            nb, n_masked = (masker or neighbour_mask)(sub_img, sub_sig, mask=sub_mask, centre=centre,
                                                      psf=sub_psf)
        except InputDataError as exc:  # e.g. a PSF cube that does not match the batch: fit unmasked
            log.error("batch starting at id %s: neighbour masking skipped: %s", batch.ids[0], exc)
        else:
            sub_mask = nb if sub_mask is None else (np.asarray(sub_mask) != 0) | nb
    kw = dict(sigma=sub_sig, mask=sub_mask, fit_sky=options.fit_sky, zeropoint=batch.zeropoint,
              exptime=batch.exptime, config=ctx.config)
    try:
        if options.n_grid:
            base = sub_init
            if base is None:
                sig_w = (None if sub_sig is None
                         else np.where(np.isfinite(sub_sig) & (sub_sig > 0), sub_sig, np.inf))
                masked = (sub_img if sub_mask is None
                          else np.where(np.asarray(sub_mask) != 0, np.nan, sub_img))
                base = moments_start(masked, sigma=sig_w, zeropoint=batch.zeropoint, exptime=batch.exptime)
            sub = fit_multistart(sub_img, sub_psf, [with_n(base, n) for n in options.n_grid], fitter=fitter,
                                 **kw)
        else:
            sub = fitter(sub_img, sub_psf, init=sub_init, **kw)
    except (InputDataError, PSFError) as exc:  # a whole batch unusable: flag and go on
        log.error("batch starting at id %s: %s; rows flagged BAD_INPUT", batch.ids[0], exc)
        sub = FitResult.empty(rows.size)
        sub.flags[:] = int(Flag.BAD_INPUT)
        sub.messages = [f"{exc}; "] * rows.size
    return sub, n_masked


def _fail_nonfinite(res) -> None:
    """A fit that ends with non-finite values failed: NaN row, ``FAILED``, status ``NOT_FITTED``."""
    from .config import FitStatus

    failed = (res.status >= 0) & ~np.all(np.isfinite(res.params), axis=1)
    for i in np.flatnonzero(failed):
        res.messages[i] += "the fit ended with non-finite values (FAILED); "
    res.flags[failed] |= int(Flag.FAILED)
    res.status[failed] = int(FitStatus.NOT_FITTED)
    for name in ("params", "errors"):
        getattr(res, name)[failed] = np.nan
    for name in ("sky", "sky_err", "chi2", "chi2nu"):
        getattr(res, name)[failed] = np.nan


# ============================================================================== the catalog
def _assemble(pdir: Path, bounds: list[tuple[int, int]], n: int, options: FitOptions, ctx: _Context,
              output: Path):
    """Read every shard (each row exactly once), write and return the catalog; log and print a summary."""
    parts = load_shards(pdir, bounds, n)

    def cat(key):
        return np.concatenate([p[key] for p in parts])

    ids = cat("ids")
    cols = {k: cat(k) for k in _RESULT_COLUMNS}
    dt = float(cat("seconds").sum())  # fitting time over all runs (reading excluded)
    extra = {k: cols[k] for k in ("sky", "sky_err", "chi2", "ndof", "chi2nu", "niter", "status")}
    extra["n_masked"] = cat("n_masked")
    table = make_catalog(ids, cols["params"].reshape(-1, N_PARAMS),
                         errors=cols["errors"].reshape(-1, N_PARAMS), flags=cols["flags"],
                         pixel_scale=ctx.pixel_scale, zeropoint=ctx.zeropoint,
                         extra=extra,
                         meta={"FITSTART": options.start, "FITSKY": bool(options.fit_sky),
                               "NBMASK": bool(options.mask_neighbours), "TPERGAL": dt / max(len(ids), 1)})
    write_table(table, output)
    if not options.keep_parts:
        shutil.rmtree(pdir, ignore_errors=True)
    n_ok = int(np.sum(cols["status"] >= 0))
    n_nostart = sum("no row with id" in str(m) for m in cat("messages"))
    if n_nostart:
        log.warning("%d stamp(s) had no row in the start catalog %s (flagged BAD_INPUT, not fitted)",
                    n_nostart, options.start.split(":", 1)[1])
    log.info("fitted %d/%d stamps in %.1f s (%.1f ms/galaxy); catalog %s", n_ok, len(ids), dt,
             1e3 * dt / max(len(ids), 1), output)
    return table
