"""Tests of galnet.models: registry, scalings, conventions of the outputs, model cards, Predictor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from galnet.errors import ConfigError, GalnetError, InputDataError, ModelCardError
from galnet.models import (
    OutputScaling,
    OutputScalingConfig,
    create_model,
    fit_output_scaling,
    list_models,
    load_card,
    load_model,
    save_model,
)
from galnet.models.networks import count_macs, count_parameters


def _random_params(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([
        31 + rng.uniform(-3, 3, n), 31 + rng.uniform(-3, 3, n), rng.uniform(18, 24, n),
        10 ** rng.uniform(0, 1.2, n), 10 ** rng.uniform(-0.5, 0.8, n), rng.uniform(0.1, 1.0, n),
        rng.uniform(-90, 90, n),
    ])


def _inputs(b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 61, 61, generator=g) * 2.0
    psf = torch.rand(b, 25, 25, generator=g)
    psf = psf / psf.sum(dim=(-2, -1), keepdim=True)
    return images, psf, torch.full((b,), 2.0)


def _small_model(seed: int = 0):
    torch.manual_seed(seed)
    scaling = fit_output_scaling(_random_params(256), np.full(256, 2.0))
    return create_model("galnet-psf-small", output_scaling=scaling)


def test_registry_and_costs():
    assert {"galnet-psf", "galnet-image", "galnet-psf-small"} <= set(list_models())
    full = create_model("galnet-psf")
    image_only = create_model("galnet-image")
    assert full.psf_branch is not None and image_only.psf_branch is None
    # the budget: ~9 M-MAC per galaxy (>= 3,000 gal/s on 2 CPU cores), < 1 M parameters
    assert 5e6 < count_macs(full) < 15e6
    assert count_parameters(full) < 1_000_000
    assert count_macs(image_only) < count_macs(full)
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("resnet-9000")
    with pytest.raises(ConfigError, match="unknown config"):
        create_model("galnet-psf", widht=3)


def test_forward_shapes_and_image_only():
    images, psf, sky = _inputs(5)
    for name in ("galnet-psf", "galnet-image"):
        model = create_model(name).eval()
        with torch.no_grad():
            assert model(images, psf, sky).shape == (5, 8)
            assert model.predict_params(images, psf, sky).shape == (5, 7)


def test_encode_decode_round_trip():
    """encode → decode returns the parameters (float32 arithmetic: 1e-4 relative)."""
    params = _random_params(500, seed=3)
    sky = np.random.default_rng(1).uniform(0.5, 5, 500)
    scaling = OutputScaling(fit_output_scaling(params, sky))
    p = torch.as_tensor(params, dtype=torch.float32)
    s = torch.as_tensor(sky, dtype=torch.float32)
    back = scaling.decode(scaling.encode(p, s), s).double().numpy()
    dpa = (back[:, 6] - params[:, 6] + 90) % 180 - 90
    assert np.allclose(back[:, :6], params[:, :6], rtol=1e-4, atol=1e-4)
    assert np.abs(dpa).max() < 1e-2
    # standardised targets are ~N(0, 1) on the fitting set
    enc = scaling.encode(p, s).numpy()
    assert np.allclose(enc[:, :6].mean(axis=0), 0, atol=1e-4)
    assert np.allclose(enc[:, :6].std(axis=0), 1, atol=1e-3)


def test_decode_is_in_catalog_conventions():
    """Whatever the network outputs, decoded q is in (0, 1] and PA in [-90, 90)."""
    scaling = OutputScaling(OutputScalingConfig())
    out = torch.randn(10_000, 8, generator=torch.Generator().manual_seed(0)) * 10
    p = scaling.decode(out, torch.ones(10_000)).numpy()
    assert (p[:, 5] > 0).all() and (p[:, 5] <= 1).all()
    assert (p[:, 6] >= -90).all() and (p[:, 6] < 90).all()
    assert (p[:, 4] >= 0.2 * (1 - 1e-6)).all() and (p[:, 4] <= 10 * (1 + 1e-6)).all()  # float32 10**log10
    # PA decode: cos 2θ = 0, sin 2θ = 1 → θ = 45°; cos = -1, sin = 0 → ±90 → wrapped to -90
    o = torch.zeros(2, 8)
    o[0, 6], o[0, 7] = 0.0, 1.0
    o[1, 6], o[1, 7] = -1.0, 0.0
    pa = scaling.decode(o, torch.ones(2))[:, 6]
    assert pa[0].item() == pytest.approx(45.0, abs=1e-4)
    assert pa[1].item() == pytest.approx(-90.0, abs=1e-4)


def test_mag_scales_with_sky_sigma():
    """Doubling image and sky σ leaves the noise-unit input unchanged and shifts mag by -2.5 log10 2."""
    model = _small_model().eval()
    images, psf, sky = _inputs(4)
    with torch.no_grad():
        a = model.predict_params(images, psf, sky)
        b = model.predict_params(2 * images, psf, 2 * sky)
    assert torch.allclose(b[:, 2], a[:, 2] - 2.5 * np.log10(2), atol=1e-4)
    assert torch.allclose(b[:, 3:], a[:, 3:], atol=1e-4)


def test_card_round_trip(tmp_path):
    """A model is rebuilt from <name>.safetensors + <name>.json alone and predicts identically."""
    model = _small_model().eval()
    extra = {"training": {"seed": 1}, "metrics": {"x": float("nan")}}
    card_path = save_model(model, tmp_path, "unit", extra=extra)
    card = json.loads(card_path.read_text())
    for key in ("architecture", "network", "input_scaling", "output_scaling", "conventions_version",
                "galnet_version", "n_params", "macs_per_galaxy", "weights", "training"):
        assert key in card, key
    assert card["metrics"]["x"] is None  # NaN is not JSON
    loaded, card2 = load_card(tmp_path / "unit.json")
    images, psf, sky = _inputs(6)
    with torch.no_grad():
        assert torch.equal(model.predict_params(images, psf, sky), loaded.predict_params(images, psf, sky))
    # also by stem and by .safetensors path
    load_card(tmp_path / "unit")
    load_card(tmp_path / "unit.safetensors")
    # no pickle anywhere: the weights are a safetensors file
    assert (tmp_path / "unit.safetensors").read_bytes()[8:9] == b"{"


def test_card_errors(tmp_path):
    with pytest.raises(ModelCardError, match="no model card"):
        load_card(tmp_path / "nothing")
    model = _small_model()
    save_model(model, tmp_path, "m")
    w = tmp_path / "m.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ModelCardError, match="SHA-256"):
        load_card(tmp_path / "m.json")
    save_model(model, tmp_path, "m2")
    card = json.loads((tmp_path / "m2.json").read_text())
    card["conventions_version"] = "0"
    (tmp_path / "m2.json").write_text(json.dumps(card))
    with pytest.raises(ModelCardError, match="conventions"):
        load_card(tmp_path / "m2.json")


def test_predictor(tmp_path):
    model = _small_model()
    save_model(model, tmp_path, "p")
    pred = load_model(tmp_path / "p.json")
    images, psf, sky = _inputs(7)
    out = pred.predict(images.numpy(), psf[0].numpy(), 2.0, batch_size=3)
    assert out.shape == (7, 7) and out.dtype == np.float64
    assert ((out[:, 5] > 0) & (out[:, 5] <= 1)).all()
    assert ((out[:, 6] >= -90) & (out[:, 6] < 90)).all()
    ref = pred.predict(images, psf[0].expand(7, 25, 25), torch.full((7,), 2.0))
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    # channels_last is only a memory layout
    plain = load_model(tmp_path / "p.json", channels_last=False).predict(images, psf[0], 2.0)
    np.testing.assert_allclose(out, plain, rtol=1e-5, atol=1e-5)


def test_predictor_bad_inputs(tmp_path):
    model = _small_model()
    save_model(model, tmp_path, "p")
    pred = load_model(tmp_path / "p.json")
    images, psf, sky = _inputs(3)
    with pytest.raises(InputDataError, match=r"\(B, 61, 61\)"):
        pred.predict(np.zeros((3, 64, 64)), psf, sky)
    with pytest.raises(InputDataError, match="psfs"):
        pred.predict(images, np.zeros((3, 24, 24)), sky)
    bad = images.clone()
    bad[1, 5, 5] = float("nan")
    with pytest.raises(InputDataError, match="NaN"):
        pred.predict(bad, psf, sky)
    with pytest.raises(InputDataError, match="sky_sigma"):
        pred.predict(images, psf, np.array([1.0, 0.0, 1.0]))
    with pytest.raises(GalnetError):
        pred.predict(images, psf, np.ones(5))
    with pytest.raises(ModelCardError):
        load_model(tmp_path / "p.json", backend="tensorrt")


def test_onnx_backend_matches_eager(tmp_path):
    """ONNX Runtime vs torch eager on the decoded outputs: float32 kernels differ at ~1e-6 relative."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = _small_model()
    save_model(model, tmp_path, "o")
    images, psf, sky = _inputs(9)
    eager = load_model(tmp_path / "o.json", channels_last=False).predict(images, psf, sky)
    onnx = load_model(tmp_path / "o.json", backend="onnx").predict(images, psf, sky, batch_size=4)
    np.testing.assert_allclose(onnx[:, :6], eager[:, :6], rtol=1e-5, atol=1e-5)
    dpa = (onnx[:, 6] - eager[:, 6] + 90) % 180 - 90
    assert np.abs(dpa).max() < 1e-3
