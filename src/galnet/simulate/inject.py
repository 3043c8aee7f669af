"""Simulated galaxies injected into real survey pixels (a background library of real HSC stamps).

Each stamp is one real background stamp of the library (:func:`galnet.data.hsc.background_stamps`: real
neighbours, real correlated noise, the coadd's variance, excluded pixels where the real data have none) plus
one simulated target galaxy drawn from the preset's priors, rendered by the one forward model with the
background's own PSF and given its own Poisson noise. The truth is the injected galaxy. Stamps keep the
background's σ map (``sigma_maps`` = √(variance + model / gain)); excluded pixels are 0 in ``images``
(what ``galnet predict`` feeds the network for masked pixels) and ``inf`` in ``sigma_maps``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputDataError
from .config import SimulationConfig
from .generate import draw_target_parameters

__all__ = ["inject_batch"]


def inject_batch(
    config: SimulationConfig,
    library: dict[str, np.ndarray],
    n: int,
    *,
    seed: int | np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Draw ``n`` stamps: a simulated target injected into a random real background stamp each.

    Parameters
    ----------
    config : SimulationConfig
        Priors, zero point, gain and stamp size (neighbours, PSF and noise settings are not used: the
        background brings its own).
    library : dict of ndarray
        :func:`galnet.data.hsc.read_background_library`'s arrays, at the preset's zero point and pixel scale.
    n : int
    seed : int or Generator

    Returns
    -------
    dict
        ``images`` (n, S, S) float32 counts (0 where excluded), ``psfs`` (n, P, P) float32, ``sky_sigma`` (n,)
        float32 (median σ of the valid pixels), ``params`` (n, 7) float64 truth, ``snr`` (n,) float32 (matched
        S/N of the target over the valid pixels), ``sigma_maps`` (n, S, S) float32 (inf where excluded),
        ``background`` (n,) int16 library row.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    size = config.stamp_size
    if library["images"].shape[1:] != (size, size):
        raise InputDataError(
            f"background stamps are {library['images'].shape[1:]}, the preset's stamps {size}x{size}"
        )
    if library["psfs"].shape[1:] != (config.psf_size, config.psf_size):
        raise InputDataError(
            f"background PSFs are {library['psfs'].shape[1:]}, the preset's "
            f"{config.psf_size}x{config.psf_size}"
        )
    params = draw_target_parameters(config, rng, n)
    rows = rng.integers(0, len(library["images"]), n)
    # the 8 symmetries of the square keep real noise real: more backgrounds from the same pixels
    sym = rng.integers(0, 8, n)
    back = np.stack([_symmetry(library["images"][r], s) for r, s in zip(rows, sym)])
    var = np.stack([_symmetry(library["variance"][r], s) for r, s in zip(rows, sym)]).astype(np.float64)
    psfs = np.stack([_symmetry(library["psfs"][r], s) for r, s in zip(rows, sym)]).astype(np.float32)
    from ..render import render_scene

    with torch.no_grad():
        model = render_scene(
            torch.as_tensor(params, dtype=torch.float64),
            np.arange(n),
            torch.as_tensor(psfs, dtype=torch.float64),
            shape=(size, size),
            zeropoint=config.zeropoint,
            wrap_tolerance=config.wrap_tolerance,
        ).numpy()
    valid = np.isfinite(back) & np.isfinite(var) & (var > 0)
    src_var = np.maximum(model, 0.0) / config.gain
    noise = rng.standard_normal(model.shape) * np.sqrt(src_var)
    images = np.where(valid, np.nan_to_num(back) + model + noise, 0.0)
    sig2 = np.where(valid, np.nan_to_num(var) + src_var, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.sqrt(np.where(valid, model**2 / sig2, 0.0).sum(axis=(1, 2)))
    sky = np.array([np.sqrt(np.median(v[m])) if m.any() else np.nan for v, m in zip(var, valid)])
    return {
        "images": images.astype(np.float32),
        "psfs": psfs,
        "sky_sigma": sky.astype(np.float32),
        "params": params,
        "snr": snr.astype(np.float32),
        "sigma_maps": np.sqrt(sig2).astype(np.float32),
        "background": rows.astype(np.int16),
    }


def _symmetry(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square (k: bit 0 flip x, bit 1 flip y, bit 2 transpose)."""
    if k & 4:
        a = a.T
    if k & 1:
        a = a[:, ::-1]
    if k & 2:
        a = a[::-1, :]
    return np.ascontiguousarray(a)


def write_injected_dataset(
    config: SimulationConfig,
    library_path,
    out_dir,
    n: int,
    split: tuple[float, float, float],
    seed: int,
    *,
    batch: int = 1024,
) -> dict:
    """Write train / val / test HDF5 splits of injected stamps (:func:`inject_batch`), one file per split.

    Deterministic for a given ``seed`` and batch size; a split file that exists with the same metadata is
    kept (a rerun after an interruption redoes only the missing splits). Returns ``{split: Path}``.
    """
    import json
    from pathlib import Path

    from .. import __version__
    from ..conventions import CONVENTIONS_VERSION
    from ..data import read_meta, write_split
    from ..data.hsc import read_background_library

    library, lib_meta = read_background_library(library_path, config.stamp_size)
    zp = lib_meta.get("zeropoint", config.zeropoint)
    if abs(float(zp) - config.zeropoint) > 1e-9:  # counts to the preset's zero point
        f = 10.0 ** (0.4 * (config.zeropoint - float(zp)))
        library = {**library, "images": library["images"] * f, "variance": library["variance"] * f * f}
    out = Path(out_dir)
    counts = np.floor(np.array(split) * n).astype(int)
    counts[0] += n - counts.sum()
    paths = {}
    first_id = 0
    for name, count, ss in zip(("train", "val", "test"), counts, np.random.SeedSequence(seed).spawn(3)):
        path = out / f"{name}.h5"
        meta = {
            "n": int(count),
            "split": name,
            "seed": int(seed),
            "preset": config.to_dict(),
            "zeropoint": config.zeropoint,
            "pixel_scale": config.pixel_scale,
            "gain": config.gain,
            "galnet_version": __version__,
            "conventions_version": CONVENTIONS_VERSION,
            "background_library": {"path": str(library_path), **lib_meta, "stamps": len(library["images"])},
        }
        if count == 0:
            continue
        if (
            path.exists()
            and read_meta(path).get("background_library")
            == json.loads(json.dumps(meta["background_library"]))
            and read_meta(path).get("n") == count
        ):
            paths[name] = path
            first_id += count
            continue
        rng = np.random.default_rng(ss)
        parts = [
            inject_batch(config, library, min(batch, count - s), seed=rng) for s in range(0, count, batch)
        ]
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        arrays["ids"] = np.arange(first_id, first_id + count, dtype=np.int64)
        meta["sky_sigma_median"] = float(np.median(arrays["sky_sigma"]))
        paths[name] = write_split(path, arrays, meta)
        first_id += count
    return paths
