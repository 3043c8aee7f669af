"""Where refined errors miss: coverage by row type, and whether a per-cell rescaling can meet the goal.

The error goal of the network issue asks, in every magnitude bin and for every parameter, for 63–73 % of
the truths within 1 err and 93–97 % within 2 err: the fractions of a Gaussian. This script takes a
``galnet predict --refine K`` catalog and the truth of its stamps and measures

1. the fraction within 1 / 2 err of the rows with and without masked neighbours (``n_masked``) and with
   χ²ν below and above 1.1 — the observables a calibration could use;
2. the best any rescaling by those observables can do: per cell (``n_masked > 0`` × χ²ν bin × bin of
   the *measured* magnitude) and parameter, the factor that puts 68.3 % of ``|Δ| / err`` below 1 is
   fitted on the even rows and applied to the odd rows, whose coverage per magnitude bin is then
   counted against the goal. If the normalised errors within a cell have heavier tails than a
   Gaussian, 2 err then covers less than 93 % and no per-row Gaussian error meets both goals;
3. with the network's own errors (``--network-catalog``, a ``--refine 0`` catalog of the same stamps; run
   here when the refined catalog is), candidate blend rules: the fit's errors are recovered from the
   catalog (the shipped rule adds the network's error in quadrature on rows with ``n_masked > 0``) and the
   network's error is added with the weight ``clip((χ²ν − 1) / s, 0, 1)`` instead, on every row or only
   where ``n_masked > 0``. For each rule: the
   cells within the goal and, per row type, the 68.3 % quantile of |Δmag| / err (1 when calibrated).

Usage::

    python benchmarks/coverage_cells.py --truth data/hsc200/val.h5 --n 6000 --out FILE.md
    python benchmarks/coverage_cells.py --truth STAMPS.h5 --catalog refined.fits

Without ``--catalog`` it runs ``galnet predict SUBSET --refine 5`` (the default refinement; the first
``--n`` rows, cached under ``benchmarks/.cache``) itself.

Use it on a validation split: the rescaling is a choice. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from _common import emit
from limit import (
    CACHE,
    INDEX,
    MAG_BINS,
    absolute_deltas,
    aligned_column,
    bin_index,
    coverage,
    read_method,
    subset_file,
)

#: Parameters counted against the goal (as the README's coverage table).
GOAL_PARAMS = ("mag", "re", "n", "q")
#: ``s`` of the χ²ν-weighted blend rules compared with the shipped one.
CHI2_RULE_SCALES = (0.05, 0.1, 0.2, 0.5)
#: Row types of the rule comparison: (name, masked neighbours?, χ²ν range, brightest measured magnitude).
ROW_TYPES = (("masked, χ²ν < 1.05, mag < 20", True, (-math.inf, 1.05), 20.0),
             ("masked, χ²ν < 1.05", True, (-math.inf, 1.05), math.inf),
             ("masked, χ²ν > 1.2", True, (1.2, math.inf), math.inf),
             ("unmasked, χ²ν < 1.05", False, (-math.inf, 1.05), math.inf),
             ("unmasked, χ²ν > 1.2", False, (1.2, math.inf), math.inf))
#: χ²ν edges of the rescaling cells (× ``n_masked > 0`` or not × the measured-magnitude bin: 36 cells).
CHI2_EDGES = (1.05, 1.2)
GOAL_1, GOAL_2 = (0.63, 0.73), (0.93, 0.97)


def _fractions(delta: np.ndarray, err: np.ndarray) -> tuple[float, float]:
    return coverage(delta, err, 1.0), coverage(delta, err, 2.0)


def split_coverage(delta: dict, err: dict, groups: dict[str, np.ndarray]) -> dict:
    """Fraction within 1 and 2 err per group of rows and parameter: ``{group: {param: [f1, f2, n]}}``."""
    return {name: {p: [*_fractions(delta[p][rows], err[p][rows]), int(rows.sum())] for p in INDEX}
            for name, rows in groups.items()}


def rescaled_coverage(delta: dict, err: dict, cells: np.ndarray, mag_bin: np.ndarray, fit_rows: np.ndarray
                      ) -> dict:
    """Coverage of the rows not in ``fit_rows`` per magnitude bin after a per-cell, per-parameter rescaling.

    Returns ``{param: {"scales": [...], "tail_ratio": r, "bins": [[f1, f2], ...]}}``: ``r`` is the 95.4 %
    quantile of the test rows' ``|Δ| / err`` over their 68.3 % quantile (2 for a Gaussian). A cell with
    fewer than 20 fitted rows keeps its errors, as do rows in a negative cell (all −1: no rescaling).
    """
    out = {}
    test = ~fit_rows
    for p in INDEX:
        z = np.abs(delta[p]) / err[p]
        scaled = err[p].copy()
        scales = []
        for c in range(int(cells.max()) + 1):
            rows = fit_rows & (cells == c) & np.isfinite(z)
            s = float(np.quantile(z[rows], 0.683)) if rows.sum() >= 20 else 1.0
            scales.append(s)
            scaled[cells == c] *= s
        zs = np.abs(delta[p][test]) / scaled[test]
        zs = zs[np.isfinite(zs)]
        tail = float(np.quantile(zs, 0.954) / np.quantile(zs, 0.683)) if zs.size else math.nan
        out[p] = {"scales": scales, "tail_ratio": tail,
                  "bins": [list(_fractions(delta[p][test & (mag_bin == k)], scaled[test & (mag_bin == k)]))
                           for k in range(len(MAG_BINS) - 1)]}
    return out


def compare_blend_rules(delta: dict, err: dict, net_err: dict, n_masked: np.ndarray, chi2: np.ndarray,
                        mag_bin: np.ndarray, mag: np.ndarray) -> dict:
    """Goal counts and per-row-type calibration of the shipped blend rule and χ²ν-weighted ones.

    ``err`` are the catalog's errors (the shipped rule: ``sqrt(fit² + net²)`` where ``n_masked > 0``);
    ``net_err`` the network's; ``mag`` the measured magnitudes.
    Returns ``{rule: {"goal": [n1, n2], "types": {name: [q68, N]}}}``.
    """
    masked = n_masked > 0
    net = {p: np.where(np.isfinite(net_err[p]), net_err[p], 0.0) for p in INDEX}
    fit = {p: np.where(masked, np.sqrt(np.clip(err[p] ** 2 - net[p] ** 2, 0.0, None)), err[p])
           for p in INDEX}
    rules = {"shipped: + net where n_masked > 0": err}
    for s in CHI2_RULE_SCALES:
        w = np.where(np.isfinite(chi2), np.clip((chi2 - 1.0) / s, 0.0, 1.0), 0.0)
        rules[f"+ net · clip((χ²ν − 1) / {s}, 0, 1)"] = {p: np.sqrt(fit[p] ** 2 + w * net[p] ** 2)
                                                         for p in INDEX}
        wm = w * masked
        rules[f"+ net · clip((χ²ν − 1) / {s}, 0, 1) where n_masked > 0"] = {
            p: np.sqrt(fit[p] ** 2 + wm * net[p] ** 2) for p in INDEX}
    out = {}
    for name, e in rules.items():
        res = {p: {"bins": [list(_fractions(delta[p][mag_bin == k], e[p][mag_bin == k]))
                            for k in range(len(MAG_BINS) - 1)]} for p in GOAL_PARAMS}
        types = {}
        for tname, is_masked, (lo, hi), brightest in ROW_TYPES:
            rows = ((n_masked > 0) == is_masked) & (chi2 > lo) & (chi2 < hi) & (mag < brightest)
            z = np.abs(delta["mag"][rows]) / e["mag"][rows]
            z = z[np.isfinite(z)]
            types[tname] = [float(np.quantile(z, 0.683)) if z.size >= 10 else math.nan, int(rows.sum())]
        out[name] = {"goal": _goal_counts(res), "types": types}
    return out


def _shown(path: str | Path) -> str:
    """A path as the markdown shows it: relative to the working directory when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _in(v: float, lo_hi: tuple[float, float]) -> bool:
    return math.isfinite(v) and lo_hi[0] <= v <= lo_hi[1]


