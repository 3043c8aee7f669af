"""``galnet predict``: every input form, flags, χ², resume after interruption, Dask, bad inputs, CLI.

All tests use a tiny untrained ``galnet-psf-small`` model saved into a temporary directory: they check the
plumbing (rows, ids, frames, flags, shards), not the quality of the measurements. Predictions of the
single-process runner are compared with direct :meth:`Predictor.predict` calls on the same inputs; the
tolerance 1e-6 (relative) is float32 round-off of the same network on the same batch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from galnet.catalog import read_table
from galnet.data import border_sigma, cut_stamps, open_source, parts_dir, prepare_psfs, resize_stamps
from galnet.errors import GalnetError, InputDataError
from galnet.flags import Flag, any_set
from galnet.models import create_model, load_model, save_model
from galnet.predict import (
    PredictError,
    predict_arrays,
    predict_catalog,
    training_prior,
)
from galnet.predict.core import _render_chi2
from galnet.render import render_sersic

DATA = Path(__file__).parent / "data"
S, P = 61, 25


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = create_model("galnet-psf-small")
    card = save_model(model, tmp_path_factory.mktemp("model"), "tiny")
    return str(card)


def _gauss_psf(fwhm: float = 3.0, size: int = P, dx: float = 0.0) -> np.ndarray:
    c = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size]
    s = fwhm / 2.3548
    p = np.exp(-((xx - c - dx) ** 2 + (yy - c) ** 2) / (2 * s * s))
    return p / p.sum()


def _truth(b: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            31 + rng.uniform(-1, 1, b),
            31 + rng.uniform(-1, 1, b),
            rng.uniform(19, 21, b),
            rng.uniform(2, 5, b),
            rng.uniform(0.8, 3, b),
            rng.uniform(0.4, 0.9, b),
            rng.uniform(-80, 80, b),
        ],
        axis=1,
    )


@pytest.fixture(scope="module")
def stamps():
    """(images (B, 61, 61) with sky σ 0.05 noise, psf (25, 25), truth (B, 7)), B = 40."""
    truth = _truth(40)
    psf = _gauss_psf()
    img = render_sersic(
        torch.as_tensor(truth, dtype=torch.float32), torch.as_tensor(psf, dtype=torch.float32), shape=(S, S)
    ).numpy()
    img = img + np.random.default_rng(1).normal(0, 0.05, img.shape).astype(np.float32)
    return img.astype(np.float32), psf, truth


def _opts(model_path, **kw) -> dict:
    return {
        "model": model_path,
        "backend": "torch",
        "progress": False,
        "chunk_size": 16,
        "batch_size": 8,
        **kw,
    }


def _write_cube(path: Path, cube: np.ndarray, **header) -> Path:
    hdu = fits.PrimaryHDU(np.asarray(cube, dtype=np.float32))
    for k, v in header.items():
        hdu.header[k] = v
    hdu.writeto(path, overwrite=True)
    return path


# ------------------------------------------------------------------------------ helpers
def test_cut_and_resize_frames():
    """Whole-pixel cuts: stamp centre = the pixel holding the position; x_img = x_stamp + dx exactly."""
    img = np.arange(100 * 120, dtype=np.float32).reshape(100, 120)
    st, pad, dx, dy = cut_stamps(img, np.array([50.4, 2.0]), np.array([40.6, 99.0]), 7)
    assert st[0, 3, 3] == img[40, 49]  # (x=50.4, y=40.6) is in 0-based pixel (row 40, col 49)
    assert dx[0] + 4 == 50 and dy[0] + 4 == 41  # stamp centre (4, 4) 1-based → image (50, 41) 1-based
    assert not pad[0].any() and pad[1].any() and np.isnan(st[1][pad[1]]).all()
    cube = np.zeros((1, 65, 64), np.float32)
    cube[0, 32, 32] = 1
    out, ox, oy = resize_stamps(cube, 61)
    assert out.shape == (1, 61, 61) and out[0, 30, 30] == 1 and (ox, oy) == (2.0, 2.0)


def test_border_sigma_is_robust():
    """Border MAD recovers σ = 1 within 10 % (240 border pixels: MAD scatter ≈ 6 %) despite sources."""
    rng = np.random.default_rng(0)
    img = rng.normal(0, 1, (20, S, S))
    img[:, 25:36, 25:36] += 100
    img[:, 0:3, 0:3] += 50  # a neighbour in a corner
    assert np.all(np.abs(border_sigma(img) - 1) < 0.1)


def test_psf_repairs_are_flagged():
    good = _gauss_psf()
    cube = np.stack([good, 2 * good, _gauss_psf(dx=2.0), np.full((P, P), np.nan)])
    out, fixed, bad = prepare_psfs(cube, P)
    assert fixed.tolist() == [False, True, True, False] and bad.tolist() == [False, False, False, True]
    np.testing.assert_allclose(out[:3].sum(axis=(1, 2)), 1, rtol=1e-5)
    np.testing.assert_allclose(out[0], good, rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------------------------ input forms
def test_hdf5_matches_predictor(tmp_path, stamps, model_path):
    import pyarrow.parquet as pq

    from galnet.data import write_split

    img, psf, truth = stamps
    b = len(img)
    arrays = {
        "images": img,
        "psfs": np.broadcast_to(psf, (b, P, P)),
        "sky_sigma": np.full(b, 0.05),
        "params": truth,
        "snr": np.ones(b),
        "ids": np.arange(100, 100 + b),
    }
    h5 = write_split(tmp_path / "test.h5", arrays, {"zeropoint": 27.0, "gain": 2300.0, "pixel_scale": 0.168})
    cat = predict_catalog(h5, tmp_path / "out.parquet", **_opts(model_path))
    back = pq.read_table(tmp_path / "out.parquet")  # astropy's Parquet reader needs pandas
    back = {c: back.column(c).to_numpy() for c in back.column_names}
    assert back["id"].tolist() == list(range(100, 100 + b))
    for c in ("x", "y", "mag", "re_pix", "re_arcsec", "n", "q", "pa", "flags"):
        assert c in back
    ref = load_model(model_path).predict(img, psf, np.full(b, 0.05), batch_size=8)
    got = np.stack([np.asarray(cat[c]) for c in ("x", "y", "mag", "re_pix", "n", "q")], 1)
    np.testing.assert_allclose(got, ref[:, :6], rtol=1e-6, atol=1e-6)
    assert not parts_dir(tmp_path / "out.parquet").exists()
    prior = training_prior({})
    oop = np.zeros(b, bool)
    for j, name in enumerate(("x", "y", "mag", "re", "n", "q")):
        lo, hi = prior[name]
        oop |= (ref[:, j] < lo) | (ref[:, j] > hi)
    assert (any_set(cat["flags"], Flag.OUT_OF_PRIOR) == oop).all()


def test_fits_cube_sky_estimate_psf_cube_and_resampling(tmp_path, stamps, model_path):
    img, psf, _ = stamps
    cube = np.pad(img[:10], ((0, 0), (2, 2), (2, 2)))  # 65x65 → cropped back to 61x61
    _write_cube(tmp_path / "cube.fits", cube, MAGZPT=26.0)
    psfs = np.stack([psf] * 10)
    psfs[3] *= 3.0  # not normalised → PSF_FIXED
    _write_cube(tmp_path / "psfs.fits", psfs)
    cat = predict_catalog(
        tmp_path / "cube.fits", tmp_path / "out.fits", psf=tmp_path / "psfs.fits", **_opts(model_path)
    )
    assert len(cat) == 10 and any_set(cat["flags"], Flag.RESAMPLED).all()
    assert any_set(cat["flags"], Flag.PSF_FIXED).tolist() == [i == 3 for i in range(10)]
    # same as predicting the cropped stamps with the border-estimated sky, x/y shifted into the 65-px frame
    sky = border_sigma(img[:10])
    ref = load_model(model_path).predict(img[:10], psf, sky, batch_size=8)
    np.testing.assert_allclose(cat["x"], ref[:, 0] + 2, rtol=1e-5)
    np.testing.assert_allclose(cat["mag"], ref[:, 2] - 1.0, rtol=1e-5)  # zp 26 vs the model's 27
    assert cat.meta["ZEROPT"] == 26.0


def test_cutout_directory_layout(tmp_path, stamps, model_path, caplog):
    img, psf, _ = stamps
    d = tmp_path / "cutouts"
    d.mkdir()
    # g0: SCI + PSF + SIGMA extensions; g1: side PSF file + SKYSIG; g2: global PSF; g3 corrupt; g4 no PSF
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(img[0], name="SCI"),
            fits.ImageHDU(psf, name="PSF"),
            fits.ImageHDU(np.full((S, S), 0.05, np.float32), name="SIGMA"),
        ]
    ).writeto(d / "g0.fits")
    hdu = fits.PrimaryHDU(img[1])
    hdu.header["SKYSIG"] = 0.05
    hdu.writeto(d / "g1.fits")
    fits.PrimaryHDU(psf).writeto(d / "g1.psf.fits")
    fits.PrimaryHDU(img[2]).writeto(d / "g2.fits")
    (d / "g3.fits").write_bytes(b"SIMPLE  = garbage" * 10)
    fits.PrimaryHDU(img[3]).writeto(d / "g4.fits")
    fits.PrimaryHDU(psf).writeto(tmp_path / "global_psf.fits")
    with caplog.at_level(logging.ERROR):
        cat = predict_catalog(d, tmp_path / "out.ecsv", **_opts(model_path))
    assert cat["id"].tolist() == ["g0", "g1", "g2", "g3", "g4"]
    bad = any_set(cat["flags"], Flag.BAD_INPUT)
    assert bad.tolist() == [False, False, True, True, True]  # g2: no PSF without --psf
    assert np.isnan(cat["mag"][bad]).all() and np.isfinite(cat["mag"][~bad]).all()
    assert "g3.fits" in caplog.text
    cat2 = predict_catalog(d, tmp_path / "out2.fits", psf=tmp_path / "global_psf.fits", **_opts(model_path))
    assert any_set(cat2["flags"], Flag.BAD_INPUT).tolist() == [False, False, False, True, False]
    np.testing.assert_allclose(cat2["mag"][:2], cat["mag"][:2], rtol=1e-6)


def _injected_field(tmp_path: Path, with_wcs: bool = True):
    """A 300x260 noise image (σ 0.05) with 6 injected Sérsic galaxies and a TAN WCS (0.168"/px)."""
    rng = np.random.default_rng(3)
    h, w = 260, 300
    image = rng.normal(0, 0.05, (h, w)).astype(np.float32)
    pos = np.array(
        [[60.3, 70.8], [150.0, 130.3], [240.7, 200.2], [100.5, 210.0], [280.2, 40.4], [20.0, 245.0]]
    )
    psf = _gauss_psf()
    truth = _truth(len(pos), seed=5)
    for (x, y), t in zip(pos, truth):
        ix, iy = int(np.floor(x - 0.5)), int(np.floor(y - 0.5))
        p = t.copy()
        p[0], p[1] = 31 + (x - (ix + 1)), 31 + (y - (iy + 1))
        st = render_sersic(
            torch.as_tensor(p[None], dtype=torch.float32),
            torch.as_tensor(psf, dtype=torch.float32),
            shape=(S, S),
        ).numpy()[0]
        y0, x0 = iy - 30, ix - 30
        sy0, sx0 = max(0, y0), max(0, x0)
        sy1, sx1 = min(h, y0 + S), min(w, x0 + S)
        image[sy0:sy1, sx0:sx1] += st[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.2]
    wcs.wcs.crpix = [150.0, 130.0]
    wcs.wcs.cdelt = [-0.168 / 3600, 0.168 / 3600]
    header = wcs.to_header() if with_wcs else fits.Header()
    header["MAGZPT"] = 27.0
    fits.PrimaryHDU(image, header=header).writeto(tmp_path / "field.fits", overwrite=True)
    fits.PrimaryHDU(psf).writeto(tmp_path / "psf.fits", overwrite=True)
    sky = wcs.pixel_to_world(pos[:, 0] - 1, pos[:, 1] - 1)
    return tmp_path / "field.fits", pos, sky, wcs, image


def test_image_catalog_radec(tmp_path, model_path):
    img_path, pos, sky, wcs, image = _injected_field(tmp_path)
    ra = np.append(sky.ra.deg, 151.0)  # the last row is far outside the image
    dec = np.append(sky.dec.deg, 2.2)
    t = Table({"ID": [f"s{i}" for i in range(len(ra))], "RA": ra, "DEC": dec, "z": np.arange(len(ra)) * 0.1})
    t.write(tmp_path / "sources.fits")
    cat = predict_catalog(
        img_path,
        tmp_path / "out.fits",
        catalog=tmp_path / "sources.fits",
        psf=tmp_path / "psf.fits",
        chi2=True,
        **_opts(model_path),
    )
    assert cat["id"].tolist() == [f"s{i}" for i in range(7)]
    np.testing.assert_allclose(cat["z"], np.arange(7) * 0.1)  # carried through
    assert "input_ra" in cat.colnames or "RA" in cat.colnames
    np.testing.assert_allclose(cat["x_in"][:6], pos[:, 0], atol=1e-6)
    flags = cat["flags"]
    assert any_set(flags, Flag.BAD_INPUT).tolist() == [False] * 6 + [True]
    assert np.isnan(cat["x"][6]) and np.isnan(cat["chi2nu"][6])
    # EDGE: (280.2, 40.4) and (20.0, 245.0) stamps cross the border; the others do not
    assert any_set(flags, Flag.EDGE).tolist() == [False, False, False, False, True, True, False]
    # predicted x, y are in the image frame and ra/dec are their WCS conversion
    back = wcs.pixel_to_world(np.asarray(cat["x"][:6]) - 1, np.asarray(cat["y"][:6]) - 1)
    np.testing.assert_allclose(cat["ra"][:6], back.ra.deg, atol=1e-9)
    np.testing.assert_allclose(cat["dec"][:6], back.dec.deg, atol=1e-9)
    # and agree with predicting the hand-cut stamp directly
    st, _, dx, dy = cut_stamps(image, pos[1:2, 0], pos[1:2, 1], S)
    ref = load_model(model_path).predict(st, _gauss_psf(), np.full(1, 0.05))
    assert abs(cat["x"][1] - (ref[0, 0] + dx[0])) < 1e-3 and abs(cat["y"][1] - (ref[0, 1] + dy[0])) < 1e-3
    assert abs(cat.meta["PIXSCALE"] - 0.168) < 1e-6


def test_image_catalog_xy_csv_psf_column(tmp_path, model_path):
    img_path, pos, _, _, _ = _injected_field(tmp_path)
    fits.PrimaryHDU(_gauss_psf(fwhm=3.0) * 2.0).writeto(tmp_path / "psf_b.fits")  # not normalised
    t = Table(
        {
            "X_IMAGE": pos[:, 0],
            "Y_IMAGE": pos[:, 1],
            "psf": ["psf.fits", "psf_b.fits", "psf.fits", "missing.fits", "psf.fits", "psf.fits"],
        }
    )
    t.write(tmp_path / "sources.csv")
    cat = predict_catalog(
        img_path,
        tmp_path / "out.csv",
        catalog=tmp_path / "sources.csv",
        source_kwargs={"psf_column": "psf"},
        **_opts(model_path),
    )
    assert cat["id"].tolist() == list(range(6)) and "ra" in cat.colnames
    assert any_set(cat["flags"], Flag.PSF_FIXED).tolist() == [False, True, False, False, False, False]
    assert any_set(cat["flags"], Flag.BAD_INPUT).tolist() == [False, False, False, True, False, False]


def test_radec_without_wcs_is_a_clear_error(tmp_path, model_path):
    img_path, pos, sky, _, _ = _injected_field(tmp_path, with_wcs=False)
    Table({"ra": sky.ra.deg, "dec": sky.dec.deg}).write(tmp_path / "s.ecsv")
    with pytest.raises(InputDataError, match="no celestial WCS"):
        open_source(img_path, catalog=tmp_path / "s.ecsv", psf=tmp_path / "psf.fits")


# ------------------------------------------------------------------------------ flags and χ²
def test_predict_arrays_flags(stamps, model_path):
    img, psf, _ = stamps
    bad = img[:6].copy()
    bad[1, 10:12, 10:12] = np.nan
    bad[2] = np.nan
    cat = predict_arrays(bad, _gauss_psf(dx=1.5), 0.05, model=model_path, backend="torch")
    f = cat["flags"]
    assert any_set(f, Flag.PSF_FIXED).all()  # off-centre shared PSF re-centred
    assert any_set(f, Flag.NAN_PIXELS).tolist() == [False, True, True, False, False, False]
    assert any_set(f, Flag.BAD_INPUT).tolist() == [False, False, True, False, False, False]
    assert np.isfinite(cat["mag"][1]) and np.isnan(cat["mag"][2])
    # the network's errors come with the answers: NaN here (this model has no uncertainty head); with the
    # shipped hsc-r, finite and positive on every measured row, NaN on the row not measured
    assert "mag_err" in cat.colnames and np.isnan(np.asarray(cat["mag_err"])).all()
    shipped = predict_arrays(bad, _gauss_psf(), 0.05, model="hsc-r")
    for col in ("x_err", "mag_err", "re_pix_err", "re_arcsec_err", "n_err", "q_err", "pa_err"):
        err = np.asarray(shipped[col])
        measured = np.delete(err, 2)
        assert np.isnan(err[2]) and np.isfinite(measured).all() and (measured > 0).all(), col


def test_chi2_of_the_truth_is_one(stamps):
    """χ²ν of the true model against the noisy stamp is 1 within 0.1 (3721 pixels: σ(χ²ν) ≈ 0.023)."""
    from galnet.data import finish_chunk as _finish

    img, psf, truth = stamps
    chunk = _finish(
        0, np.arange(8), img[:8], psf, 0.05, names=[str(i) for i in range(8)], psf_fixed=np.zeros(8, bool)
    )
    chi2nu, models, _ = _render_chi2(
        chunk, truth[:8], np.ones(8, bool), zeropoint=27.0, gain=None, want_models=True
    )
    assert np.all(np.abs(chi2nu - 1) < 0.1) and models.shape == (8, S, S)


def test_save_models_and_chi2_columns(tmp_path, stamps, model_path):
    from galnet.predict import models_path

    img, psf, _ = stamps
    _write_cube(tmp_path / "cube.fits", img[:5])
    fits.PrimaryHDU(psf).writeto(tmp_path / "psf.fits")
    cat = predict_catalog(
        tmp_path / "cube.fits",
        tmp_path / "o.fits",
        psf=tmp_path / "psf.fits",
        sky_sigma=0.05,
        save_models=True,
        chi2=True,
        **_opts(model_path),
    )
    assert "chi2nu" in cat.colnames
    with fits.open(models_path(tmp_path / "o.fits")) as h:
        assert h["MODEL"].data.shape == (5, S, S) and h["RESID"].data.shape == (5, S, S)
        m = h["MODEL"].data.astype(float)
        # float32 round-off of stamp - model (the untrained net predicts arbitrary, often bright, models)
        tol = 1e-6 * np.abs(m).max(axis=(1, 2), keepdims=True) + 1e-4
        assert np.all(np.abs(h["RESID"].data + m - img[:5]) <= tol)


# ------------------------------------------------------------------------------ resume, Dask
class _Crash(Exception):
    pass


def test_resume_after_interruption(tmp_path, stamps, model_path):
    img, psf, _ = stamps
    _write_cube(tmp_path / "cube.fits", img)
    fits.PrimaryHDU(psf).writeto(tmp_path / "psf.fits")
    kw = {"psf": tmp_path / "psf.fits", "sky_sigma": 0.05, **_opts(model_path, chunk_size=7)}
    full = predict_catalog(tmp_path / "cube.fits", tmp_path / "full.fits", **kw)
    seen = []

    def crash_after_two(start, stop):
        seen.append((start, stop))
        if len(seen) == 2:
            raise _Crash

    out = tmp_path / "run.fits"
    with pytest.raises(_Crash):
        predict_catalog(tmp_path / "cube.fits", out, on_chunk=crash_after_two, **kw)
    shards = sorted(parts_dir(out).glob("part-*.npz"))
    assert len(shards) == 2 and not out.exists()
    resumed = []
    cat = predict_catalog(
        tmp_path / "cube.fits", out, resume=True, on_chunk=lambda a, b: resumed.append(a), **kw
    )
    assert resumed == [14, 21, 28, 35]  # the two chunks already done were not recomputed
    assert cat["id"].tolist() == list(range(40))
    for c in full.colnames:
        np.testing.assert_array_equal(np.asarray(cat[c]), np.asarray(full[c]))
    # max_chunks stops cleanly; resuming with other options is refused
    assert predict_catalog(tmp_path / "cube.fits", tmp_path / "r2.fits", max_chunks=1, **kw) is None
    with pytest.raises(PredictError, match="chunk_size"):
        predict_catalog(tmp_path / "cube.fits", tmp_path / "r2.fits", resume=True, **{**kw, "chunk_size": 5})


def test_dask_local_cluster_matches_single_process(tmp_path, stamps, model_path):
    """2 workers (threads: processes=False, to keep the test fast) give the single-process catalog exactly."""
    pytest.importorskip("distributed")
    img, psf, _ = stamps
    _write_cube(tmp_path / "cube.fits", img)
    fits.PrimaryHDU(psf).writeto(tmp_path / "psf.fits")
    kw = {"psf": tmp_path / "psf.fits", **_opts(model_path, chunk_size=10, threads=1)}
    single = predict_catalog(tmp_path / "cube.fits", tmp_path / "a.fits", **kw)
    multi = predict_catalog(
        tmp_path / "cube.fits", tmp_path / "b.fits", workers=2, dask_processes=False, **kw
    )
    for c in single.colnames:
        np.testing.assert_array_equal(np.asarray(multi[c]), np.asarray(single[c]))


@pytest.mark.slow
def test_dask_processes(tmp_path, stamps, model_path):
    img, psf, _ = stamps
    _write_cube(tmp_path / "cube.fits", img)
    fits.PrimaryHDU(psf).writeto(tmp_path / "psf.fits")
    kw = {"psf": tmp_path / "psf.fits", **_opts(model_path, chunk_size=10, threads=1)}
    single = predict_catalog(tmp_path / "cube.fits", tmp_path / "a.fits", **kw)
    multi = predict_catalog(tmp_path / "cube.fits", tmp_path / "b.fits", workers=2, **kw)
    for c in single.colnames:
        np.testing.assert_array_equal(np.asarray(multi[c]), np.asarray(single[c]))


# ------------------------------------------------------------------------------ bad inputs, CLI
def test_bad_files_have_clear_messages(tmp_path, stamps, model_path):
    img, psf, _ = stamps
    with pytest.raises(InputDataError, match="nope.fits: no such input"):
        predict_catalog(tmp_path / "nope.fits", tmp_path / "o.fits", **_opts(model_path))
    (tmp_path / "bad.fits").write_bytes(b"\x00" * 100)
    with pytest.raises(InputDataError, match="bad.fits"):
        open_source(tmp_path / "bad.fits", psf=psf)
    _write_cube(tmp_path / "cube.fits", img[:3])
    with pytest.raises(InputDataError, match="needs a PSF"):
        open_source(tmp_path / "cube.fits")
    with pytest.raises(InputDataError, match="2 PSFs for 3 stamps"):
        open_source(tmp_path / "cube.fits", psf=np.stack([psf, psf]))
    with pytest.raises(GalnetError, match="PSF"):
        open_source(tmp_path / "cube.fits", psf=np.full((P, P), np.nan))
    with pytest.raises(InputDataError, match="unknown table format"):
        predict_catalog(tmp_path / "cube.fits", tmp_path / "o.txt", psf=psf, **_opts(model_path))


def test_cli(tmp_path, stamps, model_path, capsys):
    from galnet.cli import main

    img, psf, _ = stamps
    _write_cube(tmp_path / "cube.fits", img[:6])
    fits.PrimaryHDU(psf).writeto(tmp_path / "psf.fits")
    rc = main(
        [
            "predict",
            str(tmp_path / "cube.fits"),
            "-o",
            str(tmp_path / "o.fits"),
            "--psf",
            str(tmp_path / "psf.fits"),
            "--model",
            model_path,
            "--backend",
            "torch",
            "--no-progress",
            "--chunk-size",
            "4",
            "--quicklook",
            str(tmp_path / "q.png"),
        ]
    )
    assert rc == 0 and len(read_table(tmp_path / "o.fits")) == 6 and (tmp_path / "q.png").is_file()
    assert "6 rows" in capsys.readouterr().out
    rc = main(
        ["predict", str(tmp_path / "missing.fits"), "-o", str(tmp_path / "o.fits"), "--model", model_path]
    )
    assert rc == 2


def test_real_hst_image(tmp_path, model_path):
    """The real HST F105W cutout with the even-sized empirical PSF (re-centred: PSF_FIXED) and its WCS."""
    img = DATA / "abell_2744_group_of_galaxies_f105w.fits.gz"
    with fits.open(img) as h:
        data = h[0].data
    yy, xx = np.unravel_index(np.argsort(np.nan_to_num(data).ravel())[-1], data.shape)
    Table({"x": [xx + 1.0, 50.0, 3.0], "y": [yy + 1.0, 50.0, 97.0]}).write(tmp_path / "s.parquet")
    cat = predict_catalog(
        img,
        tmp_path / "o.fits",
        catalog=tmp_path / "s.parquet",
        psf=DATA / "f105w_psf.fits.gz",
        source_kwargs={"zeropoint": 26.27},
        **_opts(model_path),
    )
    assert len(cat) == 3 and any_set(cat["flags"], Flag.PSF_FIXED).all()
    assert any_set(cat["flags"], Flag.EDGE)[2] and np.isfinite(cat["ra"]).all()
    assert abs(cat.meta["PIXSCALE"] - 0.06) < 1e-3 and cat.meta["ZEROPT"] == 26.27
    json.dumps(dict(cat.meta), default=str)
