"""Residual diagnostics: χ²ν per stamp and the statistics behind the ``NON_SERSIC`` flag.

Every model image here comes from the one forward model :func:`galnet.render.render_sersic`;
the noise model is the dataset schema's (:mod:`galnet.data.h5`):
``σ = sqrt(sky_sigma² + max(model, 0) / gain)``.

Statistics (all per stamp, with ``R = I − M`` the residual, ``σ`` the noise map)
-------------------------------------------------------------------------------
``chi2nu``
    ``Σ (R/σ)² / (N_good − 7)`` over the whole stamp (neighbours included: what a fitter sees).
``chi2nu_ap``
    The same inside the galaxy aperture (an ellipse of semi-axes ``2 re + 4`` and
    ``2 re q + 4`` px around the model centre, at most 28 px): the neighbours far out do not
    dilute or inflate it.
``rff``
    Residual flux fraction (Hoyos et al. 2011, MNRAS 411, 2439):
    ``(Σ_ap |R| − sqrt(2/π) Σ_ap σ) / Σ_ap M``. Pure noise gives 0 on average (the mean of
    ``|N(0, σ)|`` is ``sqrt(2/π) σ``), so ``rff`` is the fraction of the galaxy's light that the
    model does not describe.
``asymmetry``
    Residual asymmetry: ``(Σ_ap |R − R₁₈₀| − (2/sqrt π) Σ_ap σ) / (2 Σ_ap M)`` with ``R₁₈₀`` the
    residual rotated by 180° about the model centre (bilinear interpolation). A bulge + disc leaves
    a symmetric residual (caught by ``rff``); clumps, spiral arms, tidal features and overlapping
    neighbours leave an asymmetric one.
``contamination``
    Neighbour contamination: the residual flux of connected groups of at least 6 pixels above
    2σ *outside* the aperture, divided by the model's total flux. Large values mean other sources
    share the stamp (they raise ``chi2nu`` but not necessarily ``chi2nu_ap``).
``rff_sig``, ``asymmetry_sig``, ``chi2_ap_sig``
    Significance (in noise standard deviations) of the excess behind each of the three: for
    pure Gaussian noise ``Σ|R|`` has standard deviation ``sqrt((1 − 2/π) Σσ²)``,
    ``Σ|R − R₁₈₀|`` about ``sqrt(4 (1 − 2/π) Σσ²)`` (each pair counted twice) and ``χ²_ap``
    ``sqrt(2 ν)``. Faint or small galaxies have large noise-driven ``rff`` / ``chi2nu_ap``: the
    significance keeps them from being flagged by noise alone.

Flags (:func:`residual_flags`)
------------------------------
* ``NON_SERSIC`` if any of ``rff``, ``asymmetry``, ``chi2nu_ap`` exceeds its threshold *and*
  its significance exceeds ``t.min_significance`` (3σ);
* ``HIGH_CHI2`` if the whole-stamp ``chi2nu > t.high_chi2`` (1.5, as :mod:`galnet.flags` says).

The thresholds :data:`DEFAULT_THRESHOLDS` were calibrated on simulations
(:func:`calibration_set`, :func:`calibrate_thresholds`; see ``docs/evaluate.md`` for the set, the
procedure and the measured detection and false-positive rates).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..conventions import DEFAULT_ZEROPOINT
from ..errors import InputDataError
from ..flags import Flag
from ..params import IX_MAG, IX_N, IX_PA, IX_Q, IX_RE, IX_X, IX_Y, N_PARAMS

__all__ = [
    "ResidualThresholds",
    "DEFAULT_THRESHOLDS",
    "STATISTICS",
    "render_models",
    "noise_sigma",
    "chi2nu",
    "galaxy_aperture",
    "residual_statistics",
    "residual_flags",
    "calibration_set",
    "calibrate_thresholds",
    "detection_rates",
]

#: Names of the per-stamp statistics returned by :func:`residual_statistics`.
STATISTICS: tuple[str, ...] = ("chi2nu", "chi2nu_ap", "rff", "asymmetry", "contamination", "rff_sig",
                               "asymmetry_sig", "chi2_ap_sig")
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # E|N(0,1)|
_MAX_APERTURE = 28.0


@dataclass(frozen=True)
class ResidualThresholds:
    """Thresholds of the residual flags (see the module notes).

    Attributes
    ----------
    rff : float
        Residual flux fraction above which a galaxy is ``NON_SERSIC``.
    asymmetry : float
        Residual asymmetry above which a galaxy is ``NON_SERSIC``.
    chi2nu_ap : float
        Aperture χ²ν above which a galaxy is ``NON_SERSIC``.
    high_chi2 : float
        Whole-stamp χ²ν above which a galaxy is ``HIGH_CHI2``.
    min_significance : float
        A ``NON_SERSIC`` statistic counts only if its excess is above this many noise σ.
    """

    rff: float = 0.005
    asymmetry: float = 0.01
    chi2nu_ap: float = 1.15
    high_chi2: float = 1.5
    min_significance: float = 3.0

    def to_dict(self) -> dict[str, float]:
        """The thresholds as a plain dict (for JSON reports)."""
        return asdict(self)


#: Calibrated on 3 x 400 simulated stamps (seed 1): see docs/evaluate.md "Calibration of NON_SERSIC".
DEFAULT_THRESHOLDS = ResidualThresholds()


def render_models(params, psfs, *, shape: tuple[int, int] = (61, 61), zeropoint: float = DEFAULT_ZEROPOINT,
                  chunk: int = 256, sky=None) -> np.ndarray:
    """Model images of a parameter table, with :func:`galnet.render.render_sersic`, plus a fitted sky.

    Parameters
    ----------
    params : array_like, shape (B, 7)
        ``x, y, mag, re, n, q, pa`` in catalog conventions; rows with any non-finite value or a
        value outside the renderer's range give an all-NaN image (no exception).
    psfs : array_like, shape (P, P) or (B, P, P)
        Effective PSFs (unit sum, centred).
    shape : (int, int)
        Stamp (H, W), pixels.
    zeropoint : float
        Magnitude zero point.
    chunk : int
        Galaxies rendered per call (bounds memory).
    sky : array_like, shape (B,), optional
        A constant sky per row, counts / px, added to its image (a catalog's ``sky`` column:
        ``galnet predict --refine K``, ``galnet fit --fit-sky``); non-finite entries add nothing.

    Returns
    -------
    ndarray, shape (B, H, W), float64, counts.
    """
    import torch

    from ..params import bad_parameter_rows
    from ..render import render_sersic

    p = np.asarray(params, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != N_PARAMS:
        raise InputDataError(f"params must have shape (B, {N_PARAMS}), got {p.shape}")
    psf = np.asarray(psfs, dtype=np.float64)
    b = len(p)
    out = np.full((b, *shape), np.nan)
    bad, _ = bad_parameter_rows(p)
    rows = np.flatnonzero(~bad)
    for k in range(0, rows.size, chunk):
        sel = rows[k : k + chunk]
        ps = psf if psf.ndim == 2 else psf[sel]
        with torch.no_grad():
            img = render_sersic(torch.as_tensor(p[sel]), torch.as_tensor(ps), shape=shape,
                                zeropoint=zeropoint)
        out[sel] = img.numpy()
    if sky is not None:
        out += np.nan_to_num(np.asarray(sky, dtype=np.float64).reshape(b), nan=0.0)[:, None, None]
    return out


def noise_sigma(models, sky_sigma, gain: float | None) -> np.ndarray:
    """The schema's noise map ``sqrt(sky_sigma² + max(model, 0) / gain)`` (counts).

    Parameters
    ----------
    models : ndarray, shape (B, H, W), counts
        Noise-free galaxy (or, lacking it, the image: the GALFIT convention).
    sky_sigma : float or ndarray (B,), counts / pixel
    gain : float or None
        Electrons per count; ``None`` or 0: sky noise only.

    Returns
    -------
    ndarray (B, H, W)
    """
    m = np.asarray(models, dtype=np.float64)
    sky = np.asarray(sky_sigma, dtype=np.float64).reshape(-1, 1, 1)
    var = np.broadcast_to(sky**2, m.shape).copy()
    if gain:
        var = var + np.maximum(np.nan_to_num(m), 0.0) / float(gain)
    return np.sqrt(var)


def chi2nu(images, models, sigma, *, mask=None, n_free: int = N_PARAMS) -> np.ndarray:
    """Reduced χ² per stamp: ``Σ ((I − M)/σ)² / (N_good − n_free)``.

    Parameters
    ----------
    images, models, sigma : ndarray, shape (B, H, W), counts
    mask : ndarray of bool (B, H, W), optional
        Pixels to use (True = use). Pixels with non-finite image, model or σ ≤ 0 are never used.
    n_free : int
        Free parameters of the model.

    Returns
    -------
    ndarray (B,); NaN where the model is missing or fewer than ``n_free + 1`` good pixels.
    """
    img, mod, sig = (np.asarray(a, dtype=np.float64) for a in (images, models, sigma))
    if not (img.shape == mod.shape == sig.shape) or img.ndim != 3:
        raise InputDataError(f"images, models, sigma must share a (B, H, W) shape: {img.shape}, {mod.shape}, "
                             f"{sig.shape}")
    good = np.isfinite(img) & np.isfinite(mod) & np.isfinite(sig) & (sig > 0)
    if mask is not None:
        good &= np.asarray(mask, dtype=bool)
    z2 = np.where(good, (img - mod) ** 2 / np.where(good, sig, 1.0) ** 2, 0.0)
    ngood = good.reshape(len(img), -1).sum(1)
    dof = ngood - n_free
    out = np.full(len(img), np.nan)
    ok = (dof > 0) & np.isfinite(mod).reshape(len(mod), -1).any(1)
    out[ok] = z2.reshape(len(img), -1).sum(1)[ok] / dof[ok]
    return out


def galaxy_aperture(params, shape: tuple[int, int] = (61, 61)) -> np.ndarray:
    """Elliptical galaxy apertures (semi-axes ``2 re + 4``, ``2 re q + 4`` px, ≤ 28 px).

    Parameters
    ----------
    params : ndarray (B, 7), catalog conventions (1-based centre, PA CCW from +y).
    shape : (int, int)

    Returns
    -------
    ndarray of bool (B, H, W); all False for rows with non-finite parameters.
    """
    from ..render.geometry import ellipse_axes, pa_rotation

    p = np.asarray(params, dtype=np.float64)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dx = xx[None] - (p[:, IX_X, None, None] - 1.0)
    dy = yy[None] - (p[:, IX_Y, None, None] - 1.0)
    # PA counter-clockwise from +y: u along the major axis, v along the minor one
    sin_pa, cos_pa = pa_rotation(p[:, IX_PA])
    u, v = ellipse_axes(dx, dy, sin_pa[:, None, None], cos_pa[:, None, None])
    a = np.minimum(2.0 * p[:, IX_RE] + 4.0, _MAX_APERTURE)[:, None, None]
    bax = np.minimum(2.0 * p[:, IX_RE] * p[:, IX_Q] + 4.0, _MAX_APERTURE)[:, None, None]
    with np.errstate(invalid="ignore"):
        inside = (u / a) ** 2 + (v / bax) ** 2 <= 1.0
    return inside & np.isfinite(p).all(1)[:, None, None]


def _rotate180(res: np.ndarray, x0: float, y0: float) -> np.ndarray:
    """``res`` rotated by 180° about 0-based (x0, y0), bilinear; NaN where it falls off the stamp."""
    from scipy import ndimage

    h, w = res.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    coords = np.stack([2 * y0 - yy, 2 * x0 - xx])
    return ndimage.map_coordinates(np.nan_to_num(res), coords, order=1, mode="constant", cval=np.nan)


def residual_statistics(images, models, sigma, params, *, mask=None) -> dict[str, np.ndarray]:
    """The residual statistics of the module notes, per stamp.

    Parameters
    ----------
    images : ndarray (B, H, W), counts, sky-subtracted
    models : ndarray (B, H, W), counts: the single-Sérsic model of each stamp
    sigma : ndarray (B, H, W), counts: 1-σ noise
    params : ndarray (B, 7): the parameters the models were drawn from (centre and aperture)
    mask : ndarray of bool (B, H, W), optional
        True = pixel usable.

    Returns
    -------
    dict name → ndarray (B,) for each name of :data:`STATISTICS` (NaN where the model is missing).
    """
    from scipy import ndimage

    img, mod, sig = (np.asarray(a, dtype=np.float64) for a in (images, models, sigma))
    p = np.asarray(params, dtype=np.float64)
    b, h, w = img.shape
    good = np.isfinite(img) & np.isfinite(sig) & (sig > 0)
    if mask is not None:
        good &= np.asarray(mask, dtype=bool)
    ap = galaxy_aperture(p, (h, w)) & good
    out = {k: np.full(b, np.nan) for k in STATISTICS}
    out["chi2nu"] = chi2nu(img, mod, sig, mask=good)
    out["chi2nu_ap"] = chi2nu(img, mod, sig, mask=ap)
    nu_ap = ap.reshape(b, -1).sum(1) - N_PARAMS
    with np.errstate(invalid="ignore", divide="ignore"):
        z_chi2 = (out["chi2nu_ap"] - 1.0) * np.sqrt(np.maximum(nu_ap, 1) / 2.0)
        out["chi2_ap_sig"] = np.where(nu_ap > 0, z_chi2, np.nan)
    var_abs = 1.0 - 2.0 / math.pi  # variance of |N(0, 1)|
    res = img - mod
    for i in range(b):
        if not np.isfinite(mod[i]).all() or not ap[i].any():
            continue
        a = ap[i]
        flux_ap = float(mod[i][a].sum())
        flux_tot = float(mod[i].sum())
        if flux_ap <= 0:
            continue
        r = np.where(good[i], res[i], 0.0)
        excess = np.abs(r[a]).sum() - _SQRT_2_OVER_PI * sig[i][a].sum()
        out["rff"][i] = excess / flux_ap
        out["rff_sig"][i] = excess / math.sqrt(var_abs * float((sig[i][a] ** 2).sum()))
        r180 = _rotate180(np.where(good[i], res[i], np.nan), p[i, IX_X] - 1.0, p[i, IX_Y] - 1.0)
        both = a & np.isfinite(r180)
        if both.any():
            diff = np.abs(r[both] - r180[both]).sum() - 2.0 / math.sqrt(math.pi) * sig[i][both].sum()
            out["asymmetry"][i] = diff / (2.0 * float(mod[i][both].sum()))
            out["asymmetry_sig"][i] = diff / math.sqrt(4.0 * var_abs * float((sig[i][both] ** 2).sum()))
        z = np.where(good[i] & ~a, r / sig[i], 0.0)
        lab, nlab = ndimage.label(z > 2.0, structure=np.ones((3, 3)))
        cont = 0.0
        if nlab:
            sizes = np.bincount(lab.ravel())
            big = np.flatnonzero(sizes >= 6)
            big = big[big > 0]
            if big.size:
                cont = float(r[np.isin(lab, big)].sum())
        out["contamination"][i] = cont / flux_tot if flux_tot > 0 else np.nan
    return out


def residual_flags(stats: dict[str, np.ndarray], thresholds: ResidualThresholds = DEFAULT_THRESHOLDS
                   ) -> np.ndarray:
    """``NON_SERSIC`` and ``HIGH_CHI2`` bits from :func:`residual_statistics` output.

    Parameters
    ----------
    stats : dict name → ndarray (B,)
        Needs ``rff, asymmetry, chi2nu_ap, chi2nu``; the ``*_sig`` entries, when absent, count
        as significant.
    thresholds : ResidualThresholds

    Returns
    -------
    ndarray of int64 (B,): :class:`galnet.flags.Flag` bits (0 where statistics are NaN).
    """
    t = thresholds

    def over(name: str, thr: float, sig_name: str) -> np.ndarray:
        v = np.asarray(stats[name], dtype=np.float64)
        z = np.asarray(stats.get(sig_name, np.full(v.shape, np.inf)), dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return (v > thr) & (z > t.min_significance)

    non = over("rff", t.rff, "rff_sig") | over("asymmetry", t.asymmetry, "asymmetry_sig") | over(
        "chi2nu_ap", t.chi2nu_ap, "chi2_ap_sig")
    with np.errstate(invalid="ignore"):
        high = np.asarray(stats["chi2nu"]) > t.high_chi2
    return np.where(non, int(Flag.NON_SERSIC), 0).astype(np.int64) | np.where(high, int(Flag.HIGH_CHI2), 0)


# ----------------------------------------------------------------------------- calibration
#: Kinds of :func:`calibration_set`.
CALIBRATION_KINDS = ("single", "bulge_disc", "clumpy")


def calibration_set(config, n: int, kind: str, *, seed: int, mag_range=(17.0, 21.0),
                    re_range=(4.0, 12.0)) -> dict[str, np.ndarray]:
    """Simulated stamps to calibrate and test the ``NON_SERSIC`` flag.

    Base galaxies come from :func:`galnet.simulate.generate_batch` with neighbours off (their
    PSFs, sky noise and parameters), with ``mag`` and ``re`` redrawn uniformly in ``mag_range`` and
    log-uniformly in ``re_range`` (px) so that the structure is resolved and detectable.

    * ``"single"``: the base single Sérsic.
    * ``"bulge_disc"``: an exponential disc (``n = 1``, the base ``re``, ``q``, ``pa``) plus a de
      Vaucouleurs bulge (``n = 4``, ``re_b = U(0.15, 0.35) re``, ``q_b = U(0.7, 1)``), bulge-to-total
      ``U(0.3, 0.7)``, same centre, total magnitude the base one.
    * ``"clumpy"``: the base galaxy with ``n = U(0.5, 1.5)`` plus 2-5 compact clumps (``n = 0.5``,
      ``re = U(0.5, 1.5)`` px, round) at ``U(0.3, 1.5) re`` from the centre, holding ``U(0.15, 0.35)``
      of the total flux together.

    Each component is drawn with :func:`galnet.render.render_sersic`; noise is Gaussian with the
    schema's ``σ = sqrt(sky² + max(model, 0)/gain)``.

    Parameters
    ----------
    config : SimulationConfig
    n : int
    kind : {"single", "bulge_disc", "clumpy"}
    seed : int
    mag_range, re_range : (float, float)

    Returns
    -------
    dict: ``images, models, sigma`` (n, H, W) float64; ``psfs`` (n, P, P); ``sky_sigma`` (n,);
    ``params`` (n, 7) of the base (for ``single``: the truth).
    """
    import dataclasses

    from ..conventions import flux_to_mag, mag_to_flux
    from ..simulate import generate_batch

    if kind not in CALIBRATION_KINDS:
        raise InputDataError(f"kind must be one of {CALIBRATION_KINDS}, got {kind!r}")
    cfg = dataclasses.replace(config, neighbours=dataclasses.replace(config.neighbours, enabled=False))
    rng = np.random.default_rng([seed, CALIBRATION_KINDS.index(kind)])
    base = generate_batch(cfg, n, seed=rng)
    shape = base["images"].shape[1:]
    psfs = base["psfs"].astype(np.float64)
    p = base["params"].copy()
    p[:, IX_MAG] = rng.uniform(*mag_range, n)
    p[:, IX_RE] = np.exp(rng.uniform(np.log(re_range[0]), np.log(re_range[1]), n))
    zp = cfg.zeropoint
    if kind == "single":
        model = render_models(p, psfs, shape=shape, zeropoint=zp)
    elif kind == "bulge_disc":
        bt = rng.uniform(0.3, 0.7, n)
        flux = mag_to_flux(p[:, IX_MAG], zp)
        disc, bulge = p.copy(), p.copy()
        disc[:, IX_N] = 1.0
        disc[:, IX_MAG] = flux_to_mag(flux * (1 - bt), zp)
        bulge[:, IX_MAG] = flux_to_mag(flux * bt, zp)
        bulge[:, IX_RE] = p[:, IX_RE] * rng.uniform(0.15, 0.35, n)
        bulge[:, IX_N] = 4.0
        bulge[:, IX_Q] = rng.uniform(0.7, 1.0, n)
        model = render_models(disc, psfs, shape=shape, zeropoint=zp) + render_models(
            bulge, psfs, shape=shape, zeropoint=zp)
    else:
        p[:, IX_N] = rng.uniform(0.5, 1.5, n)
        flux = mag_to_flux(p[:, IX_MAG], zp)
        fc = rng.uniform(0.15, 0.35, n)
        host = p.copy()
        host[:, IX_MAG] = flux_to_mag(flux * (1 - fc), zp)
        model = render_models(host, psfs, shape=shape, zeropoint=zp)
        nclump = rng.integers(2, 6, n)
        owner = np.repeat(np.arange(n), nclump)
        w = rng.uniform(0.5, 1.5, owner.size)
        share = w / np.bincount(owner, weights=w)[owner]
        r = rng.uniform(0.3, 1.5, owner.size) * p[owner, IX_RE]
        phi = rng.uniform(0, 2 * np.pi, owner.size)
        cl = np.empty((owner.size, N_PARAMS))
        cl[:, IX_X] = p[owner, IX_X] + r * np.cos(phi)
        cl[:, IX_Y] = p[owner, IX_Y] + r * np.sin(phi) * p[owner, IX_Q]
        cl[:, IX_MAG] = flux_to_mag(flux[owner] * fc[owner] * share, zp)
        cl[:, IX_RE] = rng.uniform(0.5, 1.5, owner.size)
        cl[:, IX_N] = 0.5
        cl[:, IX_Q] = 1.0
        cl[:, IX_PA] = 0.0
        clumps = render_models(cl, psfs[owner], shape=shape, zeropoint=zp)
        np.add.at(model, owner, clumps)
    sigma = noise_sigma(model, base["sky_sigma"], cfg.gain)
    images = model + rng.standard_normal(model.shape) * sigma
    return {"images": images, "models": model, "sigma": sigma, "psfs": psfs,
            "sky_sigma": base["sky_sigma"].astype(np.float64), "params": p}


def calibrate_thresholds(single_stats: dict[str, np.ndarray], *, false_positive_rate: float = 0.05,
                         high_chi2: float = DEFAULT_THRESHOLDS.high_chi2) -> ResidualThresholds:
    """Thresholds giving at most ``false_positive_rate`` of single-Sérsic galaxies flagged.

    Each of the three ``NON_SERSIC`` statistics gets the ``1 − false_positive_rate / 3`` quantile of
    its distribution on single-Sérsic fits (so that the OR of the three stays below the rate); the
    significance gate ``min_significance`` (default 3σ) is kept, which lowers the rate further.

    Parameters
    ----------
    single_stats : dict name → ndarray
        :func:`residual_statistics` of fits to single-Sérsic simulations.
    false_positive_rate : float
    high_chi2 : float
        Kept as given.

    Returns
    -------
    ResidualThresholds
    """
    q = 1.0 - false_positive_rate / 3.0

    def quant(name: str) -> float:
        v = np.asarray(single_stats[name], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            raise InputDataError(f"no finite {name!r} values to calibrate on")
        return float(np.quantile(v, q))

    return ResidualThresholds(rff=quant("rff"), asymmetry=quant("asymmetry"), chi2nu_ap=quant("chi2nu_ap"),
                              high_chi2=high_chi2)


def detection_rates(flags_by_kind: dict[str, np.ndarray]) -> dict[str, float]:
    """Fraction of ``NON_SERSIC`` per kind: ``{kind: rate}`` (``single`` = false-positive rate)."""
    from ..flags import any_set

    return {k: float(any_set(v, Flag.NON_SERSIC).mean()) if len(v) else math.nan
            for k, v in flags_by_kind.items()}
