"""Training: the typed config, the loop (checkpoints, exact resume, DDP), metrics, ``galnet train``.

Public API
----------
TrainConfig                      typed config (JSON/TOML), saved in every run and checkpoint
train(config, resume=False)      run or resume a training; Trainer for finer control
export_run(run_dir, name, to)    a run → <name>.safetensors + <name>.json model card (errors calibrated)
calibrate_errors, coverage       scale of the predicted errors (validation split), their coverage
regression_metrics, binned_metrics, parameter_errors, outlier_mask, nmad, r2_score
"""

from .calibrate import absolute_errors, calibrate_errors, coverage, predict_with_errors
from .command import export_run
from .config import TrainConfig
from .loop import Trainer, evaluate_model, load_split, train
from .metrics import (
    OUTLIER_THRESHOLDS,
    PA_MAX_Q,
    binned_metrics,
    flatten_metrics,
    nmad,
    outlier_mask,
    parameter_errors,
    r2_score,
    regression_metrics,
)

__all__ = [
    "absolute_errors",
    "calibrate_errors",
    "coverage",
    "predict_with_errors",
    "TrainConfig",
    "Trainer",
    "train",
    "export_run",
    "evaluate_model",
    "load_split",
    "regression_metrics",
    "binned_metrics",
    "flatten_metrics",
    "parameter_errors",
    "outlier_mask",
    "nmad",
    "r2_score",
    "OUTLIER_THRESHOLDS",
    "PA_MAX_Q",
]