def markdown(split: dict, before: dict, after: dict, meta: dict, rules: dict | None = None) -> str:
    bins = [f"{MAG_BINS[k]:g}–{MAG_BINS[k + 1]:g}" for k in range(len(MAG_BINS) - 1)]
    lines = [f"# Coverage of refined errors by row type: `{meta['truth']}`", "",
             f"Command: `{meta['command']}`; catalog `{meta['catalog']}` ({meta['catalog_command']}), "
             f"{meta['n']} rows. Fraction of |Δ| < 1 err / < 2 err (goal 0.63–0.73 / 0.93–0.97).", "",
             "| rows | N | " + " | ".join(INDEX) + " |", "|---|---|" + "---|" * len(INDEX)]
    for name, per in split.items():
        n = next(iter(per.values()))[2]
        lines.append(f"| {name} | {n} | " + " | ".join(f"{per[p][0]:.2f} / {per[p][1]:.2f}" for p in INDEX)
                     + " |")
    lines += ["", "Odd rows per magnitude bin, as catalogued and after rescaling each cell "
              f"(n_masked > 0 or not × χ²ν split at {', '.join(map(str, CHI2_EDGES))} × bin of the "
              "catalogued magnitude, outside the bins as one more) so that 68.3 % of "
              "the even rows' |Δ| / err are below 1; cells within the goal out of "
              f"{len(GOAL_PARAMS)} × {len(bins)} (mag, re, n, q):", "",
              "| parameter | " + " | ".join(bins) + " |", "|---|" + "---|" * len(bins)]
    for label, res in (("as catalogued", before), ("rescaled per cell", after)):
        for p in GOAL_PARAMS:
            lines.append(f"| {p}, {label} | " + " | ".join(f"{a:.2f} / {b:.2f}" for a, b in res[p]["bins"])
                         + " |")
    lines += ["", "95.4 % over 68.3 % quantile of |Δ| / err (2.0 for Gaussian errors), as catalogued / "
              "rescaled: "
              + ", ".join(f"{p} {before[p]['tail_ratio']:.2f} / {after[p]['tail_ratio']:.2f}"
                          for p in GOAL_PARAMS) + "."]
    lines += ["", f"Within the goal, 1 err / 2 err: as catalogued {meta['goal_before'][0]} / "
              f"{meta['goal_before'][1]}, rescaled {meta['goal_after'][0]} / {meta['goal_after'][1]} "
              f"(of {len(GOAL_PARAMS) * len(bins)})."]
    if rules:
        names = [t[0] for t in ROW_TYPES]
        lines += ["", f"Blend rules (all rows; network errors from `{meta['network_catalog']}`): cells "
                  "within the goal (1σ / 2σ, of 20) and, per row type, the 68.3 % quantile of |Δmag| / err "
                  "(N):", "",
                  "| rule | goal | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for name, r in rules.items():
            lines.append(f"| {name} | {r['goal'][0]} / {r['goal'][1]} | "
                         + " | ".join(f"{r['types'][t][0]:.2f} ({r['types'][t][1]})" for t in names) + " |")
    return "\n".join(lines) + "\n"


def _goal_counts(res: dict) -> list[int]:
    cells = [res[p]["bins"][k] for p in GOAL_PARAMS for k in range(len(res[p]["bins"]))]
    return [sum(_in(a, GOAL_1) for a, _ in cells), sum(_in(b, GOAL_2) for _, b in cells)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--truth", required=True, help="HDF5 stamps with params and ids (galnet simulate)")
    ap.add_argument("--catalog", default=None,
                    help="galnet predict --refine K catalog of those stamps (default: run --refine 5)")
    ap.add_argument("--n", type=int, default=None, help="use the first N stamps of --truth")
    ap.add_argument("--network-catalog", default=None,
                    help="galnet predict --refine 0 catalog of the stamps, to compare blend rules")
    ap.add_argument("--out", default=None, help="markdown file to write (and the JSON beside it)")
    args = ap.parse_args(argv)
    truth_path = Path(args.truth)
    if args.n is not None:
        truth_path = subset_file(truth_path, args.n)
    catalog_command = "given"
    if args.catalog is None:
        args.catalog = _shown(CACHE / f"{truth_path.stem}_refine5.fits")
        cmd = ["galnet", "predict", _shown(truth_path), "-o", args.catalog, "--refine", "5", "--no-progress"]
        catalog_command = f"`{shlex.join(cmd)}`"
        Path(args.catalog).unlink(missing_ok=True)
        subprocess.run(cmd, check=True)
        if args.network_catalog is None:
            args.network_catalog = _shown(CACHE / f"{truth_path.stem}_network.fits")
            Path(args.network_catalog).unlink(missing_ok=True)
            subprocess.run(["galnet", "predict", _shown(truth_path), "-o", args.network_catalog,
                            "--refine", "0", "--no-progress"], check=True)
    with h5py.File(truth_path, "r") as f:
        truth = np.asarray(f["params"], dtype=np.float64)
        ids = np.asarray(f["ids"]).astype(str)
    est, errors, _, _ = read_method(args.catalog, ids)
    if errors is None:
        raise SystemExit(f"{args.catalog}: no <column>_err columns")
    from galnet.catalog import read_table

    table = read_table(args.catalog)
    if "n_masked" not in table.colnames or "chi2nu" not in table.colnames:
        raise SystemExit(f"{args.catalog}: needs n_masked and chi2nu (a galnet predict --refine catalog)")
    n_masked = aligned_column(table, ids, "n_masked")
    chi2 = aligned_column(table, ids, "chi2nu")
    delta = absolute_deltas(truth, est)
    err = {p: np.asarray(errors[p], dtype=np.float64) for p in INDEX}
    split = split_coverage(delta, err, {
        "all": np.ones(len(ids), bool), "n_masked = 0": n_masked == 0, "n_masked > 0": n_masked > 0,
        "χ²ν < 1.1": chi2 < 1.1, "χ²ν ≥ 1.1": chi2 >= 1.1})
    mag_bin = bin_index(truth[:, INDEX["mag"]], MAG_BINS)
    measured_bin = bin_index(est[:, INDEX["mag"]], MAG_BINS) + 1  # 0: outside the bins
    cells = (((n_masked > 0).astype(int) * (len(CHI2_EDGES) + 1) + np.digitize(chi2, CHI2_EDGES))
             * len(MAG_BINS) + measured_bin)
    even = np.arange(len(ids)) % 2 == 0
    # "as catalogued": no cell rescaled, on the same odd rows as the rescaled figures
    before = rescaled_coverage(delta, err, np.full(len(ids), -1), mag_bin, even)
    after = rescaled_coverage(delta, err, cells, mag_bin, even)
    rules = None
    if args.network_catalog:
        _, net_errors, _, _ = read_method(args.network_catalog, ids)
        if net_errors is None:
            raise SystemExit(f"{args.network_catalog}: no <column>_err columns")
        net = {p: np.asarray(net_errors[p], dtype=np.float64) for p in INDEX}
        rules = compare_blend_rules(delta, err, net, n_masked, chi2, mag_bin, est[:, INDEX["mag"]])
    meta = {"catalog": args.catalog, "catalog_command": catalog_command, "truth": args.truth, "n": len(ids),
            "network_catalog": args.network_catalog,
            "command": shlex.join(["python", "benchmarks/coverage_cells.py", *(argv or sys.argv[1:])]),
            "goal_before": _goal_counts(before), "goal_after": _goal_counts(after)}
    text = markdown(split, before, after, meta, rules)
    print(text)
    res = {"benchmark": "coverage_cells", **meta, "split": split,
           "as_catalogued": {p: before[p]["bins"] for p in INDEX}, "rescaled": after, "blend_rules": rules}
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    emit(json.loads(json.dumps(res)))
    return res


if __name__ == "__main__":
    main()
