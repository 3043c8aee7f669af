"""Conventions: coordinates, magnitudes, sizes and angles, defined once.

galnet follows GALFIT, because that is what users compare against (see ``docs/conventions.md``):

* **Pixel coordinates** ``x, y`` are FITS / GALFIT 1-based: the centre of the first pixel is at
  (1, 1); pixel ``(row j, column i)`` of a 0-based numpy array ``image[j, i]`` has its centre at
  ``x = i + 1``, ``y = j + 1``. Pixel ``i`` spans ``[x - 0.5, x + 0.5)``.
* **Magnitude** ``mag = -2.5 log10(F / t_exp) + zeropoint`` where ``F`` is the total flux in counts of
  the *untruncated* profile (integrated to infinity) and ``t_exp`` the exposure time (1 unless the
  image says otherwise, as GALFIT's ``EXPTIME``). Default zero point 27.0 (HSC coadds).
* **Effective radius** ``re`` is the half-light radius along the semi-major axis, in pixels
  (``re_pix``); catalogs also carry ``re_arcsec = re_pix * pixel_scale`` (HSC: 0.168"/px).
* **Axis ratio** ``q = b/a`` in (0, 1].
* **Position angle** ``pa`` in degrees, counter-clockwise from +y ("up", North for a North-up image)
  to the major axis, wrapped to [-90, 90).
* **PSF images** are *effective* PSFs: images sampled at pixel centres that already contain the
  pixel response (as every survey PSF model does), odd-sized, centred on the central pixel and
  normalised to unit sum. The renderer therefore never integrates the galaxy over pixels a second
  time; analytic PSFs are convolved with the pixel box exactly once (see :mod:`galnet.render`).

Converters to Imfit, GalSim and astropy conventions live here, each with a tested round trip.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .params import IX_PA, IX_Q, IX_RE

__all__ = [
    "CONVENTIONS_VERSION",
    "DEFAULT_ZEROPOINT",
    "HSC_PIXEL_SCALE",
    "wrap_pa",
    "pa_difference",
    "fold_axis_ratio",
    "mag_to_flux",
    "flux_to_mag",
    "stamp_center",
    "sersic_bn_numpy",
    "sersic_total_flux",
    "sersic_intensity_at_re",
    "to_imfit",
    "from_imfit",
    "to_galsim",
    "from_galsim",
    "to_astropy",
    "from_astropy",
]

#: Version of these conventions; stored in every catalog, dataset and model card.
CONVENTIONS_VERSION = "1"
#: Default photometric zero point (HSC-SSP coadds: 27.0 mag for 1 count).
DEFAULT_ZEROPOINT = 27.0
#: HSC pixel scale in arcsec / pixel.
HSC_PIXEL_SCALE = 0.168


def wrap_pa(pa_deg):
    """Wrap position angles to [-90, 90) degrees.

    Parameters
    ----------
    pa_deg : float or array_like or torch.Tensor
        Position angle(s) in degrees (counter-clockwise from +y).

    Returns
    -------
    Same type as the input, wrapped to [-90, 90).
    """
    return (pa_deg + 90.0) % 180.0 - 90.0


def pa_difference(pa_a, pa_b):
    """Signed difference ``pa_a - pa_b`` of axial angles, in degrees, in [-90, 90)."""
    return wrap_pa(pa_a - pa_b)


def fold_axis_ratio(params) -> np.ndarray:
    """Parameters ``(B, 7)`` with ``q > 1`` folded back into (0, 1] and ``pa`` wrapped to [-90, 90).

    An ellipse with ``q = b/a > 1`` along ``pa`` is the ellipse ``(re q, 1/q, pa + 90)``: ``re``
    stays the semi-major half-light radius. Fitters that let ``q`` cross 1 (GALFIT, galnet's) report
    the folded form.

    Parameters
    ----------
    params : array_like, shape (B, 7)
        ``x, y, mag, re, n, q, pa``.

    Returns
    -------
    ndarray, shape (B, 7): a folded copy.
    """
    p = np.array(params, dtype=float, copy=True)
    big = p[:, IX_Q] > 1
    p[big, IX_RE] *= p[big, IX_Q]
    p[big, IX_Q] = 1.0 / p[big, IX_Q]
    p[big, IX_PA] += 90.0
    p[:, IX_PA] = wrap_pa(p[:, IX_PA])
    return p


def mag_to_flux(mag, zeropoint: float = DEFAULT_ZEROPOINT, exptime: float = 1.0):
    """Total flux in counts of a source of magnitude ``mag`` (works on floats, arrays, tensors)."""
    return exptime * 10.0 ** (-0.4 * (mag - zeropoint))


def flux_to_mag(flux, zeropoint: float = DEFAULT_ZEROPOINT, exptime: float = 1.0):
    """Magnitude of a total flux in counts (numpy; non-positive flux gives NaN)."""
    flux = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = -2.5 * np.log10(flux / exptime) + zeropoint
    return np.where(flux > 0, mag, np.nan)


def stamp_center(size: int) -> float:
    """1-based pixel coordinate of the centre of a stamp ``size`` pixels wide.

    For odd sizes this is the centre of the central pixel, e.g. 31.0 for 61.
    """
    return (size + 1) / 2.0


def sersic_bn_numpy(n):
    """Exact Sérsic ``b_n`` (``gamma(2n, b_n) = Gamma(2n) / 2``), via scipy, for numpy inputs."""
    from scipy.special import gammaincinv

    return gammaincinv(2.0 * np.asarray(n, dtype=float), 0.5)


def sersic_total_flux(intensity_re, re, n, q):
    """Total flux of an untruncated elliptical Sérsic profile.

    ``F = 2 pi n e^{b} b^{-2n} Gamma(2n) q re^2 I_e`` with ``I_e`` the surface brightness at the
    effective radius (counts / pixel) and ``re`` the semi-major half-light radius (pixels).
    """
    from scipy.special import gammaln

    n = np.asarray(n, dtype=float)
    b = sersic_bn_numpy(n)
    log_factor = np.log(2 * np.pi * n) + b - 2 * n * np.log(b) + gammaln(2 * n)
    return np.exp(log_factor) * np.asarray(q) * np.asarray(re) ** 2 * np.asarray(intensity_re)


def sersic_intensity_at_re(flux, re, n, q):
    """Surface brightness at the effective radius (counts / pixel) for a total flux (counts)."""
    return np.asarray(flux) / sersic_total_flux(1.0, re, n, q)


# ----------------------------------------------------------------------------- converters
def to_imfit(x, y, mag, re, n, q, pa, *, zeropoint: float = DEFAULT_ZEROPOINT, exptime: float = 1.0):
    """galnet parameters → Imfit ``Sersic`` parameters.

    Imfit uses 1-based ``X0, Y0`` (as galnet), ``PA`` counter-clockwise from +y (as galnet),
    ``ell = 1 - q``, ``r_e`` along the major axis in pixels, and ``I_e`` (counts / pixel at r_e).

    Returns
    -------
    dict with keys ``X0, Y0, PA, ell, n, I_e, r_e``.
    """
    flux = mag_to_flux(mag, zeropoint, exptime)
    return {
        "X0": x,
        "Y0": y,
        "PA": wrap_pa(pa),
        "ell": 1.0 - q,
        "n": n,
        "I_e": sersic_intensity_at_re(flux, re, n, q),
        "r_e": re,
    }


def from_imfit(X0, Y0, PA, ell, n, I_e, r_e, *, zeropoint: float = DEFAULT_ZEROPOINT, exptime: float = 1.0):
    """Imfit ``Sersic`` parameters → galnet ``dict(x, y, mag, re, n, q, pa)``."""
    q = 1.0 - np.asarray(ell)
    flux = sersic_total_flux(I_e, r_e, n, q)
    return {
        "x": X0,
        "y": Y0,
        "mag": flux_to_mag(flux, zeropoint, exptime),
        "re": r_e,
        "n": n,
        "q": q,
        "pa": wrap_pa(PA),
    }


def to_galsim(x, y, mag, re, n, q, pa, *, zeropoint: float = DEFAULT_ZEROPOINT, exptime: float = 1.0):
    """galnet parameters → the arguments of a GalSim Sérsic.

    GalSim's ``half_light_radius`` belongs to the circular profile *before* ``shear``; shearing
    with ``q`` preserves area, so ``hlr = re * sqrt(q)`` (the circularised radius). GalSim's shear
    angle ``beta`` is counter-clockwise from +x, so ``beta = pa + 90°``. GalSim images with the
    default bounds are 1-based like FITS, so ``x, y`` carry over unchanged.

    Returns
    -------
    dict with keys ``n, half_light_radius, flux, q, beta_deg, x, y``. Build the object with
    ``galsim.Sersic(n, half_light_radius=hlr, flux=flux).shear(q=q, beta=beta_deg*galsim.degrees)``.
    """
    return {
        "n": n,
        "half_light_radius": re * math.sqrt(q) if np.isscalar(q) else np.asarray(re) * np.sqrt(q),
        "flux": mag_to_flux(mag, zeropoint, exptime),
        "q": q,
        "beta_deg": wrap_pa(pa + 90.0),
        "x": x,
        "y": y,
    }


def from_galsim(n, half_light_radius, flux, q, beta_deg, x, y, *, zeropoint: float = DEFAULT_ZEROPOINT,
                exptime: float = 1.0):
    """GalSim Sérsic arguments (see :func:`to_galsim`) → galnet ``dict(x, y, mag, re, n, q, pa)``."""
    return {
        "x": x,
        "y": y,
        "mag": flux_to_mag(flux, zeropoint, exptime),
        "re": np.asarray(half_light_radius) / np.sqrt(q),
        "n": n,
        "q": q,
        "pa": wrap_pa(np.asarray(beta_deg) - 90.0),
    }


def to_astropy(x, y, mag, re, n, q, pa, *, zeropoint: float = DEFAULT_ZEROPOINT,
               exptime: float = 1.0) -> dict[str, Any]:
    """galnet parameters → ``astropy.modeling.models.Sersic2D`` parameters.

    astropy evaluates on 0-based array coordinates (``np.mgrid``), so ``x_0 = x - 1``;
    ``r_eff`` is along the major axis, ``ellip = 1 - q``, ``theta`` in radians counter-clockwise
    from +x (``pa + 90°``) and ``amplitude`` the surface brightness at ``r_eff``.
    Note that ``Sersic2D`` samples pixel centres without integrating over pixels.
    """
    flux = mag_to_flux(mag, zeropoint, exptime)
    return {
        "amplitude": sersic_intensity_at_re(flux, re, n, q),
        "r_eff": re,
        "n": n,
        "x_0": np.asarray(x) - 1.0,
        "y_0": np.asarray(y) - 1.0,
        "ellip": 1.0 - np.asarray(q),
        "theta": np.deg2rad(wrap_pa(np.asarray(pa) + 90.0)),
    }


def from_astropy(amplitude, r_eff, n, x_0, y_0, ellip, theta, *, zeropoint: float = DEFAULT_ZEROPOINT,
                 exptime: float = 1.0):
    """``Sersic2D`` parameters (``theta`` in radians) → galnet ``dict(x, y, mag, re, n, q, pa)``."""
    q = 1.0 - np.asarray(ellip)
    flux = sersic_total_flux(amplitude, r_eff, n, q)
    return {
        "x": np.asarray(x_0) + 1.0,
        "y": np.asarray(y_0) + 1.0,
        "mag": flux_to_mag(flux, zeropoint, exptime),
        "re": r_eff,
        "n": n,
        "q": q,
        "pa": wrap_pa(np.rad2deg(theta) - 90.0),
    }
