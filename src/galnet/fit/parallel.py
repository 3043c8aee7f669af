"""Fits spread over worker processes: one single-threaded process per core.

The batched solver spends its time in many small tensor operations, which a second torch thread
barely speeds up; separate processes, each fitting its own share of the stamps with one thread,
scale with the cores (as PyImfit and GALFIT are run: one process per core). :class:`FitPool` keeps
its workers alive between calls, so a catalog fitted batch by batch pays the start-up (importing
torch in each worker, a few seconds) once.

Example::

    from galnet.fit import FitPool
    with FitPool(workers=2) as pool:
        result = pool.fit_stamps(images, psfs, sigma=sigma, mask=mask)   # a FitResult, rows in order
        nb_mask, n_masked = pool.neighbour_mask(images, sigma, psf=psfs)  # masks made in the workers too
"""

from __future__ import annotations

import math
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from ..errors import ConfigError
from .solver import FitResult, fit_stamps, start_fourier_sizes

__all__ = ["FitPool"]


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _fit_chunk(task: tuple[np.ndarray, Any, dict[str, Any]]) -> FitResult:
    images, psf, kwargs = task
    return fit_stamps(images, psf, **kwargs)


def _mask_chunk(task: tuple[np.ndarray, Any, dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    from .masking import neighbour_mask

    images, sigma, kwargs = task
    return neighbour_mask(images, sigma, **kwargs)


#: Dimensions of the per-stamp forms of the arguments that :class:`FitPool` cuts by rows (a shared
#: PSF (P, P), a scalar sky or σ, one centre (2,) are passed whole, whatever their size).
_PER_STAMP_NDIM = {"psf": (3,), "sigma": (3,), "mask": (3,), "init": (2,), "sky": (1,)}
#: The same for :func:`galnet.fit.neighbour_mask` (σ may also be one value per stamp).
_MASK_PER_STAMP_NDIM = {"psf": (3,), "sigma": (1, 3), "mask": (3,), "centre": (2,)}


def _rows_of(name: str, value, rows: slice, per_stamp_ndim: dict[str, tuple[int, ...]] = _PER_STAMP_NDIM):
    """``value[rows]`` when ``value`` is the per-stamp form of argument ``name``, else ``value``."""
    if isinstance(value, (np.ndarray, list, tuple)) or hasattr(value, "__array__"):
        if name in per_stamp_ndim and np.ndim(value) in per_stamp_ndim[name]:
            return np.asarray(value)[rows]
    return value


def _chunk_tasks(images: np.ndarray, first, kwargs: dict[str, Any], chunks: list,
                 first_name: str = "psf", per_stamp_ndim: dict[str, tuple[int, ...]] = _PER_STAMP_NDIM
                 ) -> list:
    """One ``(images, first, kwargs)`` task per chunk, per-stamp arguments cut.

    ``chunks``: ``(start, stop)`` pairs or arrays of row indices. ``first`` is the second positional
    argument (``psf`` of ``fit_stamps``, ``sigma`` of ``neighbour_mask``), named ``first_name``.
    """
    tasks = []
    for chunk in chunks:
        rows = slice(*chunk) if isinstance(chunk, tuple) else np.asarray(chunk)
        kw = {k: _rows_of(k, v, rows, per_stamp_ndim) for k, v in kwargs.items()}
        tasks.append((images[rows], _rows_of(first_name, first, rows, per_stamp_ndim), kw))
    return tasks


#: Relative cost of one LM iteration at each DFT size N, ~ (N / 64)^1.2 (measured on 61x61 stamps:
#: 0.47 ms per galaxy at N = 64, 2.5 ms at N = 256, one thread).
_COST_EXPONENT = 1.2


def _fit_cost_order(images: np.ndarray, psf, kwargs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by the estimated cost of their fit, dearest first, and those costs.

    The cost of a fit grows with its DFT size, which the start parameters (``init``) give; without
    them all rows cost the same and keep their order.
    """
    b = len(images)
    init = kwargs.get("init")
    cost = np.ones(b)
    if init is not None and np.ndim(init) == 2:
        start = np.asarray(init, dtype=float)
        ok = np.all(np.isfinite(start), axis=1)
        if ok.any():
            sizes = start_fourier_sizes(start[ok], images.shape[1:], psf, kwargs.get("config"))
            cost[ok] = (sizes / 64.0) ** _COST_EXPONENT
    order = np.argsort(-cost, kind="stable")
    return order, cost[order]


def _balanced_chunks(order: np.ndarray, cost: np.ndarray, n_chunks: int, min_chunk: int) -> list[np.ndarray]:
    """Cut ``order`` (sorted dearest first) into about ``n_chunks`` runs of equal total ``cost``.

    Each run has at least ``min_chunk`` rows (the last may have fewer). Handed out in this order,
    the dear chunks start first and the cheap ones fill the gaps at the end.
    """
    total = float(cost.sum())
    target = total / max(1, n_chunks)
    chunks, start, acc = [], 0, 0.0
    for i, c in enumerate(cost):
        acc += c
        if acc >= target and i + 1 - start >= min_chunk:
            chunks.append(order[start : i + 1])
            start, acc = i + 1, 0.0
    if start < len(order):
        chunks.append(order[start:])
    return chunks


class FitPool:
    """Worker processes that fit shares of a batch with :func:`galnet.fit.fit_stamps`.

    Parameters
    ----------
    workers : int
        Worker processes (≥ 1), typically the number of cores.
    threads : int
        Torch threads per worker.
    chunks_per_worker : int
        Each call is cut into about ``workers × chunks_per_worker`` chunks (at least ``min_chunk``
        stamps each), handed out as workers free up. For fits with start parameters, the rows are
        first sorted by the DFT size their start needs (the cost of an iteration grows with it), and
        the chunks cut to equal estimated cost, dearest first: each chunk then holds galaxies of
        one or two sizes (fewer, fuller tensor batches), and the cheap chunks fill the gaps at the end.
    min_chunk : int
        Smallest chunk, stamps (the solver is batched: tiny chunks waste its vectorisation).

    Notes
    -----
    Workers are started with the ``spawn`` method (torch's OpenMP runtime is not fork-safe) and
    import galnet on their first task. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, workers: int, *, threads: int = 1, chunks_per_worker: int = 4, min_chunk: int = 16):
        if int(workers) < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if int(threads) < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.workers = int(workers)
        self.chunks_per_worker = max(1, int(chunks_per_worker))
        self.min_chunk = max(1, int(min_chunk))
        self._executor = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=_init_worker, initargs=(int(threads),))

    def warm_up(self, images, psf, **kwargs) -> None:
        """Start every worker; run a 2-iteration fit and a neighbour mask of the first stamp in each.

        The first calls pay the imports and torch's first-call costs; timed work that follows does not.
        """
        images, psf, kw = _chunk_tasks(np.asarray(images), psf, kwargs, [(0, 1)])[0]
        kw["max_iter"] = 2
        list(self._executor.map(_fit_chunk, [(images, psf, kw)] * self.workers))
        list(self._executor.map(_mask_chunk, [(images, kw.get("sigma"), {})] * self.workers))

    def fit_stamps(self, images, psf, **kwargs) -> FitResult:
        """:func:`galnet.fit.fit_stamps` of a batch, its rows shared among the workers.

        Parameters
        ----------
        images : array_like, shape (B, H, W), counts
        psf : array (P, P) or (B, P, P), or AnalyticPSF
        **kwargs
            As :func:`galnet.fit.fit_stamps`; per-stamp arrays (``sigma``, ``mask``, ``init``,
            ``sky``) are cut with the images.

        Returns
        -------
        FitResult
            One row per stamp, in input order (identical to a single-process fit).
        """
        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        b = len(images)
        result = FitResult.empty(b)
        if b == 0:
            return result
        order, cost = _fit_cost_order(images, psf, kwargs)
        chunks = _balanced_chunks(order, cost, self.workers * self.chunks_per_worker, self.min_chunk)
        tasks = _chunk_tasks(images, psf, kwargs, chunks)
        for rows, part in zip(chunks, self._executor.map(_fit_chunk, tasks)):
            result.take(part, rows)
        return result

    def neighbour_mask(self, images, sigma=None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
        """:func:`galnet.fit.neighbour_mask` of a batch, its rows shared among the workers.

        Parameters
        ----------
        images : array_like, shape (B, H, W), counts
        sigma : array_like, optional
            As :func:`galnet.fit.neighbour_mask` (a map, one value per stamp, or one for all).
        **kwargs
            As :func:`galnet.fit.neighbour_mask`; per-stamp arrays (``mask``, ``centre`` (B, 2),
            ``psf`` (B, P, P)) are cut with the images.

        Returns
        -------
        (mask (B, H, W) bool, n_masked_sources (B,) int64), identical to a single-process call.
        """
        images = np.asarray(images)
        if images.ndim != 3 or len(images) == 0:
            from .masking import neighbour_mask

            return neighbour_mask(images, sigma, **kwargs)
        bounds = self._bounds(len(images))
        tasks = _chunk_tasks(images, sigma, kwargs, bounds, "sigma", _MASK_PER_STAMP_NDIM)
        parts = list(self._executor.map(_mask_chunk, tasks))
        return np.concatenate([m for m, _ in parts]), np.concatenate([c for _, c in parts])

    def _bounds(self, b: int) -> list[tuple[int, int]]:
        size = max(self.min_chunk, math.ceil(b / (self.workers * self.chunks_per_worker)))
        return [(s, min(b, s + size)) for s in range(0, b, size)]

    def close(self) -> None:
        """Stop the workers."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FitPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
