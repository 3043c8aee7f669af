"""Wrap-around of the periodic DFT image: the DFT size of each galaxy and the near-ring correction.

An image sampled from its spectrum on an N x N DFT grid is periodic with period N: copies of the
galaxy sit ``N`` pixels apart. :func:`required_fourier_size` chooses N per galaxy (from
:data:`FOURIER_SIZES`, never smaller than the stamp) so that, after the light of the nearest
``_WRAP_RINGS`` rings of copies is subtracted in real space (:func:`near_rings_grid`,
:func:`grid_to_stamp`, :func:`near_rings_wrap`), the light of the copies left in the stamp is below
``wrap_tolerance`` of the galaxy's flux.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from ..params import IX_N, IX_Q, IX_RE, IX_X, IX_Y
from .geometry import ellipse_axes, pa_rotation
from .sersic import sersic_bn, sersic_log_norm

__all__ = [
    "FOURIER_SIZES",
    "DEFAULT_WRAP_TOLERANCE",
    "required_fourier_size",
    "near_rings_grid",
    "grid_to_stamp",
    "near_rings_wrap",
]

#: Candidate DFT grid sizes; each galaxy uses the smallest that keeps wrap-around below tolerance.
FOURIER_SIZES: tuple[int, ...] = (64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024, 1536, 2048)
#: Bound on the light of periodic copies falling into the stamp, as a fraction of the total flux.
DEFAULT_WRAP_TOLERANCE = 1e-3
_WRAP_RINGS = 2  # rings of periodic copies subtracted in real space (see near_rings_wrap)


def required_fourier_size(
    params: np.ndarray,
    shape: tuple[int, int],
    psf_size: int,
    *,
    wrap_tolerance: float | np.ndarray = DEFAULT_WRAP_TOLERANCE,
    return_correction: bool = False,
    forced_size: int | np.ndarray | None = None,
):
    """DFT size per galaxy such that wrapped-around light stays below tolerance.

    The light of the nearest ``_WRAP_RINGS`` rings of periodic copies is subtracted in real space
    (see :func:`near_rings_wrap`), so only the rings beyond must be negligible: the estimate
    sums, over rings r > ``_WRAP_RINGS`` of 8 r copies, the stamp area times the surface
    brightness at each ring's nearest distance; it must stay below half of ``wrap_tolerance`` of
    the total flux, and the near rings are subtracted where the first ring's bound exceeds the
    other half. The first ring must lie in
    the far field (2 re and 16 px beyond the PSF's reach) for its real-space subtraction, which
    ignores the PSF, to be accurate.

    Parameters
    ----------
    params : ndarray, shape (B, 7)
        Parameters in catalog conventions.
    shape : (int, int)
        Stamp (H, W).
    psf_size : int
        PSF stamp size (its half-width is added to the distance), pixels.
    wrap_tolerance : float or ndarray, shape (B,)
        Bound on the wrapped light, as a fraction of each galaxy's flux (one for all, or one each).
    return_correction : bool
        Also return whether each galaxy needs the near-ring subtraction.
    forced_size : int or ndarray of int, shape (B,), optional
        Use this DFT size for every galaxy, or these sizes (only the near-ring decision is computed).

    Returns
    -------
    sizes : ndarray of int, shape (B,)
        A size from :data:`FOURIER_SIZES`, at least the stamp's longer side (the largest size if
        none suffices).
    correct : ndarray of bool, shape (B,), only with ``return_correction``.
    """
    from scipy.special import gammaincinv, gammaln

    p = np.asarray(params, dtype=float)
    h, w = shape
    xc, yc, re, n, q = p[:, IX_X], p[:, IX_Y], p[:, IX_RE], p[:, IX_N], p[:, IX_Q]
    b = gammaincinv(2 * n, 0.5)
    log_norm = 2 * n * np.log(b) - np.log(2 * np.pi * n) - b - gammaln(2 * n) - np.log(q * re**2)
    d_far = np.max(np.stack([xc - 1, w - xc, yc - 1, h - yc]), axis=0) + psf_size // 2
    sizes = np.asarray(FOURIER_SIZES, dtype=float)
    tol = np.broadcast_to(np.asarray(wrap_tolerance, dtype=float), xc.shape)
    if forced_size is None:
        rings = np.arange(_WRAP_RINGS + 1, 65, dtype=float)
        # the first ring is corrected without the PSF: keep it beyond 2 re and 16 px past the
        # PSF's reach; and the grid holds the stamp (the FFT of stamp_inverse_dft yields N rows).
        # The smallest such size is the first candidate.
        far = (sizes[None, :] >= (d_far + 16 + 2 * re)[:, None]) & (sizes >= max(h, w))[None, :]
        idx = np.where(far.any(1), far.argmax(1), len(sizes) - 1)
        todo = np.flatnonzero(far.any(1))
        while todo.size:  # the light left decreases with the size: step up until it is small
            # light left after the near-ring subtraction: ring r holds 8 r copies, each bounded
            # by the stamp area times the surface brightness at its nearest distance r N - d_far.
            dist = rings[None, :] * sizes[idx[todo], None] - d_far[todo, None]
            ln_sb = log_norm[todo, None] - b[todo, None] * (
                (np.maximum(dist, 1.0) / re[todo, None]) ** (1.0 / n[todo, None]) - 1.0)
            left = (8 * rings * h * w * np.exp(ln_sb)).sum(-1)
            todo = todo[(left > 0.5 * tol[todo]) & (idx[todo] < len(sizes) - 1)]
            idx[todo] += 1
        chosen = sizes[idx].astype(int)
    else:
        chosen = np.broadcast_to(np.asarray(forced_size, dtype=int), xc.shape).copy()
    ln_first = log_norm - b * ((np.maximum(chosen - d_far, 1.0) / re) ** (1.0 / n) - 1.0)
    # half the budget for the far rings (above), half for uncorrected near rings
    needs_first_ring = 8 * h * w * np.exp(ln_first) > 0.5 * tol
    if return_correction:
        return chosen, needs_first_ring
    return chosen


_WRAP_GRID = 16  # grid points per axis on which the nearest rings of copies are evaluated


def near_rings_grid(x0, y0, re, n, q, pa_deg, shape, size):
    """Light of the nearest rings of periodic copies of unit-flux galaxies, on a coarse grid.

    The copies lie ``size`` pixels or more away, beyond 2 re, in the far field where the PSF no
    longer matters and the profile is smooth: it is evaluated on a (at most) 16 x 16 grid of
    pixel positions spanning the stamp, which :func:`grid_to_stamp` interpolates.

    Parameters
    ----------
    x0, y0, re, n, q, pa_deg : Tensor, shape (B,)
        0-based centre (pixels), ``re`` (pixels), index, axis ratio, position angle (degrees).
    shape : (int, int)
        Stamp (H, W).
    size : int or Tensor, shape (B,)
        DFT size (the period of the copies) of every galaxy or of each, pixels.

    Returns
    -------
    Tensor, shape (B, min(H, 16), min(W, 16)): counts per pixel of a unit-flux galaxy.
    """
    h, w = shape
    dtype, device = x0.dtype, x0.device
    grid_w, grid_h = min(w, _WRAP_GRID), min(h, _WRAP_GRID)
    f64 = torch.float64  # offsets from the copies (hundreds of pixels) in double, then rounded
    gx = torch.linspace(0, w - 1, grid_w, dtype=f64, device=device)
    gy = torch.linspace(0, h - 1, grid_h, dtype=f64, device=device)
    reach = range(-_WRAP_RINGS, _WRAP_RINGS + 1)
    shifts = torch.tensor([(mx, my) for mx in reach for my in reach if mx or my], dtype=f64,
                          device=device)  # (R, 2), in periods
    period = torch.as_tensor(size, dtype=f64, device=device).reshape(-1, 1)  # (B or 1, 1)
    dx = (gx - (x0.to(f64)[:, None] + shifts[:, 0] * period)[:, :, None]).to(dtype)  # (B, R, gw)
    dy = (gy - (y0.to(f64)[:, None] + shifts[:, 1] * period)[:, :, None]).to(dtype)  # (B, R, gh)
    s, c = pa_rotation(pa_deg)
    # x_major = -dx s + dy c and x_minor = (dx c + dy s) / q on the grid: (B, R, gh, gw), each the
    # sum of a (B, R, 1, gw) and a (B, R, gh, 1) product
    x_major, x_minor = ellipse_axes(dx[..., None, :], dy[..., :, None], s[:, None, None, None],
                                    c[:, None, None, None], inv_q=(1.0 / q)[:, None, None, None])
    b_n = sersic_bn(n)
    log_i = (sersic_log_norm(n, b_n) - torch.log(q * re * re))[:, None, None, None]
    bn = b_n[:, None, None, None]
    # (a / re)^(1/n) = exp((ln a^2 - 2 ln re) / 2n); light = exp(ln I_e - b_n ((a / re)^(1/n) - 1)).
    # Far copies underflow: clamped (at ~1e3 x the smallest normal number: a negligible light)
    # where exp stays fast (it is ~20x slower for subnormal results).
    half_n, ln_re_n = (0.5 / n)[:, None, None, None], (torch.log(re) / n)[:, None, None, None]
    floor = math.log(torch.finfo(dtype).tiny) + 7.0
    if torch.is_grad_enabled() and any(a.requires_grad for a in (x0, y0, re, n, q, pa_deg)):
        a2 = torch.addcmul(x_major * x_major, x_minor, x_minor)
        u = torch.exp(torch.log(a2) * half_n - ln_re_n)
        light = torch.exp(torch.clamp(log_i + bn - u * bn, min=floor))
    else:  # the same, in place: the temporaries are large
        a2 = x_major.mul_(x_major).addcmul_(x_minor, x_minor)
        u = a2.log_().mul_(half_n).sub_(ln_re_n).exp_()
        light = u.mul_(-bn).add_(log_i + bn).clamp_(min=floor).exp_()
    return light.sum(1)


@lru_cache(maxsize=8)
def _bicubic_matrix(n_out: int, n_in: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """(n_out, n_in) matrix of torch's 1-D bicubic interpolation (``align_corners=True``)."""
    eye = torch.eye(n_in, dtype=torch.float64, device=device)[:, None, :, None].expand(-1, 1, -1, 2)
    cols = torch.nn.functional.interpolate(eye, size=(n_out, 2), mode="bicubic", align_corners=True)
    return cols[:, 0, :, 0].T.to(dtype).contiguous()


def grid_to_stamp(light: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Bicubic interpolation (B, gh, gw) -> (B, H, W) of a :func:`near_rings_grid` (linear in it).

    torch's separable bicubic kernel (``align_corners=True``) as two small matrix products; ``shape``
    is the stamp (H, W). Units are kept (counts per pixel).
    """
    h, w = shape
    gh, gw = light.shape[-2:]
    if (gh, gw) == (h, w):
        return light
    wy = _bicubic_matrix(h, gh, light.dtype, str(light.device))  # (H, gh)
    wx = _bicubic_matrix(w, gw, light.dtype, str(light.device))  # (W, gw)
    return wy @ light @ wx.T


def near_rings_wrap(x0, y0, re, n, q, pa_deg, shape, size):
    """Light of the nearest rings of periodic copies of unit-flux galaxies, on the stamp (B, H, W).

    :func:`near_rings_grid` (same arguments) interpolated bicubically by :func:`grid_to_stamp`;
    counts per pixel of a unit-flux galaxy. Only for galaxies that need it.
    """
    return grid_to_stamp(near_rings_grid(x0, y0, re, n, q, pa_deg, shape, size), shape)
