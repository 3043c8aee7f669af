"""Prediction: measure galaxies with a trained network, from files to a galnet catalog.

Public API
----------
predict_catalog(input, output, *, model=, catalog=, psf=, ...) -> Table     files in, catalog out (resumable)
predict_arrays(images, psfs, sky_sigma, *, model=, ...) -> Table             in-memory stamps
predict_source(source, output, options, *, resume=, workers=, dask_address=)  any reader, full control
PredictOptions                                                               run options (dataclass)
training_prior(card) -> {name: (low, high)}                                  OUT_OF_PRIOR box

The input readers (``open_source``, ``HDF5Source`` ...) are :mod:`galnet.data`'s, shared with
``galnet fit``. Modules: :mod:`.runner` (the run: shards, resume, assembly), :mod:`.core` (the model and one
chunk, shared with the Dask workers of :mod:`.dask`), :mod:`.command` (the CLI).

See ``docs/predict.md`` for the input forms, the output columns and the frames of ``x, y``.
"""

from .core import training_prior
from .runner import (
    PredictError,
    PredictOptions,
    models_path,
    predict_arrays,
    predict_catalog,
    predict_source,
)

__all__ = [
    "predict_catalog",
    "predict_arrays",
    "predict_source",
    "PredictOptions",
    "PredictError",
    "models_path",
    "training_prior",
]
