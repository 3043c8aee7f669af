"""Neighbour masking on HSC-like stamps: fit outliers and χ²ν with and without the mask.

Usage: ``python benchmarks/fit_masking.py [--n 200] [--seed 0] [--threads 1]``.
Simulates ``n`` stamps with ``galnet.simulate`` (preset hsc-r, which puts neighbours and stars on the
stamps), forms the data-based σ map as ``benchmarks/fit.py`` does, fits them with ``fit_stamps`` from
moments starts without and with :func:`galnet.fit.neighbour_mask`, and prints the outlier fractions
(|Δ|/true > 15% for re, n, q; |Δmag| > 0.15; |Δx|, |Δy| > 0.5 px; a failed fit counts as an outlier),
the median χ²ν, the masking time per stamp and, last, one JSON line with everything.

Timing: the mask is timed ``--repeats`` times (>= 3; median and best); the two fits are timed together,
interleaved, the same number of times. The thread settings and a load check come first
(``--require-idle`` refuses a loaded machine; else ``"loaded": true`` in the JSON). ``--quick``: 24
stamps (< 1 minute).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from _timing import add_timing_args, check_machine, emit_with_state, interleaved, timing_figures
from galnet.params import IX_MAG, IX_N, IX_Q, IX_RE, IX_X, IX_Y


def outliers(params: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Outlier fractions of fitted ``params`` (B, 7) against ``truth`` (B, 7); NaN rows are outliers."""
    def frac(bad):
        return float(np.mean(np.where(np.isfinite(bad), bad, 1.0) > 0))

    rel = np.abs(params / truth - 1.0)
    delta = np.abs(params - truth)
    return {
        "re": frac(rel[:, IX_RE] - 0.15), "n": frac(rel[:, IX_N] - 0.15), "q": frac(rel[:, IX_Q] - 0.15),
        "mag": frac(delta[:, IX_MAG] - 0.15),
        "x": frac(delta[:, IX_X] - 0.5),
        "y": frac(delta[:, IX_Y] - 0.5),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="24 stamps (< 1 minute)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    add_timing_args(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    state = check_machine(args, threads=args.threads)
    n = 24 if args.quick else args.n

    from galnet.fit import fit_stamps, neighbour_mask
    from galnet.simulate import generate_batch, load_preset

    cfg = load_preset("hsc-r")
    sim = generate_batch(cfg, n, seed=args.seed)
    images = sim["images"].astype(float)
    psfs = sim["psfs"].astype(float)
    truth = sim["params"]
    sigma = sim.get("sigma_maps")
    if sigma is None:  # data-based, as GALFIT (and benchmarks/fit.py)
        sigma = np.sqrt(sim["sky_sigma"].astype(float)[:, None, None] ** 2 + np.maximum(images, 0) / cfg.gain)

    mask, n_masked = neighbour_mask(images, sigma, psf=psfs)
    runs = interleaved({
        "mask": lambda: neighbour_mask(images, sigma, psf=psfs),
        "no_mask": lambda: fit_stamps(images, psfs, sigma=sigma, mask=None, zeropoint=cfg.zeropoint),
        "with_mask": lambda: fit_stamps(images, psfs, sigma=sigma, mask=mask, zeropoint=cfg.zeropoint),
    }, repeats=args.repeats, warmup=False)
    figures = {"n": n, "seed": args.seed, "threads": args.threads, "repeats": args.repeats,
               "mask_ms_per_stamp": 1e3 * runs["mask"].median / n,
               "mask_ms_per_stamp_best": 1e3 * runs["mask"].best / n,
               "stamps_with_sources_masked": float(np.mean(n_masked > 0)),
               "mean_sources_masked": float(np.mean(n_masked)),
               "masked_pixel_fraction": float(mask.mean())}
    for name, side in (("no_mask", "no_mask"), ("mask", "with_mask")):
        res = runs[side].result
        out = outliers(res.params, truth)
        figures[name] = {"outliers": out, "median_chi2nu": float(np.nanmedian(res.chi2nu)),
                         "fit_s_per_galaxy": runs[side].median / n,
                         "fit_s_per_galaxy_best": runs[side].best / n}
        print(f"{name:8s} outliers re {out['re']:.3f} n {out['n']:.3f} q {out['q']:.3f} mag {out['mag']:.3f} "
              f"x {out['x']:.3f} y {out['y']:.3f}; median chi2nu {figures[name]['median_chi2nu']:.3f}; "
              f"{runs[side].median / n * 1e3:.0f} ms/galaxy")
    print(f"masking: {figures['mask_ms_per_stamp']:.2f} ms/stamp; sources masked on "
          f"{figures['stamps_with_sources_masked']:.0%} of the stamps")
    figures["timings"] = timing_figures(runs)
    emit_with_state(figures, state)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
