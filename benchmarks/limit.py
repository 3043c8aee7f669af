"""Information-limit benchmark: every method's precision per magnitude and S/N bin, relative to the fitter's.

Usage::

    python benchmarks/limit.py [--set galsim|test] [--test PATH] [--n 2000] [--quick] [--seed 14]
                               [--model NAME_OR_CARD] [--method 'NAME=SUBCOMMAND ARGS' ...]
                               [--methods network,fitter,hybrid] [--workers 2] [--threads 2]
                               [--out benchmarks/results] [--reuse]

Stamps (``--set``):

* ``galsim`` (default): the independent GalSim-rendered HSC r-band-like set of
  ``benchmarks/galsim_set.py`` (``--n`` stamps, ``--seed``; cached under ``benchmarks/.cache/``);
* ``test``: the first ``--n`` stamps of a ``galnet simulate`` split given with ``--test``.

Methods are run through the command line (``python -m galnet.cli ...``, the same code as the
``galnet`` console script) so that the benchmark measures what users run; each command is timed
whole (process start, model load, reading, writing included):

* ``network``: ``galnet predict SET -o CAT --refine 0 --chi2 --model MODEL --threads T``;
* ``fitter``: ``galnet fit SET -o CAT --start moments --workers W`` (neighbours masked, the
  default) and ``fitter-sky``: the same with ``--fit-sky`` (a constant sky fitted with the galaxy):
  the reference, "what the pixels hold", is per bin and parameter the smaller NMAD of the two (on
  stamps with a real background the fitted sky halves the fitter's magnitude NMAD; on sky-free
  simulations the two are within ~15 %);
* ``hybrid``: ``galnet fit SET -o CAT --start catalog:<network catalog> --workers W``;
* ``--method 'NAME=SUBCOMMAND ARGS'`` (repeatable): any ``predict`` or ``fit`` command; the input
  and ``-o`` are inserted after the subcommand, ``{network}`` in ARGS is replaced by the network's
  catalog, and ``predict`` commands get ``--model MODEL`` unless ARGS names one. E.g.
  ``--method 'refine1=predict --refine 1'`` or
  ``--method 'lm2=fit --start catalog:{network} --max-iter 2 --workers 2'``.

For every method, per bin of true magnitude (:data:`MAG_BINS`), of the target's S/N
(:data:`SNR_BINS`; ``snr`` of the set: optimal S/N of the noiseless target) and, when the set has
``n_neighbours``, of the number of neighbours on the stamp (:data:`NB_BINS`), and for each of
``mag, re, n, q, x, y, pa``: NMAD (1.4826 × median absolute deviation from the median) and bias
(median) of Δ, and the outlier fraction, with Δ and the outlier thresholds of
:mod:`galnet.train.metrics` (Δ fractional for re, n, q; PA wrapped, in degrees, only where
q_true < 0.8; outliers: |Δ| > 15 % for re, n, q, |Δmag| > 0.15, |ΔPA| > 15°, |Δx|, |Δy| > 0.5 px;
rows a method did not measure count as outliers and are left out of NMAD and bias); the ratio of
each method's NMAD to the reference's (the better fitter's) in the same bin; where the catalog has
``<col>_err`` columns the coverage, the fractions with |Δ| < 1·err and < 2·err (Δ in the catalog's
units; a Gaussian error gives 0.683 and 0.954; rows with a NaN error are left out). Per method also the
median χ²ν the catalog reports (``chi2nu``: the fit's on its unmasked pixels, predict's on the stamp) and the
median χ²ν of its model (plus its ``sky`` column, where it has one) over the target's aperture, the
same pixels for every method (:func:`galnet.evaluate.residual_statistics`), and the wall time per galaxy.

Writes ``<out>/limit_<set>.md`` (markdown tables, ready to paste) and ``<out>/limit_<set>.json``;
the catalogs go to ``benchmarks/.cache/limit_<set>_n<N>/``, each with a run record
(``<name>.run.json``: command, inputs, wall time); ``--reuse`` keeps the catalogs whose record
matches (same command line, stamp file and network catalog) and reports the times recorded then,
to remake the tables without rerunning. The last stdout line is one JSON object (the summary:
times, χ²ν, NMAD and ratios per magnitude bin).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
#: Parameters reported, in table order.
PARAMS = ("mag", "re", "n", "q", "x", "y", "pa")
#: Index of each parameter in a (B, 7) ``x, y, mag, re, n, q, pa`` array.
INDEX = {"x": 0, "y": 1, "mag": 2, "re": 3, "n": 4, "q": 5, "pa": 6}
#: Catalog error column of each parameter.
ERR_COLUMNS = {"x": "x_err", "y": "y_err", "mag": "mag_err", "re": "re_pix_err", "n": "n_err", "q": "q_err",
               "pa": "pa_err"}
#: Bins of true magnitude (issue 14).
MAG_BINS = (18.0, 20.0, 21.5, 22.5, 23.3, 24.0)
#: Bins of the target's optimal S/N.
SNR_BINS = (0.0, 20.0, 50.0, 100.0, 300.0, math.inf)
#: Bins of the number of neighbours on the stamp (``n_neighbours`` of the set, when it has one).
NB_BINS = (-0.5, 0.5, 1.5, 2.5, math.inf)
#: Row heading and section title of each binning.
KINDS = {"mag": ("mag bin", "true magnitude"), "snr": ("S/N bin", "S/N of the target"),
         "nb": ("neighbours", "number of neighbours on the stamp")}
#: The fitters: the reference of the NMAD ratios is, per bin and parameter, the smaller NMAD of those run
#: (``--reference`` names others, e.g. ``fitter-sky`` alone to compare like with like).
REFERENCES = ("fitter", "fitter-sky")
BUILTIN = ("network", "fitter", "fitter-sky", "hybrid")
SUBCOMMANDS = ("predict", "fit")


# ----------------------------------------------------------------------------- statistics
def bin_index(values, edges) -> np.ndarray:
    """Bin of each value: ``k`` for ``edges[k] <= v < edges[k+1]`` (last bin closed), −1 outside / NaN.

    Parameters
    ----------
    values : array (B,)
    edges : sequence of float, increasing, length K + 1

    Returns
    -------
    ndarray (B,) int
    """
    v = np.asarray(values, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0):
        raise ValueError(f"bin edges must be increasing, got {list(edges)}")
    k = np.searchsorted(e, v, side="right") - 1
    k[v == e[-1]] = e.size - 2
    k[(k < 0) | (k > e.size - 2) | ~np.isfinite(v)] = -1
    return k


def deltas(truth, est) -> dict[str, np.ndarray]:
    """Δ per parameter as in :func:`galnet.train.metrics.parameter_errors` (re, n, q fractional).

    Parameters
    ----------
    truth, est : array (B, 7)
        ``x, y, mag, re, n, q, pa`` (catalog conventions).

    Returns
    -------
    dict name → ndarray (B,): px for x, y; mag; fractions for re, n, q; degrees for pa (wrapped).
    """
    from galnet.train.metrics import parameter_errors

    return parameter_errors(truth, est)


def absolute_deltas(truth, est) -> dict[str, np.ndarray]:
    """|est − true| per parameter in the catalog's units (what ``<col>_err`` measures), PA wrapped."""
    from galnet.train import absolute_errors

    a = absolute_errors(truth, est)
    return {p: a[:, j] for p, j in INDEX.items()}


