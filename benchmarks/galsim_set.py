"""An independent evaluation set rendered with GalSim (not galnet's renderer), in galnet's HDF5 schema.

Usage::

    python benchmarks/galsim_set.py [--n 2000] [--seed 14] [--out PATH] [--check 5]

Recipe (:data:`RECIPE`; HSC r-band-like, the noise of the ``hsc-r`` preset):

* 61×61 stamps, 0.168″/px, zero point 27 (``mag = -2.5 log10(total flux of the untruncated
  profile) + 27``, GalSim's ``Sersic`` without truncation);
* target at the stamp centre (31, 31) + a sub-pixel offset uniform in ±1 px per axis; mag uniform
  18–24; Re (semi-major half-light radius) log-uniform 0.15–2.5″; n log-uniform 0.4–6 (GalSim's
  Sérsic stops at 6.2); q uniform 0.2–1; PA uniform in [-90, 90) (degrees CCW from +y). The GalSim
  object is built with :func:`galnet.conventions.to_galsim` (``hlr = re √q``, ``beta = pa + 90°``);
* one PSF per stamp, Moffat (β uniform 2.5–4.5) on even rows and Kolmogorov on odd rows, FWHM
  uniform 0.5–1.0″, round; the stored PSF is a 25×25 image drawn by ``drawImage`` at the pixel
  scale (pixel response included, as survey PSF images are), normalised to unit sum; the stamp is
  ``Convolve(galaxy, PSF).drawImage`` (pixel included once), so the PSF image is the exact
  effective PSF of the stamp, sampled;
* neighbours: 0–3 per stamp (uniform), at positions uniform on the stamp with ≥ 6 px from the
  target, mag = the target's + uniform(−1, +3) (up to 1 mag brighter, up to 3 fainter; clipped to
  17–26.5), Re log-uniform 0.1–1.5″, n from {0.5, 1, 1.5, 2, 3, 4} (a few values: GalSim builds a
  table per n), q uniform 0.3–1, PA uniform; the truth is the central galaxy. Relative, not
  absolute, magnitudes keep the blending equally hard in every magnitude bin: recipe v1 drew them
  uniform in 18–25, so most neighbours of a 23.5-mag target were brighter than it and the faint
  bins measured blending, not noise (fitter mag NMAD at 23.3–24: 0.10 without neighbours, 2.7
  with three);
* noise: Gaussian sky noise of σ = the ``hsc-r`` preset's sky σ (from its 5σ depth, 0.0579
  counts/px) times its per-stamp depth scatter ``10**(0.4·0.1·N(0,1))``, plus the Poisson noise of
  all sources with the preset's gain (2300 e⁻/count), as a Gaussian of variance ``model / gain``.

Stored per stamp, in the schema of :mod:`galnet.data.h5` (what ``galnet simulate`` writes:
``images, psfs, sky_sigma, params, snr, ids, n_neighbours, psf_fwhm`` and the ``meta`` attribute
with ``zeropoint, gain, pixel_scale``), so that ``galnet predict``, ``galnet fit`` and
``galnet evaluate --truth`` read it unchanged. ``snr`` is the optimal S/N of the noiseless target,
``sqrt(Σ m² / (σ_sky² + m / gain))`` over the stamp (the definition of ``galnet simulate``).

Files are cached under ``benchmarks/.cache/`` keyed on the recipe, ``n`` and the seed.
``--check K`` draws a K-stamp set with the same recipe and seed, renders its noiseless targets with
galnet's ``render_sersic`` from the stored parameters and PSF images and prints the largest
per-pixel difference to GalSim's, relative to the peak (the truth conventions agree when it is
~1e-3).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from galnet.params import IX_MAG, IX_N, IX_Q, IX_X, IX_Y, N_PARAMS

#: Everything that defines the set (with ``n`` and ``seed``); changing it changes the cache key.
RECIPE: dict = {
    "version": 2,
    "stamp_size": 61,
    "psf_size": 25,
    "pixel_scale": 0.168,
    "zeropoint": 27.0,
    "mag": [18.0, 24.0],
    "re_arcsec": [0.15, 2.5],
    "n": [0.4, 6.0],
    "q": [0.2, 1.0],
    "offset_pix": 1.0,
    "psf_fwhm_arcsec": [0.5, 1.0],
    "moffat_beta": [2.5, 4.5],
    "neighbours_max": 3,
    "neighbour_min_dist_pix": 6.0,
    "neighbour_dmag": [-1.0, 3.0],
    "neighbour_mag_limits": [17.0, 26.5],
    "neighbour_re_arcsec": [0.1, 1.5],
    "neighbour_n": [0.5, 1.0, 1.5, 2.0, 3.0, 4.0],
    "neighbour_q": [0.3, 1.0],
    "preset": "hsc-r",
    "psf_model": "image",
}
CACHE_DIR = Path(__file__).resolve().parent / ".cache"


def cache_path(n: int, seed: int, recipe: dict | None = None) -> Path:
    """Cache file of a set: ``benchmarks/.cache/galsim_n<n>_s<seed>_<hash of the recipe>.h5``."""
    key = json.dumps({"recipe": recipe or RECIPE, "n": n, "seed": seed}, sort_keys=True)
    return CACHE_DIR / f"galsim_n{n}_s{seed}_{hashlib.sha256(key.encode()).hexdigest()[:10]}.h5"


def _loguniform(rng: np.random.Generator, lo: float, hi: float, size=None):
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size))


def draw_parameters(n: int, rng: np.random.Generator, recipe: dict = RECIPE) -> dict[str, np.ndarray]:
    """Draw the target, PSF and neighbour parameters of ``n`` stamps.

    Parameters
    ----------
    n : int
        Number of stamps.
    rng : numpy.random.Generator
    recipe : dict
        :data:`RECIPE`.

    Returns
    -------
    dict with ``params`` (n, 7) float64 true ``x, y, mag, re [px], n, q, pa [deg]`` (catalog
    conventions, 1-based); ``psf_kind`` (n,) int (0 Moffat, 1 Kolmogorov); ``psf_fwhm`` (n,)
    arcsec; ``psf_beta`` (n,) Moffat β (NaN for Kolmogorov); ``neighbours`` a list of n arrays
    (k, 7) of neighbour parameters in the same conventions.
    """
    r = recipe
    size, scale = r["stamp_size"], r["pixel_scale"]
    c = (size + 1) / 2.0
    off = r["offset_pix"]
    params = np.stack([
        c + rng.uniform(-off, off, n),
        c + rng.uniform(-off, off, n),
        rng.uniform(*r["mag"], n),
        _loguniform(rng, *r["re_arcsec"], n) / scale,
        _loguniform(rng, *r["n"], n),
        rng.uniform(*r["q"], n),
        rng.uniform(-90.0, 90.0, n),
    ], axis=1)
    kind = np.arange(n) % 2
    fwhm = rng.uniform(*r["psf_fwhm_arcsec"], n)
    beta = np.where(kind == 0, rng.uniform(*r["moffat_beta"], n), np.nan)
    neighbours = []
    for i in range(n):
        k = int(rng.integers(0, r["neighbours_max"] + 1))
        pos = []
        while len(pos) < k:
            x, y = rng.uniform(1.0, float(size), 2)
            if math.hypot(x - params[i, IX_X], y - params[i, IX_Y]) >= r["neighbour_min_dist_pix"]:
                pos.append((x, y))
        lim = r["neighbour_mag_limits"]
        nb = np.array([[x, y, float(np.clip(params[i, IX_MAG] + rng.uniform(*r["neighbour_dmag"]), *lim)),
                        _loguniform(rng, *r["neighbour_re_arcsec"]) / scale,
                        float(rng.choice(r["neighbour_n"])), rng.uniform(*r["neighbour_q"]),
                        rng.uniform(-90.0, 90.0)] for x, y in pos]).reshape(k, N_PARAMS)
        neighbours.append(nb)
    return {"params": params, "psf_kind": kind, "psf_fwhm": fwhm, "psf_beta": beta, "neighbours": neighbours}


def galsim_psf(kind: int, fwhm_arcsec: float, beta: float):
    """The analytic GalSim PSF (no pixel): Moffat(β, FWHM) if ``kind == 0`` else Kolmogorov(FWHM)."""
    import galsim

    if kind == 0:
        return galsim.Moffat(beta=beta, fwhm=fwhm_arcsec)
    return galsim.Kolmogorov(fwhm=fwhm_arcsec)


def galsim_sersic(p, *, pixel_scale: float, zeropoint: float):
    """A GalSim Sérsic (untruncated) for one row ``x, y, mag, re [px], n, q, pa`` of galnet parameters.

    Sizes are converted to arcsec; ``hlr = re √q`` and ``beta = pa + 90°`` come from
    :func:`galnet.conventions.to_galsim`. The centre is not applied (see :func:`draw_offset`).
    """
    import galsim

    from galnet.conventions import to_galsim

    d = to_galsim(*(float(v) for v in p), zeropoint=zeropoint)
    hlr = d["half_light_radius"] * pixel_scale
    gal = galsim.Sersic(float(p[IX_N]), half_light_radius=hlr, flux=d["flux"])
    return gal.shear(q=float(p[IX_Q]), beta=d["beta_deg"] * galsim.degrees)


def draw_offset(x: float, y: float, size: int) -> tuple[float, float]:
    """``drawImage`` offset (px) that puts a profile's centre at 1-based stamp coordinates (x, y)."""
    c = (size + 1) / 2.0  # GalSim's true_center of a 1-based image of odd size
    return x - c, y - c


