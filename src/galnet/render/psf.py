"""PSFs: the one PSF check, analytic PSFs, drawing, re-centring and PSF libraries.

Pixel response is counted once and only once:

* a PSF **image** is an *effective* PSF (ePSF): the optical/atmospheric PSF already convolved with
  the pixel and sampled at pixel centres, as every survey PSF model (HSC PSF picker, PSFEx, piff)
  delivers. The renderer convolves the galaxy's exact Fourier transform with it and adds no pixel.
  It must be Nyquist-sampled (FWHM >= ~2.5 px) for its band-limited interpolation to be exact.
* an **analytic** PSF describes the PSF *without* the pixel; the renderer multiplies its Fourier
  transform by the pixel's (``sinc(kx/2) sinc(ky/2)``) and folds in the aliased frequencies, which
  is exact for any FWHM. :meth:`AnalyticPSF.draw` makes the matching ePSF image.

Checks
------
Every PSF image goes through the same rules (:func:`psf_status`, vectorised over a cube, and
:func:`check_psf`, which raises naming the first problem): a square stamp of odd size (of the
expected size where one is given), finite pixels, a positive sum, no pixel below
:data:`NEGATIVE_TOLERANCE` of the peak, the light centroid within :data:`CENTROID_TOLERANCE_PIX` of
the central pixel. A sum off 1 is renormalised (or refused beyond :data:`NORMALISATION_TOLERANCE`
when asked); :func:`repair_psfs` says which PSFs are usable as given (sum within
:data:`UNIT_SUM_TOLERANCE` of 1), which after renormalisation, and re-centres the others
(:func:`recenter_psf`).

Drawing
-------
:func:`render_point_source` (and :meth:`AnalyticPSF.draw`) draw through the renderer's Fourier
engine (:mod:`galnet.render.fourier`); :func:`draw_analytic_psfs` draws a batch of Moffat /
Kolmogorov ePSFs by sub-pixel summation (the simulator's PSFs); :func:`load_psf_library` reads a
FITS library of PSF images.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..catalog import read_fits_checked
from ..errors import InputDataError, PSFError
from .fourier import analytic_spectrum, centre_phase, image_psf_spectrum, inverse_dft, stamp_inverse_dft
from .geometry import ellipse_axes, pa_rotation

__all__ = [
    "CENTROID_TOLERANCE_PIX",
    "NORMALISATION_TOLERANCE",
    "UNIT_SUM_TOLERANCE",
    "NEGATIVE_TOLERANCE",
    "psf_centroid",
    "psf_status",
    "check_psf",
    "repair_psf",
    "repair_psfs",
    "as_psf",
    "AnalyticPSF",
    "GaussianPSF",
    "MoffatPSF",
    "KolmogorovPSF",
    "render_point_source",
    "draw_analytic_psfs",
    "recenter_psf",
    "load_psf_library",
]

#: How far (in pixels) the light centroid of a PSF image may sit from its central pixel.
CENTROID_TOLERANCE_PIX = 0.25
#: How far from unit sum a PSF image may be where renormalisation is refused (``check_psf(...,
#: renormalise=False)``).
NORMALISATION_TOLERANCE = 0.05
#: A PSF whose sum is within this of 1 is used as given; further off it is renormalised (and the
#: predictor flags it ``PSF_FIXED``).
UNIT_SUM_TOLERANCE = 1e-3
#: Pixels below ``-NEGATIVE_TOLERANCE`` times the peak are significantly negative (not rounding).
NEGATIVE_TOLERANCE = 0.01


def psf_centroid(psf: np.ndarray) -> tuple[float, float]:
    """Light centroid of a 2-D PSF image, 0-based pixels (x = column, y = row)."""
    psf = np.asarray(psf, dtype=float)
    total = psf.sum()
    yy, xx = np.indices(psf.shape)
    return float((psf * xx).sum() / total), float((psf * yy).sum() / total)


@dataclass(frozen=True)
class _Rules:
    """Per-row quantities of a (B, P, P) cube that the PSF rules test (:func:`_measure`)."""

    finite: np.ndarray  # (B,) bool: every pixel finite
    total: np.ndarray  # (B,) sum (non-finite rows: 0)
    low: np.ndarray  # (B,) smallest pixel
    peak: np.ndarray  # (B,) largest pixel
    cx: np.ndarray  # (B,) light centroid minus the central pixel, x
    cy: np.ndarray  # (B,) the same, y

    @property
    def nonneg(self) -> np.ndarray:
        return self.low >= -NEGATIVE_TOLERANCE * self.peak

    @property
    def centred(self) -> np.ndarray:
        return np.hypot(self.cx, self.cy) <= CENTROID_TOLERANCE_PIX

    @property
    def usable(self) -> np.ndarray:
        """Every rule but the unit sum holds: usable after renormalisation."""
        return self.finite & (self.total > 0) & self.nonneg & self.centred


def _measure(cube: np.ndarray) -> _Rules:
    """The quantities of :class:`_Rules` for a square cube (B, P, P), in the cube's dtype."""
    b, size = cube.shape[0], cube.shape[-1]
    flat = cube.reshape(b, -1)
    finite = np.isfinite(flat).all(axis=1)
    c = np.where(finite[:, None], flat, 0.0)
    total = c.sum(axis=1)
    safe = np.where(total > 0, total, 1.0)
    coords = np.arange(size, dtype=float) - (size - 1) / 2
    img = c.reshape(b, size, size)
    cx = (img.sum(axis=1) * coords).sum(axis=1) / safe
    cy = (img.sum(axis=2) * coords).sum(axis=1) / safe
    return _Rules(finite, total, c.min(axis=1), c.max(axis=1), cx, cy)


