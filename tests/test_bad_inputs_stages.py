"""Adversarial inputs to ``galnet render``, ``galnet simulate`` and ``galnet train`` (issue 16).

Every case runs the command in-process through :func:`galnet.cli.main` and asserts its outcome class:

* **error**: exit status 2, the last line of stderr is ``galnet <cmd>: error: ...`` (our checks and
  argparse's converters alike), it names the option, file, key or row (``match``), and stderr holds
  no traceback;
* **works**: exit status 0 and a correct result (e.g. an integer or big-endian PSF renders exactly
  as the float PSF does);
* **interrupted**: Ctrl-C gives exit status 130 and one line saying how to resume.

Choices documented here: a render table row with a NaN, infinite or out-of-range parameter is an
error naming the row (a render is a deliberate request: no stamp is drawn rather than a blank one);
a prior table with a NaN is an error (values are not silently dropped); an empty preset or training
config file is an error (not "all defaults").
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from galnet.cli import main
from galnet.render import MoffatPSF

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_PRESET = """
name = "tiny"
stamp_size = 31
psf_size = 11
[priors]
re_arcsec = { kind = "loguniform", low = 0.1, high = 0.5 }
n = { kind = "loguniform", low = 0.5, high = 2.0 }
[neighbours]
enabled = false
"""


class _Boom:
    """Unpickling this creates a marker file: the proof that a weights file was unpickled."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _good_table(**over) -> Table:
    t = Table({"id": [1, 2], "x": [16.0, 15.5], "y": [16.0, 16.5], "mag": [20.0, 21.0],
               "re_pix": [2.0, 3.0], "n": [1.0, 2.0], "q": [0.6, 0.9], "pa": [10.0, -30.0]})
    for k, v in over.items():
        t[k] = v
    return t


