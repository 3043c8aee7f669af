"""Evaluate measurement methods against a truth set and write the report folder.

:func:`evaluate_methods` computes, for every method (network, fit, hybrid, GALFIT ...), the
accuracy metrics of :mod:`galnet.train.metrics` (R², bias, NMAD, outlier fractions; overall, in
bins of true magnitude and of S/N, and on the rows every method measured), the model images
(:func:`galnet.render.render_sersic`), χ²ν and the residual statistics and flags of
:mod:`galnet.evaluate.residuals`. :func:`write_report` writes::

    <out>/metrics.json      everything above (NaN written as null)
    <out>/report.md         summary tables + figure links
    <out>/report.html       the same, self-contained apart from the PNGs
    <out>/figures/*.png     hexbin true vs predicted (per method), error vs magnitude, outlier
                            fraction vs S/N, χ²ν distributions, time per galaxy, and mosaics of
                            image / model / residual for typical and for worst galaxies (per method)
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..conventions import DEFAULT_ZEROPOINT, HSC_PIXEL_SCALE, wrap_pa
from ..errors import InputDataError
from ..flags import Flag, any_set
from ..params import IX_MAG, IX_N, IX_RE, N_PARAMS, PARAMETER_NAMES, PARAMETERS
from ..train.metrics import binned_metrics, regression_metrics
from .residuals import (
    DEFAULT_THRESHOLDS,
    STATISTICS,
    ResidualThresholds,
    noise_sigma,
    render_models,
    residual_flags,
    residual_statistics,
)

__all__ = [
    "TruthSet",
    "MethodResult",
    "MethodEvaluation",
    "Evaluation",
    "evaluate_methods",
    "write_report",
    "summary_rows",
    "format_summary",
    "MAG_BINS",
    "SNR_BINS",
    "FIGURE_NAMES",
]

#: Bins of true magnitude for "error vs magnitude" (hsc-r prior: 17-24).
MAG_BINS: tuple[float, ...] = (17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0, 24.0)
#: Bins of S/N for "outlier fraction vs S/N".
SNR_BINS: tuple[float, ...] = (0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 1e9)
#: Parameters shown in the summary (PA metrics need q_true < 0.8; see galnet.train.metrics).
_SUMMARY_PARAMS = PARAMETER_NAMES
#: Parameters with an R² (PA, cyclic, has none).
_R2_PARAMS = tuple(p.name for p in PARAMETERS if p.cyclic_period is None)


@dataclass
class TruthSet:
    """The stamps and their true parameters (the HDF5 schema of :mod:`galnet.data.h5`).

    Attributes
    ----------
    ids : ndarray (B,)
    images : ndarray (B, H, W), counts
    psfs : ndarray (B, P, P)
    sky_sigma : ndarray (B,), counts / px
    params : ndarray (B, 7), true parameters
    snr : ndarray (B,)
    sigma : ndarray (B, H, W), 1-σ noise (``sigma_maps`` or the schema's formula)
    zeropoint, gain, pixel_scale : float
    """

    ids: np.ndarray
    images: np.ndarray
    psfs: np.ndarray
    sky_sigma: np.ndarray
    params: np.ndarray
    snr: np.ndarray
    sigma: np.ndarray
    zeropoint: float = DEFAULT_ZEROPOINT
    gain: float | None = None
    pixel_scale: float = HSC_PIXEL_SCALE

    @classmethod
    def from_arrays(cls, arrays: dict, *, zeropoint: float = DEFAULT_ZEROPOINT, gain: float | None = None,
                    pixel_scale: float = HSC_PIXEL_SCALE, models=None) -> TruthSet:
        """Build from :func:`galnet.data.read_arrays` / :func:`galnet.simulate.generate_batch` output.

        Without ``sigma_maps`` the σ map is ``sqrt(sky_sigma² + max(model, 0)/gain)`` with
        ``model`` the noise-free truth (``models`` if given, else rendered from ``params``).
        """
        images = np.asarray(arrays["images"], dtype=np.float64)
        params = np.asarray(arrays["params"], dtype=np.float64)
        psfs = np.asarray(arrays["psfs"], dtype=np.float64)
        sky = np.asarray(arrays["sky_sigma"], dtype=np.float64)
        b = len(images)
        if "sigma_maps" in arrays:
            sigma = np.asarray(arrays["sigma_maps"], dtype=np.float64)
        else:
            if models is None:
                models = arrays.get("models")
            if models is None:
                models = render_models(params, psfs, shape=images.shape[1:], zeropoint=zeropoint)
            sigma = noise_sigma(models, sky, gain)
        ids = np.asarray(arrays.get("ids", np.arange(b)))
        snr = np.asarray(arrays.get("snr", np.full(b, np.nan)), dtype=np.float64)
        return cls(ids=ids, images=images, psfs=psfs, sky_sigma=sky, params=params, snr=snr, sigma=sigma,
                   zeropoint=float(zeropoint), gain=None if gain is None else float(gain),
                   pixel_scale=float(pixel_scale))

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class MethodResult:
    """One method's measurements, aligned row by row with a :class:`TruthSet`.

    Attributes
    ----------
    name : str
    params : ndarray (B, 7), NaN where the method did not measure the galaxy
    flags : ndarray of int64 (B,), the method's own flags (0 if unknown)
    time_per_galaxy : float or None, seconds of wall time per galaxy
    source : str, where it came from (a file path), for the report
    errors : ndarray (B, 7) or None, the method's 1-sigma errors in catalog units (``<col>_err``)
    network_only : bool, the rows are a network's answers without a fit (``galnet predict --refine 0``):
        their ``NON_SERSIC`` / ``HIGH_CHI2`` are judged on a :data:`JUDGE_REFINE_STEPS`-step refinement of
        them, so that the flags describe the galaxy, not the network's imprecision
    sky : ndarray (B,) or None, counts / px: the constant sky the method fitted with each galaxy (a
        catalog's ``sky`` column: ``galnet predict --refine K``, ``galnet fit --fit-sky``), part of its
        model image; NaN rows and None: no sky
    """

    name: str
    params: np.ndarray
    flags: np.ndarray | None = None
    time_per_galaxy: float | None = None
    source: str = ""
    errors: np.ndarray | None = None
    network_only: bool = False
    sky: np.ndarray | None = None


#: LM steps from a network-only answer before its residuals are judged (``NON_SERSIC``, ``HIGH_CHI2``):
#: on real HSC galaxies 5 steps reach the fitter's median χ²ν (benchmarks/results/real_hsc.md).
JUDGE_REFINE_STEPS = 5


def judged_params(truth: TruthSet, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A network's answers refined by :data:`JUDGE_REFINE_STEPS` LM steps on the truth stamps (neighbours
    masked, σ of the stamps, a constant sky fitted as ``galnet predict --refine`` does), for judging
    residuals: parameters (B, 7) and sky (B,) counts / px; rows that do not refine keep their values
    (sky NaN)."""
    from ..fit import Refiner

    p = np.array(params, dtype=np.float64, copy=True)
    sky = np.full(len(p), np.nan)
    rows = np.flatnonzero(np.isfinite(p).all(axis=1))
    if rows.size:
        res, _ = Refiner(JUDGE_REFINE_STEPS, finish_chi2=None)(truth.images[rows], truth.psfs[rows], p[rows],
                                             sigma=truth.sigma[rows], zeropoint=truth.zeropoint)
        good = np.isfinite(res.params).all(axis=1)
        p[rows[good]] = res.params[good]
        sky[rows[good]] = res.sky[good]
    return p, sky



@dataclass
class MethodEvaluation:
    """What :func:`evaluate_methods` computes for one method (arrays are (B,) over all truth rows)."""

    name: str
    params: np.ndarray
    rows: np.ndarray
    metrics: dict
    metrics_common: dict
    binned_mag: list
    binned_snr: list
    stats: dict[str, np.ndarray]
    residual_flags: np.ndarray
    method_flags: np.ndarray
    time_per_galaxy: float | None
    source: str
    models: np.ndarray = field(repr=False, default=None)
    coverage: dict | None = None

    def summary(self) -> dict:
        """Scalar summary: n, medians of the statistics, flag fractions, time per galaxy."""
        r = self.rows
        out = {"n": int(r.sum()), "time_per_galaxy_s": self.time_per_galaxy, "source": self.source}
        for k in STATISTICS:
            v = self.stats[k][r]
            v = v[np.isfinite(v)]
            out[f"{k}_median"] = float(np.median(v)) if v.size else math.nan
        for flag in (Flag.NON_SERSIC, Flag.HIGH_CHI2):
            frac = float(any_set(self.residual_flags[r], flag).mean()) if r.any() else math.nan
            out[f"{flag.name.lower()}_frac"] = frac
        return out


@dataclass
class Evaluation:
    """Result of :func:`evaluate_methods`."""

    truth: TruthSet
    methods: dict[str, MethodEvaluation]
    common_rows: np.ndarray
    truth_stats: dict[str, np.ndarray]
    thresholds: ResidualThresholds

    def to_dict(self) -> dict:
        """JSON-ready dict (no per-stamp arrays except the flags' fractions)."""
        return {
            "n_truth": len(self.truth),
            "n_common": int(self.common_rows.sum()),
            "thresholds": self.thresholds.to_dict(),
            "truth_model": {f"{k}_median": _nanmedian(self.truth_stats[k]) for k in STATISTICS},
            "metric_definitions": "galnet.train.metrics (outlier thresholds: OUTLIER_THRESHOLDS)",
            "methods": {
                name: {**m.summary(), "metrics": m.metrics, "metrics_common": m.metrics_common,
                       "binned_true_mag": m.binned_mag, "binned_snr": m.binned_snr}
                for name, m in self.methods.items()
            },
        }


def _nanmedian(v) -> float:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else math.nan


def evaluate_methods(truth: TruthSet, methods: list[MethodResult], *,
                     thresholds: ResidualThresholds = DEFAULT_THRESHOLDS,
                     progress: bool = False) -> Evaluation:
    """Metrics, model images, χ²ν and residual statistics of every method against the truth.

    Rows whose true parameters are NaN (real galaxies: a "truth" file of real stamps) get no accuracy metrics;
    their χ²ν, residual statistics and mosaics are computed as for the others.

    Parameters
    ----------
    truth : TruthSet
    methods : list of MethodResult
        Each aligned with ``truth`` (NaN rows = not measured; metrics use the measured rows).
    thresholds : ResidualThresholds
        For the ``NON_SERSIC`` / ``HIGH_CHI2`` flags.
    progress : bool
        Show a tqdm bar over methods.

    Returns
    -------
    Evaluation

    Raises
    ------
    InputDataError
        A method's parameter array does not match the truth, or two methods share a name.
    """
    from tqdm.auto import tqdm

    b = len(truth)
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise InputDataError(f"method names must be unique, got {names}")
    for m in methods:
        if np.shape(m.params) != (b, N_PARAMS):
            raise InputDataError(f"method {m.name!r}: params shape {np.shape(m.params)}, "
                                 f"expected ({b}, {N_PARAMS})")
    shape = truth.images.shape[1:]
    has_truth = np.isfinite(np.asarray(truth.params, dtype=np.float64)).all(1)
    rows = {m.name: np.isfinite(np.asarray(m.params, dtype=np.float64)).all(1) for m in methods}
    common = np.logical_and.reduce(list(rows.values())) if methods else np.zeros(b, dtype=bool)
    truth_models = render_models(truth.params, truth.psfs, shape=shape, zeropoint=truth.zeropoint)
    truth_stats = residual_statistics(truth.images, truth_models, truth.sigma, truth.params)
    out: dict[str, MethodEvaluation] = {}
    for m in tqdm(methods, desc="evaluate", unit="method", disable=not progress):
        p = np.asarray(m.params, dtype=np.float64).copy()
        r = rows[m.name]
        models = render_models(p, truth.psfs, shape=shape, zeropoint=truth.zeropoint, sky=m.sky)
        stats = residual_statistics(truth.images, models, truth.sigma, p)
        rflags = residual_flags(stats, thresholds)
        if m.network_only:  # the flags describe the galaxy: judged on a short refinement of the answer
            pj, sky_j = judged_params(truth, p)
            mj = render_models(pj, truth.psfs, shape=shape, zeropoint=truth.zeropoint, sky=sky_j)
            rflags = residual_flags(residual_statistics(truth.images, mj, truth.sigma, pj), thresholds)
        t, q = truth.params, p
        rt = r & has_truth  # accuracy needs a truth: real galaxies have none (χ²ν and residuals only)
        ct = common & has_truth
        out[m.name] = MethodEvaluation(
            name=m.name, params=p, rows=r,
            metrics=regression_metrics(t[rt], q[rt]) if rt.any() else {},
            metrics_common=regression_metrics(t[ct], q[ct]) if ct.any() else {},
            binned_mag=binned_metrics(t[rt], q[rt], t[rt, IX_MAG], MAG_BINS) if rt.any() else [],
            binned_snr=binned_metrics(t[rt], q[rt], truth.snr[rt], SNR_BINS)
            if rt.any() and np.isfinite(truth.snr[rt]).all() else [],
            stats=stats, residual_flags=rflags,
            method_flags=np.zeros(b, dtype=np.int64) if m.flags is None
            else np.asarray(m.flags, dtype=np.int64),
            time_per_galaxy=m.time_per_galaxy, source=m.source, models=models,
            coverage=_coverage(t, q, m.errors, rt),
        )
    return Evaluation(truth=truth, methods=out, common_rows=common, truth_stats=truth_stats,
                      thresholds=thresholds)


def _coverage(truth: np.ndarray, params: np.ndarray, errors, rows: np.ndarray) -> dict | None:
    """Fractions within 1 and 2 sigma per magnitude bin of a method's errors (galnet.train.coverage)."""
    if errors is None or not rows.any():
        return None
    from ..train import coverage

    err = np.asarray(errors, dtype=np.float64)[rows]
    if not np.isfinite(err).any():
        return None
    return coverage(truth[rows], params[rows], err, mag_bins=MAG_BINS)


#: Name of the method whose NMAD the others are divided by in the report (the exact fitter, when run).
REFERENCE_METHODS = ("fit", "fitter")


def nmad_ratio_rows(ev: Evaluation, params=("mag", "re", "n", "q")) -> tuple[str | None, list[list]]:
    """Per method and true-magnitude bin, each parameter's NMAD divided by the reference method's.

    The reference is the first of :data:`REFERENCE_METHODS` present (the exact fitter: what the pixels
    hold); ``(None, [])`` without one. Rows: ``[method, "lo–hi", ratio, ...]``.
    """
    ref = next((n for n in REFERENCE_METHODS if n in ev.methods), None)
    if ref is None:
        return None, []
    ref_bins = {(b["lo"], b["hi"]): b["metrics"] for b in ev.methods[ref].binned_mag}
    rows = []
    for name, m in ev.methods.items():
        if name == ref:
            continue
        for b in m.binned_mag:
            rm = ref_bins.get((b["lo"], b["hi"]))
            if not b["metrics"] or not rm:
                continue
            ratios = []
            for p in params:
                num, den = b["metrics"].get(p, {}).get("nmad"), rm.get(p, {}).get("nmad")
                ok = num is not None and den and math.isfinite(num) and math.isfinite(den)
                ratios.append(num / den if ok else math.nan)
            rows.append([name, f"{b['lo']:g}–{b['hi']:g}", *ratios])
    return ref, rows


# ----------------------------------------------------------------------------- tables
def summary_rows(ev: Evaluation) -> list[dict]:
    """One dict per method: n, R² and outlier fraction per parameter, any-outlier fraction,
    median χ²ν, NON_SERSIC fraction, time per galaxy (ms)."""
    rows = []
    for name, m in ev.methods.items():
        s = m.summary()
        row: dict = {"method": name, "n": s["n"]}
        for p in _SUMMARY_PARAMS:
            d = m.metrics.get(p, {})
            row[f"R2_{p}"] = d.get("r2", math.nan)
            row[f"out_{p}"] = d.get("outlier_frac", math.nan)
        row["out_any"] = m.metrics.get("all", {}).get("outlier_frac", math.nan)
        row["chi2nu_med"] = s["chi2nu_median"]
        row["non_sersic"] = s["non_sersic_frac"]
        row["ms_per_gal"] = math.nan if m.time_per_galaxy is None else 1e3 * m.time_per_galaxy
        rows.append(row)
    return rows


def _fmt(v, digits: int = 3) -> str:
    """Table cell: integers as is, floats with ``digits`` decimals (scientific when large or tiny)."""
    if v is None:
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if not math.isfinite(v):
        return "–"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 10.0 ** -digits):
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}f}"


