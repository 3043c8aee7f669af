"""Write a simulated dataset: sharded, parallel, resumable, reproducible.

Layout of ``out_dir``::

    config.json            the SimulationConfig (JSON) and the run's seed / sizes
    shards/<split>-NNNNN.h5 finished shards (removed after the merge unless keep_shards)
    train.h5, val.h5, test.h5   the merged splits (schema: galnet.data.h5)

Reproducibility: shard ``k`` of split ``s`` is drawn from
``np.random.SeedSequence(seed, spawn_key=(s, k))``, so the arrays depend only on
(config, seed, n, split, shard_size), not on the number of workers nor on interruptions.
Resuming: rerunning the same command skips every shard (and split file) already written; a
different config / seed in the same directory is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..conventions import CONVENTIONS_VERSION
from ..errors import ConfigError
from .config import SimulationConfig, load_preset

__all__ = ["simulate_dataset", "split_counts", "SPLIT_NAMES"]

log = logging.getLogger(__name__)
#: Names of the three splits, in the order of the ``split`` fractions.
SPLIT_NAMES = ("train", "val", "test")


def split_counts(n: int, split) -> list[int]:
    """Number of stamps per split: rounded cumulative fractions, summing exactly to ``n``."""
    frac = np.asarray(split, dtype=float)
    if frac.shape != (3,) or np.any(frac < 0) or not frac.sum() > 0:
        raise ConfigError(f"split must be three non-negative fractions, got {split}")
    bounds = np.round(np.cumsum(frac) / frac.sum() * n).astype(int)
    return list(np.diff(np.concatenate([[0], bounds])))


def _fingerprint(config: SimulationConfig, seed: int, n: int, split, shard_size: int) -> str:
    text = json.dumps({"config": config.to_dict(), "seed": seed, "n": n, "split": list(map(float, split)),
                       "shard_size": shard_size}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _shard_task(args: tuple) -> str:
    """Draw and write one shard (runs in a worker process or in-process)."""
    from ..data.h5 import write_split
    from .generate import generate_batch

    config_dict, seed, split_index, shard_index, count, id_start, path, meta = args
    config = SimulationConfig.from_dict(config_dict)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_index, shard_index)))
    arrays = generate_batch(config, count, seed=rng)
    arrays["ids"] = np.arange(id_start, id_start + count, dtype=np.int64)
    write_split(path, arrays, {**meta, "shard": shard_index})
    return str(path)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def simulate_dataset(
    config: SimulationConfig | str | Path,
    out_dir: str | Path,
    n: int,
    split=(0.8, 0.1, 0.1),
    seed: int = 0,
    *,
    workers: int = 1,
    shard_size: int = 1024,
    keep_shards: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Simulate ``n`` stamps into ``out_dir/{train,val,test}.h5``.

    Parameters
    ----------
    config : SimulationConfig, or a preset name / path
    out_dir : str or Path
        Output directory (created).
    n : int
        Total number of stamps over the three splits.
    split : (float, float, float)
        Fractions for train / val / test (normalised to their sum).
    seed : int
        Base seed; the same seed gives byte-identical arrays whatever ``workers``.
    workers : int
        Processes drawing shards in parallel (1: in this process).
    shard_size : int
        Stamps per shard (the unit of parallelism and of resuming). Part of the reproducibility
        key: a different shard size gives different (equally valid) draws.
    keep_shards : bool
        Keep ``shards/`` after merging.
    progress : bool
        Show a tqdm progress bar (stamps).

    Returns
    -------
    dict split name → Path of the split file.

    Raises
    ------
    ConfigError
        ``out_dir`` already holds a dataset made with another config / seed / size.
    """
    from tqdm.auto import tqdm

    from ..data.h5 import concatenate_files

    if not isinstance(config, SimulationConfig):
        config = load_preset(config)
    config.validate()
    if n < 1 or shard_size < 1 or workers < 1:
        raise ConfigError(f"n, shard_size and workers must be >= 1, got {n}, {shard_size}, {workers}")
    counts = split_counts(n, split)
    out = Path(out_dir)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(config, seed, n, split, shard_size)
    run = {"config": config.to_dict(), "seed": seed, "n": n, "split": list(map(float, split)),
           "shard_size": shard_size, "fingerprint": fp, "galnet_version": __version__}
    cfg_path = out / "config.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        if old.get("fingerprint") != fp:
            raise ConfigError(
                f"{out}: holds a dataset made with another config/seed/n/split/shard_size "
                f"(fingerprint {old.get('fingerprint')} != {fp}); use a new --out directory"
            )
    else:
        cfg_path.write_text(json.dumps(run, indent=2, sort_keys=True))
    base_meta = {
        "preset": config.to_dict(), "seed": seed, "galnet_version": __version__,
        "conventions_version": CONVENTIONS_VERSION, "zeropoint": config.zeropoint,
        "pixel_scale": config.pixel_scale, "gain": config.gain, "sky_sigma_median": config.sky_sigma(),
        "fingerprint": fp, "shard_size": shard_size,
    }

    tasks, shard_lists, finished = [], {}, {}
    id_start = 0
    for si, (name, count) in enumerate(zip(SPLIT_NAMES, counts)):
        meta = {**base_meta, "split": name, "n": int(count)}
        final = out / f"{name}.h5"
        finished[name] = final.exists() and _meta_of(final).get("fingerprint") == fp
        paths = []
        for k, start in enumerate(range(0, count, shard_size)):
            m = min(shard_size, count - start)
            path = out / "shards" / f"{name}-{k:05d}.h5"
            paths.append(path)
            if not finished[name] and not path.exists():
                tasks.append((config.to_dict(), seed, si, k, m, id_start + start, str(path), meta))
        shard_lists[name] = (paths, meta)
        id_start += count

    todo = sum(t[4] for t in tasks)
    with tqdm(total=n, initial=n - todo, unit="stamp", disable=not progress, desc="simulate") as bar:
        if workers == 1 or len(tasks) <= 1:
            for t in tasks:
                _shard_task(t)
                bar.update(t[4])
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            import torch

            threads = max(1, torch.get_num_threads() // workers)
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                     initargs=(threads,)) as pool:
                futures = {pool.submit(_shard_task, t): t[4] for t in tasks}
                for fut in as_completed(futures):
                    fut.result()
                    bar.update(futures[fut])

    result = {}
    for name in SPLIT_NAMES:
        final = out / f"{name}.h5"
        paths, meta = shard_lists[name]
        if not finished[name]:
            concatenate_files(final, paths, meta) if paths else _write_empty(final, config, meta)
            log.info("wrote %s (%d stamps)", final, meta["n"])
        if not keep_shards:
            for p in paths:
                p.unlink(missing_ok=True)
        result[name] = final
    if not keep_shards:
        try:
            (out / "shards").rmdir()
        except OSError:
            pass
    return result


def _meta_of(path: Path) -> dict[str, Any]:
    from ..data.h5 import read_meta

    try:
        return read_meta(path)
    except Exception:  # noqa: BLE001 - an unreadable half-written file is simply redone
        return {}


def _write_empty(path: Path, config: SimulationConfig, meta: dict) -> None:
    from ..data.h5 import write_split

    s, p = config.stamp_size, config.psf_size
    write_split(path, {
        "images": np.zeros((0, s, s), np.float32), "psfs": np.zeros((0, p, p), np.float32),
        "sky_sigma": np.zeros(0, np.float32), "params": np.zeros((0, 7)), "snr": np.zeros(0, np.float32),
        "ids": np.zeros(0, np.int64),
    }, meta)