def _truncate(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


@pytest.fixture(scope="module")
def f(tmp_path_factory) -> SimpleNamespace:
    """Every good and bad input file, made once for the module."""
    d = tmp_path_factory.mktemp("bad")
    ns = SimpleNamespace(d=d)
    psf = MoffatPSF(fwhm=3.0, beta=3.0).draw(11).numpy()
    ns.psf_array = psf
    # ---------------------------------------------------------------- render inputs
    ns.table = d / "t.ecsv"
    _good_table().write(ns.table)
    ns.table_fits = d / "t.fits"
    _good_table().write(ns.table_fits)
    ns.psf = d / "psf.fits"
    fits.writeto(ns.psf, psf)
    ns.empty = d / "empty.fits"
    ns.empty.write_bytes(b"")
    ns.empty_ecsv = d / "empty.ecsv"
    ns.empty_ecsv.write_bytes(b"")
    ns.garbage = d / "garbage.fits"
    ns.garbage.write_bytes(os.urandom(5000))
    ns.trunc_table = _truncate(ns.table_fits, d / "trunc_t.fits")
    ns.header_only = d / "header.csv"
    ns.header_only.write_text("id,x,y,mag,re_pix,n,q,pa\n")
    bad_tables = {
        "no_q": _good_table(),
        "nan_x": _good_table(x=[16.0, np.nan]),
        "inf_re": _good_table(re_pix=[2.0, np.inf]),
        "huge_re": _good_table(re_pix=[1e30, 2.0]),
        "huge_mag": _good_table(mag=[20.0, 1e30]),
        "n0": _good_table(n=[0.0, 1.0]),
        "q2": _good_table(q=[0.5, 2.0]),
    }
    del bad_tables["no_q"]["q"]
    for name, t in bad_tables.items():
        t.write(d / f"{name}.ecsv")
    (d / "text_mag.csv").write_text("x,y,mag,re_pix,n,q,pa\n16,16,abc,2,1,0.5,0\n")
    (d / "nonascii.ecsv").write_text("")
    _good_table(id=["g1", "gé2"]).write(d / "nonascii.ecsv", overwrite=True)
    ns.trunc_psf = _truncate(ns.psf, d / "trunc_psf.fits")
    for name, arr in {
        "psf_even": np.ones((10, 10)), "psf_1d": np.ones(11), "psf_nan": np.full((11, 11), np.nan),
        "psf_zero": np.zeros((11, 11)), "psf_4d": np.ones((1, 1, 11, 11)),
        "psf_cube3": np.stack([psf] * 3), "psf_offcentre": np.roll(psf, 3, axis=1),
        "psf_negative": psf - 0.5 * psf.max(),
    }.items():
        fits.writeto(d / f"{name}.fits", arr)
    ns.psf_int = d / "psf_int.fits"
    fits.writeto(ns.psf_int, np.round(psf / psf.max() * 30000).astype(np.int32))
    ns.psf_be = d / "psf_be.fits"
    fits.writeto(ns.psf_be, psf.astype(">f8"))
    ns.afile = d / "a_file"
    ns.afile.write_text("x")
    # ---------------------------------------------------------------- simulate inputs
    ns.preset = d / "tiny.toml"
    ns.preset.write_text(TINY_PRESET)
    presets = {
        "empty.toml": "",
        "syntax.toml": "stamp_size = = 3\n",
        "unknown.toml": TINY_PRESET + "colour = 3\n",
        "nested.toml": TINY_PRESET.replace("[neighbours]", "[noise]\nsky_sigmaa = 1.0\n[neighbours]"),
        "wrongtype.toml": TINY_PRESET.replace("stamp_size = 31", 'stamp_size = "31"'),
        "even.toml": TINY_PRESET.replace("stamp_size = 31", "stamp_size = 30"),
        "nan.toml": TINY_PRESET.replace('name = "tiny"', 'name = "tiny"\ngain = nan'),
        "boolnum.toml": TINY_PRESET.replace('name = "tiny"', 'name = "tiny"\npixel_scale = true'),
        "prior_kind.toml": TINY_PRESET.replace('kind = "loguniform", low = 0.5', 'kind = "gauss", low = 0.5'),
        "prior_lowhigh.toml": TINY_PRESET.replace("low = 0.5, high = 2.0", "low = 3.0, high = 2.0"),
        "bad.json": "{not json",
        "list.json": "[1, 2]",
    }
    for name, text in presets.items():
        (d / name).write_text(text)
    (d / "binary.toml").write_bytes(os.urandom(300) + b"\xff\xfe")
    (d / "preset_dir").mkdir()

    def table_prior(name, path, column="v"):
        (d / name).write_text(TINY_PRESET.replace(
            'n = { kind = "loguniform", low = 0.5, high = 2.0 }',
            f'n = {{ kind = "table", path = "{path}", column = "{column}" }}'))

    np.save(d / "n_nan.npy", np.array([1.0, np.nan, 2.0]))
    np.save(d / "n_big.npy", np.array([1.0, 50.0]))
    np.save(d / "n_obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "n_garbage.npy").write_bytes(os.urandom(200))
    (d / "n.csv").write_text("w\n1.0\n2.0\n")
    table_prior("tp_missing.toml", d / "nope.npy")
    table_prior("tp_nan.toml", d / "n_nan.npy")
    table_prior("tp_big.toml", d / "n_big.npy")
    table_prior("tp_obj.toml", d / "n_obj.npy")
    table_prior("tp_garbage.toml", d / "n_garbage.npy")
    table_prior("tp_column.toml", d / "n.csv")
    table_prior("tp_fits_garbage.toml", ns.garbage)
    rng = np.random.default_rng(0)
    bg = rng.normal(0, 1, (80, 80))
    ns.bg_good = d / "bg.fits"
    fits.writeto(ns.bg_good, bg)
    ns.bg_int_be = d / "bg_int_be.fits"
    fits.writeto(ns.bg_int_be, (bg * 100).astype(">i4"))
    fits.writeto(d / "bg_1d.fits", np.ones(100))
    fits.writeto(d / "bg_small.fits", np.ones((20, 20)))
    fits.writeto(d / "bg_nan.fits", np.full((80, 80), np.nan))
    ns.bg_trunc = _truncate(ns.bg_good, d / "bg_trunc.fits")
    fits.writeto(d / "lib_zero.fits", np.zeros((2, 11, 11)))
    fits.writeto(d / "lib_nan.fits", np.full((2, 11, 11), np.nan))
    fits.writeto(d / "lib_1d.fits", np.ones(11))
    ns.lib_int_be = d / "lib_int_be.fits"
    fits.writeto(ns.lib_int_be, np.round(np.stack([psf, psf]) / psf.max() * 30000).astype(">i4"))
    ns.other_run = d / "other_run"
    ns.other_run.mkdir()
    (ns.other_run / "config.json").write_text(json.dumps({"fingerprint": "0123456789abcdef"}))
    ns.garbage_run = d / "garbage_run"
    ns.garbage_run.mkdir()
    (ns.garbage_run / "config.json").write_bytes(b"\x00\x01garbage")
    # ---------------------------------------------------------------- train inputs
    from galnet.simulate import load_preset, simulate_dataset

    ns.data = d / "data"
    simulate_dataset(load_preset(ns.preset), ns.data, 24, (0.5, 0.25, 0.25), seed=1, shard_size=24,
                     progress=False)
    ns.nan_data = d / "nan_data"
    ns.nan_data.mkdir()
    import shutil

    import h5py

    for split in ("train", "val"):
        shutil.copy(ns.data / f"{split}.h5", ns.nan_data / f"{split}.h5")
    with h5py.File(ns.nan_data / "val.h5", "r+") as h:
        h["params"][2, 3] = np.nan
    ns.garbage_data = d / "garbage_data"
    ns.garbage_data.mkdir()
    (ns.garbage_data / "train.h5").write_bytes(os.urandom(4000))
    (ns.garbage_data / "val.h5").write_bytes(os.urandom(4000))
    ns.no_train = d / "no_train"
    ns.no_train.mkdir()
    shutil.copy(ns.data / "val.h5", ns.no_train / "val.h5")
    configs = {
        "cfg_empty.json": "", "cfg_garbage.json": "\x00\x01{{", "cfg_list.json": "[1, 2]",
        "cfg_unknown.json": json.dumps({"epochs": 1, "learning_rate": 0.1}),
        "cfg_type.json": json.dumps({"epochs": "ten"}), "cfg_bool.json": json.dumps({"lr": True}),
        "cfg_zero.json": json.dumps({"batch_size": 0}),
        "cfg_unknown.toml": "[train]\nepochs = 1\nbatchsize = 4\n",
        "cfg_type.toml": "[train]\nmodel_config = 3\n",
        "cfg_hidden.toml": "[train]\nmodel_config = { hidden = -3 }\n",
    }
    for name, text in configs.items():
        (d / name).write_text(text)
    # resume / export run directories
    ck_config = {"data": str(ns.data), "model": "galnet-psf-small", "epochs": 1, "batch_size": 4,
                 "model_config": {"image_size": 31, "psf_size": 11}, "progress": False}
    from galnet.models.scaling import OutputScalingConfig
    from galnet.train.config import TrainConfig

    full = TrainConfig.from_dict(ck_config).to_dict()
    from dataclasses import asdict

    ck = {"config": full, "output_scaling": asdict(OutputScalingConfig()), "param_groups": [],
          "token": "0:0:0", "epoch": 0, "step": 0}
    ns.marker = d / "UNPICKLED"
    _Boom.marker = str(ns.marker)
    for name, weights in {"run_garbage": os.urandom(3000), "run_pickle": pickle.dumps(_Boom()),
                          "run_empty": b""}.items():
        run = d / name
        (run).mkdir()
        (run / "checkpoint.json").write_text(json.dumps({**ck, "config": {**full, "out": str(run)}}))
        (run / "checkpoint.safetensors").write_bytes(weights)
        (run / "best.safetensors").write_bytes(weights)
        (run / "best.json").write_text(json.dumps({"epoch": 1, "val_loss": 1.0}))
    from galnet.models import create_model, save_model

    for name, content in (("init_pickle", pickle.dumps(_Boom())), ("init_garbage", os.urandom(3000))):
        card = save_model(create_model("galnet-psf-small", image_size=31, psf_size=11), d / name, "m")
        card.with_suffix(".safetensors").write_bytes(content)
        data = json.loads(card.read_text())
        data["weights"].pop("sha256", None)  # test the loader itself, not the checksum
        card.write_text(json.dumps(data))
    ns.run_badjson = d / "run_badjson"
    ns.run_badjson.mkdir()
    (ns.run_badjson / "checkpoint.json").write_text('{"config": {')
    ns.run_notck = d / "run_notck"
    ns.run_notck.mkdir()
    (ns.run_notck / "checkpoint.json").write_text(json.dumps({"hello": 1}))
    return ns


def _run(argv: list[str]) -> int:
    try:
        return int(main([str(a) for a in argv]))
    except SystemExit as exc:  # argparse
        return int(exc.code)


def _assert_error(capsys, argv: list, match: str) -> str:
    rc = _run(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert rc == 2, (rc, err)
    assert lines, "no error message"
    assert lines[-1].startswith(f"galnet {argv[0]}: error:"), lines[-1]
    assert match.lower() in lines[-1].lower(), (match, lines[-1])
    return lines[-1]


# ==================================================================== render
def _render(f, table=None, psf=None, out=None, *opts):
    return ["render", table or f.table, "--psf", psf or f.psf, "--out", out or f.d / "out.fits",
            "--shape", "31", "31", *opts]


RENDER_OPTION_ERRORS = [
    (("--batch-size", "-8"), "--batch-size"),
    (("--batch-size", "0"), "--batch-size"),
    (("--batch-size", "abc"), "--batch-size"),
    (("--shape", "0", "0"), "--shape"),
    (("--shape", "5000", "5000"), "--shape"),
    (("--shape", "2", "61"), "--shape"),
    (("--shape", "31.5", "31"), "--shape"),
    (("--noise", "-1"), "--noise"),
    (("--noise", "nan"), "--noise"),
    (("--gain", "0"), "--gain"),
    (("--gain", "-2"), "--gain"),
    (("--exptime", "0"), "--exptime"),
    (("--zeropoint", "inf"), "--zeropoint"),
    (("--sky", "nan"), "--sky"),
    (("--seed", "-1"), "--seed"),
]


@pytest.mark.parametrize("opts,match", RENDER_OPTION_ERRORS,
                         ids=[" ".join(o) for o, _ in RENDER_OPTION_ERRORS])
def test_render_bad_option(f, capsys, opts, match):
    _assert_error(capsys, _render(f, None, None, None, *opts), match)


RENDER_TABLE_ERRORS = [
    ("missing.ecsv", "missing.ecsv"),
    ("empty.ecsv", "empty.ecsv"),
    ("garbage.fits", "garbage.fits"),
    ("trunc_t.fits", "trunc_t.fits"),
    ("header.csv", "no rows"),
    ("no_q.ecsv", "missing column(s) q"),
    ("text_mag.csv", "text_mag.csv"),
    ("nan_x.ecsv", "row 1: x = nan is not finite"),
    ("inf_re.ecsv", "row 1: re_pix = inf"),
    ("huge_re.ecsv", "row 0: re_pix"),
    ("huge_mag.ecsv", "row 1: mag"),
    ("n0.ecsv", "row 0: n"),
    ("q2.ecsv", "row 1: q"),
    ("nonascii.ecsv", "row 1: id"),
]


@pytest.mark.parametrize("name,match", RENDER_TABLE_ERRORS, ids=[n for n, _ in RENDER_TABLE_ERRORS])
def test_render_bad_table(f, capsys, name, match):
    _assert_error(capsys, _render(f, f.d / name), match)


RENDER_PSF_ERRORS = [
    ("nope.fits", "no such PSF"),
    ("empty.fits", "empty.fits"),
    ("garbage.fits", "garbage.fits"),
    ("trunc_psf.fits", "trunc_psf.fits"),
    ("psf_even.fits", "odd size"),
    ("psf_1d.fits", "psf_1d.fits"),
    ("psf_nan.fits", "NaN"),
    ("psf_zero.fits", "sum"),
    ("psf_4d.fits", "psf_4d.fits"),
    ("psf_cube3.fits", "3 stamps for 2 rows"),
    ("psf_offcentre.fits", "psf_offcentre.fits"),
    ("psf_negative.fits", "negative"),
]


@pytest.mark.parametrize("name,match", RENDER_PSF_ERRORS, ids=[n for n, _ in RENDER_PSF_ERRORS])
def test_render_bad_psf(f, capsys, name, match):
    _assert_error(capsys, _render(f, None, f.d / name), match)


def test_render_bad_output_paths(f, capsys):
    _assert_error(capsys, _render(f, None, None, f.d), "is a directory")
    _assert_error(capsys, _render(f, None, None, f.afile / "o.fits"), "is a file, not a directory")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_render_unwritable_output(f, capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _assert_error(capsys, _render(f, None, None, locked / "o.fits"), "not writable")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("kind", ["int32", "big-endian"])
def test_render_int_and_big_endian_psf_work(f, capsys, kind):
    """An integer or big-endian PSF renders exactly as the same PSF in native floats."""
    psf = f.psf_int if kind == "int32" else f.psf_be
    ref_psf = f.d / f"ref_{kind}.fits"
    fits.writeto(ref_psf, np.asarray(fits.getdata(psf), dtype=np.float64), overwrite=True)
    a, b = f.d / f"a_{kind}.fits", f.d / f"b_{kind}.fits"
    assert _run(_render(f, None, psf, a)) == 0
    assert _run(_render(f, None, ref_psf, b)) == 0
    assert np.array_equal(fits.getdata(a), fits.getdata(b))
    assert fits.getdata(a).shape == (2, 31, 31) and np.isfinite(fits.getdata(a)).all()
    assert "Traceback" not in capsys.readouterr().err


def test_render_extra_columns_are_ignored_with_a_warning(f, caplog):
    t = _good_table()
    t["colour"] = [1.0, 2.0]
    path = f.d / "extra.ecsv"
    t.write(path, overwrite=True)
    assert _run(_render(f, path, None, f.d / "extra.fits")) == 0
    assert "ignoring column(s) colour" in caplog.text


# ==================================================================== simulate
def _sim(f, *opts, out=None, preset=None):
    return ["simulate", "--n", "4", "--preset", preset or f.preset, "--out", out or f.d / "sim_out",
            "--no-progress", "--threads", "1", *opts]


SIMULATE_OPTION_ERRORS = [
    (("--n", "0"), "--n"),
    (("--n", "-5"), "--n"),
    (("--n", "1e3"), "--n"),
    (("--shard-size", "0"), "--shard-size"),
    (("--shard-size", "-1"), "--shard-size"),
    (("--workers", "0"), "--workers"),
    (("--workers", "100000"), "--workers"),
    (("--threads", "0"), "--threads"),
    (("--seed", "-1"), "--seed"),
    (("--split", "0.5,0.6,0.1"), "sum to 1"),
    (("--split", "0.8,0.1"), "needs 3"),
    (("--split", "-0.1,0.6,0.5"), "--split"),
    (("--split", "a,b,c"), "not a number"),
    (("--split", "0.8,0.1,0.1,0"), "needs 3"),
    (("--split", "nan,0.5,0.5"), "--split"),
    (("--wrap-tolerance", "0"), "--wrap-tolerance"),
    (("--wrap-tolerance", "2"), "--wrap-tolerance"),
    (("--background-zeropoint", "nan"), "--background-zeropoint"),
    (("--compression", "zip"), "--compression"),
]


@pytest.mark.parametrize("opts,match", SIMULATE_OPTION_ERRORS,
                         ids=[" ".join(o) for o, _ in SIMULATE_OPTION_ERRORS])
def test_simulate_bad_option(f, capsys, opts, match):
    _assert_error(capsys, _sim(f, *opts), match)
    assert not (f.d / "sim_out" / "config.json").exists()


SIMULATE_PRESET_ERRORS = [
    ("missing.toml", "not found"),
    ("no-such-preset", "unknown preset"),
    ("empty.toml", "empty"),
    ("binary.toml", "binary.toml"),
    ("syntax.toml", "cannot parse"),
    ("unknown.toml", "unknown key(s) colour"),
    ("nested.toml", "noise: unknown key(s) sky_sigmaa"),
    ("wrongtype.toml", "stamp_size: expected int"),
    ("even.toml", "odd"),
    ("nan.toml", "gain"),
    ("boolnum.toml", "pixel_scale: expected float"),
    ("prior_kind.toml", "kind 'gauss' unknown"),
    ("prior_lowhigh.toml", "low <= high"),
    ("bad.json", "cannot parse"),
    ("list.json", "not a table"),
    ("preset_dir", "not a file"),
    ("tp_missing.toml", "nope.npy"),
    ("tp_nan.toml", "NaN"),
    ("tp_big.toml", "n = 50"),
    ("tp_obj.toml", "n_obj.npy"),
    ("tp_garbage.toml", "n_garbage.npy"),
    ("tp_column.toml", "column 'v'"),
    ("tp_fits_garbage.toml", "garbage.fits"),
]


@pytest.mark.parametrize("name,match", SIMULATE_PRESET_ERRORS, ids=[n for n, _ in SIMULATE_PRESET_ERRORS])
def test_simulate_bad_preset(f, capsys, name, match):
    preset = name if "." not in name and name != "preset_dir" else f.d / name
    _assert_error(capsys, _sim(f, preset=preset), match)


SIMULATE_FILE_ERRORS = [
    (("--background", "nope.fits"), "background"),
    (("--background", "garbage.fits"), "garbage.fits"),
    (("--background", "empty.fits"), "empty.fits"),
    (("--background", "bg_trunc.fits"), "bg_trunc.fits"),
    (("--background", "bg_1d.fits"), "not a 2-D image"),
    (("--background", "bg_small.fits"), "smaller than one"),
    (("--background", "bg_nan.fits"), "finite pixels"),
    (("--background", "bg.fits", "--background-variance-hdu", "5"), "bg.fits"),
    (("--psf-library", "nope.fits"), "file not found"),
    (("--psf-library", "garbage.fits"), "garbage.fits"),
    (("--psf-library", "lib_zero.fits"), "lib_zero.fits[0]"),
    (("--psf-library", "lib_nan.fits"), "NaN"),
    (("--psf-library", "lib_1d.fits"), "lib_1d.fits"),
]


@pytest.mark.parametrize("opts,match", SIMULATE_FILE_ERRORS,
                         ids=[" ".join(o) for o, _ in SIMULATE_FILE_ERRORS])
def test_simulate_bad_file(f, capsys, opts, match):
    opts = [str(f.d / o) if o.endswith(".fits") else o for o in opts]
    _assert_error(capsys, _sim(f, *opts), match)


def test_simulate_bad_output_paths(f, capsys):
    _assert_error(capsys, _sim(f, out=f.afile), "is a file, not a directory")
    _assert_error(capsys, _sim(f, out=f.afile / "sub"), "is a file, not a directory")
    _assert_error(capsys, _sim(f, out=f.other_run), "another config")
    _assert_error(capsys, _sim(f, out=f.garbage_run), "config.json: unreadable")


def test_simulate_int_big_endian_library_and_background_work(f, capsys):
    """Integer big-endian PSF library and background images are read as numbers (no error)."""
    out = f.d / "sim_int_be"
    rc = _run(_sim(f, "--psf-library", f.lib_int_be, "--background", f.bg_int_be, out=out))
    assert rc == 0, capsys.readouterr().err
    from galnet.data import read_arrays

    arrays = read_arrays(str(out / "train.h5"))
    assert len(arrays["images"]) == 3 and np.isfinite(arrays["images"]).all()
    assert np.allclose(arrays["psfs"].sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_simulate_ctrl_c_prints_one_resume_line(f, capsys, monkeypatch):
    from galnet.simulate import writer

    def interrupted(task):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_shard_task", interrupted)
    rc = _run(_sim(f, out=f.d / "sim_ctrl_c"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("galnet simulate: interrupted; rerun the same command to resume")


# ==================================================================== train
def _train(f, *opts, data=None, out=None):
    return ["train", "--data", data or f.data, "--model", "galnet-psf-small", "--epochs", "1",
            "--batch-size", "4", "--out", out or f.d / "train_out", "--no-progress", *opts]


SMALL = '{"image_size": 31, "psf_size": 11}'

TRAIN_OPTION_ERRORS = [
    (("--epochs", "0"), "--epochs"),
    (("--batch-size", "1"), "--batch-size"),
    (("--batch-size", "-4"), "--batch-size"),
    (("--lr", "0"), "--lr"),
    (("--lr", "nan"), "--lr"),
    (("--weight-decay", "-1"), "--weight-decay"),
    (("--huber-delta", "0"), "--huber-delta"),
    (("--warmup-steps", "-1"), "--warmup-steps"),
    (("--threads", "0"), "--threads"),
    (("--steps-per-epoch", "0"), "--steps-per-epoch"),
    (("--train-size", "-2"), "--train-size"),
    (("--seed", "-3"), "--seed"),
    (("--checkpoint-every-steps", "-1"), "--checkpoint-every-steps"),
    (("--loss", "l3"), "--loss"),
    (("--model-config", '{"hidden": -3}'), "model_config.hidden must be a positive integer"),
    (("--model-config", '{"widths": []}'), "model_config.widths"),
    (("--model-config", '{"hidden": "x"}'), "model_config.hidden: expected int"),
    (("--model-config", '{"dropout": 1.5}'), "model_config.dropout"),
    (("--model-config", '{"image_size": 30}'), "odd"),
    (("--model-config", '{"nope": 1}'), "unknown key(s) ['nope']"),
    (("--model-config", "[1, 2]"), "JSON object"),
    (("--model-config", "not json"), "not valid JSON"),
    (("--model", "resnet-9000"), "unknown model"),
    (("--device", "bogus"), "--device 'bogus'"),
    (("--device", "cuda:7", "--model-config", SMALL), "cuda:7"),
    ((), "the data has 31x31 stamps"),  # the model's default 61x61 stamps do not fit the data
    (("--nll-beta", "2"), "--nll-beta"),
    (("--init-sigma", "0"), "--init-sigma"),
    (("--init", "no-such-card", "--model-config", SMALL), "no model card"),
    (("--init", "INIT/init_pickle/m.json", "--model-config", SMALL), "not a valid safetensors weights"),
    (("--init", "INIT/init_garbage/m.json", "--model-config", SMALL), "not a valid safetensors weights"),
]


@pytest.mark.parametrize("opts,match", TRAIN_OPTION_ERRORS,
                         ids=[" ".join(o) or "size" for o, _ in TRAIN_OPTION_ERRORS])
def test_train_bad_option(f, capsys, opts, match):
    opts = [o.replace("INIT", str(f.d)) for o in opts]
    _assert_error(capsys, _train(f, *opts), match)
    assert not f.marker.exists()
    assert not (f.d / "train_out" / "checkpoint.json").exists()


TRAIN_CONFIG_ERRORS = [
    ("cfg_missing.json", "cfg_missing.json"),
    ("cfg_empty.json", "cfg_empty.json"),
    ("cfg_garbage.json", "cfg_garbage.json"),
    ("cfg_list.json", "cfg_list.json"),
    ("cfg_unknown.json", "learning_rate"),
    ("cfg_type.json", "epochs: expected int"),
    ("cfg_bool.json", "lr: expected float"),
    ("cfg_zero.json", "batch_size"),
    ("cfg_unknown.toml", "batchsize"),
    ("cfg_type.toml", "model_config: expected"),
    ("cfg_hidden.toml", "model_config.hidden"),
]


@pytest.mark.parametrize("name,match", TRAIN_CONFIG_ERRORS, ids=[n for n, _ in TRAIN_CONFIG_ERRORS])
def test_train_bad_config_file(f, capsys, name, match):
    argv = ["train", "--config", f.d / name, "--data", f.data, "--out", f.d / "train_cfg", "--no-progress"]
    line = _assert_error(capsys, argv, match)
    if name not in ("cfg_zero.json", "cfg_hidden.toml"):
        assert name in line  # the file is named


TRAIN_DATA_ERRORS = [
    ("nope", "not a directory"),
    ("garbage_data", "garbage_data"),
    ("nan_data", "non-finite"),
    ("no_train", "train.h5"),
]


@pytest.mark.parametrize("name,match", TRAIN_DATA_ERRORS, ids=[n for n, _ in TRAIN_DATA_ERRORS])
def test_train_bad_data(f, capsys, name, match):
    _assert_error(capsys, _train(f, "--model-config", SMALL, data=f.d / name), match)


@pytest.mark.parametrize("run", ["run_garbage", "run_pickle", "run_empty", "run_badjson", "run_notck",
                                 "run_missing"])
def test_train_resume_bad_checkpoint(f, capsys, run):
    """Garbage, empty or pickled checkpoints, or a broken checkpoint.json: one line, never unpickled."""
    match = {"run_badjson": "unreadable checkpoint", "run_notck": "not a galnet training checkpoint",
             "run_missing": "no checkpoint"}.get(run, "not a valid safetensors checkpoint")
    _assert_error(capsys, ["train", "--resume", f.d / run, "--no-progress"], match)
    assert not f.marker.exists()


@pytest.mark.parametrize("run", ["run_garbage", "run_pickle", "run_empty", "run_notck", "run_missing"])
def test_train_export_bad_run(f, capsys, run):
    match = {"run_notck": "not a galnet training checkpoint", "run_missing": "not a training run"}.get(
        run, "not a valid safetensors weights")
    _assert_error(capsys, ["train", "export", f.d / run, "--name", "x", "--to", f.d / "export"], match)
    assert not f.marker.exists()


@pytest.mark.parametrize("content", ["garbage", "pickle", "wrong-shape"])
def test_load_card_bad_weights(f, tmp_path, content):
    """A card whose safetensors file is garbage, a pickle or of another shape: ModelCardError."""
    from safetensors.torch import save_file

    from galnet.errors import ModelCardError
    from galnet.models import create_model, load_card, save_model

    card = save_model(create_model("galnet-psf-small"), tmp_path, "m")
    weights = card.with_suffix(".safetensors")
    if content == "garbage":
        weights.write_bytes(os.urandom(2000))
    elif content == "pickle":
        weights.write_bytes(pickle.dumps(_Boom()))
    else:
        import torch

        save_file({"head.3.weight": torch.zeros(2, 2)}, str(weights))
    data = json.loads(card.read_text())
    data["weights"].pop("sha256", None)  # the checksum would catch it first; test the loader itself
    card.write_text(json.dumps(data))
    with pytest.raises(ModelCardError, match="m.safetensors"):
        load_card(card)
    assert not f.marker.exists()


def test_train_bad_output_paths(f, capsys):
    _assert_error(capsys, _train(f, out=f.afile), "is a file, not a directory")
    _assert_error(capsys, _train(f, out=f.afile / "run"), "is a file, not a directory")
    _assert_error(capsys, _train(f, "--model-config", SMALL, out=f.d / "run_garbage"),
                  "already holds a training run")


def test_train_ctrl_c_prints_one_resume_line(f, capsys, monkeypatch):
    from galnet.train import loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "load_split", interrupted)
    rc = _run(_train(f, "--model-config", SMALL, out=f.d / "train_ctrl_c"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and len(err) == 1 and "Traceback" not in err[0]
    assert "galnet train --resume" in err[0] and str(f.d / "train_ctrl_c") in err[0]
