"""The networks: a PSF-aware two-branch CNN (after GaLNet, Li et al. 2022) and its image-only ablation.

Architecture (``galnet-psf``, default widths 16/32/64/96)::

    image (B,61,61) counts ──InputScaling── asinh(img/σ) ⊕ CoordConv(x, y)  (B,3,61,61)
        conv3x3 s2 → 16 @31²
        conv3x3 s2 → 32 @16²  · conv3x3 → 32 @16²
        conv3x3 s2 → 64 @8²   · conv3x3 → 64 @8²
        conv3x3 s2 → 96 @4²   → flatten (1536)               (spatial layout kept for x, y)
    psf (B,25,25) ──psf/max── conv3x3 s2 → 8 @13² · s2 → 16 @7² · s2 → 32 @4² → mean pool (32)
    flux feature asinh(Σimg/σ/100) (1)
    concat (1569) → Linear 256 → ReLU → Dropout → Linear 8 → OutputScaling.decode → (B,7)

Each conv is Conv-BatchNorm-ReLU. Stride-2 convolutions instead of max-pooling and narrow widths
keep the cost at 8.9 M-MAC and 535k parameters per galaxy (the paper-sized network is ≈ 136 M-MAC,
measured to be 10-20× slower on CPU, see ``docs/network.md``); the final 4×4 map is flattened rather than
globally pooled so that the head still knows *where* the light is (the position regression), and
two CoordConv channels give the first layers absolute position too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from .scaling import N_OUTPUTS, InputScaling, InputScalingConfig, OutputScaling, OutputScalingConfig

__all__ = ["NetworkConfig", "GalNet", "count_parameters", "count_macs"]


@dataclass
class NetworkConfig:
    """Architecture hyper-parameters (all sizes in pixels or channels).

    Attributes
    ----------
    use_psf : bool
        Two-branch PSF-aware network (``True``) or image-only ablation.
    widths : list of int
        Channels of the image stages; each stage is a stride-2 conv (+ ``extra_convs`` stride-1 convs).
    extra_convs : list of int
        Number of stride-1 convs after the stride-2 conv of each stage (same length as ``widths``).
    psf_widths : list of int
        Channels of the PSF branch (stride-2 convs, then mean pooling).
    hidden : int
        Width of the fused dense layer.
    dropout : float
        Dropout before the output layer.
    coordconv : bool
        Add normalised x, y coordinate channels to the image input.
    image_size, psf_size : int
        Stamp sizes.
    uncertainty : bool
        Add an uncertainty head: the output layer also predicts the log standard deviation of each of the
        8 standardised targets (trained with a Gaussian negative log-likelihood), decoded into per-galaxy
        1-sigma errors of all seven parameters (:meth:`GalNet.predict_params_and_errors`).
    """

    use_psf: bool = True
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 96])
    extra_convs: list[int] = field(default_factory=lambda: [0, 1, 1, 0])
    psf_widths: list[int] = field(default_factory=lambda: [8, 16, 32])
    hidden: int = 256
    dropout: float = 0.0
    coordconv: bool = True
    image_size: int = 61
    psf_size: int = 25
    uncertainty: bool = False

    def __post_init__(self) -> None:
        positive = {"hidden": [self.hidden], "widths": self.widths, "psf_widths": self.psf_widths,
                    "image_size": [self.image_size], "psf_size": [self.psf_size]}
        for name, values in positive.items():
            if not values or not all(isinstance(v, int) and v > 0 for v in values):
                raise ConfigError(f"network config {name} must be positive integers, got {values}")
        if not all(isinstance(v, int) and v >= 0 for v in self.extra_convs):
            raise ConfigError(f"network config extra_convs must be integers >= 0, got {self.extra_convs}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"network config dropout must be in [0, 1), got {self.dropout}")


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _out_size(size: int, n_stride2: int) -> int:
    for _ in range(n_stride2):
        size = (size - 1) // 2 + 1
    return size


class GalNet(nn.Module):
    """PSF-aware Sérsic-parameter CNN with its input and output scalings built in.

    Parameters
    ----------
    config : NetworkConfig
    input_scaling : InputScalingConfig
    output_scaling : OutputScalingConfig
        Usually fitted on the training set (:func:`galnet.models.scaling.fit_output_scaling`).

    Notes
    -----
    :meth:`forward` returns the 8 standardised network outputs (what the loss sees);
    :meth:`predict_params` returns (B, 7) parameters in catalog conventions.
    """

    def __init__(
        self,
        config: NetworkConfig | None = None,
        input_scaling: InputScalingConfig | None = None,
        output_scaling: OutputScalingConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config = config or NetworkConfig()
        self.input_scaling = InputScaling(input_scaling)
        self.output_scaling = OutputScaling(output_scaling)
        cin = 3 if config.coordconv else 1
        layers: list[nn.Module] = []
        if len(config.extra_convs) != len(config.widths):
            raise ConfigError(
                f"extra_convs {config.extra_convs} must have one entry per stage {config.widths}"
            )
        for w, extra in zip(config.widths, config.extra_convs):
            layers.append(_conv(cin, w, 2))
            layers.extend(_conv(w, w, 1) for _ in range(extra))
            cin = w
        self.image_branch = nn.Sequential(*layers)
        side = _out_size(config.image_size, len(config.widths))
        n_feat = cin * side * side + 1
        if config.use_psf:
            players: list[nn.Module] = []
            pin = 1
            for w in config.psf_widths:
                players.append(_conv(pin, w, 2))
                pin = w
            self.psf_branch: nn.Module | None = nn.Sequential(*players)
            n_feat += pin
        else:
            self.psf_branch = None
        self.head = nn.Sequential(
            nn.Linear(n_feat, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, self.n_outputs),
        )
        if config.coordconv:
            s = config.image_size
            lin = torch.linspace(-1.0, 1.0, s)
            yy, xx = torch.meshgrid(lin, lin, indexing="ij")
            self.register_buffer("coords", torch.stack([xx, yy])[None], persistent=False)

    @property
    def n_outputs(self) -> int:
        """8 standardised targets, then (with the uncertainty head) their 8 log standard deviations."""
        return 2 * N_OUTPUTS if self.config.uncertainty else N_OUTPUTS

    def forward(self, image: torch.Tensor, psf: torch.Tensor, sky_sigma: torch.Tensor) -> torch.Tensor:
        """Standardised network outputs.

        Parameters
        ----------
        image : Tensor, shape (B, 61, 61), counts (sky-subtracted)
        psf : Tensor, shape (B, 25, 25), unit-sum effective PSF
        sky_sigma : Tensor, shape (B,), counts / pixel

        Returns
        -------
        Tensor, shape (B, 8): ``dx, dy, mag_rel, log10_re, log10_n, q`` standardised, ``cos2pa, sin2pa``;
        shape (B, 16) with the uncertainty head: then the natural log of each one's predicted sigma.
        """
        img, p, flux = self.input_scaling(image, psf, sky_sigma)
        if self.config.coordconv:
            img = torch.cat([img, self.coords.expand(img.shape[0], -1, -1, -1).to(img)], dim=1)
        feats = [self.image_branch(img).flatten(1), flux]
        if self.psf_branch is not None:
            feats.append(self.psf_branch(p).mean(dim=(-2, -1)))
        return self.head(torch.cat(feats, dim=1))

    def predict_params(self, image: torch.Tensor, psf: torch.Tensor, sky_sigma: torch.Tensor) -> torch.Tensor:
        """(B, 7) ``x, y, mag, re, n, q, pa`` in catalog conventions (:mod:`galnet.conventions`)."""
        return self.output_scaling.decode(self.forward(image, psf, sky_sigma)[:, :N_OUTPUTS], sky_sigma)

    def predict_params_and_errors(
        self, image: torch.Tensor, psf: torch.Tensor, sky_sigma: torch.Tensor
    ) -> torch.Tensor:
        """(B, 14): the 7 parameters of :meth:`predict_params`, then their calibrated 1-sigma errors.

        Errors are in catalog units (pixels, mag, pixels, -, -, degrees;
        :meth:`OutputScaling.decode_errors`); NaN for a network without the uncertainty head.
        """
        out = self.forward(image, psf, sky_sigma)
        params = self.output_scaling.decode(out[:, :N_OUTPUTS], sky_sigma)
        if self.config.uncertainty:
            errors = self.output_scaling.decode_errors(out, params)
        else:
            errors = torch.full_like(params, float("nan"))
        return torch.cat([params, errors], dim=-1)

    def describe(self) -> dict:
        """JSON-able architecture + scaling description (what the model card stores)."""
        return {
            "network": asdict(self.config),
            "input_scaling": asdict(self.input_scaling.config),
            "output_scaling": asdict(self.output_scaling.config),
        }


class _Decoded(nn.Module):
    """Wraps a :class:`GalNet` so that ``forward`` returns decoded parameters (for export).

    (B, 7) parameters, or (B, 14) parameters and errors for a network with the uncertainty head.
    """

    def __init__(self, net: GalNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, psf: torch.Tensor, sky_sigma: torch.Tensor) -> torch.Tensor:
        if self.net.config.uncertainty:
            return self.net.predict_params_and_errors(image, psf, sky_sigma)
        return self.net.predict_params(image, psf, sky_sigma)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: GalNet) -> int:
    """Multiply-accumulates per galaxy of the convolutions and dense layers (one forward pass).

    Counted with forward hooks on a batch of one: conv ``H_out W_out C_out C_in k² / groups``,
    dense ``in × out``. Element-wise work (BatchNorm, ReLU, scalings) is not counted.
    """
    total = 0

    def hook(mod: nn.Module, inp, out) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            total += out.shape[1] * out.shape[2] * out.shape[3] * (mod.in_channels // mod.groups) * k
        elif isinstance(mod, nn.Linear):
            total += mod.in_features * mod.out_features

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = model.training
    model.eval()
    try:
        c = model.config
        dev = next(model.parameters()).device
        with torch.no_grad():
            model(
                torch.zeros(1, c.image_size, c.image_size, device=dev),
                torch.full((1, c.psf_size, c.psf_size), 1.0 / c.psf_size**2, device=dev),
                torch.ones(1, device=dev),
            )
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)