def coverage(delta, err, k: float) -> float:
    """Fraction of rows with ``|delta| < k · err`` among those with finite Δ and a finite, positive err.

    Parameters
    ----------
    delta, err : array (B,)
        Errors and 1σ uncertainties in the same units.
    k : float
        Multiple of the uncertainty.

    Returns
    -------
    float in [0, 1], NaN when no row qualifies.
    """
    d = np.asarray(delta, dtype=np.float64)
    s = np.asarray(err, dtype=np.float64)
    ok = np.isfinite(d) & np.isfinite(s) & (s > 0)
    return float(np.mean(np.abs(d[ok]) < k * s[ok])) if ok.any() else math.nan


def bin_statistics(truth, est, by, edges, *, errors: dict[str, np.ndarray] | None = None) -> list[dict]:
    """NMAD, bias, outlier fraction (and coverage) per bin and parameter.

    Parameters
    ----------
    truth, est : array (B, 7)
        True and estimated ``x, y, mag, re, n, q, pa``; NaN rows = not measured.
    by : array (B,)
        Quantity binned on (true mag, S/N).
    edges : sequence of float
        Bin edges (:func:`bin_index`).
    errors : dict name → array (B,), optional
        1σ uncertainties in the catalog's units (keys of :data:`ERR_COLUMNS`).

    Returns
    -------
    list of K dicts ``{"lo", "hi", "n", "params": {name: {"n", "nmad", "bias", "outlier_frac"
    [, "cov1", "cov2", "n_err"]}}}``; ``n`` of a parameter counts its finite Δ (PA: q_true < 0.8 only).
    """
    from galnet.train.metrics import PA_MAX_Q, nmad, outlier_mask

    t = np.asarray(truth, dtype=np.float64)
    e = np.asarray(est, dtype=np.float64)
    k = bin_index(by, edges)
    d = deltas(t, e)
    ad = absolute_deltas(t, e)
    out_m = outlier_mask(t, e)
    pa_ok = t[:, INDEX["q"]] < PA_MAX_Q
    res = []
    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        in_bin = k == b
        entry: dict = {"lo": float(lo), "hi": float(hi), "n": int(in_bin.sum()), "params": {}}
        for p in PARAMS:
            sel = in_bin & pa_ok if p == "pa" else in_bin
            dd = d[p][sel]
            fin = dd[np.isfinite(dd)]
            st = {"n": int(fin.size), "nmad": nmad(fin),
                  "bias": float(np.median(fin)) if fin.size else math.nan,
                  "outlier_frac": float(out_m[p][sel].mean()) if sel.any() else math.nan}
            if errors is not None and p in errors:
                err = np.asarray(errors[p], dtype=np.float64)[sel]
                st["n_err"] = int(np.sum(np.isfinite(err) & (err > 0) & np.isfinite(ad[p][sel])))
                st["cov1"] = coverage(ad[p][sel], err, 1.0)
                st["cov2"] = coverage(ad[p][sel], err, 2.0)
            entry["params"][p] = st
        res.append(entry)
    return res


