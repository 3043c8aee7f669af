"""Input readers of ``galnet predict``: every input form becomes a sequence of :class:`Chunk` s.

Four forms are understood (see ``docs/predict.md``):

* :class:`HDF5Source` – a split written by ``galnet simulate`` (images, psfs, sky_sigma, ids, optional
  sigma_maps), read in row ranges.
* :class:`FitsCubeSource` – a FITS cube of stamps (N, H, W) with one PSF image or a PSF cube (N, P, P),
  sky σ given or estimated from the stamp border (MAD).
* :class:`CutoutDirSource` – a directory of per-galaxy FITS cutouts (layout below).
* :class:`ImageCatalogSource` – a large FITS image (with WCS) plus a source catalog (RA/Dec or x/y):
  61×61 stamps are cut around every position.

A source is cheap to pickle (paths and small arrays; open file handles are dropped), knows its number of
rows, and returns rows ``start:stop`` with :meth:`InputSource.read_chunk`, so memory stays flat however large
the input is. Every problem of a row (NaN pixels, edge, PSF repaired, unreadable file ...) becomes a bit of
:class:`galnet.flags.Flag` in ``Chunk.flags`` and a log message naming the file or row; rows are never
dropped.

Cutout-directory layout
-----------------------
One FITS file per galaxy, ``<id>.fits`` (or ``.fits.gz``, ``.fit``); the id is the file name without the
extension. In it:

* the stamp: the HDU named ``SCI`` if there is one, else the first HDU with 2-D data (counts, sky-subtracted);
* the PSF: an HDU named ``PSF``, else a side file ``<id>.psf.fits``, else the ``psf`` given to the source;
* the noise: an HDU named ``SIGMA`` (per-pixel σ map, counts), else a side file ``<id>.sigma.fits``; the sky σ
  comes from the header keyword ``SKYSIG`` of the stamp HDU, else the MAD of the stamp border.

Side files (``*.psf.fits``, ``*.sigma.fits``) are never read as galaxies.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputDataError, PSFError
from ..flags import Flag

log = logging.getLogger(__name__)

__all__ = [
    "Chunk",
    "InputSource",
    "HDF5Source",
    "FitsCubeSource",
    "CutoutDirSource",
    "ImageCatalogSource",
    "open_source",
    "cut_stamps",
    "resize_stamps",
    "prepare_psf",
    "prepare_psfs",
    "border_sigma",
    "robust_sigma",
    "STAMP_SIZE",
    "PSF_SIZE",
    "FITS_SUFFIXES",
]

#: Model input sizes (pixels) unless the model card says otherwise.
STAMP_SIZE = 61
PSF_SIZE = 25
#: File name endings read as FITS.
FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".fts")
#: Width (pixels) of the stamp border used to estimate the sky σ.
BORDER_WIDTH = 4
#: Tolerances of the fast PSF check (same as :func:`galnet.render.validate_psf_image`).
_PSF_SUM_TOL = 1e-3
_PSF_CENTROID_TOL = 0.25


@dataclass
class Chunk:
    """Rows ``start : start + len(ids)`` of an input, ready for the network.

    Attributes
    ----------
    start : int
        Index of the first row in the whole input.
    ids : ndarray, shape (B,)
        Input identifiers.
    images : ndarray, shape (B, S, S), float32
        Stamps in counts (sky-subtracted), NaN/inf and padded pixels set to 0.
    psfs : ndarray, shape (B, P, P), float32
        Unit-sum, centred effective PSFs.
    sky_sigma : ndarray, shape (B,), float32
        Sky noise σ, counts / pixel (> 0).
    flags : ndarray, shape (B,), int64
        :class:`~galnet.flags.Flag` bits set while reading.
    bad : ndarray, shape (B,), bool
        Rows that cannot be measured (``BAD_INPUT``): their outputs are NaN.
    mask : ndarray, shape (B, S, S), bool, or None
        True for pixels without data (NaN/inf, padded); ``None`` when no pixel is masked.
    sigma_maps : ndarray, shape (B, S, S), float32, or None
        Per-pixel σ (counts) when the input has one.
    offset : ndarray, shape (B, 2), float64
        ``(dx, dy)`` from the model-stamp frame to the output frame: ``x_out = x_stamp + dx``.
    columns : dict of str → ndarray (B,)
        Extra columns carried to the catalog (input catalog columns, input positions ...).
    """

    start: int
    ids: np.ndarray
    images: np.ndarray
    psfs: np.ndarray
    sky_sigma: np.ndarray
    flags: np.ndarray
    bad: np.ndarray
    mask: np.ndarray | None = None
    sigma_maps: np.ndarray | None = None
    offset: np.ndarray | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def stop(self) -> int:
        return self.start + len(self.ids)


# =============================================================================== helpers
def robust_sigma(values: np.ndarray, *, clip: float = 3.0) -> float:
    """Noise σ of a set of pixels: 1.4826 × MAD, after one 3σ clip of sources.

    Parameters
    ----------
    values : ndarray, any shape, counts (non-finite values are ignored)

    Returns
    -------
    float, counts / pixel (0 if there are no finite values).
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    med = np.median(v)
    sig = 1.4826 * np.median(np.abs(v - med))
    if sig > 0:
        v = v[np.abs(v - med) < clip * sig]
        med = np.median(v)
        sig = 1.4826 * np.median(np.abs(v - med))
    return float(sig)


