"""Accuracy of every method on the same test stamps: network, image-only ablation, fitter, hybrid.

Usage::

    python benchmarks/accuracy.py [--data data/hsc200/test.h5] [--n 2000] [--quick]
                                  [--ablation runs/ablation-image-25/best.json] [--threads 2]

The stamps are the first ``--n`` galaxies of a test split written by
``galnet simulate --n 200000 --split 0.8,0.1,0.1 --seed 1 --preset hsc-r`` (the shipped model's
test set). Without ``--data`` (or when the file is missing) they are regenerated from the same
seeds (``SeedSequence(1, spawn_key=(2, shard))``, 1,024 galaxies per shard), so the figures do not
depend on a local dataset. Methods:

* ``network``: the shipped two-input model ``hsc-r``;
* ``image-only``: the ablation (``--ablation``: a card written by ``galnet train``), if given;
* ``fit``: the classical fitter from moment-based starts, σ from the data as GALFIT does, with
  neighbours masked (:func:`galnet.fit.neighbour_mask`);
* ``hybrid``: the same fitter started from the network's predictions.

Prints, per method, R², outlier fraction, NMAD and bias per parameter, the median χ²ν and the time
per galaxy, for all galaxies and for the bright half (mag < 21.5); the last line is one JSON object.
χ²ν is each method's model against the whole stamp (neighbours included, the same pixels for every
method); ``median_chi2nu_aperture`` uses the pixels within the galaxy's aperture only
(:mod:`galnet.evaluate.residuals`).

Timing: the networks are timed interleaved, ``--repeats`` times (>= 3, median quoted; ``*_best`` the
best); the fits are long and run once (their times are single runs, said so in the JSON). The thread
settings and a load check come first (``--require-idle`` refuses a loaded machine; else
``"loaded": true`` in the JSON).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from _common import parser
from _timing import add_timing_args, check_machine, emit_with_state, interleaved

PARAMS = ("x", "y", "mag", "re", "n", "q", "pa")
SHARD = 1024


def load_stamps(path: str | None, n: int) -> tuple[dict, str]:
    """The first ``n`` test stamps: from ``path`` when it exists, else regenerated from the seeds."""
    from galnet.simulate import generate_batch, load_preset

    if path and Path(path).exists():
        from galnet.data import read_arrays

        arrays = read_arrays(path, 0, n, keys=["images", "psfs", "sky_sigma", "params", "ids", "snr"])
        return arrays, f"{path} rows 0:{n}"
    config = load_preset("hsc-r")
    parts = [generate_batch(config, SHARD,
                            seed=np.random.default_rng(np.random.SeedSequence(1, spawn_key=(2, k))))
             for k in range(-(-n // SHARD))]
    keys = ("images", "psfs", "sky_sigma", "params", "snr")
    arrays = {key: np.concatenate([p[key] for p in parts])[:n] for key in keys}
    arrays["ids"] = np.arange(n, dtype=np.int64)
    return arrays, f"regenerated test shards 0..{len(parts) - 1} of seed 1 (first {n})"


def main(argv=None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/hsc200/test.h5", help="test split HDF5 (regenerated if missing)")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--ablation", default=None, help="card (.json) of the image-only model")
    ap.add_argument("--max-iter", type=int, default=100)
    add_timing_args(ap)
    args = ap.parse_args(argv)
    n = 32 if args.quick else args.n
    torch.set_num_threads(args.threads)
    state = check_machine(args, threads=args.threads)

    from galnet.evaluate.report import MethodResult, TruthSet, evaluate_methods
    from galnet.evaluate.residuals import noise_sigma
    from galnet.fit import FitConfig, fit_stamps, neighbour_mask
    from galnet.models import load_model
    from galnet.params import IX_MAG
    from galnet.simulate import load_preset
    from galnet.train.metrics import regression_metrics

    config = load_preset("hsc-r")
    data, source = load_stamps(args.data, n)
    print(f"{n} test stamps: {source}; torch threads {args.threads}")
    images = data["images"].astype(np.float64)
    psfs = data["psfs"].astype(np.float64)
    sigma = noise_sigma(images, data["sky_sigma"], config.gain)
    methods: list[MethodResult] = []
    extra: dict[str, dict] = {}

    networks = [("network", "hsc-r")] + ([("image-only", args.ablation)] if args.ablation else [])
    pred = None
    predictors = {name: load_model(model) for name, model in networks}
    runs = interleaved({name: (lambda pr=pr: pr.predict(data["images"], data["psfs"], data["sky_sigma"]))
                        for name, pr in predictors.items()}, repeats=args.repeats)
    network_best = {}
    for name, model in networks:
        p, dt = runs[name].result, runs[name].median / n
        network_best[name] = runs[name].best / n
        methods.append(MethodResult(name, p, None, dt, str(model)))
        pred = p if pred is None else pred
        print(f"{name}: {dt * 1e3:.3f} ms/galaxy (median of {args.repeats}; "
              f"best {network_best[name] * 1e3:.3f})")

    t0 = time.perf_counter()
    mask, n_masked = neighbour_mask(images, sigma, psf=psfs)
    t_mask = (time.perf_counter() - t0) / n
    print(f"neighbour masks: {t_mask * 1e3:.2f} ms/galaxy; {np.mean(n_masked > 0):.0%} of stamps had "
          "neighbours masked")
    fcfg = FitConfig(max_iter=args.max_iter)
    for name, init, t_start in (("fit", None, 0.0), ("hybrid", pred, methods[0].time_per_galaxy)):
        t0 = time.perf_counter()
        res = fit_stamps(images, psfs, sigma=sigma, mask=mask, init=init, zeropoint=config.zeropoint,
                         config=fcfg)
        dt = (time.perf_counter() - t0) / n + t_mask + t_start
        methods.append(MethodResult(name, res.params, res.flags, dt, "galnet.fit"))
        extra[name] = {"median_niter": float(np.median(res.niter)),
                       "fraction_flagged": float(np.mean(res.flags != 0)),
                       "median_chi2nu_fitter": float(np.nanmedian(res.chi2nu))}
        print(f"{name}: {dt * 1e3:.1f} ms/galaxy, median niter {extra[name]['median_niter']:.0f}")

    truth = TruthSet.from_arrays(data, zeropoint=config.zeropoint, gain=config.gain,
                                 pixel_scale=config.pixel_scale)
    ev = evaluate_methods(truth, methods)
    bright = truth.params[:, IX_MAG] < 21.5
    figures: dict = {"n": n, "source": source, "threads": args.threads, "methods": {},
                     "timing": f"networks: median of {args.repeats} interleaved repeats; fits: one run"}
    header = f"{'method':<11} {'subset':<7} " + " ".join(f"{p:>13}" for p in PARAMS) + "   chi2nu  ms/gal"
    print("\nR² / outlier fraction per parameter (PA: outliers only)")
    print(header)
    for name, m in ev.methods.items():
        fig = {"time_per_galaxy_s": m.time_per_galaxy,
               "median_chi2nu": float(np.nanmedian(m.stats["chi2nu"])),
               "median_chi2nu_aperture": float(np.nanmedian(m.stats["chi2nu_ap"])),
               "all": m.metrics, **extra.get(name, {})}
        if name in network_best:
            fig["time_per_galaxy_s_best"] = network_best[name]
        rows = m.rows & bright
        fig["bright"] = regression_metrics(truth.params[rows], m.params[rows])
        figures["methods"][name] = fig
        for subset in ("all", "bright"):
            met = fig[subset]
            cells = []
            for p in PARAMS:
                r2, out = met[p].get("r2"), met[p]["outlier_frac"]
                prefix = "" if r2 is None or not np.isfinite(r2) else f"{r2:.3f}/"
                cells.append(f"{prefix}{100 * out:.1f}%".rjust(13))
            print(f"{name:<11} {subset:<7} " + " ".join(cells)
                  + f"   {fig['median_chi2nu']:.3f}  {1e3 * m.time_per_galaxy:.2f}")
    emit_with_state(figures, state)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