def _shape_problem(shape: tuple[int, ...], size: int | None) -> str | None:
    """Why PSF stamps of ``shape`` (..., P, P) cannot be used (None if they can)."""
    size_y, size_x = shape[-2:]
    if size_y != size_x:
        return f"PSF stamps must be square, got {size_y}x{size_x}"
    if size_x % 2 == 0:
        return (f"PSF stamps must have an odd size so that the centre is a pixel centre, got "
                f"{size_x}x{size_x}; re-centre it on its peak and crop to an odd size (galnet.render"
                ".recenter_psf does this)")
    if size is not None and size_x != size:
        return f"PSF stamps must be {size}x{size}, got {size_x}x{size_x}"
    return None


def psf_status(cube, size: int | None = None, *, sum_tolerance: float = UNIT_SUM_TOLERANCE
               ) -> tuple[np.ndarray, np.ndarray]:
    """The PSF rules for every row of a cube, vectorised.

    Parameters
    ----------
    cube : array_like, shape (B, P, P)
        PSF images. The arithmetic is done in their dtype (a float32 cube stays float32).
    size : int, optional
        Required side P, pixels (default: any odd P).
    sum_tolerance : float
        Largest ``|sum - 1|`` of a PSF usable as given.

    Returns
    -------
    ok : ndarray of bool, shape (B,)
        Usable as given: the right square odd shape, finite, positive sum, no significantly negative
        pixel, centred (see the module notes), and a sum within ``sum_tolerance`` of 1.
    usable : ndarray of bool, shape (B,)
        The same rules except the sum: usable after renormalisation (``ok`` implies ``usable``).
    """
    cube = np.asarray(cube)
    b = cube.shape[0]
    if cube.ndim != 3 or _shape_problem(cube.shape, size) is not None:
        return np.zeros(b, bool), np.zeros(b, bool)
    rules = _measure(cube)
    usable = rules.usable
    return usable & (np.abs(rules.total - 1) <= sum_tolerance), usable


