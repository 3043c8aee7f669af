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
  frequencies ``k + 2 pi m`` folded in. Either way the pixel is counted exactly once.
* ``k`` runs over the DFT grid of size N x N; the image is therefore periodic with period N, and
  N is chosen per galaxy (from 64 to 2048, in buckets) so that the light of the periodic copies
  falling into the stamp is below ``wrap_tolerance`` of the total flux.
* The inverse transform onto the H x W stamp: for image PSFs, an FFT along ``ky`` of the kx-major
  half spectrum, of which the stamp's H rows are kept, then one real matrix product for its W columns
  (:func:`_stamp_inverse_dft`); for analytic PSFs two small matrix products (:func:`_inverse_dft`,
  cost ~ N K W + H N W). Only the stamp window is ever computed.

Stamps holding many objects (the simulator's neighbours) are rendered by
:func:`galnet.render.scene.render_scene` from the same helpers, summing the objects' spectra before
one PSF product and one inverse DFT.

Cost (2-core CPU, 61x61 stamps, 25x25 PSF image): see ``benchmarks/render.py`` and the README.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from ..conventions import DEFAULT_ZEROPOINT, mag_to_flux
from ..errors import ParameterRangeError, PSFError
from ..params import N_PARAMS, validate_parameters
from .psf import AnalyticPSF, validate_psf_image
from .sersic import _column_window, _galaxy_rows, _row_lookup, _table_tensors, sersic_fourier_table

__all__ = [
    "render_sersic",
    "render_point_source",
    "required_fourier_size",
    "FOURIER_SIZES",
    "DEFAULT_WRAP_TOLERANCE",
]

#: Candidate DFT grid sizes; each galaxy uses the smallest that keeps wrap-around below tolerance.
_WRAP_RINGS = 2  # rings of periodic copies subtracted in real space (see _near_rings_wrap)
FOURIER_SIZES: tuple[int, ...] = (64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024, 1536, 2048)
#: Bound on the light of periodic copies falling into the stamp, as a fraction of the total flux.
DEFAULT_WRAP_TOLERANCE = 1e-3
_MAX_CHUNK_ELEMENTS = 2**24  # spectrum elements (B * N * K) per chunk: bounds memory


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
    (see :func:`_near_rings_wrap`), so only the rings beyond must be negligible: the estimate
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
        A size from :data:`FOURIER_SIZES` (the largest if none suffices).
    correct : ndarray of bool, shape (B,), only with ``return_correction``.
    """
    from scipy.special import gammaincinv, gammaln

    p = np.asarray(params, dtype=float)
    h, w = shape
    xc, yc, re, n, q = p[:, 0], p[:, 1], p[:, 3], p[:, 4], p[:, 5]
    b = gammaincinv(2 * n, 0.5)
    log_norm = 2 * n * np.log(b) - np.log(2 * np.pi * n) - b - gammaln(2 * n) - np.log(q * re**2)
    d_far = np.max(np.stack([xc - 1, w - xc, yc - 1, h - yc]), axis=0) + psf_size // 2
    sizes = np.asarray(FOURIER_SIZES, dtype=float)
    tol = np.broadcast_to(np.asarray(wrap_tolerance, dtype=float), xc.shape)
    if forced_size is None:
        rings = np.arange(_WRAP_RINGS + 1, 65, dtype=float)
        # the first ring is corrected without the PSF: keep it beyond 2 re and 16 px past the
        # PSF's reach; the smallest such size is the first candidate
        far = sizes[None, :] >= (d_far + 16 + 2 * re)[:, None]
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


def _near_rings_grid(x0, y0, re, n, q, pa_deg, shape, size):
    """Light of the nearest rings of periodic copies of unit-flux galaxies, on a coarse grid.

    The copies lie ``size`` pixels or more away, beyond 2 re, in the far field where the PSF no
    longer matters and the profile is smooth: it is evaluated on a (at most) 16 x 16 grid of
    pixel positions spanning the stamp, which :func:`_grid_to_stamp` interpolates.

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
    from .sersic import sersic_bn, sersic_log_norm

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
    pa = torch.deg2rad(pa_deg)[:, None, None]
    s, c = torch.sin(pa), torch.cos(pa)
    inv_q = (1.0 / q)[:, None, None]
    # x_major = -dx s + dy c and x_minor = (dx c + dy s) / q on the grid: (B, R, gh, gw)
    x_major = (dy * c)[..., :, None] - (dx * s)[..., None, :]
    x_minor = (dy * (s * inv_q))[..., :, None] + (dx * (c * inv_q))[..., None, :]
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


def _grid_to_stamp(light: torch.Tensor, shape) -> torch.Tensor:
    """Bicubic interpolation (B, gh, gw) -> (B, H, W) of a :func:`_near_rings_grid` (linear in it).

    torch's separable bicubic kernel (``align_corners=True``) as two small matrix products.
    """
    h, w = shape
    gh, gw = light.shape[-2:]
    if (gh, gw) == (h, w):
        return light
    wy = _bicubic_matrix(h, gh, light.dtype, str(light.device))  # (H, gh)
    wx = _bicubic_matrix(w, gw, light.dtype, str(light.device))  # (W, gw)
    return wy @ light @ wx.T


def _near_rings_wrap(x0, y0, re, n, q, pa_deg, shape, size):
    """Light of the nearest rings of periodic copies of unit-flux galaxies, on the stamp (B, H, W).

    :func:`_near_rings_grid` interpolated bicubically (only for galaxies that need it).
    """
    return _grid_to_stamp(_near_rings_grid(x0, y0, re, n, q, pa_deg, shape, size), shape)


def _k_grids(size: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Wavenumbers (radians / pixel): kx for the half spectrum (K,), ky for the full axis (N,)."""
    kx = 2 * math.pi * torch.arange(size // 2 + 1, dtype=dtype, device=device) / size
    ky = 2 * math.pi * torch.fft.fftfreq(size, dtype=dtype, device=device)
    return kx, ky


def _image_psf_spectrum(psf: torch.Tensor, size: int, *, kx_major: bool = False) -> torch.Tensor:
    """DFT (N, K) or (B, N, K), complex, of a centred odd PSF image (P, P) or (B, P, P).

    The image is real, so its ``kx`` stage is one real (B P, P) @ (P, 2K) product with the
    (real, imaginary) pairs of ``e^{-i kx x}`` as columns (3-5x faster than a complex product).
    ``kx_major`` returns the transposed layout (K, N) or (B, K, N), whose ``ky`` stage is an FFT
    along the contiguous axis (2-3x faster again).
    """
    p = psf.shape[-1]
    c = (p - 1) // 2
    kx, ky = _k_grids(size, psf.dtype, psf.device)
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


def _analytic_psf_terms(psf: AnalyticPSF, size: int, dtype, device, *, alias_floor: float = 1e-7):
    """List of (m_x, m_y, E_hat (N, K) real tensor) for the alias shifts that matter."""
    kx, ky = _k_grids(size, torch.float64, "cpu")
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


@lru_cache(maxsize=32)
def _dft_bases(size: int, h: int, w: int, dtype: torch.dtype, device: str):
    """Shared inverse-DFT factors: ``w_k e^{i kx col} / N^2`` (K, W) and ``e^{i ky row}`` (H, N)."""
    kx, ky = _k_grids(size, dtype, device)
    weight = torch.full_like(kx, 2.0)
    weight[0] = 1.0
    if size % 2 == 0:
        weight[-1] = 1.0
    cols = torch.arange(w, dtype=dtype, device=device)
    rows = torch.arange(h, dtype=dtype, device=device)
    base_x = (weight / size**2)[:, None] * torch.exp(1j * kx[:, None] * cols[None, :])
    base_y = torch.exp(1j * rows[:, None] * ky[None, :])
    return kx, ky, base_x, base_y


def _inverse_dft(
    spectrum: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, shape, size: int
) -> torch.Tensor:
    """Real image (B, H, W) from a Hermitian half spectrum (B, N, K) centred at 0-based (x0, y0).

    The centre shift ``e^{-i k.x0}`` is separable; it multiplies the spectrum, so that the two
    DFT factors are shared by the whole batch and each stage is one large matrix product: the
    ``ky`` stage as a complex (H, N) @ (N, B K) product, the ``kx`` stage, of which only the real
    part is needed, as a real (B H, 2K) @ (2K, W) product.
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


def _sersic_spectrum(re, n, q, pa_deg, kx, ky, kappa2_floor=None, *, kx_major: bool = False):
    """Unit-flux Sérsic transform on the grid (B, N, K) for shifted wavenumber axes kx (K,), ky (N,).

    ``kx_major`` lays the grid out (B, K, N) instead (``ky`` contiguous, for FFTs along ``ky``).

    ``kappa^2 = a kx^2 + c ky^2 + b kx ky`` for the whole batch is one (B, 3) @ (3, N K) matrix
    product (broadcast element-wise products cost ~20x more on a CPU); the table column of
    ``ln kappa`` is one multiply-add of ``ln kappa^2`` (:func:`~galnet.render.sersic.sersic_fourier`
    with fewer passes; in place where autograd does not need the intermediates).
    ``kappa2_floor`` (B,) clamps ``kappa^2`` from below (used to keep the DC mode, whose exact
    value 1 is restored by the caller, from widening the table range).
    """
    inplace = not (torch.is_grad_enabled() and any(a.requires_grad for a in (re, n, q, pa_deg)))
    pa = torch.deg2rad(pa_deg)
    s, c = torch.sin(pa), torch.cos(pa)
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
    tab = sersic_fourier_table()
    table_cols = _table_tensors(kappa2.dtype, str(kappa2.device))[0].shape[1]
    # table column of ln kappa = 0.5 ln kappa^2; each galaxy's window starts at column lo
    scale, offset = 0.5 / tab.u_step, tab.u0 / tab.u_step
    with torch.no_grad():
        pos_min = torch.log(kappa2.amin(1)) * scale - offset
        pos_max = torch.log(kappa2.amax(1)) * scale - offset
        lo, span = _column_window(pos_min, pos_max, table_cols)
    ln_k2 = kappa2.log_() if inplace else kappa2.log()
    local = torch.add(-(offset + lo)[:, None], ln_k2, alpha=scale)  # columns from lo
    if not bool((pos_min > 1).all() and (pos_max < table_cols - 2).all()):  # beyond the table
        local = torch.clamp(local, min=torch.zeros_like(lo)[:, None], max=(table_cols - 1 - lo)[:, None])
    return _row_lookup(_galaxy_rows(n, lo, span), local, inplace=inplace).reshape(-1, n_rows, n_cols)


def _as_psf(psf, batch: int, dtype, device, *, validate: bool = True):
    """Normalise the ``psf`` argument to either an AnalyticPSF or a tensor (P,P)/(B,P,P).

    With ``validate=False`` a tensor is trusted as already checked and normalised (the fitter and
    the predictor check their PSFs once, not on every render).
    """
    if isinstance(psf, AnalyticPSF):
        return psf
    if validate or not isinstance(psf, torch.Tensor):
        arr = psf.detach().cpu().numpy() if isinstance(psf, torch.Tensor) else np.asarray(psf)
        psf = torch.as_tensor(validate_psf_image(arr, name="psf"))
    if psf.ndim == 3 and psf.shape[0] != batch:
        raise PSFError(f"psf: a PSF cube must have one stamp per galaxy ({batch}), got {psf.shape[0]}")
    return psf.to(dtype=dtype, device=device)


@lru_cache(maxsize=32)
def _real_dft_x(size: int, h: int, w: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """The ``kx`` inverse-DFT factor of ``_dft_bases`` as a real (2K, W) matrix.

    Rows ``2k`` and ``2k + 1`` hold the real part and minus the imaginary part of row ``k``:
    ``Re(z @ base_x) = view_as_real(z).reshape(-1, 2K) @`` this matrix, one real product.
    """
    base_x = _dft_bases(size, h, w, dtype, device)[2]
    return torch.stack([base_x.real, -base_x.imag], 1).reshape(-1, w).contiguous()


def _stamp_inverse_dft(spectrum: torch.Tensor, shape, size: int) -> torch.Tensor:
    """Real images (C, H, W) from half spectra laid out (C, K, N) (centres already in the phases).

    The ``ky`` stage is an FFT along the contiguous last axis (2-3x faster than the (H, N) @ (N, K)
    product for N >= 64), of which the first H rows are kept; of the ``kx`` stage only the real
    part is needed: one real (C H, 2K) @ (2K, W) product with the ``_dft_bases`` factor.
    """
    h, w = shape
    c, nk, _ = spectrum.shape
    rows = torch.fft.ifft(spectrum, dim=-1, norm="forward")[..., :h]  # sum_ky S e^{i ky y}: (C, K, H)
    rows = torch.view_as_real(rows.transpose(1, 2).contiguous()).reshape(c * h, 2 * nk)
    return (rows @ _real_dft_x(size, h, w, rows.dtype, str(rows.device))).reshape(c, h, w)


def _centre_phase(x0: torch.Tensor, y0: torch.Tensor, size: int, amplitude: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """``A e^{-i (kx x0 + ky y0)}`` (B, K, N) on the kx-major half grid, for 0-based centres (B,).

    ``amplitude`` (B,) (e.g. the flux, default 1) is multiplied into the (B, K) factor, not the grid.
    """
    kx, ky = _k_grids(size, x0.dtype, x0.device)
    fx = torch.exp(-1j * (kx[None, :] * x0[:, None]))  # (B, K)
    if amplitude is not None:
        fx = amplitude[:, None] * fx
    fy = torch.exp(-1j * (ky[None, :] * y0[:, None]))  # (B, N)
    return fx[:, :, None] * fy[:, None, :]


def _dc_floor(re: torch.Tensor, q: torch.Tensor, size: int) -> torch.Tensor:
    """Floor (B,) on ``kappa^2`` that only the DC mode reaches: just below ``(re min(q, 1) dk)^2``.

    Every other mode of the DFT grid has ``kappa^2 >= (re min(q, 1) dk)^2``, ``dk = 2 pi / N`` (the
    fitter lets q cross 1). Flooring DC there keeps the table range short; callers set its exact
    value ``T = 1``.
    """
    return (re * q.clamp(max=1.0) * (2 * math.pi / size)) ** 2 * 0.999


#: Fourier modes (galaxies x K x N) of one chunk of :func:`_render_group`: its complex temporaries
#: stay in the CPU cache (larger chunks are memory-bound, ~2x slower).
_GROUP_CHUNK_ELEMENTS = 2**17


def _render_group(flux, x0, y0, re, n, q, pa, psf, shape, size, *, point_source=False, correct=None,
                  psf_spectrum=None):
    """Render galaxies sharing one DFT size. All 1-D tensors (B,); returns (B, H, W).

    ``psf_spectrum``: for an image PSF, its kx-major spectrum ``_image_psf_spectrum(psf, size,
    kx_major=True)`` (K, N) or (B, K, N) if already computed (the fitter renders the same galaxies
    many times), in the parameters' complex dtype.
    """
    dtype, device = x0.dtype, x0.device
    if isinstance(psf, AnalyticPSF):
        kx, ky = _k_grids(size, dtype, device)
        spectrum = None
        for mx, my, e_hat in _analytic_psf_terms(psf, size, dtype, device):
            kxs, kys = kx + 2 * math.pi * mx, ky + 2 * math.pi * my
            t = (
                torch.ones((x0.shape[0], size, kx.shape[0]), dtype=dtype, device=device)
                if point_source
                else _sersic_spectrum(re, n, q, pa, kxs, kys)
            )
            term = t * e_hat
            if mx or my:
                phase = torch.exp(-2j * math.pi * (mx * x0 + my * y0))[:, None, None]
                term = term * phase
            spectrum = term if spectrum is None else spectrum + term
        spectrum = spectrum.to(torch.complex64 if dtype == torch.float32 else torch.complex128)
        image = _inverse_dft(spectrum, x0, y0, shape, size)
    else:
        # kx-major layout, the ky stage by FFT (as render_scene); in chunks whose temporaries
        # stay in cache. The DC mode is floored in kappa (keeps the table range short) and set
        # to its exact value T = 1 afterwards.
        kx, ky = _k_grids(size, dtype, device)
        e_hat = psf_spectrum if psf_spectrum is not None else _image_psf_spectrum(psf, size, kx_major=True)
        b = x0.shape[0]
        per = max(1, _GROUP_CHUNK_ELEMENTS // (size * kx.shape[0]))
        pieces = []
        for s0 in range(0, b, per):
            sl = slice(s0, min(b, s0 + per))
            spec = _centre_phase(x0[sl], y0[sl], size)
            if not point_source:
                t = _sersic_spectrum(re[sl], n[sl], q[sl], pa[sl], kx, ky,
                                     kappa2_floor=_dc_floor(re[sl], q[sl], size), kx_major=True)
                t[:, 0, 0] = 1.0
                spec = spec * t
            spec = spec * (e_hat[sl] if e_hat.ndim == 3 else e_hat)
            pieces.append(_stamp_inverse_dft(spec, shape, size))
        image = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    if correct is not None and bool(correct.any()):
        idx = torch.nonzero(correct).squeeze(1)
        wrap = _near_rings_wrap(x0[idx], y0[idx], re[idx], n[idx], q[idx], pa[idx], shape, size)
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
    fourier_size : int, optional
        Force the DFT size N (else chosen per galaxy from ``wrap_tolerance``).
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
    psf_obj = _as_psf(psf, batch, params.dtype, params.device, validate=validate)
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
            img = _render_group(
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


def render_point_source(
    psf,
    *,
    shape: Sequence[int] = (25, 25),
    center: tuple[float, float] | None = None,
    flux: float = 1.0,
    dtype: torch.dtype = torch.float64,
    fourier_size: int | None = None,
) -> torch.Tensor:
    """Image (H, W) of a point source of total ``flux`` seen through ``psf`` (pixel included).

    ``center`` is the 1-based (x, y) position; default the central pixel of the stamp.
    """
    h, w = int(shape[0]), int(shape[1])
    cx, cy = center if center is not None else ((w + 1) / 2, (h + 1) / 2)
    psf_obj = _as_psf(psf, 1, dtype, "cpu")
    if isinstance(psf_obj, torch.Tensor) and psf_obj.ndim == 3:
        psf_obj = psf_obj[0]
    size = fourier_size or max(64, int(2 ** math.ceil(math.log2(max(h, w) + 2 * (
        psf_obj.shape[-1] if isinstance(psf_obj, torch.Tensor) else 8 * psf_obj.fwhm)))))
    one = torch.ones(1, dtype=dtype)
    img = _render_group(
        one * flux, one * (cx - 1), one * (cy - 1), one, one, one, one * 0, psf_obj, (h, w), size,
        point_source=True,
    )
    return img[0]
