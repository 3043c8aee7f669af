"""The training loop: Adam + Huber on standardised targets, LR schedule, early stopping, exact resume.

A run directory holds::

    config.json               the TrainConfig (also inside every checkpoint)
    checkpoint.safetensors    model + optimizer tensors + RNG states   } written atomically, every
    checkpoint.json           epoch, step, best val, schedule state... } epoch (and every N steps)
    best.safetensors/.json    model weights at the best validation loss
    metrics.csv               one row per epoch (train/val loss, LR, throughput, val metrics)

Reproducibility: the epoch's sample order is a pure function of ``(seed, epoch, rank)``
(``DistributedSampler``), augmentation draws from a dedicated ``torch.Generator`` whose state is
checkpointed together with torch's global RNG, and a mid-epoch checkpoint records how many batches
of the epoch are done. Resuming therefore replays exactly the same steps as an uninterrupted run
(bit-identical final weights on the same machine and thread count; see ``tests/test_train.py``).

Multi-GPU: launch the same command with ``torchrun --nproc_per_node=K``; ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` select DDP (NCCL on GPUs, gloo on CPU); ``batch_size`` stays the
global batch, only rank 0 writes files.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..conventions import wrap_pa
from ..data import read_arrays, read_meta
from ..errors import ConfigError, InputDataError
from ..io import atomic_write, atomic_write_text
from ..models import GalNet, create_model, fit_output_scaling
from ..models.scaling import N_OUTPUTS, OutputScalingConfig
from ..params import IX_PA, IX_X, IX_Y
from .config import TrainConfig
from .metrics import flatten_metrics, regression_metrics

__all__ = ["Trainer", "train", "load_split", "evaluate_model", "read_safetensors", "CHECKPOINT"]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
_SPLIT_KEYS = ("images", "psfs", "sky_sigma", "params")


# ============================================================================ data
def load_split(path: str | os.PathLike, limit: int | None = None) -> dict[str, torch.Tensor]:
    """Read one HDF5 split into memory as tensors.

    Parameters
    ----------
    path : path to ``train.h5`` / ``val.h5`` / ``test.h5``
    limit : int, optional
        Read only the first ``limit`` stamps.

    Returns
    -------
    dict with ``image`` (N, 61, 61) f32 counts, ``psf`` (N, 25, 25) f32, ``sky_sigma`` (N,) f32
    counts/px, ``params`` (N, 7) f32 catalog conventions, ``ids`` (N,) int64.

    Raises
    ------
    InputDataError
        Missing file / dataset, inconsistent lengths, non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path}: no such dataset file")
    try:
        arrs = read_arrays(str(path), start=0, stop=limit, keys=[*_SPLIT_KEYS, "ids"])
    except (OSError, KeyError, ValueError, TypeError) as exc:  # not HDF5, truncated, wrong layout
        if isinstance(exc, InputDataError):
            raise
        raise InputDataError(f"{path}: cannot read the dataset ({' '.join(str(exc).split())})") from exc
    missing = [k for k in _SPLIT_KEYS if k not in arrs]
    if missing:
        raise InputDataError(f"{path}: missing dataset(s) {missing}")
    n = len(arrs["params"])
    out = {
        "image": torch.from_numpy(np.ascontiguousarray(arrs["images"], dtype=np.float32)),
        "psf": torch.from_numpy(np.ascontiguousarray(arrs["psfs"], dtype=np.float32)),
        "sky_sigma": torch.from_numpy(np.ascontiguousarray(arrs["sky_sigma"], dtype=np.float32).reshape(-1)),
        "params": torch.from_numpy(np.ascontiguousarray(arrs["params"], dtype=np.float32)),
        "ids": torch.from_numpy(np.asarray(arrs.get("ids", np.arange(n)), dtype=np.int64)),
    }
    for k, v in out.items():
        if len(v) != n:
            raise InputDataError(f"{path}: {k} has {len(v)} rows, params has {n}")
    if n == 0:
        raise InputDataError(f"{path}: empty split")
    for k in ("image", "psf", "sky_sigma", "params"):
        bad = ~torch.isfinite(out[k].reshape(n, -1)).all(dim=1)
        if bad.any():
            raise InputDataError(f"{path}: {k} has non-finite values in {int(bad.sum())} row(s), "
                                 f"first row {int(bad.nonzero()[0, 0])}")
    if not bool((out["sky_sigma"] > 0).all()):
        raise InputDataError(f"{path}: sky_sigma must be > 0")
    return out


