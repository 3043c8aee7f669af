"""Write a simulated dataset: sharded, parallel, resumable, reproducible.

Layout of ``out_dir``::

    config.json            the SimulationConfig (JSON) and the run's seed / sizes
    shards/<split>-NNNNN.h5 finished shards (removed after the merge unless keep_shards)
    train.h5, val.h5, test.h5   the merged splits (schema: galnet.data.h5)

Reproducibility: shard ``k`` of split ``s`` is drawn from
``np.random.SeedSequence(seed, spawn_key=(s, k))``, so the arrays depend only on
(config, seed, n, split, shard_size), not on the number of workers nor on interruptions.
Resuming: rerunning the same command skips every shard (and split file) already written; a
different config / seed in the same directory is refused. Every file (``config.json``, each shard,
each merged split) is written under a temporary name and renamed into place when complete, and a
shard is reused only if it reads back with this run's fingerprint and size, so a run killed at any
point (``kill -9`` included) and rerun gives arrays identical to an uninterrupted run.
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
from ..io import atomic_write, atomic_write_text
from ..params import N_PARAMS
from .config import SimulationConfig, load_preset

__all__ = ["simulate_dataset", "split_counts", "SPLIT_NAMES"]

log = logging.getLogger(__name__)
#: Names of the three splits, in the order of the ``split`` fractions.
SPLIT_NAMES = ("train", "val", "test")


#: Tolerance on the sum of the split fractions (they are not renormalised).
SPLIT_TOLERANCE = 1e-6


def split_counts(n: int, split) -> list[int]:
    """Number of stamps per split: rounded cumulative fractions, summing exactly to ``n``.

    Parameters
    ----------
    n : int
        Total number of stamps.
    split : sequence of 3 float
        Fractions for train / val / test, each >= 0, summing to 1 within 1e-6.

    Raises
    ------
    ConfigError
        Not three finite fractions >= 0, or a sum other than 1 (``(0.5, 0.6, 0.1)`` is refused,
        not renormalised).
    """
    try:
        frac = np.asarray(split, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"split must be three fractions, got {split!r}") from None
    if frac.shape != (3,) or not np.all(np.isfinite(frac)) or np.any(frac < 0):
        raise ConfigError(f"split must be three finite fractions >= 0, got {split}")
    if abs(frac.sum() - 1.0) > SPLIT_TOLERANCE:
        raise ConfigError(
            f"split fractions must sum to 1, got {list(map(float, frac))} (sum {frac.sum():.6g})"
        )
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

    config_dict, seed, split_index, shard_index, count, id_start, path, meta, compression = args
    config = SimulationConfig.from_dict(config_dict)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_index, shard_index)))
    arrays = generate_batch(config, count, seed=rng)
    arrays["ids"] = np.arange(id_start, id_start + count, dtype=np.int64)
    write_split(path, arrays, {**meta, "shard": shard_index}, compression=compression)
    return str(path)


def _filters(compression: str) -> dict[str, Any]:
    """h5py dataset options of :func:`galnet.data.h5.write_split` for ``compression``."""
    return {"compression": compression, "shuffle": True,
            "compression_opts": 1 if compression == "gzip" else None}


def _merge_shards(out_path: Path, parts: list[Path], meta: dict, compression: str) -> Path:
    """Concatenate shard files into one split file, copying their compressed chunks as they are.

    The result is what :func:`galnet.data.h5.concatenate_files` writes (same datasets, dtypes,
    chunks and filters) without decompressing and recompressing every chunk, which is possible
    when every shard but the last holds a whole number of chunks; a shard written with other
    chunks or filters is rewritten, and misaligned shards fall back to
    :func:`~galnet.data.h5.concatenate_files`. Written atomically.
    """
    import h5py

    from ..data.h5 import CHUNK_STAMPS, OPTIONAL_KEYS, REQUIRED_KEYS, concatenate_files

    want = _filters(compression)
    sizes, keys, shapes, raw, same_keys = [], None, {}, [], True
    for p in parts:
        with h5py.File(p, "r") as f:
            names = sorted(f.keys())
            keys = names if keys is None else keys
            sizes.append(int(f["images"].shape[0]) if "images" in f else 0)
            same_keys &= names == keys
            same = True
            for name in names:
                d = f[name]
                shapes.setdefault(name, d.shape[1:])
                same = same and (d.chunks == (CHUNK_STAMPS,) + d.shape[1:] and d.shape[1:] == shapes[name]
                                 and all(getattr(d, k) == v for k, v in want.items()))
            raw.append(same)
    total = sum(sizes)
    if not (keys and same_keys) or total < CHUNK_STAMPS or any(m % CHUNK_STAMPS for m in sizes[:-1]):
        return concatenate_files(out_path, parts, meta, compression=compression)
    dtypes = {**REQUIRED_KEYS, **OPTIONAL_KEYS}

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as out:
            out.attrs["meta"] = json.dumps(meta, sort_keys=True)
            for name in keys:
                out.create_dataset(name, shape=(total,) + shapes[name], dtype=dtypes.get(name, "float32"),
                                   chunks=(CHUNK_STAMPS,) + shapes[name], **want)
            row = 0
            for p, m, as_is in zip(parts, sizes, raw):
                with h5py.File(p, "r") as f:
                    for name in keys:
                        if not as_is:
                            out[name][row : row + m] = f[name][...]
                            continue
                        src, dst = f[name].id, out[name].id
                        for c in range(src.get_num_chunks()):
                            offset = src.get_chunk_info(c).chunk_offset
                            mask, data = src.read_direct_chunk(offset)
                            dst.write_direct_chunk((row + offset[0],) + tuple(offset[1:]), data, mask)
                row += m

    return atomic_write(out_path, write)


def _init_worker(threads: int) -> None:
    import signal

    import torch

    # Ctrl-C reaches the whole process group: the parent reports it (one line) and stops the pool;
    # a worker finishes its shard (written atomically) instead of printing a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)


def _shard_ok(path: Path, fingerprint: str, count: int) -> bool:
    """Whether an existing shard is complete: readable, this run's fingerprint, ``count`` stamps."""
    import h5py

    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            n = int(f["images"].shape[0])
    except Exception:  # noqa: BLE001 - unreadable: redo the shard
        return False
    return n == count and _meta_of(path).get("fingerprint") == fingerprint


