"""Scenes: many Sérsic galaxies and point sources per stamp, summed in Fourier space.

The forward model of :mod:`galnet.render.model` is linear in the objects, so for the objects
``j`` of a stamp (flux ``F_j``, 0-based centre ``x_j``, unit-flux transform ``T_j``; ``T = 1`` for
a point source) that share a DFT grid of size ``N``, seen through the stamp's effective PSF
``E_hat``::

    M(x) = sum_k  E_hat(k) [ sum_j F_j T_j(k) exp(-i k . x_j) ]  exp(i k . x) / N^2
           - sum_j F_j W_j(x)

``W_j`` is the near-ring wrap correction (:func:`galnet.render.wrap.near_rings_grid`, real
space, for the galaxies that need it; summed per stamp on its coarse grid and interpolated once).
So the spectra of those objects are summed, multiplied once by the stamp's PSF spectrum and
inverse transformed once: an extra object costs its spectrum (a few ns per Fourier mode), not a
PSF product and an inverse DFT. Each object keeps the DFT size that
:func:`~galnet.render.render_sersic` would choose for it
(:func:`~galnet.render.wrap.required_fourier_size`), so the stamp is rendered once per distinct
size among its objects (about 2 for the neighbours of an HSC stamp) and equals the sum of its
objects rendered one by one to float rounding (tested); ``shared_grid=True`` puts all the objects
of a stamp on the largest of their grids instead (one inverse DFT per stamp, differences up to
the wrap tolerance).

The pieces (``T``, the PSF spectrum, the DFT factors, the wrap correction) are the helpers of
:mod:`~galnet.render.model`, :mod:`~galnet.render.fourier` and :mod:`~galnet.render.wrap` that
:func:`~galnet.render.render_sersic` uses: the model is written once. The inverse DFT along ``ky``
is an FFT (the spectra are laid out ``kx``-major so that it runs along contiguous memory), the one
along ``kx`` a real matrix product onto the stamp's columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..conventions import DEFAULT_ZEROPOINT, mag_to_flux
from ..errors import ParameterRangeError, PSFError
from ..params import IX_N, IX_PA, IX_Q, IX_RE, N_PARAMS, validate_parameters
from .fourier import centre_phase, dc_floor, image_psf_spectrum, k_grids, stamp_inverse_dft
from .model import sersic_spectrum
from .psf import AnalyticPSF, as_psf
from .wrap import DEFAULT_WRAP_TOLERANCE, grid_to_stamp, near_rings_grid, required_fourier_size

__all__ = ["render_scene"]

#: Fourier modes (objects x N x K) evaluated at once: small enough for the temporaries to stay in cache.
_OBJECT_CHUNK_ELEMENTS = 2**18
#: Fourier modes (stamps x N x K) of the stamp spectra transformed at once.
_STAMP_CHUNK_ELEMENTS = 2**19


def _add_spectra(acc, owner, flux, x0, y0, re, n, q, pa, point: bool, size: int) -> torch.Tensor:
    """Add the spectra of objects to the stamp spectra ``acc`` (C, K, N, 2); returns the sum.

    ``acc`` is the real view of complex half spectra on the DFT grid of size ``size``, laid out
    ``kx``-major; ``owner`` (M,) is the row of ``acc`` of each object; the other arguments are
    (M,) tensors (0-based centres). The DC mode of a Sérsic profile is set to its exact value
    ``F`` (``sersic_spectrum`` floors ``kappa`` there, as in ``render_group``). Objects are
    taken in chunks whose temporaries stay in cache; the products and the sum are done in place
    unless autograd needs them.
    """
    dtype, device = x0.dtype, x0.device
    kx, ky = k_grids(size, dtype, device)
    nk = kx.shape[0]
    inplace = not (torch.is_grad_enabled()
                   and any(a.requires_grad for a in (flux, x0, y0, re, n, q, pa)))
    per = max(1, _OBJECT_CHUNK_ELEMENTS // (size * nk))
    for start in range(0, x0.shape[0], per):
        sl = slice(start, start + per)
        term = centre_phase(x0[sl], y0[sl], size, flux[sl])  # F e^{-i k.x0}: (m, K, N)
        if not point:
            t = sersic_spectrum(re[sl], n[sl], q[sl], pa[sl], kx, ky,
                                kappa2_floor=dc_floor(re[sl], q[sl], size), kx_major=True)
            term = term.mul_(t) if inplace else term * t
            term[:, 0, 0] = flux[sl].to(term.dtype)  # T = 1 at DC, where the phase is 1
        term = torch.view_as_real(term)
        acc = acc.index_add_(0, owner[sl], term) if inplace else acc.index_add(0, owner[sl], term)
    return acc


def render_scene(
    params: torch.Tensor,
    stamp_index,
    psf,
    *,
    n_stamps: int | None = None,
    point_source=None,
    shape: Sequence[int] = (61, 61),
    zeropoint: float = DEFAULT_ZEROPOINT,
    exptime: float = 1.0,
    sky: float | torch.Tensor = 0.0,
    wrap_tolerance: float | np.ndarray = DEFAULT_WRAP_TOLERANCE,
    fourier_size: int | None = None,
    shared_grid: bool = False,
    validate: bool = True,
) -> torch.Tensor:
    """Render stamps each holding several PSF-convolved Sérsic galaxies and point sources.

    Equals :func:`~galnet.render.render_sersic` of every galaxy with its stamp's PSF (and
    :func:`~galnet.render.render_point_source` of every point source), summed per stamp, to
    float rounding; the objects of a stamp that share a DFT size share one PSF product and one
    inverse DFT (see :mod:`galnet.render.scene`).

    Parameters
    ----------
    params : Tensor, shape (M, 7)
        ``x, y, mag, re, n, q, pa`` of every object in catalog conventions (as
        :func:`~galnet.render.render_sersic`; ``x, y`` 1-based in its stamp, which they may lie
        outside of). Point sources use ``x, y, mag`` only. Its dtype (float32 or float64) and
        device are used throughout. Differentiable.
    stamp_index : array_like or Tensor of int, shape (M,)
        The stamp of each object, in ``[0, n_stamps)``.
    psf : Tensor or array, shape (S, P, P) or (P, P)
        Effective PSF image of each stamp (or one for all): odd size, centred, pixel included
        (normalised here unless ``validate=False``). Analytic PSFs are not accepted: draw them
        (:meth:`~galnet.render.psf.AnalyticPSF.draw`) or use ``render_sersic``.
    n_stamps : int, optional
        Number of stamps S (default: the PSF cube's length, else ``max(stamp_index) + 1``).
        Stamps without objects are ``sky``.
    point_source : array_like of bool, shape (M,), optional
        Objects that are point sources (default: none).
    shape : (int, int)
        Stamp shape (H, W), pixels.
    zeropoint, exptime : float
        Flux in counts is ``exptime * 10**(-0.4 (mag - zeropoint))``.
    sky : float or Tensor (S,)
        Constant added to every pixel of each stamp, counts / pixel.
    wrap_tolerance : float or ndarray, shape (M,)
        Bound on each object's light wrapped around the DFT grid, as a fraction of its flux.
    fourier_size : int, optional
        Force the DFT size N of every object.
    shared_grid : bool
        Render every object of a stamp on the largest DFT grid that any of them needs: one
        inverse DFT per stamp, but each object then differs from its ``render_sersic`` image by
        up to its wrap tolerance (a larger grid only pushes the periodic copies further away).
        Default: each object on its own grid, one inverse DFT per (stamp, grid size).
    validate : bool
        Check parameter ranges and PSF images first (``False``: trusted, as in ``render_sersic``).

    Returns
    -------
    Tensor, shape (S, H, W): model counts per pixel.

    Raises
    ------
    ParameterRangeError
        Bad parameter shapes or values, or stamp indices out of range.
    PSFError
        An analytic PSF, or a PSF cube whose length is not ``n_stamps``.
    """
    if params.ndim != 2 or params.shape[-1] != N_PARAMS:
        raise ParameterRangeError(f"params must have shape (M, {N_PARAMS}), got {tuple(params.shape)}")
    if not params.dtype.is_floating_point:
        params = params.to(torch.get_default_dtype())
    if isinstance(psf, AnalyticPSF):
        raise PSFError("render_scene needs PSF images: draw the analytic PSF (psf.draw(size)) or use "
                       "render_sersic")
    dtype, device = params.dtype, params.device
    h, w = int(shape[0]), int(shape[1])
    owner_np, n_stamps, point = _scene_layout(params.shape[0], stamp_index, psf, n_stamps, point_source)
    p_np = params.detach().cpu().numpy().astype(np.float64)
    p_np[np.ix_(point, [IX_RE, IX_N, IX_Q, IX_PA])] = (0.01, 0.5, 1.0, 0.0)  # a point source: no profile
    if validate:
        validate_parameters(p_np)
    psf_t = as_psf(psf, n_stamps if len(psf.shape) == 3 else 1, dtype, device, validate=validate)
    obj_size, correct = _object_sizes(p_np, owner_np, n_stamps, (h, w), int(psf_t.shape[-1]), wrap_tolerance,
                                      fourier_size, shared_grid)
    correct &= ~point
    x, y, mag, re, n, q, pa = params.unbind(-1)
    flux = mag_to_flux(mag, zeropoint, exptime)
    x0, y0 = x - 1, y - 1
    out = torch.zeros((n_stamps, h, w), dtype=dtype, device=device)
    _add_stamp_images(out, owner_np, obj_size, point, psf_t, flux, x0, y0, re, n, q, pa)
    if correct.any():
        _subtract_near_rings(out, correct, owner_np, obj_size, flux, x0, y0, re, n, q, pa)
    sky_t = torch.as_tensor(sky, dtype=dtype, device=device)
    if sky_t.ndim == 1:
        sky_t = sky_t[:, None, None]
    return out + sky_t


def _subtract_near_rings(out, correct, owner_np, obj_size, flux, x0, y0, re, n, q, pa) -> None:
    """Subtract from ``out`` (S, H, W) the near rings of periodic copies of the ``correct`` objects (M,).

    Summed per stamp on the coarse grid of :func:`~galnet.render.wrap.near_rings_grid` and
    interpolated once per stamp; the other arguments as in :func:`_add_stamp_images`.
    """
    dtype, device = out.dtype, out.device
    shape = tuple(out.shape[1:])
    idx = torch.as_tensor(np.flatnonzero(correct), device=device)
    grid = near_rings_grid(x0[idx], y0[idx], re[idx], n[idx], q[idx], pa[idx], shape,
                           torch.as_tensor(obj_size[correct], device=device))
    owners = np.unique(owner_np[correct])
    local = np.full(out.shape[0], -1, dtype=np.int64)
    local[owners] = np.arange(owners.size)
    summed = torch.zeros((owners.size,) + tuple(grid.shape[1:]), dtype=dtype, device=device)
    summed = summed.index_add(0, torch.as_tensor(local[owner_np[correct]], device=device),
                              flux[idx, None, None] * grid)
    out.index_add_(0, torch.as_tensor(owners, device=device), -grid_to_stamp(summed, shape))


def _object_sizes(p_np: np.ndarray, owner_np: np.ndarray, n_stamps: int, shape: tuple[int, int],
                  psf_size: int, wrap_tolerance, fourier_size: int | None, shared_grid: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
    """DFT size (M,) of each object and whether its near rings of periodic copies are subtracted (M,).

    The size is ``fourier_size``, or the one :func:`~galnet.render.render_sersic` would choose, or
    with ``shared_grid`` the largest among the objects of its stamp.
    """
    if fourier_size is not None:
        obj_size = np.full(len(p_np), int(fourier_size), dtype=np.int64)
    else:
        obj_size = required_fourier_size(p_np, shape, psf_size, wrap_tolerance=wrap_tolerance)
        if shared_grid:
            stamp_size = np.zeros(n_stamps, dtype=np.int64)
            np.maximum.at(stamp_size, owner_np, obj_size)
            obj_size = stamp_size[owner_np]
    _, correct = required_fourier_size(p_np, shape, psf_size, wrap_tolerance=wrap_tolerance,
                                       return_correction=True, forced_size=obj_size)
    return obj_size, correct


def _scene_layout(count: int, stamp_index, psf, n_stamps: int | None, point_source
                  ) -> tuple[np.ndarray, int, np.ndarray]:
    """Checked stamp of each object (M,), number of stamps, and point-source mask (M,) of a scene.

    Raises
    ------
    ParameterRangeError
        Wrong lengths, or stamp indices outside ``[0, n_stamps)``.
    PSFError
        A PSF cube whose length is not ``n_stamps``.
    """
    owner_np = np.asarray(stamp_index.detach().cpu() if isinstance(stamp_index, torch.Tensor)
                          else stamp_index, dtype=np.int64).reshape(-1)
    if owner_np.shape != (count,):
        raise ParameterRangeError(
            f"stamp_index must have one entry per object ({count}), got {owner_np.size}")
    psf_ndim = len(psf.shape)
    if n_stamps is None:
        n_stamps = int(psf.shape[0]) if psf_ndim == 3 else int(owner_np.max(initial=-1)) + 1
    if count and (owner_np.min() < 0 or owner_np.max() >= n_stamps):
        raise ParameterRangeError(f"stamp_index must lie in [0, {n_stamps}), got "
                                  f"[{owner_np.min()}, {owner_np.max()}]")
    if psf_ndim == 3 and psf.shape[0] != n_stamps:
        raise PSFError(f"psf: a PSF cube must have one stamp per stamp ({n_stamps}), got {psf.shape[0]}")
    point = (np.zeros(count, dtype=bool) if point_source is None
             else np.asarray(point_source, dtype=bool).reshape(-1))
    if point.shape != (count,):
        raise ParameterRangeError(f"point_source must have one entry per object ({count}), got {point.size}")
    return owner_np, n_stamps, point


def _add_stamp_images(out, owner_np, obj_size, point, psf_t, flux, x0, y0, re, n, q, pa) -> None:
    """Add to ``out`` (S, H, W) the images of the objects, one inverse DFT per (stamp, DFT size) unit.

    ``owner_np``, ``obj_size`` and ``point`` (M,) are each object's stamp, DFT size and point-source
    flag; ``psf_t`` the checked PSF (P, P) or (S, P, P); the other arguments (M,) tensors.
    """
    dtype, device = out.dtype, out.device
    h, w = out.shape[1:]
    base = int(obj_size.max(initial=0)) + 1
    units, unit_of = np.unique(owner_np * base + obj_size, return_inverse=True)
    unit_stamp, unit_size = units // base, units % base
    for size in np.unique(unit_size):
        size = int(size)
        nk = size // 2 + 1
        of_size = np.flatnonzero(unit_size == size)
        per = max(1, _STAMP_CHUNK_ELEMENTS // (size * nk))
        for start in range(0, of_size.size, per):
            chunk = of_size[start : start + per]
            local = np.full(units.size, -1, dtype=np.int64)
            local[chunk] = np.arange(chunk.size)
            acc = torch.zeros((chunk.size, nk, size, 2), dtype=dtype, device=device)
            for is_point in (False, True):
                objs = np.flatnonzero((local[unit_of] >= 0) & (point == is_point))
                if objs.size == 0:
                    continue
                sel = torch.as_tensor(objs, device=device)
                acc = _add_spectra(acc, torch.as_tensor(local[unit_of[objs]], device=device), flux[sel],
                                   x0[sel], y0[sel], re[sel], n[sel], q[sel], pa[sel], is_point, size)
            stamps = torch.as_tensor(unit_stamp[chunk], device=device)
            stamp_psf = psf_t[stamps] if psf_t.ndim == 3 else psf_t
            spectrum = torch.view_as_complex(acc) * image_psf_spectrum(stamp_psf, size, kx_major=True)
            out.index_add_(0, stamps, stamp_inverse_dft(spectrum, (h, w), size))