def _otf_batches(cfg: TrainConfig, seed: int, per_rank_batch: int, n_batches: int):
    """``n_batches`` batches of fresh simulated stamps (dicts of tensors) from the data stage."""
    from ..simulate import OnTheFlyDataset
    from ..simulate.config import load_preset

    ds = OnTheFlyDataset(load_preset(cfg.on_the_fly), seed, batch=per_rank_batch)
    pending: list[dict] = []
    done = 0
    for item in ds:
        img = item.get("image", item.get("images"))
        if torch.as_tensor(img).ndim == 2:  # single samples: collate
            pending.append(item)
            if len(pending) < per_rank_batch:
                continue
            item = {k: torch.stack([torch.as_tensor(p[k]) for p in pending]) for k in pending[0]}
            pending = []
        yield _as_batch(item)
        done += 1
        if done >= n_batches:
            return


def _as_batch(item: dict) -> dict[str, torch.Tensor]:
    def get(*names):
        for n in names:
            if n in item:
                v = item[n]
                return v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
        raise InputDataError(f"on-the-fly batch lacks {names[0]!r} (has {sorted(item)})")

    return {
        "image": get("image", "images").float(),
        "psf": get("psf", "psfs").float(),
        "sky_sigma": get("sky_sigma").float().reshape(-1),
        "params": get("params").float(),
    }


def _otf_split(cfg: TrainConfig, seed: int, n: int) -> dict[str, torch.Tensor]:
    bs = min(256, n)
    parts = list(_otf_batches(cfg, seed, bs, math.ceil(n / bs)))
    return {k: torch.cat([p[k] for p in parts])[:n] for k in parts[0]}


# ============================================================================ helpers
def _augment(batch: dict[str, torch.Tensor], gen: torch.Generator, size: int) -> dict[str, torch.Tensor]:
    """Random transpose and x/y flips (the 8 symmetries of the square), parameters transformed.

    Transpose swaps x and y and maps pa → 90° − pa; a flip in x maps x → (size + 1) − x and
    pa → −pa (likewise in y); PSFs are transformed with the image.
    """
    img, psf, p = batch["image"], batch["psf"], batch["params"].clone()
    b = img.shape[0]
    r = torch.rand(3, b, generator=gen).to(img.device) < 0.5
    t, fx, fy = r[0], r[1], r[2]
    m3 = t[:, None, None]
    img = torch.where(m3, img.transpose(-1, -2), img)
    psf = torch.where(m3, psf.transpose(-1, -2), psf)
    x, y = p[:, IX_X].clone(), p[:, IX_Y].clone()
    p[:, IX_X] = torch.where(t, y, x)
    p[:, IX_Y] = torch.where(t, x, y)
    p[:, IX_PA] = torch.where(t, 90.0 - p[:, IX_PA], p[:, IX_PA])
    img = torch.where(fx[:, None, None], img.flip(-1), img)
    psf = torch.where(fx[:, None, None], psf.flip(-1), psf)
    img = torch.where(fy[:, None, None], img.flip(-2), img)
    psf = torch.where(fy[:, None, None], psf.flip(-2), psf)
    p[:, IX_X] = torch.where(fx, (size + 1) - p[:, IX_X], p[:, IX_X])
    p[:, IX_Y] = torch.where(fy, (size + 1) - p[:, IX_Y], p[:, IX_Y])
    p[:, IX_PA] = torch.where(fx ^ fy, -p[:, IX_PA], p[:, IX_PA])
    p[:, IX_PA] = wrap_pa(p[:, IX_PA])
    return {**batch, "image": img, "psf": psf, "params": p}


