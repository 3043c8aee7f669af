"""galnet.data.hsc: deblender scenes and HSC coadds (synthetic files in the real layouts; no real pixels)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from galnet.data.hsc import (
    DEFAULT_MASK_PLANES,
    cut_stamp,
    is_reserved,
    list_scenes,
    read_hsc_coadd,
    read_scene,
)
from galnet.errors import InputDataError


def _scene(path, h=30, w=40, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 0.08, (5, h, w)).astype(np.float32)
    weights = np.full((5, h, w), 1 / 0.08**2, np.float32)
    weights[:, :5, :] = 0  # outside the footprint
    psfs = np.zeros((5, 41, 41))
    psfs[:, 20, 20] = 1.0
    np.savez(path, images=images, weights=weights, peaks=np.array([[20.0, 15.0], [3.0, 3.0]]), psfs=psfs)
    return images, weights


def test_scene_parity_and_read(tmp_path):
    for i in (1002, 1003, 1004):
        _scene(tmp_path / f"{i}.npz", seed=i)
    assert [p.name for p in list_scenes(tmp_path)] == ["1002.npz", "1004.npz"]
    assert [p.name for p in list_scenes(tmp_path, parity="odd")] == ["1003.npz"]
    assert is_reserved(1003) and not is_reserved(1004)
    images, weights = _scene(tmp_path / "1006.npz")
    sc = read_scene(tmp_path / "1006.npz", "r")
    assert sc.id == 1006 and sc.image.shape == (30, 40)
    np.testing.assert_array_equal(sc.image, images[1])
    assert np.isnan(sc.variance[:5]).all()
    np.testing.assert_allclose(sc.sigma[5:], 0.08, rtol=1e-5)
    assert sc.valid.sum() == 25 * 40


def test_scene_errors_name_the_file(tmp_path):
    np.savez(tmp_path / "10.npz", images=np.zeros((5, 4, 4)))
    with pytest.raises(InputDataError, match=r"10\.npz.*missing key"):
        read_scene(tmp_path / "10.npz")
    (tmp_path / "12.npz").write_bytes(b"not a zip")
    with pytest.raises(InputDataError, match=r"12\.npz"):
        read_scene(tmp_path / "12.npz")
    with pytest.raises(InputDataError, match="parity"):
        list_scenes(tmp_path, parity="some")


def test_cut_stamp_masks_outside_and_keeps_origin():
    img = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    var = np.ones_like(img)
    var[0, 0] = 0.0
    stamp, sigma, excl, (x0, y0) = cut_stamp(img, var, 2.4, 3.6, 11)
    assert (x0, y0) == (2 - 5, 4 - 5)
    # stamp pixel (j, i) is image pixel (j + y0, i + x0)
    assert stamp[5, 5] == img[4, 2] and stamp[9, 7] == img[8, 4]
    assert excl[:1].all() and excl[:, :3].all()  # outside the image
    assert excl[1, 3] and np.isnan(stamp[1, 3])  # zero variance at image (0, 0)
    assert np.isfinite(stamp[~excl]).all() and np.all(sigma[~excl] == 1)
    assert excl.sum() == 11 * 11 - 10 * 8 + 1


def _coadd(path, *, variance=True):
    h, w = 20, 25
    img = np.ones((h, w), np.float32)
    mask = np.zeros((h, w), np.int32)
    mask[2, 3] = 1 << 2  # SAT
    mask[4, 5] = 1 << 9  # DETECTED: not excluded
    var = np.full((h, w), 0.01, np.float32)
    var[6, 7] = -1.0
    mh = fits.Header()
    for name, bit in (("BAD", 0), ("SAT", 2), ("DETECTED", 9), ("NO_DATA", 8)):
        mh[f"HIERARCH MP_{name}"] = bit  # as the HSC pipeline writes them
    hdus = [
        fits.PrimaryHDU(header=fits.Header({"FLUXMAG0": 10 ** (0.4 * 27.0)})),
        fits.ImageHDU(img, name="IMAGE"),
        fits.ImageHDU(mask, header=mh, name="MASK"),
    ]
    if variance:
        hdus.append(fits.ImageHDU(var, name="VARIANCE"))
    fits.HDUList(hdus).writeto(path)


def test_hsc_coadd_layout(tmp_path):
    _coadd(tmp_path / "calexp.fits")
    c = read_hsc_coadd(tmp_path / "calexp.fits")
    assert c.zeropoint == pytest.approx(27.0, abs=1e-9)
    assert c.mask[2, 3] and not c.mask[4, 5] and c.mask[6, 7]
    assert np.isnan(c.variance[6, 7]) and c.mask.sum() == 2
    assert read_hsc_coadd(tmp_path / "calexp.fits", mask_planes=None).mask.sum() == 1
    assert "SAT" in DEFAULT_MASK_PLANES
    _coadd(tmp_path / "novar.fits", variance=False)
    with pytest.raises(InputDataError, match=r"novar\.fits: no variance HDU"):
        read_hsc_coadd(tmp_path / "novar.fits")


def test_backgrounds_and_injection(tmp_path):
    """galnet backgrounds → library → simulate --background-library: truth injected, real pixels kept."""
    import subprocess
    import sys

    from galnet.data import read_arrays
    from galnet.data.hsc import read_background_library

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i in (2000, 2001, 2002):
        _scene(scenes / f"{i}.npz", h=70, w=66, seed=i)
    lib = tmp_path / "bg.h5"
    run = [sys.executable, "-m", "galnet"]
    r = subprocess.run([*run, "backgrounds", "--scenes", str(scenes), "-o", str(lib), "--per-image", "5"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    arrays, meta = read_background_library(lib)
    assert len(arrays["images"]) == 10 and set(arrays["scene_ids"]) == {2000, 2002}  # odd id 2001 never read
    assert meta["zeropoint"] == 27.0
    out = tmp_path / "sim"
    r = subprocess.run([*run, "simulate", "--n", "40", "--split", "0.5,0.25,0.25", "--seed", "3", "--out",
                        str(out), "--background-library", str(lib)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a = read_arrays(out / "train.h5")
    assert a["images"].shape == (20, 61, 61) and np.all(np.isfinite(a["images"]))
    excluded = ~np.isfinite(a["sigma_maps"])
    assert excluded.any() and np.all(a["images"][excluded] == 0)
    # the injected flux is in the stamp: image minus background ~ the target's flux (mag 17-24, noise 0.08/px)
    flux = 10 ** (-0.4 * (a["params"][:, 2] - 27.0))
    bright = flux > 300
    assert bright.any()
    assert np.all(a["images"][bright].sum(axis=(1, 2)) > 0.5 * flux[bright])
    # the same command again keeps the files (same metadata): identical arrays
    r = subprocess.run([*run, "simulate", "--n", "40", "--split", "0.5,0.25,0.25", "--seed", "3", "--out",
                        str(out), "--background-library", str(lib)], capture_output=True, text=True)
    assert r.returncode == 0
    np.testing.assert_array_equal(read_arrays(out / "train.h5")["images"], a["images"])


def test_background_library_errors(tmp_path):
    import h5py

    from galnet.data.hsc import read_background_library

    with h5py.File(tmp_path / "small.h5", "w") as f:
        for k, shape in (("images", (2, 30, 30)), ("variance", (2, 30, 30)), ("psfs", (2, 25, 25)),
                         ("scene_ids", (2,))):
            f[k] = np.zeros(shape)
    with pytest.raises(InputDataError, match=r"small\.h5: background stamps are \(30, 30\), smaller"):
        read_background_library(tmp_path / "small.h5")
    with h5py.File(tmp_path / "masked.h5", "w") as f:
        for k, shape in (("images", (2, 61, 61)), ("variance", (2, 61, 61)), ("psfs", (2, 25, 25)),
                         ("scene_ids", (2,))):
            f[k] = np.full(shape, np.nan)
    with pytest.raises(InputDataError, match=r"masked\.h5: every pixel .* is masked"):
        read_background_library(tmp_path / "masked.h5")


def test_predict_takes_a_cube_of_41px_psfs():
    """HSC PSFs are 41x41: a cube of them is cropped to the network's 25x25 (PSF_FIXED), not a crash."""
    from galnet.data import prepare_psfs
    from galnet.render import MoffatPSF

    psf = MoffatPSF(fwhm=4.0, beta=3.0).draw(41)
    psf = psf / psf.sum()
    out, fixed, bad = prepare_psfs(np.stack([psf, psf]), 25)
    assert out.shape == (2, 25, 25) and fixed.all() and not bad.any()
    np.testing.assert_allclose(out.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out[0], psf[8:33, 8:33] / psf[8:33, 8:33].sum(), atol=1e-6)


