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

Outputs (network targets generated from :data:`galnet.params.PARAMETERS`)
-------------------------------------------------------------------------
Each parameter's ``net_transform`` (:data:`galnet.params.NET_TRANSFORMS`) makes its target(s); with
the table as shipped, 8 targets from 7 parameters:

========  ============  ==================================================  ===============================
param     transform     network target (before standardisation)             decode
========  ============  ==================================================  ===============================
x, y      ``offset``    offset from the stamp centre, pixels                 ``+ centre`` (31 for 61 px)
mag       ``mag_rel``   ``mag + 2.5 log10(sky_sigma)`` (noise-unit mag)       ``- 2.5 log10(sky_sigma)``
re        ``log10``     ``log10 re``                                          ``10**``
n         ``log10``     ``log10 n``                                           ``10**``, clamped to valid range
q         ``linear``    ``q``                                                 clamped to its valid range
pa        ``axial``     ``cos 2pa, sin 2pa`` (not standardised)               ``atan2 / 2``, wrapped [-90, 90)
========  ============  ==================================================  ===============================

(clamped: the table's ``net_clamp``.) The targets are ordered with the standardised ones first (in table
order), then the axial pairs (:data:`TARGET_NAMES`). The standardised targets use the training set's mean
and standard deviation (:func:`fit_output_scaling`). The mag target is relative to the sky noise because
the image input is in noise units; the decode adds the absolute scale back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..conventions import DEFAULT_ZEROPOINT, stamp_center, wrap_pa
from ..errors import ModelCardError
from ..params import IX_MAG, N_PARAMS, PARAMETER_NAMES, PARAMETERS, ParameterSpec, index

__all__ = [
    "TARGET_NAMES",
    "N_OUTPUTS",
    "N_STANDARDISED",
    "target_columns",
    "InputScalingConfig",
    "OutputScalingConfig",
    "InputScaling",
    "OutputScaling",
    "fit_output_scaling",
]

#: Names of the network outputs, in order: the standardised targets of the parameters (table order),
#: then the unstandardised ones (the axial pairs): ``dx, dy, mag_rel, log10_re, log10_n, q, cos2pa, sin2pa``.
TARGET_NAMES: tuple[str, ...] = (
    tuple(t for spec in PARAMETERS if spec.standardised for t in spec.net_targets)
    + tuple(t for spec in PARAMETERS if not spec.standardised for t in spec.net_targets)
)
N_OUTPUTS = len(TARGET_NAMES)
#: The first ``N_STANDARDISED`` targets are standardised (6: all but cos2pa, sin2pa).
N_STANDARDISED = sum(len(spec.net_targets) for spec in PARAMETERS if spec.standardised)
_COLUMNS: tuple[tuple[int, ...], ...] = tuple(
    tuple(TARGET_NAMES.index(t) for t in spec.net_targets) for spec in PARAMETERS
)


def target_columns(name: str) -> tuple[int, ...]:
    """Columns of a parameter's target(s) in the network outputs (``target_columns("pa") == (6, 7)``)."""
    return _COLUMNS[index(name)]