def reference_nmad(references: list[list[dict]]) -> list[dict[str, float]]:
    """Per bin, per parameter: the smallest finite NMAD among the reference methods' bins (NaN if none)."""
    if not references:
        return []
    out = []
    for b, entry in enumerate(references[0]):
        best = {}
        for p in entry["params"]:
            vals = [r[b]["params"][p]["nmad"] for r in references]
            vals = [v for v in vals if v is not None and np.isfinite(v) and v > 0]
            best[p] = min(vals) if vals else math.nan
        out.append(best)
    return out


def add_ratios(bins: list[dict], reference: list[dict[str, float]] | None) -> None:
    """Add ``ratio`` = NMAD / the reference NMAD (:func:`reference_nmad`) in the same bin and parameter."""
    for b, entry in enumerate(bins):
        for p, st in entry["params"].items():
            ref = reference[b][p] if reference else math.nan
            st["ratio"] = st["nmad"] / ref if ref and np.isfinite(ref) and ref > 0 else math.nan


# ----------------------------------------------------------------------------- methods
@dataclass
class Method:
    """One method: a name and the galnet command after ``galnet`` (input and ``-o`` inserted)."""

    name: str
    subcommand: str
    args: list[str]
    needs_network: bool = False
    result: dict = field(default_factory=dict)

    def argv(self, data: Path, catalog: Path, network_catalog: Path | None) -> list[str]:
        """The full ``python -m galnet.cli ...`` command line."""
        args = [a.replace("{network}", str(network_catalog)) for a in self.args]
        return [sys.executable, "-m", "galnet.cli", self.subcommand, str(data), "-o", str(catalog), *args]


def parse_method(spec: str, model: str) -> Method:
    """``'NAME=SUBCOMMAND ARGS'`` → :class:`Method` (one-line ``ValueError`` when malformed)."""
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise ValueError(f"--method {spec!r}: expected NAME=SUBCOMMAND ARGS, NAME of letters, digits, _.+-")
    words = shlex.split(rest)
    if not words or words[0] not in SUBCOMMANDS:
        raise ValueError(f"--method {spec!r}: the subcommand must be one of {', '.join(SUBCOMMANDS)}")
    sub, args = words[0], words[1:]
    if any(a in ("-o", "--output") or a.startswith("--output=") for a in args):
        raise ValueError(f"--method {spec!r}: do not give -o/--output (the benchmark chooses the catalog)")
    if sub == "predict" and not any(a == "--model" or a.startswith("--model=") for a in args):
        args = ["--model", model, *args]
    return Method(name, sub, args, needs_network=any("{network}" in a for a in args))