def render_stamp(p, neighbours, psf_obj, recipe: dict = RECIPE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one stamp with GalSim.

    Parameters
    ----------
    p : array (7,)
        Target ``x, y, mag, re [px], n, q, pa``.
    neighbours : array (k, 7)
        Neighbours, same conventions.
    psf_obj : galsim.GSObject
        The analytic PSF (no pixel), from :func:`galsim_psf`.
    recipe : dict
        :data:`RECIPE`; ``psf_model`` ``"image"`` convolves the galaxies with the stored PSF image
        (``InterpolatedImage``, ``method="no_pixel"``: the image holds the pixel), ``"analytic"``
        with the analytic PSF and the pixel (``method="auto"``; the stored image then misses the
        PSF's wings beyond 25×25: 1–3 % of the flux).

    Returns
    -------
    target : ndarray (S, S) float64, counts: the noiseless target, pixel included;
    scene : ndarray (S, S) float64: target + neighbours, noiseless;
    psf_image : ndarray (P, P) float64: the effective PSF (pixel included), unit sum.
    """
    import galsim

    r = recipe
    size, scale, zp = r["stamp_size"], r["pixel_scale"], r["zeropoint"]
    pimg = galsim.ImageD(r["psf_size"], r["psf_size"], scale=scale)
    psf_obj.drawImage(pimg)
    pimg /= pimg.array.sum()
    if r.get("psf_model", "image") == "image":
        conv_psf, method = galsim.InterpolatedImage(pimg), "no_pixel"
    else:
        conv_psf, method = psf_obj, "auto"
    gsp = galsim.GSParams(maximum_fft_size=16384)
    img = galsim.ImageD(size, size, scale=scale)
    gal = galsim.Convolve(galsim_sersic(p, pixel_scale=scale, zeropoint=zp), conv_psf, gsparams=gsp)
    gal.drawImage(img, offset=draw_offset(p[IX_X], p[IX_Y], size), method=method)
    target = img.array.copy()
    for nb in neighbours:
        obj = galsim.Convolve(galsim_sersic(nb, pixel_scale=scale, zeropoint=zp), conv_psf, gsparams=gsp)
        obj.drawImage(img, offset=draw_offset(nb[IX_X], nb[IX_Y], size), method=method, add_to_image=True)
    return target, img.array.copy(), pimg.array.copy()


def make_set(n: int, seed: int, recipe: dict = RECIPE, *, progress: bool = True) -> dict[str, np.ndarray]:
    """Render ``n`` stamps; returns the schema arrays plus ``models`` (the noiseless targets).

    Parameters
    ----------
    n : int
        Number of stamps.
    seed : int
        Seed of ``numpy.random.default_rng`` (parameters, then noise).
    recipe : dict
        :data:`RECIPE`.
    progress : bool
        Print a progress line every 250 stamps.

    Returns
    -------
    dict of ndarray: ``images`` (n, 61, 61) float32 counts; ``psfs`` (n, 25, 25) float32;
    ``sky_sigma`` (n,) float32 counts/px; ``params`` (n, 7) float64; ``snr`` (n,) float32;
    ``ids`` (n,) int64; ``n_neighbours`` (n,) int16; ``psf_fwhm`` (n,) float32 pixels;
    ``models`` (n, 61, 61) float64 noiseless targets (not written to the file).
    """
    from galnet.simulate import load_preset

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    cfg = load_preset(recipe["preset"])
    rng = np.random.default_rng(seed)
    draw = draw_parameters(n, rng, recipe)
    size, psize = recipe["stamp_size"], recipe["psf_size"]
    models = np.empty((n, size, size))
    scenes = np.empty((n, size, size))
    psfs = np.empty((n, psize, psize))
    t0 = time.perf_counter()
    for i in range(n):
        psf_obj = galsim_psf(int(draw["psf_kind"][i]), float(draw["psf_fwhm"][i]), float(draw["psf_beta"][i]))
        models[i], scenes[i], psfs[i] = render_stamp(draw["params"][i], draw["neighbours"][i], psf_obj,
                                                     recipe)
        if progress and (i + 1) % 250 == 0:
            dt = time.perf_counter() - t0
            print(f"  galsim set: {i + 1}/{n} stamps, {(i + 1) / dt:.1f} stamps/s", file=sys.stderr,
                  flush=True)
    sky = cfg.sky_sigma() * 10.0 ** (0.4 * cfg.noise.depth_scatter_mag * rng.standard_normal(n))
    var = sky[:, None, None] ** 2 + (np.maximum(scenes, 0.0) / cfg.gain if cfg.noise.poisson else 0.0)
    images = scenes + rng.standard_normal(scenes.shape) * np.sqrt(var)
    sig2 = sky[:, None, None] ** 2 + (np.maximum(models, 0.0) / cfg.gain if cfg.noise.poisson else 0.0)
    snr = np.sqrt((models**2 / sig2).sum(axis=(1, 2)))
    return {
        "images": images.astype(np.float32),
        "psfs": psfs.astype(np.float32),
        "sky_sigma": sky.astype(np.float32),
        "params": draw["params"],
        "snr": snr.astype(np.float32),
        "ids": np.arange(n, dtype=np.int64),
        "n_neighbours": np.array([len(nb) for nb in draw["neighbours"]], dtype=np.int16),
        "psf_fwhm": (draw["psf_fwhm"] / recipe["pixel_scale"]).astype(np.float32),
        "models": models,
    }


def set_meta(n: int, seed: int, recipe: dict = RECIPE) -> dict:
    """The ``meta`` attribute of the file (the keys ``galnet simulate`` writes, GalSim recipe as preset)."""
    import galsim

    from galnet import __version__
    from galnet.conventions import CONVENTIONS_VERSION
    from galnet.simulate import load_preset

    cfg = load_preset(recipe["preset"])
    return {"preset": {"name": "galsim-hsc-r", "recipe": recipe, "sky_sigma": cfg.sky_sigma(),
                       "depth_scatter_mag": cfg.noise.depth_scatter_mag},
            "seed": seed, "split": "test", "n": n, "galnet_version": __version__,
            "conventions_version": CONVENTIONS_VERSION, "galsim_version": galsim.__version__,
            "zeropoint": recipe["zeropoint"], "pixel_scale": recipe["pixel_scale"], "gain": cfg.gain}


def galsim_set(n: int, seed: int = 14, *, path: str | Path | None = None, recipe: dict = RECIPE,
               progress: bool = True) -> tuple[Path, bool]:
    """The set's HDF5 file: rendered and written if not cached yet.

    Returns
    -------
    (path, cached): the file and whether it was already there.
    """
    from galnet.data import write_split

    path = Path(path) if path else cache_path(n, seed, recipe)
    if path.exists():
        return path, True
    arrays = make_set(n, seed, recipe, progress=progress)
    write_split(path, arrays, set_meta(n, seed, recipe))
    return path, False


def check_against_galnet(arrays: dict, k: int = 5, zeropoint: float = 27.0) -> np.ndarray:
    """Largest |galnet − GalSim| per pixel over the peak, for the first ``k`` noiseless targets.

    galnet's ``render_sersic`` (float64, wrap tolerance 1e-4) draws the stored ``params`` with the
    stored PSF image; GalSim's target is ``arrays["models"]``. Agreement at ~1e-3 of the peak
    means that both sides read x, y, mag, re, q and pa the same way.

    Returns
    -------
    ndarray (k,), dimensionless.
    """
    import torch

    from galnet.render import render_sersic

    p = torch.as_tensor(np.asarray(arrays["params"][:k], dtype=np.float64))
    psf = torch.as_tensor(np.asarray(arrays["psfs"][:k], dtype=np.float64))
    with torch.no_grad():
        ours = render_sersic(p, psf, zeropoint=zeropoint, wrap_tolerance=1e-4).numpy()
    ref = np.asarray(arrays["models"][:k])
    return np.abs(ours - ref).max(axis=(1, 2)) / ref.max(axis=(1, 2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="number of stamps")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--out", default=None, help="HDF5 path (default: the cache file)")
    ap.add_argument("--check", type=int, default=0, metavar="K",
                    help="also draw K stamps (same recipe and seed) and compare their noiseless targets "
                    "with galnet's renderer")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n must be >= 1, got {args.n}")
    t0 = time.perf_counter()
    path, cached = galsim_set(args.n, args.seed, path=args.out)
    print(f"{path} ({'cached' if cached else f'rendered in {time.perf_counter() - t0:.1f} s'})")
    out: dict = {"path": str(path), "n": args.n, "seed": args.seed, "cached": cached}
    if args.check:
        arrays = make_set(args.check, args.seed, progress=False)
        err = check_against_galnet(arrays, args.check)
        print(f"galnet vs GalSim on {args.check} noiseless targets, max |diff| / peak: "
              + ", ".join(f"{e:.1e}" for e in err))
        out["check_max_err_of_peak"] = float(err.max())
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
