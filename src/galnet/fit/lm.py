"""The batched Levenberg–Marquardt loop of the fitter, its bound reparameterisation and its covariances.

See :mod:`galnet.fit.solver` for the scheme (bounds by reparameterisation, convergence tests, errors).
:func:`lm_group` fits one group of galaxies sharing a DFT size; each galaxy has its own damping,
convergence test and status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..params import IX_MAG, IX_N, IX_PA, IX_Q, IX_RE, IX_X, IX_Y, N_PARAMS, PARAMETERS, index
from .config import IX_SKY, FitConfig, FitStatus
from .model import GroupModel

__all__ = [
    "fit_bounds",
    "BoundTransform",
    "lm_group",
    "damped_step",
    "GroupFit",
    "covariance_from_normal",
    "fold_errors",
    "gauss_newton_decrease",
    "covariance_errors",
    "at_bound",
]


def fit_bounds(name: str) -> tuple[float, float]:
    """The ``fit_bounds`` (low, high) of parameter ``name`` in :data:`galnet.params.PARAMETERS`."""
    spec = PARAMETERS[index(name)]
    assert spec.fit_bounds is not None
    return spec.fit_bounds


class BoundTransform:
    """Element-wise maps internal ``u`` (B, P) ↔ external parameters (B, 7) + sky (B,).

    See :mod:`galnet.fit.solver` ("Bounds by reparameterisation"). ``P`` is 8 with a fitted sky, else 7.

    Parameters
    ----------
    start : Tensor, shape (B, 7)
        External start parameters (catalog conventions): the centre's box is around them.
    center_box : float
        Largest move of the centre from its start, pixels.
    fit_sky : bool
        Whether the sky (counts / px) is the 8th variable.
    """

    def __init__(self, start: torch.Tensor, center_box: float, fit_sky: bool):
        self.start = start  # (B, 7) external start (centre reference)
        self.box = center_box
        self.fit_sky = fit_sky
        self.lnre = tuple(math.log(v) for v in fit_bounds("re"))
        self.lnn = tuple(math.log(v) for v in fit_bounds("n"))
        self.lq = -math.log(fit_bounds("q")[0])

    @property
    def n_free(self) -> int:
        """Number of internal variables P."""
        return N_PARAMS + 1 if self.fit_sky else N_PARAMS

    def to_internal(self, p: torch.Tensor, sky: torch.Tensor) -> torch.Tensor:
        """Internal variables (B, P) of external parameters ``p`` (B, 7) and ``sky`` (B,), counts / px."""
        eps = 1e-9

        def logit(t):
            t = t.clamp(eps, 1 - eps)
            return torch.log(t) - torch.log1p(-t)

        u = torch.empty(p.shape[0], self.n_free, dtype=p.dtype)
        u[:, IX_X] = torch.atanh(((p[:, IX_X] - self.start[:, IX_X]) / self.box).clamp(-1 + eps, 1 - eps))
        u[:, IX_Y] = torch.atanh(((p[:, IX_Y] - self.start[:, IX_Y]) / self.box).clamp(-1 + eps, 1 - eps))
        u[:, IX_MAG] = p[:, IX_MAG]
        lo, hi = self.lnre
        u[:, IX_RE] = logit((torch.log(p[:, IX_RE]) - lo) / (hi - lo))
        lo, hi = self.lnn
        u[:, IX_N] = logit((torch.log(p[:, IX_N]) - lo) / (hi - lo))
        u[:, IX_Q] = torch.atanh((torch.log(p[:, IX_Q]) / self.lq).clamp(-1 + eps, 1 - eps))
        u[:, IX_PA] = p[:, IX_PA]
        if self.fit_sky:
            u[:, IX_SKY] = sky
        return u

    def to_external(self, u: torch.Tensor, sel: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """External params (B, 7), sky (B,) or None, and d(external)/d(u) (B, P); ``sel``: rows."""
        start = self.start if sel is None else self.start[sel]
        p = torch.empty(u.shape[0], N_PARAMS, dtype=u.dtype)
        d = torch.ones_like(u)
        for j in (IX_X, IX_Y):
            t = torch.tanh(u[:, j])
            p[:, j] = start[:, j] + self.box * t
            d[:, j] = self.box * (1 - t * t)
        p[:, IX_MAG] = u[:, IX_MAG]
        for j, (lo, hi) in ((IX_RE, self.lnre), (IX_N, self.lnn)):
            s = torch.sigmoid(u[:, j])
            p[:, j] = torch.exp(lo + (hi - lo) * s)
            d[:, j] = p[:, j] * (hi - lo) * s * (1 - s)
        t = torch.tanh(u[:, IX_Q])
        p[:, IX_Q] = torch.exp(self.lq * t)
        d[:, IX_Q] = p[:, IX_Q] * self.lq * (1 - t * t)
        p[:, IX_PA] = u[:, IX_PA]
        sky = u[:, IX_SKY] if self.fit_sky else None
        return p, sky, d


    def at_bound(self, u: torch.Tensor) -> torch.Tensor:
        """(B, P) bool: internal variables saturated at a bound, as :func:`at_bound` flags them.

        Within 0.1 % (in log) of the ``re``, ``n`` or lower ``q`` bound (or of ``1 / q_min``, its
        mirror above 1), or the centre within 0.1 % of its box edge. The bound is on the side of
        the sign of ``u``.
        """
        sat = torch.zeros(u.shape, dtype=torch.bool)
        for j in (IX_X, IX_Y):
            sat[:, j] = torch.tanh(u[:, j]).abs() >= 1.0 - 1e-3
        for j, (lo, hi) in ((IX_RE, self.lnre), (IX_N, self.lnn)):
            s = torch.sigmoid(u[:, j])
            sat[:, j] = torch.minimum(s, 1 - s) * (hi - lo) <= 1e-3
        sat[:, IX_Q] = (1.0 - torch.tanh(u[:, IX_Q]).abs()) * self.lq <= 1e-3
        return sat


def lm_group(data: torch.Tensor, weights: torch.Tensor, psf, start: torch.Tensor, sky0: torch.Tensor, *,
             fit_sky: bool, size: int, cfg: FitConfig, zeropoint: float, exptime: float) -> GroupFit:
    """Levenberg–Marquardt fits of one group of galaxies that share a DFT size.

    Parameters
    ----------
    data : Tensor, shape (B, H, W), float64
        Stamps, counts (bad pixels 0).
    weights : Tensor, shape (B, H, W), float64
        ``1 / σ²`` on good pixels, 0 elsewhere.
    psf : AnalyticPSF, or Tensor (P, P) / (B, P, P) float64
        Checked, unit-sum PSF(s).
    start : Tensor, shape (B, 7), float64
        Start parameters, catalog conventions, inside the fit bounds.
    sky0 : Tensor, shape (B,), float64
        Sky start (``fit_sky``) or fixed sky, counts / px.
    fit_sky : bool
    size : int
        DFT size N of the group.
    cfg : FitConfig
    zeropoint, exptime : float
        Magnitude zero point and exposure time, s.

    Returns
    -------
    GroupFit
    """
    b, h, w = data.shape
    model = GroupModel(psf, (h, w), size, zeropoint, exptime)
    tr = BoundTransform(start, cfg.center_box, fit_sky)
    u = tr.to_internal(start, sky0)
    fixed_sky = None if fit_sky else sky0
    evaluate, normal_equations = _objective(data, torch.sqrt(weights), model, tr, fixed_sky)
    all_rows = torch.arange(b)
    chi2, r, gal = evaluate(u, all_rows)
    alpha, beta = normal_equations(u, all_rows, r, gal)
    lam = torch.full((b,), cfg.lambda_init, dtype=data.dtype)
    active = torch.ones(b, dtype=torch.bool)
    niter = torch.zeros(b, dtype=torch.long)
    small = torch.zeros(b, dtype=torch.long)
    status = torch.full((b,), int(FitStatus.MAX_ITER), dtype=torch.long)
    alpha_at_u = torch.ones(b, dtype=torch.bool)  # alpha holds the normal matrix at the current u
    if cfg.gn_tol_chi2 > 0:  # already at the minimum (e.g. a refit at a larger DFT size)
        done = gauss_newton_decrease(alpha, beta, u, tr.at_bound(u)) < cfg.gn_tol_chi2
        status[done] = int(FitStatus.CONVERGED_CHI2)
        active[done] = False
    for _ in range(cfg.max_iter):
        idx = torch.nonzero(active).flatten()
        if idx.numel() == 0:
            break
        step = damped_step(alpha[idx], beta[idx], lam[idx])
        u_try = u[idx] + step
        chi2_try, r_try, gal_try = evaluate(u_try, idx)
        niter[idx] += 1
        better = torch.isfinite(chi2_try) & (chi2_try < chi2[idx])
        acc = idx[better]
        rej = idx[~better]
        _reject(rej, lam, small, status, active, cfg)
        if acc.numel():
            dchi = chi2[acc] - chi2_try[better]
            u[acc] = u_try[better]
            chi2[acc] = chi2_try[better]
            r[acc] = r_try[better]
            lam[acc] = (lam[acc] / cfg.lambda_down).clamp_min(1e-12)
            tiny = dchi <= cfg.rtol_chi2 * chi2[acc] + cfg.atol_chi2
            small[acc] = torch.where(tiny, small[acc] + 1, torch.zeros_like(small[acc]))
            xsmall = step[better].abs().amax(1) < cfg.xtol
            done_chi = small[acc] >= cfg.patience
            status[acc[done_chi]] = int(FitStatus.CONVERGED_CHI2)
            status[acc[xsmall & ~done_chi]] = int(FitStatus.CONVERGED_STEP)
            finished = done_chi | xsmall
            active[acc[finished]] = False
            alpha_at_u[acc[finished]] = False  # u moved; its normal matrix is not computed
            keep = ~finished
            cont = acc[keep]
            if cont.numel():
                al, be = normal_equations(u[cont], cont, r_try[better][keep], gal_try[better][keep])
                alpha[cont] = al
                beta[cont] = be
                if cfg.gn_tol_chi2 > 0:
                    near = cont[gauss_newton_decrease(al, be, u[cont], tr.at_bound(u[cont]))
                                < cfg.gn_tol_chi2]
                    status[near] = int(FitStatus.CONVERGED_CHI2)
                    active[near] = False
    p, sky, d = tr.to_external(u)
    cov = _final_covariance(alpha, alpha_at_u, d)
    return GroupFit(p.numpy(), (sky if fit_sky else fixed_sky).numpy(), chi2.numpy(), niter.numpy(),
                    status.numpy(), alpha_at_u.numpy(), cov, model, r)


def _objective(data: torch.Tensor, sqw: torch.Tensor, model: GroupModel, tr: BoundTransform,
               fixed_sky: torch.Tensor | None):
    """The two functions of internal variables the LM loop evaluates (rows ``sel`` of the group).

    ``sqw`` is ``sqrt(weights)`` (B, H, W); ``fixed_sky`` the sky (B,) when it is not fitted, else None.
    Returns ``evaluate(uu, sel, gal=None) -> (χ² (B,), weighted residuals (B, H, W), galaxy model)`` and
    ``normal_equations(uu, sel, r, gal) -> (Jᵀ W J (B, P, P), Jᵀ W r (B, P))``.
    """
    n_free = tr.n_free
    fit_sky = fixed_sky is None

    def evaluate(uu, sel, gal=None):
        """χ² (B,), weighted residuals (B, H, W), galaxy model (B, H, W) at internal ``uu``."""
        p, sky, _ = tr.to_external(uu, sel)
        sk = sky if fit_sky else fixed_sky[sel]
        if gal is None:
            gal = model.render(p, sel)
        r = (data[sel] - gal - sk[:, None, None]) * sqw[sel]
        return (r * r).sum((1, 2)), r, gal

    def normal_equations(uu, sel, r, gal):
        """Jᵀ W J (B, P, P) and Jᵀ W r (B, P) in internal variables."""
        p, sky, d = tr.to_external(uu, sel)
        _, jac = model.jacobian(p, sky, sel, gal=gal)
        # weighted Jacobian in internal variables: one product by d (B, P, 1) * sqrt(w) (B, 1, H W)
        nb = sel.numel()
        jw = jac[:, :n_free].reshape(nb, n_free, -1) * (d[:, :, None] * sqw[sel].reshape(nb, 1, -1))
        return jw @ jw.transpose(1, 2), (jw @ r.reshape(nb, -1, 1))[..., 0]

    return evaluate, normal_equations


def _reject(rej: torch.Tensor, lam: torch.Tensor, small: torch.Tensor, status: torch.Tensor,
            active: torch.Tensor, cfg: FitConfig) -> None:
    """Rows ``rej`` whose trial step was rejected (in place): more damping; converged when the rejection
    follows a converging (tiny Δχ²) step (at the minimum to working precision); stalled when the damping
    explodes."""
    lam[rej] *= cfg.lambda_up
    conv = rej[small[rej] >= 1]
    status[conv] = int(FitStatus.CONVERGED_CHI2)
    active[conv] = False
    stalled = rej[(lam[rej] > cfg.lambda_max) & (small[rej] < 1)]
    status[stalled] = int(FitStatus.STALLED)
    active[stalled] = False


def damped_step(alpha: torch.Tensor, beta: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Marquardt steps (B, P): ``(α + λ diag(α) + floor I)⁻¹ β``, 0 where not finite.

    ``α`` (B, P, P) and ``β`` (B, P) are the normal equations in internal variables, ``λ`` (B,) the
    damping; diagonals below ``1e-12`` of the largest are raised to that floor.
    """
    diag = torch.diagonal(alpha, dim1=1, dim2=2)
    floor = 1e-12 * diag.amax(1, keepdim=True).clamp_min(1e-300)
    damp = lam[:, None] * torch.maximum(diag, floor)
    eye = torch.eye(alpha.shape[-1], dtype=alpha.dtype)
    lhs = alpha + torch.diag_embed(damp) + eye * floor[:, :, None]
    step = torch.linalg.solve(lhs, beta)
    return torch.where(torch.isfinite(step), step, torch.zeros_like(step))


