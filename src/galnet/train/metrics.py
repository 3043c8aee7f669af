"""Accuracy metrics of parameter estimates, shared by training (per-epoch validation) and evaluate.

Every parameter has one error definition Δ, used for its bias, NMAD and outlier fraction:

=====  =====================================  ==========================  ==========  =========
param  Δ                                      outlier if                  R² on       subset
=====  =====================================  ==========================  ==========  =========
x, y   pred − true (px)                       abs(Δ) > 0.5 px             x, y        all
mag    pred − true (mag)                      abs(Δ) > 0.15 mag           mag         all
re     (pred − true) / true                   abs(Δ) > 0.15               log10 re    all
n      (pred − true) / true                   abs(Δ) > 0.15               log10 n     all
q      (pred − true) / true                   abs(Δ) > 0.15               q           all
pa     wrap(pred − true) to [-90, 90) (deg)   abs(Δ) > 15 deg             --          q_true<0.8
=====  =====================================  ==========================  ==========  =========

* bias = median(Δ); NMAD = 1.4826 · median(|Δ − median(Δ)|);
* R² = 1 − Σ(t − p)² / Σ(t − mean t)² in the space of the "R² on" column (PA has none: it is
  axial, its Δ distribution is what matters);
* the PA metrics use only galaxies with true q < 0.8 (rounder galaxies have no defined PA);
* ``any`` is the fraction of galaxies that are outliers in at least one parameter (PA counted only
  where q_true < 0.8).

Thresholds live in :data:`OUTLIER_THRESHOLDS` and :data:`PA_MAX_Q` and can be overridden.
"""

from __future__ import annotations

import math

import numpy as np

from ..conventions import wrap_pa
from ..errors import InputDataError
from ..params import N_PARAMS, PARAMETER_NAMES

__all__ = [
    "OUTLIER_THRESHOLDS",
    "RELATIVE",
    "PA_MAX_Q",
    "nmad",
    "r2_score",
    "parameter_errors",
    "outlier_mask",
    "regression_metrics",
    "binned_metrics",
    "flatten_metrics",
]

#: Outlier threshold on |Δ| per parameter (units of Δ, see the module table).
OUTLIER_THRESHOLDS: dict[str, float] = {"x": 0.5, "y": 0.5, "mag": 0.15, "re": 0.15, "n": 0.15, "q": 0.15,
                                        "pa": 15.0}
#: Parameters whose Δ is relative, (pred − true) / true.
RELATIVE: frozenset[str] = frozenset({"re", "n", "q"})
#: PA metrics use only galaxies with true q below this.
PA_MAX_Q = 0.8
_R2_SPACE = {"x": "linear", "y": "linear", "mag": "linear", "re": "log10", "n": "log10", "q": "linear",
             "pa": None}


