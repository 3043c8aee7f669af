"""The typed training configuration: saved as ``config.json`` in every run and inside every checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config_io import build_config, load_config
from ..errors import ConfigError
from ..models.scaling import N_OUTPUTS, TARGET_NAMES, target_columns
from ..options import check_field_type
from ..params import loss_weights

__all__ = ["TrainConfig", "LOSSES", "SCHEDULES", "check_model_config"]

LOSSES = ("huber", "mse", "l1", "gaussian_nll")
SCHEDULES = ("cosine", "plateau", "none")


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults are the ones used for the shipped ``hsc-r``.

    Attributes
    ----------
    out : str
        Run directory (config.json, checkpoint.*, best.safetensors, metrics.csv).
    data : str or None
        Directory holding ``train.h5``, ``val.h5`` (and ``test.h5``, used by ``export``).
    on_the_fly : str or None
        Simulation preset name or path: draw fresh training samples every step
        (``galnet.simulate.OnTheFlyDataset``); validation uses ``data``'s val.h5 if given, else a fixed
        simulated set of ``val_size`` galaxies.
    steps_per_epoch : int or None
        Steps per epoch when training on the fly (default: ``train_size // batch_size``).
    train_size, val_size : int or None
        Use at most this many stamps of train.h5 / val.h5 (all if None); for on-the-fly runs
        ``train_size`` sets the epoch length and ``val_size`` the simulated validation set (2048).
    model : str
        Registered architecture (``galnet.models.list_models()``).
    model_config : dict
        Overrides of :class:`galnet.models.NetworkConfig`.
    input_scaling : dict
        Overrides of :class:`galnet.models.InputScalingConfig`.
    epochs, batch_size : int
        ``batch_size`` is global (split over DDP ranks).
    lr, weight_decay : float
        Adam(W) learning rate and decoupled weight decay (0 = plain Adam).
    loss : {"huber", "mse", "l1", "gaussian_nll"}
        ``gaussian_nll`` trains the network's uncertainty head (``model_config["uncertainty"]``, set
        automatically): the negative log-likelihood of each standardised target under the predicted
        Gaussian, ``0.5 ((mu - t) / sigma)^2 + ln sigma``, weighted by ``sigma^(2 nll_beta)`` (no gradient
        through the weight; beta-NLL, Seitzer et al. 2022).
    huber_delta : float
        Huber transition, in standardised target units.
    nll_beta : float
        beta of the beta-NLL weighting, in [0, 1]: 0 is the plain likelihood (the fit concentrates on the
        galaxies it can measure precisely), 1 weights every galaxy like a squared error.
    init : str or None
        Start from a model card's weights and output scaling (name or path; fine-tuning). With an uncertainty
        head that the card lacks, the card's output layer gives the 8 means and the sigma outputs start at
        ``init_sigma`` (standardised units).
    init_sigma : float
        Initial predicted sigma of the new uncertainty outputs when starting from ``init``.
    loss_weights : dict of str to float, list of 8 float, or None
        Loss weight per parameter by name (``{"pa": 0.5}``; a parameter's weight applies to each of its
        network targets, unnamed parameters keep the table's ``loss_weight``, 1), or the older form: one
        weight per network output (``dx, dy, mag_rel, log10_re, log10_n, q, cos2pa, sin2pa``,
        :data:`galnet.models.TARGET_NAMES`). None: the table's weights. See :meth:`output_weights`.
    schedule : {"cosine", "plateau", "none"}
    warmup_steps : int
        Linear warm-up (cosine and none).
    min_lr_ratio : float
        Final LR / initial LR of the cosine schedule.
    plateau_factor, plateau_patience : float, int
        Reduce-on-plateau: multiply LR by the factor after this many epochs without improvement.
    early_stopping_patience : int
        Stop after this many epochs without a val-loss improvement (0 = never).
    min_delta : float
        Smallest val-loss decrease that counts as an improvement.
    grad_clip : float
        Clip the gradient norm (0 = off).
    augment : bool
        Random x/y flips of image + PSF (parameters transformed accordingly).
    seed : int
    device : str
        ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
    threads : int or None
        torch intra-op threads (CPU).
    channels_last : bool
        channels_last memory format (faster convolutions on CPU).
    checkpoint_every_steps : int
        Also checkpoint every N optimizer steps (0 = at epoch ends only).
    progress : bool
        tqdm progress bar.
    command : str
        The exact command line that started the run (filled in by ``galnet train``).
    """

    out: str = "runs/galnet"
    data: str | None = None
    on_the_fly: str | None = None
    steps_per_epoch: int | None = None
    train_size: int | None = None
    val_size: int | None = None
    model: str = "galnet-psf"
    model_config: dict[str, Any] = field(default_factory=dict)
    input_scaling: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.0
    loss: str = "huber"
    huber_delta: float = 1.0
    nll_beta: float = 0.0
    init: str | None = None
    init_sigma: float = 0.3
    loss_weights: dict[str, float] | list[float] | None = None
    schedule: str = "cosine"
    warmup_steps: int = 200
    min_lr_ratio: float = 0.02
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    early_stopping_patience: int = 5
    min_delta: float = 1e-4
    grad_clip: float = 5.0
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    channels_last: bool = True
    checkpoint_every_steps: int = 0
    progress: bool = True
    command: str = ""

    def validate(self) -> TrainConfig:
        """Check values; raises :class:`~galnet.errors.ConfigError` naming the key. Returns self."""
        for f in fields(self):
            check_field_type(getattr(self, f.name), str(f.type), f.name)
        if self.data is None and self.on_the_fly is None:
            raise ConfigError("give --data (a directory with train.h5 and val.h5) or --on-the-fly PRESET")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2 (BatchNorm)")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        positive = ("huber_delta", "min_lr_ratio", "plateau_factor")
        nonnegative = ("weight_decay", "warmup_steps", "plateau_patience", "early_stopping_patience",
                       "min_delta", "grad_clip", "seed", "checkpoint_every_steps")
        optional_positive = ("steps_per_epoch", "train_size", "val_size", "threads")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in nonnegative:
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in optional_positive:
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.min_lr_ratio <= 1 or not self.plateau_factor < 1:
            raise ConfigError(f"min_lr_ratio must be in (0, 1] and plateau_factor in (0, 1), got "
                              f"{self.min_lr_ratio}, {self.plateau_factor}")
        weights = self.output_weights()
        if min(weights) < 0 or not sum(weights) > 0:
            raise ConfigError(f"loss_weights must be >= 0 with a positive sum, got {self.loss_weights}")
        check_model_config(self.model_config, self.input_scaling)
        if not 0.0 <= self.nll_beta <= 1.0:
            raise ConfigError(f"nll_beta must be in [0, 1], got {self.nll_beta}")
        if not self.init_sigma > 0:
            raise ConfigError(f"init_sigma must be > 0, got {self.init_sigma}")
        if self.loss == "gaussian_nll":
            self.model_config = {**self.model_config, "uncertainty": True}
        elif self.model_config.get("uncertainty"):
            raise ConfigError("an uncertainty head (model_config uncertainty=true) needs --loss gaussian_nll")
        return self

    def output_weights(self) -> list[float]:
        """The loss weight of each network output (``N_OUTPUTS`` = 8, in :data:`TARGET_NAMES` order).

        Returns
        -------
        list of float: ``loss_weights`` as given if it is a list, else each parameter's weight
        (:func:`galnet.params.loss_weights`: the table's, overridden by name) for each of its targets.

        Raises
        ------
        ConfigError
            A list of the wrong length, or a parameter name that is not in the table.
        """
        if isinstance(self.loss_weights, list):
            if len(self.loss_weights) != N_OUTPUTS:
                raise ConfigError(f"loss_weights needs {N_OUTPUTS} values (one per network output: "
                                  f"{', '.join(TARGET_NAMES)}) or a table of parameter weights, "
                                  f"got {len(self.loss_weights)}")
            return [float(w) for w in self.loss_weights]
        try:
            by_name = loss_weights(self.loss_weights)
        except KeyError as exc:
            raise ConfigError(f"loss_weights: {exc.args[0]}") from None
        out = [0.0] * N_OUTPUTS
        for name, weight in by_name.items():
            for c in target_columns(name):
                out[c] = weight
        return out

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys or values of the wrong type raise :class:`ConfigError`
        (:func:`galnet.config_io.build_config`; values are checked by :meth:`validate`)."""
        return build_config(cls, data)

    @classmethod
    def from_file(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """Read a ``.json`` or ``.toml`` file (a ``[train]`` table in it is accepted too).

        Parameters
        ----------
        path : path-like
            The file (a suffix other than ``.toml`` is read as JSON).
        overrides : dict, optional
            Values merged over the file's (:func:`galnet.config_io.merge_overrides`).

        Raises
        ------
        ConfigError
            Missing, unreadable, empty or unparsable file, unknown key or wrong type; the message
            names the file and the key (:func:`galnet.config_io.load_config`).
        """
        return load_config(path, cls, overrides=overrides, what="training config", section="train",
                           default_format="json")


def check_model_config(model_config: Any, input_scaling: Any = None) -> None:
    """Check ``--model-config`` / ``model_config`` overrides of :class:`galnet.models.NetworkConfig`.

    Every key must be a field of ``NetworkConfig`` with a value of its type; sizes and widths are
    positive integers, ``extra_convs`` non-negative, ``dropout`` in [0, 1), ``image_size`` and
    ``psf_size`` odd. ``input_scaling`` overrides are checked against
    :class:`galnet.models.InputScalingConfig` the same way.

    Raises
    ------
    ConfigError
        Naming the key and the value (e.g. ``model_config.hidden must be a positive integer, got -3``).
    """
    from ..models.networks import NetworkConfig
    from ..models.scaling import InputScalingConfig

    for what, cfg, cls in (("model_config", model_config, NetworkConfig),
                           ("input_scaling", input_scaling or {}, InputScalingConfig)):
        if not isinstance(cfg, dict):
            raise ConfigError(f"{what} must be a JSON object of keys, got {cfg!r}")
        known = {f.name: f for f in fields(cls)}
        bad = sorted(set(cfg) - set(known))
        if bad:
            raise ConfigError(f"{what}: unknown key(s) {bad}; known: {sorted(known)}")
        for name, value in cfg.items():
            check_field_type(value, str(known[name].type), f"{what}.{name}")
    mc = model_config
    for name in ("hidden", "image_size", "psf_size"):
        if name in mc and not mc[name] > 0:
            raise ConfigError(f"model_config.{name} must be a positive integer, got {mc[name]}")
    for name in ("image_size", "psf_size"):
        if name in mc and mc[name] % 2 == 0:
            raise ConfigError(f"model_config.{name} must be odd, got {mc[name]}")
    for name in ("widths", "psf_widths"):
        if name in mc and (not mc[name] or min(mc[name]) < 1):
            raise ConfigError(
                f"model_config.{name} must be a non-empty list of positive integers, got {mc[name]}"
            )
    if "extra_convs" in mc and mc["extra_convs"] and min(mc["extra_convs"]) < 0:
        raise ConfigError(f"model_config.extra_convs must be integers >= 0, got {mc['extra_convs']}")
    if "dropout" in mc and not 0 <= mc["dropout"] < 1:
        raise ConfigError(f"model_config.dropout must be in [0, 1), got {mc['dropout']}")
    sc = input_scaling or {}
    for name in ("image_softening", "flux_feature_scale"):
        if name in sc and not sc[name] > 0:
            raise ConfigError(f"input_scaling.{name} must be > 0, got {sc[name]}")
