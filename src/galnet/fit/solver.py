"""Batched Levenberg–Marquardt Sérsic ⊗ PSF fits in PyTorch (float64).

Every galaxy of a batch is fitted at once, but each has its own damping ``λ``, its own convergence
test and its own DFT size: the batch only shares the tensor operations.

Model and Jacobian
------------------
Galaxies are fitted in groups that share a DFT size (:func:`galnet.render.required_fourier_size`,
re-checked at the end: galaxies that outgrew their size are refitted with a larger one). The model
is :func:`galnet.render.render_sersic`'s, in float64, with each group's PSF spectra computed once
(:class:`galnet.fit.model.GroupModel`). For image PSFs the Jacobian is differentiated in Fourier space
(:func:`galnet.render.jacobian.fourier_jacobian`: the renderer's own Sérsic interpolant
differentiated analytically, six derivative spectra through one batched inverse DFT) in float32,
which only steers the steps: χ² always comes from the float64 model. Analytic PSFs use
forward-mode automatic differentiation (``torch.autograd.forward_ad``): because the galaxies are
independent, one JVP whose tangent is the unit vector of parameter ``j`` *for every galaxy* gives
``∂model_b/∂θ_bj`` for the whole batch. The magnitude and sky columns are analytic
(``∂M/∂mag = -0.4 ln10 · M_gal``, ``∂M/∂sky = 1``).

Convergence
-----------
A galaxy stops when the Gauss–Newton model at an accepted point predicts less than
``gn_tol_chi2`` (0.01) of χ² decrease left within the bounds (it is then within 0.1 σ of the
minimum), or when accepted steps lower χ² by less than ``rtol_chi2 χ² + atol_chi2`` twice in a
row, or when no step lowers χ² even with very large damping. See :class:`FitConfig` and the loop,
:func:`galnet.fit.lm.lm_group`.

Bounds by reparameterisation
----------------------------
The LM step is taken in unconstrained internal variables ``u`` (each a smooth, monotonic,
element-wise map, so the chain rule is a per-column scale of the Jacobian):

* ``x, y = start ± center_box · tanh(u)``: the centre stays within ``center_box`` px of its start;
* ``mag = u`` (free); ``sky = u`` (free, counts / px);
* ``ln re``, ``ln n``: ``lo + (hi - lo) · sigmoid(u)`` between the logs of the ``fit_bounds`` of
  :data:`galnet.params.PARAMETERS`;
* ``ln q = L tanh(u)`` with ``L = -ln(q_min)``: like GALFIT, the axis ratio may cross 1 smoothly
  during the fit (round galaxies do not sit at a bound); at the end ``q > 1`` is folded back
  (``q → 1/q``, ``re → re q``, ``pa → pa + 90``);
* ``pa = u`` (free, wrapped to [-90, 90) at the end).

Errors
------
At the solution the Jacobian is recomputed with respect to the *catalog* parameters, and the
covariance is ``C = (Jᵀ W J)⁻¹`` with ``W = 1/σ²`` on good pixels (J in float32, ``Jᵀ W J`` in
float64). Reported errors are ``sqrt(diag C)``, *not* rescaled by χ²ν — as GALFIT and Imfit (L-M)
do, i.e. they assume the σ map is right. ``error_scale="chi2nu"`` multiplies them by ``sqrt(χ²ν)`` instead;
``error_scale="correlated"`` by the residual-correlation factor of :mod:`galnet.fit.uncertainty`
(correlated noise and structured residuals; :class:`galnet.fit.Refiner`'s default).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from ..conventions import DEFAULT_ZEROPOINT, fold_axis_ratio, wrap_pa
from ..errors import InputDataError, PSFError
from ..flags import Flag
from ..params import IX_PA, IX_RE, N_PARAMS, index
from ..render import FOURIER_SIZES, AnalyticPSF, check_psf, psf_status, required_fourier_size
from .config import IX_SKY, FitConfig, FitStatus
from .lm import at_bound, covariance_errors, fit_bounds, fold_errors, lm_group
from .uncertainty import residual_correlation_factor

__all__ = ["FitResult", "fit_stamps", "fit_multistart", "pixel_weights", "start_fourier_sizes"]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """Result of :func:`fit_stamps`; numpy arrays, one row per input stamp.

    Attributes
    ----------
    params : ndarray, shape (B, 7)
        ``x, y, mag, re, n, q, pa`` (catalog conventions; NaN where not fitted).
    errors : ndarray, shape (B, 7)
        1-σ errors from the covariance matrix (see the module notes).
    sky, sky_err : ndarray, shape (B,)
        Fitted (or fixed, then error NaN) sky level, counts / px.
    chi2 : ndarray (B,)
        χ² over good pixels. ``ndof``: good pixels − free parameters. ``chi2nu = chi2 / ndof``.
    niter : ndarray of int (B,)
        LM iterations (trial steps) used.
    status : ndarray of int (B,)
        :class:`FitStatus` values.
    flags : ndarray of int64 (B,)
        :class:`galnet.flags.Flag` bits.
    fourier_size : ndarray of int (B,)
        DFT size used for each galaxy.
    messages : list of str
        Per-row explanation of problems ('' if none).
    """

    params: np.ndarray
    errors: np.ndarray
    sky: np.ndarray
    sky_err: np.ndarray
    chi2: np.ndarray
    ndof: np.ndarray
    chi2nu: np.ndarray
    niter: np.ndarray
    status: np.ndarray
    flags: np.ndarray
    fourier_size: np.ndarray
    messages: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls, b: int) -> FitResult:
        nan = np.full(b, np.nan)
        return cls(
            params=np.full((b, N_PARAMS), np.nan), errors=np.full((b, N_PARAMS), np.nan), sky=nan.copy(),
            sky_err=nan.copy(), chi2=nan.copy(), ndof=np.zeros(b, dtype=np.int64), chi2nu=nan.copy(),
            niter=np.zeros(b, dtype=np.int64), status=np.full(b, int(FitStatus.NOT_FITTED)),
            flags=np.zeros(b, dtype=np.int64), fourier_size=np.zeros(b, dtype=np.int64),
            messages=[""] * b,
        )

    def take(self, other: FitResult, rows: np.ndarray, src: np.ndarray | None = None) -> None:
        """Copy rows ``src`` of ``other`` into rows ``rows`` of self (in place)."""
        src = np.arange(len(rows)) if src is None else src
        for name in ("params", "errors", "sky", "sky_err", "chi2", "ndof", "chi2nu", "niter", "status",
                     "flags", "fourier_size"):
            getattr(self, name)[rows] = getattr(other, name)[src]
        for r, s in zip(rows, src):
            self.messages[r] = other.messages[s]


# ----------------------------------------------------------------------------- inputs
def pixel_weights(images: np.ndarray, sigma: np.ndarray | None, mask: np.ndarray | None,
                  *, min_good_pixels: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Inverse-variance weights and per-stamp flags, as GALFIT treats σ and masks.

    A pixel is used when it is not masked (``mask`` True / non-zero = bad, as GALFIT), its value is
    finite, and its σ is finite and > 0. NaN/inf data set ``NAN_PIXELS``; zero, negative or
    non-finite σ on otherwise good pixels set ``BAD_SIGMA``; fewer than ``min_good_pixels`` good
    pixels set ``FEW_GOOD_PIXELS`` (the stamp is then not fitted).

    Parameters
    ----------
    images : ndarray, shape (B, H, W), counts
    sigma : ndarray, shape (B, H, W), counts, or None
        1-σ noise per pixel. ``None``: a constant per stamp, estimated robustly (1.4826 × MAD of
        the outer ring of pixels); then χ²ν is only meaningful for background-limited stamps.
    mask : ndarray, shape (B, H, W), bool/int, or None

    Returns
    -------
    weights : ndarray (B, H, W), 1/σ² on good pixels, 0 elsewhere.
    data : ndarray (B, H, W), the images with bad pixels set to 0.
    flags : ndarray of int64 (B,).
    messages : list of str, per stamp.
    """
    img = np.asarray(images, dtype=float)
    if img.ndim != 3:
        raise InputDataError(f"images must have shape (B, H, W), got {img.shape}")
    b, h, w = img.shape
    flags = np.zeros(b, dtype=np.int64)
    messages = [""] * b
    finite = np.isfinite(img)
    good = finite.copy()
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != img.shape:
            raise InputDataError(f"mask shape {m.shape} differs from the images {img.shape}")
        good &= m == 0
    if sigma is None:
        ring = np.zeros((h, w), dtype=bool)
        k = max(2, min(h, w) // 10)
        ring[:k], ring[-k:], ring[:, :k], ring[:, -k:] = True, True, True, True
        sig = np.empty(b)
        for i in range(b):
            v = img[i][ring & good[i]]
            sig[i] = 1.4826 * np.median(np.abs(v - np.median(v))) if v.size >= 10 else np.nan
        sigma_arr = np.broadcast_to(sig[:, None, None], img.shape)
    else:
        sigma_arr = np.asarray(sigma, dtype=float)
        if sigma_arr.shape != img.shape:
            raise InputDataError(f"sigma shape {sigma_arr.shape} differs from the images {img.shape}")
    sig_ok = np.isfinite(sigma_arr) & (sigma_arr > 0)
    for i in range(b):
        nbad = int((~finite[i]).sum())
        if nbad:
            flags[i] |= Flag.NAN_PIXELS
            messages[i] += f"{nbad} NaN/inf pixel(s) masked; "
        nsig = int((good[i] & ~sig_ok[i]).sum())
        if nsig:
            flags[i] |= Flag.BAD_SIGMA
            messages[i] += f"{nsig} pixel(s) with zero/negative/non-finite sigma masked; "
    good &= sig_ok
    weights = np.where(good, 1.0 / np.where(sig_ok, sigma_arr, 1.0) ** 2, 0.0)
    ngood = good.reshape(b, -1).sum(1)
    for i in np.flatnonzero(ngood < min_good_pixels):
        flags[i] |= Flag.FEW_GOOD_PIXELS
        messages[i] += f"only {int(ngood[i])} good pixel(s) (< {min_good_pixels}); not fitted; "
    data = np.where(good, img, 0.0)
    return weights, data, flags, messages


def _check_psf(psf, b: int) -> tuple[AnalyticPSF | torch.Tensor, np.ndarray, list[str]]:
    """The ``psf`` argument of :func:`fit_stamps` checked (:func:`galnet.render.check_psf`) and normalised.

    A single image (P, P) must pass; the rows of a cube (B, P, P) that do not are flagged (bad (B,),
    with per-row messages) and replaced by a central delta.
    """
    bad = np.zeros(b, dtype=bool)
    msgs = [""] * b
    if isinstance(psf, AnalyticPSF):
        return psf, bad, msgs
    arr = np.asarray(psf.detach().cpu() if isinstance(psf, torch.Tensor) else psf, dtype=float)
    if arr.ndim == 2:
        return torch.as_tensor(check_psf(arr, name="psf")), bad, msgs
    if arr.ndim != 3 or arr.shape[0] != b:
        raise PSFError(f"psf: expected (P, P) or ({b}, P, P), got shape {arr.shape}")
    usable = psf_status(arr)[1]
    out = np.zeros_like(arr)
    out[usable] = check_psf(arr[usable], name="psf")
    for i in np.flatnonzero(~usable):
        try:
            check_psf(arr[i], name=f"psf[{i}]")
        except PSFError as exc:
            msgs[i] = f"bad PSF: {exc}; "
        bad[i] = True
        out[i, arr.shape[1] // 2, arr.shape[2] // 2] = 1.0
    return torch.as_tensor(out), bad, msgs


# ----------------------------------------------------------------------------- public API
def fit_stamps(
    images,
    psf,
    *,
    sigma=None,
    mask=None,
    init=None,
    fit_sky: bool = False,
    sky=0.0,
    zeropoint: float = DEFAULT_ZEROPOINT,
    exptime: float = 1.0,
    max_iter: int | None = None,
    config: FitConfig | None = None,
) -> FitResult:
    """Fit a PSF-convolved Sérsic profile (+ optional constant sky) to every stamp of a batch.

    Parameters
    ----------
    images : array_like or Tensor, shape (B, H, W) or (H, W), counts
        Stamps (sky-subtracted unless ``fit_sky`` or ``sky`` says otherwise).
    psf : array (P, P) or (B, P, P), Tensor, or AnalyticPSF
        Effective PSF(s), odd-sized, centred (see :mod:`galnet.render.psf`). A bad PSF row of a
        cube flags that galaxy ``BAD_INPUT``; a bad single PSF raises :class:`~galnet.errors.PSFError`.
    sigma : array_like, shape (B, H, W), counts, optional
        1-σ noise map (see :func:`pixel_weights` for ``None``).
    mask : array_like, shape (B, H, W), optional
        Bad-pixel mask, True / non-zero = bad (GALFIT's convention).
    init : array_like, shape (B, 7), optional
        Start parameters in catalog conventions; default: moments (:func:`galnet.fit.starts.moments_start`).
    fit_sky : bool
        Fit a constant sky (counts / px) per stamp, starting from ``sky``.
    sky : float or array_like (B,)
        Sky level (fixed unless ``fit_sky``), counts / px.
    zeropoint, exptime : float
        Magnitude zero point and exposure time (s) (see :mod:`galnet.conventions`).
    max_iter : int, optional
        Overrides ``config.max_iter``.
    config : FitConfig, optional
        Tolerances and knobs.

    Returns
    -------
    FitResult
        One row per stamp, in input order; rows that could not be fitted have NaN values,
        ``status = NOT_FITTED`` and flags saying why.
    """
    cfg = config or FitConfig()
    if max_iter is not None:
        cfg = FitConfig(**{**cfg.__dict__, "max_iter": int(max_iter)})
    img = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, dtype=float)
    if img.ndim == 2:
        img = img[None]
        sigma = None if sigma is None else np.asarray(sigma)[None]
        mask = None if mask is None else np.asarray(mask)[None]
    if img.ndim != 3:
        raise InputDataError(f"images must have shape (B, H, W) or (H, W), got {img.shape}")
    b = img.shape[0]
    res = FitResult.empty(b)
    if b == 0:
        return res
    weights, data, flags, msgs = pixel_weights(img, sigma, mask, min_good_pixels=cfg.min_good_pixels)
    psf_obj, bad_psf, psf_msgs = _check_psf(psf, b)
    flags[bad_psf] |= Flag.BAD_INPUT
    msgs = [m + pm for m, pm in zip(msgs, psf_msgs)]
    sky_arr = np.broadcast_to(np.asarray(sky, dtype=float), (b,)).copy()
    ok = ~(bad_psf | ((flags & Flag.FEW_GOOD_PIXELS) != 0))
    start = _starts(init, img, weights, sky_arr, zeropoint, exptime)
    bad_start = ~np.all(np.isfinite(start), axis=1)
    for i in np.flatnonzero(bad_start & ok):
        flags[i] |= Flag.BAD_INPUT
        msgs[i] += "start parameters are not finite; not fitted; "
    ok &= ~bad_start
    start = _clip_start(start)
    res.flags[:] = flags
    res.messages = msgs
    if ok.any():
        _fit_passes(np.flatnonzero(ok), img, data, weights, psf_obj, start, sky_arr, fit_sky, cfg, zeropoint,
                    exptime, res)
    return res


def _starts(init, img: np.ndarray, weights: np.ndarray, sky: np.ndarray, zeropoint: float, exptime: float
            ) -> np.ndarray:
    """Start parameters (B, 7): ``init``, else the moments of the good pixels with the sky removed."""
    if init is None:
        from .starts import moments_start

        sig_for_start = np.where(weights > 0, 1 / np.sqrt(np.where(weights > 0, weights, 1)), np.inf)
        init = moments_start(np.where(weights > 0, img - sky[:, None, None], np.nan), sigma=sig_for_start,
                             zeropoint=zeropoint, exptime=exptime)
    return np.asarray(init, dtype=float).reshape(img.shape[0], N_PARAMS).copy()


def _fit_passes(rows, img, data, weights, psf_obj, start, sky_arr, fit_sky, cfg: FitConfig, zeropoint,
                exptime, res: FitResult) -> None:
    """Fit ``rows`` into ``res``; galaxies that outgrew their DFT size are refitted (up to two more passes).

    ``start`` (B, 7) and ``sky_arr`` (B,) are updated in place for the refitted rows.
    """
    h, w = img.shape[1:]
    sizes = np.zeros(img.shape[0], dtype=np.int64)
    sizes[rows] = start_fourier_sizes(start[rows], (h, w), psf_obj, cfg)
    psf_size = _psf_extent(psf_obj)
    cap = _max_fourier_size((h, w), cfg)
    todo = rows
    for _pass in range(3):
        if todo.size == 0:
            break
        _run_groups(todo, sizes, img, data, weights, psf_obj, start, sky_arr, fit_sky, cfg, zeropoint,
                    exptime, res)
        # galaxies that outgrew their DFT size are refitted from their result with a larger one
        fitted = todo[np.all(np.isfinite(res.params[todo]), axis=1)]
        if cfg.fourier_size is not None or not cfg.refit_outgrown:
            break
        need = np.minimum(required_fourier_size(res.params[fitted], (h, w), psf_size,
                                                wrap_tolerance=cfg.wrap_tolerance), cap)
        redo = fitted[need > sizes[fitted]]
        if redo.size:
            log.info("%d galaxies outgrew their DFT size; refitting with a larger one", redo.size)
            sizes[redo] = need[need > sizes[fitted]]
            start[redo] = res.params[redo]
            sky_arr[redo] = res.sky[redo]
        todo = redo


def _clip_start(start: np.ndarray) -> np.ndarray:
    """A copy of starts ``(B, 7)`` with re, n, q just inside their fit bounds (q ≤ 1) and pa wrapped."""
    start = np.array(start, dtype=float, copy=True)
    for name in ("re", "n", "q"):
        j = index(name)
        lo, hi = fit_bounds(name)
        start[:, j] = np.clip(start[:, j], lo * 1.01, hi / 1.01 if name != "q" else 1.0)
    start[:, IX_PA] = wrap_pa(start[:, IX_PA])
    return start


def _psf_extent(psf) -> int:
    """Side of a PSF image (P, P) / (B, P, P), or of the stamp holding an analytic PSF (6 FWHM, odd)."""
    return int(np.shape(psf)[-1]) if np.ndim(psf) >= 2 else int(6 * psf.fwhm) | 1


def _max_fourier_size(shape, cfg: FitConfig) -> int:
    """``cfg.max_fourier_size``, else the smallest DFT size ≥ 4 × the stamp's longer side."""
    return cfg.max_fourier_size or next((s for s in FOURIER_SIZES if s >= 4 * max(shape)), FOURIER_SIZES[-1])


def start_fourier_sizes(start: np.ndarray, shape, psf, cfg: FitConfig | None = None) -> np.ndarray:
    """DFT size (B,) each fit starts with: from its start, ``re × size_margin``, capped.

    Parameters
    ----------
    start : ndarray, shape (B, 7)
        Finite start parameters (clipped into the fit bounds here, as :func:`fit_stamps` does).
    shape : (int, int)
        Stamp (H, W).
    psf : array (P, P) or (B, P, P), Tensor, or AnalyticPSF
    cfg : FitConfig, optional

    Returns
    -------
    ndarray of int, shape (B,): ``cfg.fourier_size`` everywhere if set.
    """
    cfg = cfg or FitConfig()
    grow = _clip_start(start)
    if cfg.fourier_size is not None:
        return np.full(len(grow), int(cfg.fourier_size), dtype=np.int64)
    grow[:, IX_RE] *= cfg.size_margin
    sizes = required_fourier_size(grow, tuple(shape), _psf_extent(psf), wrap_tolerance=cfg.wrap_tolerance)
    return np.minimum(sizes, _max_fourier_size(shape, cfg))


def _run_groups(rows, sizes, img, data, weights, psf_obj, start, sky_arr, fit_sky, cfg, zeropoint, exptime,
                res: FitResult) -> None:
    n_free = N_PARAMS + 1 if fit_sky else N_PARAMS
    for size in np.unique(sizes[rows]):
        grp = rows[sizes[rows] == size]
        for k in range(0, grp.size, cfg.max_batch):
            sel = grp[k : k + cfg.max_batch]
            d = torch.as_tensor(data[sel])
            wts = torch.as_tensor(weights[sel])
            ps = psf_obj[torch.as_tensor(sel)] if isinstance(psf_obj, torch.Tensor) and psf_obj.ndim == 3 \
                else psf_obj
            g = lm_group(
                d, wts, ps, torch.as_tensor(start[sel]), torch.as_tensor(sky_arr[sel]), fit_sky=fit_sky,
                size=int(size), cfg=cfg, zeropoint=zeropoint, exptime=exptime)
            p, sk, chi2, niter, status = fold_axis_ratio(g.params), g.sky, g.chi2, g.niter, g.status
            # errors: from the LM's last normal matrix where it is at the solution, else a new Jacobian
            err = np.empty((sel.size, N_PARAMS))
            sky_err = np.full(sel.size, np.nan)
            cov = g.cov.numpy()
            err[g.has_cov] = fold_errors(g.params[g.has_cov], cov)
            if fit_sky:
                sky_err[g.has_cov] = np.sqrt(np.clip(cov[:, IX_SKY, IX_SKY], 0, None))
            todo = np.flatnonzero(~g.has_cov)
            if todo.size:
                rows_t = torch.as_tensor(todo)
                err[todo], sky_err[todo] = covariance_errors(g.model, wts[rows_t], p[todo], sk[todo], rows_t,
                                                              fit_sky=fit_sky)
            ngood = (weights[sel] > 0).reshape(sel.size, -1).sum(1)
            ndof = ngood - n_free
            chi2nu = chi2 / np.maximum(ndof, 1)
            if cfg.error_scale in ("chi2nu", "correlated"):
                scale = np.sqrt(chi2nu) if cfg.error_scale == "chi2nu" else \
                    residual_correlation_factor(g.residuals, wts > 0).numpy()
                err = err * scale[:, None]
                sky_err = sky_err * scale
            flags = res.flags[sel].copy()
            if cfg.flag_max_iter:
                flags[status == int(FitStatus.MAX_ITER)] |= Flag.NOT_CONVERGED
            flags[at_bound(p, start[sel], cfg.center_box)] |= Flag.AT_BOUND
            res.params[sel] = p
            res.errors[sel] = err
            res.sky[sel] = sk
            res.sky_err[sel] = sky_err
            res.chi2[sel] = chi2
            res.ndof[sel] = ndof
            res.chi2nu[sel] = chi2nu
            res.niter[sel] += niter
            res.status[sel] = status
            res.flags[sel] = flags
            res.fourier_size[sel] = size


def fit_multistart(images, psf, inits, *, fitter=None, **kwargs) -> FitResult:
    """Fit from several starts (e.g. moments with n = 1 and n = 4) and keep the lowest χ² per galaxy.

    Parameters
    ----------
    images, psf : see :func:`fit_stamps`.
    inits : sequence of array_like, each (B, 7)
        Start parameter sets.
    fitter : callable, optional
        What fits one start: :func:`fit_stamps` (default) or e.g.
        :meth:`galnet.fit.FitPool.fit_stamps` to spread the fits over processes.
    **kwargs
        Passed to :func:`fit_stamps`.

    Returns
    -------
    FitResult with, per galaxy, the fit of lowest χ² (``niter`` is the sum over starts).
    """
    best: FitResult | None = None
    total_iter = None
    for init in inits:
        r = (fitter or fit_stamps)(images, psf, init=init, **kwargs)
        total_iter = r.niter.copy() if total_iter is None else total_iter + r.niter
        if best is None:
            best = r
            continue
        better = np.flatnonzero(np.isfinite(r.chi2) & ~(r.chi2 >= best.chi2))
        best.take(r, better, better)
    assert best is not None
    best.niter = total_iter
    return best
