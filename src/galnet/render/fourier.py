"""The Fourier engine shared by the renderer, the PSF module and the fitter's Jacobian.

A model image is sampled at pixel centres from its spectrum on an N x N DFT grid (see
:mod:`galnet.render.model`). Only the ``kx >= 0`` half of the Hermitian spectrum is kept: ``K = N // 2
+ 1`` columns. Two layouts are used:

* ``ky``-major, (B, N, K): for analytic PSFs, inverse transformed by :func:`inverse_dft` (two matrix
  products, the centre shift applied here);
* ``kx``-major, (B, K, N): for PSF images, with the centre's phase (:func:`centre_phase`) already in
  the spectrum, inverse transformed by :func:`stamp_inverse_dft` (an FFT along the contiguous ``ky``
  axis, then one real matrix product onto the stamp's columns).

Wavenumbers are in radians / pixel, centres are 0-based pixel positions (x = column, y = row).
Nothing here knows about Sérsic profiles or PSF classes: an analytic PSF is anything with a
``fourier(kx, ky)`` method.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ..errors import ParameterRangeError

__all__ = [
    "k_grids",
    "image_psf_spectrum",
    "analytic_psf_terms",
    "analytic_spectrum",
    "inverse_dft",
    "stamp_inverse_dft",
    "centre_phase",
    "dc_floor",
]


def k_grids(size: int, dtype: torch.dtype, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Wavenumbers of the DFT grid of side ``size``.

    Returns
    -------
    kx : Tensor, shape (K,), K = size // 2 + 1
        The half axis ``2 pi k / N``, radians / pixel.
    ky : Tensor, shape (N,)
        The full axis in FFT order (``2 pi fftfreq(N)``), radians / pixel.
    """
    kx = 2 * math.pi * torch.arange(size // 2 + 1, dtype=dtype, device=device) / size
    ky = 2 * math.pi * torch.fft.fftfreq(size, dtype=dtype, device=device)
    return kx, ky


def image_psf_spectrum(psf: torch.Tensor, size: int, *, kx_major: bool = False) -> torch.Tensor:
    """DFT of centred, odd-sized PSF images on the half grid of side ``size``.

    The image is real, so its ``kx`` stage is one real (B P, P) @ (P, 2K) product with the (real,
    imaginary) pairs of ``e^{-i kx x}`` as columns (3-5x faster than a complex product). The ``ky``
    stage of the ``kx``-major layout is an FFT along the contiguous axis (2-3x faster again).

    Parameters
    ----------
    psf : Tensor, shape (P, P) or (B, P, P), real
        Effective PSF image(s), centred on the central pixel.
    size : int
        DFT size N, pixels.
    kx_major : bool
        Return the (K, N) / (B, K, N) layout instead of (N, K) / (B, N, K).

    Returns
    -------
    Tensor, complex (the complex dtype of ``psf``'s real dtype).
    """
    p = psf.shape[-1]
    c = (p - 1) // 2
    kx, ky = k_grids(size, psf.dtype, psf.device)
    offs = torch.arange(p, dtype=psf.dtype, device=psf.device) - c
    ax = torch.exp(-1j * (offs[:, None] * kx[None, :]))  # (P, K)
    rows = psf.reshape(-1, p) @ torch.view_as_real(ax).reshape(p, -1)  # (B P, 2K) real
    rows = torch.view_as_complex(rows.reshape(*psf.shape[:-1], -1, 2))  # (B, P, K)
    if kx_major:  # sum_y rows[y] e^{-i ky (y - c)}: row y added at index (y - c) mod N
        placed = rows.new_zeros(rows.shape[:-2] + (rows.shape[-1], size))
        index = torch.remainder(torch.arange(p, device=psf.device) - c, size)
        return torch.fft.fft(placed.index_add_(-1, index, rows.transpose(-1, -2)), dim=-1)
    ay = torch.exp(-1j * (ky[:, None] * offs[None, :]))  # (N, P)
    return ay @ rows


def analytic_psf_terms(psf: Any, size: int, dtype: torch.dtype, device: Any, *,
                       alias_floor: float = 1e-7) -> list[tuple[int, int, torch.Tensor]]:
    """The effective (pixel-convolved) spectrum of an analytic PSF, one term per alias shift.

    The pixel box's transform ``sinc(kx / 2) sinc(ky / 2)`` times ``psf.fourier`` at the shifted
    wavenumbers ``k + 2 pi m``; shifts ``m`` in [-2, 2]^2 whose term exceeds ``alias_floor`` somewhere
    are kept (``m = 0`` always).

    Parameters
    ----------
    psf : AnalyticPSF (anything with ``fourier(kx, ky)`` on numpy arrays, radians / pixel)
    size : int
        DFT size N.
    dtype, device
        Of the returned tensors.

    Returns
    -------
    list of (m_x, m_y, Tensor (N, K) real)
    """
    kx, ky = k_grids(size, torch.float64, "cpu")
    kxg, kyg = np.meshgrid(kx.numpy(), ky.numpy())
    terms = []
    for mx in (-2, -1, 0, 1, 2):
        for my in (-2, -1, 0, 1, 2):
            kxs = kxg + 2 * math.pi * mx
            kys = kyg + 2 * math.pi * my
            spec = psf.fourier(kxs, kys) * np.sinc(kxs / (2 * math.pi)) * np.sinc(kys / (2 * math.pi))
            if (mx, my) == (0, 0) or np.abs(spec).max() > alias_floor:
                terms.append((mx, my, torch.as_tensor(spec, dtype=dtype, device=device)))
    return terms


def analytic_spectrum(psf: Any, x0: torch.Tensor, y0: torch.Tensor, size: int,
                      object_spectrum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                      ) -> torch.Tensor:
    """Half spectra (B, N, K), complex, of objects seen through an analytic PSF, aliases folded in.

    ``sum_m T(k + 2 pi m) E(k + 2 pi m) e^{-2 pi i m.x0}`` over the alias shifts of
    :func:`analytic_psf_terms`; the centre's phase ``e^{-i k.x0}`` is left to :func:`inverse_dft`.

    Parameters
    ----------
    psf : AnalyticPSF
    x0, y0 : Tensor, shape (B,)
        0-based centres, pixels; their dtype and device are used.
    size : int
        DFT size N.
    object_spectrum : callable, optional
        ``(kx (K,), ky (N,)) -> Tensor (B, N, K)``: the objects' unit-flux transforms at shifted
        wavenumbers (radians / pixel). ``None``: point sources (``T = 1``).
    """
    dtype, device = x0.dtype, x0.device
    kx, ky = k_grids(size, dtype, device)
    spectrum = None
    for mx, my, e_hat in analytic_psf_terms(psf, size, dtype, device):
        kxs, kys = kx + 2 * math.pi * mx, ky + 2 * math.pi * my
        t = (torch.ones((x0.shape[0], size, kx.shape[0]), dtype=dtype, device=device)
             if object_spectrum is None else object_spectrum(kxs, kys))
        term = t * e_hat
        if mx or my:
            phase = torch.exp(-2j * math.pi * (mx * x0 + my * y0))[:, None, None]
            term = term * phase
        spectrum = term if spectrum is None else spectrum + term
    assert spectrum is not None
    return spectrum.to(torch.complex64 if dtype == torch.float32 else torch.complex128)


@lru_cache(maxsize=32)
def _dft_bases(size: int, h: int, w: int, dtype: torch.dtype, device: str):
    """Shared inverse-DFT factors: ``w_k e^{i kx col} / N^2`` (K, W) and ``e^{i ky row}`` (H, N)."""
    kx, ky = k_grids(size, dtype, device)
    weight = torch.full_like(kx, 2.0)
    weight[0] = 1.0
    if size % 2 == 0:
        weight[-1] = 1.0
    cols = torch.arange(w, dtype=dtype, device=device)
    rows = torch.arange(h, dtype=dtype, device=device)
    base_x = (weight / size**2)[:, None] * torch.exp(1j * kx[:, None] * cols[None, :])
    base_y = torch.exp(1j * rows[:, None] * ky[None, :])
    return kx, ky, base_x, base_y


@lru_cache(maxsize=32)
def _real_dft_x(size: int, h: int, w: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """The ``kx`` inverse-DFT factor of ``_dft_bases`` as a real (2K, W) matrix.

    Rows ``2k`` and ``2k + 1`` hold the real part and minus the imaginary part of row ``k``:
    ``Re(z @ base_x) = view_as_real(z).reshape(-1, 2K) @`` this matrix, one real product.
    """
    base_x = _dft_bases(size, h, w, dtype, device)[2]
    return torch.stack([base_x.real, -base_x.imag], 1).reshape(-1, w).contiguous()


def inverse_dft(spectrum: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, shape: tuple[int, int],
                size: int) -> torch.Tensor:
    """Real images (B, H, W) from Hermitian half spectra (B, N, K) centred at 0-based (x0, y0).

    The centre shift ``e^{-i k.x0}`` is separable; it multiplies the spectrum, so that the two DFT
    factors are shared by the whole batch and each stage is one large matrix product: the ``ky``
    stage as a complex (H, N) @ (N, B K) product, the ``kx`` stage, of which only the real part is
    needed, as a real (B H, 2K) @ (2K, W) product (cost ~ N K W + H N W).

    Parameters
    ----------
    spectrum : Tensor, complex, shape (B, N, K)
    x0, y0 : Tensor, shape (B,)
        0-based centres, pixels.
    shape : (int, int)
        Stamp (H, W).
    size : int
        DFT size N.
    """
    h, w = shape
    kx, ky, base_x, base_y = _dft_bases(size, h, w, x0.dtype, str(x0.device))
    b, n_rows, nk = spectrum.shape
    phase = (torch.exp(-1j * ky[None, :] * y0[:, None])[:, :, None]
             * torch.exp(-1j * kx[None, :] * x0[:, None])[:, None, :])  # (B, N, K)
    shifted = (spectrum * phase).permute(1, 0, 2).reshape(n_rows, b * nk)
    rows = (base_y @ shifted).reshape(h, b, nk).permute(1, 0, 2).reshape(b * h, nk)  # (B H, K)
    rows = torch.view_as_real(rows.contiguous()).reshape(b * h, 2 * nk)
    return (rows @ _real_dft_x(size, h, w, x0.dtype, str(x0.device))).reshape(b, h, w)


def stamp_inverse_dft(spectrum: torch.Tensor, shape: tuple[int, int], size: int) -> torch.Tensor:
    """Real images (C, H, W) from half spectra laid out (C, K, N), centres already in the phases.

    The ``ky`` stage is an FFT along the contiguous last axis (2-3x faster than the (H, N) @ (N, K)
    product for N >= 64), of which the first H rows are kept; of the ``kx`` stage only the real part
    is needed: one real (C H, 2K) @ (2K, W) product.

    Parameters
    ----------
    spectrum : Tensor, complex, shape (C, K, N)
    shape : (int, int)
        Stamp (H, W); H must not exceed N (:func:`galnet.render.required_fourier_size` never
        chooses a smaller grid than the stamp).
    size : int
        DFT size N.

    Raises
    ------
    ParameterRangeError
        The stamp has more rows than the DFT grid.
    """
    h, w = shape
    if h > size:
        raise ParameterRangeError(f"a {h}x{w} stamp needs a DFT size of at least {h}, got {size}")
    c, nk, _ = spectrum.shape
    rows = torch.fft.ifft(spectrum, dim=-1, norm="forward")[..., :h]  # sum_ky S e^{i ky y}: (C, K, H)
    rows = torch.view_as_real(rows.transpose(1, 2).contiguous()).reshape(c * h, 2 * nk)
    return (rows @ _real_dft_x(size, h, w, rows.dtype, str(rows.device))).reshape(c, h, w)


def centre_phase(x0: torch.Tensor, y0: torch.Tensor, size: int, amplitude: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """``A e^{-i (kx x0 + ky y0)}`` (B, K, N), complex, on the kx-major half grid.

    Parameters
    ----------
    x0, y0 : Tensor, shape (B,)
        0-based centres, pixels.
    size : int
        DFT size N.
    amplitude : Tensor, shape (B,), optional
        ``A`` (e.g. the flux, counts; default 1), multiplied into the (B, K) factor, not the grid.
    """
    kx, ky = k_grids(size, x0.dtype, x0.device)
    fx = torch.exp(-1j * (kx[None, :] * x0[:, None]))  # (B, K)
    if amplitude is not None:
        fx = amplitude[:, None] * fx
    fy = torch.exp(-1j * (ky[None, :] * y0[:, None]))  # (B, N)
    return fx[:, :, None] * fy[:, None, :]


def dc_floor(re: torch.Tensor, q: torch.Tensor, size: int) -> torch.Tensor:
    """Floor (B,) on ``kappa^2`` that only the DC mode reaches: just below ``(re min(q, 1) dk)^2``.

    Every other mode of the DFT grid has ``kappa^2 >= (re min(q, 1) dk)^2``, ``dk = 2 pi / N`` (the
    fitter lets q cross 1). Flooring DC there keeps the Sérsic table's range short; callers set its
    exact value ``T = 1``.

    Parameters
    ----------
    re : Tensor, shape (B,)
        Semi-major half-light radii, pixels.
    q : Tensor, shape (B,)
        Axis ratios.
    size : int
        DFT size N.
    """
    return (re * q.clamp(max=1.0) * (2 * math.pi / size)) ** 2 * 0.999
