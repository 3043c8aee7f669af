"""`galnet render`: a table and a PSF in, a FITS cube out; bad tables rejected with row names."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from galnet.cli import main
from galnet.render import MoffatPSF


@pytest.fixture
def psf_file(tmp_path):
    path = tmp_path / "psf.fits"
    fits.writeto(path, MoffatPSF(fwhm=4.0, beta=3.0).draw(25).numpy())
    return path


def _table(**over):
    t = Table({"id": [10, 11], "x": [31.0, 30.2], "y": [31.0, 32.5], "mag": [20.0, 21.0],
               "re_pix": [3.0, 5.0], "n": [1.0, 4.0], "q": [0.5, 0.9], "pa": [10.0, -45.0]})
    for k, v in over.items():
        t[k] = v
    return t


def test_render_writes_cube_with_flux(tmp_path, psf_file):
    table = tmp_path / "p.ecsv"
    _table().write(table)
    out = tmp_path / "cube.fits"
    assert main(["render", str(table), "--psf", str(psf_file), "--out", str(out)]) == 0
    with fits.open(out) as hdul:
        cube = hdul[0].data
        assert cube.shape == (2, 61, 61)
        assert list(hdul["IDS"].data["id"]) == [10, 11]
    # 20 mag at zp 27 = 631 counts; n=1, Re=3 keeps > 99 % of it in the stamp
    assert cube[0].sum() == pytest.approx(10 ** (0.4 * 7), rel=0.01)


def test_render_noise_is_seeded(tmp_path, psf_file):
    table = tmp_path / "p.csv"
    _table().write(table)
    outs = []
    for i in range(2):
        out = tmp_path / f"c{i}.fits"
        main(["render", str(table), "--psf", str(psf_file), "--out", str(out), "--noise", "2",
              "--gain", "3", "--seed", "5"])
        outs.append(fits.getdata(out))
    assert np.array_equal(outs[0], outs[1])
    assert np.std(outs[0][:, :5, :5]) == pytest.approx(2.0, rel=0.15)


def test_render_rejects_bad_rows_and_columns(tmp_path, psf_file, capsys):
    bad = tmp_path / "bad.ecsv"
    _table(n=[1.0, 12.0]).write(bad)
    assert main(["render", str(bad), "--psf", str(psf_file), "--out", str(tmp_path / "o.fits")]) == 2
    assert "row 1: n = 12 outside the valid range" in capsys.readouterr().err
    missing = tmp_path / "missing.ecsv"
    t = _table()
    del t["q"]
    t.write(missing)
    assert main(["render", str(missing), "--psf", str(psf_file), "--out", str(tmp_path / "o.fits")]) == 2
    assert "missing column(s) q" in capsys.readouterr().err


def test_render_rejects_even_psf(tmp_path):
    table = tmp_path / "p.ecsv"
    _table().write(table)
    psf = tmp_path / "even.fits"
    fits.writeto(psf, np.ones((24, 24)))
    assert main(["render", str(table), "--psf", str(psf), "--out", str(tmp_path / "o.fits")]) == 2


def test_render_stamp_larger_than_64(tmp_path, psf_file):
    """A compact galaxy on a 101x101 stamp: the renderer's DFT size holds the stamp (a size chosen
    from the wrap-around alone, 64, would be smaller; it used to crash)."""
    table = tmp_path / "p.ecsv"
    _table(x=[51.0, 50.2], y=[51.0, 52.5], re_pix=[0.5, 5.0]).write(table)
    out = tmp_path / "big.fits"
    assert main(["render", str(table), "--psf", str(psf_file), "--out", str(out),
                 "--shape", "101", "101"]) == 0
    cube = fits.getdata(out)
    assert cube.shape == (2, 101, 101)
    assert cube[0].sum() == pytest.approx(10 ** (0.4 * 7), rel=0.01)


def test_render_fourier_sizes_unchanged_where_auto_suffices(tmp_path, psf_file):
    """On 61x61 stamps the command's images are the renderer's own (its automatic DFT sizes, which
    already hold the stamp): bit-identical to render_sersic."""
    import torch

    from galnet.render import check_psf, render_sersic, required_fourier_size

    table = tmp_path / "p.ecsv"
    t = _table()
    t.write(table)
    out = tmp_path / "cube.fits"
    assert main(["render", str(table), "--psf", str(psf_file), "--out", str(out)]) == 0
    params = np.stack([np.asarray(t[c], dtype=float) for c in ("x", "y", "mag", "re_pix", "n", "q", "pa")], 1)
    assert np.all(required_fourier_size(params, (61, 61), 25) >= 61)
    psf = torch.as_tensor(check_psf(fits.getdata(psf_file)))
    ref = render_sersic(torch.as_tensor(params), psf, validate=False).numpy().astype(np.float32)
    assert np.array_equal(fits.getdata(out), ref)