def _hsc_coadd_with_galaxy(path, *, variance_hdu=True, bad_variance=False):
    """A 90x90 HSC-layout coadd: one Sérsic galaxy at (45, 45) 1-based, σ 0.05, a saturated pixel block."""
    import torch

    from galnet.render import MoffatPSF, render_sersic

    rng = np.random.default_rng(1)
    psf = np.asarray(MoffatPSF(fwhm=4.0, beta=3.0).draw(25), dtype=np.float64)
    psf = psf / psf.sum()
    model = render_sersic(torch.tensor([[45.0, 45.0, 20.0, 4.0, 1.5, 0.7, 30.0]], dtype=torch.float64),
                          torch.as_tensor(psf), shape=(90, 90)).numpy()[0]
    img = (model + rng.normal(0, 0.05, model.shape)).astype(np.float32)
    var = np.full(img.shape, 0.05**2, np.float32)
    mask = np.zeros(img.shape, np.int32)
    img[10:14, 70:74] = 1e4
    mask[10:14, 70:74] = 1 << 1  # SAT
    if bad_variance:
        var[44, 40:43] = [0.0, -1.0, np.nan]  # on the galaxy
    mh = fits.Header()
    for name, bit in (("BAD", 0), ("SAT", 1), ("DETECTED", 5), ("NO_DATA", 8)):
        mh[f"HIERARCH MP_{name}"] = bit
    hdus = [fits.PrimaryHDU(header=fits.Header({"FLUXMAG0": 10 ** (0.4 * 27.0)})),
            fits.ImageHDU(img, name="IMAGE"), fits.ImageHDU(mask, header=mh, name="MASK")]
    if variance_hdu:
        hdus.append(fits.ImageHDU(var, name="VARIANCE"))
    fits.HDUList(hdus).writeto(path)
    fits.writeto(path.with_name("psf.fits"), psf.astype(np.float32))
    from astropy.table import Table

    Table({"id": [7, 8], "x": [45.0, 72.0], "y": [45.0, 12.0]}).write(path.with_name("cat.ecsv"))


