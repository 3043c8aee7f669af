"""Precision on real galaxy morphologies: real HSC galaxies re-observed with more noise.

A real galaxy is not a Sérsic profile, so the "truth" of a Sérsic measurement of it is the fit of its
noise-free image. The bright galaxies of the even-id HSC COSMOS scenes (``lsst/testdata_deblender``, the
stamps of ``benchmarks/real_hsc.py``: each scene's brightest galaxy, its σ map, PSF and galnet's neighbour
mask; odd ids are reserved and never read) stand in for noise-free images: each stamp is re-observed
``--realisations`` times with independent Gaussian noise of ``--noise`` times its σ map added on its valid
pixels, so that a re-observation has noise ``sqrt(1 + f²) σ``. The reference answer of a galaxy is the
best fit of its original stamp with the same model (:func:`reference_fit`: from the moments and from the
network, the lower χ²; galaxies whose best fit ends at a parameter bound are left out): with a fitted sky for
the methods that fit one (and the network, trained on real backgrounds), without for those that do not.
Its own noise error is common to all re-observations of the galaxy and cancels in ``Δ = answer − reference``
to first order: Δ measures the scatter the added noise causes, on a real morphology, plus any difference
between the minimum a method finds and the reference's.

Methods, on every re-observation, with the same pixels (valid minus the neighbour mask of the original)
and σ: the network alone (``galnet predict --refine 0``), the refined default (``--refine 5``, a constant sky
fitted, rows left above χ²ν 1.5 fitted on) and without the sky, and the two exact fitters (``galnet fit``
from moments, without and with ``--fit-sky``). Reported as in ``benchmarks/limit.py``, per bin of the
reference magnitude: NMAD, bias and outliers of Δ (fractional for re, n, q), the ratio of each method's NMAD
to the better fitter's, and the coverage of each method's errors: the fraction with
``|Δ| < k · err · f / sqrt(1 + f²)`` for k = 1, 2 (an error bar covers the whole noise of a re-observation,
Δ only the added part).

Usage::

    python benchmarks/real_morphology.py [--realisations 8] [--noise 2] [--threads 2] [--quick]
                                          [--out benchmarks/results/real_morphology]

Writes ``<out>.md`` and ``<out>.json``; the last stdout line is one JSON object.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, parser  # noqa: E402

HERE = Path(__file__).parent
#: Bins of the reference magnitude (the scenes' brightest galaxies: mag 18.7–25.1, about 15 per bin).
MAG_BINS = (18.0, 20.5, 22.0, 23.0, 24.0, 25.5)
PARAMS = ("mag", "re", "n", "q", "x", "y", "pa")
REFERENCES = ("fitter", "fitter-sky")
#: Methods with the sky fixed at 0, judged against ``galnet fit`` of the original (the others: ``--fit-sky``).
SKY_FREE = ("refined-nosky", "fitter")


def reobserve(st: dict, realisations: int, noise: float, seed: int) -> dict:
    """``realisations`` noisier copies of every stamp (rows galaxy-major), with their σ maps."""
    rng = np.random.default_rng(seed)
    b = len(st["ids"])
    rows = np.repeat(np.arange(b), realisations)
    sigma = st["sigma"][rows]
    valid = ~st["excluded"][rows]
    extra = rng.normal(0.0, 1.0, sigma.shape) * noise * np.where(valid, sigma, 0.0)
    return {"rows": rows, "images": np.where(valid, st["images"][rows] + extra, st["images"][rows]),
            "sigma": np.where(valid, sigma * math.sqrt(1.0 + noise**2), sigma),
            "excluded": st["excluded"][rows], "psfs": st["psfs"][rows], "ids": st["ids"][rows]}


def reference_fit(st: dict, filled: np.ndarray, sigma: np.ndarray, mask: np.ndarray, net: np.ndarray, *,
                  fit_sky: bool) -> np.ndarray:
    """The best Sérsic fit (B, 7) of each original stamp: ``galnet fit`` from the moments and from the
    network's answer ``net`` (B, 7), the lower χ² of the two kept. A real galaxy's χ² surface can have more
    than one minimum (a bulge-like and a disc-like fit); the reference should be the deeper one, whichever
    start a method uses. Rows whose kept fit ends against a parameter bound (``AT_BOUND``: no Sérsic answer to
    compare with) or fails are NaN."""
    from galnet.fit import FitConfig, fit_stamps
    from galnet.flags import Flag

    cfg = FitConfig(max_iter=100)
    a = fit_stamps(filled, st["psfs"], sigma=sigma, mask=mask, config=cfg, fit_sky=fit_sky)
    c = fit_stamps(filled, st["psfs"], sigma=sigma, mask=mask, config=cfg, fit_sky=fit_sky,
                   init=np.where(np.isfinite(net), net, a.params))
    take = np.nan_to_num(c.chi2, nan=np.inf) < np.nan_to_num(a.chi2, nan=np.inf)
    params = np.where(take[:, None], c.params, a.params)
    flags = np.where(take, c.flags, a.flags)
    bad = (flags & int(Flag.AT_BOUND)) != 0
    return np.where(bad[:, None], np.nan, params)


def run_methods(obs: dict, mask: np.ndarray, threads: int) -> dict[str, dict]:
    """Parameters (N, 7), errors (N, 7) or None of each method on the re-observations."""
    from galnet.fit import FitConfig, Refiner, fit_stamps
    from real_hsc import network_answers, stamp_noise

    filled = np.where(mask, 0.0, obs["images"]).astype(np.float32)
    sig = np.where(mask, 1.0, obs["sigma"]).astype(np.float32)
    sky = stamp_noise(obs)
    net, net_err = network_answers(obs["images"], obs["psfs"], sky, "hsc-r", threads)
    out = {"network": {"params": net, "errors": net_err}}
    for name, fit_sky in (("refined", True), ("refined-nosky", False)):
        with Refiner(5, mask_neighbours=False, fit_sky=fit_sky, workers=max(threads, 1)) as refiner:
            fr, _ = refiner(filled, obs["psfs"], net, sky_sigma=sky, sigma=sig, mask=mask,
                            start_errors=net_err)
        ok = np.isfinite(fr.params).all(1)
        out[name] = {"params": np.where(ok[:, None], fr.params, net),
                     "errors": np.where(ok[:, None], fr.errors, net_err)}
    cfg = FitConfig(max_iter=100)
    for name, fit_sky in (("fitter", False), ("fitter-sky", True)):
        fr = fit_stamps(filled, obs["psfs"], sigma=sig, mask=mask, config=cfg, fit_sky=fit_sky)
        out[name] = {"params": fr.params, "errors": fr.errors}
    return out


def markdown(meta: dict, results: dict, names: list[str]) -> str:
    """Tables: NMAD with the ratio to the better fitter, bias, outliers, coverage, per magnitude bin."""
    from limit import _label

    lines = [f"# Real galaxy morphologies: {meta['n_galaxies']} HSC galaxies × {meta['realisations']} "
             f"re-observations (added noise {meta['noise']}× σ)", "", meta["description"], "",
             f"Command: `{meta['command']}`; {meta['date']}; threads {meta['threads']}.", "",
             "Reference answer: the fit of the original stamp with the same sky model "
             "(`galnet fit --fit-sky`; `galnet fit` for `refined-nosky` and `fitter`). NMAD ratio: to the "
             "better of `fitter` and `fitter-sky` per bin and parameter. Coverage: fraction with "
             "|Δ| < k·err·f/√(1+f²).",
             ""]
    header = "| ref. mag | method | N | " + " | ".join(PARAMS) + " |"
    rule = "|---|---|---|" + "---|" * len(PARAMS)
    for title, key in (("NMAD (ratio to the better fitter)", "nmad"), ("Bias (median Δ)", "bias"),
                       ("Outlier fraction [%]", "outlier_frac"), ("Coverage 1σ / 2σ", "coverage")):
        lines += [f"## {title}", "", header, rule]
        for b in range(len(results[names[0]]["bins"])):
            for m in names:
                entry = results[m]["bins"][b]
                cells = [_label(entry, "mag"), m, str(entry["n"])]
                for p in PARAMS:
                    st = entry["params"][p]
                    if key == "nmad":
                        cells.append(f"{st['nmad']:.4f} ({st.get('ratio', math.nan):.2f}×)")
                    elif key == "bias":
                        cells.append(f"{st['bias']:+.4f}")
                    elif key == "outlier_frac":
                        cells.append(f"{100 * st['outlier_frac']:.1f}")
                    else:
                        cells.append(f"{st['cov1']:.2f} / {st['cov2']:.2f}" if "cov1" in st else "–")
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import datetime as _dt
    import shlex

    p = parser(__doc__.split("\n")[0])
    p.add_argument("--scenes", default=str(HERE / ".cache" / "hsc_cosmos"))
    p.add_argument("--realisations", type=int, default=8, help="re-observations per galaxy (default 8)")
    p.add_argument("--noise", type=float, default=2.0, help="added noise, in units of the σ map (default 2)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--out", default=str(HERE / "results" / "real_morphology"))
    args = p.parse_args(argv)
    if args.realisations < 1 or not args.noise > 0:
        p.error("--realisations must be >= 1 and --noise > 0")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    import limit
    import real_hsc

    files = real_hsc.scene_files(Path(args.scenes))
    if args.quick:
        files, args.realisations = files[:12], min(args.realisations, 3)
    st = real_hsc.load_stamps(files)
    mask0 = real_hsc.common_mask(st)
    filled0 = np.where(mask0, 0.0, st["images"]).astype(np.float32)
    sig0 = np.where(mask0, 1.0, st["sigma"]).astype(np.float32)
    net0, _ = real_hsc.network_answers(st["images"], st["psfs"], real_hsc.stamp_noise(st), "hsc-r",
                                       args.threads)
    refs_fit = {sky: reference_fit(st, filled0, sig0, mask0, net0, fit_sky=sky) for sky in (False, True)}
    obs = reobserve(st, args.realisations, args.noise, args.seed)
    rows = obs["rows"]
    results = run_methods(obs, mask0[rows], args.threads)
    scale = args.noise / math.sqrt(1.0 + args.noise**2)  # the part of an error bar that Δ measures
    by = refs_fit[True][rows, 2]  # bins of the reference magnitude, the same rows for every method
    for name, res in results.items():
        truth = refs_fit[name not in SKY_FREE][rows]
        truth = np.where(np.isfinite(truth).all(1, keepdims=True), truth, np.nan)
        errors = {q: res["errors"][:, limit.INDEX[q]] * scale for q in PARAMS}
        res["bins"] = limit.bin_statistics(truth, res["params"], by, MAG_BINS, errors=errors)
    refs = [results[m]["bins"] for m in REFERENCES]
    for res in results.values():
        limit.add_ratios(res["bins"], limit.reference_nmad(refs))
    names = list(results)
    meta = {"n_galaxies": int(len(st["ids"])), "realisations": args.realisations, "noise": args.noise,
            "description": __doc__.split("\n\n")[1].replace("\n", " "),
            "command": "python benchmarks/real_morphology.py " + " ".join(shlex.quote(a) for a in
                                                                           (argv if argv is not None
                                                                            else sys.argv[1:])),
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "threads": args.threads,
            "reference_at_bound": {("fit-sky" if k else "fit"): int((~np.isfinite(v).all(1)).sum())
                                   for k, v in refs_fit.items()}}
    md = markdown(meta, results, names)
    print(md)
    out = Path(args.out)
    if not args.quick:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(md)
        out.with_suffix(".json").write_text(json.dumps(limit._json_safe(
            {"meta": meta, "methods": {k: {"bins": v["bins"]} for k, v in results.items()}}), indent=1))
    worst = {m: max((b["params"][q]["ratio"] for b in results[m]["bins"] for q in ("mag", "re", "n", "q")
                     if np.isfinite(b["params"][q].get("ratio", math.nan))), default=math.nan) for m in names}
    emit({"benchmark": "real_morphology", "galaxies": meta["n_galaxies"], "realisations": args.realisations,
          "noise": args.noise, "worst_nmad_ratio": worst})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
