"""The NO_SOURCE test: the central-S/N pre-screen changes no decision of the full matched-filter test."""

from __future__ import annotations

import numpy as np

from galnet.detection import DETECTION_SNR, PRESCREEN_SNR, central_snr, detection_snr, no_source
from galnet.simulate import generate_batch, load_preset


def _stamps():
    cfg = load_preset("hsc-r")
    bright = generate_batch(cfg, 300, seed=11)
    faint_cfg = load_preset("hsc-r", {"priors": {"mag": {"kind": "uniform", "low": 23.5, "high": 24.0}}})
    faint = generate_batch(faint_cfg, 200, seed=12)
    rng = np.random.default_rng(13)
    noise = rng.normal(0, 0.06, (200, 61, 61)).astype(np.float32)
    images = np.concatenate([bright["images"], faint["images"], noise])
    sky = np.concatenate([bright["sky_sigma"], faint["sky_sigma"], np.full(200, 0.06, np.float32)])
    return images, sky


def test_prescreen_keeps_every_decision():
    images, sky = _stamps()
    full = detection_snr(images, sky)
    blank, snr = no_source(images, sky)
    np.testing.assert_array_equal(blank, full < DETECTION_SNR)
    skipped = central_snr(images, sky) >= PRESCREEN_SNR
    assert 0.3 < skipped.mean() < 0.9  # the bright ones skip the full test, the faint and blank do not
    np.testing.assert_allclose(snr[~skipped], full[~skipped], rtol=1e-5)  # float32 products of a subset
    assert blank[-200:].mean() > 0.8 and not blank[300:500].any()


def test_central_snr_paths_agree():
    images, sky = _stamps()
    fast = central_snr(images[:50], sky[:50])
    general = central_snr(images[:50], sky[:50], mask=np.zeros((50, 61, 61), bool))
    np.testing.assert_allclose(fast, general, rtol=1e-4, atol=1e-6)
