"""Input and output scalings of the networks, generated from the parameter table.

Both scalings are part of a model: they are torch modules inside it (so ONNX exports and
``torch.compile`` see them), and their numbers are written into the model card JSON.

Inputs
------
* image: ``asinh(image / (sky_sigma * image_softening))`` -- counts → noise units, then a log-like
  stretch that keeps the noise linear and compresses bright cores.
* PSF: ``psf / max(psf)`` (peak 1), optionally ``log10(max(psf/max, 1e-4)) / 4 + 1`` for ``"log"``.
* a scalar flux feature ``asinh(sum(image) / sky_sigma / 100)``, which gives the head the total
  counts directly (the image stretch hides them).

Outputs (8 network outputs from 7 parameters, see :data:`galnet.params.PARAMETERS`)
------------------------------------------------------------------------------------
========  ==================================================  =================================
param     network target (before standardisation)             decode
========  ==================================================  =================================
x, y      offset from the stamp centre, pixels                 ``+ centre`` (31 for 61 px)
mag       ``mag + 2.5 log10(sky_sigma)`` (noise-unit mag)       ``- 2.5 log10(sky_sigma)``
re        ``log10 re``                                          ``10**``
n         ``log10 n``                                           ``10**``, clamped to valid range
q         ``q``                                                 clamped to ``[q_min, 1]``
pa        ``cos 2pa, sin 2pa`` (not standardised)               ``atan2 / 2``, wrapped [-90, 90)
========  ==================================================  =================================

All but the two axial components are standardised with the training set's mean and standard
deviation (:meth:`OutputScaling.fit`). The mag target is relative to the sky noise because the
image input is in noise units; the decode adds the absolute scale back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..conventions import DEFAULT_ZEROPOINT, stamp_center
from ..errors import ModelCardError
from ..params import N_PARAMS, PARAMETER_NAMES, PARAMETERS

__all__ = [
    "TARGET_NAMES",
    "N_OUTPUTS",
    "InputScalingConfig",
    "OutputScalingConfig",
    "InputScaling",
    "OutputScaling",
    "fit_output_scaling",
]

#: Names of the 8 network outputs, in order.
TARGET_NAMES: tuple[str, ...] = ("dx", "dy", "mag_rel", "log10_re", "log10_n", "q", "cos2pa", "sin2pa")
N_OUTPUTS = len(TARGET_NAMES)
_STANDARDISED = 6  # the first 6 targets are standardised; cos2pa, sin2pa are not


@dataclass
class InputScalingConfig:
    """How raw counts and PSF images are turned into network inputs.

    Attributes
    ----------
    image_softening : float
        The image stretch is ``asinh(image / (sky_sigma * image_softening))``: linear below
        ``image_softening`` sky sigmas, logarithmic above.
    psf_mode : str
        ``"peak"`` (PSF / max) or ``"log"`` (``log10(max(psf/max, 1e-4)) / 4 + 1``, in [0, 1]).
    flux_feature_scale : float
        The scalar feature is ``asinh(sum(image) / sky_sigma / flux_feature_scale)``.
    """

    image_softening: float = 1.0
    psf_mode: str = "peak"
    flux_feature_scale: float = 100.0


@dataclass
class OutputScalingConfig:
    """Standardisation of the first 6 targets and the decode limits.

    Attributes
    ----------
    mean, std : list of 6 float
        Mean and standard deviation of ``dx, dy, mag_rel, log10_re, log10_n, q`` over a training set.
    stamp_size : int
        Image stamp size in pixels (the offsets are from its centre, :func:`stamp_center`).
    zeropoint : float
        Zero point of the training magnitudes (informational; the scaling is zero-point free).
    error_scale : list of 7 float
        Calibration factor of each parameter's predicted error (``x, y, mag, re, n, q, pa``), measured on
        a validation set after training (:func:`galnet.train.calibrate_errors`) so that 68.3 % of the
        errors |estimate - truth| are below ``error_scale * raw error``. Ones until calibrated; unused by
        networks without an uncertainty head.
    """

    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.5, 0.2, 0.6])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 0.3, 0.3, 0.25])
    stamp_size: int = 61
    zeropoint: float = DEFAULT_ZEROPOINT
    error_scale: list[float] = field(default_factory=lambda: [1.0] * N_PARAMS)

    def __post_init__(self) -> None:
        if len(self.mean) != _STANDARDISED or len(self.std) != _STANDARDISED:
            raise ModelCardError(
                f"output scaling needs {_STANDARDISED} means and stds, "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if not all(math.isfinite(s) and s > 0 for s in self.std) or not all(map(math.isfinite, self.mean)):
            raise ModelCardError(f"output scaling has non-finite or non-positive entries: {asdict(self)}")
        if len(self.error_scale) != N_PARAMS or not all(math.isfinite(s) and s > 0 for s in self.error_scale):
            raise ModelCardError(
                f"output scaling error_scale needs {N_PARAMS} positive numbers, got {self.error_scale}"
            )


def _asinh(x: torch.Tensor) -> torch.Tensor:
    """``asinh`` from log1p/sqrt (exact to float32 rounding; exportable by every ONNX exporter)."""
    a = x.abs()
    return torch.sign(x) * torch.log1p(a + a * a / (1.0 + torch.sqrt(1.0 + a * a)))


class InputScaling(nn.Module):
    """Raw counts → network inputs (see the module docstring)."""

    def __init__(self, config: InputScalingConfig | None = None) -> None:
        super().__init__()
        self.config = config or InputScalingConfig()
        if self.config.psf_mode not in ("peak", "log"):
            raise ModelCardError(f"psf_mode must be 'peak' or 'log', got {self.config.psf_mode!r}")

    def forward(
        self, image: torch.Tensor, psf: torch.Tensor, sky_sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scale a batch.

        Parameters
        ----------
        image : Tensor, shape (B, H, W), counts (sky-subtracted)
        psf : Tensor, shape (B, P, P), unit-sum effective PSF
        sky_sigma : Tensor, shape (B,), counts / pixel

        Returns
        -------
        image : Tensor (B, 1, H, W); psf : Tensor (B, 1, P, P); flux : Tensor (B, 1)
        """
        snr = image / sky_sigma[:, None, None]
        img = _asinh(snr / self.config.image_softening)
        peak = psf.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        p = psf / peak
        if self.config.psf_mode == "log":
            p = torch.log10(p.clamp_min(1e-4)) / 4.0 + 1.0
        flux = _asinh(snr.sum(dim=(-2, -1)) / self.config.flux_feature_scale)
        return img[:, None], p[:, None], flux[:, None]