def border_sigma(images: np.ndarray, width: int = BORDER_WIDTH) -> np.ndarray:
    """Sky σ of each stamp from the MAD of its border pixels (robust to the galaxy and neighbours).

    Parameters
    ----------
    images : ndarray, shape (B, H, W), counts; NaN pixels are ignored
    width : int
        Border width, pixels.

    Returns
    -------
    ndarray, shape (B,), float64: 1.4826 × MAD of the ``width``-pixel border (NaN if no finite pixel).
    """
    b, h, w = images.shape
    k = min(width, h // 2, w // 2)
    ring = np.concatenate(
        [
            images[:, :k, :].reshape(b, -1),
            images[:, h - k :, :].reshape(b, -1),
            images[:, k : h - k, :k].reshape(b, -1),
            images[:, k : h - k, w - k :].reshape(b, -1),
        ],
        axis=1,
    ).astype(np.float64)
    if np.isfinite(ring).all():
        med = np.median(ring, axis=1, keepdims=True)
        return 1.4826 * np.median(np.abs(ring - med), axis=1)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN
            med = np.nanmedian(ring, axis=1, keepdims=True)
            return 1.4826 * np.nanmedian(np.abs(ring - med), axis=1)


def cut_stamps(
    image: np.ndarray, xc: np.ndarray, yc: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut ``size × size`` stamps centred on the pixels holding positions ``(xc, yc)``.

    The cut is on whole pixels: the stamp's central pixel is the image pixel containing the position,
    so no interpolation touches the data; the sub-pixel offset stays in the measured ``x, y``.

    Parameters
    ----------
    image : ndarray, shape (H, W) (a memory map is fine: only the stamps are read)
    xc, yc : ndarray, shape (B,)
        Positions, FITS 1-based pixels; must be finite.
    size : int
        Odd stamp size, pixels.

    Returns
    -------
    stamps : ndarray, shape (B, size, size), float32, padded pixels NaN
    padded : ndarray, shape (B, size, size), bool: pixels beyond the image edge
    dx, dy : ndarray, shape (B,), float64: ``x_img = x_stamp + dx`` (1-based both)
    """
    h, w = image.shape
    half = size // 2
    ix = np.floor(np.asarray(xc, dtype=float) - 0.5).astype(np.int64)  # 0-based pixel holding x
    iy = np.floor(np.asarray(yc, dtype=float) - 0.5).astype(np.int64)
    out = np.full((len(ix), size, size), np.nan, dtype=np.float32)
    padded = np.ones((len(ix), size, size), dtype=bool)
    for k, (i, j) in enumerate(zip(ix, iy)):
        x0, y0 = i - half, j - half
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + size, w), min(y0 + size, h)
        if sx1 <= sx0 or sy1 <= sy0:
            continue
        out[k, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
        padded[k, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = False
    return out, padded, (ix - half).astype(float), (iy - half).astype(float)


def resize_stamps(cube: np.ndarray, size: int, *, fill: float = np.nan) -> tuple[np.ndarray, float, float]:
    """Crop or pad a stamp cube to ``size × size`` around its central pixel (no resampling).

    Parameters
    ----------
    cube : ndarray, shape (B, H, W)
    size : int
    fill : float
        Value of padded pixels.

    Returns
    -------
    stamps : ndarray, shape (B, size, size)
    dx, dy : float
        Offsets from the new stamp frame to the original one (``x_orig = x_new + dx``, 1-based).
    """
    b, h, w = cube.shape
    oy, ox = h // 2 - size // 2, w // 2 - size // 2
    out = np.full((b, size, size), fill, dtype=cube.dtype)
    sy0, sx0 = max(oy, 0), max(ox, 0)
    sy1, sx1 = min(oy + size, h), min(ox + size, w)
    out[:, sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox] = cube[:, sy0:sy1, sx0:sx1]
    return out, float(ox), float(oy)


def prepare_psf(psf: np.ndarray, size: int = PSF_SIZE, *, name: str = "PSF") -> tuple[np.ndarray, bool]:
    """A usable ``size × size`` PSF from a PSF image, and whether it had to be repaired.

    A PSF of the right size, unit sum and centred is returned unchanged; one that is not normalised is
    renormalised, one of another size or off-centre is re-centred and cropped/padded with
    :func:`galnet.simulate.recenter_psf`. Repairs are reported by the returned bool (→ ``PSF_FIXED``).

    Raises
    ------
    PSFError
        The PSF cannot be repaired (NaN, non-positive sum, no light left); the message names ``name``.
    """
    arr = np.asarray(psf, dtype=float)
    if arr.ndim != 2:
        raise PSFError(f"{name}: a PSF must be a 2-D image, got shape {arr.shape}")
    ok, fixable = _psf_status(arr[None], size)
    if ok[0]:
        return arr.astype(np.float32), False
    if fixable[0]:
        return (arr / arr.sum()).astype(np.float32), True
    from ..simulate import recenter_psf

    return recenter_psf(arr, size, name=name).astype(np.float32), True


def _psf_status(cube: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(usable as is, usable after renormalisation) for each PSF of a (B, P, P) cube (vectorised)."""
    b = cube.shape[0]
    if cube.shape[1:] != (size, size):
        return np.zeros(b, bool), np.zeros(b, bool)
    flat = cube.reshape(b, -1)
    finite = np.isfinite(flat).all(axis=1)
    c = np.where(finite[:, None], flat, 0.0)
    total = c.sum(axis=1)
    peak = c.max(axis=1)
    nonneg = c.min(axis=1) >= -0.01 * peak
    safe = np.where(total > 0, total, 1.0)
    coords = np.arange(size, dtype=float) - (size - 1) / 2
    img = c.reshape(b, size, size)
    cx = (img.sum(axis=1) * coords).sum(axis=1) / safe
    cy = (img.sum(axis=2) * coords).sum(axis=1) / safe
    centred = np.hypot(cx, cy) <= _PSF_CENTROID_TOL
    fixable = finite & (total > 0) & nonneg & centred
    return fixable & (np.abs(total - 1) <= _PSF_SUM_TOL), fixable


def prepare_psfs(
    cube: np.ndarray, size: int = PSF_SIZE, *, names: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised :func:`prepare_psf` for a (B, P, P) cube of per-row PSFs.

    Returns
    -------
    psfs : ndarray, shape (B, size, size), float32 (a central delta for unusable rows)
    fixed : ndarray, shape (B,), bool: repaired (→ ``PSF_FIXED``)
    bad : ndarray, shape (B,), bool: unusable (→ ``BAD_INPUT``; the reason is logged)
    """
    cube = np.asarray(cube)
    b = cube.shape[0]
    ok, fixable = _psf_status(cube, size)
    out = np.empty((b, size, size), dtype=np.float32)
    fixed = np.zeros(b, bool)
    bad = np.zeros(b, bool)
    if ok.all():
        out[:] = cube
        return out, fixed, bad
    out[ok] = cube[ok]
    for i in np.flatnonzero(~ok):
        name = names[i] if names is not None else f"PSF row {i}"
        if fixable[i]:
            out[i] = cube[i] / cube[i].sum()
            fixed[i] = True
            continue
        try:
            out[i], fixed[i] = prepare_psf(cube[i], size, name=name)
        except PSFError as exc:
            log.error("%s; row flagged BAD_INPUT", exc)
            bad[i] = True
            out[i] = 0.0
            out[i, size // 2, size // 2] = 1.0
    return out, fixed, bad


def _finish(
    start: int,
    ids,
    images: np.ndarray,
    psfs: np.ndarray,
    sky,
    *,
    names: list[str],
    flags: np.ndarray | None = None,
    bad: np.ndarray | None = None,
    psf_fixed: np.ndarray | None = None,
    padded_mask: np.ndarray | None = None,
    sigma_maps: np.ndarray | None = None,
    offset: np.ndarray | None = None,
    columns: dict | None = None,
    stamp_size: int = STAMP_SIZE,
    psf_size: int = PSF_SIZE,
    sky_given: np.ndarray | bool = False,
) -> Chunk:
    """Shared last step of every reader: sizes, NaN masks, sky σ, PSF checks, flags.

    ``sky_given`` (bool or (B,) bool) says for which rows ``sky`` came from the input (dataset, header,
    option): such a value that is not finite and > 0 is replaced by the stamp-border estimate and the row
    flagged ``BAD_SIGMA`` (a NaN in ``sky`` where nothing was given just means "estimate it").
    """
    b = len(images)
    flags = np.zeros(b, np.int64) if flags is None else flags.astype(np.int64)
    bad = np.zeros(b, bool) if bad is None else bad.copy()
    offset = np.zeros((b, 2)) if offset is None else np.asarray(offset, dtype=float).copy()
    images = np.asarray(images)
    if images.ndim != 3:
        raise InputDataError(
            f"{names[0] if names else 'input'}: stamps must be (N, H, W), got {images.shape}"
        )
    if images.shape[1:] != (stamp_size, stamp_size):
        log.warning(
            "%s...: stamps are %dx%d, cropped/padded to %dx%d (flag RESAMPLED; no pixel-scale resampling)",
            names[0] if names else "input",
            images.shape[1],
            images.shape[2],
            stamp_size,
            stamp_size,
        )
        images, ox, oy = resize_stamps(images.astype(np.float32), stamp_size)
        if padded_mask is not None:
            padded_mask, _, _ = resize_stamps(padded_mask, stamp_size, fill=True)
        if sigma_maps is not None:
            sigma_maps, _, _ = resize_stamps(np.asarray(sigma_maps, np.float32), stamp_size, fill=np.inf)
        offset += (ox, oy)
        flags |= int(Flag.RESAMPLED)
    images = np.array(images, dtype=np.float32)  # own copy
    finite = np.isfinite(images)
    pad = padded_mask if padded_mask is not None else np.zeros(images.shape, bool)
    if padded_mask is not None:
        edge = pad.reshape(b, -1).any(axis=1)
        flags[edge] |= int(Flag.EDGE)
    nan_pix = (~finite & ~pad).reshape(b, -1).any(axis=1)
    flags[nan_pix] |= int(Flag.NAN_PIXELS)
    for i in np.flatnonzero(nan_pix & ~bad)[:5]:
        log.warning(
            "%s: %d NaN/inf pixel(s) masked (flag NAN_PIXELS)", names[i], int((~finite[i] & ~pad[i]).sum())
        )
    mask = None
    if not finite.all():
        mask = ~finite | pad
        images[mask] = 0.0
        good = (~mask).reshape(b, -1).sum(axis=1)
        few = good < 0.5 * stamp_size * stamp_size
        flags[few] |= int(Flag.FEW_GOOD_PIXELS)
        empty = good == 0
        for i in np.flatnonzero(empty & ~bad):
            log.error("%s: no valid pixel in the stamp; row flagged BAD_INPUT", names[i])
        bad |= empty
    elif padded_mask is not None and pad.any():
        mask = pad
    # ---- sky sigma
    sky = np.broadcast_to(np.asarray(np.nan if sky is None else sky, dtype=np.float64), (b,)).copy()
    need = ~(np.isfinite(sky) & (sky > 0))
    invalid = need & np.broadcast_to(np.asarray(sky_given, dtype=bool), (b,)) & ~bad
    if invalid.any():
        flags[invalid] |= int(Flag.BAD_SIGMA)
        for i in np.flatnonzero(invalid)[:5]:
            log.warning("%s: sky sigma %r is not a positive number; the stamp-border estimate is used "
                        "(flag BAD_SIGMA)", names[i], float(sky[i]))
        if invalid.sum() > 5:
            log.warning("... %d rows with an invalid sky sigma in total", int(invalid.sum()))
    if need.any():
        est = border_sigma(np.where(mask, np.nan, images) if mask is not None else images)
        sky[need] = est[need]
        still = need & ~(np.isfinite(sky) & (sky > 0)) & ~bad
        if still.any():
            for i in np.flatnonzero(still)[:5]:
                log.warning(
                    "%s: sky sigma cannot be estimated from the stamp border (noise-free?); using "
                    "1e-3 x the peak (flag BAD_SIGMA)",
                    names[i],
                )
            peak = np.abs(images[still]).reshape(int(still.sum()), -1).max(axis=1)
            sky[still] = np.where(peak > 0, 1e-3 * peak, 1.0)
            flags[still] |= int(Flag.BAD_SIGMA)
        sky[~(np.isfinite(sky) & (sky > 0))] = 1.0  # bad rows only
    # ---- PSFs
    psfs = np.asarray(psfs)
    if psfs.ndim == 2:
        psfs = np.broadcast_to(psfs, (b, *psfs.shape))
    if psf_fixed is None:
        psfs, psf_fixed, psf_bad = prepare_psfs(psfs, psf_size, names=[f"{n} (PSF)" for n in names])
        bad |= psf_bad
    flags[psf_fixed] |= int(Flag.PSF_FIXED)
    if sigma_maps is not None:
        sigma_maps = np.asarray(sigma_maps, dtype=np.float32)
        bad_sig = ~(np.isfinite(sigma_maps) & (sigma_maps > 0))
        if mask is not None:
            bad_sig &= ~mask
        rows = bad_sig.reshape(b, -1).any(axis=1)
        flags[rows] |= int(Flag.BAD_SIGMA)
    flags[bad] |= int(Flag.BAD_INPUT)
    return Chunk(
        start=start,
        ids=np.asarray(ids),
        images=images,
        psfs=np.ascontiguousarray(psfs, np.float32),
        sky_sigma=sky.astype(np.float32),
        flags=flags,
        bad=bad,
        mask=mask,
        sigma_maps=sigma_maps,
        offset=offset,
        columns=dict(columns or {}),
    )


def _fits_header_meta(header, *, zeropoint=None, gain=None, pixel_scale=None) -> dict[str, Any]:
    """zeropoint / gain / pixel_scale from the options, else the FITS header (None if unknown)."""

    def first(*keys):
        for k in keys:
            if header is not None and k in header and isinstance(header[k], (int, float)):
                return float(header[k])
        return None

    return {
        "zeropoint": zeropoint
        if zeropoint is not None
        else first("MAGZPT", "MAGZERO", "ZEROPT", "ZP", "MAGZP"),
        "gain": gain if gain is not None else first("GAIN", "CCDGAIN"),
        "pixel_scale": pixel_scale if pixel_scale is not None else first("PIXSCALE", "PIXSCAL"),
    }


def _open_fits(path: Path, what: str):
    from ..catalog import open_fits

    return open_fits(path, what, memmap=not path.name.lower().endswith(".gz"))


def _image_hdu(hdul, path: Path, hdu=None, ndim: tuple[int, ...] = (2, 3)):
    try:
        if hdu is not None:
            h = hdul[hdu]
            if h.data is None or h.data.ndim not in ndim:
                raise InputDataError(f"{path}[{hdu}]: no {'/'.join(map(str, ndim))}-D image data")
            return h
        for h in hdul:
            if h.is_image and h.header.get("NAXIS", 0) in ndim and h.data is not None:
                return h
    except (KeyError, IndexError, OSError, ValueError, TypeError) as exc:
        raise InputDataError(f"{path}: cannot read HDU {hdu!r} ({exc})") from exc
    raise InputDataError(f"{path}: no {'/'.join(map(str, ndim))}-D image data in any HDU")


def read_psf_file(path: str | os.PathLike, *, hdu=None) -> np.ndarray:
    """Read a PSF image (P, P) or PSF cube (N, P, P) from a FITS file, as float64.

    Raises
    ------
    InputDataError
        Missing or unreadable file, or no 2-D/3-D data.
    """
    path = Path(path)
    with _open_fits(path, "PSF") as hdul:
        return np.array(_image_hdu(hdul, path, hdu).data, dtype=np.float64)


@functools.lru_cache(maxsize=256)
def _cached_psf_file(path: str, size: int) -> tuple[np.ndarray | None, bool, str]:
    """(psf, fixed, error message) for a per-position PSF file (cached: positions share files)."""
    try:
        return (*prepare_psf(read_psf_file(path), size, name=f"PSF file {path}"), "")
    except (InputDataError, PSFError) as exc:
        return None, False, str(exc)


# =============================================================================== sources
class InputSource:
    """Base class of the input readers.

    Attributes
    ----------
    n_rows : int
        Number of galaxies (rows of the output catalog).
    meta : dict
        ``zeropoint`` (mag for 1 count), ``gain`` (e-/count or None), ``pixel_scale`` (arcsec/px) where known.
    kind : str
        Input form, for logs and the resume fingerprint.
    stamp_size, psf_size : int
        Model input sizes (set from the model card by :func:`open_source`).
    """

    kind = "?"
    has_wcs = False

    def __init__(self) -> None:
        self.n_rows = 0
        self.meta: dict[str, Any] = {}
        self.stamp_size = STAMP_SIZE
        self.psf_size = PSF_SIZE

    def read_chunk(self, start: int, stop: int) -> Chunk:  # pragma: no cover - abstract
        """Rows ``start:stop`` as a :class:`Chunk`."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this input (paths, sizes, modification times): resuming checks it."""
        return {"kind": self.kind, "n_rows": self.n_rows}

    def settings(self) -> dict[str, Any]:
        """Every reading option that changes a result (zero point, gain, pixel scale, sky σ, PSF, columns
        ...), as recorded in the resume manifest (:mod:`galnet.manifest`)."""
        return {
            "zeropoint": self.meta.get("zeropoint"),
            "gain": self.meta.get("gain"),
            "pixel_scale": self.meta.get("pixel_scale"),
        }

    def describe(self) -> str:
        """The input's path (or kind), for messages."""
        for attr in ("path", "directory", "image_path"):
            if getattr(self, attr, None) is not None:
                return str(getattr(self, attr))
        return self.kind

    def id_sample(self) -> np.ndarray | None:
        """The ids of every row when known before reading (checked before computing), else None."""
        ids = getattr(self, "ids", None)
        return None if ids is None else np.asarray(ids)

    def carried_columns(self) -> dict[str, np.ndarray]:
        """Input columns carried to the catalog (image + catalog inputs)."""
        return {}

    def pixel_to_world(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """RA, Dec (degrees) of output-frame 1-based pixel positions, or None without a WCS."""
        return None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_h_")}


def _file_id(path: Path) -> dict[str, Any]:
    from ..manifest import file_id

    return file_id(path)


def _check_sky_option(sky_sigma, where: str):
    """A scalar sky σ option must be a finite number > 0 (per-row arrays are checked row by row)."""
    from ..errors import ConfigError

    if sky_sigma is None or np.ndim(sky_sigma) > 0:
        return sky_sigma
    try:
        v = float(sky_sigma)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: sky sigma must be a positive number, got {sky_sigma!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise ConfigError(f"{where}: sky sigma must be a positive number (counts/px), got {sky_sigma!r}")
    return v


def _psf_setting(psf_path, psf_array) -> Any:
    from ..manifest import array_digest

    if psf_path is not None:
        return _file_id(Path(psf_path))
    return None if psf_array is None else {"array_sha256": array_digest(psf_array)}


def _sky_setting(sky) -> Any:
    from ..manifest import array_digest

    if sky is None:
        return None
    a = np.asarray(sky, dtype=float)
    if a.ndim == 0 or (a.size and np.all(a == a.ravel()[0])):
        return float(a.ravel()[0]) if a.size else None
    return {"array_sha256": array_digest(a)}


class HDF5Source(InputSource):
    """A dataset split written by ``galnet simulate`` / :func:`galnet.data.write_split`.

    Parameters
    ----------
    path : path
        ``.h5`` file with ``images`` (N, S, S), ``psfs`` (N, P, P), ``sky_sigma`` (N,) and optionally ``ids``
        and ``sigma_maps``; the root ``meta`` gives zeropoint, gain and pixel scale.
    zeropoint, gain, pixel_scale : float, optional
        Override the file's meta.
    """

    kind = "hdf5"

    def __init__(self, path, *, zeropoint=None, gain=None, pixel_scale=None) -> None:
        super().__init__()
        from ..data import read_arrays, read_meta

        self.path = Path(path)
        meta = read_meta(self.path)
        from ..data.h5 import check_split_shapes

        shapes = check_split_shapes(self.path, required=("images", "psfs", "sky_sigma"))
        self.n_rows = shapes["images"][0]
        self.keys = [k for k in ("images", "psfs", "sky_sigma", "ids", "sigma_maps") if k in shapes]
        if "ids" in shapes:
            from ..catalog import unique_ids

            ids = read_arrays(self.path, keys=["ids"])["ids"]
            if ids.dtype.kind in "SO":
                ids = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in ids])
            self.ids = unique_ids(ids, where=str(self.path))
        else:
            self.ids = np.arange(self.n_rows)
        self.meta = {
            "zeropoint": zeropoint if zeropoint is not None else meta.get("zeropoint"),
            "gain": gain if gain is not None else meta.get("gain"),
            "pixel_scale": pixel_scale if pixel_scale is not None else meta.get("pixel_scale"),
        }

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), **_file_id(self.path)}

    def read_chunk(self, start: int, stop: int) -> Chunk:
        from ..data import read_arrays

        arr = read_arrays(self.path, start, stop, keys=[k for k in self.keys if k != "ids"])
        names = [f"{self.path.name} row {i}" for i in range(start, stop)]
        return _finish(
            start,
            self.ids[start:stop],
            arr["images"],
            arr["psfs"],
            arr["sky_sigma"],
            names=names,
            sigma_maps=arr.get("sigma_maps"),
            stamp_size=self.stamp_size,
            psf_size=self.psf_size,
            sky_given=True,
        )


class FitsCubeSource(InputSource):
    """A FITS cube of stamps (N, H, W) (or one 2-D stamp), read in row ranges through a memory map.

    Parameters
    ----------
    path : path
        FITS file; the first HDU with 3-D (or 2-D) data, or ``hdu``.
    psf : path or ndarray
        PSF image (P, P) shared by every stamp, or a PSF cube (N, P, P), one per stamp (FITS path or array).
    sky_sigma : float or ndarray (N,), optional
        Sky σ in counts / pixel; if omitted, the header keyword ``SKYSIG``, else the MAD of each stamp's
        border.
    zeropoint, gain, pixel_scale : float, optional
        Override the header (``MAGZPT``/``ZEROPT``, ``GAIN``, ``PIXSCALE``).
    hdu : int or str, optional
    """

    kind = "fits-cube"

    def __init__(
        self, path, *, psf, sky_sigma=None, zeropoint=None, gain=None, pixel_scale=None, hdu=None
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.hdu = hdu
        with _open_fits(self.path, "stamp cube") as hdul:
            h = _image_hdu(hdul, self.path, hdu)
            self.shape = tuple(h.data.shape)
            header = h.header.copy()
            self._hdu_index = hdul.index_of(h.name) if hdu is None and h.name else (hdu or 0)
            if hdu is None:
                self._hdu_index = [i for i, x in enumerate(hdul) if x is h][0]
        self.n_rows = 1 if len(self.shape) == 2 else self.shape[0]
        self.ids = np.arange(self.n_rows)
        self.meta = _fits_header_meta(header, zeropoint=zeropoint, gain=gain, pixel_scale=pixel_scale)
        sky_sigma = _check_sky_option(sky_sigma, "sky_sigma")
        if sky_sigma is None and isinstance(header.get("SKYSIG"), (int, float)):
            sky_sigma = float(header["SKYSIG"])
        self.sky_sigma = (
            None
            if sky_sigma is None
            else np.broadcast_to(np.asarray(sky_sigma, dtype=float), (self.n_rows,)).copy()
        )
        self.psf_path = None
        self.psf = None
        self.psf_cube_path = None
        if psf is None:
            raise InputDataError(f"{self.path}: a stamp cube needs a PSF (--psf FILE: image or cube)")
        arr = None if isinstance(psf, (str, os.PathLike)) else np.asarray(psf, dtype=float)
        if arr is None:
            self.psf_path = Path(psf)
            with _open_fits(self.psf_path, "PSF") as hdul:
                ph = _image_hdu(hdul, self.psf_path)
                if ph.data.ndim == 2:
                    arr = np.array(ph.data, dtype=float)
                elif ph.data.shape[0] != self.n_rows:
                    raise InputDataError(
                        f"{self.psf_path}: PSF cube has {ph.data.shape[0]} PSFs for "
                        f"{self.n_rows} stamps in {self.path}"
                    )
                else:
                    self.psf_cube_path = self.psf_path
        if arr is not None and arr.ndim == 3:
            if arr.shape[0] != self.n_rows:
                raise InputDataError(
                    f"PSF cube has {arr.shape[0]} PSFs for {self.n_rows} stamps in {self.path}"
                )
            self.psf = arr
        elif arr is not None:
            self.psf, self.psf_fixed = prepare_psf(arr, self.psf_size, name=f"PSF {self.psf_path or 'array'}")
            if self.psf_fixed:
                log.warning(
                    "PSF %s was renormalised / re-centred (flag PSF_FIXED on every row)",
                    self.psf_path or "array",
                )

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), **_file_id(self.path)}

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "sky_sigma": _sky_setting(self.sky_sigma), "image_hdu": self.hdu,
                "psf": _psf_setting(self.psf_path, None if self.psf_path is not None else self.psf)}

    def _section(self, path: Path, hdu, start: int, stop: int) -> np.ndarray:
        with _open_fits(path, "FITS") as hdul:
            h = hdul[hdu]
            try:
                data = h.section[start:stop] if h.data.ndim == 3 else h.data[None]
            except Exception:  # noqa: BLE001 - some compressed layouts have no .section
                data = h.data[start:stop]
            return np.array(data, dtype=np.float32)

    def read_chunk(self, start: int, stop: int) -> Chunk:
        images = self._section(self.path, self._hdu_index, start, stop)
        names = [f"{self.path.name}[{i}]" for i in range(start, stop)]
        sky = None if self.sky_sigma is None else self.sky_sigma[start:stop]
        if self.psf_cube_path is not None:
            with _open_fits(self.psf_cube_path, "PSF") as hdul:
                h = _image_hdu(hdul, self.psf_cube_path)
                psfs = np.array(h.data[start:stop], dtype=np.float64)
            return _finish(
                start,
                np.arange(start, stop),
                images,
                psfs,
                sky,
                names=names,
                stamp_size=self.stamp_size,
                psf_size=self.psf_size,
                sky_given=sky is not None,
            )
        if self.psf.ndim == 3:
            return _finish(
                start,
                np.arange(start, stop),
                images,
                self.psf[start:stop],
                sky,
                names=names,
                stamp_size=self.stamp_size,
                psf_size=self.psf_size,
                sky_given=sky is not None,
            )
        fixed = np.full(stop - start, self.psf_fixed)
        return _finish(
            start,
            np.arange(start, stop),
            images,
            self.psf,
            sky,
            names=names,
            psf_fixed=fixed,
            stamp_size=self.stamp_size,
            psf_size=self.psf_size,
            sky_given=sky is not None,
        )


