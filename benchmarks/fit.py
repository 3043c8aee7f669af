"""Benchmark of ``galnet fit`` on HSC-like stamps, side by side with PyImfit and the hybrid mode.

Usage: ``python benchmarks/fit.py [--n 1000] [--quick] [--threads 2] [--pyimfit] [--seed 0]``.

Methods, all on the same stamps, PSFs and σ maps (``make_stamps``):

* **galnet** — :func:`galnet.fit.fit_stamps` from the moment-based start
  (:func:`galnet.fit.starts.moments_start`), torch with ``--threads`` intra-op threads;
* **pyimfit** (``--pyimfit``, optional dependency ``pip install 'galnet[bench]'``) — PyImfit's
  Levenberg–Marquardt solver (``solver="LM"``) from the *same* moment-based start, converted with
  :func:`galnet.conventions.to_imfit`; one single-threaded fit at a time in each of ``--threads``
  worker processes, each fitting an interleaved share of the stamps;
* **hybrid** — the shipped network (``galnet.models.load_model("hsc-r")``) predicts the start,
  then :func:`galnet.fit.fit_stamps` fits from it.

Printed per method: seconds per galaxy, galaxies per second, median χ²ν, the fractions of galaxies with
re, n, q within 15% and |Δmag| < 0.15 of the truth, and the fraction of fits that ran; then the speed
ratios and the χ²ν difference. The last line is one JSON object with all figures (galnet's at the top
level, as before, plus ``"pyimfit"`` and ``"hybrid"`` sub-objects).

Timing: wall-clock. The neighbour mask is made once (in galnet's worker processes when there are
some, as ``galnet fit --workers`` makes it) and its time added to every method. The moment-based start
is computed once and its time added to galnet's and PyImfit's; the hybrid's time is the network's
inference plus its fit. Model loading, one warm-up call
each of the fitter and the network, and the start-up of PyImfit's worker processes are excluded
(PyImfit's time is its slowest worker's, from its first fit to its last).

χ²ν: galnet's own; PyImfit's is Imfit's fit statistic (χ² with the same σ map) divided by the number
of good pixels minus the 7 free parameters, i.e. the same definition. As a cross-check of conventions,
PyImfit's solutions are also scored with galnet's renderer (``median_chi2nu_galnet_model``): the two
forward models differ most for compact, high-n galaxies (Imfit's default pixel subsampling averages the
profile over sub-pixels — 20×20 within an elliptical radius of 4 px, fewer out to 10 px — then
convolves with the effective PSF on the pixel grid; galnet samples the exact Sérsic ⊗ PSF at pixel
centres).

The methods (galnet from moments, PyImfit, hybrid) are timed in this process, interleaved,
``--repeats`` times (>= 3); speeds and ratios are quoted from the median repeat (``*_best``: the best).
The thread settings and a load check come first (``--require-idle`` refuses a loaded machine; else
``"loaded": true`` in the JSON).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from _timing import add_timing_args, check_machine, emit_with_state, interleaved, timing_figures

#: Free parameters of a single-Sérsic fit without sky (x, y, mag, re, n, q, pa).
N_FREE = 7
#: Accuracy thresholds: relative error of re, n, q and absolute error of mag.
REL_TOL, MAG_TOL = 0.15, 0.15


@dataclass
class Stamps:
    """A benchmark set: stamps, PSFs, σ maps and the truth.

    Attributes
    ----------
    images : ndarray, shape (B, H, W), counts, sky-subtracted
    psfs : ndarray, shape (B, P, P), unit-sum effective PSFs
    sigma : ndarray, shape (B, H, W), 1-σ noise map, counts
    sky_sigma : ndarray, shape (B,), sky noise, counts / pixel (the network's third input)
    truth : ndarray, shape (B, 7), true ``x, y, mag, re, n, q, pa`` (catalog conventions)
    zeropoint : float
    source : str
        How the stamps were made.
    """

    images: np.ndarray
    psfs: np.ndarray
    sigma: np.ndarray
    sky_sigma: np.ndarray
    truth: np.ndarray
    zeropoint: float
    source: str
    mask: np.ndarray | None = None


def make_stamps(n: int, seed: int) -> Stamps:
    """HSC-like stamps from galnet.simulate (preset hsc-r), or render_sersic + Gaussian noise.

    Parameters
    ----------
    n : int
        Number of stamps.
    seed : int
        Simulation seed.

    Returns
    -------
    Stamps
        The σ map is the simulation's own where it has one, else data-based as GALFIT's
        (``σ² = sky_sigma² + max(data, 0) / gain``).
    """
    try:
        from galnet.simulate import generate_batch, load_preset

        cfg = load_preset("hsc-r")
        out = generate_batch(cfg, n, seed=seed)
        images = out["images"].astype(float)
        sky_sigma = out["sky_sigma"].astype(float)
        sig = out.get("sigma_maps")
        if sig is None:
            sig = np.sqrt(sky_sigma[:, None, None] ** 2 + np.maximum(images, 0) / cfg.gain)
        return Stamps(images, out["psfs"].astype(float), np.asarray(sig, dtype=float), sky_sigma,
                      out["params"], cfg.zeropoint, "galnet.simulate hsc-r")
    except Exception as exc:  # simulate not usable: plain render + noise
        print(f"galnet.simulate unavailable ({exc}); rendering with render_sersic")
        import torch

        from galnet.render import MoffatPSF, render_sersic

        rng = np.random.default_rng(seed)
        p = np.stack([31 + rng.uniform(-1, 1, n), 31 + rng.uniform(-1, 1, n), rng.uniform(19, 23, n),
                      np.exp(rng.uniform(np.log(1.5), np.log(8), n)),
                      np.exp(rng.uniform(np.log(0.5), np.log(5), n)),
                      rng.uniform(0.3, 1, n), rng.uniform(-90, 90, n)], 1)
        psf = np.asarray(MoffatPSF(fwhm=4.0, beta=3.0).draw(25), dtype=float)
        model = render_sersic(torch.as_tensor(p), psf, shape=(61, 61)).numpy()
        sig = np.sqrt(3.0**2 + np.maximum(model, 0) / 3.0)
        return Stamps(model + rng.normal(size=model.shape) * sig, np.repeat(psf[None], n, axis=0), sig,
                      np.full(n, 3.0), p, 27.0, "render_sersic + noise")


# ============================================================================== figures
def method_figures(params: np.ndarray, truth: np.ndarray, chi2nu: np.ndarray, ran: np.ndarray,
                   seconds: float) -> dict[str, float]:
    """The figures every method reports.

    Parameters
    ----------
    params, truth : ndarray, shape (B, 7)
        Fitted (NaN where the fit did not run) and true parameters, catalog conventions.
    chi2nu : ndarray, shape (B,)
        Reduced χ² per galaxy (NaN where not fitted).
    ran : ndarray of bool, shape (B,)
        Fits that ran and returned parameters.
    seconds : float
        Wall-clock time for all B galaxies.

    Returns
    -------
    dict
        ``seconds_per_galaxy, galaxies_per_second, median_chi2nu, frac_re_15pct, frac_n_15pct,
        frac_q_15pct, frac_mag_0.15, frac_all`` (all four at once) and ``fraction_fitted``.
        Fractions are over all B galaxies (a fit that did not run counts as a miss).
    """
    from galnet.params import column

    n = len(truth)
    with np.errstate(invalid="ignore", divide="ignore"):
        good = {k: np.abs(column(params, k) / column(truth, k) - 1) < REL_TOL for k in ("re", "n", "q")}
        good_mag = np.abs(column(params, "mag") - column(truth, "mag")) < MAG_TOL
    return {
        "seconds_per_galaxy": seconds / n,
        "galaxies_per_second": n / seconds,
        "median_chi2nu": float(np.nanmedian(chi2nu)) if np.isfinite(chi2nu).any() else float("nan"),
        "frac_re_15pct": float(good["re"].mean()),
        "frac_n_15pct": float(good["n"].mean()),
        "frac_q_15pct": float(good["q"].mean()),
        "frac_mag_0.15": float(good_mag.mean()),
        "frac_all": float((good["re"] & good["n"] & good["q"] & good_mag).mean()),
        "fraction_fitted": float(np.mean(ran)),
    }


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    """Print one line per method: time, speed, median χ²ν, accuracy fractions, fraction fitted."""
    print(f"{'method':<22} {'ms/gal':>9} {'gal/s':>8} {'chi2nu':>7} {'re':>5} {'n':>5} {'q':>5} "
          f"{'mag':>5} {'all':>5} {'ran':>5}")
    for name, f in rows.items():
        print(f"{name:<22} {f['seconds_per_galaxy'] * 1e3:9.1f} {f['galaxies_per_second']:8.2f} "
              f"{f['median_chi2nu']:7.3f} {f['frac_re_15pct']:5.2f} {f['frac_n_15pct']:5.2f} "
              f"{f['frac_q_15pct']:5.2f} {f['frac_mag_0.15']:5.2f} {f['frac_all']:5.2f} "
              f"{f['fraction_fitted']:5.2f}")
    print(f"(re, n, q: fraction within {REL_TOL:.0%} of the truth; mag: |dmag| < {MAG_TOL}; "
          "all: the four at once; ran: fits that returned parameters)")


# ============================================================================== galnet
def run_galnet(stamps: Stamps, init: np.ndarray, pool=None) -> tuple[Any, float, dict[str, float]]:
    """Fit every stamp with :func:`galnet.fit.fit_stamps` from ``init``, timing where the time goes.

    Parameters
    ----------
    stamps : Stamps
    init : ndarray, shape (B, 7)
        Start parameters (catalog conventions).
    pool : galnet.fit.FitPool, optional
        Fit in its worker processes (one per core, one thread each), as PyImfit is run; the time
        accounting by stage is then not available.

    Returns
    -------
    (FitResult, wall seconds, clock)
        ``clock`` has the seconds spent in trial renders (``render``) and Jacobians (``jacobian``,
        including the renders they call), when the solver exposes them (else it is empty).
    """
    from galnet.fit import fit_stamps
    from galnet.fit import model as model_mod

    clock: dict[str, float] = {}
    model_cls = getattr(model_mod, "GroupModel", None)  # the accounting is skipped if it changes
    attrs = {"render": "render", "jacobian": "jacobian"}
    originals = {name: getattr(model_cls, attr) for name, attr in attrs.items() if hasattr(model_cls, attr)}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                clock[name] += time.perf_counter() - t
        return wrapper

    if pool is not None:
        t0 = time.perf_counter()
        res = pool.fit_stamps(stamps.images, stamps.psfs, sigma=stamps.sigma, mask=stamps.mask, init=init,
                              zeropoint=stamps.zeropoint)
        return res, time.perf_counter() - t0, {}
    for name, fn in originals.items():
        clock[name] = 0.0
        setattr(model_cls, attrs[name], timed(name, fn))
    try:
        t0 = time.perf_counter()
        res = fit_stamps(stamps.images, stamps.psfs, sigma=stamps.sigma, mask=stamps.mask, init=init,
                         zeropoint=stamps.zeropoint)
        wall = time.perf_counter() - t0
    finally:
        for name, fn in originals.items():
            setattr(model_cls, attrs[name], fn)
    return res, wall, clock


# ============================================================================== PyImfit
def imfit_model(start: np.ndarray, zeropoint: float) -> dict[str, Any]:
    """PyImfit model description (one ``Sersic``) from a galnet start, with galnet's fit bounds.

    Parameters
    ----------
    start : ndarray, shape (7,)
        ``x, y, mag, re, n, q, pa`` (catalog conventions); ``re``, ``n``, ``q`` are first clipped
        into the bounds exactly as :func:`galnet.fit.fit_stamps` clips its starts.
    zeropoint : float

    Returns
    -------
    dict for :meth:`pyimfit.ModelDescription.dict_to_ModelDescription`. Limits, equivalent to
    galnet's fitter (:data:`galnet.params.PARAMETERS` ``fit_bounds``, :class:`galnet.fit.FitConfig`):

    * ``X0, Y0``: start ± ``FitConfig.center_box`` (5 px);
    * ``r_e``, ``n``: the ``fit_bounds`` of ``re`` (0.05–1000 px) and ``n`` (0.2–10);
    * ``ell``: ``[1 - 1/q_min, 1 - q_min]`` = [-49, 0.98]: galnet lets ``q`` cross 1 (``ln q`` in
      ``±ln(1/q_min)``) and folds ``q > 1`` back at the end; the same fold is applied to Imfit's result;
    * ``I_e``: the ``mag`` fit bounds (-10 to 50 mag) converted at the start's shape (galnet's
      ``mag`` is effectively free: only ``flux > 0`` matters);
    * ``PA``: free (no limits), as in galnet.
    """
    from galnet.conventions import mag_to_flux, sersic_intensity_at_re, to_imfit
    from galnet.fit import FitConfig
    from galnet.params import PARAMETERS, index

    p = np.array(start, dtype=float, copy=True)
    b = {name: PARAMETERS[index(name)].fit_bounds for name in ("mag", "re", "n", "q")}
    for name in ("re", "n", "q"):
        lo, hi = b[name]
        p[index(name)] = np.clip(p[index(name)], lo * 1.01, hi / 1.01 if name != "q" else 1.0)
    d = {k: float(v) for k, v in to_imfit(*p, zeropoint=zeropoint).items()}
    box = FitConfig().center_box
    q_min = b["q"][0]
    i_lo, i_hi = (float(sersic_intensity_at_re(mag_to_flux(m, zeropoint), d["r_e"], d["n"], 1 - d["ell"]))
                  for m in (b["mag"][1], b["mag"][0]))
    sersic = {
        "PA": d["PA"],
        "ell": [d["ell"], 1.0 - 1.0 / q_min, 1.0 - q_min],
        "n": [d["n"], *b["n"]],
        "I_e": [d["I_e"], i_lo, i_hi],
        "r_e": [d["r_e"], *b["re"]],
    }
    fset = {"X0": [d["X0"], d["X0"] - box, d["X0"] + box], "Y0": [d["Y0"], d["Y0"] - box, d["Y0"] + box],
            "function_list": [{"name": "Sersic", "label": "galaxy", "parameters": sersic}]}
    return {"function_sets": [fset]}


def _pyimfit_worker(rows: np.ndarray, models: list[dict], images: np.ndarray, psfs: np.ndarray,
                    sigma: np.ndarray, masks: np.ndarray | None, queue) -> None:
    """Fit one share of the stamps with PyImfit, one single-threaded fit after the other.

    Parameters
    ----------
    rows : ndarray of int, shape (k,)
        The share's row numbers in the whole set (passed back with the results).
    models : list of k dicts (or None for a start that is not finite)
        PyImfit model descriptions (:func:`imfit_model`).
    images, psfs, sigma : ndarrays, the share's stamps, PSFs and σ maps
    masks : ndarray of bool (k, H, W) or None
        Bad-pixel masks (True = bad; Imfit's convention too), the same galnet fits with.
    queue : multiprocessing queue
        Receives ``(rows, raw (k, 7) Imfit parameters, fit statistic (k,), valid pixels (k,),
        iterations (k,), converged (k,), error messages, busy seconds)``. The busy time runs from the
        first fit to the last: process start-up and imports are excluded, as galnet's import is.
    """
    os.environ["OMP_NUM_THREADS"] = "1"  # before libgomp loads with pyimfit
    import pyimfit

    k = len(rows)
    raw = np.full((k, 7), np.nan)
    stat, nvalid, niter = np.full(k, np.nan), np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
    converged = np.zeros(k, dtype=bool)
    errors: list[str] = [""] * k
    t0 = time.perf_counter()
    for j in range(k):
        if models[j] is None:
            errors[j] = "start not finite"
            continue
        try:
            fitter = pyimfit.Imfit(pyimfit.ModelDescription.dict_to_ModelDescription(models[j]), psf=psfs[j],
                                   maxThreads=1)
            res = fitter.fit(images[j], error=sigma[j], error_type="sigma",
                             mask=None if masks is None else masks[j].astype(np.int32), solver="LM")
            if fitter.fitError:
                errors[j] = "Imfit reported a fit error"
                continue
            raw[j] = res.params
            stat[j] = fitter.fitStatistic
            nvalid[j] = fitter.nValidPixels
            niter[j] = fitter.nIter
            converged[j] = bool(fitter.fitConverged)
        except Exception as exc:  # report, keep going: a failed fit counts as not run
            errors[j] = f"{type(exc).__name__}: {exc}"
    busy = time.perf_counter() - t0
    queue.put((rows, raw, stat, nvalid, niter, converged, errors, busy))


def run_pyimfit(stamps: Stamps, starts: np.ndarray, processes: int) -> dict[str, Any]:
    """Fit every stamp with PyImfit (L-M) in ``processes`` worker processes, each single-threaded.

    Parameters
    ----------
    stamps : Stamps
    starts : ndarray, shape (B, 7)
        The same start parameters galnet gets (catalog conventions).
    processes : int
        Worker processes (one per core); worker ``w`` fits stamps ``w, w + processes, ...``.

    Returns
    -------
    dict
        ``params`` (B, 7) in catalog conventions (q folded into (0, 1]), ``raw`` (B, 7) Imfit's
        ``X0, Y0, PA, ell, n, I_e, r_e``, ``stat`` (B,) Imfit's χ², ``nvalid``, ``niter``, ``converged``,
        ``errors`` (per-row messages), ``wall`` (the slowest worker's busy seconds) and
        ``wall_with_startup`` (seconds from starting the processes to the last result).
    """
    import multiprocessing as mp

    from galnet.conventions import fold_axis_ratio, from_imfit
    from galnet.params import PARAMETER_NAMES

    b = len(stamps.images)
    models = [imfit_model(s, stamps.zeropoint) if np.all(np.isfinite(s)) else None for s in starts]
    ctx = mp.get_context("spawn")  # not fork: torch's OpenMP runtime is not fork-safe
    queue = ctx.Queue()
    shares = [s for s in (np.arange(w, b, processes) for w in range(processes)) if s.size]
    t0 = time.perf_counter()
    masks = stamps.mask
    procs = [ctx.Process(target=_pyimfit_worker, args=(s, [models[i] for i in s], stamps.images[s],
                                                       stamps.psfs[s], stamps.sigma[s],
                                                       None if masks is None else masks[s], queue))
             for s in shares]
    for pr in procs:
        pr.start()
    out: dict[str, Any] = {
        "raw": np.full((b, 7), np.nan), "stat": np.full(b, np.nan), "nvalid": np.zeros(b, dtype=np.int64),
        "niter": np.zeros(b, dtype=np.int64), "converged": np.zeros(b, dtype=bool), "errors": [""] * b,
    }
    busy = []
    for _ in procs:  # results first, then join (a full queue would block the workers' exit)
        rows, raw, stat, nvalid, niter, converged, errors, secs = queue.get()
        out["raw"][rows], out["stat"][rows], out["nvalid"][rows] = raw, stat, nvalid
        out["niter"][rows], out["converged"][rows] = niter, converged
        for j, i in enumerate(rows):
            out["errors"][i] = errors[j]
        busy.append(secs)
    for pr in procs:
        pr.join()
    out["wall_with_startup"] = time.perf_counter() - t0
    out["wall"] = max(busy)
    r = out["raw"]
    with np.errstate(invalid="ignore", divide="ignore"):
        conv = from_imfit(*r.T, zeropoint=stamps.zeropoint)  # r: X0, Y0, PA, ell, n, I_e, r_e
    params = np.stack([np.asarray(conv[k], dtype=float) for k in PARAMETER_NAMES], 1)
    out["params"] = fold_axis_ratio(params)
    return out


def galnet_chi2nu(stamps: Stamps, params: np.ndarray, good: np.ndarray) -> np.ndarray:
    """χ²ν of parameters under galnet's renderer (a cross-check of conventions between the two models).

    Parameters
    ----------
    stamps : Stamps
    params : ndarray, shape (B, 7)
    good : ndarray of bool, shape (B, H, W)
        Good pixels (as galnet's fitter uses them).

    Returns
    -------
    ndarray (B,): NaN where the parameters are not finite or outside the renderer's range.
    """
    import torch

    from galnet.params import bad_parameter_rows
    from galnet.render import render_sersic

    out = np.full(len(params), np.nan)
    ok = ~bad_parameter_rows(np.nan_to_num(params, nan=-1e9))[0]
    if not ok.any():
        return out
    model = render_sersic(torch.as_tensor(params[ok]), torch.as_tensor(stamps.psfs[ok]),
                          shape=stamps.images.shape[1:], zeropoint=stamps.zeropoint).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(good[ok], ((stamps.images[ok] - model) / stamps.sigma[ok]) ** 2, 0.0)
    out[ok] = r2.reshape(ok.sum(), -1).sum(1) / (good[ok].reshape(ok.sum(), -1).sum(1) - N_FREE)
    return out


# ============================================================================== hybrid
def network_starts(stamps: Stamps, threads: int) -> tuple[np.ndarray, float, str]:
    """Start parameters from the shipped network ``hsc-r``, as ``galnet predict`` makes them.

    The model is loaded (and, with ONNX Runtime, exported) and warmed up on one stamp first; only the
    prediction of all stamps is timed. Magnitudes are moved from the network's training zero point to
    the stamps' (the network works in counts).

    Returns
    -------
    (ndarray (B, 7), seconds, backend)
    """
    from galnet.models import load_model
    from galnet.params import IX_MAG
    from galnet.predict.core import model_zeropoint, resolve_backend

    backend = resolve_backend("auto")
    predictor = load_model("hsc-r", backend=backend)
    predictor.predict(stamps.images[:1], stamps.psfs[:1], stamps.sky_sigma[:1])  # warm-up
    t0 = time.perf_counter()
    pred = predictor.predict(stamps.images, stamps.psfs, stamps.sky_sigma)
    seconds = time.perf_counter() - t0
    pred[:, IX_MAG] += stamps.zeropoint - model_zeropoint(predictor.card)
    return pred, seconds, f"{backend}, {threads} thread(s)"


# ============================================================================== main
def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table, the ratios and, last, one JSON line with every figure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="stamps (the issue's benchmark: 1,000)")
    ap.add_argument("--quick", action="store_true", help="16 galaxies (about 1 min on 2 loaded cores)")
    ap.add_argument("--threads", type=int, default=2,
                    help="cores: worker processes for galnet's fits (galnet.fit.FitPool, one thread "
                         "each) and for PyImfit's; torch threads for the network")
    ap.add_argument("--galnet-threads", action="store_true",
                    help="fit galnet in this process with --threads torch threads, not worker processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pyimfit", action="store_true", help="also fit with PyImfit if it is installed")
    ap.add_argument("--no-hybrid", action="store_true", help="skip the network + fit (hybrid) row")
    ap.add_argument("--no-mask", action="store_true",
                    help="fit every pixel (default: neighbours masked with galnet.fit.neighbour_mask, the "
                         "same mask for every method, its time added to each)")
    add_timing_args(ap)
    args = ap.parse_args(argv)
    n = 16 if args.quick else args.n
    import torch

    from galnet.fit import FitPool, fit_stamps, neighbour_mask, pixel_weights
    from galnet.fit.starts import moments_start

    torch.set_num_threads(args.threads)
    state = check_machine(args, threads=args.threads)
    stamps = make_stamps(n, args.seed)
    print(f"{n} stamps {stamps.images.shape[1:]} (PSF {stamps.psfs.shape[1:]}) from {stamps.source}; "
          f"{args.threads} thread(s) / process(es)")
    # ---- worker processes for galnet (started and warmed up first: process start-up is not timed)
    pool = None
    if args.threads > 1 and not args.galnet_threads:
        pool = FitPool(args.threads)
        pool.warm_up(stamps.images, stamps.psfs, sigma=stamps.sigma, zeropoint=stamps.zeropoint)
    # ---- the shared neighbour mask (timed once, made in the worker processes when there are some, as
    # `galnet fit --workers` makes it; its time is added to every method)
    t0 = time.perf_counter()
    if not args.no_mask:
        masker = pool.neighbour_mask if pool is not None else neighbour_mask
        stamps.mask = masker(stamps.images, stamps.sigma, psf=stamps.psfs)[0]
    t_mask = time.perf_counter() - t0
    weights = pixel_weights(stamps.images, stamps.sigma, stamps.mask)[0]
    good = weights > 0
    masked_images = np.where(good, stamps.images, np.nan)

    # ---- the shared start: image moments (timed once; its time is added to both moment-started methods)
    t0 = time.perf_counter()
    starts = moments_start(masked_images, sigma=stamps.sigma, zeropoint=stamps.zeropoint)
    t_moments = time.perf_counter() - t0 + t_mask

    # ---- the methods, timed interleaved in this process (>= 3 repeats each; median and best quoted):
    # galnet from moments, PyImfit from the same moments, hybrid (network start + galnet fit)
    if pool is None:  # a 2-iteration warm-up fit of one stamp: torch's first-call costs
        fit_stamps(stamps.images[:1], stamps.psfs[:1], sigma=stamps.sigma[:1], init=starts[:1],
                   zeropoint=stamps.zeropoint, max_iter=2)
    walls: dict[str, list[float]] = {}

    def galnet_side():
        out = run_galnet(stamps, starts, pool)
        walls.setdefault("galnet", []).append(out[1])
        return out

    sides = {"galnet": galnet_side}
    pyimfit = None
    if args.pyimfit:
        try:
            import pyimfit
        except ImportError:
            pyimfit_missing = ("not installed: pip install 'galnet[bench]' (builds from source; needs the "
                               "Debian packages libfftw3-dev libgsl-dev libnlopt-dev scons)")
            print(f"PyImfit {pyimfit_missing}")
        else:
            def pyimfit_side():
                out = run_pyimfit(stamps, starts, args.threads)
                walls.setdefault("pyimfit", []).append(out["wall"])
                return out

            sides["pyimfit"] = pyimfit_side
    hybrid_error = None
    if not args.no_hybrid:
        try:
            network_starts(stamps, args.threads)  # also the network's warm-up
        except Exception as exc:  # no model / backend: say so, keep the other figures
            hybrid_error = f"not run: {type(exc).__name__}: {exc}"
            print(f"hybrid {hybrid_error}")
        else:
            def hybrid_side():
                pred, t_net, backend = network_starts(stamps, args.threads)
                hres, hwall, _ = run_galnet(stamps, pred, pool)
                walls.setdefault("hybrid", []).append(t_net + hwall)
                walls.setdefault("hybrid_network", []).append(t_net)
                walls.setdefault("hybrid_fit", []).append(hwall)
                return hres, backend

            sides["hybrid"] = hybrid_side
    runs = interleaved(sides, repeats=args.repeats, warmup=False)

    def med(name: str) -> float:
        return float(np.median(walls[name]))

    res, last_wall, clock = runs["galnet"].result
    ok = res.status >= 0
    g_time = t_moments + med("galnet")
    figures: dict[str, Any] = {"n": n, "source": stamps.source, "threads": args.threads,
                               "galnet_parallelism": (f"{args.threads} worker processes x 1 thread" if pool
                                                      else f"1 process x {args.threads} torch threads"),
                               "neighbour_mask": not args.no_mask, "time_mask_s": t_mask,
                               "repeats": args.repeats}
    figures.update(method_figures(res.params, stamps.truth, res.chi2nu, ok, g_time))
    figures["galaxies_per_second_best"] = n / (t_moments + min(walls["galnet"]))
    figures.update({
        "median_niter": float(np.median(res.niter[ok])) if ok.any() else float("nan"),
        "time_moments_s": t_moments,
        "time_render_trials_s": clock.get("render", float("nan")),
        "time_jacobian_s": clock.get("jacobian", float("nan")),
        "time_other_s": last_wall - clock.get("render", float("nan")) - clock.get("jacobian", float("nan")),
        "fourier_sizes": {int(k): int(v) for k, v in zip(*np.unique(res.fourier_size, return_counts=True))},
    })
    rows: dict[str, dict[str, Any]] = {"galnet (moments)": figures}
    if args.pyimfit and "pyimfit" not in runs:
        figures["pyimfit"] = pyimfit_missing

    # ---- PyImfit from the same moments
    py: dict[str, Any] | None = None
    if "pyimfit" in runs:
        out = runs["pyimfit"].result
        ran = np.all(np.isfinite(out["params"]), axis=1)
        ngood = good.reshape(n, -1).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            chi2nu = np.where(ran, out["stat"] / (ngood - N_FREE), np.nan)
        py = method_figures(out["params"], stamps.truth, chi2nu, ran, t_moments + med("pyimfit"))
        py["galaxies_per_second_best"] = n / (t_moments + min(walls["pyimfit"]))
        failures = sorted({e for e in out["errors"] if e})
        py.update({
            "version": getattr(pyimfit, "__version__", "?"),
            "settings": "solver LM, ftol 1e-8, maxThreads 1 per fit, pixel subsampling on (default), "
                        "psfNormalization on (default), error image = sigma map (error_type sigma)",
            "processes": args.threads,
            "fraction_converged": float(out["converged"].mean()),
            "median_niter": float(np.median(out["niter"][ran])) if ran.any() else float("nan"),
            "wall_with_startup_s": out["wall_with_startup"],
            "imfit_valid_pixels_mismatch": int(np.sum(ran & (out["nvalid"] != ngood))),
            "median_chi2nu_galnet_model": float(np.nanmedian(galnet_chi2nu(stamps, out["params"], good))),
            "chi2nu_definition": "Imfit fit statistic / (good pixels - 7), same sigma map as galnet",
            "failures": failures[:5],
            "galnet_speedup": (figures["galaxies_per_second"] / py["galaxies_per_second"]),
            "galnet_speedup_best": (figures["galaxies_per_second_best"] / py["galaxies_per_second_best"]),
            "galnet_chi2nu_diff_pct": 100 * (figures["median_chi2nu"] / py["median_chi2nu"] - 1),
            "frac_galnet_chi2_lower": float(np.mean(res.chi2nu < chi2nu)),
        })
        rows["PyImfit LM (moments)"] = py

    # ---- hybrid: network start + galnet fit
    if hybrid_error is not None:
        figures["hybrid"] = hybrid_error
    elif "hybrid" in runs:
        hres, backend = runs["hybrid"].result
        hok = hres.status >= 0
        hy = method_figures(hres.params, stamps.truth, hres.chi2nu, hok, t_mask + med("hybrid"))
        hy.update({
            "network": f"hsc-r ({backend})",
            "galaxies_per_second_best": n / (t_mask + min(walls["hybrid"])),
            "time_network_s": med("hybrid_network"),
            "time_fit_s": med("hybrid_fit"),
            "median_niter": float(np.median(hres.niter[hok])) if hok.any() else float("nan"),
            "speedup_vs_galnet_moments": hy["galaxies_per_second"] / figures["galaxies_per_second"],
        })
        if py is not None:
            hy["speedup_vs_pyimfit_moments"] = hy["galaxies_per_second"] / py["galaxies_per_second"]
        rows["hybrid (network+fit)"] = hy
        figures["hybrid"] = hy

    print_table(rows)
    if py is not None:
        figures["pyimfit"] = py
        print(f"galnet / PyImfit speed: {py['galnet_speedup']:.1f}x; galnet median chi2nu "
              f"{py['galnet_chi2nu_diff_pct']:+.2f}% relative to PyImfit's; galnet's chi2 lower on "
              f"{py['frac_galnet_chi2_lower']:.0%} of the galaxies")
        print("PyImfit chi2nu = Imfit fit statistic / (good pixels - 7 free parameters), with galnet's sigma "
              f"map; PyImfit's solutions under galnet's renderer: median chi2nu "
              f"{py['median_chi2nu_galnet_model']:.3f}")
        print(f"PyImfit {py['version']}: {py['settings']}; {py['processes']} process(es); converged "
              f"{py['fraction_converged']:.2f}" + (f"; failures: {py['failures']}" if py["failures"] else ""))
    if isinstance(figures.get("hybrid"), dict):
        hy = figures["hybrid"]
        line = (f"hybrid: network {hy['time_network_s'] / n * 1e3:.2f} ms/galaxy + fit "
                f"{hy['time_fit_s'] / n * 1e3:.1f} ms/galaxy; "
                f"{hy['speedup_vs_galnet_moments']:.1f}x galnet from moments")
        if "speedup_vs_pyimfit_moments" in hy:
            line += f", {hy['speedup_vs_pyimfit_moments']:.1f}x PyImfit from moments (goal >= 100x)"
        print(line)
    print(f"times include the neighbour mask ({t_mask / n * 1e3:.2f} ms/galaxy) for all, the moment-based "
          f"start ({(t_moments - t_mask) / n * 1e3:.1f} ms/galaxy) for galnet and PyImfit, the network's "
          "inference for hybrid; model loading, warm-up calls and process start-up excluded")
    print(f"times: medians of {args.repeats} interleaved repeats (the best repeat in *_best)")
    if pool is not None:
        pool.close()
    figures["timings"] = timing_figures(runs)
    emit_with_state(figures, state)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
