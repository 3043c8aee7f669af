"""The shipped hsc-r model: loads by name, and reproduces its card's test metrics on a fixed slice.

The card's metrics were measured on the 20,000-galaxy test split of
``galnet simulate --n 200000 --split 0.8,0.1,0.1 --seed 1 --preset hsc-r``. Its first two test
shards (2,048 galaxies) are regenerated here from the same seeds (``SeedSequence(1, spawn_key=(2,
k))``, the writer's scheme), so the slice is part of the very test set the card describes.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from galnet.models import load_model
from galnet.simulate import generate_batch, load_preset
from galnet.train.metrics import regression_metrics


@pytest.fixture(scope="module")
def test_slice(one_torch_thread):
    config = load_preset("hsc-r")
    parts = [generate_batch(config, 1024, seed=np.random.default_rng(
        np.random.SeedSequence(1, spawn_key=(2, k)))) for k in range(2)]
    return {key: np.concatenate([p[key] for p in parts]) for key in ("images", "psfs", "sky_sigma", "params")}


def test_card_describes_its_training():
    from importlib.resources import files

    card = json.loads((files("galnet") / "weights" / "hsc-r.json").read_text())
    assert card["training"]["command"].startswith("galnet train ")
    assert card["training"]["preset"]["name"] == "hsc-r"
    assert card["training"]["seed"] == 1
    assert card["conventions_version"] == "1"
    assert card["n_params"] < 2_000_000  # a few MB of weights


def test_reproduces_card_metrics_on_fixed_slice(test_slice):
    """Each R² within 0.03 and each outlier fraction within 4 binomial sigma (+0.5 %) of the card:
    the slice (2,048) is a tenth of the card's test set, so only sampling noise may differ."""
    from importlib.resources import files

    card = json.loads((files("galnet") / "weights" / "hsc-r.json").read_text())
    expected = card["metrics"]["test"]["per_parameter"]
    pred = load_model("hsc-r").predict(test_slice["images"], test_slice["psfs"], test_slice["sky_sigma"])
    assert pred.shape == (2048, 7)
    assert np.all((pred[:, 5] > 0) & (pred[:, 5] <= 1))
    assert np.all((pred[:, 6] >= -90) & (pred[:, 6] < 90))
    got = regression_metrics(test_slice["params"], pred)
    for name in ("x", "y", "mag", "re", "n", "q", "pa"):
        want, have = expected[name], got[name]
        if want.get("r2") is not None:
            assert abs(have["r2"] - want["r2"]) < 0.03, (name, have["r2"], want["r2"])
        p = want["outlier_frac"]
        tol = 4 * math.sqrt(p * (1 - p) / have["n"]) + 0.005
        assert abs(have["outlier_frac"] - p) < tol, (name, have["outlier_frac"], p)