def builtin_methods(names: list[str], model: str, workers: int, threads: int) -> list[Method]:
    """The built-in ``network``, ``fitter``, ``fitter-sky`` and ``hybrid`` methods that are in ``names``."""
    table = {
        "network": Method("network", "predict", ["--refine", "0", "--chi2", "--model", model, "--threads",
                                                 str(threads), "--no-progress"]),
        "fitter": Method("fitter", "fit", ["--start", "moments", "--workers", str(workers)]),
        "fitter-sky": Method("fitter-sky", "fit",
                             ["--start", "moments", "--fit-sky", "--workers", str(workers)]),
        "hybrid": Method("hybrid", "fit", ["--start", "catalog:{network}", "--workers", str(workers)],
                         needs_network=True),
    }
    return [table[n] for n in names]


def _stat(path: Path | None) -> list | None:
    if path is None or not Path(path).exists():
        return None
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


def _model_stats() -> dict[str, list[int]]:
    """Size and modification time of each shipped model file (``--model hsc-r`` resolves to one)."""
    import galnet

    folder = Path(galnet.__file__).resolve().parent / "weights"
    return {p.name: _stat(p) for p in sorted(folder.iterdir()) if p.is_file()}


def run_method(m: Method, data: Path, workdir: Path, network_catalog: Path | None, n: int, *,
               reuse: bool = False) -> dict:
    """Run one method's command and time it.

    Parameters
    ----------
    m : Method
    data : Path
        The stamp file.
    workdir : Path
        Folder for the catalog ``<name>.fits`` and its run record ``<name>.run.json``.
    network_catalog : Path or None
        Substituted for ``{network}``.
    n : int
        Number of stamps (for the time per galaxy).
    reuse : bool
        Keep the catalog of an earlier run when its record has the same command line, stamp file,
        network catalog and (for ``galnet predict``) shipped model files (size and modification time),
        with the time recorded then. Changes of galnet's code are not seen: do not reuse across them.

    Returns
    -------
    dict ``{"command", "argv", "wall_s", "ms_per_gal", "rc", "catalog"[, "error"][, "reused"]}``.
    """
    import galnet

    cat = workdir / f"{m.name}.fits"
    record = workdir / f"{m.name}.run.json"
    argv = m.argv(data, cat, network_catalog)
    short = {str(data): "SET", str(cat): cat.name, str(network_catalog): "network.fits"}
    shown = " ".join(shlex.quote(short.get(a, a.replace(str(network_catalog), "network.fits")))
                     for a in ["galnet", *argv[3:]])
    key = {"argv": argv[1:], "data": _stat(data),
           "network": _stat(network_catalog) if m.needs_network else None,
           "models": _model_stats() if "predict" in argv else None}
    if reuse and record.exists() and cat.exists():
        old = json.loads(record.read_text())
        if old.get("key") == key and _stat(cat) == old.get("catalog_stat"):
            print(f"[{m.name}] {shown}\n[{m.name}] reused the catalog of {old['date']} "
                  f"({old['wall_s']:.1f} s then)", flush=True)
            return {"command": shown, "argv": argv[1:], "wall_s": old["wall_s"], "rc": 0,
                    "ms_per_gal": 1e3 * old["wall_s"] / n, "catalog": str(cat), "reused": old["date"],
                    "load": old.get("load")}
    for path in (cat, record):
        if path.exists():
            path.unlink()
    env = dict(os.environ)
    src = str(Path(galnet.__file__).resolve().parent.parent)  # the same galnet as this script
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    print(f"[{m.name}] {shown}", flush=True)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    res = {"command": shown, "argv": argv[1:], "wall_s": wall, "ms_per_gal": 1e3 * wall / n,
           "rc": proc.returncode, "catalog": str(cat), "load": [load0, os.getloadavg()[0]]}
    if proc.returncode != 0 or not cat.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        print(f"[{m.name}] FAILED (exit {proc.returncode}):\n  " + "\n  ".join(tail), flush=True)
        res["error"] = tail[-1] if tail else f"exit {proc.returncode}"
    else:
        print(f"[{m.name}] {wall:.1f} s, {res['ms_per_gal']:.2f} ms/galaxy", flush=True)
        record.write_text(json.dumps({"key": key, "catalog_stat": _stat(cat), "wall_s": wall,
                                      "load": res["load"],
                                      "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}))
    return res


def aligned_column(table, ids: np.ndarray, name: str) -> np.ndarray:
    """Column ``name`` of a catalog table as float64, row ``i`` for ``ids[i]`` (matched on the table's ``id``
    column, else by position); NaN for an id the table lacks."""
    lookup = {str(v).strip(): i for i, v in enumerate(np.asarray(table["id"]))} if "id" in table.colnames \
        else {str(v): i for i, v in enumerate(ids)}
    idx = np.array([lookup.get(str(v).strip(), -1) for v in ids])
    col = np.full(len(ids), np.nan)
    hit = idx >= 0
    col[hit] = np.asarray(table[name], dtype=np.float64)[idx[hit]]
    return col


def read_method(path: str, ids: np.ndarray
                ) -> tuple[np.ndarray, dict[str, np.ndarray] | None, dict, np.ndarray | None]:
    """A catalog's parameters (B, 7), its errors (or None), scalar extras and its fitted sky (B,) (or None:
    no ``sky`` column), aligned with ``ids``."""
    from galnet.catalog import read_table
    from galnet.evaluate.command import load_catalog

    mr = load_catalog("m", path, ids)
    table = read_table(path)

    def column(name):
        return aligned_column(table, ids, name)

    errors = None
    if all(c in table.colnames for c in ERR_COLUMNS.values()):
        errors = {p: column(c) for p, c in ERR_COLUMNS.items()}
    extra = {"median_chi2nu_catalog": float(np.nanmedian(column("chi2nu"))) if "chi2nu" in table.colnames
             else math.nan,
             "flagged_frac": float(np.mean(mr.flags != 0)),
             "tpergal_ms": 1e3 * mr.time_per_galaxy if mr.time_per_galaxy is not None else math.nan,
             "measured_frac": float(np.mean(np.isfinite(mr.params).all(1)))}
    sky = column("sky") if "sky" in table.colnames else None
    return mr.params, errors, extra, sky


# ----------------------------------------------------------------------------- data
def subset_file(path: Path, n: int) -> Path:
    """The first ``n`` rows of a split as a cached file (the file itself when it has exactly ``n``)."""
    import h5py

    from galnet.data import read_arrays, read_meta, write_split

    with h5py.File(path, "r") as f:
        total = len(f["images"])
    if n > total:
        raise ValueError(f"--n {n}: {path} has only {total} stamps")
    if n == total:
        return path
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{n}".encode()).hexdigest()[:10]
    out = CACHE / f"test_n{n}_{key}.h5"
    if not out.exists():
        write_split(out, read_arrays(path, 0, n), {**read_meta(path), "n": n, "subset_of": str(path)})
    return out


def thread_settings(workers: int, threads: int) -> dict:
    """Thread-related settings of this process and of the commands it runs."""
    import torch

    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    return {"cpu_count": os.cpu_count(), "torch_threads_here": torch.get_num_threads(),
            "predict_threads": threads, "fit_workers": workers, **env}


# ----------------------------------------------------------------------------- tables
def _f(v, digits: int = 3) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    return f"{v:.{digits}f}"


def _label(entry: dict, kind: str) -> str:
    lo, hi = entry["lo"], entry["hi"]
    if kind == "nb":
        return f"{lo + 0.5:g}" if np.isfinite(hi) else f"≥ {lo + 0.5:g}"
    if kind == "snr":
        return f"< {hi:g}" if lo == 0 else (f"> {lo:g}" if not np.isfinite(hi) else f"{lo:g}–{hi:g}")
    return f"{lo:g}–{hi:g}"


def key_table(results: dict, names: list[str], kind: str = "mag", references=REFERENCES) -> list[str]:
    """The README table: NMAD of mag, re, n, q per bin, all methods in one cell, then the ratios."""
    head = "/".join(names)
    lines = [f"| {KINDS[kind][0]} | N | "
             + " | ".join(f"{p}: {head}" for p in ("mag", "re", "n", "q"))
             + " | " + " | ".join(f"{p} ratio: {'/'.join(x for x in names if x not in references)}"
                                  for p in ("mag", "re", "n", "q")) + " |",
             "|---|---|" + "---|" * 8]
    ref_bins = results[names[0]]["bins"][kind]
    for b, entry in enumerate(ref_bins):
        cells = [_label(entry, kind), str(entry["n"])]
        for p in ("mag", "re", "n", "q"):
            cells.append(" / ".join(_f(results[m]["bins"][kind][b]["params"][p]["nmad"]) for m in names))
        for p in ("mag", "re", "n", "q"):
            cells.append(" / ".join(_f(results[m]["bins"][kind][b]["params"][p]["ratio"], 2) + "×"
                                    for m in names if m not in references))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def detail_table(results: dict, names: list[str], kind: str, stat: str) -> list[str]:
    """Rows bin × method, one column per parameter: ``stat`` (nmad with its ratio, bias, outlier_frac)."""
    lines = [f"| {KINDS[kind][0]} | method | N | " + " | ".join(PARAMS) + " |",
             "|---|---|---|" + "---|" * len(PARAMS)]
    for b in range(len(results[names[0]]["bins"][kind])):
        for m in names:
            entry = results[m]["bins"][kind][b]
            cells = [_label(entry, kind), m, str(entry["n"])]
            for p in PARAMS:
                st = entry["params"][p]
                if stat == "nmad":
                    ratio = f" ({_f(st.get('ratio'), 2)}×)"
                    cells.append(_f(st["nmad"], 4 if p in ("mag", "x", "y") else 3) + ratio)
                elif stat == "bias":
                    cells.append(f"{st['bias']:+.4f}" if np.isfinite(st["bias"]) else "–")
                elif stat == "outlier_frac":
                    cells.append(_f(100 * st["outlier_frac"], 1))
                else:  # coverage
                    cov = f"{_f(st.get('cov1'), 2)} / {_f(st.get('cov2'), 2)}"
                    cells.append(cov if "cov1" in st else "–")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(meta: dict, results: dict, names: list[str]) -> str:
    """The whole ``limit_<set>.md``."""
    ok = [m for m in names if "bins" in results[m]]
    refs = tuple(meta.get("reference") or REFERENCES)
    lines = [f"# Information-limit benchmark: `{meta['set']}` set", "",
             f"{meta['description']}", "",
             f"{meta['n']} stamps; {meta['date']}; galnet {meta['galnet_version']} (`{meta['git']}`); "
             f"threads: {json.dumps(meta['threads'])}.", "",
             "Command: `" + meta["command"] + "`", "",
             *([meta["note"], ""] if meta.get("note") else []),
             "| method | measured | any flag | median χ²ν (catalog) | median χ²ν (aperture) | wall s "
             "| ms/galaxy | TPERGAL ms | load | command |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m in names:
        r = results[m]
        ms = _f(r["ms_per_gal"], 2) + (f" (+ network = {_f(r['ms_per_gal_total'], 2)})"
                                        if "ms_per_gal_total" in r else "")
        wall = _f(r["wall_s"], 1) + (f" (run {r['reused']})" if "reused" in r else "")
        load = "–" if not r.get("load") else f"{r['load'][0]:.1f}→{r['load'][1]:.1f}"
        lines.append(f"| {m} | {_f(r.get('measured_frac'), 3)} | {_f(r.get('flagged_frac'), 3)} | "
                     f"{_f(r.get('median_chi2nu_catalog'))} | {_f(r.get('median_chi2nu_aperture'))} | "
                     f"{wall} | {ms} | {_f(r.get('tpergal_ms'), 2)} | {load} | `{r['command']}`"
                     + (f" FAILED: {r['error']}" if "error" in r else "") + " |")
    if not ok:
        return "\n".join(lines) + "\n"
    lines += ["", "SET is the stamp file above. ms/galaxy: wall time of the whole command (process start, "
              "model load, reading and writing included) per stamp; TPERGAL: the time per galaxy the catalog "
              "records, where it does (the fit: fitting only); load: the 1-minute load average of the "
              "machine before → after the command (times on a loaded machine are upper bounds). "
              "χ²ν (catalog): what each catalog's `chi2nu` "
              "column says (the fit: its unmasked pixels; predict `--chi2`: the whole stamp, neighbours "
              "included). χ²ν (aperture): each method's model against the stamp over the target's aperture, "
              "the same pixels for every method. any flag: rows with a non-zero `flags` (for the fit "
              "mostly the information flag NEIGHBOURS_MASKED).", ""]
    for kind in results[ok[0]]["bins"]:
        title = KINDS[kind][1]
        lines += [f"## NMAD per bin of {title} (fractional for re, n, q), with the ratio to the reference's",
                  ""]
        run_refs = [f"`{m}`" for m in refs if m in ok]
        if len(run_refs) > 1:
            lines += ["Reference: per bin and parameter, the smaller NMAD of " + " and ".join(run_refs) + ".",
                      ""]
        elif run_refs:
            lines += [f"Reference: {run_refs[0]}.", ""]
        lines += key_table(results, ok, kind, refs) if any(m in ok for m in refs) else []
        lines += ["", "All parameters (x, y in px, pa in degrees for q_true < 0.8; ratio to the reference "
                  "NMAD in brackets):", ""]
        lines += detail_table(results, ok, kind, "nmad") + [""]
        lines += [f"### Bias (median Δ) per bin of {title}", ""]
        lines += detail_table(results, ok, kind, "bias") + [""]
        lines += [f"### Outlier fraction [%] per bin of {title}", ""]
        lines += detail_table(results, ok, kind, "outlier_frac") + [""]
        with_err = [m for m in ok if results[m].get("has_errors")]
        if with_err:
            lines += [f"### Coverage per bin of {title}: fraction with |Δ| < 1·err / < 2·err "
                      "(Gaussian: 0.683 / 0.954)", ""]
            lines += detail_table(results, with_err, kind, "coverage") + [""]
    return "\n".join(lines) + "\n"


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# ----------------------------------------------------------------------------- main
def _git_rev() -> str:
    try:
        return subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _without_note(argv: list[str]) -> list[str]:
    """The command line without ``--note TEXT`` (shown separately)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            out.append(a)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=("galsim", "test"), default="galsim",
                    help="which stamps (default galsim)")
    ap.add_argument("--test", default=None, help="split file of `galnet simulate` (with --set test)")
    ap.add_argument("--n", type=int, default=2000, help="stamps (default 2000)")
    ap.add_argument("--quick", action="store_true", help="300 stamps")
    ap.add_argument("--seed", type=int, default=14, help="seed of the GalSim set")
    ap.add_argument("--model", default="hsc-r", help="network: shipped name or model card (default hsc-r)")
    ap.add_argument("--methods", default=",".join(BUILTIN),
                    help="built-in methods to run, comma-separated (default: all of "
                    + ",".join(BUILTIN) + ")")
    ap.add_argument("--method", action="append", default=[], metavar="NAME=SUBCOMMAND ARGS",
                    help="extra method, e.g. 'refine1=predict --refine 1'; {network} = the network's catalog")
    ap.add_argument("--reference", default=",".join(REFERENCES),
                    help="methods whose NMAD (per bin and parameter, the smallest) the ratios are taken to "
                    f"(default {','.join(REFERENCES)})")
    ap.add_argument("--workers", type=int, default=2, help="galnet fit --workers (default 2)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="galnet predict --threads")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for limit_<set>.md/.json")
    ap.add_argument("--note", default="", help="a line of text for the markdown header (e.g. the load)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep catalogs of an earlier run with the same commands and inputs (and the times "
                    "recorded then), e.g. to remake the tables")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    n = 300 if args.quick else args.n
    if n < 1:
        ap.error(f"--n must be >= 1, got {n}")
    if args.workers < 1 or args.threads < 1:
        ap.error("--workers and --threads must be >= 1")
    names = [s.strip() for s in args.methods.split(",") if s.strip()]
    bad = [s for s in names if s not in BUILTIN]
    if bad:
        ap.error(f"--methods: unknown {', '.join(bad)} (built-ins: {', '.join(BUILTIN)}; "
                 "add others with --method)")
    try:
        methods = builtin_methods(names, args.model, args.workers, args.threads)
        methods += [parse_method(s, args.model) for s in args.method]
    except ValueError as exc:
        ap.error(str(exc))
    all_names = [m.name for m in methods]
    if len(set(all_names)) != len(all_names):
        ap.error(f"method names must be unique, got {all_names}")
    if not methods:
        ap.error("no method to run")
    if any(m.needs_network for m in methods) and "network" not in all_names:
        ap.error("a method uses {network} (e.g. hybrid) but 'network' is not run")
    if args.set == "test" and not args.test:
        ap.error("--set test needs --test PATH (a split written by `galnet simulate`)")
    if args.set == "test" and not Path(args.test).is_file():
        ap.error(f"--test {args.test}: no such file")

    import h5py

    import galnet
    from galnet.evaluate import render_models, residual_statistics
    from galnet.evaluate.command import load_truth

    threads = thread_settings(args.workers, args.threads)
    print(f"galnet {galnet.__version__} from {Path(galnet.__file__).parent}; threads: {json.dumps(threads)}",
          flush=True)
    t0 = time.perf_counter()
    if args.set == "galsim":
        from galsim_set import RECIPE, galsim_set

        data, cached = galsim_set(n, args.seed)
        description = (f"GalSim-rendered HSC r-band-like stamps (`benchmarks/galsim_set.py`, "
                       f"seed {args.seed}, recipe v{RECIPE['version']}): mag 18–24, Re 0.15–2.5″, n 0.4–6, "
                       "q 0.2–1, Moffat / Kolmogorov PSFs FWHM 0.5–1.0″, 0–3 neighbours, "
                       "hsc-r sky noise + Poisson.")
    else:
        data, cached = subset_file(Path(args.test), n), True
        description = f"The first {n} stamps of `{args.test}` (`galnet simulate`)."
    took = time.perf_counter() - t0
    print(f"stamps: {data} ({'cached' if cached else 'made'} in {took:.1f} s)", flush=True)
    workdir = CACHE / f"limit_{args.set}_n{n}"
    workdir.mkdir(parents=True, exist_ok=True)
    truth = load_truth(data)
    if len(truth) != n:
        raise SystemExit(f"error: {data} has {len(truth)} stamps, expected {n}")

    results: dict[str, dict] = {}
    net_cat = None
    for m in methods:
        res = run_method(m, data, workdir, net_cat, n, reuse=args.reuse)
        if m.name == "network" and "error" not in res:
            net_cat = Path(res["catalog"])
        if m.needs_network and "network" in results:
            res["ms_per_gal_total"] = res["ms_per_gal"] + results["network"]["ms_per_gal"]
        results[m.name] = res

    # statistics
    by = {"mag": truth.params[:, INDEX["mag"]], "snr": truth.snr}
    edges = {"mag": MAG_BINS, "snr": SNR_BINS}
    with h5py.File(data, "r") as f:
        if "n_neighbours" in f:
            by["nb"], edges["nb"] = f["n_neighbours"][:].astype(np.float64), NB_BINS
    for res in results.values():
        if "error" in res:
            continue
        params, errors, extra, sky = read_method(res["catalog"], truth.ids)
        res.update(extra)
        res["has_errors"] = errors is not None
        res["bins"] = {k: bin_statistics(truth.params, params, by[k], edges[k], errors=errors) for k in edges}
        models = render_models(params, truth.psfs, shape=truth.images.shape[1:], zeropoint=truth.zeropoint,
                               sky=sky)  # a fitted sky is part of the method's model
        stats = residual_statistics(truth.images, models, truth.sigma, params)
        res["median_chi2nu_aperture"] = float(np.nanmedian(stats["chi2nu_ap"]))
    references = tuple(s.strip() for s in args.reference.split(",") if s.strip())
    refs = [results[m] for m in references if m in results and "bins" in results[m]]
    for res in results.values():
        if "bins" in res:
            for k in edges:
                add_ratios(res["bins"][k], reference_nmad([r["bins"][k] for r in refs]))

    meta = {"set": args.set, "n": n, "data": str(data), "description": description, "note": args.note,
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "galnet_version": galnet.__version__, "git": _git_rev(), "threads": threads,
            "command": "python benchmarks/limit.py " + " ".join(shlex.quote(a) for a in _without_note(
                argv if argv is not None else sys.argv[1:])),
            "bins": {k: [b if np.isfinite(b) else None for b in e] for k, e in edges.items()},
            "reference": list(references)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(meta, results, all_names)
    (out / f"limit_{args.set}.md").write_text(md)
    (out / f"limit_{args.set}.json").write_text(json.dumps(_json_safe({"meta": meta, "methods": results}),
                                                          indent=1))
    print()
    lines = md.splitlines()
    first = [i for i, line in enumerate(lines) if line.startswith("## ")]
    print("\n".join(lines[:first[0]] if first else lines))
    ok = [m for m in all_names if "bins" in results[m]]
    if any(m in ok for m in references):
        print("\n".join(key_table(results, ok, "mag", references) + [""]
                        + key_table(results, ok, "snr", references)))
    print(f"\nwrote {out / f'limit_{args.set}.md'} and .json")
    summary = {"benchmark": "limit", "set": args.set, "n": n, "methods": {}}
    for name, res in results.items():
        s = {k: res.get(k) for k in ("ms_per_gal", "ms_per_gal_total", "median_chi2nu_catalog",
                                      "median_chi2nu_aperture", "error") if k in res}
        if "bins" in res:
            s["nmad_mag_bins"] = {p: [b["params"][p]["nmad"] for b in res["bins"]["mag"]] for p in PARAMS}
            s["ratio_mag_bins"] = {p: [b["params"][p]["ratio"] for b in res["bins"]["mag"]] for p in PARAMS}
        summary["methods"][name] = s
    print(json.dumps(_json_safe(summary)))
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
