"""Model cards: ``<name>.safetensors`` (weights) + ``<name>.json`` (everything else). No pickle.

The JSON card holds the architecture name and config, the input / output scalings, the
conventions and galnet versions, the training provenance (preset, seed, exact command, config),
test metrics, parameter count and MACs, and the SHA-256 of the weights file. A model is rebuilt
from these two files alone (:func:`load_card`); :func:`load_model` wraps it in a :class:`Predictor`.

Card format (``format = "galnet-model-card"``, ``card_version = 1``)::

    {"format": "galnet-model-card", "card_version": 1, "name": "hsc-r",
     "architecture": "galnet-psf", "network": {...NetworkConfig...},
     "input_scaling": {...}, "output_scaling": {"mean": [6], "std": [6], "stamp_size": 61, ...},
     "inputs": {"image": [61, 61], "psf": [25, 25], "sky_sigma": "counts/px"},
     "outputs": ["x", "y", "mag", "re", "n", "q", "pa"], "conventions_version": "1",
     "galnet_version": "0.1.0", "n_params": ..., "macs_per_galaxy": ...,
     "weights": {"file": "hsc-r.safetensors", "sha256": "..."},
     "training": {"preset": ..., "seed": ..., "command": ..., "config": {...}, "meta": {...}},
     "metrics": {...}}
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..conventions import CONVENTIONS_VERSION, wrap_pa
from ..errors import InputDataError, ModelCardError
from ..io import atomic_write, atomic_write_text
from ..params import IX_PA, IX_X, IX_Y, PARAMETER_NAMES, PARAMETERS
from .networks import GalNet, _Decoded, count_macs, count_parameters
from .registry import create_model

__all__ = [
    "CARD_FORMAT", "CARD_VERSION", "save_model", "load_card", "load_model", "resolve_model_path", "Predictor",
    "export_onnx",
]

CARD_FORMAT = "galnet-model-card"
CARD_VERSION = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(model: GalNet, directory: str | os.PathLike, name: str, *, extra: dict | None = None) -> Path:
    """Write ``<directory>/<name>.safetensors`` and ``<directory>/<name>.json``.

    Parameters
    ----------
    model : GalNet
    directory : path
        Created if missing.
    name : str
        Model name (file stem), e.g. ``"hsc-r"``.
    extra : dict, optional
        More card entries (``training``, ``metrics`` ...), JSON-serialisable.

    Returns
    -------
    Path of the JSON card.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / f"{name}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": CARD_FORMAT, "name": name}
    atomic_write(weights, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    card = {
        "format": CARD_FORMAT,
        "card_version": CARD_VERSION,
        "name": name,
        "architecture": getattr(model, "architecture", "galnet-psf"),
        **model.describe(),
        "inputs": {
            "image": [model.config.image_size, model.config.image_size],
            "psf": [model.config.psf_size, model.config.psf_size],
            "image_units": "counts, sky-subtracted",
            "psf_units": "unit-sum effective PSF (pixel response included)",
            "sky_sigma_units": "counts / pixel",
        },
        "outputs": list(PARAMETER_NAMES),
        "conventions_version": CONVENTIONS_VERSION,
        "galnet_version": __version__,
        "n_params": count_parameters(model),
        "macs_per_galaxy": count_macs(model),
        "weights": {"file": weights.name, "sha256": _sha256(weights)},
    }
    card.update(_finite_or_none(extra or {}))
    path = directory / f"{name}.json"
    atomic_write_text(path, json.dumps(card, indent=2, default=_json_default, allow_nan=False) + "\n")
    return path


def _finite_or_none(obj):
    """Replace NaN / inf floats (not valid JSON) by None, recursively."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """The JSON card of a shipped model name (``"hsc-r"``) or of a path (stem, .json or .safetensors).

    Raises
    ------
    ModelCardError
        If neither a file nor a shipped model of that name exists.
    """
    p = Path(name_or_path)
    candidates = [p] if p.suffix == ".json" else [p.with_suffix(".json"), Path(str(p) + ".json")]
    for c in candidates:
        if c.is_file():
            return c
    if p.is_dir():
        found = sorted(p.glob("*.json"))
        cards = [f for f in found if f.with_suffix(".safetensors").is_file()]
        if len(cards) == 1:
            return cards[0]
    shipped = resources.files("galnet") / "weights" / f"{p.name}.json"
    if shipped.is_file():
        return Path(str(shipped))
    available = []
    wdir = resources.files("galnet") / "weights"
    if wdir.is_dir():
        available = sorted(f.name[:-5] for f in wdir.iterdir() if f.name.endswith(".json"))
    raise ModelCardError(
        f"no model card for {str(name_or_path)!r}: not a file (tried {', '.join(map(str, candidates))}) "
        f"and not a shipped model (shipped: {', '.join(available) or 'none'})"
    )


def load_card(name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu",
              require_checksum: bool = False) -> tuple[GalNet, dict]:
    """Rebuild a model from its JSON card and safetensors weights alone.

    Parameters
    ----------
    name_or_path : str or path
        Shipped model name or card path (:func:`resolve_model_path`).
    device : str or torch.device
    require_checksum : bool
        Refuse a card without a ``weights.sha256`` checksum (its weights cannot be verified); without it
        such a card is accepted, and a checksum that is present is always verified.

    Returns
    -------
    model : GalNet, in eval mode, on ``device``
    card : dict

    Raises
    ------
    ModelCardError
        Missing/corrupt files, wrong format, incompatible conventions, weight mismatch.
    """
    from safetensors.torch import load_file

    path = resolve_model_path(name_or_path)
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelCardError(f"{path}: cannot read the model card: {exc}") from exc
    if not isinstance(card, dict):
        raise ModelCardError(f"{path}: not a galnet model card (a JSON {type(card).__name__})")
    listed = card.get("weights")
    if require_checksum and not (isinstance(listed, dict) and listed.get("sha256")):
        raise ModelCardError(
            f"{path}: the model card has no weights sha256 checksum, so its weights cannot be verified; "
            "pass --allow-unverified-model (allow_unverified_model=True) to use it anyway"
        )
    if card.get("format") != CARD_FORMAT:
        raise ModelCardError(f"{path}: not a galnet model card (format={card.get('format')!r})")
    if int(card.get("card_version", -1)) > CARD_VERSION:
        raise ModelCardError(
            f"{path}: card version {card['card_version']} is newer than supported ({CARD_VERSION})"
        )
    if str(card.get("conventions_version")) != CONVENTIONS_VERSION:
        raise ModelCardError(
            f"{path}: model made with conventions version {card.get('conventions_version')!r}, "
            f"this galnet uses {CONVENTIONS_VERSION!r}"
        )
    weights = path.parent / card.get("weights", {}).get("file", path.with_suffix(".safetensors").name)
    if not weights.is_file():
        raise ModelCardError(f"{path}: weights file {weights} is missing")
    sha = card.get("weights", {}).get("sha256")
    if sha and _sha256(weights) != sha:
        raise ModelCardError(f"{weights}: SHA-256 does not match the card {path} (file changed or corrupt)")
    try:
        model = create_model(
            card["architecture"],
            input_scaling=card["input_scaling"],
            output_scaling=card["output_scaling"],
            **card["network"],
        )
    except (KeyError, TypeError) as exc:
        raise ModelCardError(f"{path}: incomplete model card ({exc})") from exc
    try:  # safetensors: a pickle or garbage file is refused, never unpickled
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError ...
        raise ModelCardError(f"{weights}: not a valid safetensors weights file ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]})") from exc
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise ModelCardError(f"{weights}: weights do not fit {card['architecture']} "
                             f"({' '.join(str(exc).split())[:300]})") from exc
    if missing or unexpected:
        raise ModelCardError(f"{weights}: weights do not fit {card['architecture']}: missing {missing}, "
                             f"unexpected {unexpected}")
    model.eval().to(device)
    return model, card


class Predictor:
    """Batched inference in catalog conventions.

    Parameters
    ----------
    model : GalNet
    card : dict
    device : str or torch.device
    backend : {"torch", "onnx"}
        ``"onnx"`` exports the decoded model with ``torch.onnx.export(dynamo=True)`` and runs it
        with ONNX Runtime (CPU; ≈ 2× faster than torch here); needs ``onnxruntime``.
    channels_last : bool
        Use channels_last memory format in torch (faster on CPU).
    num_threads : int, optional
        Intra-op threads for ONNX Runtime (default: torch's).
    symmetries : {1, 4, 8}
        Test-time symmetry averaging: run the network on this many symmetric copies of each stamp (and its
        PSF) — 4: the x and y flips; 8: also the transposes (the 8 symmetries of the square, which training
        augments with) — map each answer back and average (x, y, mag, q arithmetically, re and n
        geometrically, pa on the doubled-angle circle; errors: the mean of the copies' errors, which the
        averaging makes slightly conservative). Costs that many network passes.
    """

    def __init__(self, model: GalNet, card: dict, *, device="cpu", backend: str = "torch",
                 channels_last: bool = True, num_threads: int | None = None, symmetries: int = 1) -> None:
        if backend not in ("torch", "onnx"):
            raise ModelCardError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        if symmetries not in (1, 4, 8):
            raise ModelCardError(f"symmetries must be 1, 4 or 8, got {symmetries!r}")
        self.symmetries = int(symmetries)
        self.card = card
        self.device = torch.device(device)
        self.backend = backend
        self.model = model.eval().to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.image_size = model.config.image_size
        self.psf_size = model.config.psf_size
        self._session = None
        if backend == "onnx":
            self._session = _onnx_session(model, num_threads or torch.get_num_threads())

    @property
    def name(self) -> str:
        return str(self.card.get("name", "?"))

    def _check(self, images, psfs, sky_sigma) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        def as_np(a) -> np.ndarray:
            return np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float32)

        images, psfs, sky = as_np(images), as_np(psfs), as_np(sky_sigma)
        s, p = self.image_size, self.psf_size
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3 or images.shape[1:] != (s, s):
            raise InputDataError(f"images must have shape (B, {s}, {s}) (counts), got {images.shape}")
        b = images.shape[0]
        if psfs.ndim == 2:
            psfs = np.array(np.broadcast_to(psfs, (b, *psfs.shape)))
        if psfs.ndim != 3 or psfs.shape[1:] != (p, p) or psfs.shape[0] != b:
            raise InputDataError(f"psfs must have shape ({p}, {p}) or ({b}, {p}, {p}), got {psfs.shape}")
        sky = np.full(b, sky, dtype=np.float32) if sky.ndim == 0 else sky
        if sky.shape != (b,):
            raise InputDataError(f"sky_sigma must be a scalar or have shape ({b},), got {sky.shape}")
        for what, arr in (("images", images), ("psfs", psfs), ("sky_sigma", sky)):
            bad = ~np.isfinite(arr.reshape(b, -1)).all(axis=1)
            if bad.any():
                raise InputDataError(
                    f"{what}: {int(bad.sum())} row(s) contain NaN or inf (first: row "
                    f"{int(np.flatnonzero(bad)[0])}); mask or inpaint bad pixels first"
                )
        if not (sky > 0).all():
            first = int(np.flatnonzero(~(sky > 0))[0])
            raise InputDataError(f"sky_sigma must be > 0 counts/px; row {first} is not")
        if not (psfs.reshape(b, -1).sum(axis=1) > 0).all():
            raise InputDataError("psfs: every PSF must have a positive sum")
        return images, psfs, sky

    @property
    def has_errors(self) -> bool:
        """Whether the network predicts per-galaxy errors (an uncertainty head)."""
        return bool(self.model.config.uncertainty)

    def predict(self, images, psfs, sky_sigma, *, batch_size: int = 512) -> np.ndarray:
        """Measure galaxies.

        Parameters
        ----------
        images : array or Tensor, shape (B, 61, 61) or (61, 61), counts (sky-subtracted)
        psfs : array or Tensor, shape (B, 25, 25) or (25, 25), unit-sum effective PSF(s)
        sky_sigma : float or array, shape (B,), sky noise in counts / pixel
        batch_size : int

        Returns
        -------
        ndarray, shape (B, 7), float64: ``x, y, mag, re, n, q, pa`` in catalog conventions
        (x, y 1-based stamp pixels, mag at the training zero point, re semi-major pixels,
        0 < q ≤ 1, pa degrees CCW from +y in [-90, 90)).

        Raises
        ------
        InputDataError
            Wrong shapes, NaN/inf, non-positive sky sigma or PSF sum.
        """
        return self.predict_with_errors(images, psfs, sky_sigma, batch_size=batch_size)[0]

    def predict_with_errors(
        self, images, psfs, sky_sigma, *, batch_size: int = 512
    ) -> tuple[np.ndarray, np.ndarray]:
        """Measure galaxies with per-galaxy 1-sigma errors.

        Parameters are those of :meth:`predict`.

        Returns
        -------
        params : ndarray, shape (B, 7), float64
            As :meth:`predict`.
        errors : ndarray, shape (B, 7), float64
            Calibrated 1-sigma errors of ``x, y`` (pixels), ``mag``, ``re`` (pixels), ``n``, ``q``, ``pa``
            (degrees); all NaN for a network without an uncertainty head (:attr:`has_errors`).
        """
        images, psfs, sky = self._check(images, psfs, sky_sigma)
        if self.symmetries == 1:
            return self._predict_once(images, psfs, sky, batch_size)
        size = images.shape[-1]
        params, errors = [], []
        for transpose in (False, True)[: self.symmetries // 4]:
            for flip_x in (False, True):
                for flip_y in (False, True):
                    img, psf = images, psfs
                    if transpose:
                        img, psf = img.swapaxes(-1, -2), psf.swapaxes(-1, -2)
                    if flip_x:
                        img, psf = img[..., ::-1], psf[..., ::-1]
                    if flip_y:
                        img, psf = img[..., ::-1, :], psf[..., ::-1, :]
                    p, e = self._predict_once(np.ascontiguousarray(img), np.ascontiguousarray(psf), sky,
                                              batch_size)
                    if flip_y:
                        p[:, IX_Y] = (size + 1) - p[:, IX_Y]
                        p[:, IX_PA] = -p[:, IX_PA]
                    if flip_x:
                        p[:, IX_X] = (size + 1) - p[:, IX_X]
                        p[:, IX_PA] = -p[:, IX_PA]
                    if transpose:
                        p[:, [IX_X, IX_Y]] = p[:, [IX_Y, IX_X]]
                        e[:, [IX_X, IX_Y]] = e[:, [IX_Y, IX_X]]
                        p[:, IX_PA] = 90.0 - p[:, IX_PA]
                    params.append(p)
                    errors.append(e)
        return _average_symmetric(np.stack(params)), np.mean(np.stack(errors), axis=0)

    def _predict_once(self, images: np.ndarray, psfs: np.ndarray, sky: np.ndarray,
                      batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        n_par = len(PARAMETER_NAMES)
        out = np.full((images.shape[0], 2 * n_par), np.nan, dtype=np.float64)
        for start in range(0, images.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            if self._session is not None:
                res = self._session.run(None, {"image": np.ascontiguousarray(images[sl]),
                                               "psf": np.ascontiguousarray(psfs[sl]),
                                               "sky_sigma": np.ascontiguousarray(sky[sl])})[0]
            else:
                with torch.inference_mode():
                    res = self.model.predict_params_and_errors(
                        torch.from_numpy(np.ascontiguousarray(images[sl])).to(self.device),
                        torch.from_numpy(np.ascontiguousarray(psfs[sl])).to(self.device),
                        torch.from_numpy(np.ascontiguousarray(sky[sl])).to(self.device),
                    ).cpu().numpy()
            out[sl, : res.shape[1]] = res
        return out[:, :n_par], out[:, n_par:]


def _average_symmetric(params: np.ndarray) -> np.ndarray:
    """Average (K, B, 7) answers of K symmetric copies.

    By the parameter's network transform (:data:`galnet.params.PARAMETERS`): ``log10`` parameters (re, n)
    geometrically, ``axial`` ones (pa) on the doubled-angle circle, the others (x, y, mag, q) arithmetically.
    """
    out = params.mean(axis=0)
    for j, spec in enumerate(PARAMETERS):
        if spec.net_transform == "log10":
            out[:, j] = np.exp(np.log(params[:, :, j]).mean(axis=0))
        elif spec.net_transform == "axial":
            two = np.deg2rad(2.0 * params[:, :, j])
            mean = np.arctan2(np.sin(two).mean(axis=0), np.cos(two).mean(axis=0))
            out[:, j] = wrap_pa(0.5 * np.rad2deg(mean))
    return out


def export_onnx(model: GalNet, path: str | os.PathLike) -> Path:
    """Export the decoded model to ONNX, dynamic batch.

    Inputs ``image`` (B, 61, 61), ``psf`` (B, 25, 25), ``sky_sigma`` (B,); output ``params``: (B, 7), or
    (B, 14) (parameters, then errors) for a network with an uncertainty head.
    """
    import warnings

    model = model.eval().cpu()
    dec = _Decoded(model).eval()
    s, p = model.config.image_size, model.config.psf_size
    args = (torch.zeros(4, s, s), torch.full((4, p, p), 1.0 / p**2), torch.ones(4))
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import onnxscript  # noqa: F401  (the dynamo exporter needs it)
        except ImportError:
            onnxscript = None
        if onnxscript is not None:
            prog = torch.onnx.export(
                dec, args, dynamo=True, input_names=["image", "psf", "sky_sigma"], output_names=["params"],
                dynamic_shapes={"image": {0: batch}, "psf": {0: batch}, "sky_sigma": {0: batch}},
                verbose=False,
            )
            prog.save(str(path))
        else:  # TorchScript exporter (the network has no op it cannot handle)
            torch.onnx.export(
                dec, args, str(path), dynamo=False, input_names=["image", "psf", "sky_sigma"],
                output_names=["params"], opset_version=17,
                dynamic_axes={"image": {0: "batch"}, "psf": {0: "batch"}, "sky_sigma": {0: "batch"}},
            )
    return Path(path)


def _onnx_session(model: GalNet, threads: int):
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ModelCardError("backend='onnx' needs onnxruntime (pip install galnet[onnx])") from exc
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def load_model(name_or_path: str | os.PathLike = "hsc-r", *, device: str | torch.device = "cpu",
               backend: str = "torch", channels_last: bool = True, symmetries: int = 1) -> Predictor:
    """Load a shipped model (``"hsc-r"``) or a card path as a :class:`Predictor`.

    Examples
    --------
    >>> pred = load_model("runs/hsc-r/export/hsc-r.json")            # doctest: +SKIP
    >>> params = pred.predict(images, psf, sky_sigma)                 # doctest: +SKIP
    """
    model, card = load_card(name_or_path, device=device)
    return Predictor(model, card, device=device, backend=backend, channels_last=channels_last,
                     symmetries=symmetries)