def _loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Weighted mean over outputs of the per-output mean loss.

    pred (B, 8) standardised targets, or (B, 16) with their log sigmas (``gaussian_nll``); target (B, 8).
    """
    n_out = target.shape[-1]
    if cfg.loss == "gaussian_nll":
        mu, log_sigma = pred[:, :n_out], pred[:, n_out:].clamp(-12.0, 6.0)
        per = 0.5 * ((mu - target) * torch.exp(-log_sigma)) ** 2 + log_sigma
        if cfg.nll_beta > 0:
            per = per * torch.exp(2.0 * cfg.nll_beta * log_sigma).detach()
        return (per.mean(dim=0) * weights).sum() / weights.sum()
    pred = pred[:, :n_out]
    if cfg.loss == "huber":
        per = F.huber_loss(pred, target, reduction="none", delta=cfg.huber_delta)
    elif cfg.loss == "mse":
        per = F.mse_loss(pred, target, reduction="none")
    else:
        per = F.l1_loss(pred, target, reduction="none")
    return (per.mean(dim=0) * weights).sum() / weights.sum()


def _init_weights(name_or_path: str) -> tuple[dict[str, torch.Tensor], OutputScalingConfig]:
    """Weights and output scaling of a model card, to start a training run from (``TrainConfig.init``)."""
    from ..models import load_card

    model, card = load_card(name_or_path)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, OutputScalingConfig(**card["output_scaling"])


def _load_init(model: GalNet, state: dict[str, torch.Tensor], cfg: TrainConfig) -> None:
    """Copy ``state`` into ``model``; a new uncertainty head gets the old output layer for its means.

    The sigma rows of the output layer start with zero weights and bias ``ln(cfg.init_sigma)``.
    """
    own = model.state_dict()
    mismatched = {k for k in own if k in state and state[k].shape != own[k].shape}
    last = [k for k in own if k.startswith("head.") and k.endswith(".weight")][-1].rsplit(".", 1)[0]
    allowed = {f"{last}.weight", f"{last}.bias"}
    missing = sorted(set(own) - set(state))
    if missing or mismatched - allowed or set(state) - set(own):
        raise ConfigError(f"--init: the card's network does not match {cfg.model} {cfg.model_config}: "
                          f"missing {missing}, different shapes {sorted(mismatched)}")
    for key in mismatched:
        new = own[key].clone()
        new.zero_()
        new[:N_OUTPUTS] = state[key][:N_OUTPUTS]
        if key.endswith(".bias"):
            new[N_OUTPUTS:] = math.log(cfg.init_sigma)
        state = {**state, key: new}
    model.load_state_dict(state)


def _resolve_device(spec: str, local_rank: int) -> torch.device:
    """The torch device of ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...).

    Raises
    ------
    ConfigError
        An unknown device string, or CUDA asked for where there is none.
    """
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ConfigError(f"--device {spec!r} is not a device (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {spec!r}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda" and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {spec!r}: use auto, cpu, cuda or cuda:N")
    return dev


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluate_model(model: GalNet, split: dict[str, torch.Tensor], *, batch_size: int = 1024,
                   device: torch.device | str = "cpu", channels_last: bool = False,
                   cfg: TrainConfig | None = None) -> tuple[float, np.ndarray]:
    """Loss (with ``cfg``'s loss; NaN without cfg) and decoded predictions (N, 7) on a split."""
    device = torch.device(device)
    was = model.training
    model.eval()
    weights = torch.as_tensor(cfg.output_weights(), dtype=torch.float32, device=device) if cfg else None
    preds, loss_sum, n = [], 0.0, len(split["params"])
    for s in range(0, n, batch_size):
        b = _to({k: v[s:s + batch_size] for k, v in split.items() if k != "ids"}, device)
        out = model(b["image"], b["psf"], b["sky_sigma"])
        if cfg is not None:
            tgt = model.output_scaling.encode(b["params"], b["sky_sigma"])
            loss_sum += float(_loss(out, tgt, weights, cfg)) * len(out)
        preds.append(model.output_scaling.decode(out[:, :N_OUTPUTS], b["sky_sigma"]).double().cpu())
    model.train(was)
    return (loss_sum / n if cfg is not None else math.nan), torch.cat(preds).numpy()


def read_safetensors(
    path: str | os.PathLike, *, what: str = "weights"
) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a safetensors file; never unpickles anything.

    Parameters
    ----------
    path : path of a ``.safetensors`` file
    what : str
        What the file is, for the message (``"checkpoint"``, ``"weights"``).

    Returns
    -------
    tensors : dict name -> Tensor (CPU)
    metadata : dict of str (the file's ``__metadata__``; empty if none)

    Raises
    ------
    ConfigError
        Missing file, or not a valid safetensors file (a pickle, a truncated or garbage file);
        the message names the file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file is missing")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError, OSError ...
        raise ConfigError(f"{path}: not a valid safetensors {what} file ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]})") from exc
    return tensors, metadata


def _read_checkpoint_json(path: Path) -> dict:
    """``checkpoint.json`` of a run as a dict; a garbage or truncated file is a :class:`ConfigError`."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable checkpoint ({exc})") from exc
    need = ("config", "output_scaling", "param_groups", "token")
    if not isinstance(data, dict) or any(k not in data for k in need):
        raise ConfigError(f"{path}: not a galnet training checkpoint (needs keys {', '.join(need)})")
    return data


def _atomic_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ============================================================================ trainer
class Trainer:
    """One training run (see the module docstring). ``Trainer(cfg).run()`` or :func:`train`.

    Parameters
    ----------
    config : TrainConfig
    resume : bool
        Continue from ``<out>/checkpoint.*`` (the run's saved config is used; ``device``,
        ``threads`` and ``progress`` may differ).
    """

    def __init__(self, config: TrainConfig, *, resume: bool = False) -> None:
        self.out = Path(config.out)
        self.resume = resume
        if resume:
            ck = self.out / f"{CHECKPOINT}.json"
            if not ck.is_file():
                raise ConfigError(f"--resume: no checkpoint in {self.out} (expected {ck})")
            try:
                saved = TrainConfig.from_dict(_read_checkpoint_json(ck)["config"])
            except ConfigError as exc:
                raise ConfigError(f"{ck}: {exc}") from exc
            for k in ("device", "threads", "progress"):
                setattr(saved, k, getattr(config, k))
            saved.out = str(self.out)
            config = saved
        elif (self.out / f"{CHECKPOINT}.json").exists():
            raise ConfigError(f"{self.out} already holds a training run; pass --resume to continue it "
                              "or choose another --out")
        self.cfg = config.validate()
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.is_main = self.rank == 0
        self._stop_signal = False

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        self.device = _resolve_device(cfg.device, self.local_rank)
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                if self.device.type == "cuda":
                    torch.cuda.set_device(self.device)
                dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        if cfg.batch_size % self.world:
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by WORLD_SIZE {self.world}")
        self.per_rank_batch = cfg.batch_size // self.world
        torch.manual_seed(cfg.seed)
        fit_set = self._load_data()
        # ---- model
        self.state: dict[str, Any] = {
            "epoch": 0, "batch_in_epoch": 0, "step": 0, "best_val": math.inf, "best_epoch": -1,
            "bad_epochs": 0, "lr_factor": 1.0, "plateau_best": math.inf, "plateau_bad": 0,
            "running_loss": 0.0, "running_count": 0, "finished": False, "stopped_early": False,
            "elapsed_s": 0.0,
        }
        size = int(self.val["image"].shape[-1])
        ck_json = None
        init_state = None
        if self.resume:
            ck_path = self.out / f"{CHECKPOINT}.json"
            ck_json = _read_checkpoint_json(ck_path)
            try:
                oscale = OutputScalingConfig(**ck_json["output_scaling"])
            except (KeyError, TypeError) as exc:
                raise ConfigError(f"{ck_path}: bad output_scaling ({exc}); not a galnet checkpoint?") from exc
        elif cfg.init:
            init_state, oscale = _init_weights(cfg.init)
        else:
            oscale = fit_output_scaling(
                fit_set["params"].double().numpy(), fit_set["sky_sigma"].double().numpy(),
                stamp_size=size, zeropoint=float(self.meta.get("zeropoint", 27.0)),
            )
        self.model = create_model(cfg.model, input_scaling=cfg.input_scaling or None, output_scaling=oscale,
                                  **cfg.model_config).to(self.device)
        mcfg, psf_size = self.model.config, int(self.val["psf"].shape[-1])
        if self.train_data is not None and (
            tuple(self.train_data["image"].shape[1:]) != tuple(self.val["image"].shape[1:])
            or tuple(self.train_data["psf"].shape[1:]) != tuple(self.val["psf"].shape[1:])
        ):
            raise InputDataError(
                f"{cfg.data}: train.h5 stamps/PSFs {tuple(self.train_data['image'].shape[1:])}/"
                f"{tuple(self.train_data['psf'].shape[1:])} differ from val.h5's "
                f"{tuple(self.val['image'].shape[1:])}/{tuple(self.val['psf'].shape[1:])}"
            )
        if (mcfg.image_size, mcfg.psf_size) != (size, psf_size):
            raise ConfigError(
                f"the data has {size}x{size} stamps and {psf_size}x{psf_size} PSFs but the model expects "
                f"{mcfg.image_size} and {mcfg.psf_size}; set model_config image_size / psf_size"
            )
        if init_state is not None:
            _load_init(self.model, init_state, cfg)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.weight_decay > 0:
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 17 + self.rank)
        self.weights = torch.as_tensor(cfg.output_weights(), dtype=torch.float32, device=self.device)
        if ck_json is not None:
            self._load_checkpoint(ck_json)
        self.ddp = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            _atomic_json(self.out / "config.json", cfg.to_dict())

    def _load_data(self) -> dict[str, torch.Tensor]:
        """Read (or simulate) the validation split and the training data.

        Returns
        -------
        dict of Tensor: the set to fit the output scaling on (the training split, or a simulated set
        when training on the fly).
        """
        cfg = self.cfg
        if cfg.data:
            d = Path(cfg.data)
            self.meta = read_meta(d / "val.h5") if (d / "val.h5").is_file() else {}
            self.val = load_split(d / "val.h5", cfg.val_size)
        else:
            self.meta = {"preset": cfg.on_the_fly, "seed": cfg.seed}
            self.val = _otf_split(cfg, seed=cfg.seed * 7919 + 999_983, n=cfg.val_size or 2048)
        if cfg.on_the_fly:
            self.train_data = None
            n_steps = cfg.steps_per_epoch or max(1, (cfg.train_size or 160_000) // cfg.batch_size)
            self.steps_per_epoch = n_steps
            return _otf_split(cfg, seed=cfg.seed * 7919 + 424_242, n=4096)
        else:
            self.train_data = load_split(Path(cfg.data) / "train.h5", cfg.train_size)
            self.meta = read_meta(Path(cfg.data) / "train.h5") or self.meta
            n = len(self.train_data["params"])
            from torch.utils.data import DistributedSampler

            self.sampler = DistributedSampler(range(n), num_replicas=self.world, rank=self.rank, shuffle=True,
                                              seed=cfg.seed, drop_last=True)
            self.steps_per_epoch = max(1, len(self.sampler) // self.per_rank_batch)
            return self.train_data

    # ---------------------------------------------------------------- checkpoints
    def _save_checkpoint(self) -> None:
        if not self.is_main:
            return
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().cpu().contiguous()
                                            for k, v in self.model.state_dict().items()}
        osd = self.opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, st in osd["state"].items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(pid), {})[k] = v
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.aug"] = self.aug_gen.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        token = f"{self.state['epoch']}:{self.state['batch_in_epoch']}:{self.state['step']}"
        atomic_write(self.out / f"{CHECKPOINT}.safetensors",
                     lambda tmp: save_file(tensors, str(tmp), metadata={"token": token}))
        _atomic_json(self.out / f"{CHECKPOINT}.json", {
            **self.state, "token": token, "param_groups": osd["param_groups"], "optim_scalars": scalars,
            "config": self.cfg.to_dict(), "output_scaling": asdict(self.model.output_scaling.config),
            "architecture": self.cfg.model, "galnet_version": __version__, "meta": self.meta,
        })

    def _load_checkpoint(self, ck: dict) -> None:
        path = self.out / f"{CHECKPOINT}.safetensors"
        tensors, metadata = read_safetensors(path, what="checkpoint")
        if metadata.get("token") != ck.get("token"):
            raise ConfigError(f"{path} and {CHECKPOINT}.json do not belong together (interrupted write?)")
        try:
            self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]
            raise ConfigError(f"{path}: the weights do not fit {self.cfg.model}: {detail}") from exc
        if "rng.torch" not in tensors or "rng.aug" not in tensors:
            raise ConfigError(f"{path}: not a galnet training checkpoint (no RNG states)")
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v.to(self.device) if name != "step" else v
        for pid, d in ck.get("optim_scalars", {}).items():
            state.setdefault(int(pid), {}).update(d)
        try:
            self.opt.load_state_dict({"state": state, "param_groups": ck["param_groups"]})
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise ConfigError(f"{path}: optimizer state does not fit the model ({exc})") from exc
        torch.set_rng_state(tensors["rng.torch"])
        self.aug_gen.set_state(tensors["rng.aug"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        for k in self.state:
            if k in ck:
                self.state[k] = ck[k]

    def _save_best(self, val_loss: float, metrics: dict) -> None:
        if not self.is_main:
            return
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write(self.out / "best.safetensors", lambda tmp: save_file(state, str(tmp)))
        _atomic_json(self.out / "best.json", {"epoch": self.state["epoch"], "val_loss": val_loss,
                                              "val_metrics": metrics})

    # ---------------------------------------------------------------- schedule
    def _lr(self) -> float:
        cfg, step = self.cfg, self.state["step"]
        base = cfg.lr * self.state["lr_factor"]
        warm = min(cfg.warmup_steps, max(1, cfg.epochs * self.steps_per_epoch // 10))
        if cfg.warmup_steps and step < warm:
            return base * (step + 1) / warm
        if cfg.schedule == "cosine":
            total = max(1, cfg.epochs * self.steps_per_epoch - warm)
            prog = min(1.0, (step - warm) / total)
            return base * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog)))
        return base

    # ---------------------------------------------------------------- loop
    def _epoch_batches(self, epoch: int):
        if self.train_data is None:
            seed = (self.cfg.seed * 1_000_003 + epoch) * max(1, self.world) + self.rank + 1
            yield from _otf_batches(self.cfg, seed, self.per_rank_batch, self.steps_per_epoch)
            return
        self.sampler.set_epoch(epoch)
        idx = torch.as_tensor(list(self.sampler), dtype=torch.long)
        for b in range(self.steps_per_epoch):
            sel = idx[b * self.per_rank_batch:(b + 1) * self.per_rank_batch]
            yield {k: v[sel] for k, v in self.train_data.items() if k != "ids"}

    def _write_csv_row(self, row: dict) -> None:
        if not self.is_main:
            return
        path = self.out / "metrics.csv"
        rows = []
        if path.is_file():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < row["epoch"]]
        rows.append(row)
        keys = list(row)

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)

        atomic_write(path, write)

    def _on_signal(self, signum, frame) -> None:  # pragma: no cover - exercised by hand
        log.warning("signal %s: checkpointing after this step and stopping (again to abort)", signum)
        self._stop_signal = True
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    def run(self, *, stop_after_steps: int | None = None) -> dict:
        """Train; returns a summary dict. ``stop_after_steps`` simulates a kill (checkpoint and return)."""
        threads_before = torch.get_num_threads()
        try:
            return self._run(stop_after_steps)
        finally:
            torch.set_num_threads(threads_before)

    def _run(self, stop_after_steps: int | None) -> dict:
        self._setup()
        cfg, st = self.cfg, self.state
        if st["finished"]:
            log.info("run in %s is already finished", self.out)
            return self._summary()
        tb = self._open_tensorboard()
        old_handlers = self._catch_signals() if stop_after_steps is None else {}
        try:
            while st["epoch"] < cfg.epochs:
                epoch = st["epoch"]
                done = self._train_epoch(epoch, stop_after_steps)
                if done is None:
                    return {**self._summary(), "interrupted": True}
                if not self._end_epoch(epoch, *done, tb):
                    break
                self._save_checkpoint()
                if self._stop_signal:
                    return {**self._summary(), "interrupted": True}
            st["finished"] = True
            self._save_checkpoint()
            return self._summary()
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            if tb is not None:
                tb.close()

    def _open_tensorboard(self):
        """A TensorBoard ``SummaryWriter`` on the main rank if TensorBoard is installed, else None."""
        if not self.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter(str(self.out / "tensorboard"))
        except Exception:  # noqa: BLE001 - TensorBoard is optional
            return None

    def _catch_signals(self) -> dict:
        """Checkpoint-and-stop on SIGINT / SIGTERM; returns the previous handlers."""
        old_handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        return old_handlers

    def _step(self, batch: dict[str, torch.Tensor], size: int) -> tuple[float, int, float]:
        """One optimizer step on a batch; returns the loss, the batch length and the learning rate."""
        batch = _to(batch, self.device)
        if self.cfg.augment:
            batch = _augment(batch, self.aug_gen, size)
        lr = self._lr()
        for g in self.opt.param_groups:
            g["lr"] = lr
        target = self.model.output_scaling.encode(batch["params"], batch["sky_sigma"])
        out = self.ddp(batch["image"], batch["psf"], batch["sky_sigma"])
        loss = _loss(out, target, self.weights, self.cfg)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise InputDataError(f"training loss became {lv} at step {self.state['step']}; lower --lr")
        return lv, len(out), lr

    def _train_epoch(self, epoch: int, stop_after_steps: int | None) -> tuple[int, float, float] | None:
        """The (rest of the) training steps of an epoch, checkpointing as configured.

        Returns
        -------
        (samples seen, training time in s, start of the epoch's unaccounted time), or None when the
        run stops here (``stop_after_steps`` reached or a signal; a checkpoint has been written).
        """
        cfg, st = self.cfg, self.state
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        self.model.train()
        bar = tqdm(total=self.steps_per_epoch, initial=st["batch_in_epoch"],
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True,
                   disable=not (cfg.progress and self.is_main))
        size = int(self.val["image"].shape[-1])
        n_seen = 0
        for b, batch in enumerate(self._epoch_batches(epoch)):
            if b < st["batch_in_epoch"]:
                continue  # already done before the resume
            lv, n, lr = self._step(batch, size)
            st["step"] += 1
            st["batch_in_epoch"] = b + 1
            st["running_loss"] += lv * n
            st["running_count"] += n
            n_seen += n
            bar.update(1)
            bar.set_postfix(loss=f"{st['running_loss'] / st['running_count']:.4f}", lr=f"{lr:.2e}")
            killed = stop_after_steps is not None and st["step"] >= stop_after_steps
            stop = self._stop_signal or killed
            if stop or (cfg.checkpoint_every_steps and st["step"] % cfg.checkpoint_every_steps == 0):
                st["elapsed_s"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                self._save_checkpoint()
            if stop:
                bar.close()
                return None
        bar.close()
        return n_seen, time.perf_counter() - t0, t0

    def _end_epoch(self, epoch: int, n_seen: int, train_time: float, t0: float, tb) -> bool:
        """Validate, update the best model and the schedule, log a metrics row; False to stop training."""
        cfg, st = self.cfg, self.state
        # every rank evaluates the whole val set: identical decisions
        val_loss, pred = evaluate_model(self.model, self.val, device=self.device, cfg=cfg,
                                        batch_size=max(512, self.per_rank_batch))
        metrics = regression_metrics(self.val["params"].double().numpy(), pred)
        train_loss = st["running_loss"] / max(1, st["running_count"])
        st["epoch"] = epoch + 1
        if val_loss < st["best_val"] - cfg.min_delta:
            st["best_val"], st["best_epoch"], st["bad_epochs"] = val_loss, epoch + 1, 0
            self._save_best(val_loss, metrics)
        else:
            st["bad_epochs"] += 1
        if cfg.schedule == "plateau":
            if val_loss < st["plateau_best"] - cfg.min_delta:
                st["plateau_best"], st["plateau_bad"] = val_loss, 0
            else:
                st["plateau_bad"] += 1
                if st["plateau_bad"] >= cfg.plateau_patience:
                    st["lr_factor"] *= cfg.plateau_factor
                    st["plateau_bad"] = 0
        st["elapsed_s"] += time.perf_counter() - t0
        row = {"epoch": epoch + 1, "step": st["step"], "lr": self._lr(), "train_loss": train_loss,
               "val_loss": val_loss, "epoch_time_s": round(time.perf_counter() - t0, 3),
               "train_samples_per_s": round(n_seen * self.world / max(train_time, 1e-9), 1),
               **flatten_metrics(metrics, "val_")}
        self._report_epoch(row, metrics, tb)
        st["running_loss"], st["running_count"], st["batch_in_epoch"] = 0.0, 0, 0
        if cfg.early_stopping_patience and st["bad_epochs"] >= cfg.early_stopping_patience:
            st["stopped_early"] = True
            return False
        return st["epoch"] < cfg.epochs

    def _report_epoch(self, row: dict, metrics: dict, tb) -> None:
        """Write an epoch's metrics row to metrics.csv, TensorBoard, the log and (``progress``) stdout."""
        cfg, st = self.cfg, self.state
        self._write_csv_row(row)
        if tb is not None:
            for k, v in row.items():
                if isinstance(v, float) and math.isfinite(v):
                    tb.add_scalar(k, v, row["epoch"])
        log.info("epoch %d/%d: train %.4f val %.4f (best %.4f @ %d), %.0f samples/s", row["epoch"],
                 cfg.epochs, row["train_loss"], row["val_loss"], st["best_val"], st["best_epoch"],
                 row["train_samples_per_s"])
        if self.is_main and cfg.progress:
            print(f"epoch {row['epoch']}/{cfg.epochs}  train {row['train_loss']:.4f}  "
                  f"val {row['val_loss']:.4f}  re NMAD {metrics['re']['nmad']:.3f}  "
                  f"n NMAD {metrics['n']['nmad']:.3f}  "
                  f"{row['train_samples_per_s']:.0f} samples/s  {row['epoch_time_s']:.0f} s",
                  flush=True)

    def _summary(self) -> dict:
        st = self.state
        keys = ("best_val", "best_epoch", "stopped_early", "finished")
        return {"out": str(self.out), "epochs_done": st["epoch"], "steps": st["step"],
                **{k: st[k] for k in keys}, "interrupted": False}


def train(config: TrainConfig, *, resume: bool = False, stop_after_steps: int | None = None) -> dict:
    """Run (or resume) training; see :class:`Trainer`."""
    return Trainer(config, resume=resume).run(stop_after_steps=stop_after_steps)
