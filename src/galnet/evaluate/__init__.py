"""Evaluate: accuracy metrics, χ²ν, residual diagnostics (the ``NON_SERSIC`` flag) and HTML reports.

* :mod:`.residuals`: model images (:func:`render_models`), χ²ν, residual statistics, the
  ``NON_SERSIC`` / ``HIGH_CHI2`` flags and their calibration on simulations.
* :mod:`.report`: :func:`evaluate_methods` (metrics of :mod:`galnet.train.metrics` per method)
  and :func:`write_report` (``metrics.json``, ``report.md``, ``report.html``, ``figures/``).
* :mod:`.command` (``galnet evaluate``) and :mod:`.demo` (``galnet demo``).

See ``docs/evaluate.md``.
"""

from .report import (
    Evaluation,
    MethodEvaluation,
    MethodResult,
    TruthSet,
    evaluate_methods,
    format_summary,
    summary_rows,
    write_report,
)
from .residuals import (
    DEFAULT_THRESHOLDS,
    STATISTICS,
    ResidualThresholds,
    calibrate_thresholds,
    calibration_set,
    chi2nu,
    detection_rates,
    galaxy_aperture,
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
    "ResidualThresholds",
    "DEFAULT_THRESHOLDS",
    "STATISTICS",
    "render_models",
    "noise_sigma",
    "chi2nu",
    "galaxy_aperture",
    "residual_statistics",
    "residual_flags",
    "calibration_set",
    "calibrate_thresholds",
    "detection_rates",
]
