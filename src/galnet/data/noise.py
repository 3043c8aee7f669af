"""Noise of the inputs: robust σ estimates from pixels, the GALFIT σ map, and the sky σ option check."""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import ConfigError

__all__ = [
    "BORDER_WIDTH", "robust_sigma", "border_sigma", "sigma_from_data", "sigma_from_variance",
    "check_sky_sigma",
]

#: Width (pixels) of the stamp border used to estimate the sky σ.
BORDER_WIDTH = 4


def robust_sigma(values: np.ndarray, *, clip: float = 3.0) -> float:
    """Noise σ of a set of pixels: 1.4826 × MAD, after one 3σ clip of sources.

    Parameters
    ----------
    values : ndarray, any shape, counts (non-finite values are ignored)
    clip : float
        Pixels further than ``clip`` × the first estimate from the median are dropped before the second.

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
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN
        med = np.nanmedian(ring, axis=1, keepdims=True)
        return 1.4826 * np.nanmedian(np.abs(ring - med), axis=1)


def sigma_from_data(images: np.ndarray, *, gain: float, sky_sigma, read_noise: float = 0.0,
                    ncombine: float = 1.0) -> np.ndarray:
    """GALFIT-style σ map (counts): ``sqrt(sky_sigma² + max(data, 0)/(gain·ncombine) + (rdnoise/gain)²)``.

    Parameters
    ----------
    images : ndarray, shape (B, H, W), sky-subtracted counts (NaN pixels count as 0)
    gain : float
        e- / count.
    sky_sigma : float or ndarray (B,)
        Sky noise, counts / pixel.
    read_noise : float
        Read noise, e-.
    ncombine : float
        Number of exposures averaged (GALFIT ``NCOMBINE``).

    Returns
    -------
    ndarray, shape (B, H, W), float64: σ per pixel, counts.
    """
    sky = np.asarray(sky_sigma, dtype=float).reshape(-1, 1, 1) if np.ndim(sky_sigma) else float(sky_sigma)
    var = sky**2 + np.maximum(np.nan_to_num(images), 0.0) / (gain * ncombine) + (read_noise / gain) ** 2
    return np.sqrt(var)


def check_sky_sigma(sky_sigma, where: str):
    """A scalar sky σ option must be a finite number > 0 (per-row arrays are checked row by row).

    Parameters
    ----------
    sky_sigma : float, ndarray or None
        The option's value (counts / pixel).
    where : str
        The option, for the message.

    Returns
    -------
    ``sky_sigma`` (a scalar as float; arrays and None unchanged).

    Raises
    ------
    ConfigError
        A scalar that is not a finite number > 0.
    """
    if sky_sigma is None or np.ndim(sky_sigma) > 0:
        return sky_sigma
    try:
        v = float(sky_sigma)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: sky sigma must be a positive number, got {sky_sigma!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise ConfigError(f"{where}: sky sigma must be a positive number (counts/px), got {sky_sigma!r}")
    return v


def sigma_from_variance(variance: np.ndarray) -> np.ndarray:
    """σ = √variance, NaN where the variance is zero, negative or not finite (such pixels are masked).

    Parameters
    ----------
    variance : ndarray, counts²

    Returns
    -------
    ndarray, counts, the input's dtype
    """
    v = np.asarray(variance)
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.where(v > 0, v, np.nan))
