"""Data: the HDF5 dataset schema and torch datasets over it (files, or simulated on the fly).

* :func:`write_split`, :func:`read_arrays`, :func:`read_meta`, :class:`StampDataset`
  (:mod:`galnet.data.h5`, where the schema is documented);
* :class:`OnTheFlyDataset` (:mod:`galnet.data.stream`): unlimited fresh simulated stamps.
"""

from .h5 import CHUNK_STAMPS, OPTIONAL_KEYS, REQUIRED_KEYS, StampDataset, read_arrays, read_meta, write_split
from .stream import OnTheFlyDataset

__all__ = [
    "StampDataset",
    "OnTheFlyDataset",
    "write_split",
    "read_arrays",
    "read_meta",
    "REQUIRED_KEYS",
    "OPTIONAL_KEYS",
    "CHUNK_STAMPS",
]
