"""The unit every input source yields: a :class:`Chunk` of rows, and the steps that make stamps usable.

A source (:mod:`galnet.data.sources`) returns rows ``start:stop`` of its input in two forms:

* **as read** (:meth:`~galnet.data.InputSource.read_rows`): the stamps at their stored size and dtype (NaN
  pixels kept), the PSFs as given, the sky σ and σ map and bad-pixel mask the input gives (``sky_given``
  says which rows have a sky σ), the rows that could not be read (``bad``) and the flags set while reading.
  ``galnet fit`` works on this form.
* **ready for the network** (:meth:`~galnet.data.InputSource.read_chunk`): :func:`finish_chunk` applied
  to it — stamps cropped/padded to the model's size, NaN/inf pixels masked and set to 0, the sky σ of every
  row (estimated from the stamp border where the input gives none), unit-sum centred PSFs of the model's size,
  and every problem turned into a :class:`galnet.flags.Flag` bit. ``galnet predict`` works on this form.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputDataError
from ..flags import Flag
from .noise import border_sigma
from .psfs import PSF_SIZE, prepare_psfs

log = logging.getLogger(__name__)

__all__ = ["Chunk", "STAMP_SIZE", "finish_chunk", "resize_stamps", "cut_stamps"]

#: Stamp size (pixels) of the network's input unless the model card says otherwise.
STAMP_SIZE = 61


@dataclass
class Chunk:
    """Rows ``start : start + len(ids)`` of an input.

    Attributes
    ----------
    start : int
        Index of the first row in the whole input.
    ids : ndarray, shape (B,)
        Input identifiers.
    images : ndarray, shape (B, H, W)
        Stamps in counts (sky-subtracted). Ready for the network: float32, ``S × S``, NaN/inf and padded
        pixels set to 0. As read: the stored values and dtype.
    psfs : ndarray, shape (B, P, P) or (P, P)
        Effective PSFs. Ready for the network: (B, P, P) float32, unit sum, centred. As read: as given
        (one shared (P, P) image, or one per row).
    sky_sigma : ndarray, shape (B,)
        Sky noise σ, counts / pixel. Ready for the network: float32, > 0 on every row. As read: the value the
        input gives (NaN where it gives none, see ``sky_given``).
    flags : ndarray, shape (B,), int64
        :class:`~galnet.flags.Flag` bits set while reading (and preparing).
    bad : ndarray, shape (B,), bool
        Rows that cannot be measured (``BAD_INPUT``): their outputs are NaN.
    mask : ndarray, shape (B, H, W), bool, or None
        True = bad pixel. As read: the input's bad-pixel mask (``--mask`` file, HDF5 ``masks``; pixels beyond
        the image edge for an image + catalog input). Ready for the network: the pixels without data
        (NaN/inf, padded); ``None`` when no pixel is masked. (The input's own mask is not merged yet.)
    sigma_maps : ndarray, shape (B, H, W), or None
        Per-pixel σ (counts) when the input has one (``--sigma`` file, HDF5 ``sigma_maps``, cutout ``SIGMA``).
    offset : ndarray, shape (B, 2), float64
        ``(dx, dy)`` from the stamp frame to the output frame: ``x_out = x_stamp + dx``.
    columns : dict of str → ndarray (B,)
        Extra columns carried to the catalog (input catalog columns, input positions ...).
    sky_given : ndarray, shape (B,), bool, or None
        As read: rows whose ``sky_sigma`` comes from the input (dataset, header, option). None when ready.
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
    sky_given: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def stop(self) -> int:
        """Index one past the last row in the whole input."""
        return self.start + len(self.ids)


# =============================================================================== stamp geometry
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


# =============================================================================== ready for the network
def finish_chunk(
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
    input_mask: np.ndarray | None = None,
    offset: np.ndarray | None = None,
    columns: dict | None = None,
    stamp_size: int = STAMP_SIZE,
    psf_size: int = PSF_SIZE,
    sky_given: np.ndarray | bool = False,
) -> Chunk:
    """The shared last step of every reader: sizes, NaN masks, sky σ, PSF checks, flags.

    Parameters
    ----------
    start : int
        Index of the first row in the whole input.
    ids : array_like, shape (B,)
    images : ndarray, shape (B, H, W), counts
        Stamps of any size: cropped/padded to ``stamp_size`` (flag ``RESAMPLED``, ``offset`` updated).
    psfs : ndarray, shape (B, P, P) or (P, P)
        Checked and repaired with :func:`galnet.data.prepare_psfs` unless ``psf_fixed`` is given (then they
        must already be ``psf_size`` and unit-sum, and ``psf_fixed`` says which rows were repaired).
    sky : float, ndarray (B,) or None
        Sky σ, counts / pixel. ``sky_given`` (bool or (B,) bool) says for which rows it came from the input
        (dataset, header, option): such a value that is not finite and > 0 is replaced by the stamp-border
        estimate and the row flagged ``BAD_SIGMA`` (a NaN in ``sky`` where nothing was given just means
        "estimate it").
    names : list of str (B,)
        Row names for the log.
    flags, bad, padded_mask, sigma_maps, offset, columns
        Flags and unreadable rows so far, pixels beyond an image edge (B, H, W), per-pixel σ (B, H, W),
        ``(dx, dy)`` per row (B, 2), carried columns. Pixels whose σ is zero, negative or not finite are
        masked (never divided by) and their rows flagged ``BAD_SIGMA``; the sky σ of a row without a given one
        is then the median σ of its valid pixels.
    input_mask : ndarray, shape (B, H, W), bool, optional
        The input's bad-pixel mask (True = bad: ``--mask``, an HSC coadd's mask planes): masked, set to 0.
    stamp_size, psf_size : int
        Model input sizes, pixels.

    Returns
    -------
    Chunk
        Ready for the network (see :class:`Chunk`).
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
        images, padded_mask, sigma_maps, input_mask = _to_stamp_size(
            images, padded_mask, sigma_maps, input_mask, offset, flags, stamp_size, names)
    images = np.array(images, dtype=np.float32)  # own copy
    extra, bad_sig_rows = _excluded_pixels(images, sigma_maps, input_mask, padded_mask)
    mask = _mask_pixels(images, padded_mask, flags, bad, names, stamp_size, extra=extra)
    if sigma_maps is not None:
        sky = _sky_from_sigma_maps(sky, sky_given, sigma_maps, mask)
    sky = _sky_per_row(sky, sky_given, images, mask, flags, bad, names)
    psfs = np.asarray(psfs)
    if psfs.ndim == 2:
        psfs = np.broadcast_to(psfs, (b, *psfs.shape))
    if psf_fixed is None:
        psfs, psf_fixed, psf_bad = prepare_psfs(psfs, psf_size, names=[f"{n} (PSF)" for n in names])
        bad |= psf_bad
    flags[psf_fixed] |= int(Flag.PSF_FIXED)
    if sigma_maps is not None:
        sigma_maps = np.asarray(sigma_maps, dtype=np.float32)
        flags[bad_sig_rows] |= int(Flag.BAD_SIGMA)
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


def _to_stamp_size(images, padded_mask, sigma_maps, input_mask, offset, flags, stamp_size, names):
    """Crop/pad stamps (and their padded mask, σ maps and input mask) to ``stamp_size``; ``offset`` and
    ``flags`` in place (``RESAMPLED``)."""
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
    if input_mask is not None:
        input_mask, _, _ = resize_stamps(np.asarray(input_mask, bool), stamp_size, fill=True)
    offset += (ox, oy)
    flags |= int(Flag.RESAMPLED)
    return images, padded_mask, sigma_maps, input_mask


def _excluded_pixels(images, sigma_maps, input_mask, padded_mask) -> tuple[np.ndarray | None, np.ndarray]:
    """Pixels to mask besides NaN/padded ones: the input's mask and σ ≤ 0 / not finite (``extra``, or None
    when there are none), and the rows with such σ on otherwise valid pixels (→ ``BAD_SIGMA``)."""
    b = len(images)
    extra = None if input_mask is None else np.asarray(input_mask, bool).copy()
    bad_rows = np.zeros(b, bool)
    if sigma_maps is not None:
        sig = np.asarray(sigma_maps)
        with np.errstate(invalid="ignore"):
            bad_sig = ~(np.isfinite(sig) & (sig > 0))
        unused = ~np.isfinite(images)  # pixels masked anyway: their σ does not matter
        if padded_mask is not None:
            unused |= padded_mask
        if input_mask is not None:
            unused |= input_mask
        bad_sig &= ~unused
        bad_rows = bad_sig.reshape(b, -1).any(axis=1)
        if bad_rows.any():
            extra = bad_sig if extra is None else extra | bad_sig
    if extra is not None and not extra.any():
        extra = None
    return extra, bad_rows


def _sky_from_sigma_maps(sky, sky_given, sigma_maps, mask) -> np.ndarray:
    """Rows without a given sky σ take the median σ of their valid pixels (the network's noise input)."""
    b = len(sigma_maps)
    sky = np.broadcast_to(np.asarray(np.nan if sky is None else sky, dtype=np.float64), (b,)).copy()
    given = np.broadcast_to(np.asarray(sky_given, dtype=bool), (b,))
    need = ~given & ~(np.isfinite(sky) & (sky > 0))
    if need.any():
        sig = np.asarray(sigma_maps[need]).reshape(int(need.sum()), -1)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(sig) & (sig > 0)
        if mask is not None:
            ok &= ~mask[need].reshape(len(sig), -1)
        full = ok.all(axis=1)  # rows without excluded pixels: a plain median (nanmedian is slow)
        est = np.full(len(sig), np.nan)
        if full.any():
            est[full] = np.median(sig[full], axis=1)
        part = np.flatnonzero(~full)
        if part.size:  # median of the valid pixels: the others NaN (sorted last), pick the middle
            srt = np.sort(np.where(ok[part], sig[part], np.nan), axis=1)
            k = ok[part].sum(axis=1)
            r = np.arange(part.size)
            with np.errstate(invalid="ignore"):
                mid = 0.5 * (srt[r, np.maximum(k - 1, 0) // 2].astype(np.float64) + srt[r, k // 2 - (k == 0)])
            est[part] = np.where(k > 0, mid, np.nan)
        sky[need] = est
    return sky


def _mask_pixels(images, padded_mask, flags, bad, names, stamp_size, *, extra=None) -> np.ndarray | None:
    """Mask of the pixels without data (NaN/inf, padded) or excluded (``extra``: input mask, bad σ), set to 0
    in ``images``; ``flags`` (``EDGE``, ``NAN_PIXELS``, ``FEW_GOOD_PIXELS``) and ``bad`` (no valid pixel) in
    place."""
    b = len(images)
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
    if not finite.all() or extra is not None:
        mask = ~finite | pad if extra is None else ~finite | pad | extra
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
    return mask


def _sky_per_row(sky, sky_given, images, mask, flags, bad, names) -> np.ndarray:
    """The sky σ of every row (B,), float64: the given value where valid, else the stamp-border estimate
    (``BAD_SIGMA`` where a given value was invalid or no estimate was possible); ``flags`` in place."""
    b = len(images)
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
    return sky

