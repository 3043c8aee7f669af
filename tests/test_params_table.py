"""The parameter table drives the network targets, the loss weights and named column access."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from galnet.errors import ConfigError
from galnet.models import N_OUTPUTS, TARGET_NAMES, OutputScaling, OutputScalingConfig
from galnet.models.scaling import N_STANDARDISED, target_columns
from galnet.params import (
    IX_MAG,
    IX_N,
    IX_PA,
    IX_Q,
    IX_RE,
    IX_X,
    IX_Y,
    NET_TRANSFORMS,
    PARAMETER_NAMES,
    PARAMETERS,
    ParameterSpec,
    column,
    index,
    loss_weights,
    parameter_spec,
)
from galnet.train import TrainConfig


def test_named_columns_follow_the_table():
    assert [IX_X, IX_Y, IX_MAG, IX_RE, IX_N, IX_Q, IX_PA] == [index(n) for n in PARAMETER_NAMES]
    p = np.arange(14.0).reshape(2, 7)
    assert np.array_equal(column(p, "re"), p[:, index("re")])
    assert parameter_spec("re").arcsec_column == "re_arcsec"
    with pytest.raises(KeyError, match="unknown parameter"):
        index("radius")


def test_targets_are_generated_from_the_transforms():
    assert TARGET_NAMES == ("dx", "dy", "mag_rel", "log10_re", "log10_n", "q", "cos2pa", "sin2pa")
    assert N_OUTPUTS == 8 and N_STANDARDISED == 6
    assert target_columns("pa") == (6, 7) and target_columns("mag") == (2,)
    assert {s.net_transform for s in PARAMETERS} <= set(NET_TRANSFORMS)
    # defaults of the standardisation come from the table
    cfg = OutputScalingConfig()
    assert cfg.mean == [0.0, 0.0, 0.0, 0.5, 0.2, 0.6] and cfg.std == [1.0, 1.0, 1.0, 0.3, 0.3, 0.25]


def test_table_rejects_inconsistent_specs():
    with pytest.raises(ValueError, match="unknown net_transform"):
        ParameterSpec("z", "z", "", (0.0, 1.0), None, "sqrt", None, "")
    with pytest.raises(ValueError, match="cyclic"):
        ParameterSpec("z", "z", "deg", (0.0, 1.0), None, "axial", None, "")
    with pytest.raises(ValueError, match="net_clamp"):
        ParameterSpec("z", "z", "", (0.0, 1.0), None, "offset", None, "", net_clamp=True)


def test_decode_clamps_only_the_table_clamped_parameters():
    scaling = OutputScaling()
    out = torch.full((1, 8), 50.0)
    p = scaling.decode(out, torch.ones(1))[0]
    assert p[IX_N] == pytest.approx(10.0, rel=1e-5) and p[IX_Q] == 1.0
    assert p[IX_RE] > 1e4  # re is not clamped


def test_loss_weights_by_parameter_name():
    assert TrainConfig(data="d").validate().output_weights() == [1.0] * 8
    w = TrainConfig(data="d", loss_weights={"pa": 0.5, "re": 2.0}).validate().output_weights()
    assert w == [1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 0.5, 0.5]
    legacy = [1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 0.5, 0.5]  # the older per-output list is still accepted
    assert TrainConfig.from_dict({"data": "d", "loss_weights": legacy}).validate().output_weights() == legacy
    assert loss_weights({"q": 3}) == {**{n: 1.0 for n in PARAMETER_NAMES}, "q": 3.0}
    with pytest.raises(ConfigError, match="unknown parameter"):
        TrainConfig.from_dict({"data": "d", "loss_weights": {"radius": 1.0}}).validate()
    with pytest.raises(ConfigError, match="needs 8 values"):
        TrainConfig.from_dict({"data": "d", "loss_weights": [1.0] * 7}).validate()
    with pytest.raises(ConfigError, match="positive sum"):
        TrainConfig.from_dict({"data": "d", "loss_weights": {n: 0.0 for n in PARAMETER_NAMES}}).validate()


def test_decoded_clamped_values_are_valid_for_the_renderer():
    """Clamped network outputs (n, q at their float32-rounded bounds) are valid for the renderer."""
    import torch

    from galnet.models import OutputScaling
    from galnet.params import IX_N, IX_Q, PARAMETERS, validate_parameters

    s = OutputScaling()
    out = torch.full((3, 8), -50.0)
    out[1] = 50.0
    p = s.decode(out, torch.full((3,), 0.05)).double().numpy()
    assert p[0, IX_N] == pytest.approx(PARAMETERS[IX_N].valid[0], rel=1e-6)
    assert p[0, IX_Q] == pytest.approx(PARAMETERS[IX_Q].valid[0], rel=1e-6)
    sane = np.tile([31.0, 31.0, 20.0, 3.0, 1.0, 0.5, 0.0], (3, 1))
    sane[:, [IX_N, IX_Q]] = p[:, [IX_N, IX_Q]]
    validate_parameters(sane)  # does not raise
    with pytest.raises(Exception, match="outside the valid range"):
        validate_parameters(sane * [1, 1, 1, 1, 0.999, 1, 1])  # a real excursion is still refused