class OutputScaling(nn.Module):
    """Catalog parameters (B, 7) ↔ standardised network targets (B, 8)."""

    def __init__(self, config: OutputScalingConfig | None = None) -> None:
        super().__init__()
        self.config = config or OutputScalingConfig()
        self.register_buffer("mean", torch.tensor(self.config.mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(self.config.std, dtype=torch.float32), persistent=False)
        self.register_buffer(
            "error_scale", torch.tensor(self.config.error_scale, dtype=torch.float32), persistent=False
        )
        self.center = stamp_center(self.config.stamp_size)
        self.log_n_range = tuple(math.log10(v) for v in PARAMETERS[4].valid)
        self.q_min = PARAMETERS[5].valid[0]

    def raw_targets(self, params: torch.Tensor, sky_sigma: torch.Tensor) -> torch.Tensor:
        """Unstandardised targets (B, 8) from catalog parameters (B, 7) and sky sigma (B,) counts."""
        x, y, mag, re, n, q, pa = params.unbind(-1)
        two = pa * (math.pi / 90.0)  # 2 pa in radians
        return torch.stack(
            [
                x - self.center,
                y - self.center,
                mag + 2.5 * torch.log10(sky_sigma),
                torch.log10(re),
                torch.log10(n),
                q,
                torch.cos(two),
                torch.sin(two),
            ],
            dim=-1,
        )

    def encode(self, params: torch.Tensor, sky_sigma: torch.Tensor) -> torch.Tensor:
        """Standardised targets (B, 8) for the loss, from parameters (B, 7) in catalog conventions."""
        raw = self.raw_targets(params, sky_sigma)
        head = (raw[:, :_STANDARDISED] - self.mean) / self.std
        return torch.cat([head, raw[:, _STANDARDISED:]], dim=-1)

    def decode(self, out: torch.Tensor, sky_sigma: torch.Tensor) -> torch.Tensor:
        """Network outputs (B, 8) → parameters (B, 7) in catalog conventions.

        ``q`` is clamped to ``[q_min, 1]``, ``n`` to its valid range, PA wrapped to [-90, 90).
        """
        head = out[:, :_STANDARDISED] * self.std + self.mean
        dx, dy, mag_rel, log_re, log_n, q = head.unbind(-1)
        x = dx + self.center
        y = dy + self.center
        mag = mag_rel - 2.5 * torch.log10(sky_sigma)
        re = torch.pow(10.0, log_re)
        n = torch.pow(10.0, log_n.clamp(self.log_n_range[0], self.log_n_range[1]))
        q = q.clamp(self.q_min, 1.0)
        pa = torch.atan2(out[:, 7], out[:, 6]) * (90.0 / math.pi)  # degrees, (-90, 90]
        pa = torch.remainder(pa + 90.0, 180.0) - 90.0
        return torch.stack([x, y, mag, re, n, q, pa], dim=-1)


    def decode_errors(self, out: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Network outputs with an uncertainty head (B, 16) → 1-sigma errors (B, 7) in catalog units.

        Parameters
        ----------
        out : Tensor, shape (B, 16)
            The 8 standardised targets, then the natural log of the predicted standard deviation of each.
        params : Tensor, shape (B, 7)
            The decoded parameters (:meth:`decode`), for the chain rule of ``re``, ``n`` and ``pa``.

        Returns
        -------
        Tensor, shape (B, 7): ``x_err, y_err`` (pixels), ``mag_err`` (mag), ``re_err`` (pixels), ``n_err``,
        ``q_err``, ``pa_err`` (degrees), each times its calibration factor ``error_scale``.

        Notes
        -----
        ``re`` and ``n`` are regressed as log10: ``err = value ln(10) sigma_log10``. PA is regressed as the
        unit vector ``(cos 2pa, sin 2pa)``; an error sigma on each component moves the angle ``2 pa`` by
        ``sigma / r`` radians (``r`` the predicted vector's length, floored at 0.1 where the shape is near
        round), so ``pa_err = (90 / pi) * sigma_perp / r`` degrees, ``sigma_perp`` the component of the two
        sigmas perpendicular to the vector.
        """
        sig = torch.exp(out[:, N_OUTPUTS:].clamp(-20.0, 10.0))
        raw = sig[:, :_STANDARDISED] * self.std
        ln10 = math.log(10.0)
        re, n = params[:, 3], params[:, 4]
        two = params[:, 6] * (math.pi / 90.0)
        perp = torch.sqrt((sig[:, 6] * torch.sin(two)) ** 2 + (sig[:, 7] * torch.cos(two)) ** 2)
        errs = torch.stack(
            [
                raw[:, 0],
                raw[:, 1],
                raw[:, 2],
                re * ln10 * raw[:, 3],
                n * ln10 * raw[:, 4],
                raw[:, 5],
                (90.0 / math.pi) * perp / self.pa_vector_length(out),
            ],
            dim=-1,
        )
        return errs * self.error_scale

    def pa_vector_length(self, out: torch.Tensor) -> torch.Tensor:
        """Length (B,) of the predicted ``(cos 2pa, sin 2pa)`` vector, floored at 0.1."""
        return torch.sqrt(out[:, 6] ** 2 + out[:, 7] ** 2).clamp_min(0.1)


def fit_output_scaling(
    params: np.ndarray, sky_sigma: np.ndarray, *, stamp_size: int = 61, zeropoint: float = DEFAULT_ZEROPOINT
) -> OutputScalingConfig:
    """Mean / std of the standardised targets over a training set.

    Parameters
    ----------
    params : array, shape (N, 7)
        Truth in catalog conventions.
    sky_sigma : array, shape (N,), counts / pixel

    Returns
    -------
    OutputScalingConfig
    """
    params = np.asarray(params, dtype=np.float64)
    if params.ndim != 2 or params.shape[1] != N_PARAMS:
        raise ModelCardError(
            f"params must be (N, {N_PARAMS}) ({', '.join(PARAMETER_NAMES)}), got {params.shape}"
        )
    scaler = OutputScaling(OutputScalingConfig(stamp_size=stamp_size))
    raw = scaler.raw_targets(torch.as_tensor(params), torch.as_tensor(sky_sigma, dtype=torch.float64))
    raw = raw[:, :_STANDARDISED].numpy()
    mean = raw.mean(axis=0)
    std = np.maximum(raw.std(axis=0), 1e-3)
    return OutputScalingConfig(
        mean=[float(v) for v in mean], std=[float(v) for v in std], stamp_size=stamp_size, zeropoint=zeropoint
    )