def _tables(ev: Evaluation) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the report tables."""
    srows = summary_rows(ev)
    params = list(_SUMMARY_PARAMS)
    t_r2 = ("R² per parameter (x, y, mag, q linear; re, n in log10; PA has none)",
            ["method", "n", *_R2_PARAMS],
            [[r["method"], str(r["n"]), *[_fmt(r[f"R2_{p}"]) for p in _R2_PARAMS]] for r in srows])
    t_out = ("Outlier fraction per parameter (thresholds of galnet.train.metrics; PA only for q_true < 0.8)",
             ["method", "n", *params, "any"],
             [[r["method"], str(r["n"]), *[_fmt(r[f"out_{p}"]) for p in params], _fmt(r["out_any"])]
              for r in srows])
    t_sum = ("χ²ν, flags and cost",
             ["method", "n", "median χ²ν", "median χ²ν (aperture)", "median RFF", "NON_SERSIC", "HIGH_CHI2",
              "ms / galaxy"],
             [])
    for name, m in ev.methods.items():
        s = m.summary()
        t_sum[2].append([name, str(s["n"]), _fmt(s["chi2nu_median"]), _fmt(s["chi2nu_ap_median"]),
                         _fmt(s["rff_median"]), _fmt(s["non_sersic_frac"]), _fmt(s["high_chi2_frac"]),
                         _fmt(None if m.time_per_galaxy is None else 1e3 * m.time_per_galaxy)])
    t_sum[2].append(["(truth model)", str(len(ev.truth)), _fmt(_nanmedian(ev.truth_stats["chi2nu"])),
                     _fmt(_nanmedian(ev.truth_stats["chi2nu_ap"])), _fmt(_nanmedian(ev.truth_stats["rff"])),
                     "–", "–", "–"])
    t_detail = ("Bias and NMAD per parameter (Δ as in galnet.train.metrics: x, y px; mag; re, n, q relative; "
                "PA deg)", ["method", *[f"{p} bias / NMAD" for p in params]], [])
    for name, m in ev.methods.items():
        t_detail[2].append([name, *[f"{_fmt(m.metrics.get(p, {}).get('bias'))} / "
                                    f"{_fmt(m.metrics.get(p, {}).get('nmad'))}" for p in params]])
    tables = [t_r2, t_out, t_sum, t_detail]
    if len(ev.methods) > 1 and ev.common_rows.any():
        t_common = (f"On the {int(ev.common_rows.sum())} galaxies every method measured: outlier fraction "
                    "and R²",
                    ["method", *[f"out {p}" for p in params], "out any", *[f"R² {p}" for p in _R2_PARAMS]],
                    [])
        for name, m in ev.methods.items():
            mc = m.metrics_common
            t_common[2].append([name, *[_fmt(mc.get(p, {}).get("outlier_frac")) for p in params],
                                _fmt(mc.get("all", {}).get("outlier_frac")),
                                *[_fmt(mc.get(p, {}).get("r2")) for p in _R2_PARAMS]])
        tables.append(t_common)
    ref, ratio_rows = nmad_ratio_rows(ev)
    if ratio_rows:
        tables.append((f"NMAD divided by the {ref!r} method's (the exact fitter: what the pixels hold), "
                       "per bin of true magnitude", ["method", "mag bin", "mag", "re", "n", "q"],
                       [[r[0], r[1], *[_fmt(v, 2) for v in r[2:]]] for r in ratio_rows]))
    cov_rows = []
    for name, m in ev.methods.items():
        for b, row in (m.coverage or {}).items():
            if row["mag"]["n"]:
                cov_rows.append([name, b, str(row["mag"]["n"]),
                                 *[f"{_fmt(row[p]['within_1sigma'], 2)} / {_fmt(row[p]['within_2sigma'], 2)}"
                                   for p in PARAMETER_NAMES]])
    if cov_rows:
        tables.append(("Error coverage: fraction with |Δ| < 1 err / < 2 err (Gaussian 0.68 / 0.95), from "
                       "each method's own <col>_err columns", ["method", "bin", "n", *PARAMETER_NAMES],
                       cov_rows))
    return tables


def format_summary(ev: Evaluation) -> str:
    """Plain-text summary table (per method: R² and outlier fraction per parameter, median χ²ν,
    time per galaxy), for the terminal."""
    params = list(_SUMMARY_PARAMS)
    head = ["method", "n"] + [f"R2 {p}" for p in _R2_PARAMS] + [f"out {p}" for p in params] + [
        "out any", "chi2nu", "ms/gal"]
    lines = [head]
    for r in summary_rows(ev):
        lines.append([r["method"], str(r["n"])] + [_fmt(r[f"R2_{p}"], 2) for p in _R2_PARAMS]
                     + [_fmt(r[f"out_{p}"], 2) for p in params]
                     + [_fmt(r["out_any"], 2), _fmt(r["chi2nu_med"], 2), _fmt(r["ms_per_gal"], 2)])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in lines)


def _markdown(tables, figures: list[tuple[str, str]], title: str, notes: list[str]) -> str:
    out = [f"# {title}", ""]
    out += [f"* {n}" for n in notes] + [""]
    for caption, header, rows in tables:
        out += [f"## {caption}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        out.append("")
    out += ["## Figures", ""]
    for path, caption in figures:
        out += [f"### {caption}", "", f"![{caption}]({path})", ""]
    return "\n".join(out)


def _html(tables, figures: list[tuple[str, str]], title: str, notes: list[str]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#eee}"
        "figure{margin:1.5em 0}img{max-width:100%;border:1px solid #ddd}"
        "figcaption{font-style:italic}</style>",
        "</head>", "<body>", f"<h1>{e(title)}</h1>", "<ul>", *[f"<li>{e(n)}</li>" for n in notes], "</ul>",
    ]
    for caption, header, rows in tables:
        parts += [f"<h2>{e(caption)}</h2>", "<table>", "<thead><tr>"
                  + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead>", "<tbody>"]
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts += ["</tbody>", "</table>"]
    parts.append("<h2>Figures</h2>")
    for path, caption in figures:
        parts += ["<figure>", f'<img src="{e(path)}" alt="{e(caption)}">',
                  f"<figcaption>{e(caption)}</figcaption>", "</figure>"]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    return obj


# ----------------------------------------------------------------------------- figures
#: Figure files written for every report (``{method}`` expands to each method's name).
FIGURE_NAMES: tuple[str, ...] = (
    "hexbin_{method}.png", "mosaic_typical_{method}.png", "mosaic_worst_{method}.png",
    "error_vs_mag.png", "outlier_vs_snr.png", "chi2nu.png", "time_per_galaxy.png", "coverage.png",
)
_LABELS = {"x": "x [px]", "y": "y [px]", "mag": "mag", "re": "re [px]", "n": "n", "q": "q", "pa": "PA [deg]"}
_DELTA_LABELS = {"x": "Δx [px]", "y": "Δy [px]", "mag": "Δmag", "re": "Δre / re", "n": "Δn / n",
                 "q": "Δq / q", "pa": "ΔPA [deg]"}


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "method"


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _plot_hexbin(ev: Evaluation, m: MethodEvaluation, path: Path) -> None:
    import matplotlib.pyplot as plt

    t, p = ev.truth.params[m.rows], m.params[m.rows]
    fig, axes = plt.subplots(1, N_PARAMS, figsize=(3.0 * N_PARAMS, 3.2), constrained_layout=True)
    for j, name in enumerate(PARAMETER_NAMES):
        ax = axes[j]
        tv, pv = t[:, j], p[:, j].copy()
        if name == "pa":
            pv = tv + wrap_pa(pv - tv)
        log = name in ("re", "n")
        if len(tv):
            lo = float(np.nanmin([tv.min(), np.nanmin(pv)]))
            hi = float(np.nanmax([tv.max(), np.nanmax(pv)]))
            if log:
                lo, hi = max(lo, 1e-2), max(hi, 1.01 * max(lo, 1e-2))
            ax.hexbin(tv, pv, gridsize=25, mincnt=1, cmap="viridis", xscale="log" if log else "linear",
                      yscale="log" if log else "linear", extent=(np.log10(lo), np.log10(hi)) * 2 if log
                      else (lo, hi, lo, hi))
            ax.plot([lo, hi], [lo, hi], "r-", lw=0.8)
        if log:
            from matplotlib.ticker import NullFormatter

            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
        r2 = m.metrics.get(name, {}).get("r2", math.nan)
        ax.set_title(f"{name}  R²={_fmt(r2, 3)}" if name != "pa" else "pa (wrapped to true)", fontsize=9)
        ax.set_xlabel("true " + _LABELS[name], fontsize=8)
        if j == 0:
            ax.set_ylabel(f"{m.name}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{m.name}: true vs measured ({int(m.rows.sum())} galaxies)", fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_binned(ev: Evaluation, path: Path, *, which: str) -> None:
    import matplotlib.pyplot as plt

    names = list(PARAMETER_NAMES) + (["all"] if which == "snr" else [])
    ncol = 4
    nrow = math.ceil(len(names) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.8 * nrow), constrained_layout=True)
    axes = np.atleast_1d(axes).ravel()
    for (mname, m), color in zip(ev.methods.items(), _colors(len(ev.methods))):
        bins = m.binned_mag if which == "mag" else m.binned_snr
        if not bins:
            continue
        if which == "snr":
            mids = np.array([math.sqrt(max(b["lo"], 5.0) * min(b["hi"], 640.0)) for b in bins])
        else:
            mids = np.array([(b["lo"] + b["hi"]) / 2 for b in bins])
        for ax, name in zip(axes, names):
            ok = [b["metrics"] is not None and b["n"] >= 3 for b in bins]
            x = mids[ok]
            if which == "mag":
                med = np.array([b["metrics"][name]["bias"] for b, o in zip(bins, ok) if o])
                sp = np.array([b["metrics"][name]["nmad"] for b, o in zip(bins, ok) if o])
                ax.plot(x, med, "o-", color=color, label=mname, ms=3)
                ax.fill_between(x, med - sp, med + sp, color=color, alpha=0.2)
            else:
                fr = np.array([b["metrics"][name]["outlier_frac"] for b, o in zip(bins, ok) if o])
                ax.plot(x, fr, "o-", color=color, label=mname, ms=3)
    for ax, name in zip(axes, names):
        if which == "mag":
            ax.axhline(0, color="k", lw=0.5)
            ax.set_xlabel("true mag", fontsize=8)
            ax.set_ylabel(_DELTA_LABELS[name] + " (median ± NMAD)", fontsize=8)
        else:
            ax.set_xscale("log")
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("S/N", fontsize=8)
            ax.set_ylabel(f"outlier fraction: {name if name != 'all' else 'any parameter'}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(names):]:
        ax.axis("off")
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_chi2(ev: Evaluation, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    series = [("truth model", ev.truth_stats, np.ones(len(ev.truth), dtype=bool), "k")]
    series += [(n, m.stats, m.rows, c) for (n, m), c in zip(ev.methods.items(), _colors(len(ev.methods)))]
    allv = np.concatenate([s[k][r] for _, s, r, _ in series for k in ("chi2nu", "chi2nu_ap")])
    allv = allv[np.isfinite(allv) & (allv > 0)]
    lo, hi = 0.3, 3.0
    if allv.size:
        lo, hi = max(0.3, float(allv.min())), max(3.0, float(np.quantile(allv, 0.99)))
    edges = np.geomspace(lo, hi, 40)
    for ax, key in zip(axes, ("chi2nu", "chi2nu_ap")):
        for name, s, r, c in series:
            v = s[key][r]
            v = np.clip(v[np.isfinite(v)], lo, hi)
            if v.size:
                ax.hist(v, bins=edges, histtype="step", color=c, label=f"{name} (median {np.median(v):.2f})")
        ax.set_xscale("log")
        ax.axvline(1.0, color="grey", lw=0.5)
        ax.set_xlabel("χ²ν" + (" (whole stamp)" if key == "chi2nu" else " (galaxy aperture)"))
        ax.set_ylabel("galaxies")
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_coverage(ev: Evaluation, path: Path) -> None:
    """Fraction within 1 and 2 sigma of each method's own errors, per true-magnitude bin and parameter."""
    import matplotlib.pyplot as plt

    names = [n for n, m in ev.methods.items() if m.coverage]
    fig, axes = plt.subplots(1, len(PARAMETER_NAMES), figsize=(2.3 * len(PARAMETER_NAMES), 2.8),
                             constrained_layout=True, sharey=True)
    colors = _colors(max(1, len(names)))
    for ax, p in zip(axes, PARAMETER_NAMES):
        for k, target in ((1, 0.6827), (2, 0.9545)):
            ax.axhline(target, color="0.6", lw=0.8, ls="--" if k == 1 else ":")
        for c, name in zip(colors, names):
            bins = [(b, row[p]) for b, row in ev.methods[name].coverage.items() if b != "all" and row[p]["n"]]
            x = [float(b.split()[1].split("-")[0]) + 0.5 for b, _ in bins]
            ax.plot(x, [v["within_1sigma"] for _, v in bins], "o-", color=c, ms=3, label=f"{name} 1σ")
            ax.plot(x, [v["within_2sigma"] for _, v in bins], "s:", color=c, ms=3, label=f"{name} 2σ")
        ax.set_title(p)
        ax.set_xlabel("true mag")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("fraction with |Δ| < k·err")
    if names:
        axes[-1].legend(fontsize=6, loc="lower right")
    else:
        fig.suptitle("no method gave <col>_err columns", fontsize=9)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_time(ev: Evaluation, path: Path) -> None:
    import matplotlib.pyplot as plt

    names = list(ev.methods)
    vals = [ev.methods[n].time_per_galaxy for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2), 3.2), constrained_layout=True)
    y = [1e3 * v if v is not None and math.isfinite(v) else 0.0 for v in vals]
    bars = ax.bar(names, y, color=_colors(len(names)))
    for b_, v in zip(bars, vals):
        ax.text(b_.get_x() + b_.get_width() / 2, b_.get_height(),
                "n/a" if v is None or not math.isfinite(v) else f"{1e3 * v:.3g} ms", ha="center", va="bottom",
                fontsize=8)
    if any(v > 0 for v in y):
        ax.set_yscale("log")
    ax.set_ylabel("wall time per galaxy [ms]")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _pick(m: MethodEvaluation, kind: str, k: int) -> np.ndarray:
    v = m.stats["chi2nu"].copy()
    rows = np.flatnonzero(m.rows & np.isfinite(v))
    if rows.size == 0:
        return rows
    if kind == "worst":
        return rows[np.argsort(-v[rows])[:k]]
    med = np.median(v[rows])
    return rows[np.argsort(np.abs(v[rows] - med))[:k]]


