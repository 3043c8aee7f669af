"""The whole chain on a small simulated HSC-like test set, with a report.

``galnet demo`` simulates ``--n`` stamps with the ``hsc-r`` preset (fixed seed), measures them with
the shipped network, fits the first ``--fit-n`` of them classically twice (from image moments, and
from the network's predictions: "hybrid"; neighbouring sources masked with
:func:`galnet.fit.neighbour_mask`, as ``galnet fit`` does by default), evaluates all three against the
truth and writes::

    <out>/test.h5                       the simulated stamps (galnet dataset schema)
    <out>/network.fits, fit.fits, hybrid.fits   the catalogs (header TPERGAL = s / galaxy)
    <out>/report/report.html (+ .md, metrics.json, figures/)

It prints a summary table (per method: R² and outlier fraction per parameter, median χ²ν, time per
galaxy) and the report path. Default size: about 1 minute on an idle 2-core CPU.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["add_arguments", "run", "run_demo", "DemoResult", "DEMO_SEED"]

#: Seed of the demo's simulated test set (fixed: every run sees the same galaxies).
DEMO_SEED = 8


@dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes
    ----------
    evaluation : galnet.evaluate.report.Evaluation
    report : Path, the HTML report
    out : Path, the output folder
    timings : dict, wall seconds per stage (simulate, predict, fit, hybrid, evaluate, report, total)
    """

    evaluation: object
    report: Path
    out: Path
    timings: dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``galnet demo``."""
    parser.add_argument("--n", type=int, default=400,
                        help="simulated stamps measured by the network (default 400)")
    parser.add_argument("--fit-n", type=int, default=100,
                        help="the first N are also fitted classically and in hybrid mode (default 100)")
    parser.add_argument("--out", default="galnet-demo", help="output folder (default galnet-demo)")
    parser.add_argument("--model", default="hsc-r",
                        help="network: a shipped name or a model path (default hsc-r)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help=f"simulation seed (default {DEMO_SEED})")
    parser.add_argument("--max-iter", type=int, default=60,
                        help="fitter iteration limit per galaxy (default 60)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _chunks(n: int, size: int):
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def run_demo(*, n: int = 400, fit_n: int = 100, out="galnet-demo", model: str = "hsc-r",
             seed: int = DEMO_SEED, max_iter: int = 60, progress: bool = True) -> DemoResult:
    """Simulate → predict → fit (moments and hybrid) → evaluate → report.

    Parameters
    ----------
    n : int
        Stamps to simulate and measure with the network (≥ 2).
    fit_n : int
        The first ``fit_n`` stamps are also fitted (0 ≤ fit_n ≤ n).
    out : path
        Output folder.
    model : str
        Network name (``"hsc-r"``) or path, for :func:`galnet.models.load_model`.
    seed : int
        Simulation seed.
    max_iter : int
        Fitter iteration limit.
    progress : bool
        Show tqdm progress bars.

    Returns
    -------
    DemoResult

    Raises
    ------
    ConfigError
        Bad sizes. (Model and data errors propagate as their galnet errors.)
    """
    from tqdm.auto import tqdm

    from ..catalog import make_catalog, write_table
    from ..data import write_split
    from ..errors import ConfigError
    from ..fit import FitConfig, fit_stamps, neighbour_mask
    from ..flags import Flag
    from ..models import load_model
    from ..simulate import generate_batch, load_preset
    from .report import MethodResult, TruthSet, evaluate_methods, write_report
    from .residuals import noise_sigma

    if n < 2:
        raise ConfigError(f"--n must be at least 2, got {n}")
    if not 0 <= fit_n <= n:
        raise ConfigError(f"--fit-n must be between 0 and --n ({n}), got {fit_n}")
    predictor = load_model(model)  # first: a missing model fails before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    # ---- simulate (chunks from one generator: reproducible for a given seed)
    cfg = load_preset("hsc-r")
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    parts = []
    for sl in tqdm(_chunks(n, 50), desc="simulate", unit="chunk", disable=not progress):
        parts.append(generate_batch(cfg, sl.stop - sl.start, seed=rng, return_models=True))
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    data["ids"] = np.arange(n, dtype=np.int64)
    meta = {"preset": cfg.to_dict(), "seed": seed, "split": "test", "zeropoint": cfg.zeropoint,
            "pixel_scale": cfg.pixel_scale, "gain": cfg.gain, "source": "galnet demo"}
    write_split(out / "test.h5", data, meta)
    timings["simulate"] = time.perf_counter() - t0

    # ---- predict
    t0 = time.perf_counter()
    pred = np.empty((n, 7))
    for sl in tqdm(_chunks(n, 100), desc="predict", unit="chunk", disable=not progress):
        pred[sl] = predictor.predict(data["images"][sl], data["psfs"][sl], data["sky_sigma"][sl])
    timings["predict"] = time.perf_counter() - t0
    t_net = timings["predict"] / n

    # ---- fit (σ from the data, as GALFIT does), from moments and from the network (hybrid), with the
    # other sources on each stamp masked (galnet.fit.masking: detected around the stamp centre; the same
    # mask for both fits); its time counts in the fits' time per galaxy
    fcfg = FitConfig(max_iter=max_iter)
    images = data["images"].astype(np.float64)
    psfs = data["psfs"].astype(np.float64)
    sigma = noise_sigma(images, data["sky_sigma"], cfg.gain)
    t0 = time.perf_counter()
    nb_mask, n_masked = neighbour_mask(images[:fit_n], sigma[:fit_n], psf=psfs[:fit_n])
    t_mask = time.perf_counter() - t0
    fits = {}
    for name, init in (("fit", None), ("hybrid", pred)):
        params = np.full((n, 7), np.nan)
        errors = np.full((n, 7), np.nan)
        flags = np.zeros(n, dtype=np.int64)
        chi2nu = np.full(n, np.nan)
        niter = np.zeros(n, dtype=np.int64)
        t0 = time.perf_counter()
        for sl in tqdm(_chunks(fit_n, 10), desc=name, unit="chunk", disable=not progress or fit_n == 0):
            res = fit_stamps(images[sl], psfs[sl], sigma=sigma[sl], mask=nb_mask[sl],
                             init=None if init is None else init[sl], zeropoint=cfg.zeropoint, config=fcfg)
            params[sl], errors[sl], flags[sl] = res.params, res.errors, res.flags
            flags[sl][n_masked[sl] > 0] |= int(Flag.NEIGHBOURS_MASKED)
            chi2nu[sl], niter[sl] = res.chi2nu, res.niter
        timings[name] = time.perf_counter() - t0 + t_mask
        fits[name] = (params, errors, flags, chi2nu, niter, timings[name] / max(fit_n, 1))

    # ---- catalogs (the fitted ones hold only the fitted rows)
    ids = data["ids"]
    write_table(make_catalog(ids, pred, pixel_scale=cfg.pixel_scale, zeropoint=cfg.zeropoint,
                             meta={"TPERGAL": t_net, "MODEL": str(model)}), out / "network.fits")
    for name, (params, errors, flags, chi2nu, niter, tper) in fits.items():
        sl = slice(0, fit_n)
        cat = make_catalog(ids[sl], params[sl], errors=errors[sl], flags=flags[sl],
                           pixel_scale=cfg.pixel_scale, zeropoint=cfg.zeropoint,
                           extra={"chi2nu": chi2nu[sl], "niter": niter[sl], "n_masked": n_masked},
                           meta={"TPERGAL": tper, "FITSTART": "moments" if name == "fit" else "network",
                                 "NBMASK": True})
        write_table(cat, out / f"{name}.fits")

    # ---- evaluate + report
    t0 = time.perf_counter()
    truth = TruthSet.from_arrays(data, zeropoint=cfg.zeropoint, gain=cfg.gain, pixel_scale=cfg.pixel_scale,
                                 models=data["models"])
    methods = [MethodResult("network", pred, None, t_net, str(out / "network.fits"))]
    if fit_n:
        methods += [MethodResult(name, f[0], f[2], f[5], str(out / f"{name}.fits"))
                    for name, f in fits.items()]
    ev = evaluate_methods(truth, methods, progress=progress)
    timings["evaluate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    notes = [f"galnet demo: {n} stamps simulated with preset hsc-r (seed {seed}); network {model!r} on all, "
             f"classical fit (moments start) and hybrid fit (network start) on the first {fit_n}, "
             f"with neighbouring sources masked (galnet.fit.neighbour_mask: {int(np.sum(n_masked > 0))} "
             f"of {fit_n} stamps had sources masked).",
             "Times are wall-clock on this machine (fit: Jacobians included; network: batched inference).",
             f"Reproduce: galnet evaluate --truth {out / 'test.h5'} --catalog network={out / 'network.fits'} "
             f"--catalog fit={out / 'fit.fits'} --catalog hybrid={out / 'hybrid.fits'} "
             f"--out {out / 'report'}"]
    report = write_report(ev, out / "report", title="galnet demo", notes=notes, progress=progress)
    timings["report"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    return DemoResult(evaluation=ev, report=report, out=out, timings=timings)


def run(args: argparse.Namespace) -> int:
    """Run ``galnet demo``."""
    from .report import format_summary

    res = run_demo(n=args.n, fit_n=args.fit_n, out=args.out, model=args.model, seed=args.seed,
                   max_iter=args.max_iter, progress=not args.no_progress)
    text = format_summary(res.evaluation)
    (res.out / "summary.txt").write_text(text + "\n")
    print(text)
    print("stage times [s]: " + ", ".join(f"{k} {v:.1f}" for k, v in res.timings.items()))
    print(f"galnet demo: report {res.report}")
    return 0
