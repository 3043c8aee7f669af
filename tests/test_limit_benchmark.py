"""Helpers of the information-limit benchmark (benchmarks/limit.py, benchmarks/galsim_set.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import limit  # noqa: E402


def test_bin_index_edges_last_bin_closed_and_outside():
    edges = (18.0, 20.0, 21.5, 24.0)
    v = np.array([17.9, 18.0, 19.99, 20.0, 21.5, 24.0, 24.01, np.nan])
    assert limit.bin_index(v, edges).tolist() == [-1, 0, 0, 1, 2, 2, -1, -1]
    assert limit.bin_index([5.0, 1e9], limit.SNR_BINS).tolist() == [0, 4]
    with pytest.raises(ValueError, match="increasing"):
        limit.bin_index(v, (20.0, 18.0))


def test_coverage_gaussian_and_nan_errors():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.5, 2.0, 200_000)
    delta = rng.standard_normal(sigma.size) * sigma
    assert limit.coverage(delta, sigma, 1.0) == pytest.approx(0.6827, abs=0.005)
    assert limit.coverage(delta, sigma, 2.0) == pytest.approx(0.9545, abs=0.003)
    # errors too small by 2: 1-sigma coverage drops to that of 0.5 sigma
    assert limit.coverage(delta, sigma / 2, 1.0) == pytest.approx(0.3829, abs=0.005)
    assert limit.coverage([0.1, 3.0, 0.1], [1.0, 1.0, np.nan], 1.0) == 0.5
    assert math.isnan(limit.coverage([1.0], [0.0], 1.0))


def _truth(b: int, rng) -> np.ndarray:
    return np.stack([31 + rng.uniform(-1, 1, b), 31 + rng.uniform(-1, 1, b), rng.uniform(18, 24, b),
                     rng.uniform(1, 10, b), rng.uniform(0.5, 4, b), rng.uniform(0.2, 1, b),
                     rng.uniform(-90, 90, b)], axis=1)


def test_bin_statistics_nmad_bias_outliers_ratio_and_coverage():
    rng = np.random.default_rng(1)
    b = 4000
    t = _truth(b, rng)
    e = t.copy()
    frac = 0.05 + 0.1 * rng.standard_normal(b)          # re: bias 0.05, NMAD 0.1 (fractional)
    e[:, 3] = t[:, 3] * (1 + frac)
    e[:, 2] = t[:, 2] + 0.02 * rng.standard_normal(b)   # mag: NMAD 0.02
    e[:, 6] = t[:, 6] + 170.0                           # pa: -10 deg after wrapping
    e[:7, 4] = np.nan                                   # not measured: out of NMAD, counted as outliers
    errors = {p: np.full(b, np.nan) for p in limit.PARAMS}
    errors["re"] = 0.1 * t[:, 3]                        # the right 1-sigma error in pixels
    bins = limit.bin_statistics(t, e, t[:, 2], limit.MAG_BINS, errors=errors)
    assert sum(x["n"] for x in bins) == b
    assert bins[1]["n"] == int(((t[:, 2] >= 20.0) & (t[:, 2] < 21.5)).sum())
    allb = limit.bin_statistics(t, e, np.zeros(b), (0.0, 1.0), errors=errors)[0]["params"]
    assert allb["re"]["nmad"] == pytest.approx(0.1, rel=0.05)
    assert allb["re"]["bias"] == pytest.approx(0.05, abs=0.006)
    expected_out = np.mean(np.abs(frac) > 0.15)
    assert allb["re"]["outlier_frac"] == pytest.approx(expected_out, abs=1e-12)
    assert allb["mag"]["nmad"] == pytest.approx(0.02, rel=0.05)
    assert allb["pa"]["bias"] == pytest.approx(-10.0) and allb["pa"]["nmad"] == pytest.approx(0.0, abs=1e-9)
    assert allb["pa"]["n"] == int((t[:, 5] < 0.8).sum())
    assert allb["n"]["n"] == b - 7 and allb["n"]["outlier_frac"] == pytest.approx(7 / b)
    assert allb["x"]["nmad"] == 0.0 and allb["x"]["outlier_frac"] == 0.0
    # re errors right in size, Δ biased by half an error: P(|Z + 0.5| < 1) = 0.625, < 2: 0.927
    assert allb["re"]["cov1"] == pytest.approx(0.625, abs=0.02)
    assert allb["re"]["cov2"] == pytest.approx(0.927, abs=0.01)
    assert math.isnan(allb["mag"]["cov1"]) and allb["mag"]["n_err"] == 0
    # ratios: against itself 1, against a reference twice as precise 2
    ref = limit.bin_statistics(t, t + (e - t) / 2, t[:, 2], limit.MAG_BINS)
    limit.add_ratios(bins, limit.reference_nmad([ref]))
    for entry in bins:
        assert entry["params"]["re"]["ratio"] == pytest.approx(2.0, rel=1e-6)
        assert math.isnan(entry["params"]["x"]["ratio"])  # reference NMAD 0: no ratio
    # two references: per bin and parameter the more precise one (here 4x more precise in re than est)
    worse = limit.bin_statistics(t, t + (e - t) * 3, t[:, 2], limit.MAG_BINS)
    better = limit.bin_statistics(t, t + (e - t) / 4, t[:, 2], limit.MAG_BINS)
    limit.add_ratios(bins, limit.reference_nmad([worse, better]))
    for entry in bins:
        assert entry["params"]["re"]["ratio"] == pytest.approx(4.0, rel=1e-6)


def test_parse_method():
    m = limit.parse_method("refine1=predict --refine 1", "hsc-r")
    assert (m.name, m.subcommand, m.args, m.needs_network) == ("refine1", "predict",
                                                               ["--model", "hsc-r", "--refine", "1"], False)
    m = limit.parse_method("lm2=fit --start catalog:{network} --max-iter 2", "hsc-r")
    assert m.needs_network and m.args[0] == "--start"
    argv = m.argv(Path("s.h5"), Path("c.fits"), Path("net.fits"))
    assert argv[3:] == ["fit", "s.h5", "-o", "c.fits", "--start", "catalog:net.fits", "--max-iter", "2"]
    for bad in ("refine1", "=predict", "x=render", "x=fit -o a.fits", "a b=fit"):
        with pytest.raises(ValueError):
            limit.parse_method(bad, "hsc-r")


def test_bad_options_are_one_line_errors(capsys):
    for argv in (["--methods", "network,foo"], ["--set", "test"], ["--methods", "hybrid"],
                 ["--method", "x=render"], ["--n", "0"]):
        with pytest.raises(SystemExit) as exc:
            limit.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("limit.py: error:") or "error:" in err[-1]


def test_galsim_set_agrees_with_galnet_renderer():
    """GalSim's noiseless targets equal galnet's renderer on the stored truth and PSF (same conventions)."""
    pytest.importorskip("galsim")
    import galsim_set

    arrays = galsim_set.make_set(4, seed=5, progress=False)     # 2 Moffat, 2 Kolmogorov PSFs
    err = galsim_set.check_against_galnet(arrays, 4)
    assert err.max() < 5e-3, err
    assert np.median(err) < 1.5e-3, err
    assert arrays["images"].shape == (4, 61, 61) and arrays["psfs"].shape == (4, 25, 25)
    assert np.allclose(arrays["psfs"].sum(axis=(1, 2)), 1.0, atol=1e-5)
    m = arrays["models"]
    sig2 = arrays["sky_sigma"][:, None, None].astype(float) ** 2 + np.maximum(m, 0) / 2300.0
    assert np.allclose(arrays["snr"], np.sqrt((m**2 / sig2).sum(axis=(1, 2))), rtol=1e-5)
