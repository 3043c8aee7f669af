"""PSFs: validation of PSF images, and analytic PSFs (Gaussian, Moffat, Kolmogorov).

Pixel response is counted once and only once:

* a PSF **image** is an *effective* PSF (ePSF): the optical/atmospheric PSF already convolved with
  the pixel and sampled at pixel centres, as every survey PSF model (HSC PSF picker, PSFEx, piff)
  delivers. The renderer convolves the galaxy's exact Fourier transform with it and adds no pixel.
  It must be Nyquist-sampled (FWHM >= ~2.5 px) for its band-limited interpolation to be exact.
* an **analytic** PSF describes the PSF *without* the pixel; the renderer multiplies its Fourier
  transform by the pixel's (``sinc(kx/2) sinc(ky/2)``) and folds in the aliased frequencies, which
  is exact for any FWHM. :meth:`AnalyticPSF.draw` makes the matching ePSF image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import PSFError

__all__ = [
    "AnalyticPSF",
    "GaussianPSF",
    "MoffatPSF",
    "KolmogorovPSF",
    "validate_psf_image",
    "psf_centroid",
]

#: How far (in pixels) the light centroid of a PSF image may sit from its central pixel.
CENTROID_TOLERANCE_PIX = 0.25
#: How far from unit sum a PSF image may be before it is rejected (it is renormalised below that).
NORMALISATION_TOLERANCE = 0.05


def psf_centroid(psf: np.ndarray) -> tuple[float, float]:
    """Light centroid of a 2-D PSF image, 0-based (x = column, y = row)."""
    psf = np.asarray(psf, dtype=float)
    total = psf.sum()
    yy, xx = np.indices(psf.shape)
    return float((psf * xx).sum() / total), float((psf * yy).sum() / total)


def validate_psf_image(psf, *, name: str = "PSF", renormalise: bool = True) -> np.ndarray:
    """Check a PSF image (or a (B, P, P) cube) and return it as float64, normalised to unit sum.

    Rules: 2-D square (or a cube of squares), odd size, finite, no significantly negative pixels,
    centroid within :data:`CENTROID_TOLERANCE_PIX` of the central pixel, sum within
    :data:`NORMALISATION_TOLERANCE` of 1 unless ``renormalise`` (then any positive sum is rescaled).

    Raises
    ------
    PSFError
        Naming ``name`` (a file or a row) and what is wrong.
    """
    arr = np.asarray(psf, dtype=float)
    if arr.ndim not in (2, 3):
        raise PSFError(f"{name}: a PSF must be a 2-D image or a (N, P, P) cube, got shape {arr.shape}")
    cube = arr if arr.ndim == 3 else arr[None]
    size_y, size_x = cube.shape[-2:]
    if size_y != size_x:
        raise PSFError(f"{name}: PSF stamps must be square, got {size_y}x{size_x}")
    if size_x % 2 == 0:
        raise PSFError(
            f"{name}: PSF stamps must have an odd size so that the centre is a pixel centre, got "
            f"{size_x}x{size_x}; re-centre it on its peak and crop to an odd size (galnet.simulate"
            " .recenter_psf does this)"
        )
    out = np.empty_like(cube)
    for i, p in enumerate(cube):
        label = name if arr.ndim == 2 else f"{name}[{i}]"
        if not np.all(np.isfinite(p)):
            raise PSFError(f"{label}: PSF contains NaN or infinite pixels")
        total = p.sum()
        if not total > 0:
            raise PSFError(f"{label}: PSF sum is {total:g}; it must be positive")
        if p.min() < -0.01 * p.max():
            raise PSFError(f"{label}: PSF has negative pixels down to {p.min() / p.max():.3g} of its peak")
        if not renormalise and abs(total - 1) > NORMALISATION_TOLERANCE:
            raise PSFError(f"{label}: PSF sums to {total:.4g}, not 1")
        cx, cy = psf_centroid(p)
        c = (size_x - 1) / 2
        if math.hypot(cx - c, cy - c) > CENTROID_TOLERANCE_PIX:
            raise PSFError(
                f"{label}: PSF centroid is at 0-based ({cx:.2f}, {cy:.2f}), more than "
                f"{CENTROID_TOLERANCE_PIX} px from the central pixel ({c:g}, {c:g}); re-centre it"
            )
        out[i] = p / total
    return out if arr.ndim == 3 else out[0]


@dataclass(frozen=True)
class AnalyticPSF:
    """Base class: an elliptical analytic PSF, *without* pixel response.

    Attributes
    ----------
    fwhm : float
        Full width at half maximum along the major axis, pixels (the minor axis has ``q * fwhm``;
        GalSim's area-preserving ``shear`` would need ``fwhm * sqrt(q)`` before shearing).
    q : float
        Axis ratio b/a of the PSF (1 = round).
    pa : float
        Position angle of the PSF major axis, degrees counter-clockwise from +y.
    """

    fwhm: float
    q: float = 1.0
    pa: float = 0.0

    def __post_init__(self) -> None:
        if not (self.fwhm > 0 and math.isfinite(self.fwhm)):
            raise PSFError(f"{type(self).__name__}: fwhm must be positive, got {self.fwhm}")
        if not (0 < self.q <= 1):
            raise PSFError(f"{type(self).__name__}: q must be in (0, 1], got {self.q}")

    # circular radial transform of the unit-flux profile with major-axis FWHM = self.fwhm
    def _radial_fourier(self, k: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def outer_radius(self, fraction: float) -> float:
        """Radius (pixels, major axis) outside which less than ``fraction`` of the light lies."""
        raise NotImplementedError  # pragma: no cover - abstract

    def fourier(self, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
        """Fourier transform (unit flux, no pixel) at wavenumbers ``kx, ky`` (radians / pixel)."""
        s, c = math.sin(math.radians(self.pa)), math.cos(math.radians(self.pa))
        k_major = -kx * s + ky * c
        k_minor = kx * c + ky * s
        k = np.sqrt(k_major**2 + (self.q * k_minor) ** 2)
        return self._radial_fourier(k)

    def draw(self, size: int = 25, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The effective PSF image (pixel response included), ``size`` x ``size``, unit sum.

        Exact: drawn through the same Fourier engine as galaxies (see :mod:`galnet.render.model`).
        """
        from .model import render_point_source

        if size % 2 == 0:
            raise PSFError(f"PSF stamps must have an odd size, got {size}")
        img = render_point_source(self, shape=(size, size), dtype=dtype)
        return img / img.sum()


@dataclass(frozen=True)
class GaussianPSF(AnalyticPSF):
    """Elliptical Gaussian PSF."""

    def outer_radius(self, fraction: float) -> float:
        sigma = self.fwhm / (2 * math.sqrt(2 * math.log(2)))
        return sigma * math.sqrt(-2 * math.log(fraction))

    def _radial_fourier(self, k):
        sigma = self.fwhm / (2 * math.sqrt(2 * math.log(2)))
        return np.exp(-0.5 * (sigma * k) ** 2)


@dataclass(frozen=True)
class MoffatPSF(AnalyticPSF):
    """Elliptical Moffat PSF ``(1 + (r/alpha)^2)^(-beta)``, untruncated (beta > 1)."""

    beta: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 1:
            raise PSFError(f"MoffatPSF: beta must be > 1 for a finite flux, got {self.beta}")

    @property
    def alpha(self) -> float:
        """Scale radius, pixels: ``fwhm / (2 sqrt(2^(1/beta) - 1))``."""
        return self.fwhm / (2 * math.sqrt(2 ** (1 / self.beta) - 1))

    def outer_radius(self, fraction: float) -> float:
        return self.alpha * math.sqrt(fraction ** (1 / (1 - self.beta)) - 1)

    def _radial_fourier(self, k):
        from scipy.special import gammaln, kv

        nu = self.beta - 1
        z = np.asarray(k, dtype=float) * self.alpha
        out = np.ones_like(z)
        pos = z > 0
        zp = z[pos]
        log_pref = (1 - nu) * math.log(2) - gammaln(nu)
        with np.errstate(under="ignore"):
            out[pos] = np.exp(log_pref + nu * np.log(zp)) * kv(nu, zp)
        return out


@dataclass(frozen=True)
class KolmogorovPSF(AnalyticPSF):
    """Kolmogorov turbulence PSF: ``exp(-(k/k0)^(5/3))`` with GalSim's FWHM definition."""

    def outer_radius(self, fraction: float) -> float:
        # the Kolmogorov PSF's light outside r falls as ~0.2 (r / fwhm)^(-5/3)
        return self.fwhm * (0.2 / fraction) ** 0.6

    def _radial_fourier(self, k):
        lam_over_r0 = self.fwhm / 0.975865
        k0 = 2.992939911888651 / lam_over_r0
        return np.exp(-((np.asarray(k) / k0) ** (5.0 / 3.0)))
