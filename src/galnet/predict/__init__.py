"""Prediction: measure galaxies with a trained network, from files to a galnet catalog.

Public API
----------
predict_catalog(input, output, *, model=, catalog=, psf=, ...) -> Table     files in, catalog out (resumable)
predict_arrays(images, psfs, sky_sigma, *, model=, ...) -> Table             in-memory stamps
predict_source(source, output, options, *, resume=, workers=, dask_address=)  any reader, full control
PredictOptions                                                               run options (dataclass)
open_source(path, *, catalog=, psf=, ...) -> InputSource                     the input readers
training_prior(card) -> {name: (low, high)}                                  OUT_OF_PRIOR box

See ``docs/predict.md`` for the input forms, the output columns and the frames of ``x, y``.
"""

from .inputs import (
    Chunk,
    CutoutDirSource,
    FitsCubeSource,
    HDF5Source,
    ImageCatalogSource,
    InputSource,
    open_source,
)
from .runner import (
    PredictError,
    PredictOptions,
    models_path,
    predict_arrays,
    predict_catalog,
    predict_source,
    training_prior,
)

__all__ = [
    "predict_catalog",
    "predict_arrays",
    "predict_source",
    "PredictOptions",
    "PredictError",
    "open_source",
    "models_path",
    "training_prior",
    "InputSource",
    "HDF5Source",
    "FitsCubeSource",
    "CutoutDirSource",
    "ImageCatalogSource",
    "Chunk",
]