def test_predict_reads_an_hsc_coadd_with_variance_and_mask(tmp_path):
    """IMAGE/MASK/VARIANCE are used: σ from the variance (sky σ 0.05), SAT pixels masked, zero point 27."""
    from galnet.data import open_source

    _hsc_coadd_with_galaxy(tmp_path / "calexp.fits", bad_variance=True)
    src = open_source(tmp_path / "calexp.fits", catalog=tmp_path / "cat.ecsv", psf=tmp_path / "psf.fits")
    ch = src.read_chunk(0, 2)
    np.testing.assert_allclose(ch.sky_sigma, 0.05, rtol=1e-5)
    assert src.meta["zeropoint"] == pytest.approx(27.0)
    from galnet.flags import Flag

    # row 0: the three bad variances are masked (set to 0, never divided by) and flagged BAD_SIGMA
    assert ch.flags[0] & int(Flag.BAD_SIGMA) and ch.mask[0].sum() == 3
    assert np.all(ch.images[0][ch.mask[0]] == 0)
    # row 1: centred on the saturated block: its 16 pixels masked, not BAD_SIGMA
    assert ch.mask[1].sum() >= 16 and not ch.flags[1] & int(Flag.BAD_SIGMA)
    assert np.all(ch.images[1][ch.mask[1]] == 0) and ch.images[1].max() < 100
    # without the mask planes the saturated pixels stay
    src2 = open_source(tmp_path / "calexp.fits", catalog=tmp_path / "cat.ecsv", psf=tmp_path / "psf.fits",
                       mask_planes=["BAD"])
    assert src2.read_chunk(0, 2).images[1].max() > 100


