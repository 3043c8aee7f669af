"""Derivatives of the forward model with respect to the galaxy parameters, in Fourier space.

The model of :mod:`galnet.render.model` is ``M = IDFT[F E(k) T(n, ln kappa(k; re, q, pa)) e^{-i k.x0}]``;
the inverse DFT is linear, so each derivative is the inverse DFT of the derivative spectrum. The
fitter's Levenberg–Marquardt steps use :func:`fourier_jacobian` for image PSFs.
"""

from __future__ import annotations

import torch

from ..conventions import mag_to_flux
from ..params import IX_PA, IX_RE, IX_X, IX_Y
from .fourier import centre_phase, dc_floor, k_grids, stamp_inverse_dft
from .geometry import RADIANS_PER_DEGREE, ellipse_axes, pa_rotation
from .sersic import sersic_fourier_grad

__all__ = ["fourier_jacobian"]

#: Fourier modes (galaxies x 6 x K x N) per Jacobian chunk: its temporaries stay in the CPU cache.
_JAC_CHUNK_ELEMENTS = 2**18


def fourier_jacobian(p: torch.Tensor, psf_spectrum: torch.Tensor, shape: tuple[int, int], size: int,
                     zeropoint: float, exptime: float, out: torch.Tensor) -> None:
    """∂model/∂(x, y, re, n, q, pa) of galaxies seen through PSF images, by differentiation in Fourier space.

    ``-i kx S`` and ``-i ky S`` for the centre, ``F E ∂T/∂θ`` for the shape. ``∂T/∂ln κ`` and
    ``∂T/∂n`` come from :func:`galnet.render.sersic.sersic_fourier_grad` (the renderer's own
    interpolant, differentiated analytically); ``∂ ln κ/∂(re, q, pa)`` are analytic
    (``κ² = re² (k_maj² + q² k_min²)``). The six spectra of a chunk, laid out kx-major, go through one
    batched inverse DFT (:func:`~galnet.render.fourier.stamp_inverse_dft`). The computation is in the
    real dtype of ``psf_spectrum`` (float32 in the fitter's LM loop: half the cost of float64,
    relative error ~1e-6). The magnitude column (``-0.4 ln 10 M``) is left to the caller.

    Parameters
    ----------
    p : Tensor, shape (B, 7)
        Catalog parameters ``x, y, mag, re, n, q, pa`` (1-based centre, pixels; degrees).
    psf_spectrum : Tensor, complex, shape (K, N) or (B, K, N)
        Kx-major PSF spectrum at this DFT size (``image_psf_spectrum(psf, size, kx_major=True)``).
    shape : (int, int)
        Stamp (H, W).
    size : int
        DFT size N.
    zeropoint, exptime : float
        Magnitude zero point and exposure time, s (:func:`galnet.conventions.mag_to_flux`).
    out : Tensor, shape (B, ≥7, H, W)
        Columns 0, 1, 3, 4, 5, 6 are written: counts per pixel per unit of x, y (pixels), re
        (pixels), n, q and pa (degrees).
    """
    dtype = psf_spectrum.real.dtype
    p = p.to(dtype)
    b = p.shape[0]
    kx, ky = k_grids(size, dtype, p.device)
    nk = kx.shape[0]
    kxg, kyg = kx[None, :, None], ky[None, None, :]  # kx-major: (1, K, 1), (1, 1, N)
    dx, dy = -1j * kxg, -1j * kyg  # ∂/∂x0, ∂/∂y0 of the centre's phase
    # galaxies per chunk: the temporaries stay in cache, but at least a few (per-chunk overheads)
    chunk = max(4, _JAC_CHUNK_ELEMENTS // (6 * size * nk))
    for s0 in range(0, b, chunk):
        sl = slice(s0, min(b, s0 + chunk))
        x, y, mag, re, n, q, pa = p[sl].unbind(-1)
        bc = x.shape[0]
        flux = mag_to_flux(mag, zeropoint, exptime)
        e_hat = psf_spectrum[sl] if psf_spectrum.ndim == 3 else psf_spectrum
        sn, cs = pa_rotation(pa)
        kmaj, kmin = ellipse_axes(kxg, kyg, sn[:, None, None], cs[:, None, None])  # (B, K, N)
        re2 = (re * re)[:, None, None]
        q_ = q[:, None, None]
        kmin2 = kmin * kmin
        kappa2 = re2 * (kmaj * kmaj + q_ * q_ * kmin2)
        # as the renderer: floor the DC mode (T = 1 there exactly) to keep the table range short
        kappa2 = torch.maximum(kappa2, dc_floor(re, q, size)[:, None, None])
        re2_inv = re2 / kappa2
        t, dt_dlnk, dt_dn = sersic_fourier_grad(n, 0.5 * torch.log(kappa2))
        # T(0) = 1 exactly for every n (the renderer restores the DC mode): no derivative there
        t[:, 0, 0] = 1.0
        dt_dlnk[:, 0, 0] = 0.0
        dt_dn[:, 0, 0] = 0.0
        base = centre_phase(x - 1, y - 1, size, flux).mul_(e_hat)  # F E e^{-i k.x0}: (B, K, N)
        spec = torch.empty((bc, 6, nk, size), dtype=base.dtype)
        s = base * t
        torch.mul(s, dx, out=spec[:, 0])
        torch.mul(s, dy, out=spec[:, 1])
        bt = base * dt_dlnk
        torch.mul(bt, (1.0 / re)[:, None, None], out=spec[:, 2])
        torch.mul(base, dt_dn, out=spec[:, 3])
        torch.mul(bt, (q_ * kmin2).mul_(re2_inv), out=spec[:, 4])
        torch.mul(bt, (kmaj * kmin).mul_(re2_inv).mul_((q_ * q_ - 1) * RADIANS_PER_DEGREE), out=spec[:, 5])
        img = stamp_inverse_dft(spec.reshape(bc * 6, nk, size), shape, size).reshape(bc, 6, *shape)
        out[sl, IX_X] = img[:, 0]
        out[sl, IX_Y] = img[:, 1]
        out[sl, IX_RE:IX_PA + 1] = img[:, 2:6]  # re, n, q, pa: consecutive columns
