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

from ..catalog import catalog_params
from ..params import N_PARAMS, catalog_columns

__all__ = ["add_arguments", "run", "run_demo", "DemoResult", "DEMO_SEED", "FIT_COLUMNS"]

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


#: Columns of the demo's fit catalogs: the parameters and their errors, χ²ν, iterations, masked sources, flags
#: (``galnet fit`` writes these and the sky, χ², degrees of freedom and status).
FIT_COLUMNS = (*catalog_columns(), "chi2nu", "niter", "n_masked", "flags")


def run_demo(*, n: int = 400, fit_n: int = 100, out="galnet-demo", model: str = "hsc-r",
             seed: int = DEMO_SEED, max_iter: int = 60, progress: bool = True) -> DemoResult:
    """Simulate → predict → fit (moments and hybrid) → evaluate → report.

    The stages are the library's: :func:`galnet.simulate.generate_batch`, the network's
    :class:`~galnet.models.Predictor`, :func:`galnet.fit.fit_catalog` (from image moments, and from the
    network catalog: the hybrid mode; σ from the data and neighbours masked, as ``galnet fit``) and
    :func:`galnet.evaluate.evaluate_methods` / :func:`galnet.evaluate.write_report`.

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
    from ..catalog import make_catalog, write_table
    from ..errors import ConfigError
    from ..models import load_model
    from ..simulate import load_preset
    from .report import MethodResult, TruthSet, evaluate_methods, write_report

    if n < 2:
        raise ConfigError(f"--n must be at least 2, got {n}")
    if not 0 <= fit_n <= n:
        raise ConfigError(f"--fit-n must be between 0 and --n ({n}), got {fit_n}")
    predictor = load_model(model)  # first: a missing model fails before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    cfg = load_preset("hsc-r")
    t0 = time.perf_counter()
    data = _simulate(cfg, n, seed, out / "test.h5", progress)
    timings["simulate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pred = _predict(predictor, data, progress)
    timings["predict"] = time.perf_counter() - t0
    t_net = timings["predict"] / n
    write_table(make_catalog(data["ids"], pred, pixel_scale=cfg.pixel_scale, zeropoint=cfg.zeropoint,
                             meta={"TPERGAL": t_net, "MODEL": str(model)}), out / "network.fits")
    methods = [MethodResult("network", pred, None, t_net, str(out / "network.fits"), network_only=True)]

    # fits from moments and from the network (hybrid), as galnet fit does them: σ from the data (GALFIT's),
    # the other sources on each stamp masked; the catalogs hold only the fitted rows
    n_masked = np.zeros(0, dtype=np.int64)
    for name, start in (("fit", "moments"), ("hybrid", f"catalog:{out / 'network.fits'}")):
        t0 = time.perf_counter()
        table = _fit(out / "test.h5", out / f"{name}.fits", start, fit_n, max_iter, cfg)
        timings[name] = time.perf_counter() - t0
        tper = timings[name] / max(fit_n, 1)
        table.meta = {**{k: v for k, v in table.meta.items() if k not in ("FITSTART", "FITSKY", "NBMASK",
                                                                          "TPERGAL")},
                      "TPERGAL": tper, "FITSTART": "moments" if name == "fit" else "network", "NBMASK": True}
        write_table(table, out / f"{name}.fits")
        n_masked = np.asarray(table["n_masked"])
        if fit_n:
            params = np.full((n, N_PARAMS), np.nan)
            flags = np.zeros(n, dtype=np.int64)
            params[:fit_n], flags[:fit_n] = catalog_params(table), np.asarray(table["flags"])
            methods.append(MethodResult(name, params, flags, tper, str(out / f"{name}.fits")))

    t0 = time.perf_counter()
    truth = TruthSet.from_arrays(data, zeropoint=cfg.zeropoint, gain=cfg.gain, pixel_scale=cfg.pixel_scale,
                                 models=data["models"])
    ev = evaluate_methods(truth, methods, progress=progress)
    timings["evaluate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    notes = _notes(n, fit_n, seed, model, int(np.sum(n_masked > 0)), out)
    report = write_report(ev, out / "report", title="galnet demo", notes=notes, progress=progress)
    timings["report"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    return DemoResult(evaluation=ev, report=report, out=out, timings=timings)


def _notes(n: int, fit_n: int, seed: int, model: str, n_masked: int, out: Path) -> list[str]:
    """The report's notes: what the demo ran, and the command that reproduces its evaluation."""
    return [f"galnet demo: {n} stamps simulated with preset hsc-r (seed {seed}); network {model!r} on all, "
            f"classical fit (moments start) and hybrid fit (network start) on the first {fit_n}, "
            f"with neighbouring sources masked (galnet.fit.neighbour_mask: {n_masked} "
            f"of {fit_n} stamps had sources masked).",
            "Times are wall-clock on this machine (fit: Jacobians included; network: batched inference).",
            f"Reproduce: galnet evaluate --truth {out / 'test.h5'} --catalog network={out / 'network.fits'} "
            f"--catalog fit={out / 'fit.fits'} --catalog hybrid={out / 'hybrid.fits'} "
            f"--out {out / 'report'}"]


