"""The forward model: PSF-convolved, pixel-exact Sérsic stamps, batched, in PyTorch.

Scheme (Fourier-space rendering)
--------------------------------
For each galaxy the model image is sampled at pixel centres from its exact Fourier transform::

    M(x_i) = sum_k  F * T(n, kappa(k)) * E_hat(k) * exp(i k . (x_i - x_c))  / N^2

* ``T`` is the unit-flux Sérsic transform (:func:`galnet.render.sersic.sersic_fourier`), exact for
  any ``n`` in [0.2, 10], any ``re`` (also far below a pixel) and any sub-pixel centre: there is no
  real-space sampling of the cusp, hence no oversampling scheme to tune.
* ``E_hat`` is the effective PSF's transform: the DFT of a PSF image (which already contains the
  pixel), or an analytic PSF times the pixel box ``sinc(kx/2) sinc(ky/2)`` with aliased
  frequencies ``k + 2 pi m`` folded in (:mod:`galnet.render.fourier`). Either way the pixel is
  counted exactly once.
* ``k`` runs over the DFT grid of size N x N; the image is therefore periodic with period N, and
  N is chosen per galaxy (from 64 to 2048, in buckets, never smaller than the stamp) so that the
  light of the periodic copies falling into the stamp is below ``wrap_tolerance`` of the total flux
  (:mod:`galnet.render.wrap`).
* The inverse transform onto the H x W stamp: for image PSFs, an FFT along ``ky`` of the kx-major
  half spectrum, of which the stamp's H rows are kept, then one real matrix product for its W columns
  (:func:`~galnet.render.fourier.stamp_inverse_dft`); for analytic PSFs two small matrix products
  (:func:`~galnet.render.fourier.inverse_dft`, cost ~ N K W + H N W). Only the stamp window is
  ever computed.

Stamps holding many objects (the simulator's neighbours) are rendered by
:func:`galnet.render.scene.render_scene` from the same helpers, summing the objects' spectra before
one PSF product and one inverse DFT. The fitter renders through :func:`render_group` and
differentiates it with :func:`galnet.render.jacobian.fourier_jacobian`.

Cost (2-core CPU, 61x61 stamps, 25x25 PSF image): see ``benchmarks/render.py`` and the README.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..conventions import DEFAULT_ZEROPOINT, mag_to_flux
from ..errors import ParameterRangeError
from ..params import N_PARAMS, validate_parameters
from .fourier import (
    analytic_spectrum,
    centre_phase,
    dc_floor,
    image_psf_spectrum,
    inverse_dft,
    k_grids,
    stamp_inverse_dft,
)
from .geometry import pa_rotation
from .psf import AnalyticPSF, as_psf
from .sersic import sersic_fourier_kappa2
from .wrap import DEFAULT_WRAP_TOLERANCE, near_rings_wrap, required_fourier_size

__all__ = ["render_sersic", "render_group", "sersic_spectrum"]

_MAX_CHUNK_ELEMENTS = 2**24  # spectrum elements (B * N * K) per chunk: bounds memory
#: Fourier modes (galaxies x K x N) of one chunk of :func:`render_group`: its complex temporaries
#: stay in the CPU cache (larger chunks are memory-bound, ~2x slower).
_GROUP_CHUNK_ELEMENTS = 2**17


def sersic_spectrum(re: torch.Tensor, n: torch.Tensor, q: torch.Tensor, pa_deg: torch.Tensor,
                    kx: torch.Tensor, ky: torch.Tensor, kappa2_floor: torch.Tensor | None = None, *,
                    kx_major: bool = False) -> torch.Tensor:
    """Unit-flux Sérsic transforms on a DFT grid.

    ``kappa^2 = a kx^2 + c ky^2 + b kx ky`` for the whole batch is one (B, 3) @ (3, N K) matrix
    product (broadcast element-wise products cost ~20x more on a CPU), then
    :func:`~galnet.render.sersic.sersic_fourier_kappa2` (in place where autograd does not need the
    intermediates).

    Parameters
    ----------
    re, n, q, pa_deg : Tensor, shape (B,)
        Semi-major half-light radius (pixels), index, axis ratio, position angle (degrees CCW
        from +y).
    kx : Tensor, shape (K,)
        Wavenumbers along x (possibly shifted by an alias), radians / pixel.
    ky : Tensor, shape (N,)
        Wavenumbers along y, radians / pixel.
    kappa2_floor : Tensor, shape (B,), optional
        Lower clamp on ``kappa^2`` (keeps the DC mode, whose exact value 1 the caller restores,
        from widening the table range; :func:`~galnet.render.fourier.dc_floor`).
    kx_major : bool
        Lay the grid out (B, K, N) (``ky`` contiguous, for FFTs along ``ky``) instead of (B, N, K).

    Returns
    -------
    Tensor, real, shape (B, N, K) or (B, K, N).
    """
    inplace = not (torch.is_grad_enabled() and any(a.requires_grad for a in (re, n, q, pa_deg)))
    s, c = pa_rotation(pa_deg)
    re2 = re * re
    q2 = q * q
    coef = torch.stack([re2 * (s * s + q2 * c * c), re2 * (c * c + q2 * s * s),
                        2 * re2 * c * s * (q2 - 1)], -1)  # (B, 3): a, c, b
    n_rows, n_cols = ky.shape[0], kx.shape[0]
    kx2, ky2 = kx * kx, ky * ky
    if kx_major:
        n_rows, n_cols = n_cols, n_rows
        basis = [kx2[:, None].expand(n_rows, n_cols), ky2.expand(n_rows, n_cols), kx[:, None] * ky[None, :]]
    else:
        basis = [kx2.expand(n_rows, n_cols), ky2[:, None].expand(n_rows, n_cols), ky[:, None] * kx[None, :]]
    basis = torch.stack(basis).reshape(3, n_rows * n_cols)
    kappa2 = coef @ basis  # (B, N K)
    low = 1e-30 if kappa2_floor is None else kappa2_floor[:, None]
    kappa2 = kappa2.clamp_(min=low) if inplace else kappa2.clamp(min=low)
    return sersic_fourier_kappa2(n, kappa2, inplace=inplace).reshape(-1, n_rows, n_cols)


def render_group(flux: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, re: torch.Tensor, n: torch.Tensor,
                 q: torch.Tensor, pa: torch.Tensor, psf: AnalyticPSF | torch.Tensor, shape: tuple[int, int],
                 size: int, *, correct: torch.Tensor | None = None,
                 psf_spectrum: torch.Tensor | None = None) -> torch.Tensor:
    """Render galaxies that share one DFT size.

    Parameters
    ----------
    flux : Tensor, shape (B,)
        Total flux, counts.
    x0, y0 : Tensor, shape (B,)
        0-based centres, pixels.
    re, n, q, pa : Tensor, shape (B,)
        Semi-major half-light radius (pixels), index, axis ratio, position angle (degrees CCW from +y).
    psf : AnalyticPSF, or Tensor (P, P) or (B, P, P)
        Checked, unit-sum effective PSF image(s) (:func:`~galnet.render.psf.as_psf`).
    shape : (int, int)
        Stamp (H, W).
    size : int
        DFT size N (at least H).
    correct : Tensor of bool, shape (B,), optional
        Galaxies whose near rings of periodic copies are subtracted
        (:func:`~galnet.render.wrap.required_fourier_size` decides).
    psf_spectrum : Tensor, complex, shape (K, N) or (B, K, N), optional
        For an image PSF, ``image_psf_spectrum(psf, size, kx_major=True)`` in the parameters'
        complex dtype, if already computed (the fitter renders the same galaxies many times).

    Returns
    -------
    Tensor, shape (B, H, W): counts per pixel.
    """
    dtype, device = x0.dtype, x0.device
    if isinstance(psf, AnalyticPSF):
        spectrum = analytic_spectrum(psf, x0, y0, size,
                                     lambda kxs, kys: sersic_spectrum(re, n, q, pa, kxs, kys))
        image = inverse_dft(spectrum, x0, y0, shape, size)
    else:
        # kx-major layout, the ky stage by FFT (as render_scene); in chunks whose temporaries
        # stay in cache. The DC mode is floored in kappa (keeps the table range short) and set
        # to its exact value T = 1 afterwards.
        kx, ky = k_grids(size, dtype, device)
        e_hat = psf_spectrum if psf_spectrum is not None else image_psf_spectrum(psf, size, kx_major=True)
        b = x0.shape[0]
        per = max(1, _GROUP_CHUNK_ELEMENTS // (size * kx.shape[0]))
        pieces = []
        for s0 in range(0, b, per):
            sl = slice(s0, min(b, s0 + per))
            t = sersic_spectrum(re[sl], n[sl], q[sl], pa[sl], kx, ky,
                                kappa2_floor=dc_floor(re[sl], q[sl], size), kx_major=True)
            t[:, 0, 0] = 1.0
            spec = centre_phase(x0[sl], y0[sl], size) * t
            spec = spec * (e_hat[sl] if e_hat.ndim == 3 else e_hat)
            pieces.append(stamp_inverse_dft(spec, shape, size))
        image = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    if correct is not None and bool(correct.any()):
        idx = torch.nonzero(correct).squeeze(1)
        wrap = near_rings_wrap(x0[idx], y0[idx], re[idx], n[idx], q[idx], pa[idx], shape, size)
        image = image.index_add(0, idx, -wrap)
    return flux[:, None, None] * image


def render_sersic(
    params: torch.Tensor,
    psf,
    *,
    shape: Sequence[int] = (61, 61),
    zeropoint: float = DEFAULT_ZEROPOINT,
    exptime: float = 1.0,
    sky: float | torch.Tensor = 0.0,
    fourier_size: int | None = None,
    wrap_tolerance: float = DEFAULT_WRAP_TOLERANCE,
    validate: bool = True,
) -> torch.Tensor:
    """Render PSF-convolved Sérsic galaxies, pixel response included exactly once.

    Parameters
    ----------
    params : Tensor, shape (B, 7)
        ``x, y, mag, re, n, q, pa`` in catalog conventions (:mod:`galnet.conventions`): 1-based
        pixel centre, total magnitude, semi-major half-light radius (pixels), Sérsic index,
        axis ratio b/a, position angle (degrees CCW from +y). Differentiable in all seven.
        Its dtype (float32 or float64) and device are used throughout.
    psf : Tensor (P, P) or (B, P, P), array, or AnalyticPSF
        Effective PSF image(s) (pixel included, odd size, centred; normalised here), or an
        analytic PSF without the pixel (:class:`~galnet.render.psf.MoffatPSF` ...).
    shape : (int, int)
        Stamp shape (H, W), pixels.
    zeropoint, exptime : float
        Photometric zero point (mag for 1 count / s) and exposure time (s): the total flux in
        counts is ``exptime * 10**(-0.4 (mag - zeropoint))``.
    sky : float or Tensor (B,)
        Constant sky level added to every pixel, counts / pixel.
    fourier_size : int or ndarray of int (B,), optional
        Force the DFT size N (else chosen per galaxy from ``wrap_tolerance``, never smaller than the
        stamp). With PSF images it must be at least the stamp's H.
    wrap_tolerance : float
        Maximum fraction of the flux allowed to wrap around into the stamp.
    validate : bool
        Check parameter ranges and PSF images first (raises
        :class:`~galnet.errors.ParameterRangeError`, :class:`~galnet.errors.PSFError`). ``False``
        is for callers that checked both once already: a PSF tensor is then used as given
        (odd-sized, centred, unit sum).

    Returns
    -------
    Tensor, shape (B, H, W): model counts per pixel.
    """
    if params.ndim != 2 or params.shape[-1] != N_PARAMS:
        raise ParameterRangeError(f"params must have shape (B, {N_PARAMS}), got {tuple(params.shape)}")
    if not params.dtype.is_floating_point:
        params = params.to(torch.get_default_dtype())
    h, w = int(shape[0]), int(shape[1])
    batch = params.shape[0]
    if validate:
        validate_parameters(params.detach().cpu().numpy())
    psf_obj = as_psf(psf, batch, params.dtype, params.device, validate=validate)
    if isinstance(psf_obj, torch.Tensor):
        psf_size = psf_obj.shape[-1]
    else:  # the extent holding all but a fraction of the analytic PSF's light (Moffat wings are long)
        psf_size = min(2 * int(psf_obj.outer_radius(wrap_tolerance / 4)) + 1, 2047)
    sizes, correct = required_fourier_size(
        params.detach().cpu().numpy(), (h, w), psf_size, wrap_tolerance=wrap_tolerance,
        return_correction=True, forced_size=fourier_size,
    )
    x, y, mag, re, n, q, pa = params.unbind(-1)
    flux = mag_to_flux(mag, zeropoint, exptime)
    out = torch.empty((batch, h, w), dtype=params.dtype, device=params.device)
    pieces = []
    for size in np.unique(sizes):
        idx_np = np.flatnonzero(sizes == size)
        chunk = max(1, _MAX_CHUNK_ELEMENTS // (int(size) * (int(size) // 2 + 1)))
        for start in range(0, idx_np.size, chunk):
            sel = torch.as_tensor(idx_np[start : start + chunk], device=params.device)
            group_psf = psf_obj
            if isinstance(psf_obj, torch.Tensor) and psf_obj.ndim == 3:
                group_psf = psf_obj[sel]
            img = render_group(
                flux[sel], x[sel] - 1, y[sel] - 1, re[sel], n[sel], q[sel], pa[sel],
                group_psf, (h, w), int(size),
                correct=torch.as_tensor(correct[idx_np[start : start + chunk]], device=params.device),
            )
            pieces.append((sel, img))
    if len(pieces) == 1 and pieces[0][0].numel() == batch and bool(
        (pieces[0][0] == torch.arange(batch, device=params.device)).all()
    ):
        out = pieces[0][1]
    else:
        out = out.index_put((torch.cat([s for s, _ in pieces]),), torch.cat([i for _, i in pieces]))
    sky_t = torch.as_tensor(sky, dtype=params.dtype, device=params.device)
    if sky_t.ndim == 1:
        sky_t = sky_t[:, None, None]
    return out + sky_t