def _plot_mosaic(ev: Evaluation, m: MethodEvaluation, path: Path, *, kind: str, k: int = 4) -> None:
    import matplotlib.pyplot as plt

    sel = _pick(m, kind, k)
    nrow = max(1, len(sel))
    fig, axes = plt.subplots(nrow, 3, figsize=(7.2, 2.4 * nrow), constrained_layout=True, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if len(sel) == 0:
        axes[0, 1].text(0.5, 0.5, "no measured galaxy", ha="center", va="center")
    for r, i in enumerate(sel):
        img, mod, sig = ev.truth.images[i], m.models[i], ev.truth.sigma[i]
        scale = max(float(np.nanpercentile(mod, 99.5)), 3.0 * float(ev.truth.sky_sigma[i]), 1e-12)
        soft = float(ev.truth.sky_sigma[i])
        def stretch(a, scale=scale, soft=soft):
            return np.arcsinh(a / soft) / np.arcsinh(scale / soft)
        kw = dict(origin="lower", cmap="gray_r", vmin=-0.05, vmax=1.0, interpolation="nearest")
        axes[r, 0].imshow(stretch(img), **kw)
        axes[r, 1].imshow(stretch(mod), **kw)
        im = axes[r, 2].imshow((img - mod) / sig, origin="lower", cmap="RdBu_r", vmin=-5, vmax=5,
                               interpolation="nearest")
        t, q = ev.truth.params[i], m.params[i]
        axes[r, 0].set_ylabel(f"id {ev.truth.ids[i]}", fontsize=8)
        axes[r, 0].set_title(f"image  mag {t[IX_MAG]:.2f} re {t[IX_RE]:.1f} n {t[IX_N]:.2f}"
                             if np.isfinite(t).all() else "image (no truth)", fontsize=7)
        axes[r, 1].set_title(f"model  mag {q[IX_MAG]:.2f} re {q[IX_RE]:.1f} n {q[IX_N]:.2f}", fontsize=7)
        axes[r, 2].set_title(f"(image−model)/σ  χ²ν {m.stats['chi2nu'][i]:.2f}", fontsize=7)
        fig.colorbar(im, ax=axes[r, 2], shrink=0.8)
    fig.suptitle(f"{m.name}: {kind} galaxies (by whole-stamp χ²ν)", fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(ev: Evaluation, out_dir, *, title: str = "galnet evaluation", notes: list[str] | None = None,
                 progress: bool = False) -> Path:
    """Write ``metrics.json``, ``report.md``, ``report.html`` and ``figures/*.png`` into ``out_dir``.

    Parameters
    ----------
    ev : Evaluation
    out_dir : path
        Created if missing; existing files of the same names are overwritten.
    title : str
    notes : list of str, optional
        Lines shown at the top of the report (data set, model, commands ...).
    progress : bool
        tqdm bar over figures.

    Returns
    -------
    Path of ``report.html``.
    """
    import matplotlib

    matplotlib.use("Agg")
    from tqdm.auto import tqdm

    out = Path(out_dir)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, str, object]] = []
    for name, m in ev.methods.items():
        s = _safe_name(name)
        jobs.append((f"hexbin_{s}.png", f"{name}: true vs measured, per parameter",
                     lambda p, m=m: _plot_hexbin(ev, m, p)))
    jobs += [
        ("error_vs_mag.png", "Error vs true magnitude (median Δ ± NMAD per bin; bins with ≥ 3 galaxies)",
         lambda p: _plot_binned(ev, p, which="mag")),
        ("outlier_vs_snr.png", "Outlier fraction vs S/N, per parameter and for any parameter",
         lambda p: _plot_binned(ev, p, which="snr")),
        ("chi2nu.png", "χ²ν distributions: whole stamp (neighbours included) and galaxy aperture",
         lambda p: _plot_chi2(ev, p)),
        ("time_per_galaxy.png", "Wall time per galaxy", lambda p: _plot_time(ev, p)),
        ("coverage.png", "Error coverage: fraction of galaxies with |Δ| below 1 and 2 times each method's "
         "own error, per bin of true magnitude (Gaussian: 0.68, 0.95)", lambda p: _plot_coverage(ev, p)),
    ]
    for name, m in ev.methods.items():
        s = _safe_name(name)
        for kind in ("typical", "worst"):
            jobs.append((f"mosaic_{kind}_{s}.png",
                         f"{name}: image / model / residual of {kind} galaxies (by χ²ν)",
                         lambda p, m=m, kind=kind: _plot_mosaic(ev, m, p, kind=kind)))
    figures = []
    for fname, caption, fn in tqdm(jobs, desc="figures", unit="fig", disable=not progress):
        fn(figdir / fname)
        figures.append((f"figures/{fname}", caption))
    tables = _tables(ev)
    notes = list(notes or []) + [
        f"{len(ev.truth)} truth stamps; methods: "
        + ", ".join(f"{n} ({int(m.rows.sum())} measured)" for n, m in ev.methods.items()),
        "Metric definitions: galnet.train.metrics; residual statistics and flag thresholds: "
        f"galnet.evaluate.residuals ({json.dumps(ev.thresholds.to_dict())}).",
    ]
    data = _json_safe({**ev.to_dict(), "notes": notes, "figures": [f for f, _ in figures]})
    (out / "metrics.json").write_text(json.dumps(data, indent=1, allow_nan=False))
    (out / "report.md").write_text(_markdown(tables, figures, title, notes))
    path = out / "report.html"
    path.write_text(_html(tables, figures, title, notes))
    return path
