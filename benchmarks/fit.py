"""Benchmark of ``galnet fit`` (moments start) on HSC-like stamps; optional PyImfit comparison.

Usage: ``python benchmarks/fit.py [--n 200] [--quick] [--threads 2] [--pyimfit]``.
Prints figures as it goes; the last line is one JSON object with: seconds per galaxy, galaxies per
second, median χ²ν, the fractions with re, n, q within 15% and |Δmag| < 0.15, and where the time went
(rendering of trial steps, Jacobians, the rest: moments, linear algebra, bookkeeping).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def make_stamps(n: int, seed: int):
    """HSC-like stamps from galnet.simulate (preset hsc-r), or render_sersic + Gaussian noise."""
    try:
        from galnet.simulate import generate_batch, load_preset

        cfg = load_preset("hsc-r")
        out = generate_batch(cfg, n, seed=seed)
        images = out["images"].astype(float)
        sig = out.get("sigma_maps")
        if sig is None:
            sig = np.sqrt(out["sky_sigma"].astype(float)[:, None, None] ** 2
                          + np.maximum(images, 0) / cfg.gain)  # data-based, as GALFIT
        return images, out["psfs"].astype(float), sig, out["params"], cfg.zeropoint, "galnet.simulate hsc-r"
    except Exception as exc:  # simulate not usable: plain render + noise
        print(f"galnet.simulate unavailable ({exc}); rendering with render_sersic")
        from galnet.render import MoffatPSF, render_sersic

        rng = np.random.default_rng(seed)
        p = np.stack([31 + rng.uniform(-1, 1, n), 31 + rng.uniform(-1, 1, n), rng.uniform(19, 23, n),
                      np.exp(rng.uniform(np.log(1.5), np.log(8), n)),
                      np.exp(rng.uniform(np.log(0.5), np.log(5), n)),
                      rng.uniform(0.3, 1, n), rng.uniform(-90, 90, n)], 1)
        psf = np.asarray(MoffatPSF(fwhm=4.0, beta=3.0).draw(25))
        model = render_sersic(torch.as_tensor(p), psf, shape=(61, 61)).numpy()
        sig = np.sqrt(3.0**2 + np.maximum(model, 0) / 3.0)
        return model + rng.normal(size=model.shape) * sig, psf, sig, p, 27.0, "render_sersic + noise"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="16 galaxies (about 1 min on 2 loaded cores)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pyimfit", action="store_true", help="also fit with PyImfit if it is installed")
    args = ap.parse_args(argv)
    n = 16 if args.quick else args.n
    torch.set_num_threads(args.threads)

    from galnet.fit import fit_stamps
    from galnet.fit import solver as solver_mod

    images, psfs, sigma, truth, zp, source = make_stamps(n, args.seed)
    print(f"{n} stamps {images.shape[1:]} from {source}; torch threads {args.threads}")

    # time accounting: wrap the renderer (trial steps) and the Jacobian
    clock = {"render": 0.0, "jacobian": 0.0}
    orig_render, orig_jac = solver_mod._Model._render, solver_mod._Model.jacobian

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                clock[name] += time.perf_counter() - t
        return wrapper

    solver_mod._Model._render = timed("render", orig_render)
    solver_mod._Model.jacobian = timed("jacobian", orig_jac)
    try:
        t0 = time.perf_counter()
        res = fit_stamps(images, psfs, sigma=sigma, zeropoint=zp)
        wall = time.perf_counter() - t0
    finally:
        solver_mod._Model._render, solver_mod._Model.jacobian = orig_render, orig_jac
    # the Jacobian timer includes the renders it calls for the model; count those once, as "jacobian"
    ok = res.status >= 0
    rel = lambda j: np.abs(res.params[:, j] / truth[:, j] - 1)  # noqa: E731
    figures = {
        "n": n,
        "source": source,
        "threads": args.threads,
        "seconds_per_galaxy": wall / n,
        "galaxies_per_second": n / wall,
        "median_niter": float(np.median(res.niter[ok])),
        "fraction_fitted": float(ok.mean()),
        "median_chi2nu": float(np.nanmedian(res.chi2nu)),
        "frac_re_15pct": float(np.mean(rel(3) < 0.15)),
        "frac_n_15pct": float(np.mean(rel(4) < 0.15)),
        "frac_q_15pct": float(np.mean(rel(5) < 0.15)),
        "frac_mag_0.15": float(np.mean(np.abs(res.params[:, 2] - truth[:, 2]) < 0.15)),
        "time_render_trials_s": clock["render"],
        "time_jacobian_s": clock["jacobian"],
        "time_other_s": wall - clock["render"] - clock["jacobian"],
        "fourier_sizes": {int(k): int(v)
                          for k, v in zip(*np.unique(res.fourier_size, return_counts=True))},
    }
    print(f"galnet: {wall / n * 1e3:.1f} ms/galaxy ({n / wall:.1f} galaxies/s), median chi2nu "
          f"{figures['median_chi2nu']:.3f}, re/n/q within 15%: {figures['frac_re_15pct']:.2f}/"
          f"{figures['frac_n_15pct']:.2f}/{figures['frac_q_15pct']:.2f}, "
          f"|dmag|<0.15: {figures['frac_mag_0.15']:.2f}")
    if args.pyimfit:
        try:
            import pyimfit  # noqa: F401

            figures["pyimfit"] = "installed but the comparison is not implemented in this version"
        except ImportError:
            figures["pyimfit"] = "not installed (PyPI has only an sdist; build from source skipped)"
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