def _final_covariance(alpha: torch.Tensor, alpha_at_u: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Covariances ``D α⁻¹ D`` (M, P, P) of the rows of ``alpha_at_u`` (updated in place) that allow it.

    The normal matrix serves for the errors where it is finite and no variable is saturated at a
    bound (its column then vanishes to rounding; those rows get a Jacobian in catalog parameters).
    """
    diag = torch.diagonal(alpha, dim1=1, dim2=2)
    alpha_at_u &= (torch.isfinite(alpha).all(2).all(1) & torch.isfinite(d).all(1)
                   & (diag.amin(1) > 1e-20 * diag.amax(1)))
    try:
        return covariance_from_normal(alpha[alpha_at_u]) * d[alpha_at_u, :, None] * d[alpha_at_u, None, :]
    except torch.linalg.LinAlgError:
        alpha_at_u[:] = False
        return alpha[:0]


@dataclass
class GroupFit:
    """What :func:`lm_group` returns: numpy rows, and the covariances it could compute.

    ``cov`` (M, P, P) are the covariances of the external (unfolded) parameters ``x .. pa (, sky)``
    of the ``has_cov`` rows: ``D α⁻¹ D`` from the normal matrix ``α`` of the last Jacobian, when it
    was computed at the final point (fits that stopped on the Gauss–Newton test, stalled or ran out
    of iterations), with ``D = ∂θ/∂u`` of the bound reparameterisation. That equals
    ``(J_θᵀ W J_θ)⁻¹``, which :func:`covariance_errors` computes for the other rows. ``residuals``
    (B, H, W) are ``(data − model) / σ`` at the final point (0 on bad pixels).
    """

    params: np.ndarray
    sky: np.ndarray
    chi2: np.ndarray
    niter: np.ndarray
    status: np.ndarray
    has_cov: np.ndarray
    cov: torch.Tensor
    model: GroupModel
    residuals: torch.Tensor


def covariance_from_normal(alpha: torch.Tensor) -> torch.Tensor:
    """Pseudo-inverse (B, P, P) of normal matrices, through their unit-diagonal scaling (well conditioned).

    Rows whose matrix is not finite (a Jacobian evaluated at a non-finite point) get NaN, instead of
    failing the whole batch's eigendecomposition.
    """
    dscale = torch.sqrt(torch.diagonal(alpha, dim1=1, dim2=2)).clamp_min(1e-300)
    outer = dscale[:, :, None] * dscale[:, None, :]
    scaled = alpha / outer
    finite = torch.isfinite(scaled).all(2).all(1)
    if bool(finite.all()):
        return torch.linalg.pinv(scaled, hermitian=True) / outer
    eye = torch.eye(scaled.shape[-1], dtype=scaled.dtype).expand_as(scaled)
    cov = torch.linalg.pinv(torch.where(finite[:, None, None], scaled, eye), hermitian=True) / outer
    return torch.where(finite[:, None, None], cov, torch.full_like(cov, math.nan))


def fold_errors(p_unfolded: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """1-σ errors (B, 7) of folded parameters from the covariance (B, ≥7, ≥7) of unfolded ones.

    The fold is :func:`~galnet.conventions.fold_axis_ratio`; ``cov`` has ``x .. pa`` first.

    Where ``q > 1``, ``re' = re q`` and ``q' = 1 / q``: their variances follow by the chain rule
    (``pa' = pa + 90`` keeps its error).
    """
    var = np.diagonal(cov, axis1=1, axis2=2)[:, :N_PARAMS].copy()
    re, q = p_unfolded[:, IX_RE], p_unfolded[:, IX_Q]
    big = q > 1
    var_re = q * q * var[:, IX_RE] + re * re * var[:, IX_Q] + 2 * q * re * cov[:, IX_RE, IX_Q]
    var[big, IX_RE] = var_re[big]
    var[big, IX_Q] = var[big, IX_Q] / q[big] ** 4
    return np.sqrt(np.clip(var, 0, None))


def gauss_newton_decrease(alpha: torch.Tensor, beta: torch.Tensor, u: torch.Tensor | None = None,
                           at_bound: torch.Tensor | None = None) -> torch.Tensor:
    """χ² decrease (B,) to the minimum of the local quadratic model, ``βᵀ α⁻¹ β``, within the bounds.

    ``α`` (B, P, P) is scaled to unit diagonal first, with a relative floor on near-zero diagonals.
    ``u`` (B, P) and ``at_bound`` (B, P, from :meth:`BoundTransform.at_bound`): variables saturated at a
    bound whose step points outwards (the sign of ``u``) are held fixed, i.e. removed from the
    system. The model would push them through the bound, and in a saturated variable its
    prediction never shrinks (the reparameterisation scales a Jacobian column and its gradient
    alike), so without this a fit against a bound never passes the test.
    """
    diag = torch.diagonal(alpha, dim1=1, dim2=2)
    floor = 1e-12 * diag.amax(1, keepdim=True).clamp_min(1e-300)
    scale = torch.sqrt(torch.maximum(diag, floor))
    a = alpha / (scale[:, :, None] * scale[:, None, :])
    b = beta / scale
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    sol = torch.linalg.solve(a + 1e-10 * eye, b)
    if at_bound is not None and bool(at_bound.any()):
        held = at_bound & (torch.sign(sol) == torch.sign(u))
        if bool(held.any()):
            free = (~held).to(a.dtype)
            a = a * free[:, :, None] * free[:, None, :] + torch.diag_embed(held.to(a.dtype))
            b = b * free
            sol = torch.linalg.solve(a + 1e-10 * eye, b)
    dec = (b * sol).sum(-1)
    return torch.where(torch.isfinite(dec), dec, torch.full_like(dec, math.inf))


def covariance_errors(model: GroupModel, weights: torch.Tensor, params: np.ndarray, sky: np.ndarray,
                      sel: torch.Tensor | None, *, fit_sky: bool) -> tuple[np.ndarray, np.ndarray]:
    """``sqrt(diag((Jᵀ W J)⁻¹))`` in catalog parameters, for rows ``sel`` of a group.

    The float32 Fourier Jacobian, its normal matrix in float64: errors within 2e-4 (99th percentile,
    1e-2 at worst) of a float64 Jacobian's on 1,000 hsc-r fits, at 60 % of its cost.

    Parameters
    ----------
    model : GroupModel
    weights : Tensor, shape (B, H, W)
        ``1 / σ²`` on good pixels, 0 elsewhere.
    params : ndarray, shape (B, 7)
        Catalog parameters.
    sky : ndarray, shape (B,)
        Sky, counts / px.
    sel : Tensor of int, shape (B,), or None
        Rows of the group (its PSF rows and spectra).
    fit_sky : bool
        Whether the sky was fitted (its column is then in the normal matrix).

    Returns
    -------
    errors : ndarray, shape (B, 7)
    sky_err : ndarray, shape (B,), counts / px (NaN without ``fit_sky``)
    """
    b = params.shape[0]
    p = torch.as_tensor(params)
    sk = torch.as_tensor(sky)
    _, jac = model.jacobian(p, sk, sel)
    if not fit_sky:
        jac = jac[:, :N_PARAMS]
    n = jac.shape[1]
    jw = (jac * torch.sqrt(weights)[:, None]).reshape(b, n, -1)
    cov = covariance_from_normal(jw @ jw.transpose(1, 2))
    err = torch.sqrt(torch.diagonal(cov, dim1=1, dim2=2).clamp_min(0)).numpy()
    err7 = err[:, :N_PARAMS]
    sky_err = err[:, IX_SKY] if fit_sky else np.full(b, np.nan)
    return err7, sky_err


def at_bound(p: np.ndarray, start: np.ndarray, center_box: float) -> np.ndarray:
    """Rows (B,) bool with a parameter within 0.1% (log) of a fit bound, or the centre at its box edge.

    ``p`` and ``start`` (B, 7) are catalog parameters, ``center_box`` in pixels.
    """
    hit = np.zeros(len(p), dtype=bool)
    for name in ("re", "n"):
        lo, hi = fit_bounds(name)
        v = p[:, index(name)]
        hit |= (v <= lo * 1.001) | (v >= hi / 1.001)
    hit |= p[:, index("q")] <= fit_bounds("q")[0] * 1.001
    for j in (IX_X, IX_Y):
        hit |= np.abs(p[:, j] - start[:, j]) >= 0.999 * center_box
    return hit
