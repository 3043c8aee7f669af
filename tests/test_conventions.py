"""Round trips of the converters, and their meaning checked against the libraries themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from galnet import conventions as cv
from galnet.params import PARAMETER_NAMES, catalog_columns, index
from galnet.render import GaussianPSF, render_sersic

P = dict(x=31.3, y=29.8, mag=20.7, re=4.2, n=2.3, q=0.45, pa=-33.0)


def _close(a: dict, b: dict, keys=PARAMETER_NAMES):
    for k in keys:
        assert np.allclose(a[k], b[k], rtol=1e-10, atol=1e-10), (k, a[k], b[k])


def test_wrap_pa():
    assert np.allclose(cv.wrap_pa(np.array([-90.0, 90.0, 135.0, -100.0, 179.0])), [-90, -90, -45, 80, -1])
    assert cv.pa_difference(89.0, -89.0) == pytest.approx(-2.0)


@pytest.mark.parametrize("to, back", [(cv.to_imfit, cv.from_imfit), (cv.to_galsim, cv.from_galsim),
                                      (cv.to_astropy, cv.from_astropy)])
def test_round_trips(to, back):
    out = back(**to(**P, zeropoint=27.0), zeropoint=27.0)
    _close(P, out)


def test_round_trip_vectorised():
    rng = np.random.default_rng(0)
    arr = {k: rng.uniform(0.2, 0.9, 50) for k in P}
    arr["pa"] = rng.uniform(-90, 90, 50)
    arr["n"] = rng.uniform(0.3, 8, 50)
    _close(arr, cv.from_imfit(**cv.to_imfit(**arr)))
    _close(arr, cv.from_astropy(**cv.to_astropy(**arr)))


def test_imfit_intensity_integrates_to_flux():
    """I_e from to_imfit, integrated numerically over the elliptical profile, gives the total flux."""
    from scipy import integrate

    d = cv.to_imfit(**P)
    b = cv.sersic_bn_numpy(P["n"])
    radial = integrate.quad(
        lambda a: 2 * np.pi * a * P["q"] * d["I_e"] * np.exp(-b * ((a / P["re"]) ** (1 / P["n"]) - 1)),
        0, np.inf, limit=400)[0]
    assert radial == pytest.approx(cv.mag_to_flux(P["mag"]), rel=1e-6)


def test_astropy_sersic2d_semantics():
    """astropy's Sersic2D, evaluated at 0-based pixel centres with the converted parameters, equals
    galnet's model away from the centre (where pixel integration and the 0.6 px PSF do not matter):
    1 % beyond 6 px from the centre for a smooth n=1, Re=12 px galaxy (pixel integration of the
    exponential adds ~0.3 % there)."""
    from astropy.modeling.models import Sersic2D

    p = dict(x=30.6, y=31.4, mag=18.0, re=12.0, n=1.0, q=0.6, pa=20.0)
    model = Sersic2D(**cv.to_astropy(**p))
    yy, xx = np.mgrid[0:61, 0:61]
    ref = model(xx, yy)
    ours = render_sersic(torch.tensor([[p[k] for k in PARAMETER_NAMES]], dtype=torch.float64),
                         GaussianPSF(fwhm=0.6))[0].numpy()
    r = np.hypot(xx - (p["x"] - 1), yy - (p["y"] - 1))
    far = (r > 6) & (r < 25)  # beyond 25 px the light wrapped from periodic copies (1e-3 of the flux) shows
    assert np.abs(ours[far] / ref[far] - 1).max() < 0.01


def test_mag_flux():
    assert cv.mag_to_flux(27.0) == pytest.approx(1.0)
    assert cv.flux_to_mag(100.0) == pytest.approx(22.0)
    assert np.isnan(cv.flux_to_mag(-1.0))
    assert cv.flux_to_mag(200.0, exptime=2.0) == pytest.approx(22.0)


def test_parameter_table_drives_columns():
    cols = catalog_columns(errors=False)
    assert cols == ["id", "x", "y", "mag", "re_pix", "re_arcsec", "n", "q", "pa"]
    assert index("pa") == 6
    with pytest.raises(KeyError, match="unknown parameter"):
        index("ellipticity")