def _standardised_defaults(which: int) -> list[float]:
    """The table's ``net_default`` means (``which=0``) or stds (``1``) of the standardised targets."""
    return [spec.net_default[which] for spec in PARAMETERS if spec.standardised for _ in spec.net_targets]


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
    """Standardisation of the first ``N_STANDARDISED`` (6) targets and the decode limits.

    Attributes
    ----------
    mean, std : list of 6 float
        Mean and standard deviation of ``dx, dy, mag_rel, log10_re, log10_n, q`` over a training set
        (defaults: the table's ``net_default``).
    stamp_size : int
        Image stamp size in pixels (the offsets are from its centre, :func:`stamp_center`).
    zeropoint : float
        Zero point of the training magnitudes (informational; the scaling is zero-point free).
    error_scale : list of 7 float, or K lists of 7 float
        Calibration factors of each parameter's predicted error (``x, y, mag, re, n, q, pa``), measured on
        a validation set after training (:func:`galnet.train.calibrate_errors`) so that 68.3 % of the
        errors |estimate - truth| are below ``error_scale * raw error``; one row per bin of the predicted
        noise-unit magnitude ``mag_rel = mag + 2.5 log10(sky_sigma)`` (an S/N proxy that needs no truth).
        Ones until calibrated; unused by networks without an uncertainty head.
    error_scale_edges : list of K - 1 float
        Interior edges of those ``mag_rel`` bins (increasing); empty for one row.
    """

    mean: list[float] = field(default_factory=lambda: _standardised_defaults(0))
    std: list[float] = field(default_factory=lambda: _standardised_defaults(1))
    stamp_size: int = 61
    zeropoint: float = DEFAULT_ZEROPOINT
    error_scale: list = field(default_factory=lambda: [1.0] * N_PARAMS)
    error_scale_edges: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.mean) != N_STANDARDISED or len(self.std) != N_STANDARDISED:
            raise ModelCardError(
                f"output scaling needs {N_STANDARDISED} means and stds, "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if not all(math.isfinite(s) and s > 0 for s in self.std) or not all(map(math.isfinite, self.mean)):
            raise ModelCardError(f"output scaling has non-finite or non-positive entries: {asdict(self)}")
        table = np.asarray(self.error_scale, dtype=np.float64)
        table = table[None] if table.ndim == 1 else table
        edges = np.asarray(self.error_scale_edges, dtype=np.float64)
        if (table.ndim != 2 or table.shape[1] != N_PARAMS or not np.all(np.isfinite(table) & (table > 0))
                or edges.ndim != 1 or len(edges) != len(table) - 1 or not np.all(np.isfinite(edges))
                or np.any(np.diff(edges) <= 0)):
            raise ModelCardError(
                f"output scaling error_scale needs K rows of {N_PARAMS} positive numbers and K - 1 "
                f"increasing error_scale_edges, got {self.error_scale} and {self.error_scale_edges}"
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
    """Catalog parameters (B, 7) ↔ standardised network targets (B, 8), by the table's transforms."""

    def __init__(self, config: OutputScalingConfig | None = None) -> None:
        super().__init__()
        self.config = config or OutputScalingConfig()
        self.register_buffer("mean", torch.tensor(self.config.mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(self.config.std, dtype=torch.float32), persistent=False)
        self.set_error_scale(self.config.error_scale, self.config.error_scale_edges)
        self.center = stamp_center(self.config.stamp_size)
        #: decode clamps in target space (``log10`` or linear) for the table's ``net_clamp`` parameters
        self.clamps: dict[str, tuple[float, float]] = {
            spec.name: (tuple(math.log10(v) for v in spec.valid) if spec.net_transform == "log10"
                        else spec.valid)
            for spec in PARAMETERS if spec.net_clamp
        }

    # ------------------------------------------------------------------ one parameter
    def _encode(self, spec: ParameterSpec, value: torch.Tensor,
                sky_sigma: torch.Tensor) -> list[torch.Tensor]:
        """The unstandardised target(s) of one parameter column (B,)."""
        kind = spec.net_transform
        if kind == "offset":
            return [value - self.center]
        if kind == "mag_rel":
            return [value + 2.5 * torch.log10(sky_sigma)]
        if kind == "log10":
            return [torch.log10(value)]
        if kind == "linear":
            return [value]
        two = value * (math.pi / (spec.cyclic_period / 2.0))  # axial: twice the angle, radians
        return [torch.cos(two), torch.sin(two)]

    def _decode(self, spec: ParameterSpec, targets: list[torch.Tensor],
                sky_sigma: torch.Tensor) -> torch.Tensor:
        """One parameter column (B,) from its unstandardised target(s)."""
        kind, clamp = spec.net_transform, self.clamps.get(spec.name)
        if kind == "axial":  # atan2 / 2 in degrees, wrapped to [-90, 90)
            return wrap_pa(torch.atan2(targets[1], targets[0]) * ((spec.cyclic_period / 2.0) / math.pi))
        (t,) = targets
        if clamp is not None:
            t = t.clamp(clamp[0], clamp[1])
        if kind == "offset":
            return t + self.center
        if kind == "mag_rel":
            return t - 2.5 * torch.log10(sky_sigma)
        if kind == "log10":
            return torch.pow(10.0, t)
        return t

    def _decode_error(self, spec: ParameterSpec, value: torch.Tensor, sigma: list[torch.Tensor],
                      out: torch.Tensor) -> torch.Tensor:
        """1-sigma error (B,) of one parameter from the sigma(s) of its unstandardised target(s)."""
        kind = spec.net_transform
        if kind == "log10":
            return value * math.log(10.0) * sigma[0]
        if kind == "axial":
            half = spec.cyclic_period / 2.0
            two = value * (math.pi / half)
            perp = torch.sqrt((sigma[0] * torch.sin(two)) ** 2 + (sigma[1] * torch.cos(two)) ** 2)
            return (half / math.pi) * perp / self.axial_length(out, spec.name)
        return sigma[0]

    def _unstandardise(self, out: torch.Tensor, *, scale_only: bool = False) -> list[list[torch.Tensor]]:
        """Per parameter, its target columns of ``out`` (B, 8) with the standardisation undone.

        ``scale_only`` multiplies by the std without adding the mean (for sigmas).
        """
        head = out[:, :N_STANDARDISED] * self.std
        if not scale_only:
            head = head + self.mean
        return [[head[:, c] if c < N_STANDARDISED else out[:, c] for c in cols] for cols in _COLUMNS]

    # ------------------------------------------------------------------ all parameters
    def raw_targets(self, params: torch.Tensor, sky_sigma: torch.Tensor) -> torch.Tensor:
        """Unstandardised targets (B, 8) from catalog parameters (B, 7) and sky sigma (B,) counts."""
        targets: list[torch.Tensor | None] = [None] * N_OUTPUTS
        for j, spec in enumerate(PARAMETERS):
            for c, t in zip(_COLUMNS[j], self._encode(spec, params[..., j], sky_sigma)):
                targets[c] = t
        return torch.stack(targets, dim=-1)

    def encode(self, params: torch.Tensor, sky_sigma: torch.Tensor) -> torch.Tensor:
        """Standardised targets (B, 8) for the loss, from parameters (B, 7) in catalog conventions."""
        raw = self.raw_targets(params, sky_sigma)
        head = (raw[:, :N_STANDARDISED] - self.mean) / self.std
        return torch.cat([head, raw[:, N_STANDARDISED:]], dim=-1)

    def decode(self, out: torch.Tensor, sky_sigma: torch.Tensor) -> torch.Tensor:
        """Network outputs (B, 8) → parameters (B, 7) in catalog conventions.

        Parameters with ``net_clamp`` in the table (``n``, ``q``) are clamped to their valid range, PA
        wrapped to [-90, 90).
        """
        cols = self._unstandardise(out)
        return torch.stack([self._decode(spec, cols[j], sky_sigma) for j, spec in enumerate(PARAMETERS)],
                           dim=-1)

    def set_error_scale(self, table, edges) -> None:
        """Set the calibration table (K, 7) or (7,) and its K - 1 ``mag_rel`` bin edges (config, buffers)."""
        t = torch.as_tensor(np.asarray(table, dtype=np.float64), dtype=torch.float32)
        t = t[None] if t.ndim == 1 else t
        self.config.error_scale = t.tolist() if len(t) > 1 else t[0].tolist()
        self.config.error_scale_edges = [float(v) for v in edges]
        self.register_buffer("error_scale", t, persistent=False)
        self.register_buffer(
            "error_scale_edges", torch.tensor(self.config.error_scale_edges, dtype=torch.float32),
            persistent=False,
        )

    def error_scale_rows(self, out: torch.Tensor) -> torch.Tensor:
        """The calibration factors (B, 7) of each galaxy: the row of its predicted ``mag_rel`` bin."""
        (c,) = _COLUMNS[IX_MAG]
        mag_rel = out[:, c] * self.std[c] + self.mean[c]
        if self.error_scale_edges.numel() == 0:
            return self.error_scale[0].expand(out.shape[0], -1)
        # bin index as a sum of comparisons (exportable to ONNX, unlike bucketize)
        idx = (mag_rel[:, None] > self.error_scale_edges[None, :]).to(torch.int64).sum(dim=1)
        return self.error_scale[idx]

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
        ``q_err``, ``pa_err`` (degrees), each times its calibration factor (:meth:`error_scale_rows`).

        Notes
        -----
        ``re`` and ``n`` are regressed as log10: ``err = value ln(10) sigma_log10``. PA is regressed as the
        unit vector ``(cos 2pa, sin 2pa)``; an error sigma on each component moves the angle ``2 pa`` by
        ``sigma / r`` radians (``r`` the predicted vector's length, floored at 0.1 where the shape is near
        round), so ``pa_err = (90 / pi) * sigma_perp / r`` degrees, ``sigma_perp`` the component of the two
        sigmas perpendicular to the vector.
        """
        sig = torch.exp(out[:, N_OUTPUTS:].clamp(-20.0, 10.0))
        sigmas = self._unstandardise(sig, scale_only=True)
        errs = torch.stack(
            [self._decode_error(spec, params[:, j], sigmas[j], out) for j, spec in enumerate(PARAMETERS)],
            dim=-1,
        )
        return errs * self.error_scale_rows(out)

    def axial_length(self, out: torch.Tensor, name: str = "pa") -> torch.Tensor:
        """Length (B,) of the predicted ``(cos, sin)`` vector of an axial parameter, floored at 0.1."""
        c, s = target_columns(name)
        return torch.sqrt(out[:, c] ** 2 + out[:, s] ** 2).clamp_min(0.1)


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
    raw = raw[:, :N_STANDARDISED].numpy()
    mean = raw.mean(axis=0)
    std = np.maximum(raw.std(axis=0), 1e-3)
    return OutputScalingConfig(
        mean=[float(v) for v in mean], std=[float(v) for v in std], stamp_size=stamp_size, zeropoint=zeropoint
    )