def _simulate(cfg, n: int, seed: int, path: Path, progress: bool) -> dict[str, np.ndarray]:
    """``n`` stamps of ``cfg`` (with their noise-free ``models``), drawn in chunks from one generator
    (reproducible for a given seed), written to ``path`` as a test split."""
    from tqdm.auto import tqdm

    from ..data import write_split
    from ..simulate import generate_batch

    rng = np.random.default_rng(seed)
    parts = []
    for sl in tqdm(_chunks(n, 50), desc="simulate", unit="chunk", disable=not progress):
        parts.append(generate_batch(cfg, sl.stop - sl.start, seed=rng, return_models=True))
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    data["ids"] = np.arange(n, dtype=np.int64)
    meta = {"preset": cfg.to_dict(), "seed": seed, "split": "test", "zeropoint": cfg.zeropoint,
            "pixel_scale": cfg.pixel_scale, "gain": cfg.gain, "source": "galnet demo"}
    write_split(path, data, meta)
    return data


def _predict(predictor, data: dict[str, np.ndarray], progress: bool) -> np.ndarray:
    """The network's parameters (n, 7) of every stamp (batches of 100)."""
    from tqdm.auto import tqdm

    n = len(data["images"])
    pred = np.empty((n, N_PARAMS))
    for sl in tqdm(_chunks(n, 100), desc="predict", unit="chunk", disable=not progress):
        pred[sl] = predictor.predict(data["images"][sl], data["psfs"][sl], data["sky_sigma"][sl])
    return pred


def _fit(split: Path, output: Path, start: str, fit_n: int, max_iter: int, cfg):
    """:func:`galnet.fit.fit_catalog` of the first ``fit_n`` stamps of ``split`` (batches of 10, every stamp
    fitted: no ``NO_SOURCE`` test), as a table of :data:`FIT_COLUMNS` (empty when ``fit_n`` is 0)."""
    from ..catalog import make_catalog
    from ..fit import fit_catalog

    if fit_n == 0:
        empty = np.zeros(0)
        return make_catalog(np.zeros(0, dtype=np.int64), np.zeros((0, N_PARAMS)),
                            errors=np.zeros((0, N_PARAMS)), flags=np.zeros(0, dtype=np.int64),
                            pixel_scale=cfg.pixel_scale, zeropoint=cfg.zeropoint,
                            extra={"chi2nu": empty, "niter": empty.astype(np.int64),
                                   "n_masked": empty.astype(np.int64)})
    table = fit_catalog(split, output, start=start, max_iter=max_iter, batch_size=10, limit=fit_n,
                        detect_snr=0.0)
    return table[list(FIT_COLUMNS)]


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