def _row_problem(rules: _Rules, i: int, label: str, size: int, renormalise: bool) -> str | None:
    """The first PSF rule that row ``i`` breaks, as an error message naming ``label`` (None: none)."""
    total = rules.total[i]
    if not rules.finite[i]:
        return f"{label}: PSF contains NaN or infinite pixels"
    if not total > 0:
        return f"{label}: PSF sum is {total:g}; it must be positive"
    if not rules.nonneg[i]:
        return f"{label}: PSF has negative pixels down to {rules.low[i] / rules.peak[i]:.3g} of its peak"
    if not renormalise and abs(total - 1) > NORMALISATION_TOLERANCE:
        return f"{label}: PSF sums to {total:.4g}, not 1"
    if not rules.centred[i]:
        c = (size - 1) / 2
        return (f"{label}: PSF centroid is at 0-based ({rules.cx[i] + c:.2f}, {rules.cy[i] + c:.2f}), more "
                f"than {CENTROID_TOLERANCE_PIX} px from the central pixel ({c:g}, {c:g}); re-centre it")
    return None


def check_psf(psf, *, name: str = "PSF", renormalise: bool = True, size: int | None = None) -> np.ndarray:
    """Check a PSF image or cube against the PSF rules and return it normalised to unit sum.

    Parameters
    ----------
    psf : array_like, shape (P, P) or (B, P, P)
        Effective PSF image(s).
    name : str
        Names the PSF (a file, a row) in error messages; rows of a cube are ``name[i]``.
    renormalise : bool
        Rescale any positive sum to 1; ``False`` refuses sums further than
        :data:`NORMALISATION_TOLERANCE` from 1.
    size : int, optional
        Required side P, pixels.

    Returns
    -------
    ndarray, float64, the shape of ``psf``: each image divided by its sum.

    Raises
    ------
    PSFError
        Naming ``name`` (and the row) and the first rule broken: not 2-D or 3-D, not square, even
        or wrong size, NaN/inf pixels, non-positive sum, significantly negative pixels, sum off 1
        (``renormalise=False``), centroid off the central pixel.
    """
    arr = np.asarray(psf, dtype=float)
    if arr.ndim not in (2, 3):
        raise PSFError(f"{name}: a PSF must be a 2-D image or a (N, P, P) cube, got shape {arr.shape}")
    problem = _shape_problem(arr.shape, size)
    if problem is not None:
        raise PSFError(f"{name}: {problem}")
    cube = arr if arr.ndim == 3 else arr[None]
    rules = _measure(cube)
    good = rules.usable
    if not renormalise:
        good = good & (np.abs(rules.total - 1) <= NORMALISATION_TOLERANCE)
    if not good.all():
        i = int(np.flatnonzero(~good)[0])
        label = name if arr.ndim == 2 else f"{name}[{i}]"
        raise PSFError(_row_problem(rules, i, label, cube.shape[-1], renormalise) or f"{label}: bad PSF")
    out = cube / rules.total[:, None, None]
    return out if arr.ndim == 3 else out[0]


def repair_psf(psf, size: int, *, name: str = "PSF") -> tuple[np.ndarray, bool]:
    """A usable ``size × size`` PSF from a PSF image, and whether it had to be repaired.

    A PSF that passes :func:`psf_status` as given is returned unchanged; one whose only fault is
    its sum is renormalised; one of another size or off-centre is re-centred and cropped/padded with
    :func:`recenter_psf`.

    Parameters
    ----------
    psf : array_like, shape (H, W)
    size : int
        Output side (odd), pixels.
    name : str
        Names the PSF in error messages.

    Returns
    -------
    psf : ndarray, shape (size, size), float32
    repaired : bool

    Raises
    ------
    PSFError
        The PSF cannot be repaired (NaN, non-positive sum, no light left); the message names ``name``.
    """
    arr = np.asarray(psf, dtype=float)
    if arr.ndim != 2:
        raise PSFError(f"{name}: a PSF must be a 2-D image, got shape {arr.shape}")
    ok, usable = psf_status(arr[None], size)
    if ok[0]:
        return arr.astype(np.float32), False
    if usable[0]:
        return (arr / arr.sum()).astype(np.float32), True
    return recenter_psf(arr, size, name=name).astype(np.float32), True