def _is_fits_name(name: str) -> bool:
    return name.lower().endswith(FITS_SUFFIXES)


def _stem(name: str) -> str:
    low = name.lower()
    for suf in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


class CutoutDirSource(InputSource):
    """A directory of per-galaxy FITS cutouts (layout in the module docstring).

    Parameters
    ----------
    directory : path
    psf : path or ndarray, optional
        PSF for cutouts that have neither a ``PSF`` HDU nor a ``<id>.psf.fits`` side file.
    sky_sigma : float, optional
        Sky σ (counts / pixel) for cutouts without ``SKYSIG`` or a σ map; else the border MAD.
    zeropoint, gain, pixel_scale : float, optional
        Override the first cutout's header.
    """

    kind = "cutout-dir"

    def __init__(
        self, directory, *, psf=None, sky_sigma=None, zeropoint=None, gain=None, pixel_scale=None
    ) -> None:
        super().__init__()
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise InputDataError(f"{self.directory}: not a directory")
        names = sorted(n for n in os.listdir(self.directory) if _is_fits_name(n))
        side = {n for n in names if _stem(n).endswith((".psf", ".sigma"))}
        self.files = [n for n in names if n not in side]
        self.side = side
        if not self.files:
            raise InputDataError(f"{self.directory}: no FITS cutouts (*.fits) in the directory")
        self.n_rows = len(self.files)
        # ids: the file stems; two files with one stem (g0007.fits, g0007.fits.gz) keep their full names
        stems = [_stem(f) for f in self.files]
        count: dict[str, int] = {}
        for st in stems:
            count[st] = count.get(st, 0) + 1
        dup = [f for f, st in zip(self.files, stems) if count[st] > 1]
        if dup:
            log.warning("%s: %d cutouts share an id with another file (%s); they use their full file names "
                        "as ids", self.directory, len(dup), ", ".join(dup[:4]))
        from ..catalog import unique_ids

        self.ids = unique_ids(np.array([f if count[st] > 1 else st for f, st in zip(self.files, stems)]),
                              where=str(self.directory))
        self.sky_sigma = _check_sky_option(sky_sigma, "sky_sigma")
        self.psf = None
        self.psf_fixed = False
        self.psf_path = Path(psf) if isinstance(psf, (str, os.PathLike)) else None
        if psf is not None:
            arr = read_psf_file(psf) if isinstance(psf, (str, os.PathLike)) else np.asarray(psf, float)
            self.psf, self.psf_fixed = prepare_psf(arr, self.psf_size, name=f"PSF {psf}")
        header = None
        try:
            with _open_fits(self.directory / self.files[0], "cutout") as hdul:
                header = _image_hdu(hdul, self.directory / self.files[0], None, (2,)).header.copy()
        except InputDataError:
            pass
        self.meta = _fits_header_meta(header, zeropoint=zeropoint, gain=gain, pixel_scale=pixel_scale)

    def fingerprint(self) -> dict[str, Any]:
        import hashlib

        h = hashlib.sha256()
        for name in self.files + sorted(self.side):
            try:
                st = (self.directory / name).stat()
                h.update(f"{name}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
            except OSError:
                h.update(f"{name}\0missing\n".encode())
        return {**super().fingerprint(), "dir": str(self.directory.resolve()), "files_sha256": h.hexdigest()}

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "sky_sigma": _sky_setting(self.sky_sigma),
                "psf": _psf_setting(self.psf_path, None if self.psf_path is not None else self.psf)}

    def _read_one(self, name: str) -> tuple[np.ndarray, np.ndarray | None, float | None, np.ndarray | None]:
        path = self.directory / name
        stem = _stem(name)
        psf = sigma = None
        sky = None
        with _open_fits(path, "cutout") as hdul:
            names = [h.name.upper() for h in hdul]
            sci = hdul["SCI"] if "SCI" in names else _image_hdu(hdul, path, None, (2,))
            if sci.data is None or sci.data.ndim != 2:
                raise InputDataError(f"{path}: the stamp HDU has no 2-D data")
            img = np.array(sci.data, dtype=np.float32)
            if isinstance(sci.header.get("SKYSIG"), (int, float)):
                sky = float(sci.header["SKYSIG"])
            if "PSF" in names:
                psf = np.array(hdul["PSF"].data, dtype=float)
            if "SIGMA" in names:
                sigma = np.array(hdul["SIGMA"].data, dtype=np.float32)
        for suf in (".fits", ".fits.gz"):
            if psf is None and f"{stem}.psf{suf}" in self.side:
                psf = read_psf_file(self.directory / f"{stem}.psf{suf}")
            if sigma is None and f"{stem}.sigma{suf}" in self.side:
                with _open_fits(self.directory / f"{stem}.sigma{suf}", "sigma map") as h2:
                    sigma = np.array(
                        _image_hdu(h2, self.directory / f"{stem}.sigma{suf}", None, (2,)).data,
                        dtype=np.float32,
                    )
        if sigma is not None and sigma.shape != img.shape:
            raise InputDataError(f"{path}: sigma map shape {sigma.shape} differs from the stamp {img.shape}")
        return img, psf, sky, sigma

    def read_chunk(self, start: int, stop: int) -> Chunk:
        s = self.stamp_size
        b = stop - start
        images = np.full((b, s, s), np.nan, np.float32)
        psfs = np.zeros((b, self.psf_size, self.psf_size), np.float32)
        psfs[:, self.psf_size // 2, self.psf_size // 2] = 1.0
        sky = np.full(b, np.nan if self.sky_sigma is None else float(self.sky_sigma))
        sky_given = np.full(b, self.sky_sigma is not None)
        sig = np.full((b, s, s), np.nan, np.float32)
        has_sigma = False
        flags = np.zeros(b, np.int64)
        bad = np.zeros(b, bool)
        fixed = np.zeros(b, bool)
        offset = np.zeros((b, 2))
        names = [str(self.directory / f) for f in self.files[start:stop]]
        for k, name in enumerate(self.files[start:stop]):
            try:
                img, psf, sk, sigma = self._read_one(name)
                if psf is None:
                    if self.psf is None:
                        raise InputDataError(
                            f"{names[k]}: no PSF (no PSF HDU, no side file "
                            f"{_stem(name)}.psf.fits and no --psf)"
                        )
                    psfs[k], fixed[k] = self.psf, self.psf_fixed
                else:
                    psfs[k], fixed[k] = prepare_psf(psf, self.psf_size, name=f"{names[k]} PSF")
                if img.shape != (s, s):
                    img, ox, oy = resize_stamps(img[None], s)
                    img = img[0]
                    offset[k] = (ox, oy)
                    flags[k] |= int(Flag.RESAMPLED)
                    log.warning(
                        "%s: stamp %s cropped/padded to %dx%d (flag RESAMPLED)",
                        names[k],
                        sigma.shape if sigma is not None else "",
                        s,
                        s,
                    )
                    if sigma is not None:
                        sigma = resize_stamps(sigma[None], s, fill=np.inf)[0][0]
                images[k] = img
                if sk is not None:
                    sky[k] = sk
                    sky_given[k] = True
                if sigma is not None:
                    sig[k] = sigma
                    has_sigma = True
                    if not np.isfinite(sky[k]):
                        good = np.isfinite(sigma) & (sigma > 0)
                        sky[k] = float(np.median(sigma[good])) if good.any() else np.nan
            except (InputDataError, PSFError) as exc:
                log.error("%s; row flagged BAD_INPUT", exc)
                bad[k] = True
                images[k] = 0.0
        chunk = _finish(
            start,
            self.ids[start:stop],
            images,
            psfs,
            sky,
            names=names,
            flags=flags,
            bad=bad,
            psf_fixed=fixed,
            offset=offset,
            stamp_size=s,
            psf_size=self.psf_size,
            sky_given=sky_given,
        )
        if has_sigma:
            missing = ~np.isfinite(sig).any(axis=(1, 2))
            sig[missing] = chunk.sky_sigma[missing, None, None]
            chunk.sigma_maps = sig
            bad_sig = ~(np.isfinite(sig) & (sig > 0))
            if chunk.mask is not None:
                bad_sig &= ~chunk.mask
            chunk.flags[bad_sig.reshape(b, -1).any(axis=1)] |= int(Flag.BAD_SIGMA)
        return chunk


# ----------------------------------------------------------------------------- image + catalog
_RA_NAMES = ("ra", "RA", "ALPHA_J2000", "RAJ2000", "ra_deg", "RA_DEG")
_DEC_NAMES = ("dec", "DEC", "Dec", "DELTA_J2000", "DEJ2000", "dec_deg", "DEC_DEG")
_X_NAMES = ("x", "X", "X_IMAGE", "x_image", "xcentroid", "X_WORLD_PIX")
_Y_NAMES = ("y", "Y", "Y_IMAGE", "y_image", "ycentroid", "Y_WORLD_PIX")
_ID_NAMES = ("id", "ID", "NUMBER", "objid", "object_id", "source_id")


def _pick(colnames: list[str], given: str | None, candidates: tuple[str, ...], what: str, path) -> str | None:
    if given:
        if given not in colnames:
            raise InputDataError(
                f"catalog {path}: no {what} column {given!r}; columns: {', '.join(colnames)}"
            )
        return given
    return next((c for c in candidates if c in colnames), None)


class ImageCatalogSource(InputSource):
    """A large FITS image plus a source catalog: a stamp is cut around every catalog position.

    Stamps are ``stamp_size`` pixels, centred on the image pixel holding the position (whole-pixel cut, no
    interpolation); parts beyond the image edge are padded, masked and flagged ``EDGE``; positions outside
    the image give ``BAD_INPUT`` rows (kept, NaN values). Output ``x, y`` are in the image's 1-based frame.

    Parameters
    ----------
    image : path
        FITS image (uncompressed files are memory-mapped: only the stamps are read).
    catalog : path or astropy Table
        FITS / CSV / ECSV / Parquet table with RA/Dec (degrees; needs a celestial WCS in the image header)
        or x/y (pixels) columns. Every column is carried to the output catalog.
    psf : path or ndarray, optional
        One PSF image (P, P) for every source, or a PSF cube (N, P, P) with one PSF per catalog row.
    psf_column : str, optional
        Catalog column holding a PSF FITS file per source (relative paths: to the catalog's directory).
    ra_col, dec_col, x_col, y_col, id_col : str, optional
        Column names (default: common names such as ``ra``/``ALPHA_J2000``, ``x``/``X_IMAGE``, ``id``).
    xy_origin : {1, 0}
        Whether catalog x/y are FITS 1-based (SExtractor) or 0-based (photutils).
    sky_sigma : float, optional
        Sky σ, counts / pixel; default: ``SKYSIG`` header keyword, else a clipped MAD of the whole image.
    image_hdu : int or str, optional
    zeropoint, gain, pixel_scale : float, optional
        Override the header (pixel scale default: from the WCS).
    """

    kind = "image+catalog"

    def __init__(
        self,
        image,
        catalog,
        *,
        psf=None,
        psf_column: str | None = None,
        ra_col=None,
        dec_col=None,
        x_col=None,
        y_col=None,
        id_col=None,
        xy_origin: int = 1,
        sky_sigma=None,
        image_hdu=None,
        zeropoint=None,
        gain=None,
        pixel_scale=None,
    ) -> None:
        super().__init__()
        import warnings

        from astropy.table import Table
        from astropy.wcs import WCS, FITSFixedWarning

        from ..catalog import read_table

        self.image_path = Path(image)
        self.image_hdu = image_hdu
        sky_sigma = _check_sky_option(sky_sigma, "sky_sigma")
        self.sky_from_header = False
        with _open_fits(self.image_path, "image") as hdul:
            h = _image_hdu(hdul, self.image_path, image_hdu, (2,))
            self._hdu_index = [i for i, x in enumerate(hdul) if x is h][0]
            header = h.header.copy()
            self.image_shape = tuple(h.data.shape)
            if sky_sigma is None and isinstance(header.get("SKYSIG"), (int, float)):
                sky_sigma = float(header["SKYSIG"])
                self.sky_from_header = True
                if not (np.isfinite(sky_sigma) and sky_sigma > 0):
                    log.warning("%s: header SKYSIG = %r is not a positive number; every row is flagged "
                                "BAD_SIGMA and uses its stamp-border estimate", self.image_path, sky_sigma)
            if sky_sigma is None:
                data = h.data
                step = max(1, int(np.sqrt(data.size / 1e6)))
                sky_sigma = robust_sigma(np.asarray(data[::step, ::step]))
                log.info(
                    "%s: sky sigma %.4g counts/px (clipped MAD of the image)", self.image_path, sky_sigma
                )
                if not sky_sigma > 0:
                    sky_sigma = None  # per-stamp border estimate
        self.sky_sigma = sky_sigma
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2)
        self.wcs = wcs if wcs.has_celestial else None
        self.has_wcs = self.wcs is not None
        self.meta = _fits_header_meta(header, zeropoint=zeropoint, gain=gain, pixel_scale=pixel_scale)
        if self.meta["pixel_scale"] is None and self.wcs is not None:
            from astropy.wcs.utils import proj_plane_pixel_scales

            self.meta["pixel_scale"] = float(np.mean(proj_plane_pixel_scales(self.wcs.celestial)) * 3600.0)
        # ---- catalog
        if isinstance(catalog, Table):
            table, self.catalog_path = catalog, None
        else:
            self.catalog_path = Path(catalog)
            table = _read_catalog(self.catalog_path, read_table)
        cols = list(table.colnames)
        where = self.catalog_path or "table"
        xc = _pick(cols, x_col, _X_NAMES, "x", where)
        yc = _pick(cols, y_col, _Y_NAMES, "y", where)
        rac = _pick(cols, ra_col, _RA_NAMES, "RA", where)
        decc = _pick(cols, dec_col, _DEC_NAMES, "Dec", where)
        use_xy = (x_col or y_col or (xc and yc)) and not (ra_col or dec_col)
        n = len(table)
        self.n_rows = n
        if use_xy and xc and yc:
            x = _numeric(table[xc], xc, where) + (1 - xy_origin)
            y = _numeric(table[yc], yc, where) + (1 - xy_origin)
            self.position_from = f"{xc},{yc}"
        elif rac and decc:
            if self.wcs is None:
                raise InputDataError(
                    f"catalog {where} gives RA/Dec ({rac}, {decc}) but the image {self.image_path} has no "
                    "celestial WCS in its header; give x/y columns (--x-col/--y-col) instead"
                )
            from astropy.coordinates import SkyCoord

            ra = _numeric(table[rac], rac, where)
            dec = _numeric(table[decc], decc, where)
            bad_dec = np.isfinite(dec) & (np.abs(dec) > 90)
            for i in np.flatnonzero(bad_dec)[:20]:
                log.error("catalog %s row %d: Dec = %g is outside [-90, 90] degrees; row flagged BAD_INPUT",
                          where, i, dec[i])
            dec = np.where(bad_dec, np.nan, dec)
            ok = np.isfinite(ra) & np.isfinite(dec)
            x = np.full(n, np.nan)
            y = np.full(n, np.nan)
            if ok.any():
                sc = SkyCoord(ra[ok], dec[ok], unit="deg")
                px, py = self.wcs.celestial.world_to_pixel(sc)  # 0-based
                x[ok], y[ok] = np.asarray(px) + 1.0, np.asarray(py) + 1.0
            self.position_from = f"{rac},{decc}"
        else:
            raise InputDataError(
                f"catalog {where}: no position columns found; give --x-col/--y-col (pixels) or "
                "--ra-col/--dec-col "
                f"(degrees); columns are: {', '.join(cols)}"
            )
        self.x_in, self.y_in = x, y
        h, w = self.image_shape
        inside = np.isfinite(x) & np.isfinite(y) & (x >= 0.5) & (x < w + 0.5) & (y >= 0.5) & (y < h + 0.5)
        self.outside = ~inside
        for i in np.flatnonzero(self.outside)[:20]:
            log.error(
                "catalog %s row %d: position (x=%.2f, y=%.2f) is outside the image %s (%dx%d); row "
                "flagged BAD_INPUT",
                where,
                i,
                x[i],
                y[i],
                self.image_path,
                w,
                h,
            )
        if self.outside.sum() > 20:
            log.error("... %d rows outside the image in total", int(self.outside.sum()))
        idc = _pick(cols, id_col, _ID_NAMES, "id", where)
        from ..catalog import unique_ids

        self.ids = unique_ids(np.asarray(_filled(table[idc])) if idc else np.arange(n),
                              where=f"catalog {where}")
        self.id_column = idc
        self.xy_origin = int(xy_origin)
        self.psf_column = psf_column
        # carried columns (1-D only); clashes with galnet columns are prefixed "input_"
        from ..params import catalog_columns

        reserved = set(catalog_columns()) | {"flags", "ra", "dec", "chi2nu", "x_in", "y_in"}
        self.columns: dict[str, np.ndarray] = {}
        for c in cols:
            if table[c].ndim != 1:
                continue
            arr = np.asarray(_filled(table[c]))
            if arr.dtype.kind == "O":
                arr = arr.astype(str)
            self.columns[c if c not in reserved else f"input_{c}"] = arr
        # ---- PSFs
        self.psf = None
        self.psf_fixed = False
        self.psf_cube: np.ndarray | None = None
        self.psf_files: np.ndarray | None = None
        if psf_column:
            if psf_column not in cols:
                raise InputDataError(f"catalog {where}: no PSF column {psf_column!r}")
            base = self.catalog_path.parent if self.catalog_path else Path(".")
            self.psf_files = np.array(
                [
                    str(p if Path(p).is_absolute() else base / p)
                    for p in np.asarray(_filled(table[psf_column])).astype(str)
                ]
            )
        elif psf is not None:
            arr = read_psf_file(psf) if isinstance(psf, (str, os.PathLike)) else np.asarray(psf, float)
            if arr.ndim == 3:
                if arr.shape[0] != n:
                    raise InputDataError(f"PSF cube {psf} has {arr.shape[0]} PSFs for {n} catalog rows")
                self.psf_cube = arr
            else:
                self.psf, self.psf_fixed = prepare_psf(arr, self.psf_size, name=f"PSF {psf}")
        else:
            raise InputDataError(
                "image + catalog input needs a PSF: --psf FILE (image or per-row cube) or "
                "--psf-column COLUMN (a PSF FITS per source)"
            )
        self.psf_path = None if psf is None or not isinstance(psf, (str, os.PathLike)) else Path(psf)

    def fingerprint(self) -> dict[str, Any]:
        from ..manifest import array_digest

        fp = {**super().fingerprint(), "image": _file_id(self.image_path)}
        if self.catalog_path is not None:
            fp["catalog"] = _file_id(self.catalog_path)
        else:
            fp["catalog"] = {"positions_sha256": array_digest(np.stack([self.x_in, self.y_in]))}
        return fp

    def settings(self) -> dict[str, Any]:
        psf = _psf_setting(self.psf_path, None if self.psf_path is not None else
                           (self.psf_cube if self.psf_cube is not None else self.psf))
        return {**super().settings(), "positions": self.position_from, "xy_origin": self.xy_origin,
                "id_column": self.id_column, "image_hdu": self.image_hdu,
                "sky_sigma": _sky_setting(self.sky_sigma),
                "psf": psf, "psf_column": self.psf_column}

    def carried_columns(self) -> dict[str, np.ndarray]:
        return self.columns

    def describe(self) -> str:
        return f"catalog {self.catalog_path or 'table'} (image {self.image_path})"

    def _cut(self, xs: np.ndarray, ys: np.ndarray):
        """cut_stamps on the image: memory-mapped per chunk (uncompressed), or decompressed once (.gz)."""
        from ..catalog import open_fits

        scaled = getattr(self, "_scaled", None)
        if scaled is None:
            with open_fits(self.image_path, "image", memmap=False, lazy_load_hdus=True) as hdul:
                h = hdul[self._hdu_index].header
                self._scaled = scaled = any(k in h for k in ("BZERO", "BSCALE", "BLANK"))
        if self.image_path.name.lower().endswith(".gz") or scaled:  # read (decompress / scale) once
            if getattr(self, "_h_data", None) is None:
                with open_fits(self.image_path, "image", memmap=False) as hdul:
                    self._h_data = np.array(hdul[self._hdu_index].data, dtype=np.float32)
            return cut_stamps(self._h_data, xs, ys, self.stamp_size)
        with open_fits(self.image_path, "image", memmap=True) as hdul:
            out = cut_stamps(hdul[self._hdu_index].data, xs, ys, self.stamp_size)
            del hdul[self._hdu_index].data  # release the memory map before closing
        return out

    def read_chunk(self, start: int, stop: int) -> Chunk:
        s = self.stamp_size
        b = stop - start
        x, y = self.x_in[start:stop], self.y_in[start:stop]
        outside = self.outside[start:stop]
        xs = np.where(outside, 1.0, x)
        ys = np.where(outside, 1.0, y)
        stamps, pad_mask, dx, dy = self._cut(xs, ys)
        stamps[outside] = 0.0
        pad_mask[outside] = False
        names = [f"catalog row {i} (id {self.ids[i]})" for i in range(start, stop)]
        bad = outside.copy()
        if self.psf_files is not None:
            psfs = np.zeros((b, self.psf_size, self.psf_size), np.float32)
            fixed = np.zeros(b, bool)
            for k, f in enumerate(self.psf_files[start:stop]):
                p, fx, msg = _cached_psf_file(f, self.psf_size)
                if p is None:
                    log.error("%s: %s; row flagged BAD_INPUT", names[k], msg)
                    bad[k] = True
                    psfs[k, self.psf_size // 2, self.psf_size // 2] = 1.0
                else:
                    psfs[k], fixed[k] = p, fx
        elif self.psf_cube is not None:
            psfs, fixed = self.psf_cube[start:stop], None
        else:
            psfs, fixed = self.psf, np.full(b, self.psf_fixed)
        cols = {k: v[start:stop] for k, v in self.columns.items()}
        cols["x_in"] = x
        cols["y_in"] = y
        chunk = _finish(
            start,
            self.ids[start:stop],
            stamps,
            psfs,
            self.sky_sigma,
            names=names,
            bad=bad,
            psf_fixed=fixed,
            padded_mask=pad_mask,
            offset=np.stack([dx, dy], axis=1),
            columns=cols,
            stamp_size=s,
            psf_size=self.psf_size,
            sky_given=self.sky_sigma is not None,
        )
        return chunk

    def pixel_to_world(self, x, y):
        if self.wcs is None:
            return None
        ok = np.isfinite(x) & np.isfinite(y)
        ra = np.full(len(x), np.nan)
        dec = np.full(len(x), np.nan)
        if ok.any():
            sc = self.wcs.celestial.pixel_to_world(np.asarray(x)[ok] - 1.0, np.asarray(y)[ok] - 1.0)
            ra[ok], dec[ok] = sc.ra.deg, sc.dec.deg
        return ra, dec


def _read_catalog(path: Path, read_table):
    """A source catalog as an astropy Table; Parquet through pyarrow (astropy's reader needs pandas)."""
    if path.name.lower().endswith(".parquet") and path.is_file():
        try:
            import pyarrow.parquet as pq
            from astropy.table import Table

            data = pq.read_table(path)
            return Table(
                {name: data.column(name).to_numpy(zero_copy_only=False) for name in data.column_names}
            )
        except ImportError:
            pass
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for corrupt files
            raise InputDataError(f"catalog {path}: cannot read Parquet table: {exc}") from exc
    return read_table(path)


def _numeric(col, name: str, where) -> np.ndarray:
    """A catalog column as float64; values that are not numbers become NaN (their rows are flagged).

    Raises
    ------
    InputDataError
        No value of the column is a number (e.g. sexagesimal RA): the message names the column.
    """
    arr = _filled(col)
    try:
        return np.asarray(arr, dtype=float)
    except (TypeError, ValueError):
        pass
    out = np.full(len(arr), np.nan)
    bad = []
    for i, v in enumerate(arr):
        try:
            out[i] = float(v.decode() if isinstance(v, bytes) else v)
        except (TypeError, ValueError):
            bad.append(i)
    if len(bad) == len(arr) and len(arr):
        raise InputDataError(f"catalog {where}: column {name!r} is not numeric (e.g. {arr[0]!r}); "
                             "positions must be numbers (degrees for RA/Dec, pixels for x/y)")
    for i in bad[:20]:
        log.error("catalog %s row %d: %s = %r is not a number; row flagged BAD_INPUT", where, i, name, arr[i])
    return out


def _filled(col) -> np.ndarray:
    """A table column as a plain array (masked values → NaN for floats, the fill value otherwise)."""
    if hasattr(col, "mask") and np.any(getattr(col, "mask", False)):
        if col.dtype.kind == "f":
            return np.asarray(col.filled(np.nan))
        return np.asarray(col.filled())
    return np.asarray(col)


# ============================================================================== dispatch
def open_source(
    input_path,
    *,
    catalog=None,
    psf=None,
    sky_sigma=None,
    stamp_size: int = STAMP_SIZE,
    psf_size: int = PSF_SIZE,
    **kwargs,
) -> InputSource:
    """Open any input form by looking at the path.

    ``.h5``/``.hdf5`` → :class:`HDF5Source`; a directory → :class:`CutoutDirSource`; a FITS file with
    ``catalog`` → :class:`ImageCatalogSource`; another FITS file → :class:`FitsCubeSource`.
    ``kwargs`` go to the source (``zeropoint``, ``gain``, ``pixel_scale``, column names ...).

    Raises
    ------
    InputDataError
        Missing path, unknown format, missing PSF, unreadable file (the message names it).
    """
    p = Path(input_path)
    if not p.exists():
        raise InputDataError(f"{p}: no such input file or directory")
    sky_sigma = _check_sky_option(sky_sigma, "--sky-sigma")
    common = {k: kwargs.pop(k) for k in ("zeropoint", "gain", "pixel_scale") if k in kwargs}
    if p.is_dir():
        src: InputSource = CutoutDirSource(p, psf=psf, sky_sigma=sky_sigma, **common)
    elif p.suffix.lower() in (".h5", ".hdf5"):
        src = HDF5Source(p, **common)
    elif _is_fits_name(p.name):
        if catalog is not None:
            src = ImageCatalogSource(p, catalog, psf=psf, sky_sigma=sky_sigma, **common, **kwargs)
        else:
            src = FitsCubeSource(p, psf=psf, sky_sigma=sky_sigma, hdu=kwargs.get("image_hdu"), **common)
    else:
        raise InputDataError(
            f"{p}: unknown input; give an HDF5 split (.h5), a FITS cube or image (.fits, with "
            "--catalog for an image), or a directory of FITS cutouts"
        )
    if src.meta.get("zeropoint") is None:
        src.meta["zeropoint"] = None  # the model's zero point is used
    src.stamp_size, src.psf_size = stamp_size, psf_size
    return src


__all__.append("read_psf_file")