def preflight(config: SimulationConfig, n_draws: int = 4096) -> None:
    """Check, before any shard is drawn, everything a run reads or draws that can fail.

    Reads the table priors, the PSF library and the background images (the same cached loaders
    the shards use), and draws ``n_draws`` target parameter sets from a throw-away generator to
    check them against the valid ranges; the run's own random streams are not touched.

    Raises
    ------
    ConfigError, InputDataError, PSFError, ParameterRangeError
        Naming the file, prior or parameter at fault.
    """
    import dataclasses

    from ..params import validate_parameters
    from ..render import load_psf_library
    from .config import Prior
    from .generate import draw_target_parameters, load_background

    priors = [(f"priors.{f.name}", getattr(config.priors, f.name)) for f in dataclasses.fields(config.priors)]
    priors += [(f"psf.{k}", getattr(config.psf, k)) for k in ("fwhm_arcsec", "moffat_beta", "ellipticity")]
    priors += [("neighbours.n", config.neighbours.n), ("neighbours.q", config.neighbours.q)]
    for _, prior in priors:
        if isinstance(prior, Prior) and prior.kind == "table":
            prior.table()
    if config.psf.library:
        load_psf_library(str(config.psf.library), config.psf_size, config.psf.library_hdu)
    bgc = config.background
    if bgc.files:
        scale = 1.0 if bgc.zeropoint is None else 10.0 ** (0.4 * (config.zeropoint - bgc.zeropoint))
        for path in bgc.files:
            load_background(str(path), config.stamp_size, bgc.image_hdu, bgc.variance_hdu, scale)
    draws = draw_target_parameters(config, np.random.default_rng(0), n_draws)
    validate_parameters(draws, what="target parameters drawn from the priors")


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
    compression: str = "gzip",
    threads: int | None = None,
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
    compression : str
        HDF5 filter of every dataset, with byte shuffling: ``"gzip"`` (level 1) or ``"lzf"``.
        Shards are compressed by the workers; the merge copies their compressed chunks.
    threads : int, optional
        Torch threads of each process drawing shards (default: torch's threads shared among the
        workers). Use 1 on a CPU shared with other jobs: oversubscribed OpenMP threads run the
        renderer ~10x slower.

    Returns
    -------
    dict split name → Path of the split file.

    Raises
    ------
    ConfigError
        ``out_dir`` already holds a dataset made with another config / seed / size.
    """
    from tqdm.auto import tqdm

    if not isinstance(config, SimulationConfig):
        config = load_preset(config)
    config.validate()
    if n < 1 or shard_size < 1 or workers < 1:
        raise ConfigError(f"n, shard_size and workers must be >= 1, got {n}, {shard_size}, {workers}")
    if compression not in ("gzip", "lzf"):
        raise ConfigError(f"compression must be 'gzip' or 'lzf', got {compression!r}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    counts = split_counts(n, split)
    preflight(config)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: output is a file, not a directory")
    (out / "shards").mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(config, seed, n, split, shard_size)
    _claim_directory(out, {"config": config.to_dict(), "seed": seed, "n": n, "split": list(map(float, split)),
                           "shard_size": shard_size, "fingerprint": fp, "galnet_version": __version__})
    base_meta = {
        "preset": config.to_dict(), "seed": seed, "galnet_version": __version__,
        "conventions_version": CONVENTIONS_VERSION, "zeropoint": config.zeropoint,
        "pixel_scale": config.pixel_scale, "gain": config.gain, "sky_sigma_median": config.sky_sigma(),
        "fingerprint": fp, "shard_size": shard_size,
    }
    tasks, shard_lists, finished = _plan_shards(config, seed, out, counts, shard_size, base_meta, compression)
    todo = sum(t[4] for t in tasks)
    with tqdm(total=n, initial=n - todo, unit="stamp", disable=not progress, desc="simulate") as bar:
        _run_shard_tasks(tasks, workers, threads, bar)
    return _merge_splits(out, config, shard_lists, finished, compression, keep_shards)


def _claim_directory(out: Path, run: dict[str, Any]) -> None:
    """Write ``out/config.json`` (the run's config, seed, sizes and fingerprint), or check that the one there
    is this run's (a resumed run); another dataset's raises :class:`ConfigError`."""
    cfg_path = out / "config.json"
    fp = run["fingerprint"]
    if not cfg_path.exists():
        atomic_write_text(cfg_path, json.dumps(run, indent=2, sort_keys=True))
        return
    try:
        old = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{cfg_path}: unreadable ({exc}); remove it, or use a new --out directory"
        ) from exc
    if not isinstance(old, dict) or old.get("fingerprint") != fp:
        raise ConfigError(
            f"{out}: holds a dataset made with another config/seed/n/split/shard_size "
            f"(fingerprint {old.get('fingerprint') if isinstance(old, dict) else None} != {fp}); "
            "use a new --out directory"
        )


def _plan_shards(config: SimulationConfig, seed: int, out: Path, counts: list[int], shard_size: int,
                 base_meta: dict, compression: str) -> tuple[list[tuple], dict, dict[str, bool]]:
    """The shards of every split: the tasks still to draw (a shard already complete is skipped), the shard
    paths and meta of each split, and whether each split file is already complete."""
    fp = base_meta["fingerprint"]
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
            if not finished[name] and not _shard_ok(path, fp, m):
                tasks.append((config.to_dict(), seed, si, k, m, id_start + start, str(path), meta,
                              compression))
        shard_lists[name] = (paths, meta)
        id_start += count
    return tasks, shard_lists, finished


def _run_shard_tasks(tasks: list[tuple], workers: int, threads: int | None, bar) -> None:
    """Draw the shards of ``tasks``: in this process (``workers`` 1, or a single task) or in a pool of
    spawned processes; ``bar`` (tqdm) counts the stamps."""
    import torch

    if workers == 1 or len(tasks) <= 1:
        before = torch.get_num_threads()
        torch.set_num_threads(threads or before)
        try:
            for t in tasks:
                _shard_task(t)
                bar.update(t[4])
        finally:
            torch.set_num_threads(before)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    per_worker = threads or max(1, torch.get_num_threads() // workers)
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(per_worker,))
    try:
        futures = {pool.submit(_shard_task, t): t[4] for t in tasks}
        for fut in as_completed(futures):
            fut.result()
            bar.update(futures[fut])
    except BaseException:  # an error or Ctrl-C: drop the queued shards, do not wait for them
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _merge_splits(out: Path, config: SimulationConfig, shard_lists: dict, finished: dict[str, bool],
                  compression: str, keep_shards: bool) -> dict[str, Path]:
    """Merge each unfinished split's shards into ``out/<split>.h5``, then remove the shards (unless
    ``keep_shards``) and the temporary files a killed run left. Returns split name → Path."""
    result = {}
    for name in SPLIT_NAMES:
        final = out / f"{name}.h5"
        paths, meta = shard_lists[name]
        if not finished[name]:
            _merge_shards(final, paths, meta, compression) if paths else _write_empty(final, config, meta)
            log.info("wrote %s (%d stamps)", final, meta["n"])
        if not keep_shards:
            for p in paths:
                p.unlink(missing_ok=True)
        result[name] = final
    for tmp in [*out.glob("*.h5.*tmp"), *(out / "shards").glob("*.tmp")]:  # left by a killed run
        tmp.unlink(missing_ok=True)
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
        "sky_sigma": np.zeros(0, np.float32), "params": np.zeros((0, N_PARAMS)),
        "snr": np.zeros(0, np.float32), "ids": np.zeros(0, np.int64),
    }, meta)