def repair_psfs(cube, size: int, *, names: Sequence[str] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """:func:`repair_psf` for every row of a (B, P, P) cube, vectorised where nothing needs repair.

    Parameters
    ----------
    cube : array_like, shape (B, P, P)
    size : int
        Output side (odd), pixels.
    names : sequence of str, optional
        Per-row names for messages (default ``"PSF row i"``).

    Returns
    -------
    psfs : ndarray, shape (B, size, size), float32
        Rows usable as given are copied, the others renormalised or re-centred; unrepairable rows
        hold a central delta.
    repaired : ndarray of bool, shape (B,)
    bad : ndarray of bool, shape (B,)
        Unrepairable rows.
    messages : list of str, length B
        Why each bad row is bad ('' for the others).
    """
    cube = np.asarray(cube)
    b = cube.shape[0]
    ok, usable = psf_status(cube, size)
    out = np.empty((b, size, size), dtype=np.float32)
    repaired = np.zeros(b, bool)
    bad = np.zeros(b, bool)
    messages = [""] * b
    if ok.all():
        out[:] = cube
        return out, repaired, bad, messages
    if ok.any():  # (a cube of another size has no row usable as given)
        out[ok] = cube[ok]
    for i in np.flatnonzero(~ok):
        if usable[i]:
            out[i] = cube[i] / cube[i].sum()
            repaired[i] = True
            continue
        name = names[i] if names is not None else f"PSF row {i}"
        try:
            out[i], repaired[i] = repair_psf(cube[i], size, name=name)
        except PSFError as exc:
            messages[i] = str(exc)
            bad[i] = True
            out[i] = 0.0
            out[i, size // 2, size // 2] = 1.0
    return out, repaired, bad, messages


def as_psf(psf: Any, batch: int, dtype: torch.dtype, device: Any, *, validate: bool = True
           ) -> AnalyticPSF | torch.Tensor:
    """The ``psf`` argument of the renderers as an :class:`AnalyticPSF` or a tensor (P, P) / (B, P, P).

    Parameters
    ----------
    psf : AnalyticPSF, Tensor or array_like
    batch : int
        Rows a PSF cube must have.
    dtype, device
        Of the returned tensor.
    validate : bool
        Check images with :func:`check_psf` (and normalise them); ``False`` trusts a tensor as
        already checked and normalised (the fitter and the predictor check their PSFs once, not on
        every render).

    Raises
    ------
    PSFError
        A bad image, or a cube whose length is not ``batch``.
    """
    if isinstance(psf, AnalyticPSF):
        return psf
    if validate or not isinstance(psf, torch.Tensor):
        arr = psf.detach().cpu().numpy() if isinstance(psf, torch.Tensor) else np.asarray(psf)
        psf = torch.as_tensor(check_psf(arr, name="psf"))
    if psf.ndim == 3 and psf.shape[0] != batch:
        raise PSFError(f"psf: a PSF cube must have one stamp per galaxy ({batch}), got {psf.shape[0]}")
    return psf.to(dtype=dtype, device=device)


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
        k_major, k_minor = ellipse_axes(kx, ky, *pa_rotation(self.pa))
        k = np.sqrt(k_major**2 + (self.q * k_minor) ** 2)
        return self._radial_fourier(k)

    def draw(self, size: int = 25, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The effective PSF image (pixel response included), ``size`` x ``size``, unit sum.

        Exact: drawn through the same Fourier engine as galaxies (see :mod:`galnet.render.model`).
        """
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


def render_point_source(
    psf: AnalyticPSF | torch.Tensor | np.ndarray,
    *,
    shape: Sequence[int] = (25, 25),
    center: tuple[float, float] | None = None,
    flux: float = 1.0,
    dtype: torch.dtype = torch.float64,
    fourier_size: int | None = None,
) -> torch.Tensor:
    """Image of a point source seen through ``psf``, pixel response included exactly once.

    Parameters
    ----------
    psf : AnalyticPSF, or PSF image (P, P) (a (1, P, P) cube is taken as its image)
        Analytic PSF without the pixel, or effective PSF image (checked and normalised here).
    shape : (int, int)
        Stamp (H, W), pixels.
    center : (float, float), optional
        1-based (x, y) position, pixels; default the central pixel of the stamp.
    flux : float
        Total flux, counts.
    dtype : torch.dtype
        float32 or float64.
    fourier_size : int, optional
        DFT size (default: a power of 2 holding the stamp and twice the PSF, at least 64).

    Returns
    -------
    Tensor, shape (H, W): counts per pixel.
    """
    h, w = int(shape[0]), int(shape[1])
    cx, cy = center if center is not None else ((w + 1) / 2, (h + 1) / 2)
    psf_obj = as_psf(psf, 1, dtype, "cpu")
    if isinstance(psf_obj, torch.Tensor) and psf_obj.ndim == 3:
        psf_obj = psf_obj[0]
    size = fourier_size or max(64, int(2 ** math.ceil(math.log2(max(h, w) + 2 * (
        psf_obj.shape[-1] if isinstance(psf_obj, torch.Tensor) else 8 * psf_obj.fwhm)))))
    one = torch.ones(1, dtype=dtype)
    x0, y0 = one * (cx - 1), one * (cy - 1)
    if isinstance(psf_obj, AnalyticPSF):
        image = inverse_dft(analytic_spectrum(psf_obj, x0, y0, size), x0, y0, (h, w), size)
    else:
        spectrum = centre_phase(x0, y0, size) * image_psf_spectrum(psf_obj, size, kx_major=True)
        image = stamp_inverse_dft(spectrum, (h, w), size)
    return ((one * flux)[:, None, None] * image)[0]


# ============================================================================ simulated and library PSFs
_MOFFAT, _KOLMOGOROV = 0, 1


@functools.lru_cache(maxsize=1)
def _kolmogorov_table() -> tuple[np.ndarray, np.ndarray]:
    """Radial profile of a unit-FWHM Kolmogorov PSF on r in [0, 12] FWHM (arbitrary normalisation).

    Hankel transform of GalSim's ``exp(-(k/k0)^(5/3))`` (as :class:`KolmogorovPSF`).
    """
    from scipy.special import j0

    k0 = 2.992939911888651 * 0.975865
    k = np.linspace(0.0, 14.0 * k0, 4001)
    w = k * np.exp(-((k / k0) ** (5.0 / 3.0)))
    r = np.linspace(0.0, 12.0, 1201)
    prof = np.empty_like(r)
    for s in range(0, r.size, 200):
        prof[s : s + 200] = np.trapezoid(w[None, :] * j0(np.outer(r[s : s + 200], k)), k, axis=1)
    prof = np.maximum(prof, 0.0)
    return r, prof / prof[0]


def draw_analytic_psfs(model, fwhm_pix, beta, q, pa, size: int, *, oversample: int = 5) -> np.ndarray:
    """Effective (pixel-integrated) analytic PSF images, vectorised over a batch.

    Each PSF is evaluated on ``oversample x oversample`` sub-pixels per pixel and summed (the
    pixel response), then normalised to unit sum over the stamp. The profiles are point-symmetric,
    so only the first ``size // 2 + 1`` rows are evaluated. Agrees with
    :meth:`MoffatPSF.draw` / :meth:`KolmogorovPSF.draw` to
    ~1e-3 of the peak for FWHM >= 3 px (tested); the image returned *is* the PSF the stamp is
    rendered with, so this small difference from the analytic model does not bias anything.

    Parameters
    ----------
    model : ndarray (B,) of int
        0 = Moffat, 1 = Kolmogorov.
    fwhm_pix : ndarray (B,)
        FWHM along the major axis, pixels.
    beta : ndarray (B,)
        Moffat ``beta`` (ignored for Kolmogorov).
    q : ndarray (B,)
        PSF axis ratio.
    pa : ndarray (B,)
        PSF position angle, degrees CCW from +y.
    size : int
        Odd stamp size, pixels.
    oversample : int
        Odd number of sub-pixels per pixel per axis.

    Returns
    -------
    ndarray, shape (B, size, size), float64, unit sum, centred on the central pixel.
    """
    n = len(fwhm_pix)
    s = size * oversample
    half = size // 2 + 1  # pixel rows drawn; the others follow from the point symmetry
    u = (torch.arange(s, dtype=torch.float32) - (s - 1) / 2) / oversample
    yy, xx = torch.meshgrid(u[: half * oversample], u, indexing="ij")
    # r^2 = x_major^2 + x_minor^2 = A x^2 + C y^2 + B x y: one (b, 3) @ (3, sub-pixels) product
    basis = torch.stack([xx * xx, yy * yy, xx * yy]).reshape(3, -1)

    def f32(a):
        return torch.as_tensor(np.asarray(a, dtype=np.float32))

    sn, cs = pa_rotation(f32(pa))
    iq2 = 1.0 / f32(q) ** 2
    # x_major = -x sin + y cos, x_minor = (x cos + y sin) / q
    coef = torch.stack([sn * sn + cs * cs * iq2, cs * cs + sn * sn * iq2, 2 * sn * cs * (iq2 - 1)], -1)
    fw = f32(fwhm_pix)
    model = np.asarray(model)
    moffat = model == _MOFFAT
    bt = f32(beta)
    # Moffat: (1 + r^2 / alpha^2)^-beta; Kolmogorov: tabulated profile of r / fwhm
    alpha2 = (fw / (2 * torch.sqrt(2 ** (1 / bt) - 1))) ** 2
    scale = torch.where(torch.as_tensor(moffat), 1.0 / alpha2, 1.0 / (fw * fw))
    coef = coef * scale[:, None]
    out = np.empty((n, size, size))
    if not moffat.all():
        r_tab, p_tab = _kolmogorov_table()
        step, r_max = float(r_tab[1] - r_tab[0]), float(r_tab[-1])
        table = torch.as_tensor(p_tab, dtype=torch.float32)
    chunk = max(1, 2**17 // basis.shape[1])  # PSFs per chunk: temporaries stay in cache
    for kind in (_MOFFAT, _KOLMOGOROV):
        of_kind = np.flatnonzero(moffat if kind == _MOFFAT else ~moffat)
        for start in range(0, of_kind.size, chunk):
            idx = of_kind[start : start + chunk]
            r2 = coef[idx] @ basis  # (b, sub-pixels): r^2 / alpha^2 (Moffat) or (r / fwhm)^2
            if kind == _MOFFAT:
                img = torch.exp(torch.log1p(r2) * -bt[idx][:, None])
            else:  # linear interpolation of the uniform table (as np.interp), 0 beyond its end
                rr = torch.sqrt(r2)
                pos = (rr * (1.0 / step)).clamp_(max=table.shape[0] - 1)
                j = pos.floor().clamp_(max=table.shape[0] - 2)
                img = torch.lerp(table[j.long()], table[j.long() + 1], pos - j)
                img = torch.where(rr > r_max, 0.0, img)
            top = img.reshape(-1, half, oversample, size, oversample).sum(2).sum(-1).double()
            full = torch.cat([top, top[:, : half - 1].flip(1, 2)], 1)  # row size-1-i = row i reversed
            out[idx] = (full / full.sum(dim=(1, 2), keepdim=True)).numpy()
    return out


def recenter_psf(psf, size: int, *, name: str = "PSF") -> np.ndarray:
    """Make a usable effective PSF of odd ``size`` from an arbitrary PSF image.

    The light centroid (measured in a window around the peak) is moved onto the nearest pixel
    centre by a cubic-spline sub-pixel shift, then the image is cropped (or zero-padded) to
    ``size x size`` around it, tiny negative spline ringing is clipped, and it is normalised to
    unit sum. Even-sized or off-centre PSF stamps (e.g. the 50x50 HST F105W PSF) are fixed this way.

    Parameters
    ----------
    psf : array_like, shape (P, Q)
        PSF image, any size >= 3.
    size : int
        Output size (odd), pixels.
    name : str
        Used in error messages (file name and index).

    Returns
    -------
    ndarray, shape (size, size), float64, unit sum.

    Raises
    ------
    PSFError
        Not 2-D, too small, NaN/inf pixels, non-positive sum.
    """
    from scipy import ndimage

    arr = np.asarray(psf, dtype=float)
    if arr.ndim != 2 or min(arr.shape) < 3:
        raise PSFError(f"{name}: a PSF must be a 2-D image at least 3x3, got shape {arr.shape}")
    if size % 2 == 0:
        raise PSFError(f"{name}: the output PSF size must be odd, got {size}")
    if not np.all(np.isfinite(arr)):
        raise PSFError(f"{name}: PSF contains {int((~np.isfinite(arr)).sum())} NaN or infinite pixels")
    total = arr.sum()
    if not total > 0:
        raise PSFError(f"{name}: PSF sum is {total:g}; it must be positive")
    arr = arr / total
    pos = np.clip(arr, 0, None)
    cy, cx = np.unravel_index(np.argmax(pos), pos.shape)
    half = max(2, min(size, *arr.shape) // 2)
    for _ in range(3):  # iterate the windowed centroid
        y0, y1 = max(0, int(round(cy)) - half), min(arr.shape[0], int(round(cy)) + half + 1)
        x0, x1 = max(0, int(round(cx)) - half), min(arr.shape[1], int(round(cx)) + half + 1)
        win = pos[y0:y1, x0:x1]
        yy, xx = np.indices(win.shape)
        cy, cx = y0 + (win * yy).sum() / win.sum(), x0 + (win * xx).sum() / win.sum()
    iy, ix = int(round(cy)), int(round(cx))
    if abs(cy - iy) > 1e-3 or abs(cx - ix) > 1e-3:
        arr = ndimage.shift(arr, (iy - cy, ix - cx), order=3, mode="constant")
    h = size // 2
    padded = np.pad(arr, h)
    out = padded[iy : iy + size, ix : ix + size]  # centre (iy + h, ix + h) in padded coordinates
    out = np.clip(out, 0.0, None)
    if not out.sum() > 0:
        raise PSFError(f"{name}: no positive light left after re-centring")
    return check_psf(out / out.sum(), name=name)


@functools.lru_cache(maxsize=8)
def load_psf_library(path: str, size: int, hdu: int | str | None = None) -> np.ndarray:
    """Read a PSF library FITS file into a validated (N, size, size) cube of effective PSFs.

    Accepted layouts: a (N, P, P) cube in one HDU, a 2-D PSF, or one 2-D PSF per image HDU
    (``hdu`` selects one HDU). Each PSF goes through :func:`recenter_psf`.

    Raises
    ------
    InputDataError
        The file is missing, unreadable or has no image data.
    PSFError
        A PSF is unusable; the message names the file and the index.
    """
    stamps = read_fits_checked(path, "PSF library", lambda p: _read_psf_stamps(p, path, hdu))
    if not stamps:
        raise InputDataError(f"PSF library {path}: no image data found")
    return np.stack([recenter_psf(s, size, name=f"PSF library {path}[{i}]") for i, s in enumerate(stamps)])


def _read_psf_stamps(p: Path, path: str, hdu: int | str | None) -> list[np.ndarray]:
    """The 2-D PSF images of a library file (see :func:`load_psf_library`)."""
    from astropy.io import fits

    stamps: list[np.ndarray] = []
    with fits.open(p, memmap=False) as hdul:
        hdus = [hdul[hdu]] if hdu is not None else [h for h in hdul if h.data is not None and h.is_image]
        for h in hdus:
            data = np.asarray(h.data, dtype=float)
            if data.ndim == 2:
                stamps.append(data)
            elif data.ndim == 3:
                stamps.extend(data)
            else:
                raise PSFError(f"PSF library {path}: HDU {h.name!r} has {data.ndim} dimensions; need 2 or 3")
    return stamps
