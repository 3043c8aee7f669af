"""Draw simulated stamps: target galaxy + neighbours + stars, per-stamp PSF, noise or a real background.

Everything is drawn from an explicit :class:`numpy.random.Generator`, in a fixed order, so that the
same seed and batch size give identical arrays. Galaxies *and* neighbours are rendered by the one
forward model (stars are Sérsic profiles with ``re = 0.01`` px, i.e. point sources through the same
PSF to 4e-4 at the Nyquist frequency), through :func:`galnet.render.render_scene`: the objects of a
stamp that share a DFT size share one PSF product and one inverse DFT, and a stamp equals the sum of
:func:`galnet.render.render_sersic` of its objects to float rounding.

Main entry point: :func:`generate_batch`.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from ..catalog import read_fits_checked
from ..conventions import mag_to_flux, stamp_center, wrap_pa
from ..errors import InputDataError
from ..params import IX_MAG, IX_N, IX_PA, IX_Q, IX_RE, IX_X, IX_Y, N_PARAMS
from ..render.psf import draw_analytic_psfs, load_psf_library
from .config import SimulationConfig

__all__ = [
    "generate_batch",
    "load_background",
    "as_generator",
    "BATCH_KEYS",
]

#: Keys of the arrays :func:`generate_batch` always returns (``sigma_maps`` and ``models`` optional).
BATCH_KEYS = ("images", "psfs", "sky_sigma", "params", "snr", "n_neighbours", "psf_fwhm", "background")
#: ``re`` (pixels) given to stars so that they are point sources through the Sérsic renderer.
STAR_RE_PIX = 0.01


def as_generator(seed) -> np.random.Generator:
    """A :class:`numpy.random.Generator` from an int, a SeedSequence, a Generator (returned as is) or None."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


