"""Data: the one input layer of galnet — the HDF5 dataset schema, the input sources, and sharded runs.

* :func:`write_split`, :func:`read_arrays`, :func:`read_meta`, :class:`StampDataset`
  (:mod:`galnet.data.h5`, where the schema is documented);
* the input sources, which read every input form as :class:`Chunk` s for ``galnet predict`` and
  ``galnet fit``: :func:`open_source`, :class:`InputSource`, :class:`HDF5Source`, :class:`FitsCubeSource`,
  :class:`CutoutDirSource`, :class:`ImageCatalogSource`, :class:`ArraySource`
  (:mod:`~galnet.data.sources`, :mod:`~galnet.data.fits_sources`, :mod:`~galnet.data.image_catalog`,
  :mod:`~galnet.data.inputs`), with :func:`finish_chunk` (:mod:`~galnet.data.chunk`);
* noise (:mod:`~galnet.data.noise`: :func:`robust_sigma`, :func:`border_sigma`, :func:`sigma_from_data`) and
  PSFs of the inputs (:mod:`~galnet.data.psfs`: :func:`prepare_psf`, :func:`prepare_psfs`,
  :func:`prepare_fit_psfs`, :func:`read_psf_file`);
* sharded, resumable runs (:mod:`~galnet.data.shards`): the parts directory, its shards and its manifest.

Simulated training streams are the simulate stage's (:class:`galnet.simulate.OnTheFlyDataset`).
"""

from .chunk import STAMP_SIZE, Chunk, cut_stamps, finish_chunk, resize_stamps
from .fits_io import FITS_SUFFIXES, FitsPlanes
from .fits_sources import CutoutDirSource, FitsCubeSource
from .h5 import CHUNK_STAMPS, OPTIONAL_KEYS, REQUIRED_KEYS, StampDataset, read_arrays, read_meta, write_split
from .image_catalog import ImageCatalogSource
from .inputs import open_source
from .noise import border_sigma, robust_sigma, sigma_from_data
from .psfs import PSF_SIZE, prepare_fit_psfs, prepare_psf, prepare_psfs, read_psf_file
from .shards import ResumeError, parts_dir
from .sources import ArraySource, HDF5Source, InputSource

__all__ = [
    "StampDataset",
    "write_split",
    "read_arrays",
    "read_meta",
    "REQUIRED_KEYS",
    "OPTIONAL_KEYS",
    "CHUNK_STAMPS",
    "open_source",
    "InputSource",
    "HDF5Source",
    "FitsCubeSource",
    "CutoutDirSource",
    "ImageCatalogSource",
    "ArraySource",
    "Chunk",
    "finish_chunk",
    "cut_stamps",
    "resize_stamps",
    "STAMP_SIZE",
    "PSF_SIZE",
    "FITS_SUFFIXES",
    "FitsPlanes",
    "robust_sigma",
    "border_sigma",
    "sigma_from_data",
    "prepare_psf",
    "prepare_psfs",
    "prepare_fit_psfs",
    "read_psf_file",
    "parts_dir",
    "ResumeError",
]
