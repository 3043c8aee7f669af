"""Adversarial inputs for ``galnet predict``, ``galnet fit`` and ``galnet evaluate`` (issue 16).

Every case asserts one outcome class:

* **error**: exit status 2, the last line of stderr is ``galnet <cmd>: error: ...``, and no traceback;
* **flagged**: exit status 0, one output row per input row, the bad row carries the expected flag (and NaN
  values when the flag means "not measured"), and every other row equals the row of a clean run;
* **works**: exit status 0 and one output row per input row (odd but valid inputs: int or big-endian
  pixels, non-ASCII ids in an ECSV catalog ...).

The commands run in-process through :func:`galnet.cli.main` (a subprocess costs ~3 s of imports); the inputs
are tiny (8 stamps of 61 x 61 px) and built once per session. The network is a tiny untrained
``galnet-psf-small``: the tests check the plumbing, not the measurements.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from galnet.catalog import read_table
from galnet.cli import main
from galnet.flags import NOT_MEASURED, Flag
from galnet.render import render_sersic

pytestmark = pytest.mark.usefixtures("one_torch_thread")

S, P, B = 61, 25, 8
SKY = 0.05
#: columns compared between runs (floats to 1e-6 relative: another batch composition may change rounding)
PARAM_COLS = ("x", "y", "mag", "re_pix", "n", "q", "pa")


# ====================================================================== fixtures
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
            rng.uniform(19, 20.5, b),
            rng.uniform(2, 4, b),
            rng.uniform(0.8, 2.5, b),
            rng.uniform(0.5, 0.9, b),
            rng.uniform(-80, 80, b),
        ],
        axis=1,
    )


def write_h5(path: Path, images, psfs, sky, *, ids=None, params=None, meta=None, **extra) -> Path:
    """A simulate-style split (any dtypes and shapes: the point is to write bad ones too)."""
    n = len(images)
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["psfs"] = psfs
        f["sky_sigma"] = sky
        f["ids"] = np.arange(100, 100 + n) if ids is None else ids
        f["params"] = np.zeros((n, 7)) if params is None else params
        f["snr"] = np.full(n, 50.0, np.float32)
        for k, v in extra.items():
            f[k] = v
        f.attrs["meta"] = json.dumps(
            meta if meta is not None else {"zeropoint": 27.0, "gain": 100.0, "pixel_scale": 0.168}
        )
    return path


@pytest.fixture(scope="session")
def clean(tmp_path_factory):
    """The clean inputs: arrays, an HDF5 split, a FITS cube + PSF, a cutout directory, an image + catalog."""
    d = tmp_path_factory.mktemp("clean")
    truth = _truth(B)
    psf = _gauss_psf()
    img = render_sersic(
        torch.as_tensor(truth, dtype=torch.float32), torch.as_tensor(psf, dtype=torch.float32), shape=(S, S)
    ).numpy()
    img = (img + np.random.default_rng(1).normal(0, SKY, img.shape)).astype(np.float32)
    psfs = np.repeat(psf[None], B, 0).astype(np.float32)
    sky = np.full(B, SKY, np.float32)
    h5 = write_h5(d / "set.h5", img, psfs, sky, params=truth)
    fits.PrimaryHDU(img).writeto(d / "cube.fits")
    fits.PrimaryHDU(psf.astype(np.float32)).writeto(d / "psf.fits")
    cut = d / "cutouts"
    cut.mkdir()
    for i in range(B):
        hdu = fits.PrimaryHDU(img[i])
        hdu.header["SKYSIG"] = SKY
        fits.HDUList([hdu, fits.ImageHDU(psf.astype(np.float32), name="PSF")]).writeto(cut / f"g{i:04d}.fits")
    # a 200 x 160 image with a WCS and the 8 galaxies pasted at known positions
    field = np.random.default_rng(2).normal(0, SKY, (160, 200)).astype(np.float32)
    xs = np.array([40.0, 80, 120, 160, 40, 80, 120, 160])
    ys = np.array([40.0, 40, 40, 40, 110, 110, 110, 110])
    for i in range(B):
        x0, y0 = int(xs[i]) - 31, int(ys[i]) - 31
        field[y0 : y0 + S, x0 : x0 + S] += img[i]
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [100.0, 80.0]
    w.wcs.cdelt = [-0.168 / 3600, 0.168 / 3600]
    hdu = fits.PrimaryHDU(field, header=w.to_header())
    hdu.header["SKYSIG"] = SKY
    hdu.writeto(d / "image.fits")
    ra, dec = w.wcs_pix2world(xs - 1 + 0.3, ys - 1 + 0.3, 0)
    Table(
        {
            "id": np.arange(1, B + 1),
            "x": xs + 0.3,
            "y": ys + 0.3,
            "ra": ra,
            "dec": dec,
            "mag_in": np.full(B, 20.0),
        }
    ).write(d / "sources.ecsv")
    return {
        "dir": d,
        "images": img,
        "psf": psf,
        "psfs": psfs,
        "sky": sky,
        "truth": truth,
        "h5": h5,
        "cube": d / "cube.fits",
        "psf_file": d / "psf.fits",
        "cutouts": cut,
        "image": d / "image.fits",
        "sources": d / "sources.ecsv",
    }


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Model cards: good, without a checksum, with NaN weights, with garbage or pickled weights."""
    from galnet.models import create_model, save_model
    from galnet.models.card import _sha256

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    net = create_model("galnet-psf-small")
    good = save_model(net, d / "good", "tiny")
    out = {"good": str(good)}
    # no sha256 in the card
    nosha = d / "nosha"
    shutil.copytree(d / "good", nosha)
    card = json.loads((nosha / "tiny.json").read_text())
    del card["weights"]["sha256"]
    (nosha / "tiny.json").write_text(json.dumps(card))
    out["nosha"] = str(nosha / "tiny.json")
    # NaN weights, with a valid checksum: the card loads, the network returns NaN
    nan_net = create_model("galnet-psf-small")
    with torch.no_grad():
        for prm in nan_net.parameters():
            prm.fill_(float("nan"))
    out["nan"] = str(save_model(nan_net, d / "nan", "tiny"))
    # garbage and pickled weights under a card whose checksum matches them (so only loading can fail)
    for kind in ("garbage", "pickle"):
        k = d / kind
        shutil.copytree(d / "good", k)
        wfile = k / "tiny.safetensors"
        if kind == "garbage":
            wfile.write_bytes(os.urandom(2000))
        else:
            torch.save(net.state_dict(), wfile)
        card = json.loads((k / "tiny.json").read_text())
        card["weights"]["sha256"] = _sha256(wfile)
        (k / "tiny.json").write_text(json.dumps(card))
        out[kind] = str(k / "tiny.json")
    (d / "notjson.json").write_text("{ not json")
    out["notjson"] = str(d / "notjson.json")
    return out


# ====================================================================== helpers
def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``galnet ARGV`` in-process: (exit status, stdout, stderr); argparse errors exit through SystemExit."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_error(result, cmd: str, *needles: str) -> str:
    """Exit 2, the last stderr line is ``galnet CMD: error: ...`` naming ``needles``, no traceback."""
    rc, _out, err = result
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith(f"galnet {cmd}: error:"), err
    for n in needles:
        assert n.lower() in lines[-1].lower(), (n, lines[-1])
    return lines[-1]


def predict_args(model: str, inp, out, *extra) -> list:
    return [
        "predict",
        inp,
        "-o",
        out,
        "--model",
        model,
        "--backend",
        "torch",
        "--no-progress",
        "--chunk-size",
        "4",
        "--batch-size",
        "4",
        *extra,
    ]


FIT_OPTS = ("--batch-size", "4", "--max-iter", "8", "--no-mask-neighbours")


def fit_args(inp, out, *extra) -> list:
    return ["fit", inp, "-o", out, *FIT_OPTS, *extra]


def assert_rows_match(table, clean_table, skip=(), *, rtol=1e-6):
    """Same row count and ids; rows not in ``skip`` equal the clean run (parameters and flags)."""
    assert len(table) == len(clean_table)
    keep = np.setdiff1d(np.arange(len(table)), np.asarray(skip, dtype=int))
    assert [str(v) for v in np.asarray(table["id"])[keep]] == [
        str(v) for v in np.asarray(clean_table["id"])[keep]
    ]
    np.testing.assert_array_equal(np.asarray(table["flags"])[keep], np.asarray(clean_table["flags"])[keep])
    for c in PARAM_COLS:
        a = np.ma.filled(np.ma.asarray(table[c], dtype=float), np.nan)
        b = np.ma.filled(np.ma.asarray(clean_table[c], dtype=float), np.nan)
        np.testing.assert_allclose(a[keep], b[keep], rtol=rtol, atol=1e-6, equal_nan=True, err_msg=c)


def values(table, row: int) -> np.ndarray:
    """The 7 parameters of a row as floats (masked → NaN)."""
    return np.array(
        [float(np.ma.filled(np.ma.asarray(table[c], dtype=float), np.nan)[row]) for c in PARAM_COLS]
    )


def assert_not_measured(table, row: int, flag: Flag):
    f = int(table["flags"][row])
    assert f & int(flag), (row, [x.name for x in Flag if f & int(x)])
    assert f & int(NOT_MEASURED)
    assert np.isnan(values(table, row)).all(), values(table, row)


