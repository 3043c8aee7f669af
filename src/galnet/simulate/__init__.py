"""Simulation: reproducible training / test sets of galaxy stamps.

* :mod:`.config`: typed configuration (:class:`SimulationConfig`) and presets (:func:`load_preset`).
* :mod:`.generate`: :func:`generate_batch` draws stamps (target + neighbours + stars, per-stamp
  PSF, noise or a real background) with the one forward model (:func:`galnet.render.render_scene`,
  which equals :func:`galnet.render.render_sersic` object by object). The PSFs (analytic, or from
  a library) come from :mod:`galnet.render.psf`.
* :mod:`.writer`: :func:`simulate_dataset` writes sharded, resumable, worker-count independent
  HDF5 splits (schema: :mod:`galnet.data.h5`).
* :mod:`.stream`: :class:`OnTheFlyDataset`, unlimited fresh simulated stamps for training.

See ``docs/simulate.md``.
"""

from .config import (
    BackgroundConfig,
    NeighbourConfig,
    NoiseConfig,
    Prior,
    PriorsConfig,
    PSFConfig,
    SimulationConfig,
    list_presets,
    load_preset,
)
from .generate import generate_batch
from .stream import OnTheFlyDataset
from .writer import simulate_dataset

__all__ = [
    "Prior",
    "PriorsConfig",
    "PSFConfig",
    "NoiseConfig",
    "NeighbourConfig",
    "BackgroundConfig",
    "SimulationConfig",
    "load_preset",
    "list_presets",
    "generate_batch",
    "simulate_dataset",
    "OnTheFlyDataset",
]
