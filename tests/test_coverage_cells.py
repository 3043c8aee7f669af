"""benchmarks/coverage_cells.py: per-cell rescaling and blend-rule comparison on synthetic errors.

Tolerances: 20,000 Gaussian draws per case, half used to fit the scales; the coverage fractions of the
2,000 test rows of a magnitude bin are within 4 binomial σ of the Gaussian 0.683 / 0.954 (±0.045 /
±0.02), the 95.4 % / 68.3 % quantile ratio of the 10,000 test rows within ±0.1 of 2.0, a recovered
quantile within ±0.05 of 1.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import coverage_cells  # noqa: E402
from limit import INDEX, MAG_BINS  # noqa: E402


def _gaussian_case(n: int = 20_000, seed: int = 0):
    """Errors of 1 everywhere; the true scatter is 0.5 in cell 0 and 3 in cell 1 (a mixture)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 2, n)
    scale = np.where(cells == 0, 0.5, 3.0)
    delta = {p: rng.normal(0.0, scale) for p in INDEX}
    err = {p: np.ones(n) for p in INDEX}
    mag_bin = rng.integers(0, len(MAG_BINS) - 1, n)
    return delta, err, cells, mag_bin


def test_rescaling_per_cell_restores_gaussian_coverage():
    delta, err, cells, mag_bin = _gaussian_case()
    fit_rows = np.arange(len(cells)) % 2 == 0
    mixed = coverage_cells.rescaled_coverage(delta, err, np.zeros_like(cells), mag_bin, fit_rows)
    fixed = coverage_cells.rescaled_coverage(delta, err, cells, mag_bin, fit_rows)
    for p in ("mag", "re"):
        assert mixed[p]["tail_ratio"] > 2.5  # a mixture of scales is heavy-tailed
        assert abs(fixed[p]["tail_ratio"] - 2.0) < 0.1
        np.testing.assert_allclose(sorted(fixed[p]["scales"]), [0.5, 3.0], rtol=0.05)
        for f1, f2 in fixed[p]["bins"]:
            assert abs(f1 - 0.683) < 0.045 and abs(f2 - 0.954) < 0.02


def test_blend_rules_recover_the_fit_errors():
    """Catalog errors built by the shipped rule (+ network error where n_masked > 0); rows fitted to
    χ²ν = 1 whose truth scatters by the fit's error: the χ²ν-weighted rules give them back the fit's error
    (quantile 1), the shipped rule's are too large on the masked ones."""
    rng = np.random.default_rng(1)
    n = 20_000
    fit = {p: np.full(n, 0.01) for p in INDEX}
    net = {p: np.full(n, 0.1) for p in INDEX}
    n_masked = rng.integers(0, 2, n)
    chi2 = np.ones(n)
    err = {p: np.sqrt(fit[p] ** 2 + (n_masked > 0) * net[p] ** 2) for p in INDEX}
    delta = {p: rng.normal(0.0, fit[p]) for p in INDEX}
    mag = np.full(n, 21.0)
    mag_bin = np.full(n, 2)
    rules = coverage_cells.compare_blend_rules(delta, err, net, n_masked, chi2, mag_bin, mag)
    shipped = rules["shipped: + net where n_masked > 0"]["types"]
    assert shipped["masked, χ²ν < 1.05"][0] < 0.15  # errors ~10x too large
    assert abs(shipped["unmasked, χ²ν < 1.05"][0] - 1.0) < 0.05
    assert math.isnan(shipped["masked, χ²ν < 1.05, mag < 20"][0])  # no bright rows
    for name, rule in rules.items():
        if name.startswith("+ net"):
            assert abs(rule["types"]["masked, χ²ν < 1.05"][0] - 1.0) < 0.05, name