@pytest.fixture(scope="session")
def clean_predict(clean, models, tmp_path_factory):
    """Catalogs of clean predict runs (HDF5, cube, image + catalog) to compare flagged runs with."""
    d = tmp_path_factory.mktemp("clean_predict")
    out = {}
    for name, argv in {
        "h5": [clean["h5"]],
        "cube": [clean["cube"], "--psf", clean["psf_file"], "--sky-sigma", SKY],
        "image": [clean["image"], "--catalog", clean["sources"], "--psf", clean["psf_file"]],
        "cutouts": [clean["cutouts"]],
    }.items():
        rc = main([str(a) for a in predict_args(models["good"], argv[0], d / f"{name}.fits", *argv[1:])])
        assert rc == 0
        out[name] = read_table(d / f"{name}.fits")
        assert len(out[name]) == B and not (np.asarray(out[name]["flags"]) & int(NOT_MEASURED)).any()
    return out


@pytest.fixture(scope="session")
def clean_fit(clean, tmp_path_factory):
    """Catalogs of clean fit runs (HDF5, cube + PSF)."""
    d = tmp_path_factory.mktemp("clean_fit")
    out = {}
    for name, argv in {
        "h5": [clean["h5"]],
        "cube": [clean["cube"], "--psf", clean["psf_file"], "--sky-sigma", SKY],
    }.items():
        assert main([str(a) for a in fit_args(argv[0], d / f"{name}.ecsv", *argv[1:])]) == 0
        out[name] = read_table(d / f"{name}.ecsv")
        assert len(out[name]) == B and (np.asarray(out[name]["status"]) >= 0).all()
    return out


# ====================================================================== bad option values
PREDICT_BAD_OPTIONS = [
    ("--batch-size", "0"),
    ("--batch-size", "-8"),
    ("--batch-size", "abc"),
    ("--batch-size", "1.5"),
    ("--chunk-size", "0"),
    ("--chunk-size", "-8"),
    ("--chunk-size", "x"),
    ("--max-chunks", "0"),
    ("--max-chunks", "-1"),
    ("--workers", "0"),
    ("--workers", "-2"),
    ("--threads", "0"),
    ("--threads", "-1"),
    ("--sky-sigma", "-1"),
    ("--sky-sigma", "0"),
    ("--sky-sigma", "nan"),
    ("--sky-sigma", "inf"),
    ("--sky-sigma", "abc"),
    ("--gain", "0"),
    ("--gain", "-1"),
    ("--gain", "nan"),
    ("--pixel-scale", "0"),
    ("--pixel-scale", "-0.1"),
    ("--pixel-scale", "nan"),
    ("--zeropoint", "nan"),
    ("--zeropoint", "inf"),
    ("--zeropoint", "abc"),
    ("--high-chi2", "-1"),
    ("--high-chi2", "nan"),
    ("--detect-snr", "-1"),
    ("--detect-snr", "nan"),
    ("--xy-origin", "2"),
    ("--xy-origin", "abc"),
    ("--backend", "tensorflow"),
    ("--refine-finish-iter", "0"),
    ("--refine-finish-iter", "2.5"),
]


@pytest.mark.parametrize(("option", "value"), PREDICT_BAD_OPTIONS, ids=lambda v: str(v))
def test_predict_bad_option_value(option, value, clean, models, tmp_path, capsys):
    out = tmp_path / "o.fits"
    res = run(predict_args(models["good"], clean["h5"], out, option, value), capsys)
    assert_error(res, "predict", option)
    assert not out.exists() and not (tmp_path / "o.fits.parts").exists()


FIT_BAD_OPTIONS = [
    ("--batch-size", "0"),
    ("--batch-size", "-1"),
    ("--workers", "0"),
    ("--max-iter", "0"),
    ("--max-iter", "-5"),
    ("--max-iter", "abc"),
    ("--limit", "0"),
    ("--limit", "-3"),
    ("--max-batches", "0"),
    ("--sky-sigma", "0"),
    ("--sky-sigma", "-1"),
    ("--sky-sigma", "nan"),
    ("--gain", "0"),
    ("--gain", "-2"),
    ("--read-noise", "-1"),
    ("--read-noise", "nan"),
    ("--pixel-scale", "0"),
    ("--zeropoint", "inf"),
    ("--zeropoint", "nan"),
    ("--detect-snr", "-1"),
    ("--n-grid", "1,abc"),
    ("--n-grid", "1,,4"),
    ("--n-grid", "nan"),
    ("--n-grid", "0.01"),
    ("--n-grid", "50"),
    ("--start", "bogus"),
    ("--start", "catalog:/nonexistent/start.fits"),
    ("--start", "feedme:/nonexistent/x"),
]


@pytest.mark.parametrize(("option", "value"), FIT_BAD_OPTIONS, ids=lambda v: str(v))
def test_fit_bad_option_value(option, value, clean, tmp_path, capsys):
    out = tmp_path / "o.fits"
    res = run(["fit", clean["h5"], "-o", out, option, value], capsys)
    name = {"--start": "start" if value == "bogus" else "/nonexistent/"}.get(option, option)
    assert_error(res, "fit", name)
    assert not out.exists() and not (tmp_path / "o.fits.parts").exists()


EVALUATE_BAD_OPTIONS = [
    (["--limit", "0"], "--limit"),
    (["--limit", "-1"], "--limit"),
    (["--limit", "abc"], "--limit"),
    (["--time", "net=abc"], "--time"),
    (["--time", "net=-1"], "--time"),
    (["--time", "noequals"], "--time"),
    (["--catalog", "noequals"], "--catalog"),
    ([], "--catalog"),
]


@pytest.mark.parametrize(("extra", "needle"), EVALUATE_BAD_OPTIONS, ids=lambda v: str(v))
def test_evaluate_bad_option_value(extra, needle, clean, clean_predict, tmp_path, capsys):
    cat = tmp_path / "net.fits"
    clean_predict["h5"].write(cat)
    base = ["evaluate", "--truth", clean["h5"], "--out", tmp_path / "rep", "--no-progress"]
    if extra and extra[0] != "--catalog":
        base += ["--catalog", f"net={cat}"]
    assert_error(run(base + extra, capsys), "evaluate", needle)


