"""Calibration and coverage of predicted 1-sigma errors.

A network with an uncertainty head (``NetworkConfig.uncertainty``, trained with ``--loss gaussian_nll``)
predicts a standard deviation for every parameter of every galaxy. The likelihood training gets their
*relative* sizes right; one factor per parameter, measured on a validation split after training, makes
their *scale* right: :func:`calibrate_errors` sets ``error_scale`` so that 68.27 % of the validation
galaxies have ``|estimate - truth| < err`` (the fraction inside 1 sigma of a Gaussian). :func:`coverage`
measures the fractions inside 1 and 2 sigma, overall and per magnitude bin, on any split.

Errors and differences are in catalog units (pixels, mag, pixels, -, -, degrees); the PA difference is
wrapped to [-90, 90).
"""

from __future__ import annotations

import numpy as np
import torch

from ..conventions import wrap_pa
from ..errors import InputDataError
from ..models import GalNet
from ..params import N_PARAMS, PARAMETER_NAMES, index

__all__ = [
    "ONE_SIGMA",
    "TWO_SIGMA",
    "MAG_BINS",
    "predict_with_errors",
    "absolute_errors",
    "calibrate_errors",
    "coverage",
]

#: Fraction of a Gaussian within 1 and 2 sigma.
ONE_SIGMA = 0.6827
TWO_SIGMA = 0.9545
#: Magnitude bin edges of the coverage tables (those of the information-limit benchmark).
MAG_BINS: tuple[float, ...] = (18.0, 20.0, 21.5, 22.5, 23.3, 24.0)


@torch.no_grad()
def predict_with_errors(
    model: GalNet, split: dict[str, torch.Tensor], *, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Parameters (N, 7) and errors (N, 7) of a model with an uncertainty head on a split (CPU)."""
    if not model.config.uncertainty:
        raise InputDataError("the model has no uncertainty head (train it with --loss gaussian_nll)")
    was = model.training
    model.eval()
    out = []
    n = len(split["params"])
    for s in range(0, n, batch_size):
        out.append(
            model.predict_params_and_errors(
                split["image"][s : s + batch_size],
                split["psf"][s : s + batch_size],
                split["sky_sigma"][s : s + batch_size],
            ).double()
        )
    model.train(was)
    res = torch.cat(out).numpy()
    return res[:, :N_PARAMS], res[:, N_PARAMS:]


def absolute_errors(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """|pred - truth| (N, 7) in catalog units, the PA difference wrapped to [-90, 90)."""
    truth = np.asarray(truth, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if truth.shape != pred.shape or truth.ndim != 2 or truth.shape[1] != N_PARAMS:
        raise InputDataError(f"truth and pred must both be (N, {N_PARAMS}), got {truth.shape}, {pred.shape}")
    delta = pred - truth
    ipa = index("pa")
    delta[:, ipa] = wrap_pa(delta[:, ipa])
    return np.abs(delta)


def calibrate_errors(model: GalNet, split: dict[str, torch.Tensor], *, batch_size: int = 1024) -> np.ndarray:
    """Set the model's ``error_scale`` so that 68.27 % of ``split``'s galaxies lie within 1 sigma.

    Parameters
    ----------
    model : GalNet
        With an uncertainty head; its ``output_scaling`` is updated in place (buffer and config).
    split : dict of Tensor
        ``image`` (N, 61, 61), ``psf`` (N, 25, 25), ``sky_sigma`` (N,), ``params`` (N, 7): a validation
        split, never the test split.

    Returns
    -------
    ndarray, shape (7,): the new ``error_scale`` (old scale times the measured factor).
    """
    pred, err = predict_with_errors(model, split, batch_size=batch_size)
    z = absolute_errors(split["params"].double().numpy(), pred) / err
    factor = np.array([np.nanquantile(z[:, j], ONE_SIGMA) for j in range(N_PARAMS)])
    if not np.all(np.isfinite(factor) & (factor > 0)):
        raise InputDataError(f"error calibration failed: factors {factor}")
    scaling = model.output_scaling
    new = np.asarray(scaling.config.error_scale, dtype=np.float64) * factor
    scaling.config.error_scale = [float(v) for v in new]
    scaling.error_scale.copy_(torch.as_tensor(new, dtype=scaling.error_scale.dtype))
    return new


def coverage(
    truth: np.ndarray, pred: np.ndarray, err: np.ndarray, *, mag_bins: tuple[float, ...] = MAG_BINS
) -> dict:
    """Fractions of galaxies with ``|pred - truth| < 1 err`` and ``< 2 err``, overall and per true-mag bin.

    Parameters
    ----------
    truth, pred, err : array, shape (N, 7)
        Truth, estimates and 1-sigma errors in catalog units. Rows with a non-finite error are not counted.
    mag_bins : sequence of float
        Edges of the true-magnitude bins.

    Returns
    -------
    dict: ``{"all": {param: {"n", "within_1sigma", "within_2sigma"}}, "mag 18-20": {...}, ...}``.
    """
    adiff = absolute_errors(truth, pred)
    err = np.asarray(err, dtype=np.float64)
    mag = np.asarray(truth, dtype=np.float64)[:, index("mag")]
    groups = {"all": np.ones(len(mag), bool)}
    for lo, hi in zip(mag_bins[:-1], mag_bins[1:]):
        groups[f"mag {lo:g}-{hi:g}"] = (mag >= lo) & (mag < hi)
    table: dict = {}
    for name, sel in groups.items():
        row = {}
        for j, p in enumerate(PARAMETER_NAMES):
            ok = sel & np.isfinite(err[:, j]) & np.isfinite(adiff[:, j])
            n = int(ok.sum())
            z = adiff[ok, j] / err[ok, j]
            row[p] = {
                "n": n,
                "within_1sigma": float(np.mean(z < 1.0)) if n else float("nan"),
                "within_2sigma": float(np.mean(z < 2.0)) if n else float("nan"),
            }
        table[name] = row
    return table
