"""The catalog contract: columns from the parameter table, units, flags, every format round trips."""

from __future__ import annotations

import numpy as np
import pytest

from galnet.catalog import catalog_params, make_catalog, read_table, write_table
from galnet.errors import InputDataError
from galnet.flags import Flag, decode


@pytest.mark.parametrize("ext", [".fits", ".ecsv", ".csv", ".parquet"])
def test_round_trip_every_format(tmp_path, ext):
    params = np.array([[31.0, 30.5, 20.1, 3.0, 1.2, 0.5, 95.0], [np.nan] * 7])
    t = make_catalog(["a", "b"], params, errors=np.full((2, 7), 0.1),
                     flags=[0, int(Flag.BAD_INPUT | Flag.EDGE)], pixel_scale=0.2)
    assert t.colnames[:9] == ["id", "x", "y", "mag", "re_pix", "re_arcsec", "n", "q", "pa"]
    assert str(t["re_pix"].unit) == "pix" and str(t["pa"].unit) == "deg"
    path = write_table(t, tmp_path / f"cat{ext}")
    back = read_table(path)
    got = catalog_params(back)
    assert got[0, 6] == pytest.approx(-85.0)  # PA wrapped to [-90, 90)
    assert back["re_arcsec"][0] == pytest.approx(0.6)
    assert np.isnan(got[1]).all()
    assert decode(int(back["flags"][1])) == ["EDGE", "BAD_INPUT"]


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(InputDataError, match="unknown table format"):
        write_table(make_catalog([1], np.zeros((1, 7))), tmp_path / "x.txt")
    with pytest.raises(InputDataError, match="no such file"):
        read_table(tmp_path / "missing.fits")
    with pytest.raises(InputDataError, match="lacks column"):
        catalog_params(make_catalog([1], np.zeros((1, 7)))[["id", "x"]])
