"""Tests of galnet.simulate: presets, generate_batch, PSFs, backgrounds, the sharded writer and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from galnet.errors import ConfigError, InputDataError, PSFError
from galnet.render import draw_analytic_psfs, load_psf_library, recenter_psf
from galnet.simulate import SimulationConfig, generate_batch, load_preset, simulate_dataset

DATA = Path(__file__).parent / "data"
HST_IMAGE = DATA / "abell_2744_group_of_galaxies_f105w.fits.gz"
HST_PSF = DATA / "f105w_psf.fits.gz"
HST_ZP = 26.27  # AB zero point of the HST image for electrons/s (see tests/data/README_hst_a2744.md)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**over) -> SimulationConfig:
    return load_preset("hsc-r", over)


def _clean(**over) -> SimulationConfig:
    """Noise-free, no neighbours: the target alone."""
    base = {"noise": {"enabled": False}, "neighbours": {"enabled": False}}
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return _config(**base)


# ----------------------------------------------------------------------------- config
def test_preset_values_and_derived_sky_sigma():
    """The preset carries the HSC numbers; sigma from the 26.0 depth (Moffat 0.75") is 0.058 counts/px."""
    c = load_preset("hsc-r")
    assert (c.pixel_scale, c.zeropoint, c.stamp_size, c.psf_size) == (0.168, 27.0, 61, 25)
    assert c.sky_sigma() == pytest.approx(0.0579, rel=0.01)
    assert c.re_cap_pix() == 15.0
    again = SimulationConfig.from_dict(json.loads(c.to_json()))
    assert again == c


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        load_preset("no-such-survey")
    with pytest.raises(ConfigError, match="unknown key"):
        load_preset("hsc-r", {"noise": {"depht_5sigma": 26}})
    bad = tmp_path / "bad.toml"
    bad.write_text('stamp_size = 60\n')
    with pytest.raises(ConfigError, match="bad.toml.*odd"):
        load_preset(bad)
    with pytest.raises(ConfigError, match="loguniform needs low > 0"):
        load_preset("hsc-r", {"priors": {"n": {"kind": "loguniform", "low": 0.0, "high": 2.0}}})


def test_table_prior(tmp_path):
    table = tmp_path / "sizes.csv"
    table.write_text("re,other\n0.5,1\n1.5,2\n")
    c = load_preset("hsc-r", {"priors": {"re_arcsec": {"kind": "table", "path": str(table), "column": "re"}}})
    draws = c.priors.re_arcsec.sample(np.random.default_rng(0), 100)
    assert set(np.unique(draws)) == {0.5, 1.5}


# ----------------------------------------------------------------------------- generate_batch
def test_same_seed_same_batch():
    c = _small()
    a, b = generate_batch(c, 8, seed=3), generate_batch(c, 8, seed=3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    other = generate_batch(c, 8, seed=4)
    assert not np.array_equal(a["images"], other["images"])
    assert a["images"].dtype == np.float32 and a["params"].dtype == np.float64
    assert a["images"].shape == (8, 61, 61) and a["psfs"].shape == (8, 25, 25)
    np.testing.assert_allclose(a["psfs"].sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_priors_respected():
    c = _config()
    p = generate_batch(c, 64, seed=0)["params"]
    assert np.all(np.abs(p[:, 0] - 31) <= 2) and np.all(np.abs(p[:, 1] - 31) <= 2)
    assert np.all((p[:, 2] >= 17) & (p[:, 2] <= 24))
    assert np.all((p[:, 3] >= 0.1 / 0.168) & (p[:, 3] <= 15.0))
    assert np.all((p[:, 4] >= 0.3) & (p[:, 4] <= 8)) and np.all((p[:, 5] >= 0.1) & (p[:, 5] <= 1))
    assert np.all((p[:, 6] >= -90) & (p[:, 6] < 90))


@pytest.mark.parametrize("correlated", [0.0, 1.0])
def test_sky_sigma_of_empty_stamps(correlated):
    """Empty stamps (a 45-mag 'galaxy', no neighbours): measured sigma = preset sigma within 2%.

    40 stamps x 3721 px give the pooled std to 0.2%; correlated noise is renormalised to keep sigma.
    """
    empty = {"mag": {"kind": "fixed", "value": 45.0}, "re_arcsec": {"kind": "fixed", "value": 0.3}}
    c = _config(priors=empty, neighbours={"enabled": False},
                noise={"depth_scatter_mag": 0.0, "correlated_fraction": correlated})
    b = generate_batch(c, 40, seed=11)
    np.testing.assert_allclose(b["sky_sigma"], c.sky_sigma(), rtol=1e-6)
    assert b["images"].std() == pytest.approx(c.sky_sigma(), rel=0.02)
    assert abs(b["images"].mean()) < 0.01 * c.sky_sigma()
    # with the depth scatter on, each stamp's stored sigma is what its pixels show
    c2 = _config(priors=empty, neighbours={"enabled": False})
    b2 = generate_batch(c2, 40, seed=12)
    z = b2["images"] / b2["sky_sigma"][:, None, None]
    assert z.std() == pytest.approx(1.0, rel=0.02)
    if correlated:
        # neighbouring pixels are correlated in resampled-coadd noise, not in white noise
        r = np.corrcoef(b["images"][:, :, 1:].ravel(), b["images"][:, :, :-1].ravel())[0, 1]
        assert r > 0.1


def test_injected_flux_recovered_noise_free():
    """Noise-free compact galaxies: stamp sum = 10**(-0.4 (mag - 27)) to 0.5%.

    n <= 1.5 and re <= 2.5 px keep the light beyond the stamp < 0.01%; the rest is the renderer's
    wrap tolerance (3e-3 of the flux at most).
    """
    c = _clean(priors={"re_arcsec": {"kind": "loguniform", "low": 0.1, "high": 0.4},
                       "n": {"kind": "uniform", "low": 0.5, "high": 1.5}})
    b = generate_batch(c, 32, seed=5)
    flux = 10 ** (-0.4 * (b["params"][:, 2] - 27.0))
    np.testing.assert_allclose(b["images"].sum(axis=(1, 2), dtype=np.float64), flux, rtol=5e-3)


def test_stored_parameters_follow_conventions():
    """Centroid of a noise-free stamp = (x, y) 1-based; PA of the second moments = pa (CCW from +y).

    Round, centred PSF (ellipticity 0) and an n = 1 profile contained in the stamp: the centroid is
    exact to < 0.01 px and the moment PA to < 0.5 deg.
    """
    c = _clean(priors={"mag": {"kind": "fixed", "value": 19.0}, "re_arcsec": {"kind": "uniform", "low": 0.5,
                       "high": 0.8}, "n": {"kind": "fixed", "value": 1.0},
                       "q": {"kind": "uniform", "low": 0.3, "high": 0.6}},
               psf={"ellipticity": {"kind": "fixed", "value": 0.0}})
    b = generate_batch(c, 16, seed=9)
    img = b["images"].astype(np.float64)
    yy, xx = np.indices(img.shape[1:]) + 1.0  # 1-based pixel centres
    tot = img.sum(axis=(1, 2))
    cx, cy = (img * xx).sum(axis=(1, 2)) / tot, (img * yy).sum(axis=(1, 2)) / tot
    np.testing.assert_allclose(cx, b["params"][:, 0], atol=0.01)
    np.testing.assert_allclose(cy, b["params"][:, 1], atol=0.01)
    dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
    ixx, iyy, ixy = ((img * d).sum(axis=(1, 2)) / tot for d in (dx * dx, dy * dy, dx * dy))
    theta_from_x = 0.5 * np.degrees(np.arctan2(2 * ixy, ixx - iyy))
    pa = (theta_from_x - 90 + 90) % 180 - 90
    diff = (pa - b["params"][:, 6] + 90) % 180 - 90
    assert np.all(np.abs(diff) < 0.5), diff


def test_neighbours_and_snr_recorded():
    c = _config()
    b = generate_batch(c, 64, seed=2, return_models=True)
    assert b["n_neighbours"].mean() > 1  # ~3.7 per stamp from the number counts
    assert np.all(b["background"] == -1)
    # S/N follows from the noise-free model and the stamp's sigma
    m = b["models"].astype(np.float64)
    sig2 = b["sky_sigma"][:, None, None].astype(np.float64) ** 2 + np.maximum(m, 0) / c.gain
    np.testing.assert_allclose(b["snr"], np.sqrt((m**2 / sig2).sum(axis=(1, 2))), rtol=1e-4)
    assert np.all(b["snr"] > 5)  # mag <= 24 at a 26.0 depth


def test_stamps_equal_the_sum_of_single_renders(monkeypatch):
    """A noise-free stamp is the target plus every neighbour and star, each rendered alone by
    render_sersic with the stamp's PSF and its wrap tolerance (the scene renderer sums them in
    Fourier space): to 1e-9 of the stamp's peak with float64 rendering."""
    import torch

    from galnet.render import render_sersic
    from galnet.simulate import generate as gen

    kept = {}
    real = gen._draw_neighbours

    def keep(*a, **k):
        out = real(*a, **k)
        kept["params"], kept["owner"] = out[0], out[1]
        return out

    monkeypatch.setattr(gen, "_draw_neighbours", keep)
    c = _config(noise={"enabled": False}, render_dtype="float64")
    b = generate_batch(c, 6, seed=8, return_models=True)
    psfs = torch.as_tensor(b["psfs"], dtype=torch.float64)
    psfs = psfs / psfs.sum(dim=(1, 2), keepdim=True)
    target = render_sersic(torch.as_tensor(b["params"]), psfs, wrap_tolerance=c.wrap_tolerance).numpy()
    expect = target.copy()
    nb, owner = kept["params"], kept["owner"]
    assert len(nb) > 6
    for p, i in zip(nb, owner):
        expect[i] += render_sersic(torch.as_tensor(p[None]), psfs[i],
                                   wrap_tolerance=c.neighbours.wrap_tolerance)[0].numpy()
    peak = np.abs(expect).max(axis=(1, 2))
    assert (np.abs(b["models"] - target).max(axis=(1, 2)) / peak).max() < 1e-6  # stored as float32
    assert (np.abs(b["images"] - expect).max(axis=(1, 2)) / peak).max() < 1e-6


# ----------------------------------------------------------------------------- PSFs
@pytest.mark.parametrize("kind", ["moffat", "kolmogorov"])
def test_fast_psfs_match_render_psfs(kind):
    """The vectorised sub-pixel PSFs agree with galnet.render's exact ePSFs to 2e-3 of the peak."""
    from galnet.render import KolmogorovPSF, MoffatPSF

    fwhm, beta, q, pa = 4.2, 3.0, 0.9, 30.0
    ref = (MoffatPSF(fwhm=fwhm, q=q, pa=pa, beta=beta) if kind == "moffat"
           else KolmogorovPSF(fwhm=fwhm, q=q, pa=pa)).draw(25).numpy()
    mine = draw_analytic_psfs(np.array([0 if kind == "moffat" else 1]), np.array([fwhm]), np.array([beta]),
                              np.array([q]), np.array([pa]), 25)[0]
    assert np.abs(mine - ref).max() < 2e-3 * ref.max()


def _direct_psfs(model, fwhm, beta, q, pa, size, oversample=5):
    """Reference for draw_analytic_psfs: every sub-pixel of the full stamp, in float64."""
    from galnet.render.psf import _kolmogorov_table

    s = size * oversample
    u = (np.arange(s) - (s - 1) / 2) / oversample
    yy, xx = np.meshgrid(u, u, indexing="ij")
    out = []
    for m, f, bt, qq, a in zip(model, fwhm, beta, q, np.radians(pa)):
        x_major = -xx * np.sin(a) + yy * np.cos(a)
        x_minor = (xx * np.cos(a) + yy * np.sin(a)) / qq
        r2 = x_major**2 + x_minor**2
        if m == 0:
            img = (1 + r2 / (f / (2 * np.sqrt(2 ** (1 / bt) - 1))) ** 2) ** -bt
        else:
            img = np.interp(np.sqrt(r2) / f, *_kolmogorov_table(), right=0.0)
        img = img.reshape(size, oversample, size, oversample).sum(axis=(1, 3))
        out.append(img / img.sum())
    return np.array(out)


def test_analytic_psfs_equal_direct_evaluation():
    """The vectorised PSFs (half the sub-pixels evaluated, the rest by point symmetry; r^2 as one
    matrix product; float32) equal a direct float64 evaluation of every sub-pixel to 2e-6 of the
    peak, for Moffat and Kolmogorov profiles of any FWHM, beta, ellipticity and orientation."""
    rng = np.random.default_rng(12)
    n = 40
    args = (np.arange(n) % 2, rng.uniform(3.0, 7.0, n), rng.uniform(2.0, 5.0, n), rng.uniform(0.9, 1.0, n),
            rng.uniform(-90, 90, n))
    ours = draw_analytic_psfs(*args, 25)
    ref = _direct_psfs(*args, 25)
    assert np.abs(ours - ref).max() / ref.max() < 2e-6
    np.testing.assert_allclose(ours.sum(axis=(1, 2)), 1.0, rtol=1e-12)


def test_recenter_even_uncentred_psf():
    """The 50x50 HST PSF (centroid at 0-based (23.7, 24.2)) becomes a centred 25x25 unit-sum ePSF."""
    from astropy.io import fits

    from galnet.render import psf_centroid

    raw = fits.getdata(HST_PSF).astype(float)
    psf = recenter_psf(raw, 25, name="f105w")
    assert psf.shape == (25, 25) and psf.sum() == pytest.approx(1.0)
    cx, cy = psf_centroid(psf)
    assert abs(cx - 12) < 0.1 and abs(cy - 12) < 0.1


def test_psf_library_used_and_bad_library_rejected(tmp_path):
    from astropy.io import fits

    raw = fits.getdata(HST_PSF).astype(float)
    good = tmp_path / "lib.fits"
    fits.PrimaryHDU(np.stack([raw, raw.T])).writeto(good)
    lib = load_psf_library(str(good), 25)
    assert lib.shape == (2, 25, 25)
    c = _config(psf={"library": str(good)})
    b = generate_batch(c, 8, seed=1)
    assert all(np.allclose(p, lib[0], atol=1e-6) or np.allclose(p, lib[1], atol=1e-6) for p in b["psfs"])
    assert np.all(np.isnan(b["psf_fwhm"]))

    bad = raw.copy()
    bad[3, 4] = np.nan
    nan_file = tmp_path / "nan.fits"
    fits.PrimaryHDU(np.stack([raw, bad])).writeto(nan_file)
    with pytest.raises(PSFError, match=r"nan\.fits\[1\].*NaN"):
        load_psf_library(str(nan_file), 25)
    zero_file = tmp_path / "zero.fits"
    fits.PrimaryHDU(np.zeros((2, 25, 25))).writeto(zero_file)
    with pytest.raises(PSFError, match=r"zero\.fits\[0\].*sum"):
        load_psf_library(str(zero_file), 25)
    with pytest.raises(InputDataError, match="missing.fits"):
        load_psf_library(str(tmp_path / "missing.fits"), 25)


# ----------------------------------------------------------------------------- real backgrounds
def _bg_config(files, **bg):
    return _config(background={"files": [str(f) for f in files], "zeropoint": HST_ZP, **bg})


def test_real_background_injection():
    """Galaxies injected into the real HST image: stamp - model is a cutout of the rescaled sky-subtracted
    image (noise off), synthetic neighbours are not added, and sky_sigma is the cutout's robust sigma."""
    from astropy.io import fits
    from astropy.stats import sigma_clipped_stats

    c = load_preset("hsc-r", {"noise": {"enabled": False},
                              "background": {"files": [str(HST_IMAGE)], "zeropoint": HST_ZP}})
    b = generate_batch(c, 6, seed=4, return_models=True)
    assert np.all(b["background"] == 0) and np.all(b["n_neighbours"] == 0)
    img = fits.getdata(HST_IMAGE).astype(np.float64) * 10 ** (0.4 * (27.0 - HST_ZP))
    img -= sigma_clipped_stats(img, sigma=3.0, maxiters=10)[1]
    from numpy.lib.stride_tricks import sliding_window_view

    windows = sliding_window_view(img, (61, 61))
    for stamp, model, sig in zip(b["images"], b["models"], b["sky_sigma"]):
        resid = stamp.astype(np.float64) - model
        d = np.abs(windows - resid).max(axis=(2, 3))
        assert d.min() < 1e-5 * np.abs(img).max()
        assert sig == pytest.approx(1.4826 * np.median(np.abs(resid - np.median(resid))), rel=1e-3)
    # with noise on, the galaxy's Poisson noise is added on top
    c2 = _bg_config([HST_IMAGE])
    assert generate_batch(c2, 2, seed=4)["images"].shape == (2, 61, 61)


def test_real_background_with_variance_plane(tmp_path):
    from astropy.io import fits

    data = fits.getdata(HST_IMAGE).astype(np.float32)
    path = tmp_path / "with_var.fits"
    var = fits.ImageHDU(np.full_like(data, 1e-4), name="VARIANCE")
    fits.HDUList([fits.PrimaryHDU(data), var]).writeto(path)
    c = _bg_config([path], variance_hdu="VARIANCE")
    b = generate_batch(c, 4, seed=0, return_models=True)
    scale2 = 10 ** (0.8 * (27.0 - HST_ZP))
    np.testing.assert_allclose(b["sky_sigma"], np.sqrt(1e-4 * scale2), rtol=1e-5)
    expect = np.sqrt(1e-4 * scale2 + np.maximum(b["models"], 0) / c.gain)
    np.testing.assert_allclose(b["sigma_maps"], expect, rtol=1e-4)


def test_bad_backgrounds_rejected(tmp_path):
    from astropy.io import fits

    small = tmp_path / "small.fits"
    fits.PrimaryHDU(np.zeros((30, 30), np.float32)).writeto(small)
    with pytest.raises(InputDataError, match=r"small\.fits.*smaller than one 61x61 stamp"):
        generate_batch(_bg_config([small]), 2, seed=0)
    nan = tmp_path / "allnan.fits"
    fits.PrimaryHDU(np.full((100, 100), np.nan, np.float32)).writeto(nan)
    with pytest.raises(InputDataError, match=r"allnan\.fits.*finite pixels"):
        generate_batch(_bg_config([nan]), 2, seed=0)
    holes = tmp_path / "holes.fits"
    arr = np.random.default_rng(0).normal(size=(70, 70)).astype(np.float32)
    arr[::8, ::8] = np.nan
    fits.PrimaryHDU(arr).writeto(holes)
    with pytest.raises(InputDataError, match=r"holes\.fits.*no 61x61 cutout free of NaN"):
        generate_batch(_bg_config([holes], max_tries=5), 2, seed=0)
    with pytest.raises(InputDataError, match="nothere.fits"):
        generate_batch(_bg_config([tmp_path / "nothere.fits"]), 2, seed=0)


# ----------------------------------------------------------------------------- writer
def _small(**over):
    """Compact targets (small DFT grids) with neighbours: fast enough for the writer tests."""
    return _config(priors={"re_arcsec": {"kind": "loguniform", "low": 0.1, "high": 0.5},
                           "n": {"kind": "loguniform", "low": 0.5, "high": 2.0}}, **over)


def test_dataset_same_seed_identical_across_workers(tmp_path):
    """workers=1 and workers=2 give byte-identical arrays (per-shard SeedSequence streams)."""
    from galnet.data import read_arrays

    c = _small()
    a = simulate_dataset(c, tmp_path / "a", 30, (0.6, 0.2, 0.2), seed=7, shard_size=6, progress=False)
    b = simulate_dataset(c, tmp_path / "b", 30, (0.6, 0.2, 0.2), seed=7, shard_size=6, workers=2,
                         progress=False)
    for split in ("train", "val", "test"):
        ra, rb = read_arrays(a[split]), read_arrays(b[split])
        assert set(ra) == set(rb)
        for k in ra:
            assert ra[k].tobytes() == rb[k].tobytes(), (split, k)
    ids = np.concatenate([read_arrays(a[s])["ids"] for s in ("train", "val", "test")])
    np.testing.assert_array_equal(ids, np.arange(30))
    assert len(read_arrays(a["train"])["ids"]) == 18


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_shard_merge_copies_compressed_chunks(tmp_path, compression):
    """Merging shards copies their compressed chunks: the file equals concatenate_files' (arrays,
    dtypes, chunks, filters, meta), for whole-chunk shards, a short last shard, a shard smaller than
    a chunk (rewritten) and misaligned shards (concatenate_files itself)."""
    import h5py

    from galnet.data import read_arrays
    from galnet.data.h5 import concatenate_files, write_split
    from galnet.simulate.writer import _merge_shards

    rng = np.random.default_rng(1)

    def arrays(m):
        return {"images": rng.normal(size=(m, 61, 61)).astype(np.float32),
                "psfs": rng.random((m, 25, 25)).astype(np.float32),
                "sky_sigma": rng.random(m).astype(np.float32), "params": rng.random((m, 7)),
                "snr": rng.random(m).astype(np.float32), "ids": np.arange(m),
                "n_neighbours": rng.integers(0, 5, m).astype(np.int16)}

    for k, sizes in enumerate([(64, 64, 40), (96, 5), (64, 64), (40, 30), (10,)]):
        parts = [write_split(tmp_path / f"{k}-{i}.h5", arrays(m), {"shard": i}, compression=compression)
                 for i, m in enumerate(sizes)]
        a = _merge_shards(tmp_path / f"a{k}.h5", parts, {"split": "train"}, compression)
        b = concatenate_files(tmp_path / f"b{k}.h5", parts, {"split": "train"}, compression=compression)
        ra, rb = read_arrays(a), read_arrays(b)
        assert set(ra) == set(rb)
        for name in ra:
            assert ra[name].dtype == rb[name].dtype and np.array_equal(ra[name], rb[name]), (sizes, name)
        with h5py.File(a) as fa, h5py.File(b) as fb:
            assert fa.attrs["meta"] == fb.attrs["meta"]
            for name in fa:
                layout = ("chunks", "compression", "compression_opts", "shuffle")
                assert [getattr(fa[name], x) for x in layout] == [getattr(fb[name], x) for x in layout]


def test_lzf_dataset_has_the_same_arrays(tmp_path):
    """compression='lzf' changes only the HDF5 filter, not the arrays."""
    import h5py

    from galnet.data import read_arrays

    c = _small(neighbours={"enabled": False})
    a = simulate_dataset(c, tmp_path / "g", 12, (1, 0, 0), seed=2, shard_size=6, progress=False)
    b = simulate_dataset(c, tmp_path / "l", 12, (1, 0, 0), seed=2, shard_size=6, progress=False,
                         compression="lzf")
    ra, rb = read_arrays(a["train"]), read_arrays(b["train"])
    for k in ra:
        np.testing.assert_array_equal(ra[k], rb[k])
    with h5py.File(b["train"]) as f:
        assert f["images"].compression == "lzf"
    with pytest.raises(ConfigError, match="compression"):
        simulate_dataset(c, tmp_path / "x", 12, seed=2, progress=False, compression="zstd")


def test_resume_after_kill(tmp_path, monkeypatch):
    """A run killed after two shards keeps them; the rerun draws only the missing shards and the result
    equals an uninterrupted run."""
    from galnet.data import read_arrays
    from galnet.simulate import writer

    c = _small(neighbours={"enabled": False})
    real = writer._shard_task
    calls: list[tuple] = []

    def dying(task):
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        calls.append((task[2], task[3]))
        return real(task)

    monkeypatch.setattr(writer, "_shard_task", dying)
    with pytest.raises(KeyboardInterrupt):
        simulate_dataset(c, tmp_path / "r", 20, (0.8, 0.1, 0.1), seed=3, shard_size=4, progress=False)
    kept = sorted(p.name for p in (tmp_path / "r" / "shards").glob("*.h5"))
    assert kept == ["train-00000.h5", "train-00001.h5"]
    first = {p: p.stat().st_mtime_ns for p in (tmp_path / "r" / "shards").glob("*.h5")}

    calls.clear()
    monkeypatch.setattr(writer, "_shard_task", lambda t: (calls.append((t[2], t[3])), real(t))[1])
    out = simulate_dataset(c, tmp_path / "r", 20, (0.8, 0.1, 0.1), seed=3, shard_size=4, progress=False,
                           keep_shards=True)
    assert (0, 0) not in calls and (0, 1) not in calls and (0, 2) in calls
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    ref = simulate_dataset(c, tmp_path / "ref", 20, (0.8, 0.1, 0.1), seed=3, shard_size=4, progress=False)
    for split in ("train", "val", "test"):
        ra, rb = read_arrays(out[split]), read_arrays(ref[split])
        for k in ra:
            np.testing.assert_array_equal(ra[k], rb[k])
    # everything done: a rerun draws nothing; another seed in the same directory is refused
    calls.clear()
    simulate_dataset(c, tmp_path / "r", 20, (0.8, 0.1, 0.1), seed=3, shard_size=4, progress=False)
    assert calls == []
    with pytest.raises(ConfigError, match="another config"):
        simulate_dataset(c, tmp_path / "r", 20, (0.8, 0.1, 0.1), seed=4, shard_size=4, progress=False)


def test_cli_simulate(tmp_path, capsys):
    from galnet.cli import main
    from galnet.data import StampDataset

    out = tmp_path / "cli"
    rc = main(["simulate", "--n", "10", "--split", "0.8,0.1,0.1", "--seed", "1", "--preset", "hsc-r",
               "--out", str(out), "--shard-size", "5", "--no-progress",
               "--background", str(HST_IMAGE), "--background-zeropoint", str(HST_ZP),
               "--psf-library", str(HST_PSF)])
    assert rc == 0
    ds = StampDataset(out / "train.h5")
    assert len(ds) == 8 and ds.meta["preset"]["psf"]["library"] == str(HST_PSF)
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    rc = main(["simulate", "--n", "10", "--out", str(tmp_path / "x"), "--preset", "nope"])
    assert rc == 2 and "unknown preset" in capsys.readouterr().err


_KILL_PRESET = """
name = "kill-test"
stamp_size = 31
psf_size = 11
[priors]
re_arcsec = { kind = "loguniform", low = 0.1, high = 0.5 }
n = { kind = "loguniform", low = 0.5, high = 2.0 }
"""


def _h5_arrays(path: Path) -> dict:
    """Every dataset of an HDF5 file as an array, and its ``meta`` attribute."""
    import h5py

    with h5py.File(path, "r") as f:
        out = {k: f[k][...] for k in f}
        out["meta"] = f.attrs["meta"]
    return out


_ZYGOTE = """
import json, os, signal, sys, time
import torch
torch.set_num_threads(1)
from galnet.cli import build_parser, main
from galnet.simulate import generate_batch, load_preset
build_parser()  # imports every stage
generate_batch(load_preset(sys.argv[1]), 64, seed=0)  # warm the per-process caches (Fourier tables)
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the galnet run
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os._exit(main(req["argv"]))
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if req["kill_after"] is not None and time.perf_counter() - t0 >= req["kill_after"]:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.0005)
    print(json.dumps({"killed": os.WIFSIGNALED(status),
                      "rc": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                      "seconds": time.perf_counter() - t0}), flush=True)
"""


def test_kill9_at_random_points_then_resume(tmp_path):
    """``kill -9`` a ``galnet simulate`` run at 10 random moments, rerunning the same command after
    each; a final rerun gives every dataset (and the ``meta``) of train/val/test identical to an
    uninterrupted run, and leaves no temporary file.

    Each run is a separate process, killed with SIGKILL. To keep the test short and the kill points
    inside the work, the runs are forked (``galnet.cli.main`` in the child) from a "zygote"
    subprocess that has imported torch and galnet and warmed their caches: a plain
    ``python -m galnet.cli`` spends seconds importing torch and building tables, where most kill
    points would fall. The 10 moments are drawn from a seeded RNG, uniformly over the duration of
    the uninterrupted run, and sorted; each run is killed after the gap to the next moment, so the
    kills walk through the whole run (shard writes and merges included). On a machine so loaded that
    fewer than 3 kills fell after the first shard was written, 10 more are drawn (at most twice).
    """
    import json
    import os
    import subprocess
    import sys

    preset = tmp_path / "kill.toml"
    preset.write_text(_KILL_PRESET)
    script = tmp_path / "zygote.py"
    script.write_text(_ZYGOTE)

    def argv(out):
        return ["simulate", "--n", "90", "--shard-size", "3", "--split", "0.6,0.2,0.2", "--seed", "11",
                "--preset", str(preset), "--out", str(out), "--threads", "1", "--no-progress"]

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    zygote = subprocess.Popen([sys.executable, str(script), str(preset)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert zygote.stdout.readline().strip() == "ready"

        def run(out, kill_after=None) -> dict:
            zygote.stdin.write(json.dumps({"argv": argv(out), "kill_after": kill_after}) + "\n")
            zygote.stdin.flush()
            return json.loads(zygote.stdout.readline())

        ref = run(tmp_path / "ref")
        assert ref == {**ref, "killed": False, "rc": 0}
        rng = np.random.default_rng(20261202)
        states: list[list[str]] = []
        for _ in range(3):  # 10 kills; 10 more if a loaded machine made them all fall before the first shard
            moments = np.sort(rng.uniform(0.0, ref["seconds"], 10))
            for gap in np.diff(np.concatenate([[0.0], moments])):
                result = run(tmp_path / "run", kill_after=float(gap))
                if result["killed"]:
                    states.append(sorted(p.name for p in (tmp_path / "run").rglob("*") if p.is_file()))
            if sum(any(n.endswith("-00000.h5") for n in s) for s in states) >= 3:
                break
        final = run(tmp_path / "run")
    finally:
        zygote.stdin.close()
        zygote.wait(30)
        zygote.stdout.close()
    assert final["rc"] == 0
    assert len(states) >= 8, f"the kill points should fall inside the runs: {states}"  # not after their end
    assert sum(any(n.endswith("-00000.h5") for n in s) for s in states) >= 3, states
    for split in ("train", "val", "test"):
        a, b = _h5_arrays(tmp_path / "ref" / f"{split}.h5"), _h5_arrays(tmp_path / "run" / f"{split}.h5")
        assert sorted(a) == sorted(b)
        for k in a:
            assert np.array_equal(a[k], b[k]), (split, k)
    leftovers = sorted(p.name for p in (tmp_path / "run").rglob("*") if p.is_file())
    assert leftovers == ["config.json", "test.h5", "train.h5", "val.h5"]