def test_predict_hsc_coadd_cli_and_errors(tmp_path):
    import subprocess
    import sys

    from astropy.table import Table

    _hsc_coadd_with_galaxy(tmp_path / "calexp.fits")
    run = [sys.executable, "-m", "galnet", "predict", str(tmp_path / "calexp.fits"), "--catalog",
           str(tmp_path / "cat.ecsv"), "--psf", str(tmp_path / "psf.fits"), "--no-progress"]
    r = subprocess.run([*run, "-o", str(tmp_path / "out.fits"), "--chi2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    t = Table.read(tmp_path / "out.fits")
    assert t["mag"][0] == pytest.approx(20.0, abs=0.3) and t["chi2nu"][0] < 2.0
    # a mask of the wrong shape, a missing variance HDU: one line naming the file
    fits.writeto(tmp_path / "small_mask.fits", np.zeros((5, 5), np.int16))
    r = subprocess.run([*run, "-o", str(tmp_path / "o2.fits"), "--mask", str(tmp_path / "small_mask.fits")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "small_mask.fits" in r.stderr and "shape" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "novar").mkdir()
    _hsc_coadd_with_galaxy(tmp_path / "novar" / "calexp.fits", variance_hdu=False)
    r = subprocess.run([*run[:4], str(tmp_path / "novar" / "calexp.fits"), *run[5:], "-o",
                        str(tmp_path / "o3.fits"), "--variance", "VARIANCE"], capture_output=True, text=True)
    assert r.returncode == 2 and "calexp.fits" in r.stderr and "no variance HDU" in r.stderr, r.stderr


def test_evaluate_report_on_real_galaxies_without_truth(tmp_path):
    """A stamp file whose params are NaN (real galaxies): no accuracy metrics, but chi2nu and mosaics."""
    import subprocess
    import sys

    from galnet.data import read_arrays, write_split
    from galnet.simulate import generate_batch, load_preset

    cfg = load_preset("hsc-r")
    arr = generate_batch(cfg, 6, seed=2)
    arr["params"] = np.full_like(arr["params"], np.nan)
    arr["ids"] = np.arange(6)
    write_split(tmp_path / "real.h5", arr, {"zeropoint": 27.0, "pixel_scale": 0.168})
    run = [sys.executable, "-m", "galnet"]
    r = subprocess.run([*run, "fit", str(tmp_path / "real.h5"), "-o", str(tmp_path / "fit.fits")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*run, "evaluate", "--truth", str(tmp_path / "real.h5"), "--catalog",
                        f"fit={tmp_path / 'fit.fits'}", "--out", str(tmp_path / "rep"), "--no-progress"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import json

    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    text = json.dumps(m)
    assert "chi2nu" in text
    assert (tmp_path / "rep" / "figures" / "mosaic_worst_fit.png").exists()
    assert len(read_arrays(tmp_path / "real.h5")["ids"]) == 6
    # no outlier fraction is reported against a NaN truth (it was 1.0: every row an "outlier")
    assert "out any" in r.stdout and " 1.00 " not in r.stdout.splitlines()[-2]


def test_backgrounds_from_an_hsc_coadd(tmp_path):
    """galnet backgrounds --coadd: centres on unmasked, undetected pixels; the coadd's zero point."""
    import subprocess
    import sys

    from galnet.data.hsc import read_background_library

    _hsc_coadd_with_galaxy(tmp_path / "calexp.fits")
    out = tmp_path / "bg.h5"
    cmd = [sys.executable, "-m", "galnet", "backgrounds", "--coadd", str(tmp_path / "calexp.fits"),
           "--psf", str(tmp_path / "psf.fits"), "-o", str(out), "--per-image", "8"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    arrays, meta = read_background_library(out)
    assert arrays["images"].shape == (8, 61, 61) and meta["zeropoint"] == pytest.approx(27.0)
    assert np.all(np.isfinite(arrays["images"][:, 30, 30]))  # centres are valid pixels
    assert not np.any(arrays["images"] > 100)  # the saturated (SAT) block is excluded
    np.testing.assert_allclose(arrays["psfs"].sum(axis=(1, 2)), 1.0, rtol=1e-5)
