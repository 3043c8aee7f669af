"""Dask execution of ``galnet predict``: chunks spread over workers, each loading the model once.

``--workers N`` starts a :class:`distributed.LocalCluster` of ``N`` worker processes with one thread each;
``--dask tcp://scheduler:8786`` uses a running cluster (e.g. from dask-jobqueue on Slurm/PBS, see
``docs/predict.md``). The input source (paths and small arrays) is sent to the workers once; every task
reads its own chunk, measures it with a per-process cached :class:`~galnet.models.Predictor`
(:func:`galnet.predict.core.get_predictor`) and writes its shard into ``<output>.parts/`` — so the output
directory must be on a file system that every worker sees. The main process only assembles the catalog, which
is therefore identical to a single-process run with the same chunk size and backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data.shards import write_shard
from ..errors import ConfigError
from .core import card_path, chunk_kwargs, get_predictor, process_chunk, resolve_backend

log = logging.getLogger(__name__)

__all__ = ["run_chunks_dask", "predict_task"]


def predict_task(source, start: int, stop: int, options, pdir: str, ctx: dict[str, Any]) -> tuple[int, int]:
    """One Dask task: read rows ``start:stop``, measure them, write the shard; returns ``(start, stop)``."""
    predictor = get_predictor(
        card_path(options.model), resolve_backend(options.backend), options.device, options.threads or 1,
        options.allow_unverified_model, options.symmetries,
    )
    source.stamp_size, source.psf_size = predictor.image_size, predictor.psf_size
    chunk = source.read_chunk(start, stop)
    result = process_chunk(chunk, predictor, **chunk_kwargs(options, ctx, source))
    write_shard(Path(pdir), result)
    return start, stop


def run_chunks_dask(
    source,
    todo: list[tuple[int, int]],
    options,
    pdir: Path,
    ctx: dict[str, Any],
    *,
    workers: int | None = None,
    address: str | None = None,
    processes: bool = True,
    progress=None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> None:
    """Run the chunks ``todo`` on Dask and wait for all of them.

    Parameters
    ----------
    source : InputSource
    todo : list of (start, stop)
    options : PredictOptions
    pdir : Path
        Shard directory (shared by all workers).
    ctx : dict
        Zero points, gain and prior box (:func:`galnet.predict.core.run_context`).
    workers : int, optional
        Size of a local cluster (1 thread per worker).
    address : str, optional
        Scheduler address of an existing cluster (wins over ``workers``).
    processes : bool
        Local cluster of processes (True) or of threads in this process (False).
    progress : tqdm, optional
    on_chunk : callable(start, stop), optional
    """
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ConfigError("--workers / --dask need dask[distributed] (pip install galnet[scale])") from exc
    cluster = None
    if address:
        client = Client(address)
    else:
        n = int(workers or 1)
        if n < 1:
            raise ConfigError(f"--workers must be >= 1, got {n}")
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=processes, dashboard_address=None)
        client = Client(cluster)
    try:
        src = client.scatter(source, broadcast=True)
        futures = [
            client.submit(predict_task, src, a, b, options, str(pdir), ctx, pure=False) for a, b in todo
        ]
        for fut in as_completed(futures):
            a, b = fut.result()
            if progress is not None:
                progress.update(b - a)
            if on_chunk is not None:
                on_chunk(a, b)
    finally:
        if progress is not None:
            progress.close()
        client.close()
        if cluster is not None:
            cluster.close()