# ====================================================================== missing, empty, truncated, garbage
def _make_bad_file(kind: str, d: Path, clean) -> Path:
    if kind == "missing.fits":
        return d / "missing.fits"
    if kind == "missing.h5":
        return d / "missing.h5"
    if kind == "empty.fits":
        (d / "empty.fits").write_bytes(b"")
        return d / "empty.fits"
    if kind == "empty.h5":
        (d / "empty.h5").write_bytes(b"")
        return d / "empty.h5"
    if kind == "garbage.fits":
        (d / "garbage.fits").write_bytes(os.urandom(5000))
        return d / "garbage.fits"
    if kind == "garbage.h5":
        (d / "garbage.h5").write_bytes(os.urandom(5000))
        return d / "garbage.h5"
    if kind == "truncated.fits":
        data = Path(clean["cube"]).read_bytes()
        (d / "truncated.fits").write_bytes(data[: len(data) // 2])
        return d / "truncated.fits"
    if kind == "truncated.h5":
        data = Path(clean["h5"]).read_bytes()
        (d / "truncated.h5").write_bytes(data[: len(data) // 2])
        return d / "truncated.h5"
    if kind == "text.txt":
        (d / "text.txt").write_text("hello")
        return d / "text.txt"
    if kind == "emptydir":
        (d / "emptydir").mkdir()
        return d / "emptydir"
    if kind == "header-only.fits":
        fits.PrimaryHDU().writeto(d / "header-only.fits")
        return d / "header-only.fits"
    if kind == "h5-no-images":
        with h5py.File(d / "noimg.h5", "w") as f:
            f["psfs"] = clean["psfs"]
        return d / "noimg.h5"
    if kind == "h5-zero-rows":
        return write_h5(
            d / "zero.h5",
            np.zeros((0, S, S), np.float32),
            np.zeros((0, P, P), np.float32),
            np.zeros(0, np.float32),
        )
    if kind == "h5-bad-meta":
        p = write_h5(d / "meta.h5", clean["images"], clean["psfs"], clean["sky"])
        with h5py.File(p, "a") as f:
            f.attrs["meta"] = "{not json"
        return p
    raise AssertionError(kind)


BAD_FILES = [
    "missing.fits",
    "missing.h5",
    "empty.fits",
    "empty.h5",
    "garbage.fits",
    "garbage.h5",
    "truncated.fits",
    "truncated.h5",
    "text.txt",
    "emptydir",
    "header-only.fits",
    "h5-no-images",
    "h5-zero-rows",
    "h5-bad-meta",
]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_predict_bad_input_file(kind, clean, models, tmp_path, capsys):
    inp = _make_bad_file(kind, tmp_path, clean)
    res = run(predict_args(models["good"], inp, tmp_path / "o.fits", "--psf", clean["psf_file"]), capsys)
    assert_error(res, "predict", inp.name)
    assert not (tmp_path / "o.fits.parts").exists()


@pytest.mark.parametrize("kind", BAD_FILES)
def test_fit_bad_input_file(kind, clean, tmp_path, capsys):
    inp = _make_bad_file(kind, tmp_path, clean)
    res = run(fit_args(inp, tmp_path / "o.fits", "--psf", clean["psf_file"]), capsys)
    assert_error(res, "fit", inp.name)
    assert not (tmp_path / "o.fits.parts").exists()


@pytest.mark.parametrize(
    "kind",
    ["missing.h5", "empty.h5", "garbage.h5", "truncated.h5", "h5-no-images", "h5-zero-rows", "h5-bad-meta"],
)
def test_evaluate_bad_truth_file(kind, clean, clean_predict, tmp_path, capsys):
    inp = _make_bad_file(kind, tmp_path, clean)
    cat = tmp_path / "net.fits"
    clean_predict["h5"].write(cat)
    res = run(["evaluate", "--truth", inp, "--catalog", f"net={cat}", "--out", tmp_path / "rep"], capsys)
    assert_error(res, "evaluate", inp.name)


@pytest.mark.parametrize("kind", ["missing.fits", "empty.fits", "garbage.fits", "truncated.fits", "text.txt"])
def test_evaluate_bad_catalog_file(kind, clean, tmp_path, capsys):
    cat = _make_bad_file(kind, tmp_path, clean)
    res = run(
        ["evaluate", "--truth", clean["h5"], "--catalog", f"net={cat}", "--out", tmp_path / "rep"], capsys
    )
    assert_error(res, "evaluate", cat.name)


@pytest.mark.parametrize(
    "kind", ["missing.fits", "empty.fits", "garbage.fits", "truncated.fits", "header-only.fits"]
)
def test_predict_bad_psf_file(kind, clean, models, tmp_path, capsys):
    psf = _make_bad_file(kind, tmp_path, clean)
    res = run(predict_args(models["good"], clean["cube"], tmp_path / "o.fits", "--psf", psf), capsys)
    assert_error(res, "predict", psf.name)


@pytest.mark.parametrize(
    "kind", ["missing.fits", "empty.fits", "garbage.fits", "truncated.fits", "header-only.fits"]
)
def test_fit_bad_psf_file(kind, clean, tmp_path, capsys):
    psf = _make_bad_file(kind, tmp_path, clean)
    res = run(fit_args(clean["cube"], tmp_path / "o.fits", "--psf", psf), capsys)
    assert_error(res, "fit", psf.name)


@pytest.mark.parametrize("kind", ["missing.fits", "empty.fits", "garbage.fits", "text.txt"])
def test_predict_bad_catalog_file(kind, clean, models, tmp_path, capsys):
    cat = _make_bad_file(kind, tmp_path, clean)
    res = run(
        predict_args(
            models["good"], clean["image"], tmp_path / "o.fits", "--catalog", cat, "--psf", clean["psf_file"]
        ),
        capsys,
    )
    assert_error(res, "predict", cat.name)


# ====================================================================== wrong dimensions
def _make_bad_shape(kind: str, d: Path, clean) -> list:
    """Arguments (input and options) of an input with wrong dimensions."""
    img, psfs, sky = clean["images"], clean["psfs"], clean["sky"]
    if kind == "fits-1d":
        fits.PrimaryHDU(np.zeros(10, np.float32)).writeto(d / "x.fits")
        return [d / "x.fits", "--psf", clean["psf_file"]]
    if kind == "fits-4d":
        fits.PrimaryHDU(np.zeros((2, 2, S, S), np.float32)).writeto(d / "x.fits")
        return [d / "x.fits", "--psf", clean["psf_file"]]
    if kind == "psf-1d":
        fits.PrimaryHDU(np.ones(25, np.float32)).writeto(d / "p.fits")
        return [clean["cube"], "--psf", d / "p.fits"]
    if kind == "psf-cube-count":
        fits.PrimaryHDU(psfs[:3]).writeto(d / "p.fits")
        return [clean["cube"], "--psf", d / "p.fits"]
    if kind == "h5-images-2d":
        return [write_h5(d / "x.h5", img[0], psfs, sky)]
    if kind == "h5-psfs-2d":
        return [write_h5(d / "x.h5", img, psfs[0], sky)]
    if kind == "h5-lengths":
        return [write_h5(d / "x.h5", img, psfs[:5], sky)]
    if kind == "h5-sky-lengths":
        return [write_h5(d / "x.h5", img, psfs, sky[:3])]
    if kind == "h5-ids-lengths":
        return [write_h5(d / "x.h5", img, psfs, sky, ids=np.arange(3))]
    if kind == "h5-sigma-shape":
        return [write_h5(d / "x.h5", img, psfs, sky, sigma_maps=np.ones((B, 41, 41), np.float32))]
    raise AssertionError(kind)


SHAPE_CASES = [
    "fits-1d",
    "fits-4d",
    "psf-1d",
    "psf-cube-count",
    "h5-images-2d",
    "h5-psfs-2d",
    "h5-lengths",
    "h5-sky-lengths",
    "h5-ids-lengths",
    "h5-sigma-shape",
]


@pytest.mark.parametrize("kind", SHAPE_CASES)
def test_predict_wrong_dimensions(kind, clean, models, tmp_path, capsys):
    argv = _make_bad_shape(kind, tmp_path, clean)
    res = run(predict_args(models["good"], argv[0], tmp_path / "o.fits", *argv[1:]), capsys)
    assert_error(res, "predict", Path(argv[2] if kind.startswith("psf") else argv[0]).name)
    assert not (tmp_path / "o.fits.parts").exists()


@pytest.mark.parametrize("kind", SHAPE_CASES)
def test_fit_wrong_dimensions(kind, clean, tmp_path, capsys):
    argv = _make_bad_shape(kind, tmp_path, clean)
    res = run(fit_args(argv[0], tmp_path / "o.fits", *argv[1:]), capsys)
    assert_error(res, "fit", Path(argv[2] if kind.startswith("psf") else argv[0]).name)
    assert not (tmp_path / "o.fits.parts").exists()


@pytest.mark.parametrize("kind", ["h5-lengths", "h5-sky-lengths", "h5-ids-lengths", "h5-images-2d"])
def test_evaluate_truth_wrong_dimensions(kind, clean, clean_predict, tmp_path, capsys):
    argv = _make_bad_shape(kind, tmp_path, clean)
    cat = tmp_path / "net.fits"
    clean_predict["h5"].write(cat)
    res = run(["evaluate", "--truth", argv[0], "--catalog", f"net={cat}", "--out", tmp_path / "rep"], capsys)
    assert_error(res, "evaluate", "x.h5")


@pytest.mark.parametrize("kind", ["fit-sigma", "fit-mask"])
def test_fit_sigma_or_mask_wrong_shape(kind, clean, tmp_path, capsys):
    fits.PrimaryHDU(np.ones((B, 41, 41), np.float32)).writeto(tmp_path / "m.fits")
    opt = "--sigma" if kind == "fit-sigma" else "--mask"
    res = run(
        fit_args(clean["cube"], tmp_path / "o.fits", "--psf", clean["psf_file"], opt, tmp_path / "m.fits"),
        capsys,
    )
    assert_error(res, "fit", "m.fits")


# ====================================================================== bad pixels (flagged rows)
BAD_ROW = 2


def _bad_pixels(kind: str, img: np.ndarray) -> np.ndarray:
    img = img.copy()
    if kind == "nan-row":
        img[BAD_ROW] = np.nan
    elif kind == "inf-row":
        img[BAD_ROW] = np.inf
    elif kind == "nan-pixels":
        img[BAD_ROW, 5:8, 5:9] = np.nan
    elif kind == "inf-pixels":
        img[BAD_ROW, 50:52, 10:12] = -np.inf
    elif kind == "huge":
        img[BAD_ROW] = 1e30
    elif kind == "zeros":
        img[BAD_ROW] = 0.0
    elif kind == "noise":
        img[BAD_ROW] = np.random.default_rng(7).normal(0, SKY, (S, S))
    elif kind == "negative":
        img[BAD_ROW] = -img[BAD_ROW]
    else:
        raise AssertionError(kind)
    return img


#: kind → flag of the bad row, and whether the row is measured (finite values)
PIXEL_CASES = {
    "nan-row": (Flag.BAD_INPUT, False),
    "inf-row": (Flag.BAD_INPUT, False),
    "nan-pixels": (Flag.NAN_PIXELS, True),
    "inf-pixels": (Flag.NAN_PIXELS, True),
    "huge": (Flag.FAILED, False),
    "zeros": (Flag.NO_SOURCE, False),
    "noise": (Flag.NO_SOURCE, False),
    "negative": (Flag.NO_SOURCE, False),
}


@pytest.mark.parametrize("kind", list(PIXEL_CASES))
def test_predict_bad_pixels_flag_the_row(kind, clean, models, clean_predict, tmp_path, capsys):
    flag, measured = PIXEL_CASES[kind]
    h5 = write_h5(
        tmp_path / "x.h5",
        _bad_pixels(kind, clean["images"]),
        clean["psfs"],
        clean["sky"],
        params=clean["truth"],
    )
    rc, out, err = run(predict_args(models["good"], h5, tmp_path / "o.fits"), capsys)
    assert rc == 0, err
    t = read_table(tmp_path / "o.fits")
    assert_rows_match(t, clean_predict["h5"], skip=[BAD_ROW])
    if measured:
        assert int(t["flags"][BAD_ROW]) & int(flag)
        assert np.isfinite(values(t, BAD_ROW)).all()
        assert f"{B} measured" in out
    else:
        assert_not_measured(t, BAD_ROW, flag)
        assert f"{B - 1} measured" in out and f"1 {flag.name}" in out


FIT_PIXEL_CASES = {
    "nan-row": Flag.FEW_GOOD_PIXELS,
    "inf-row": Flag.FEW_GOOD_PIXELS,
    "nan-pixels": Flag.NAN_PIXELS,
    "inf-pixels": Flag.NAN_PIXELS,
    "zeros": Flag.NO_SOURCE,
    "noise": Flag.NO_SOURCE,
    "negative": Flag.NO_SOURCE,
    "huge": None,
}


@pytest.mark.parametrize("kind", list(FIT_PIXEL_CASES))
def test_fit_bad_pixels_flag_the_row(kind, clean, clean_fit, tmp_path, capsys):
    flag = FIT_PIXEL_CASES[kind]
    h5 = write_h5(
        tmp_path / "x.h5",
        _bad_pixels(kind, clean["images"]),
        clean["psfs"],
        clean["sky"],
        params=clean["truth"],
    )
    rc, out, err = run(fit_args(h5, tmp_path / "o.ecsv"), capsys)
    assert rc == 0, err
    t = read_table(tmp_path / "o.ecsv")
    assert_rows_match(t, clean_fit["h5"], skip=[BAD_ROW])
    f = int(t["flags"][BAD_ROW])
    if kind in ("nan-pixels", "inf-pixels"):
        assert f & int(flag) and int(t["status"][BAD_ROW]) >= 0
    elif kind == "huge":  # fitted (the fit is scale-free) or flagged, never a silent NaN row
        finite = np.isfinite(values(t, BAD_ROW)).all()
        assert finite == (int(t["status"][BAD_ROW]) >= 0)
        assert finite or f & int(NOT_MEASURED)
    else:
        assert f & int(flag) and int(t["status"][BAD_ROW]) == -1
        assert np.isnan(values(t, BAD_ROW)).all()


# ====================================================================== odd dtypes (work)
DTYPE_CASES = [
    "h5-int16",
    "h5-int32",
    "h5-big-endian",
    "h5-float64",
    "fits-int16",
    "fits-bscale",
    "fits-float64",
]


def _dtype_input(kind: str, d: Path, clean) -> list:
    img, psfs, sky = clean["images"], clean["psfs"], clean["sky"]
    if kind == "h5-int16":
        return [write_h5(d / "x.h5", np.round(img * 1000).astype(np.int16), psfs, sky * 1000)]
    if kind == "h5-int32":
        return [write_h5(d / "x.h5", np.round(img * 1000).astype(np.int32), psfs, sky * 1000)]
    if kind == "h5-big-endian":
        return [write_h5(d / "x.h5", img.astype(">f4"), psfs.astype(">f4"), sky.astype(">f4"))]
    if kind == "h5-float64":
        return [write_h5(d / "x.h5", img.astype(np.float64), psfs.astype(np.float64), sky.astype(np.float64))]
    if kind == "fits-int16":
        fits.PrimaryHDU(np.round(img * 1000).astype(np.int16)).writeto(d / "x.fits")
        return [d / "x.fits", "--psf", clean["psf_file"], "--sky-sigma", SKY * 1000]
    if kind == "fits-bscale":
        hdu = fits.PrimaryHDU(img.astype(np.float32))
        hdu.scale("int16", bscale=1e-3, bzero=0.0)
        hdu.writeto(d / "x.fits")
        return [d / "x.fits", "--psf", clean["psf_file"], "--sky-sigma", SKY]
    if kind == "fits-float64":
        fits.PrimaryHDU(img.astype(np.float64)).writeto(d / "x.fits")
        return [d / "x.fits", "--psf", clean["psf_file"], "--sky-sigma", SKY]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", DTYPE_CASES)
def test_predict_odd_dtypes_work(kind, clean, models, clean_predict, tmp_path, capsys):
    argv = _dtype_input(kind, tmp_path, clean)
    rc, _out, err = run(predict_args(models["good"], argv[0], tmp_path / "o.fits", *argv[1:]), capsys)
    assert rc == 0, err
    t = read_table(tmp_path / "o.fits")
    assert len(t) == B and not (np.asarray(t["flags"]) & int(NOT_MEASURED)).any()
    if kind in ("h5-big-endian", "h5-float64"):  # the same numbers: the same catalog
        assert_rows_match(t, clean_predict["h5"])


@pytest.mark.parametrize("kind", ["h5-int16", "h5-big-endian", "fits-int16"])
def test_fit_odd_dtypes_work(kind, clean, clean_fit, tmp_path, capsys):
    argv = _dtype_input(kind, tmp_path, clean)
    rc, _out, err = run(fit_args(argv[0], tmp_path / "o.ecsv", *argv[1:]), capsys)
    assert rc == 0, err
    t = read_table(tmp_path / "o.ecsv")
    assert len(t) == B and (np.asarray(t["status"]) >= 0).all()
    if kind == "h5-big-endian":
        assert_rows_match(t, clean_fit["h5"])


# ====================================================================== bad PSFs
def _psf_variant(kind: str, psf: np.ndarray) -> np.ndarray:
    if kind == "even":
        return _gauss_psf(size=24)
    if kind == "off-centre":
        return _gauss_psf(dx=1.5)
    if kind == "unnormalised":
        return psf * 3.0
    if kind == "nan":
        p = psf.copy()
        p[3, 3] = np.nan
        return p
    if kind == "negative":
        return psf - 0.5 * psf.max()
    if kind == "zero-sum":
        return np.zeros_like(psf)
    if kind == "non-square":
        return _gauss_psf(size=25)[:, 2:-2]
    raise AssertionError(kind)


#: PSF problem → outcome for a PSF shared by every row (predict and fit alike)
SHARED_PSF = {
    "even": Flag.PSF_FIXED,
    "off-centre": Flag.PSF_FIXED,
    "unnormalised": Flag.PSF_FIXED,
    "non-square": Flag.PSF_FIXED,
    "nan": "error",
    "negative": "error",
    "zero-sum": "error",
}


@pytest.mark.parametrize("kind", list(SHARED_PSF))
def test_predict_shared_bad_psf(kind, clean, models, tmp_path, capsys):
    fits.PrimaryHDU(_psf_variant(kind, clean["psf"])).writeto(tmp_path / "p.fits")
    res = run(
        predict_args(
            models["good"],
            clean["cube"],
            tmp_path / "o.fits",
            "--psf",
            tmp_path / "p.fits",
            "--sky-sigma",
            SKY,
        ),
        capsys,
    )
    if SHARED_PSF[kind] == "error":
        assert_error(res, "predict", "p.fits")
        return
    assert res[0] == 0, res[2]
    t = read_table(tmp_path / "o.fits")
    assert len(t) == B and (np.asarray(t["flags"]) & int(Flag.PSF_FIXED)).all()
    assert np.isfinite(np.asarray(t["mag"], float)).all()


@pytest.mark.parametrize("kind", list(SHARED_PSF))
def test_fit_shared_bad_psf(kind, clean, tmp_path, capsys):
    """fit repairs what predict repairs (PSF_FIXED) and refuses what predict refuses."""
    fits.PrimaryHDU(_psf_variant(kind, clean["psf"])).writeto(tmp_path / "p.fits")
    res = run(
        fit_args(clean["cube"], tmp_path / "o.ecsv", "--psf", tmp_path / "p.fits", "--sky-sigma", SKY), capsys
    )
    if SHARED_PSF[kind] == "error":
        assert_error(res, "fit", "p.fits")
        return
    assert res[0] == 0, res[2]
    t = read_table(tmp_path / "o.ecsv")
    assert len(t) == B and (np.asarray(t["flags"]) & int(Flag.PSF_FIXED)).all()
    assert (np.asarray(t["status"]) >= 0).all()


ROW_PSF = {
    "off-centre": Flag.PSF_FIXED,
    "unnormalised": Flag.PSF_FIXED,
    "nan": Flag.BAD_INPUT,
    "negative": Flag.BAD_INPUT,
    "zero-sum": Flag.BAD_INPUT,
}


@pytest.mark.parametrize("kind", list(ROW_PSF))
def test_predict_one_bad_psf_row(kind, clean, models, clean_predict, tmp_path, capsys):
    psfs = clean["psfs"].copy()
    psfs[BAD_ROW] = _psf_variant(kind, clean["psf"])
    h5 = write_h5(tmp_path / "x.h5", clean["images"], psfs, clean["sky"])
    rc, _out, err = run(predict_args(models["good"], h5, tmp_path / "o.fits"), capsys)
    assert rc == 0, err
    t = read_table(tmp_path / "o.fits")
    assert_rows_match(t, clean_predict["h5"], skip=[BAD_ROW])
    assert int(t["flags"][BAD_ROW]) & int(ROW_PSF[kind])
    if ROW_PSF[kind] == Flag.BAD_INPUT:
        assert_not_measured(t, BAD_ROW, Flag.BAD_INPUT)


@pytest.mark.parametrize("kind", list(ROW_PSF))
def test_fit_one_bad_psf_row(kind, clean, clean_fit, tmp_path, capsys):
    psfs = clean["psfs"].copy()
    psfs[BAD_ROW] = _psf_variant(kind, clean["psf"])
    h5 = write_h5(tmp_path / "x.h5", clean["images"], psfs, clean["sky"])
    rc, _out, err = run(fit_args(h5, tmp_path / "o.ecsv"), capsys)
    assert rc == 0, err
    t = read_table(tmp_path / "o.ecsv")
    assert_rows_match(t, clean_fit["h5"], skip=[BAD_ROW])
    assert int(t["flags"][BAD_ROW]) & int(ROW_PSF[kind])
    assert (int(t["status"][BAD_ROW]) < 0) == (ROW_PSF[kind] == Flag.BAD_INPUT)


# ====================================================================== bad sigma and masks
SKY_CASES = {"sky-zero": 0.0, "sky-negative": -1.0, "sky-nan": np.nan, "sky-inf": np.inf}


@pytest.mark.parametrize("kind", list(SKY_CASES))
def test_predict_bad_sky_sigma_row(kind, clean, models, clean_predict, tmp_path, capsys):
    sky = clean["sky"].copy()
    sky[BAD_ROW] = SKY_CASES[kind]
    h5 = write_h5(tmp_path / "x.h5", clean["images"], clean["psfs"], sky)
    rc, _out, err = run(predict_args(models["good"], h5, tmp_path / "o.fits"), capsys)
    assert rc == 0, err
    t = read_table(tmp_path / "o.fits")
    assert_rows_match(t, clean_predict["h5"], skip=[BAD_ROW])
    assert int(t["flags"][BAD_ROW]) & int(Flag.BAD_SIGMA)  # measured with the border estimate, flagged
    assert np.isfinite(values(t, BAD_ROW)).all()


@pytest.mark.parametrize("kind", list(SKY_CASES))
def test_fit_bad_sky_sigma_row(kind, clean, clean_fit, tmp_path, capsys):
    sky = clean["sky"].copy()
    sky[BAD_ROW] = SKY_CASES[kind]
    h5 = write_h5(tmp_path / "x.h5", clean["images"], clean["psfs"], sky)
    rc, _out, err = run(fit_args(h5, tmp_path / "o.ecsv"), capsys)
    assert rc == 0, err
    t = read_table(tmp_path / "o.ecsv")
    assert_rows_match(t, clean_fit["h5"], skip=[BAD_ROW])
    assert int(t["flags"][BAD_ROW]) & int(Flag.BAD_SIGMA) and int(t["status"][BAD_ROW]) >= 0


SIGMA_MAP_CASES = ["zeros", "negative", "nan"]


def _sigma_maps(kind: str) -> np.ndarray:
    sig = np.full((B, S, S), SKY, np.float32)
    sig[BAD_ROW, 10:14, 40:44] = {"zeros": 0.0, "negative": -1.0, "nan": np.nan}[kind]
    return sig


@pytest.mark.parametrize("kind", SIGMA_MAP_CASES)
def test_predict_bad_sigma_map_pixels(kind, clean, models, tmp_path, capsys):
    h5 = write_h5(
        tmp_path / "x.h5", clean["images"], clean["psfs"], clean["sky"], sigma_maps=_sigma_maps(kind)
    )
    rc, _out, err = run(predict_args(models["good"], h5, tmp_path / "o.fits", "--chi2"), capsys)
    assert rc == 0, err
    t = read_table(tmp_path / "o.fits")
    flags = np.asarray(t["flags"])
    assert len(t) == B and flags[BAD_ROW] & int(Flag.BAD_SIGMA)
    assert not (np.delete(flags, BAD_ROW) & int(Flag.BAD_SIGMA)).any()
    assert np.isfinite(np.asarray(t["chi2nu"], float)).all()  # bad pixels masked, never divided by


@pytest.mark.parametrize("kind", SIGMA_MAP_CASES)
def test_fit_bad_sigma_map_pixels(kind, clean, tmp_path, capsys):
    fits.PrimaryHDU(_sigma_maps(kind)).writeto(tmp_path / "s.fits")
    rc, _out, err = run(
        fit_args(
            clean["cube"], tmp_path / "o.ecsv", "--psf", clean["psf_file"], "--sigma", tmp_path / "s.fits"
        ),
        capsys,
    )
    assert rc == 0, err
    t = read_table(tmp_path / "o.ecsv")
    flags = np.asarray(t["flags"])
    assert (
        len(t) == B and flags[BAD_ROW] & int(Flag.BAD_SIGMA) and not (np.delete(flags, BAD_ROW) & 256).any()
    )
    assert np.isfinite(np.asarray(t["chi2nu"], float)).all()


def test_fit_mask_of_a_whole_stamp(clean, clean_fit, tmp_path, capsys):
    mask = np.zeros((B, S, S), np.int16)
    mask[BAD_ROW] = 1
    fits.PrimaryHDU(mask).writeto(tmp_path / "m.fits")
    rc, _out, err = run(
        fit_args(
            clean["cube"],
            tmp_path / "o.ecsv",
            "--psf",
            clean["psf_file"],
            "--sky-sigma",
            SKY,
            "--mask",
            tmp_path / "m.fits",
        ),
        capsys,
    )
    assert rc == 0, err
    t = read_table(tmp_path / "o.ecsv")
    assert_rows_match(t, clean_fit["cube"], skip=[BAD_ROW])
    assert int(t["flags"][BAD_ROW]) & int(Flag.FEW_GOOD_PIXELS) and int(t["status"][BAD_ROW]) == -1


@pytest.mark.parametrize("kind", ["skysig-negative", "sigma-hdu-wrong-shape"])
def test_predict_cutout_bad_sigma(kind, clean, models, clean_predict, tmp_path, capsys):
    d = tmp_path / "cut"
    shutil.copytree(clean["cutouts"], d)
    f = d / f"g{BAD_ROW:04d}.fits"
    with fits.open(f) as h:
        hdus = [hd.copy() for hd in h]
    if kind == "skysig-negative":
        hdus[0].header["SKYSIG"] = -1.0
    else:
        hdus.append(fits.ImageHDU(np.ones((10, 10), np.float32), name="SIGMA"))
    fits.HDUList(hdus).writeto(f, overwrite=True)
    rc, _out, err = run(predict_args(models["good"], d, tmp_path / "o.fits"), capsys)
    assert rc == 0, err
    t = read_table(tmp_path / "o.fits")
    assert_rows_match(t, clean_predict["cutouts"], skip=[BAD_ROW])
    if kind == "skysig-negative":
        assert int(t["flags"][BAD_ROW]) & int(Flag.BAD_SIGMA)
    else:
        assert_not_measured(t, BAD_ROW, Flag.BAD_INPUT)


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_predict_api_sky_sigma_refused(value, clean, models, tmp_path):
    from galnet.errors import ConfigError
    from galnet.predict import predict_catalog

    with pytest.raises(ConfigError, match="sky sigma"):
        predict_catalog(
            clean["cube"],
            tmp_path / "o.fits",
            psf=clean["psf_file"],
            sky_sigma=float(value),
            model=models["good"],
            backend="torch",
            progress=False,
        )


# ====================================================================== bad source catalogs (image + catalog)
def _catalog_variant(kind: str, src: Path, d: Path) -> tuple[Path, str | None]:
    """(catalog path, expected outcome: 'error', or the index of the flagged row as str, or 'works')."""
    t = Table.read(src)
    out = d / "cat.ecsv"
    if kind == "dec-91":
        t["dec"][BAD_ROW] = 91.0
        res = "row"
    elif kind == "ra-nan":
        t["ra"][BAD_ROW] = np.nan
        res = "row"
    elif kind == "ra-text-one-row":
        t["ra"] = t["ra"].astype(str)
        t["ra"][BAD_ROW] = "abc"
        res = "row"
    elif kind == "ra-all-text":
        t["ra"] = np.array(["10:00:00"] * len(t))
        res = "error"
    elif kind == "header-only":
        t = t[:0]
        res = "error"
    elif kind == "outside-image":
        t["ra"][BAD_ROW] = t["ra"][BAD_ROW] + 1.0
        res = "row"
    elif kind == "no-position-columns":
        t = Table({"id": t["id"], "mag_in": t["mag_in"]})
        res = "error"
    elif kind == "duplicate-ids":
        t["id"][BAD_ROW] = t["id"][0]
        res = "dup"
    else:
        raise AssertionError(kind)
    t.write(out, overwrite=True)
    return out, res


CATALOG_CASES = [
    "dec-91",
    "ra-nan",
    "ra-text-one-row",
    "ra-all-text",
    "header-only",
    "outside-image",
    "no-position-columns",
    "duplicate-ids",
]


@pytest.mark.parametrize("kind", CATALOG_CASES)
def test_predict_bad_source_catalog(kind, clean, models, clean_predict, tmp_path, capsys):
    cat, expect = _catalog_variant(kind, clean["sources"], tmp_path)
    extra = ["--catalog", cat, "--psf", clean["psf_file"]]
    if kind != "no-position-columns":
        extra += ["--ra-col", "ra", "--dec-col", "dec"]
    res = run(predict_args(models["good"], clean["image"], tmp_path / "o.fits", *extra), capsys)
    if expect == "error":
        assert_error(res, "predict", "cat.ecsv")
        assert not (tmp_path / "o.fits.parts").exists()
        return
    assert res[0] == 0, res[2]
    t = read_table(tmp_path / "o.fits")
    ref = clean_predict["image"]
    if expect == "row":
        assert_not_measured(t, BAD_ROW, Flag.BAD_INPUT)
    else:  # duplicate ids: made unique, the repeat renamed
        assert len(set(map(str, t["id"]))) == B and str(t["id"][BAD_ROW]) == f"{t['id'][0]}#2"
    assert len(t) == B
    keep = [i for i in range(B) if i != BAD_ROW]
    for c in ("mag", "re_pix", "n"):  # positions from RA/Dec: the same stamps as the x/y-free clean run
        np.testing.assert_allclose(np.asarray(t[c], float)[keep], np.asarray(ref[c], float)[keep], rtol=1e-5)


@pytest.mark.parametrize("what", ["column-name", "id-value"])
@pytest.mark.parametrize("ext", [".fits", ".ecsv"])
def test_predict_non_ascii_catalog(what, ext, clean, models, tmp_path, capsys):
    t = Table.read(clean["sources"])
    if what == "column-name":
        t.rename_column("mag_in", "magnitude_ü")
    else:
        t["id"] = [f"gal{i}" if i != 3 else "galaxié" for i in range(B)]
    t.write(tmp_path / "cat.ecsv")
    out = tmp_path / f"o{ext}"
    res = run(
        predict_args(
            models["good"],
            clean["image"],
            out,
            "--catalog",
            tmp_path / "cat.ecsv",
            "--psf",
            clean["psf_file"],
        ),
        capsys,
    )
    if ext == ".fits":  # refused before any computation: no shards left behind
        assert_error(res, "predict", "ASCII")
        assert not out.exists() and not (tmp_path / f"o{ext}.parts").exists()
    else:
        assert res[0] == 0, res[2]
        assert len(read_table(out)) == B


@pytest.mark.parametrize("kind", ["x-col-missing", "psf-column-missing", "radec-without-wcs"])
def test_predict_catalog_option_errors(kind, clean, models, tmp_path, capsys):
    extra = ["--catalog", clean["sources"], "--psf", clean["psf_file"]]
    image = clean["image"]
    if kind == "x-col-missing":
        extra += ["--x-col", "X_NOPE", "--y-col", "y"]
    elif kind == "psf-column-missing":
        extra = ["--catalog", clean["sources"], "--psf-column", "NOPE"]
    else:
        with fits.open(clean["image"]) as h:
            fits.PrimaryHDU(h[0].data).writeto(tmp_path / "nowcs.fits")
        image = tmp_path / "nowcs.fits"
        extra += ["--ra-col", "ra", "--dec-col", "dec"]
    res = run(predict_args(models["good"], image, tmp_path / "o.fits", *extra), capsys)
    assert_error(
        res,
        "predict",
        {"x-col-missing": "X_NOPE", "psf-column-missing": "NOPE", "radec-without-wcs": "WCS"}[kind],
    )


def test_predict_psf_column_file_missing_flags_row(clean, models, clean_predict, tmp_path, capsys):
    t = Table.read(clean["sources"])
    t["psf"] = [str(clean["psf_file"])] * B
    t["psf"][BAD_ROW] = "missing_psf.fits"
    t.write(tmp_path / "cat.ecsv")
    rc, _out, err = run(
        predict_args(
            models["good"],
            clean["image"],
            tmp_path / "o.ecsv",
            "--catalog",
            tmp_path / "cat.ecsv",
            "--psf-column",
            "psf",
        ),
        capsys,
    )
    assert rc == 0, err
    t = read_table(tmp_path / "o.ecsv")
    assert len(t) == B
    assert_not_measured(t, BAD_ROW, Flag.BAD_INPUT)


# ====================================================================== duplicate ids
def test_predict_duplicate_h5_ids_made_unique(clean, models, clean_predict, tmp_path, capsys, caplog):
    ids = np.arange(100, 100 + B)
    ids[5] = ids[0]
    h5 = write_h5(tmp_path / "x.h5", clean["images"], clean["psfs"], clean["sky"], ids=ids)
    with caplog.at_level(logging.WARNING):
        rc, _out, err = run(predict_args(models["good"], h5, tmp_path / "o.fits"), capsys)
    assert rc == 0, err
    t = read_table(tmp_path / "o.fits")
    assert [str(v) for v in t["id"]] == [str(v) for v in ids[:5]] + ["100#2"] + [str(v) for v in ids[6:]]
    assert "duplicated id" in caplog.text


def test_fit_duplicate_h5_ids_made_unique(clean, tmp_path, capsys, caplog):
    ids = np.arange(100, 100 + B)
    ids[5] = ids[0]
    h5 = write_h5(tmp_path / "x.h5", clean["images"], clean["psfs"], clean["sky"], ids=ids)
    with caplog.at_level(logging.WARNING):
        rc, _out, err = run(fit_args(h5, tmp_path / "o.ecsv", "--limit", "6"), capsys)
    assert rc == 0, err
    assert list(map(str, read_table(tmp_path / "o.ecsv")["id"])) == [
        "100",
        "101",
        "102",
        "103",
        "104",
        "100#2",
    ]
    assert "duplicated id" in caplog.text


def test_predict_cutouts_same_stem(clean, models, tmp_path, capsys, caplog):
    """g0007.fits and g0007.fits.gz: two rows with distinct ids (their file names), and a warning."""
    d = tmp_path / "cut"
    shutil.copytree(clean["cutouts"], d)
    with fits.open(d / "g0007.fits") as h:
        h.writeto(d / "g0007.fits.gz")
    with caplog.at_level(logging.WARNING):
        rc, _out, err = run(predict_args(models["good"], d, tmp_path / "o.fits"), capsys)
    assert rc == 0, err
    ids = [str(v) for v in read_table(tmp_path / "o.fits")["id"]]
    assert len(ids) == B + 1 and len(set(ids)) == B + 1 and {"g0007.fits", "g0007.fits.gz"} <= set(ids)
    assert "share an id" in caplog.text


def test_evaluate_refuses_duplicate_catalog_ids(clean, clean_predict, tmp_path, capsys):
    t = clean_predict["h5"].copy()
    t["id"][7] = t["id"][0]
    t.write(tmp_path / "dup.fits")
    res = run(
        [
            "evaluate",
            "--truth",
            clean["h5"],
            "--catalog",
            f"net={tmp_path / 'dup.fits'}",
            "--out",
            tmp_path / "rep",
        ],
        capsys,
    )
    assert_error(res, "evaluate", "dup.fits", "duplicate")


def test_evaluate_refuses_duplicate_truth_ids(clean, clean_predict, tmp_path, capsys):
    ids = np.arange(100, 100 + B)
    ids[7] = ids[0]
    h5 = write_h5(
        tmp_path / "x.h5", clean["images"], clean["psfs"], clean["sky"], ids=ids, params=clean["truth"]
    )
    clean_predict["h5"].write(tmp_path / "net.fits")
    res = run(
        ["evaluate", "--truth", h5, "--catalog", f"net={tmp_path / 'net.fits'}", "--out", tmp_path / "r"],
        capsys,
    )
    assert_error(res, "evaluate", "x.h5", "duplicate")


# ====================================================================== bad output paths
def _bad_output(kind: str, d: Path) -> Path:
    if kind == "under-a-file":
        (d / "afile").write_text("x")
        return d / "afile" / "o.fits"
    if kind == "is-a-directory":
        (d / "adir.fits").mkdir()
        return d / "adir.fits"
    if kind == "unknown-extension":
        return d / "o.txt"
    if kind == "parts-is-a-file":
        (d / "o.fits.parts").write_text("x")
        return d / "o.fits"
    raise AssertionError(kind)


OUTPUT_CASES = ["under-a-file", "is-a-directory", "unknown-extension", "parts-is-a-file"]


@pytest.mark.parametrize("kind", OUTPUT_CASES)
def test_predict_bad_output_path(kind, clean, models, tmp_path, capsys):
    out = _bad_output(kind, tmp_path)
    assert_error(run(predict_args(models["good"], clean["h5"], out), capsys), "predict", out.name)


@pytest.mark.parametrize("kind", OUTPUT_CASES)
def test_fit_bad_output_path(kind, clean, tmp_path, capsys):
    out = _bad_output(kind, tmp_path)
    assert_error(run(fit_args(clean["h5"], out), capsys), "fit", out.name)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
@pytest.mark.parametrize("cmd", ["predict", "fit"])
def test_unwritable_output_directory(cmd, clean, models, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        argv = (
            predict_args(models["good"], clean["h5"], ro / "o.fits")
            if cmd == "predict"
            else fit_args(clean["h5"], ro / "o.fits")
        )
        assert_error(run(argv, capsys), cmd, "not writable")
    finally:
        ro.chmod(0o700)


def test_predict_quicklook_under_a_file(clean, models, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    res = run(
        predict_args(
            models["good"], clean["h5"], tmp_path / "o.fits", "--quicklook", tmp_path / "afile" / "q.png"
        ),
        capsys,
    )
    assert_error(res, "predict", "--quicklook")
    assert not (tmp_path / "o.fits.parts").exists()


def test_evaluate_out_is_a_file(clean, clean_predict, tmp_path, capsys):
    (tmp_path / "rep").write_text("x")
    clean_predict["h5"].write(tmp_path / "net.fits")
    res = run(
        [
            "evaluate",
            "--truth",
            clean["h5"],
            "--catalog",
            f"net={tmp_path / 'net.fits'}",
            "--out",
            tmp_path / "rep",
        ],
        capsys,
    )
    assert_error(res, "evaluate", "--out")


# ====================================================================== model cards
@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("nosha", "sha256"),
        ("garbage", "tiny.safetensors"),
        ("pickle", "tiny.safetensors"),
        ("notjson", "notjson.json"),
        ("missing", "no_such_model"),
    ],
)
def test_predict_bad_model_card(kind, needle, clean, models, tmp_path, capsys):
    model = models.get(kind, "no_such_model")
    res = run(predict_args(model, clean["h5"], tmp_path / "o.fits"), capsys)
    assert_error(res, "predict", needle)
    assert not (tmp_path / "o.fits.parts").exists()


def test_predict_unverified_model_with_opt_in(clean, models, clean_predict, tmp_path, capsys):
    rc, _out, err = run(
        predict_args(models["nosha"], clean["h5"], tmp_path / "o.fits", "--allow-unverified-model"), capsys
    )
    assert rc == 0, err
    assert_rows_match(read_table(tmp_path / "o.fits"), clean_predict["h5"])


def test_predict_nan_weights_are_failed_not_measured(clean, models, tmp_path, capsys):
    rc, out, err = run(predict_args(models["nan"], clean["h5"], tmp_path / "o.fits"), capsys)
    assert rc == 0, err
    t = read_table(tmp_path / "o.fits")
    assert len(t) == B
    for i in range(B):
        assert_not_measured(t, i, Flag.FAILED)
    assert "0 measured" in out and f"{B} FAILED" in out
    assert not (np.asarray(t["flags"]) & int(Flag.OUT_OF_PRIOR)).any()


# ====================================================================== resumes with other options
def _predict_resume_base(clean, models) -> list:
    return [
        "--catalog",
        clean["sources"],
        "--psf",
        clean["psf_file"],
        "--x-col",
        "x",
        "--y-col",
        "y",
        "--sky-sigma",
        SKY,
        "--zeropoint",
        "27",
        "--gain",
        "100",
        "--pixel-scale",
        "0.168",
        "--chi2",
    ]


@pytest.fixture(scope="session")
def predict_partial(clean, models, tmp_path_factory):
    """An image + catalog predict run stopped after its first chunk (its shards and manifest kept)."""
    d = tmp_path_factory.mktemp("predict_partial")
    argv = predict_args(models["good"], clean["image"], d / "o.fits", *_predict_resume_base(clean, models))
    assert main([str(a) for a in argv + ["--max-chunks", "1"]]) == 0
    assert (d / "o.fits.parts" / "manifest.json").is_file() and not (d / "o.fits").exists()
    fits.PrimaryHDU(_gauss_psf(fwhm=3.5).astype(np.float32)).writeto(d / "psf2.fits")
    return d, argv


def _replace(argv: list, option: str, value) -> list:
    argv = list(argv)
    if option in argv:
        i = argv.index(option)
        if value is None:
            del argv[i : i + 2]
        else:
            argv[i + 1] = value
    elif value is not None:
        argv += [option, value]
    return argv


#: (option, new value or None to drop it, manifest entry named in the refusal)
PREDICT_RESUME_CHANGES = [
    ("--zeropoint", "30", "zeropoint"),
    ("--zeropoint", None, "zeropoint"),
    ("--sky-sigma", "0.06", "sky_sigma"),
    ("--gain", "50", "gain"),
    ("--pixel-scale", "0.2", "pixel_scale"),
    ("--xy-origin", "0", "xy_origin"),
    ("--x-col", None, "positions"),
    ("--id-col", "mag_in", "id_column"),
    ("--psf", "PSF2", "psf"),
    ("--chi2", "DROP", "chi2"),
    ("--high-chi2", "2", "high_chi2"),
    ("--detect-snr", "5", "detect_snr"),
    ("--batch-size", "2", "batch_size"),
    ("--chunk-size", "3", "chunk_size"),
    ("--model", "NOSHA", "model"),
    ("--save-models", "FLAG", "save_models"),
]


@pytest.mark.parametrize(("option", "value", "entry"), PREDICT_RESUME_CHANGES, ids=lambda v: str(v))
def test_predict_resume_refuses_other_options(
    option, value, entry, predict_partial, models, tmp_path, capsys
):
    src, argv = predict_partial
    d = tmp_path
    shutil.copytree(src / "o.fits.parts", d / "o.fits.parts")
    argv = _replace(argv, "-o", d / "o.fits")
    shutil.copy(src / "psf2.fits", d / "psf2.fits")
    if option == "--x-col":  # positions from RA/Dec instead of x/y
        new = _replace(_replace(argv, "--x-col", None), "--y-col", None) + [
            "--ra-col",
            "ra",
            "--dec-col",
            "dec",
        ]
    elif value == "DROP":
        new = [a for a in argv if a != option]
    elif value == "FLAG":
        new = argv + [option]
    elif value == "PSF2":
        new = _replace(argv, option, d / "psf2.fits")
    elif value == "NOSHA":
        new = _replace(argv, option, models["nosha"]) + ["--allow-unverified-model"]
    else:
        new = _replace(argv, option, value)
    msg = assert_error(run(new + ["--resume"], capsys), "predict", "cannot resume", entry, "was", "now")
    assert str(d / "o.fits.parts") in msg
    assert (d / "o.fits.parts" / "part-000000000000.npz").is_file()  # a refused resume keeps the shards


def test_predict_resume_refuses_a_changed_catalog(clean, models, tmp_path, capsys):
    shutil.copy(clean["sources"], tmp_path / "cat.ecsv")
    argv = predict_args(
        models["good"],
        clean["image"],
        tmp_path / "o.fits",
        "--catalog",
        tmp_path / "cat.ecsv",
        "--psf",
        clean["psf_file"],
    )
    assert run(argv + ["--max-chunks", "1"], capsys)[0] == 0
    t = Table.read(tmp_path / "cat.ecsv")
    t["x"][5] += 3
    t.write(tmp_path / "cat.ecsv", overwrite=True)
    os.utime(tmp_path / "cat.ecsv", (1, 1))
    assert_error(run(argv + ["--resume"], capsys), "predict", "cannot resume", "input.catalog")


def test_predict_resume_with_the_same_options_matches_a_clean_run(
    clean, models, clean_predict, tmp_path, capsys
):
    argv = predict_args(models["good"], clean["h5"], tmp_path / "o.fits")
    assert run(argv + ["--max-chunks", "1"], capsys)[0] == 0
    assert run(argv + ["--resume"], capsys)[0] == 0
    t = read_table(tmp_path / "o.fits")
    for c in t.colnames:
        np.testing.assert_array_equal(np.asarray(t[c]), np.asarray(clean_predict["h5"][c]), err_msg=c)


@pytest.fixture(scope="session")
def fit_partial(clean, tmp_path_factory):
    d = tmp_path_factory.mktemp("fit_partial")
    argv = fit_args(clean["h5"], d / "o.ecsv", "--zeropoint", "27")
    assert main([str(a) for a in argv + ["--max-batches", "1"]]) == 0
    assert (d / "o.ecsv.parts" / "manifest.json").is_file() and not (d / "o.ecsv").exists()
    Table(
        {
            "id": np.arange(100, 100 + B),
            "x": np.full(B, 31.0),
            "y": np.full(B, 31.0),
            "mag": np.full(B, 20.0),
            "re_pix": np.full(B, 3.0),
            "n": np.full(B, 1.0),
            "q": np.full(B, 0.8),
            "pa": np.zeros(B),
        }
    ).write(d / "start.ecsv")
    return d, argv


FIT_RESUME_CHANGES = [
    ("--zeropoint", "30", "zeropoint"),
    ("--pixel-scale", "0.2", "pixel_scale"),
    ("--max-iter", "9", "max_iter"),
    ("--fit-sky", "FLAG", "fit_sky"),
    ("--n-grid", "1,4", "n_grid"),
    ("--start", "START", "start"),
    ("--gain", "50", "gain"),
    ("--read-noise", "3", "read_noise"),
    ("--sky-sigma", "0.1", "sky_sigma"),
    ("--detect-snr", "5", "detect_snr"),
    ("--limit", "6", "n_rows"),
    ("--batch-size", "2", "batch_size"),
    ("--no-mask-neighbours", "DROP", "mask_neighbours"),
]


@pytest.mark.parametrize(("option", "value", "entry"), FIT_RESUME_CHANGES, ids=lambda v: str(v))
def test_fit_resume_refuses_other_options(option, value, entry, fit_partial, tmp_path, capsys):
    src, argv = fit_partial
    d = tmp_path
    shutil.copytree(src / "o.ecsv.parts", d / "o.ecsv.parts")
    shutil.copy(src / "start.ecsv", d / "start.ecsv")
    argv = _replace(argv, "-o", d / "o.ecsv")
    if value == "DROP":
        new = [a for a in argv if a != option]
    elif value == "FLAG":
        new = argv + [option]
    elif value == "START":
        new = argv + [option, f"catalog:{d / 'start.ecsv'}"]
    else:
        new = _replace(argv, option, value)
    msg = assert_error(run(new + ["--resume"], capsys), "fit", "cannot resume", entry, "was", "now")
    assert str(d / "o.ecsv.parts") in msg
    assert (d / "o.ecsv.parts" / "part-000000000000.npz").is_file()


def test_fit_resume_with_the_same_options_matches_a_clean_run(clean, clean_fit, tmp_path, capsys):
    argv = fit_args(clean["h5"], tmp_path / "o.ecsv")
    assert run(argv + ["--max-batches", "1"], capsys)[0] == 0
    assert run(argv + ["--resume"], capsys)[0] == 0
    t = read_table(tmp_path / "o.ecsv")
    for c in t.colnames:
        np.testing.assert_array_equal(np.asarray(t[c]), np.asarray(clean_fit["h5"][c]), err_msg=c)


# ====================================================================== fit start catalogs
def _start_table(clean, ids=None) -> Table:
    truth = clean["truth"]
    return Table(
        {
            "id": np.arange(100, 100 + B) if ids is None else ids,
            "x": truth[:, 0],
            "y": truth[:, 1],
            "mag": truth[:, 2],
            "re_pix": truth[:, 3],
            "n": truth[:, 4],
            "q": truth[:, 5],
            "pa": truth[:, 6],
        }
    )


def test_fit_start_catalog_without_a_stamps_id(clean, tmp_path, capsys, caplog):
    t = _start_table(clean)
    t.remove_row(BAD_ROW)
    t.write(tmp_path / "start.ecsv")
    with caplog.at_level(logging.WARNING):
        rc, _out, err = run(
            fit_args(clean["h5"], tmp_path / "o.ecsv", "--start", f"catalog:{tmp_path / 'start.ecsv'}"),
            capsys,
        )
    assert rc == 0, err
    out = read_table(tmp_path / "o.ecsv")
    assert len(out) == B and int(out["flags"][BAD_ROW]) & int(Flag.BAD_INPUT)
    assert int(out["status"][BAD_ROW]) == -1 and np.isnan(values(out, BAD_ROW)).all()
    assert (np.delete(np.asarray(out["status"]), BAD_ROW) >= 0).all()
    assert f"no row with id {100 + BAD_ROW} in start catalog" in caplog.text
    assert "1 stamp(s) had no row in the start catalog" in caplog.text


@pytest.mark.parametrize("kind", ["duplicate-ids", "no-id-column", "missing-columns"])
def test_fit_bad_start_catalog(kind, clean, tmp_path, capsys):
    t = _start_table(clean)
    if kind == "duplicate-ids":
        t["id"][3] = t["id"][0]
    elif kind == "no-id-column":
        t.remove_column("id")
    else:
        t.remove_column("re_pix")
    t.write(tmp_path / "start.ecsv")
    res = run(
        fit_args(clean["h5"], tmp_path / "o.ecsv", "--start", f"catalog:{tmp_path / 'start.ecsv'}"), capsys
    )
    assert_error(
        res, "fit", {"duplicate-ids": "duplicated", "no-id-column": "'id'", "missing-columns": "re_pix"}[kind]
    )


def test_fit_start_catalog_nan_row_is_flagged(clean, tmp_path, capsys):
    t = _start_table(clean)
    t["mag"][BAD_ROW] = np.nan
    t.write(tmp_path / "start.ecsv")
    rc, _out, err = run(
        fit_args(clean["h5"], tmp_path / "o.ecsv", "--start", f"catalog:{tmp_path / 'start.ecsv'}"), capsys
    )
    assert rc == 0, err
    out = read_table(tmp_path / "o.ecsv")
    assert int(out["flags"][BAD_ROW]) & int(Flag.BAD_INPUT) and int(out["status"][BAD_ROW]) == -1
    assert (np.delete(np.asarray(out["status"]), BAD_ROW) >= 0).all()


# ====================================================================== evaluate: impossible catalog values
def test_evaluate_impossible_values_are_not_measured(clean, clean_predict, tmp_path, capsys, caplog):
    """re < 0, q > 1 and n = 0 in three rows of a catalog (a matplotlib log-scale error before): a warning,
    those rows count as not measured, the report is written."""
    t = clean_predict["h5"].copy()
    t["re_pix"][1], t["q"][2], t["n"][3] = -1.0, 1.5, 0.0
    t.write(tmp_path / "net.fits")
    with caplog.at_level(logging.WARNING):
        rc, _out, err = run(
            [
                "evaluate",
                "--truth",
                clean["h5"],
                "--catalog",
                f"net={tmp_path / 'net.fits'}",
                "--out",
                tmp_path / "rep",
                "--no-progress",
            ],
            capsys,
        )
    assert rc == 0, err
    assert (
        "3 row(s) with impossible parameters" in caplog.text and (tmp_path / "rep" / "report.html").is_file()
    )
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["n_common"] == B - 3


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("re_pix", -1.0),
        ("re_pix", 0.0),
        ("q", 1.5),
        ("q", 0.0),
        ("n", 0.0),
        ("n", -2.0),
        ("mag", np.inf),
        ("q", np.nan),
    ],
)
def test_evaluate_load_catalog_drops_impossible_rows(column, value, clean, clean_predict, tmp_path):
    from galnet.evaluate.command import load_catalog

    t = clean_predict["h5"].copy()
    t[column][BAD_ROW] = value
    t.write(tmp_path / "net.fits")
    m = load_catalog("net", tmp_path / "net.fits", np.arange(100, 100 + B))
    assert np.isnan(m.params[BAD_ROW]).all() and np.isfinite(np.delete(m.params, BAD_ROW, axis=0)).all()


def test_evaluate_catalog_with_no_matching_ids(clean, clean_predict, tmp_path, capsys):
    t = clean_predict["h5"].copy()
    t["id"] = np.arange(5000, 5000 + B)
    t.write(tmp_path / "net.fits")
    res = run(
        [
            "evaluate",
            "--truth",
            clean["h5"],
            "--catalog",
            f"net={tmp_path / 'net.fits'}",
            "--out",
            tmp_path / "rep",
        ],
        capsys,
    )
    assert_error(res, "evaluate", "net.fits", "no catalog id matches")


def test_evaluate_catalog_non_numeric_column(clean, clean_predict, tmp_path, capsys):
    t = clean_predict["h5"].copy()
    t["n"] = t["n"].astype(str)
    t["n"][0] = "abc"
    t.write(tmp_path / "net.ecsv")
    res = run(
        [
            "evaluate",
            "--truth",
            clean["h5"],
            "--catalog",
            f"net={tmp_path / 'net.ecsv'}",
            "--out",
            tmp_path / "rep",
        ],
        capsys,
    )
    assert_error(res, "evaluate", "net.ecsv", "'n'")


# ====================================================================== Ctrl-C and kill -9, then --resume
@pytest.mark.parametrize("cmd", ["predict", "fit"])
def test_ctrl_c_prints_one_line_and_resume_finishes(
    cmd, clean, models, clean_predict, clean_fit, tmp_path, capsys, monkeypatch
):
    import galnet.fit.catalog as fit_command
    import galnet.predict.runner as runner

    target, name = (runner, "process_chunk") if cmd == "predict" else (fit_command, "_fit_batch")
    real = getattr(target, name)
    calls = []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    out = tmp_path / ("o.fits" if cmd == "predict" else "o.ecsv")
    argv = predict_args(models["good"], clean["h5"], out) if cmd == "predict" else fit_args(clean["h5"], out)
    monkeypatch.setattr(target, name, interrupted)
    rc, _o, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == 130 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"galnet {cmd}: interrupted;") and "--resume" in lines[0]
    assert str(tmp_path / f"{out.name}.parts") in lines[0]
    assert (tmp_path / f"{out.name}.parts" / "part-000000000000.npz").is_file() and not out.exists()
    monkeypatch.setattr(target, name, real)
    assert run(argv + ["--resume"], capsys)[0] == 0
    ref = clean_predict["h5"] if cmd == "predict" else clean_fit["h5"]
    t = read_table(out)
    for c in t.colnames:
        np.testing.assert_array_equal(np.asarray(t[c]), np.asarray(ref[c]), err_msg=c)


def _run_forked(argv: list):
    """``galnet ARGV`` in a forked child (no second torch import), output to /dev/null; the Process."""
    import multiprocessing

    def target():
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        logging.disable(logging.CRITICAL)
        os._exit(main([str(a) for a in argv]))

    proc = multiprocessing.get_context("fork").Process(target=target, daemon=True)
    proc.start()
    return proc


def _kill_points_then_resume(argv: list, out: Path, n_shards: int, rng: np.random.Generator) -> list[str]:
    """Start the run, SIGKILL it at a random point, 10 times (each restart with --resume), then finish it."""
    import signal
    import time

    pdir = out.with_name(out.name + ".parts")
    log_ = []
    # the 10 kill points: once this many shards exist (sorted: each restart gets further), plus a delay
    targets = np.sort(rng.integers(0, max(1, n_shards - 1), 10))
    for k in range(10):
        proc = _run_forked(argv + (["--resume"] if k else []))
        after = int(targets[k])
        delay = float(rng.uniform(0.0, 0.05))  # often mid-shard
        t0 = time.monotonic()
        while proc.is_alive() and time.monotonic() - t0 < 60:
            if len(list(pdir.glob("part-*.npz"))) >= after:
                break
            time.sleep(0.002)
        time.sleep(delay)
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        log_.append(f"kill {k}: after {after} shards + {delay * 1e3:.0f} ms, exit {proc.exitcode}")
    proc = _run_forked(argv + ["--resume"])
    proc.join(120)
    assert proc.exitcode == 0, log_
    return log_


@pytest.mark.parametrize("cmd", ["predict", "fit"])
def test_kill_9_at_10_random_points_then_resume_is_identical(cmd, clean, models, tmp_path):
    """kill -9 at 10 random points (drawn per run), --resume after each: the uninterrupted run's catalog.

    Shards and the manifest are written to temporary files and renamed, so a kill never leaves a truncated
    file; an unfinished shard is recomputed.
    """
    reps = 4 if cmd == "predict" else 2
    images = np.concatenate([clean["images"]] * reps)
    n = len(images)
    h5 = write_h5(
        tmp_path / "many.h5",
        images,
        np.concatenate([clean["psfs"]] * reps),
        np.concatenate([clean["sky"]] * reps),
    )
    if cmd == "predict":

        def argv(out):
            return [*predict_args(models["good"], h5, out), "--chunk-size", "2", "--batch-size", "2"]

        n_shards = n // 2
    else:

        def argv(out):
            return [*fit_args(h5, out), "--batch-size", "2"]

        n_shards = n // 2
    ref_out = tmp_path / "ref.ecsv"
    assert main([str(a) for a in argv(ref_out)]) == 0
    out = tmp_path / "killed.ecsv"
    rng = np.random.default_rng(16 if cmd == "predict" else 61)
    log_ = _kill_points_then_resume(argv(out), out, n_shards, rng)
    assert sum("exit -9" in x for x in log_) >= 5, log_  # most kills landed mid-run
    ref, t = read_table(ref_out), read_table(out)
    assert len(t) == n and t.colnames == ref.colnames
    for c in t.colnames:
        np.testing.assert_array_equal(np.asarray(t[c]), np.asarray(ref[c]), err_msg=f"{c}: {log_}")
    assert not out.with_name(out.name + ".parts").exists()


# ====================================================================== NO_SOURCE calibration
def test_no_source_never_fires_on_mag_24_galaxies_and_flags_blank_stamps():
    """The faint end of the hsc-r prior (mag 24, half with correlated noise, neighbours) is always detected;
    all-zero stamps never are, and pure-noise stamps almost never are."""
    from galnet.detection import DETECTION_SNR, no_source
    from galnet.simulate import generate_batch, load_preset

    cfg = load_preset("hsc-r", {"priors": {"mag": {"kind": "fixed", "value": 24.0}}})
    d = generate_batch(cfg, 300, seed=11)
    blank, snr = no_source(d["images"], d["sky_sigma"])
    assert not blank.any(), np.sort(snr)[:5]
    assert snr.min() > DETECTION_SNR
    noise = np.random.default_rng(12).normal(0, 0.058, (300, S, S))
    blank_noise, _ = no_source(noise, 0.058)
    assert blank_noise.mean() > 0.85
    assert no_source(np.zeros((3, S, S)), 0.058)[0].all()
    assert no_source(np.zeros((3, S, S)), 0.058, threshold=0)[0].sum() == 0  # 0 disables the test
