"""Start parameters for the fitter: image moments, a catalog (hybrid mode), or a GALFIT feedme file.

All functions return (B, 7) float arrays ``x, y, mag, re, n, q, pa`` in catalog conventions
(:mod:`galnet.conventions`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..conventions import DEFAULT_ZEROPOINT, flux_to_mag, wrap_pa
from ..errors import InputDataError
from ..params import IX_N, IX_RE, IX_X, IX_Y, N_PARAMS, PARAMETERS
from ..render.geometry import ellipse_axes

__all__ = ["moments_start", "moments_one", "catalog_start", "feedme_start", "with_n"]


def _background(img: np.ndarray) -> tuple[float, float]:
    """Median and robust rms (1.4826 MAD) of the finite pixels of the outer ring of a stamp."""
    h, w = img.shape
    k = max(2, min(h, w) // 10)
    ring = np.zeros((h, w), dtype=bool)
    ring[:k], ring[-k:], ring[:, :k], ring[:, -k:] = True, True, True, True
    v = img[ring & np.isfinite(img)]
    if v.size < 10:
        v = img[np.isfinite(img)]
    if v.size == 0:
        return 0.0, 1.0
    med = float(np.median(v))
    rms = float(1.4826 * np.median(np.abs(v - med)))
    return med, rms if rms > 0 else float(np.std(v) or 1.0)


def moments_one(image, *, sigma=None, threshold: float = 2.0, subtract_background: bool = True,
                zeropoint: float = DEFAULT_ZEROPOINT, exptime: float = 1.0, n: float = 1.0) -> np.ndarray:
    """SExtractor-like start parameters of one stamp.

    Steps: background (median of the outer ring) subtracted; pixels above ``threshold`` σ
    (σ map, or the ring's robust rms) that are 8-connected to the peak nearest the stamp centre
    form the object; its first moments give the centre, its second moments the axis ratio
    ``q = sqrt(λ_min/λ_max)`` and the position angle (converted to galnet's convention, CCW from +y);
    the flux inside 2.5 Kron radii (elliptical) gives the magnitude, and the semi-major radius that
    encloses half of it gives ``re``. NaN pixels are ignored.

    Parameters
    ----------
    image : ndarray, shape (H, W), counts
    sigma : ndarray (H, W) or float, optional, counts
    threshold : float
        Detection threshold in σ.
    subtract_background : bool
        Subtract the outer-ring median first.
    zeropoint, exptime : float
        For the magnitude.
    n : float
        Sérsic index of the start (moments do not measure it).

    Returns
    -------
    ndarray, shape (7,)
    """
    from scipy import ndimage

    img = np.array(image, dtype=float)
    h, w = img.shape
    med, rms = _background(img)
    if subtract_background:
        img = img - med
    good = np.isfinite(img)
    img = np.where(good, img, 0.0)
    sig = rms if sigma is None else np.where(np.isfinite(sigma), sigma, np.inf)
    above = good & (img > threshold * np.asarray(sig))
    cy, cx = (h - 1) / 2, (w - 1) / 2
    labels, nlab = ndimage.label(above, structure=np.ones((3, 3)))
    if nlab == 0:
        sel = good & (img > 0)
    else:
        yy, xx = np.nonzero(above)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        # the object: the labelled region of the bright pixels nearest the centre
        near = d2 <= d2.min() + 4.0
        lab_near = labels[yy[near], xx[near]]
        best = max(set(lab_near.tolist()), key=lambda lab: img[labels == lab].sum())
        sel = labels == best
    if sel.sum() < 3:
        sel = good & (img > 0)
    yy, xx = np.indices((h, w), dtype=float)
    wts = np.where(sel, img, 0.0)
    tot = wts.sum()
    if not tot > 0:
        return np.array([cx + 1, cy + 1, 25.0, 3.0, n, 0.8, 0.0])
    x0 = (wts * xx).sum() / tot
    y0 = (wts * yy).sum() / tot
    mxx = (wts * (xx - x0) ** 2).sum() / tot + 1 / 12
    myy = (wts * (yy - y0) ** 2).sum() / tot + 1 / 12
    mxy = (wts * (xx - x0) * (yy - y0)).sum() / tot
    tr = mxx + myy
    det = math.sqrt(max((mxx - myy) ** 2 / 4 + mxy**2, 0.0))
    lam1, lam2 = tr / 2 + det, max(tr / 2 - det, 1e-6)
    q = float(np.clip(math.sqrt(lam2 / lam1), 0.05, 1.0))
    theta = 0.5 * math.degrees(math.atan2(2 * mxy, mxx - myy))  # major axis, CCW from +x
    pa = float(wrap_pa(theta - 90.0))  # galnet: CCW from +y
    # elliptical radius (semi-major) of every pixel; pa = theta - 90 deg, whose sine and cosine are
    # -cos(theta) and sin(theta) exactly
    t = math.radians(theta)
    u, v = ellipse_axes(xx - x0, yy - y0, -math.cos(t), math.sin(t))
    a = np.sqrt(u**2 + (v / q) ** 2)
    # Kron radius from the object pixels, flux inside 2.5 Kron radii over the whole stamp
    r1 = max((wts * a).sum() / tot, 1.0)
    ap = good & (a <= 2.5 * r1)
    flux = float(img[ap].sum())
    if not flux > 0:
        flux = float(tot)
    order = np.argsort(a[ap])
    cum = np.cumsum(img[ap][order])
    k = int(np.searchsorted(cum, 0.5 * flux))
    re = float(a[ap][order][min(k, order.size - 1)]) if order.size else 3.0
    lo, hi = PARAMETERS[IX_RE].fit_bounds
    re = float(np.clip(re, 0.5, hi / 2))
    mag = float(flux_to_mag(flux, zeropoint, exptime))
    return np.array([x0 + 1, y0 + 1, mag, re, n, q, pa])


def moments_start(images, *, sigma=None, threshold: float = 2.0, zeropoint: float = DEFAULT_ZEROPOINT,
                  exptime: float = 1.0, n: float = 1.0, subtract_background: bool = True) -> np.ndarray:
    """:func:`moments_one` for every stamp of a (B, H, W) batch (σ (B, H, W) or None) → (B, 7)."""
    imgs = np.asarray(images, dtype=float)
    if imgs.ndim == 2:
        imgs = imgs[None]
    out = np.empty((len(imgs), N_PARAMS))
    for i, im in enumerate(imgs):
        s = None if sigma is None else np.asarray(sigma)[i]
        if not np.isfinite(im).any():
            c = ((im.shape[1] + 1) / 2, (im.shape[0] + 1) / 2)
            out[i] = [c[0], c[1], np.nan, np.nan, n, np.nan, np.nan]
            continue
        out[i] = moments_one(im, sigma=s, threshold=threshold, zeropoint=zeropoint, exptime=exptime, n=n,
                             subtract_background=subtract_background)
    return out


def with_n(starts: np.ndarray, n: float) -> np.ndarray:
    """Copy of a (B, 7) start array with the Sérsic index set to ``n`` (for multi-start fits)."""
    s = np.array(starts, dtype=float, copy=True)
    s[:, IX_N] = n
    return s


def catalog_start(table, ids=None, *, offset=(0.0, 0.0)) -> np.ndarray:
    """Start parameters from a galnet catalog (e.g. network predictions: "hybrid mode").

    Parameters
    ----------
    table : astropy Table or path
        With the catalog columns ``x, y, mag, re_pix, n, q, pa`` (and ``id`` to match by).
    ids : array_like, optional
        The ids of the stamps in fitting order; rows are matched by ``id``. Without it the table
        rows are taken in order.
    offset : (float, float)
        Added to ``x, y`` (e.g. when the catalog refers to a larger image than the stamps).

    Returns
    -------
    ndarray (B, 7); rows whose id is missing from the table are NaN (the fitter flags them).
    """
    from ..catalog import catalog_params, read_table

    if isinstance(table, (str, Path)):
        table = read_table(table)
    params = catalog_params(table)
    params[:, IX_X] += offset[0]
    params[:, IX_Y] += offset[1]
    if ids is None:
        return params
    if "id" not in table.colnames:
        raise InputDataError("start catalog has no 'id' column to match the stamps by")
    lookup = {str(v): i for i, v in enumerate(np.asarray(table["id"]))}
    out = np.full((len(ids), N_PARAMS), np.nan)
    for k, v in enumerate(ids):
        i = lookup.get(str(v))
        if i is not None:
            out[k] = params[i]
    return out


def feedme_start(path, n_stamps: int = 1) -> np.ndarray:
    """Start parameters from a GALFIT feedme file (its first Sérsic), repeated ``n_stamps`` times."""
    from .galfit_io import read_feedme

    fm = read_feedme(path)
    return np.repeat(fm.params[None], n_stamps, axis=0)
