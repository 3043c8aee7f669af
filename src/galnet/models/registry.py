"""A small model registry: ``create_model(name, **cfg)``.

Registered architectures are functions returning a :class:`~galnet.models.networks.GalNet`; the
name and the config they were called with are stored in the model card, so a card rebuilds its
model with ``create_model(card["architecture"], **card["network"])``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

from ..errors import ConfigError
from .networks import GalNet, NetworkConfig
from .scaling import InputScalingConfig, OutputScalingConfig

__all__ = ["register_model", "create_model", "list_models"]

_REGISTRY: dict[str, tuple[Callable[..., GalNet], str]] = {}


def register_model(
    name: str, description: str = ""
) -> Callable[[Callable[..., GalNet]], Callable[..., GalNet]]:
    """Decorator registering a model constructor under ``name``."""

    def deco(fn: Callable[..., GalNet]) -> Callable[..., GalNet]:
        if name in _REGISTRY:
            raise ConfigError(f"model {name!r} is already registered")
        _REGISTRY[name] = (fn, description or (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return deco


def list_models() -> dict[str, str]:
    """Registered model names → one-line descriptions."""
    return {k: v[1] for k, v in _REGISTRY.items()}


def create_model(
    name: str,
    *,
    input_scaling: InputScalingConfig | dict | None = None,
    output_scaling: OutputScalingConfig | dict | None = None,
    **cfg,
) -> GalNet:
    """Build a registered model.

    Parameters
    ----------
    name : str
        ``"galnet-psf"`` (image + PSF), ``"galnet-image"`` (image only), ``"galnet-psf-small"``.
    input_scaling, output_scaling : config or dict, optional
        Scalings (defaults if omitted; training fits the output scaling on the training set).
    **cfg
        Overrides of :class:`~galnet.models.networks.NetworkConfig` fields.

    Raises
    ------
    ConfigError
        Unknown name or config key.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    known = {f.name for f in fields(NetworkConfig)}
    bad = sorted(set(cfg) - known)
    if bad:
        raise ConfigError(f"model {name!r}: unknown config key(s) {bad}; known: {sorted(known)}")
    if isinstance(input_scaling, dict):
        input_scaling = InputScalingConfig(**input_scaling)
    if isinstance(output_scaling, dict):
        output_scaling = OutputScalingConfig(**output_scaling)
    model = _REGISTRY[name][0](input_scaling=input_scaling, output_scaling=output_scaling, **cfg)
    model.architecture = name
    return model


@register_model("galnet-psf", "image + PSF two-branch CNN, stride-2 stages 16/32/64/96 (8.9 M-MAC)")
def galnet_psf(*, input_scaling=None, output_scaling=None, **cfg) -> GalNet:
    cfg.setdefault("use_psf", True)
    return GalNet(NetworkConfig(**cfg), input_scaling, output_scaling)


@register_model("galnet-image", "image-only ablation of galnet-psf (no PSF branch)")
def galnet_image(*, input_scaling=None, output_scaling=None, **cfg) -> GalNet:
    cfg["use_psf"] = False
    return GalNet(NetworkConfig(**cfg), input_scaling, output_scaling)


@register_model("galnet-psf-small", "galnet-psf with stages 8/16/32/48 and hidden 128 (tests, smoke runs)")
def galnet_psf_small(*, input_scaling=None, output_scaling=None, **cfg) -> GalNet:
    cfg.setdefault("widths", [8, 16, 32, 48])
    cfg.setdefault("psf_widths", [4, 8, 16])
    cfg.setdefault("hidden", 128)
    return GalNet(NetworkConfig(**cfg), input_scaling, output_scaling)
