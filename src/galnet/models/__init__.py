"""Networks: the PSF-aware Sérsic CNN, its scalings, the registry and self-describing model cards.

Public API
----------
create_model(name, **cfg) -> GalNet          registry ("galnet-psf", "galnet-image", "galnet-psf-small")
load_model(name_or_path, device=, backend=)  -> Predictor with .predict(images, psfs, sky_sigma) -> (B, 7)
save_model(model, directory, name, extra=)   -> <name>.safetensors + <name>.json
load_card(name_or_path) -> (GalNet, card dict)
count_parameters(model), count_macs(model)
"""

from .card import Predictor, export_onnx, load_card, load_model, resolve_model_path, save_model
from .networks import GalNet, NetworkConfig, count_macs, count_parameters
from .registry import create_model, list_models, register_model
from .scaling import (
    N_OUTPUTS,
    TARGET_NAMES,
    InputScaling,
    InputScalingConfig,
    OutputScaling,
    OutputScalingConfig,
    fit_output_scaling,
)

__all__ = [
    "GalNet",
    "NetworkConfig",
    "InputScaling",
    "InputScalingConfig",
    "OutputScaling",
    "OutputScalingConfig",
    "fit_output_scaling",
    "TARGET_NAMES",
    "N_OUTPUTS",
    "create_model",
    "list_models",
    "register_model",
    "count_macs",
    "count_parameters",
    "save_model",
    "load_card",
    "load_model",
    "resolve_model_path",
    "export_onnx",
    "Predictor",
]
