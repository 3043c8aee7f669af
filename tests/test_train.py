"""Tests of galnet.train: metrics (hand-computed), training, exact resume, CLI train → export, DDP."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from galnet.cli import main as cli_main
from galnet.errors import ConfigError, InputDataError
from galnet.models import load_model
from galnet.train import TrainConfig, binned_metrics, nmad, outlier_mask, regression_metrics, train
from galnet.train.loop import load_split


# ----------------------------------------------------------------------------- synthetic data
def _make_split(path, n: int, seed: int) -> None:
    """Sérsic ⊗ Moffat stamps + Gaussian sky noise, in the galnet.data HDF5 schema."""
    from galnet.render import MoffatPSF, render_sersic

    rng = np.random.default_rng(seed)
    psf = MoffatPSF(fwhm=4.5, beta=3).draw(25, dtype=torch.float32)
    params = np.column_stack([
        31 + rng.uniform(-2, 2, n), 31 + rng.uniform(-2, 2, n), rng.uniform(18.5, 21.5, n),
        10 ** rng.uniform(0.2, 1.0, n), 10 ** rng.uniform(-0.3, 0.6, n), rng.uniform(0.2, 1.0, n),
        rng.uniform(-90, 90, n),
    ])
    img = render_sersic(torch.as_tensor(params, dtype=torch.float32), psf).numpy()
    sky = rng.uniform(1.0, 3.0, n).astype(np.float32)
    img = img + rng.normal(size=img.shape).astype(np.float32) * sky[:, None, None]
    meta = {"zeropoint": 27.0, "pixel_scale": 0.168, "gain": 1.0, "preset": "unit-test", "seed": seed}
    with h5py.File(path, "w") as fh:
        fh.attrs["meta"] = json.dumps(meta)
        fh["images"] = img.astype(np.float32)
        fh["psfs"] = np.broadcast_to(psf.numpy(), (n, 25, 25)).astype(np.float32)
        fh["sky_sigma"] = sky
        fh["params"] = params
        fh["snr"] = np.ones(n, dtype=np.float32)
        fh["ids"] = np.arange(n, dtype=np.int64)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    _make_split(d / "train.h5", 320, 1)
    _make_split(d / "val.h5", 96, 2)
    _make_split(d / "test.h5", 96, 3)
    return d


def _cfg(data_dir, out, **kw) -> TrainConfig:
    base = dict(out=str(out), data=str(data_dir), model="galnet-psf-small", epochs=2, batch_size=32,
                train_size=128, val_size=64, lr=3e-3, warmup_steps=2, progress=False, threads=1,
                early_stopping_patience=0, seed=5)  # 1 thread: robust on a busy 2-core box
    base.update(kw)
    return TrainConfig(**base)


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- metrics
def test_metrics_hand_computed():
    """Values worked out by hand for 4 galaxies (see comments)."""
    truth = np.array([
        [31.0, 31.0, 20.0, 4.0, 1.0, 0.5, 80.0],
        [31.0, 31.0, 21.0, 2.0, 2.0, 0.9, 0.0],
        [30.0, 32.0, 22.0, 8.0, 4.0, 0.4, -45.0],
        [31.0, 30.0, 19.0, 5.0, 0.5, 0.6, 10.0],
    ])
    pred = truth.copy()
    pred[:, 0] += [0.1, -0.2, 0.6, 0.0]     # Δx = 0.1, -0.2, 0.6, 0 → median 0.05; 1 outlier (> 0.5)
    pred[:, 2] += [0.0, 0.2, -0.1, 0.1]     # Δmag → median 0.05, |Δ-0.05| = .05,.15,.15,.05 → NMAD 1.4826·0.1
    pred[:, 3] *= [1.1, 1.0, 0.8, 1.0]      # Δre/re = .1, 0, -.2, 0 → median 0; outlier: -0.2 only
    pred[:, 6] = [-85.0, 50.0, -40.0, 40.0]  # ΔPA wrapped = 15 (80→-85 across ±90), 50, 5, 30
    m = regression_metrics(truth, pred)
    assert m["x"]["bias"] == pytest.approx(0.05)
    assert m["x"]["outlier_frac"] == pytest.approx(0.25)
    assert m["mag"]["bias"] == pytest.approx(0.05)
    assert m["mag"]["nmad"] == pytest.approx(1.4826 * 0.1)
    assert m["mag"]["outlier_frac"] == pytest.approx(0.25)  # |0.2| > 0.15
    # R² on mag: SS_res = 0.04+0.01+0.01 = 0.06, SS_tot = (0.5²+0.5²+1.5²+1.5²) = 5
    assert m["mag"]["r2"] == pytest.approx(1 - 0.06 / 5.0)
    assert m["re"]["bias"] == pytest.approx(0.0)
    assert m["re"]["outlier_frac"] == pytest.approx(0.25)
    # PA: only q_true < 0.8 → rows 0, 2, 3 with Δ = 15, 5, 30; |Δ| > 15 → row 3 only
    assert m["pa"]["n"] == 3
    assert m["pa"]["bias"] == pytest.approx(15.0)
    assert m["pa"]["outlier_frac"] == pytest.approx(1 / 3)
    assert math.isnan(m["pa"]["r2"])
    # any: row 2 (x, re), row 1 (mag 0.2), row 3 (PA 30) → 3 of 4
    assert m["all"]["outlier_frac"] == pytest.approx(0.75)
    masks = outlier_mask(truth, pred)
    assert masks["pa"].tolist() == [False, False, False, True]  # row 1 has q = 0.9: PA ignored


def test_nmad_and_bins():
    assert nmad([1.0, 2.0, 3.0, 4.0, 100.0]) == pytest.approx(1.4826 * 1.0)
    assert math.isnan(nmad([]))
    truth = np.tile([31.0, 31.0, 20.0, 4.0, 1.0, 0.5, 10.0], (6, 1))
    truth[:, 2] = [18, 19, 20, 21, 22, 23]
    pred = truth.copy()
    pred[:, 2] += 0.1
    bins = binned_metrics(truth, pred, truth[:, 2], [18, 20, 23])
    assert [b["n"] for b in bins] == [2, 4]  # last bin includes its right edge
    assert bins[0]["metrics"]["mag"]["bias"] == pytest.approx(0.1)
    with pytest.raises(InputDataError):
        regression_metrics(truth[:, :6], pred[:, :6])


# ----------------------------------------------------------------------------- training
def test_tiny_training_reduces_loss(data_dir, tmp_path):
    out = tmp_path / "run"
    summary = train(_cfg(data_dir, out, epochs=4, train_size=320, val_size=96))
    assert summary["finished"] and summary["epochs_done"] == 4
    rows = _read_csv(out / "metrics.csv")
    assert len(rows) == 4
    val = [float(r["val_loss"]) for r in rows]
    tr = [float(r["train_loss"]) for r in rows]
    assert tr[-1] < 0.8 * tr[0], tr
    assert min(val) < val[0], val
    for f in ("config.json", "checkpoint.safetensors", "checkpoint.json", "best.safetensors", "best.json"):
        assert (out / f).is_file(), f
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == "galnet-psf-small" and saved["seed"] == 5


def test_resume_reproduces_uninterrupted_run(data_dir, tmp_path):
    """Kill mid-epoch (after step 6 of 8), resume: bit-identical weights, optimizer and val losses."""
    from safetensors.torch import load_file

    full = tmp_path / "full"
    train(_cfg(data_dir, full))
    part = tmp_path / "part"
    s = train(_cfg(data_dir, part), stop_after_steps=6)
    assert s["interrupted"] and s["steps"] == 6
    with pytest.raises(ConfigError, match="--resume"):
        train(_cfg(data_dir, part))
    s = train(_cfg(data_dir, part, epochs=99, lr=1.0), resume=True)  # the saved config wins
    assert s["finished"] and s["steps"] == 8
    a = load_file(str(full / "checkpoint.safetensors"))
    b = load_file(str(part / "checkpoint.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra, rb = _read_csv(full / "metrics.csv"), _read_csv(part / "metrics.csv")
    assert [r["val_loss"] for r in ra] == [r["val_loss"] for r in rb]
    assert [r["train_loss"] for r in ra] == [r["train_loss"] for r in rb]


def test_cli_train_export_predict(data_dir, tmp_path, monkeypatch):
    run = tmp_path / "runs" / "unit"
    weights = tmp_path / "weights"
    rc = cli_main(["train", "--data", str(data_dir), "--model", "galnet-psf-small", "--epochs", "1",
                   "--batch-size", "32", "--train-size", "96", "--val-size", "32", "--out", str(run),
                   "--no-progress", "--threads", "1", "--schedule", "plateau"])
    assert rc == 0
    rc = cli_main(["train", "export", str(run), "--name", "unit-r", "--to", str(weights)])
    assert rc == 0
    card = json.loads((weights / "unit-r.json").read_text())
    assert card["architecture"] == "galnet-psf-small"
    assert card["training"]["preset"] == "unit-test" and card["training"]["seed"] == 1
    assert card["training"]["command"].startswith("galnet")
    assert card["metrics"]["test"]["n"] == 96
    assert card["n_params"] > 0 and card["macs_per_galaxy"] > 0
    pred = load_model(weights / "unit-r.json")
    test = load_split(data_dir / "test.h5")
    out = pred.predict(test["image"], test["psf"], test["sky_sigma"])
    assert out.shape == (96, 7) and np.isfinite(out).all()
    assert ((out[:, 5] > 0) & (out[:, 5] <= 1)).all()
    assert ((out[:, 6] >= -90) & (out[:, 6] < 90)).all()
    # a config error is reported by the CLI as a one-line galnet error (exit 2), not a traceback
    assert cli_main(["train", "--out", str(tmp_path / "x"), "--no-progress"]) == 2


def test_bad_training_inputs(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="--data"):
        train(TrainConfig(out=str(tmp_path / "a")))
    with pytest.raises(ConfigError, match="loss"):
        train(_cfg(data_dir, tmp_path / "b", loss="hinge"))
    with pytest.raises(InputDataError, match="no such|not found"):
        train(_cfg(tmp_path, tmp_path / "c"))
    bad = tmp_path / "bad"
    bad.mkdir()
    with h5py.File(bad / "val.h5", "w") as fh:
        fh["images"] = np.zeros((4, 61, 61), np.float32)
    with pytest.raises(InputDataError, match="params|psfs|missing|no dataset"):
        load_split(bad / "val.h5")


def test_ddp_gloo_two_processes(data_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo), the unchanged command; only rank 0 writes (~15 s)."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
           "-m", "galnet.cli", "train", "--data", str(data_dir), "--model", "galnet-psf-small",
           "--epochs", "1", "--batch-size", "32", "--train-size", "128", "--val-size", "32",
           "--out", str(out), "--no-progress", "--threads", "1"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    state = json.loads((out / "checkpoint.json").read_text())
    assert state["finished"] and state["step"] == 4  # 128 samples / global batch 32 (16 per rank)
    assert (out / "best.safetensors").is_file() and not list(out.glob("*.tmp"))