# ============================================================================ PSFs
def _draw_psfs(config: SimulationConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-stamp PSF images (n, P, P) float64 and their FWHM in pixels (NaN for library PSFs)."""
    pc = config.psf
    if pc.library:
        lib = load_psf_library(str(pc.library), config.psf_size, pc.library_hdu)
        pick = rng.integers(0, len(lib), n)
        return lib[pick], np.full(n, np.nan)
    weights = np.array([pc.model_weights.get("moffat", 0.0), pc.model_weights.get("kolmogorov", 0.0)])
    model = (rng.random(n) * weights.sum() >= weights[0]).astype(np.int8)
    fwhm = pc.fwhm_arcsec.sample(rng, n) / config.pixel_scale
    beta = pc.moffat_beta.sample(rng, n)
    q = 1.0 - pc.ellipticity.sample(rng, n)
    pa = rng.uniform(-90.0, 90.0, n)
    return draw_analytic_psfs(model, fwhm, beta, q, pa, config.psf_size, oversample=pc.oversample), fwhm


# ============================================================================ backgrounds
class _Background:
    """A real background image in preset counts, sky-subtracted, with optional variance."""

    def __init__(self, path: str, image: np.ndarray, variance: np.ndarray | None, sigma: float):
        self.path, self.image, self.variance, self.sigma = path, image, variance, sigma


@functools.lru_cache(maxsize=16)
def load_background(path: str, stamp_size: int, image_hdu: int | str = 0,
                    variance_hdu: int | str | None = None, scale: float = 1.0) -> _Background:
    """Read a background image once per process: rescale, subtract the (sigma-clipped) sky level.

    Parameters
    ----------
    path : str
        FITS file.
    stamp_size : int
        The image must be at least this big in both axes.
    image_hdu, variance_hdu : int or str
        HDUs of the science image and of the variance plane (optional).
    scale : float
        Factor to preset counts (``10**(0.4 (zp_preset - zp_file))``); variance gets ``scale**2``.

    Raises
    ------
    InputDataError
        Missing/unreadable file, not 2-D, smaller than a stamp, all-NaN, or a bad variance plane;
        the message names the file.
    """
    from astropy.stats import sigma_clipped_stats

    img, var = read_fits_checked(path, "background", lambda p: _read_background(p, image_hdu, variance_hdu),
                                 detail=f" HDU {image_hdu!r}/{variance_hdu!r}")
    if img is None or img.ndim != 2:
        raise InputDataError(f"background {path}: HDU {image_hdu!r} is not a 2-D image")
    if min(img.shape) < stamp_size:
        raise InputDataError(
            f"background {path}: image is {img.shape[1]}x{img.shape[0]} pixels, smaller than one "
            f"{stamp_size}x{stamp_size} stamp"
        )
    finite = np.isfinite(img)
    if finite.sum() < stamp_size * stamp_size:
        raise InputDataError(
            f"background {path}: image has only {int(finite.sum())} finite pixels (all NaN?)"
        )
    if var is not None:
        if var.shape != img.shape:
            raise InputDataError(f"background {path}: variance plane shape {var.shape} != image {img.shape}")
        var = np.where(np.isfinite(var) & (var > 0), var, np.nan) * scale**2
    img = img * scale
    _, median, std = sigma_clipped_stats(img[finite], sigma=3.0, maxiters=10)
    return _Background(str(path), (img - median).astype(np.float32),
                       None if var is None else var.astype(np.float32), float(std))


def _read_background(p: Path, image_hdu: int | str, variance_hdu: int | str | None):
    """Image and variance plane (or None) of a background file, as float64 arrays (or None)."""
    from astropy.io import fits

    with fits.open(p, memmap=False) as hdul:
        img = hdul[image_hdu].data
        var = hdul[variance_hdu].data if variance_hdu is not None else None
        img = None if img is None else np.asarray(img, dtype=np.float64)
        var = None if var is None else np.asarray(var, dtype=np.float64)
    return img, var


def _cutout(bg: _Background, rng: np.random.Generator, size: int, max_tries: int):
    h, w = bg.image.shape
    for _ in range(max_tries):
        y0, x0 = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        cut = bg.image[y0 : y0 + size, x0 : x0 + size]
        var = None if bg.variance is None else bg.variance[y0 : y0 + size, x0 : x0 + size]
        if np.all(np.isfinite(cut)) and (var is None or np.all(np.isfinite(var))):
            return cut, var
    raise InputDataError(
        f"background {bg.path}: no {size}x{size} cutout free of NaN (or bad variance) found in "
        f"{max_tries} tries"
    )


def _robust_sigma(cut: np.ndarray) -> float:
    """Noise σ of a cutout from the median absolute deviation (robust to the sources it contains)."""
    return float(1.4826 * np.median(np.abs(cut - np.median(cut))))


# ============================================================================ neighbours
def _power_law_mags(rng, n, slope, m_min, m_max):
    """Magnitudes with dN/dm ∝ 10**(slope m) on [m_min, m_max] (inverse CDF)."""
    lo, hi = 10.0 ** (slope * m_min), 10.0 ** (slope * m_max)
    return np.log10(lo + rng.random(n) * (hi - lo)) / slope


def _mean_count(log10_a, slope, m_ref, m_min, m_max, area_deg2):
    """Expected number of sources per area from dN/dm = 10**(log10_a + slope (m - m_ref))."""
    integral = 10.0**log10_a / (slope * math.log(10)) * (
        10.0 ** (slope * (m_max - m_ref)) - 10.0 ** (slope * (m_min - m_ref))
    )
    return integral * area_deg2


def _draw_neighbours(config: SimulationConfig, rng, target: np.ndarray, use_nb: np.ndarray):
    """Neighbour parameters (M, 7) and their stamp index (M,)."""
    nc = config.neighbours
    n = len(target)
    size = config.stamp_size
    side = size + 2 * nc.margin_pix
    area = (side * config.pixel_scale / 3600.0) ** 2
    lam_g = _mean_count(nc.galaxy_log10_a, nc.galaxy_slope, nc.galaxy_m_ref, nc.mag_min, nc.mag_max, area)
    lam_s = _mean_count(nc.star_log10_a, nc.star_slope, nc.star_m_ref, nc.mag_min, nc.mag_max, area)
    n_gal = rng.poisson(lam_g, n) * use_nb
    n_star = rng.poisson(lam_s, n) * use_nb
    pair = (rng.random(n) < nc.close_pair_fraction) & use_nb
    ng, ns, npair = int(n_gal.sum()), int(n_star.sum()), int(pair.sum())

    def sizes(mags):
        scatter = nc.re_scatter_dex * rng.standard_normal(len(mags))
        log_re = nc.re_log10_at_m20 + nc.re_slope * (mags - 20.0) + scatter
        return np.clip(10.0**log_re, 0.05, 3.0) / config.pixel_scale

    lo, hi = 1.0 - nc.margin_pix, size + nc.margin_pix
    g = np.empty((ng, N_PARAMS))
    g[:, IX_X], g[:, IX_Y] = rng.uniform(lo, hi, ng), rng.uniform(lo, hi, ng)
    g[:, IX_MAG] = _power_law_mags(rng, ng, nc.galaxy_slope, nc.mag_min, nc.mag_max)
    g[:, IX_RE] = sizes(g[:, IX_MAG])
    g[:, IX_N], g[:, IX_Q] = nc.n.sample(rng, ng), nc.q.sample(rng, ng)
    g[:, IX_PA] = rng.uniform(-90.0, 90.0, ng)
    s = np.empty((ns, N_PARAMS))
    s[:, IX_X], s[:, IX_Y] = rng.uniform(lo, hi, ns), rng.uniform(lo, hi, ns)
    s[:, IX_MAG] = _power_law_mags(rng, ns, nc.star_slope, nc.mag_min, nc.mag_max)
    s[:, IX_RE], s[:, IX_N], s[:, IX_Q], s[:, IX_PA] = STAR_RE_PIX, 0.5, 1.0, 0.0
    t = target[pair]
    c = np.empty((npair, N_PARAMS))
    dist = np.maximum(3.0, rng.uniform(1.5, 4.0, npair) * t[:, IX_RE])
    ang = rng.uniform(0, 2 * np.pi, npair)
    c[:, IX_X], c[:, IX_Y] = t[:, IX_X] + dist * np.cos(ang), t[:, IX_Y] + dist * np.sin(ang)
    c[:, IX_MAG] = np.clip(t[:, IX_MAG] + rng.uniform(-1.0, 3.0, npair), nc.mag_min, nc.mag_max)
    c[:, IX_RE] = sizes(c[:, IX_MAG])
    c[:, IX_N], c[:, IX_Q] = nc.n.sample(rng, npair), nc.q.sample(rng, npair)
    c[:, IX_PA] = rng.uniform(-90.0, 90.0, npair)
    params = np.concatenate([g, s, c])
    stamps = np.arange(n)
    owner = np.concatenate([np.repeat(stamps, n_gal), np.repeat(stamps, n_star), np.flatnonzero(pair)])
    return params, owner, n_gal + n_star + pair


# ============================================================================ main
def draw_target_parameters(config: SimulationConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    """Target parameters (n, 7) in catalog conventions, from the config's priors."""
    pr = config.priors
    c = stamp_center(config.stamp_size)
    p = np.empty((n, N_PARAMS))
    p[:, IX_X] = c + pr.dx.sample(rng, n)
    p[:, IX_Y] = c + pr.dy.sample(rng, n)
    p[:, IX_MAG] = pr.mag.sample(rng, n)
    re_cap_arcsec = config.re_cap_pix() * config.pixel_scale
    p[:, IX_RE] = pr.re_arcsec.sample(rng, n, high=re_cap_arcsec) / config.pixel_scale
    p[:, IX_N] = pr.n.sample(rng, n)
    p[:, IX_Q] = pr.q.sample(rng, n)
    p[:, IX_PA] = wrap_pa(pr.pa.sample(rng, n))
    return p


def generate_batch(config: SimulationConfig, n: int, *, seed=None, return_models: bool = False) -> dict:
    """Simulate ``n`` stamps.

    Parameters
    ----------
    config : SimulationConfig
    n : int
        Number of stamps.
    seed : int, numpy.random.SeedSequence or numpy.random.Generator
        Randomness; a Generator is advanced (so successive calls give fresh stamps).
    return_models : bool
        Also return ``models``: the noise-free target galaxy alone (n, H, W), float32.

    Returns
    -------
    dict of numpy arrays
        ``images`` (n, H, W) float32 counts, sky-subtracted (target + neighbours + noise, or the
        target injected into a real background); ``psfs`` (n, P, P) float32 unit-sum effective
        PSFs; ``sky_sigma`` (n,) float32 sky noise σ, counts/pixel; ``params`` (n, 7) float64 true
        target parameters (catalog conventions, 1-based stamp coordinates); ``snr`` (n,) float32
        optimal S/N of the target, ``sqrt(sum m^2 / (sky_sigma^2 + m / gain))`` with ``m`` the
        noise-free target (``sigma_maps`` instead when present); ``n_neighbours`` (n,) int16;
        ``psf_fwhm`` (n,) float32 pixels (NaN for library PSFs); ``background`` (n,) int16
        index of the real background file used (-1: simulated sky); ``sigma_maps`` (n, H, W)
        float32 when backgrounds with variance planes are configured.
    """
    rng = as_generator(seed)
    cfg = config
    size = cfg.stamp_size
    target = draw_target_parameters(cfg, rng, n)
    psfs, fwhm = _draw_psfs(cfg, rng, n)

    # real backgrounds (decided before neighbours: real images carry their own neighbours)
    bgc = cfg.background
    bg_idx = np.full(n, -1, dtype=np.int16)
    if bgc.files:
        use = rng.random(n) < bgc.probability
        bg_idx[use] = rng.integers(0, len(bgc.files), int(use.sum()))
    nb_on = cfg.neighbours.enabled
    if nb_on:
        nb_params, owner, n_nb = _draw_neighbours(cfg, rng, target, bg_idx < 0)
    else:
        nb_params, owner = np.empty((0, N_PARAMS)), np.empty(0, dtype=np.int64)
        n_nb = np.zeros(n, dtype=np.int64)

    model, scene = _render_stamps(cfg, target, psfs, nb_params, owner)

    # noise
    sky0 = cfg.sky_sigma()
    sky = sky0 * 10.0 ** (0.4 * cfg.noise.depth_scatter_mag * rng.standard_normal(n))
    corr = rng.random(n) < cfg.noise.correlated_fraction
    phase = rng.random((n, 2))
    white = rng.standard_normal((n, size + 1, size + 1))
    # in place, in the same order of operations: the same numbers with fewer temporaries
    if cfg.noise.poisson:
        var = np.maximum(scene, 0.0)
        var /= cfg.gain
        var += sky[:, None, None] ** 2
    else:
        var = np.broadcast_to(sky[:, None, None] ** 2, scene.shape).copy()
    noise = _correlate(white, corr, phase)
    noise *= np.sqrt(var, out=var)
    images = np.add(noise, scene, out=noise) if cfg.noise.enabled else scene.copy()

    want_maps = bool(bgc.files) and bgc.variance_hdu is not None
    sigma_maps = np.sqrt(sky[:, None, None] ** 2 + np.maximum(model, 0.0) / cfg.gain) if want_maps else None
    if bgc.files:
        _inject_backgrounds(cfg, rng, bg_idx, model, images, sky, sigma_maps)
    snr = _optimal_snr(model, sky, sigma_maps, cfg.gain)
    out = {
        "images": images.astype(np.float32),
        "psfs": psfs.astype(np.float32),
        "sky_sigma": sky.astype(np.float32),
        "params": target,
        "snr": snr.astype(np.float32),
        "n_neighbours": n_nb.astype(np.int16),
        "psf_fwhm": fwhm.astype(np.float32),
        "background": bg_idx,
    }
    if sigma_maps is not None:
        out["sigma_maps"] = sigma_maps.astype(np.float32)
    if return_models:
        out["models"] = model.astype(np.float32)
    return out


def _render_stamps(cfg: SimulationConfig, target: np.ndarray, psfs: np.ndarray, nb_params: np.ndarray,
                   owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free stamps (n, S, S) float64, counts: the target alone, and with its neighbours and stars.

    The target alone, then all the neighbours and stars of each stamp as one scene (looser wrap
    tolerance): one PSF product and one inverse DFT per stamp and DFT size, each object on the
    grid render_sersic would give it. Parameters are checked here; the PSFs are unit-sum images
    already (drawn or validated).
    """
    import torch

    from ..params import validate_parameters
    from ..render import render_scene

    n, size = len(target), cfg.stamp_size
    dtype = torch.float32 if cfg.render_dtype == "float32" else torch.float64
    validate_parameters(target, what="target parameters")
    psf_t = torch.as_tensor(psfs, dtype=dtype)
    with torch.no_grad():
        model = render_scene(
            torch.as_tensor(target, dtype=dtype), np.arange(n), psf_t, shape=(size, size),
            zeropoint=cfg.zeropoint, wrap_tolerance=cfg.wrap_tolerance, validate=False,
        ).to(torch.float64)
        scene = model.clone()
        if len(nb_params):
            validate_parameters(nb_params, what="neighbour parameters")
            scene += render_scene(
                torch.as_tensor(nb_params, dtype=dtype), owner, psf_t, n_stamps=n, shape=(size, size),
                zeropoint=cfg.zeropoint, wrap_tolerance=cfg.neighbours.wrap_tolerance, validate=False,
            ).to(torch.float64)
    return model.numpy(), scene.numpy()


def _inject_backgrounds(cfg: SimulationConfig, rng: np.random.Generator, bg_idx: np.ndarray,
                        model: np.ndarray, images: np.ndarray, sky: np.ndarray,
                        sigma_maps: np.ndarray | None) -> None:
    """Replace the stamps with ``bg_idx >= 0`` by their target injected into a real background cutout.

    ``images`` (n, S, S), ``sky`` (n,) and ``sigma_maps`` (n, S, S) are updated in place: the sky σ
    becomes the cutout's (from its variance plane, else robust), and the σ map its variance plus the
    target's Poisson variance.
    """
    bgc, size = cfg.background, cfg.stamp_size
    scale = 1.0 if bgc.zeropoint is None else 10.0 ** (0.4 * (cfg.zeropoint - bgc.zeropoint))
    for i in np.flatnonzero(bg_idx >= 0):
        bg = load_background(str(bgc.files[bg_idx[i]]), size, bgc.image_hdu, bgc.variance_hdu, scale)
        cut, cvar = _cutout(bg, rng, size, bgc.max_tries)
        src_var = np.maximum(model[i], 0.0) / cfg.gain if cfg.noise.poisson else 0.0
        src_noise = rng.standard_normal((size, size)) * np.sqrt(src_var)
        images[i] = cut + model[i] + (src_noise if cfg.noise.enabled else 0.0)
        sky[i] = math.sqrt(float(np.median(cvar))) if cvar is not None else _robust_sigma(cut)
        if sigma_maps is not None:
            base = cvar if cvar is not None else sky[i] ** 2
            sigma_maps[i] = np.sqrt(base + np.maximum(model[i], 0) / cfg.gain)


def _optimal_snr(model: np.ndarray, sky: np.ndarray, sigma_maps: np.ndarray | None, gain: float
                 ) -> np.ndarray:
    """Optimal S/N (n,) of noise-free targets ``model`` (n, S, S): ``sqrt(sum m^2 / sigma^2)``.

    ``sigma^2`` is the σ map squared, else ``sky^2 + max(m, 0) / gain`` (in place, in that order).
    """
    if sigma_maps is not None:
        sig2 = sigma_maps.astype(np.float64) ** 2
    else:
        sig2 = np.maximum(model, 0.0)
        sig2 /= gain
        sig2 += sky[:, None, None] ** 2
    ratio = np.square(model)
    ratio /= sig2
    return np.sqrt(ratio.sum(axis=(1, 2)))


def _correlate(white: np.ndarray, corr: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Unit-variance noise fields (n, H, W) from white noise (n, H+1, W+1).

    Stamps with ``corr`` get the noise of a bilinear resampling with sub-pixel phase ``phase``
    (n, 2): a 2x2 kernel ``[1-a, a] x [1-b, b]``, divided by its L2 norm so the variance stays 1.
    """
    out = white[:, 1:, 1:].copy()
    idx = np.flatnonzero(corr)
    if idx.size:
        a, b = phase[idx, 0][:, None, None], phase[idx, 1][:, None, None]
        w = white[idx]
        # ((1-a)(1-b) w11 + a(1-b) w10 + (1-a)b w01 + ab w00) / norm, summed in that order in place
        mixed = (1 - a) * (1 - b) * w[:, 1:, 1:]
        term = np.empty_like(mixed)
        for weight, part in ((a * (1 - b), w[:, 1:, :-1]), ((1 - a) * b, w[:, :-1, 1:]),
                             (a * b, w[:, :-1, :-1])):
            mixed += np.multiply(weight, part, out=term)
        mixed /= np.sqrt(((1 - a) ** 2 + a**2) * ((1 - b) ** 2 + b**2))
        out[idx] = mixed
    return out


def flux_in_counts(mag, config: SimulationConfig):
    """Total flux in counts of magnitude ``mag`` with the config's zero point."""
    return mag_to_flux(mag, config.zeropoint)
