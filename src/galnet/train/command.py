"""Train (or resume training) a network, and export a run as a model card.

Examples
--------
galnet train --data data/hsc --model galnet-psf --epochs 20 --batch-size 256 --out runs/hsc-r
galnet train --resume runs/hsc-r                   # after a kill: continues exactly where it stopped
galnet train export runs/hsc-r --name hsc-r --to src/galnet/weights
torchrun --nproc_per_node=4 -m galnet.cli train --data data/hsc --out runs/hsc-r   # multi-GPU (DDP)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from ..config_io import merge_overrides
from ..errors import ConfigError
from ..options import (
    check_output_path,
    float_in_range,
    int_in_range,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from .config import LOSSES, SCHEDULES, TrainConfig

__all__ = ["add_arguments", "run", "export_run"]

# CLI flag → TrainConfig field (only the ones that differ from the plain dash-ified name)
_FIELDS = {f.name for f in fields(TrainConfig)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``galnet train`` and its ``export`` sub-action."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    g = parser.add_argument_group("data")
    g.add_argument("--data", help="directory with train.h5 and val.h5 (galnet simulate output)")
    g.add_argument("--on-the-fly", metavar="PRESET",
                   help="draw fresh simulated training samples from this preset")
    g.add_argument("--steps-per-epoch", type=positive_int, help="steps per epoch with --on-the-fly")
    g.add_argument("--train-size", type=positive_int, help="use only the first N training stamps")
    g.add_argument("--val-size", type=positive_int, help="use only the first N validation stamps")
    g = parser.add_argument_group("model and optimisation")
    g.add_argument("--config", help="TrainConfig file (.json or .toml); command-line options override it")
    g.add_argument("--model", help="architecture (galnet-psf, galnet-image, galnet-psf-small)")
    g.add_argument("--model-config", help='JSON overrides of the network config, e.g. \'{"hidden": 128}\'')
    g.add_argument("--epochs", type=positive_int)
    g.add_argument("--batch-size", type=int_in_range(2, 1 << 20),
                   help="global batch size (>= 2, split over DDP ranks)")
    g.add_argument("--lr", type=positive_float)
    g.add_argument("--weight-decay", type=nonnegative_float)
    g.add_argument("--loss", choices=LOSSES)
    g.add_argument("--huber-delta", type=positive_float)
    g.add_argument("--nll-beta", type=float_in_range(0.0, 1.0),
                   help="beta-NLL weighting of --loss gaussian_nll, in [0, 1] (default 0)")
    g.add_argument("--init", metavar="CARD", help="start from a model card's weights (fine-tuning)")
    g.add_argument("--init-sigma", type=positive_float,
                   help="initial sigma of a new uncertainty head (> 0; default 0.3)")
    g.add_argument("--schedule", choices=SCHEDULES)
    g.add_argument("--warmup-steps", type=nonnegative_int)
    g.add_argument("--early-stopping-patience", type=nonnegative_int,
                   help="epochs without val improvement (0 = off)")
    g.add_argument("--no-augment", dest="augment", action="store_const", const=False, default=None,
                   help="no random flips/transposes")
    g.add_argument("--seed", type=nonnegative_int)
    g = parser.add_argument_group("run")
    g.add_argument("--out", help="run directory (default runs/galnet)")
    g.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR (or --out) from its last checkpoint")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    g.add_argument("--threads", type=positive_int, help="torch CPU threads")
    g.add_argument("--checkpoint-every-steps", type=nonnegative_int, help="also checkpoint every N steps")
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None)
    sub = parser.add_subparsers(dest="train_action", metavar="ACTION")
    e = sub.add_parser("export", help="write <name>.safetensors + <name>.json from a run",
                       description="Export a training run as a model card (weights at the best val loss).")
    e.add_argument("run_dir", help="the run directory (--out of galnet train)")
    e.add_argument("--name", required=True, help="model name, e.g. hsc-r")
    e.add_argument("--to", default=".", help="output directory (src/galnet/weights to ship it)")
    e.add_argument("--test", help="test split (default: <data>/test.h5 of the run, if present)")
    e.add_argument("--which", choices=("best", "last"), default="best", help="which weights")


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig.from_file(args.config) if getattr(args, "config", None) else TrainConfig()
    over = {}
    for name in _FIELDS:
        v = getattr(args, name, None)
        if v is not None and name not in ("command",):
            over[name] = v
    if "model_config" in over:
        try:
            over["model_config"] = json.loads(over["model_config"])
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--model-config is not valid JSON: {exc}") from exc
        if not isinstance(over["model_config"], dict):
            raise ConfigError(f"--model-config must be a JSON object, e.g. '{{\"hidden\": 128}}', got "
                              f"{args.model_config!r}")
    data = merge_overrides(cfg.to_dict(), over)  # a --model-config table overrides the file's key by key
    data["command"] = shlex.join(["galnet", *sys.argv[1:]]) if sys.argv and sys.argv[1:] else "galnet train"
    return TrainConfig.from_dict(data)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``galnet train``."""
    if getattr(args, "train_action", None) == "export":
        card = export_run(args.run_dir, args.name, args.to, test=args.test, which=args.which)
        print(f"wrote {card} and {card.with_suffix('.safetensors')}")
        return 0
    from .loop import train

    resume = args.resume
    if isinstance(resume, str):
        args.out = resume
        resume = True
    cfg = _config_from_args(args)
    if not resume:
        check_output_path(cfg.out, option="--out", directory=True)
        if not (cfg.data or cfg.on_the_fly):
            cfg.validate()  # the "give --data or --on-the-fly" error before anything else
        if cfg.data and not Path(cfg.data).is_dir():
            raise ConfigError(f"--data {cfg.data!r} is not a directory (it must hold train.h5 and val.h5)")
    hint = (f"continue from the last checkpoint with: galnet train --resume {cfg.out} (if no checkpoint "
            "was written yet, rerun the command)")
    args._interrupt_hint = hint
    summary = train(cfg, resume=bool(resume))
    print(json.dumps(summary))
    if summary.get("interrupted"):
        print(f"galnet train: interrupted at step {summary.get('steps')}, checkpoint saved; continue with: "
              f"galnet train --resume {cfg.out}", file=sys.stderr)
        return 130
    return 0