def _check(truth, pred) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(truth, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != N_PARAMS or t.shape != p.shape:
        raise InputDataError(
            f"truth and pred must both have shape (B, {N_PARAMS}), got {t.shape} and {p.shape}"
        )
    return t, p


def nmad(delta) -> float:
    """Normalised median absolute deviation ``1.4826 · median(|Δ − median Δ|)`` (NaN if empty)."""
    d = np.asarray(delta, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


def r2_score(true, pred) -> float:
    """Coefficient of determination ``1 − SS_res / SS_tot`` (NaN if < 2 values or constant truth)."""
    t = np.asarray(true, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    ok = np.isfinite(t) & np.isfinite(p)
    t, p = t[ok], p[ok]
    if t.size < 2:
        return math.nan
    ss_tot = float(((t - t.mean()) ** 2).sum())
    if ss_tot == 0:
        return math.nan
    return 1.0 - float(((t - p) ** 2).sum()) / ss_tot


def parameter_errors(truth, pred) -> dict[str, np.ndarray]:
    """Δ per parameter (see the module table): dict name → array (B,)."""
    t, p = _check(truth, pred)
    out = {}
    for j, name in enumerate(PARAMETER_NAMES):
        if name == "pa":
            out[name] = wrap_pa(p[:, j] - t[:, j])
        elif name in RELATIVE:
            out[name] = (p[:, j] - t[:, j]) / t[:, j]
        else:
            out[name] = p[:, j] - t[:, j]
    return out


def outlier_mask(truth, pred, *, thresholds: dict[str, float] | None = None,
                 pa_max_q: float = PA_MAX_Q) -> dict[str, np.ndarray]:
    """Boolean outlier masks per parameter, plus ``"any"``; PA only counts where q_true < ``pa_max_q``.

    Non-finite predictions count as outliers.
    """
    thr = {**OUTLIER_THRESHOLDS, **(thresholds or {})}
    t, _ = _check(truth, pred)
    errs = parameter_errors(truth, pred)
    pa_ok = t[:, PARAMETER_NAMES.index("q")] < pa_max_q
    masks = {}
    for name, d in errs.items():
        m = ~(np.abs(d) <= thr[name])  # NaN → outlier
        if name == "pa":
            m &= pa_ok
        masks[name] = m
    masks["any"] = np.logical_or.reduce([masks[n] for n in PARAMETER_NAMES])
    return masks


def regression_metrics(truth, pred, *, thresholds: dict[str, float] | None = None,
                       pa_max_q: float = PA_MAX_Q) -> dict[str, dict[str, float]]:
    """Per-parameter metrics.

    Parameters
    ----------
    truth, pred : array, shape (B, 7)
        ``x, y, mag, re, n, q, pa`` in catalog conventions.

    Returns
    -------
    dict name → {"n", "r2", "bias", "nmad", "outlier_frac", "rmse"} for each parameter, and
    ``"all"`` → {"n", "outlier_frac"} (outlier in any parameter). ``rmse`` is of Δ.
    """
    t, p = _check(truth, pred)
    errs = parameter_errors(t, p)
    masks = outlier_mask(t, p, thresholds=thresholds, pa_max_q=pa_max_q)
    pa_ok = t[:, PARAMETER_NAMES.index("q")] < pa_max_q
    out: dict[str, dict[str, float]] = {}
    for j, name in enumerate(PARAMETER_NAMES):
        sel = pa_ok if name == "pa" else np.ones(len(t), dtype=bool)
        d = errs[name][sel]
        space = _R2_SPACE[name]
        if space == "linear":
            r2 = r2_score(t[:, j], p[:, j])
        elif space == "log10":
            with np.errstate(divide="ignore", invalid="ignore"):
                r2 = r2_score(np.log10(t[:, j]), np.log10(p[:, j]))
        else:
            r2 = math.nan
        fin = d[np.isfinite(d)]
        out[name] = {
            "n": int(sel.sum()),
            "r2": r2,
            "bias": float(np.median(fin)) if fin.size else math.nan,
            "nmad": nmad(d),
            "rmse": float(np.sqrt(np.mean(fin**2))) if fin.size else math.nan,
            "outlier_frac": float(masks[name][sel].mean()) if sel.any() else math.nan,
        }
    out["all"] = {"n": len(t), "outlier_frac": float(masks["any"].mean()) if len(t) else math.nan}
    return out


def binned_metrics(truth, pred, by, bins, **kwargs) -> list[dict]:
    """:func:`regression_metrics` in bins of a quantity ``by`` (e.g. true mag or S/N).

    Parameters
    ----------
    truth, pred : array, shape (B, 7)
    by : array, shape (B,)
        Quantity to bin on.
    bins : sequence of float
        Bin edges (left-closed, right-open; the last bin includes its right edge).

    Returns
    -------
    list of {"lo", "hi", "metrics": dict} (bins with no galaxy get ``metrics = None``).
    """
    t, p = _check(truth, pred)
    by = np.asarray(by, dtype=np.float64)
    if by.shape != (len(t),):
        raise InputDataError(f"'by' must have shape ({len(t)},), got {by.shape}")
    edges = np.asarray(bins, dtype=np.float64)
    res = []
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        sel = (by >= lo) & ((by <= hi) if k == len(edges) - 2 else (by < hi))
        res.append({"lo": float(lo), "hi": float(hi), "n": int(sel.sum()),
                    "metrics": regression_metrics(t[sel], p[sel], **kwargs) if sel.any() else None})
    return res


def flatten_metrics(metrics: dict[str, dict[str, float]], prefix: str = "") -> dict[str, float]:
    """``{"re": {"nmad": .1}}`` → ``{"re_nmad": .1}`` (for CSV rows)."""
    return {f"{prefix}{name}_{k}": v for name, d in metrics.items() for k, v in d.items()}
