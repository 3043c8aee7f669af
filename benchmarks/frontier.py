"""Accuracy-vs-throughput frontier of galnet's measuring modes, against the information limit.

Accuracy comes from the information-limit benchmark's JSON (``benchmarks/limit.py``): for each method, the
ratio of its NMAD to the exact fitter's on the same stamps, per bin of true magnitude, for mag, re, n and q.
Throughput is measured here, in one process, interleaved, on the same stamps:

* the network alone (``Predictor``, ONNX Runtime, batch 512), with 1, 4 or 8 test-time symmetries;
* refined modes: the network then ``galnet.fit.Refiner(K)`` as ``galnet predict --refine K`` runs it
  (neighbours masked, a constant sky fitted unless the mode says ``nosky``, K LM steps, rows left above
  χ²ν 1.5 fitted on: ``--refine-finish``, or not), in ``--refine-workers`` processes as ``galnet predict``
  does;
* the fitters and hybrid take their time per galaxy from the limit JSON (``TPERGAL`` of their catalogs).

A method is a point (galaxies per second, worst NMAD ratio); the figure shows the worst ratio over the
brightest bin (where the pixels hold the most and the network is furthest from them) and over all bins.

Usage::

    python benchmarks/limit.py --set galsim --method 'refine1=predict --refine 1' ...   # accuracy
    python benchmarks/frontier.py --limit benchmarks/results/limit_galsim.json         # speed + plot

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from galnet.options import usable_cores

HERE = Path(__file__).parent
PARAMS = ("mag", "re", "n", "q")


def worst_ratio(method: dict, bins: slice | None = None) -> float:
    """Largest NMAD ratio to the reference (limit.py's: the better fitter) over mag, re, n, q and the
    selected magnitude bins."""
    rows = method["bins"]["mag"]
    rows = rows[bins] if bins is not None else rows
    vals = [r["params"][p].get("ratio") for r in rows for p in PARAMS]
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    return float(max(vals)) if vals else float("nan")


def time_modes(data: Path, n: int, model: str, modes: list[tuple[str, int, int, float, bool, int]],
               repeats: int, threads: int, refine_workers: int = 1) -> dict[str, list[float]]:
    """Seconds per galaxy of each (name, symmetries, refine K, finish χ²ν, fitted sky, finish iteration
    limit) mode, ``repeats`` interleaved rounds.

    The refinement runs in ``refine_workers`` single-thread processes (``galnet predict --refine-workers``),
    started and warmed up before the clock runs.
    """
    import torch

    torch.set_num_threads(threads)
    from galnet.evaluate.command import load_truth
    from galnet.fit import Refiner
    from galnet.models import load_model

    truth = load_truth(data, limit=n)
    images = np.asarray(truth.images, dtype=np.float32)
    psfs = np.asarray(truth.psfs, dtype=np.float32)
    sky = np.asarray(truth.sky_sigma, dtype=np.float32)
    predictors = {s: load_model(model, backend="onnx", symmetries=s) for s in {m[1] for m in modes}}
    gain = truth.gain
    refiners = {(k, f, sk, it): Refiner(k, workers=refine_workers, finish_chi2=f or None, fit_sky=sk,
                                        finish_max_iter=it)
                for k, f, sk, it in {m[2:] for m in modes} if k > 0}
    for p in predictors.values():  # warm up: ONNX session, thread pools
        p.predict(images[:64], psfs[:64], sky[:64])
    for r in refiners.values():  # 64 rows: the worker processes start here
        r(images[:64], psfs[:64], predictors[min(predictors)].predict(images[:64], psfs[:64], sky[:64]),
          sky_sigma=sky[:64], gain=gain)
    times: dict[str, list[float]] = {m[0]: [] for m in modes}
    try:
        _interleave(modes, repeats, predictors, refiners, images, psfs, sky, gain, times)
    finally:
        for r in refiners.values():
            r.close()
    return times


def _interleave(modes, repeats, predictors, refiners, images, psfs, sky, gain, times) -> None:
    for _ in range(repeats):
        for name, sym, k, finish, fit_sky, finish_iter in modes:
            t0 = time.perf_counter()
            start = predictors[sym].predict(images, psfs, sky)
            if k > 0:
                refiners[(k, finish, fit_sky, finish_iter)](images, psfs, start, sky_sigma=sky, gain=gain)
            times[name].append((time.perf_counter() - t0) / len(images))


def plot(points: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained", sharex=True)
    for ax, key, title in ((axes[0], "worst_ratio_bright", "brightest bin (mag 18–20)"),
                           (axes[1], "worst_ratio_all", "every magnitude bin")):
        for name, pt in points.items():
            if not np.isfinite(pt[key]) or not np.isfinite(pt["gal_per_s"]):
                continue
            ax.scatter(pt["gal_per_s"], pt[key], s=30)
            ax.annotate(name, (pt["gal_per_s"], pt[key]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(2.0, color="tab:red", lw=0.8, ls="--")
        ax.axhline(1.1, color="tab:green", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("galaxies / s (2 cores)")
        ax.set_title(title)
    axes[0].set_ylabel("worst NMAD / the better fitter's (mag, re, n, q)")
    fig.suptitle("Accuracy vs throughput (red: network goal 2×, green: refined goal 1.1×)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", action="append", required=True, metavar="JSON",
                    help="limit.py JSON(s); methods named network*, sym4*, refine1 ... are matched to modes")
    ap.add_argument("--mode", action="append", default=[],
                    metavar="NAME=SYMMETRIES,K[,FINISH][,nosky][,iterN]",
                    help="a timed mode: its name in the limit JSON, symmetries (1/4/8), refine K, the "
                         "--refine-finish chi2nu (default 1.5; 0: K steps only), 'nosky' for "
                         "--no-refine-sky and 'iterN' for --refine-finish-iter N (default 30), e.g. "
                         "network=1,0 or refine5_nosky=1,5,1.5,nosky or refine5_it100=1,5,1.5,iter100 "
                         "(default: network=1,0 sym4=4,0 sym8=8,0 refine1=1,1 refine2=1,2)")
    ap.add_argument("--model", default="hsc-r")
    ap.add_argument("--n", type=int, default=1000, help="stamps to time (default 1000; --quick 300)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--refine-workers", type=int, default=usable_cores(),
                    help="processes of the refinement (default: the usable cores, as galnet predict)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for frontier.md/.png/.json")
    ap.add_argument("--figure", default=str(HERE.parent / "docs" / "img" / "frontier.png"))
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 300, 3
    specs = args.mode or ["network=1,0", "sym4=4,0", "sym8=8,0", "refine1=1,1", "refine2=1,2"]
    modes = []
    for spec in specs:
        try:
            name, rest = spec.split("=", 1)
            fields = rest.split(",")
            sym, k = int(fields[0]), int(fields[1])
            rest = fields[2:]
            is_word = bool(rest) and (rest[0] == "nosky" or rest[0].startswith("iter"))
            finish = float(rest.pop(0)) if rest and not is_word else 1.5
            fit_sky, finish_iter = True, 30
            for word in rest:
                if word == "nosky":
                    fit_sky = False
                elif word.startswith("iter") and int(word[4:]) >= 1:
                    finish_iter = int(word[4:])
                else:
                    raise ValueError
        except (ValueError, IndexError):
            ap.error(f"--mode {spec!r}: expected NAME=SYMMETRIES,K[,FINISH][,nosky][,iterN]")
        modes.append((name, sym, k, finish, fit_sky, finish_iter))
    methods: dict[str, dict] = {}
    data = None
    for path in args.limit:
        doc = json.loads(Path(path).read_text())
        data = data or Path(doc["meta"]["data"])
        methods.update(doc["methods"])
    if data is None or not data.is_file():
        ap.error(f"the stamps of the limit JSON are not here: {data}")
    omp = os.environ.get("OMP_NUM_THREADS")
    print(f"threads: torch {args.threads}, OMP_NUM_THREADS={omp}, "
          f"refinement processes {args.refine_workers}; stamps {data}", flush=True)
    times = time_modes(data, args.n, args.model, modes, args.repeats, args.threads, args.refine_workers)
    points: dict[str, dict] = {}
    for name, secs in times.items():
        med, best = statistics.median(secs), min(secs)
        m = methods.get(name)
        known = bool(m and "bins" in m)
        points[name] = {"gal_per_s": 1.0 / med, "gal_per_s_best": 1.0 / best,
                        "worst_ratio_bright": worst_ratio(m, slice(0, 1)) if known else float("nan"),
                        "worst_ratio_all": worst_ratio(m) if known else float("nan")}
    for name in ("fitter", "fitter-sky", "hybrid"):
        m = methods.get(name)
        if m and "bins" in m and m.get("tpergal_ms"):
            ms = m["tpergal_ms"]  # fitting time recorded in the catalog (the fit's 2 worker processes)
            points[name] = {"gal_per_s": 1e3 / ms, "gal_per_s_best": float("nan"),
                            "worst_ratio_bright": worst_ratio(m, slice(0, 1)),
                            "worst_ratio_all": worst_ratio(m)}
    lines = [f"| mode | gal/s (median of {args.repeats}; best) | worst NMAD ratio, mag 18–20 "
             "| worst NMAD ratio, all bins |", "|---|---|---|---|"]
    for name, pt in points.items():
        best = f"; {pt['gal_per_s_best']:,.0f}" if np.isfinite(pt["gal_per_s_best"]) else ""
        lines.append(f"| {name} | {pt['gal_per_s']:,.0f}{best} | {pt['worst_ratio_bright']:.2f}× | "
                     f"{pt['worst_ratio_all']:.2f}× |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.md").write_text(table + "\n")
    plot(points, Path(args.figure))
    summary = {"benchmark": "frontier", "n": args.n, "threads": args.threads,
               "refine_workers": args.refine_workers, "points": points}
    (out / "frontier.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