def export_run(run_dir: str | Path, name: str, to: str | Path, *, test: str | Path | None = None,
               which: str = "best") -> Path:
    """Write ``<to>/<name>.safetensors`` + ``<to>/<name>.json`` from a finished (or running) run.

    The card records the architecture and scalings, the training preset and seed (from the
    dataset's ``meta``), the exact training command and config, and metrics on the test split.

    Returns
    -------
    Path of the JSON card.
    """
    import torch

    from ..errors import ModelCardError
    from ..models import create_model, save_model
    from ..models.scaling import OutputScalingConfig
    from .loop import CHECKPOINT, _read_checkpoint_json, load_split, read_safetensors

    run_dir = Path(run_dir)
    ck = run_dir / f"{CHECKPOINT}.json"
    if not ck.is_file():
        raise ModelCardError(f"{run_dir}: not a training run (no {ck.name})")
    check_output_path(Path(to) / f"{name}.json", option="--to")
    state = _read_checkpoint_json(ck)
    try:
        cfg = TrainConfig.from_dict(state["config"])
        oscale = OutputScalingConfig(**state["output_scaling"])
        model = create_model(cfg.model, input_scaling=cfg.input_scaling or None, output_scaling=oscale,
                             **cfg.model_config)
    except (ConfigError, TypeError, KeyError) as exc:
        raise ModelCardError(f"{ck}: cannot rebuild the model ({exc})") from exc
    if which == "best" and (run_dir / "best.safetensors").is_file():
        weights, _ = read_safetensors(run_dir / "best.safetensors")
        try:
            best = json.loads((run_dir / "best.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelCardError(f"{run_dir / 'best.json'}: unreadable ({exc})") from exc
    else:
        tensors, _ = read_safetensors(run_dir / f"{CHECKPOINT}.safetensors", what="checkpoint")
        weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        best = {"epoch": state.get("epoch"), "val_loss": None}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ModelCardError(f"{run_dir}: the weights do not fit {cfg.model} "
                             f"({' '.join(str(exc).split())[:300]})") from exc
    model.eval()
    metrics: dict = {}
    calibration: dict = {}
    if model.config.uncertainty:
        from .calibrate import calibrate_errors

        val_path = Path(cfg.data) / "val.h5" if cfg.data else None
        if val_path is None or not val_path.is_file():
            raise ModelCardError(f"{run_dir}: calibrating the errors needs the validation split {val_path}")
        calibrate_errors(model, load_split(val_path, cfg.val_size))
        oscale = model.output_scaling.config
        calibration = {"split": str(val_path), "n": cfg.val_size, "error_scale": oscale.error_scale,
                       "error_scale_edges": oscale.error_scale_edges}
    test_path = Path(test) if test else (Path(cfg.data) / "test.h5" if cfg.data else None)
    if test_path is not None and test_path.is_file():
        metrics = _test_metrics(model, test_path)
    meta = state.get("meta") or {}
    init = _init_record(cfg.init)
    extra = {
        "training": {
            **({"init": init} if init else {}),
            "preset": meta.get("preset", cfg.on_the_fly),
            "seed": meta.get("seed"),
            "train_seed": cfg.seed,
            "dataset_meta": meta,
            "command": cfg.command,
            "config": cfg.to_dict(),
            "epochs_done": state["epoch"],
            "steps": state["step"],
            "weights_from_epoch": best.get("epoch"),
            "best_val_loss": best.get("val_loss"),
            "stopped_early": state.get("stopped_early", False),
            "torch_version": torch.__version__,
            **({"error_calibration": calibration} if calibration else {}),
        },
        "metrics": {"test": metrics} if metrics else {},
    }
    return save_model(model, to, name, extra=extra)


def _test_metrics(model, test_path: Path) -> dict:
    """Metrics of ``model`` on a test split: regression metrics per parameter, and the coverage of its
    predicted errors if it has an uncertainty head."""
    from .loop import evaluate_model, load_split
    from .metrics import regression_metrics

    split = load_split(test_path)
    _, pred = evaluate_model(model, split, device="cpu")
    metrics = {"split": str(test_path), "n": len(pred),
               "per_parameter": regression_metrics(split["params"].double().numpy(), pred)}
    if model.config.uncertainty:
        from .calibrate import coverage, predict_with_errors

        _, err = predict_with_errors(model, split)
        metrics["error_coverage"] = coverage(split["params"].double().numpy(), pred, err)
    return metrics


def _init_record(init: str | None) -> dict | None:
    """Which weights a fine-tuned run started from (card, its weights' sha256 and training command), read
    before an export overwrites them; None for a run trained from scratch."""
    if not init:
        return None
    from ..errors import ModelCardError
    from ..models import resolve_model_path

    try:
        init_card = json.loads(resolve_model_path(init).read_text())
        return {"card": init, "sha256": (init_card.get("weights") or {}).get("sha256"),
                "command": (init_card.get("training") or {}).get("command")}
    except (OSError, ValueError, ModelCardError):
        return {"card": init, "sha256": None}
