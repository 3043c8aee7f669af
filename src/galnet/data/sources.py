"""Input sources: every input form read as a sequence of :class:`~galnet.data.Chunk` s.

Five forms are understood (see ``docs/predict.md``):

* :class:`HDF5Source` – a split written by ``galnet simulate`` (images, psfs, sky_sigma, ids, optional
  sigma_maps and masks), read in row ranges.
* :class:`~galnet.data.FitsCubeSource` – a FITS cube of stamps (N, H, W) with one PSF image or a PSF cube
  (N, P, P), sky σ given or estimated from the stamp border (MAD), optional σ-map and mask files.
* :class:`~galnet.data.CutoutDirSource` – a directory of per-galaxy FITS cutouts.
* :class:`~galnet.data.ImageCatalogSource` – a large FITS image (with WCS) plus a source catalog (RA/Dec or
  x/y): stamps are cut around every position.
* :class:`ArraySource` – stamps already in memory.

A source is cheap to pickle (paths and small arrays; open file handles are dropped), knows its number of
rows, and returns rows ``start:stop`` as read (:meth:`InputSource.read_rows`, what ``galnet fit`` uses) or
ready for the network (:meth:`InputSource.read_chunk`, what ``galnet predict`` uses), so memory stays flat
however large the input is. Every problem of a row (NaN pixels, edge, PSF repaired, unreadable file ...)
becomes a bit of :class:`galnet.flags.Flag` in ``Chunk.flags`` and a log message naming the file or row;
rows are never dropped. :func:`galnet.data.open_source` picks the source for a path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import unique_ids
from ..errors import InputDataError
from .chunk import STAMP_SIZE, Chunk, finish_chunk
from .noise import check_sky_sigma
from .psfs import PSF_SIZE, shared_psf
from .shards import array_digest, file_id

log = logging.getLogger(__name__)

__all__ = ["InputSource", "HDF5Source", "ArraySource"]


class InputSource:
    """Base class of the input readers.

    Attributes
    ----------
    n_rows : int
        Number of galaxies (rows of the output catalog).
    meta : dict
        ``zeropoint`` (mag for 1 count), ``gain`` (e-/count or None), ``pixel_scale`` (arcsec/px) where known.
    header : dict
        Keywords of the stamps' FITS header (empty for other forms): ``galnet fit`` reads ``EXPTIME``,
        ``NCOMBINE`` and ``RDNOISE`` there, as GALFIT does.
    kind : str
        Input form, for logs and the resume fingerprint.
    stamp_size, psf_size : int
        Sizes of :meth:`read_chunk` 's stamps and PSFs (set from the model card by the caller).
    """

    kind = "?"
    has_wcs = False

    def __init__(self) -> None:
        self.n_rows = 0
        self.meta: dict[str, Any] = {}
        self.header: dict[str, Any] = {}
        self.stamp_size = STAMP_SIZE
        self.psf_size = PSF_SIZE

    def read_rows(self, start: int, stop: int) -> Chunk:  # pragma: no cover - abstract
        """Rows ``start:stop`` as read (stored sizes and values; see :class:`~galnet.data.Chunk`)."""
        raise NotImplementedError

    def read_chunk(self, start: int, stop: int) -> Chunk:  # pragma: no cover - abstract
        """Rows ``start:stop`` ready for the network (:func:`~galnet.data.finish_chunk`)."""
        raise NotImplementedError

    def native_sizes(self) -> tuple[int, int] | None:
        """``(stamp size, PSF size)`` to read at when the stored stamps or PSFs may differ from row to row (a
        cutout directory: set ``stamp_size``, ``psf_size`` to them to read the rows as stored); None when
        :meth:`read_rows` returns the rows as stored anyway."""
        return None

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this input (paths, sizes, modification times): resuming checks it."""
        return {"kind": self.kind, "n_rows": self.n_rows}

    def settings(self) -> dict[str, Any]:
        """Every reading option that changes a result (zero point, gain, pixel scale, sky σ, PSF, columns
        ...), as recorded in the resume manifest (:mod:`galnet.data.shards`)."""
        return {
            "zeropoint": self.meta.get("zeropoint"),
            "gain": self.meta.get("gain"),
            "pixel_scale": self.meta.get("pixel_scale"),
        }

    def describe(self) -> str:
        """The input's path (or kind), for messages."""
        for attr in ("path", "directory", "image_path"):
            if getattr(self, attr, None) is not None:
                return str(getattr(self, attr))
        return self.kind

    def id_sample(self) -> np.ndarray | None:
        """The ids of every row when known before reading (checked before computing), else None."""
        ids = getattr(self, "ids", None)
        return None if ids is None else np.asarray(ids)

    def carried_columns(self) -> dict[str, np.ndarray]:
        """Input columns carried to the catalog (image + catalog inputs)."""
        return {}

    def pixel_to_world(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """RA, Dec (degrees) of output-frame 1-based pixel positions, or None without a WCS."""
        return None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_h_")}


# ============================================================================ manifest entries
def psf_setting(psf_path, psf_array) -> Any:
    """The manifest entry of a PSF option: the file's identity, or the digest of an in-memory array."""
    if psf_path is not None:
        return file_id(Path(psf_path))
    return None if psf_array is None else {"array_sha256": array_digest(psf_array)}


def sky_setting(sky) -> Any:
    """The manifest entry of a sky σ option: one value, or the digest of per-row values."""
    if sky is None:
        return None
    a = np.asarray(sky, dtype=float)
    if a.ndim == 0 or (a.size and np.all(a == a.ravel()[0])):
        return float(a.ravel()[0]) if a.size else None
    return {"array_sha256": array_digest(a)}


def plane_settings(sigma, mask) -> dict[str, Any]:
    """Manifest entries of the σ-map and mask files (:class:`~galnet.data.FitsPlanes`), when given."""
    out: dict[str, Any] = {}
    if sigma is not None:
        out[sigma.what] = file_id(sigma.path)  # "sigma" or "variance"
    if mask is not None:
        out["mask"] = file_id(mask.path)
    return out


# ============================================================================ HDF5
class HDF5Source(InputSource):
    """A dataset split written by ``galnet simulate`` / :func:`galnet.data.write_split`.

    Parameters
    ----------
    path : path
        ``.h5`` file with ``images`` (N, S, S), ``psfs`` (N, P, P), ``sky_sigma`` (N,) and/or ``sigma_maps``
        (N, S, S), optionally ``ids`` and ``masks`` (N, S, S, non-zero = bad); the root ``meta`` gives
        zeropoint, gain and pixel scale.
    sky_sigma : float, optional
        Sky σ (counts / pixel) of a file without a ``sky_sigma`` dataset (ignored when it has one); without
        either, the sky σ is estimated from the stamp border.
    zeropoint, gain, pixel_scale : float, optional
        Override the file's meta.

    Raises
    ------
    InputDataError
        Unreadable file, missing datasets or inconsistent shapes (the message names the file and dataset).
    """

    kind = "hdf5"

    def __init__(self, path, *, sky_sigma=None, zeropoint=None, gain=None, pixel_scale=None) -> None:
        super().__init__()
        from .h5 import check_split_shapes, read_arrays, read_meta

        self.path = Path(path)
        self.sky_option = check_sky_sigma(sky_sigma, "sky_sigma")
        meta = read_meta(self.path)
        shapes = check_split_shapes(self.path, required=("images", "psfs"))
        if "sky_sigma" not in shapes and "sigma_maps" not in shapes:
            raise InputDataError(f"{self.path}: needs a 'sky_sigma' or a 'sigma_maps' dataset")
        self.n_rows = shapes["images"][0]
        self.keys = [k for k in ("images", "psfs", "sky_sigma", "ids", "sigma_maps", "masks") if k in shapes]
        if "ids" in shapes:
            ids = read_arrays(self.path, keys=["ids"])["ids"]
            if ids.dtype.kind in "SO":
                ids = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in ids])
            self.ids = unique_ids(ids, where=str(self.path))
        else:
            self.ids = np.arange(self.n_rows)
        self.meta = {
            "zeropoint": zeropoint if zeropoint is not None else meta.get("zeropoint"),
            "gain": gain if gain is not None else meta.get("gain"),
            "pixel_scale": pixel_scale if pixel_scale is not None else meta.get("pixel_scale"),
        }

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), **file_id(self.path)}

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "sky_sigma": sky_setting(self.sky_option)}

    def _read(self, start: int, stop: int, *, masks: bool) -> Chunk:
        from .h5 import read_arrays

        keys = [k for k in self.keys if k != "ids" and (masks or k != "masks")]
        arr = read_arrays(self.path, start, stop, keys=keys)
        b = stop - start
        has_sky = "sky_sigma" in arr or self.sky_option is not None
        sky = arr["sky_sigma"] if "sky_sigma" in arr else np.full(b, np.nan if self.sky_option is None
                                                                  else float(self.sky_option))
        return Chunk(
            start=start,
            ids=self.ids[start:stop],
            images=arr["images"],
            psfs=arr["psfs"],
            sky_sigma=sky,
            flags=np.zeros(b, np.int64),
            bad=np.zeros(b, bool),
            mask=arr["masks"] != 0 if "masks" in arr else None,
            sigma_maps=arr.get("sigma_maps"),
            offset=np.zeros((b, 2)),
            sky_given=np.full(b, has_sky),
        )

    def read_rows(self, start: int, stop: int) -> Chunk:
        return self._read(start, stop, masks=True)

    def read_chunk(self, start: int, stop: int) -> Chunk:
        raw = self._read(start, stop, masks=False)
        return finish_chunk(
            start,
            raw.ids,
            raw.images,
            raw.psfs,
            raw.sky_sigma,
            names=[f"{self.path.name} row {i}" for i in range(start, stop)],
            sigma_maps=raw.sigma_maps,
            stamp_size=self.stamp_size,
            psf_size=self.psf_size,
            sky_given=raw.sky_given,
        )


# ============================================================================ in memory
class ArraySource(InputSource):
    """Stamps already in memory (what :func:`galnet.predict.predict_arrays` measures).

    Parameters
    ----------
    images : ndarray, shape (B, H, W) or (H, W), counts
    psfs : ndarray, shape (P, P) (shared) or (B, P, P)
    sky_sigma : float or ndarray (B,), optional
        Counts / pixel; estimated from the stamp borders where not given.
    ids : array_like (B,), optional
        Default ``0 .. B-1``.
    meta : dict, optional
        ``zeropoint``, ``gain``, ``pixel_scale``.

    Raises
    ------
    InputDataError
        Shapes that do not match; PSFError for a shared PSF that cannot be repaired.
    """

    kind = "arrays"

    def __init__(self, images, psfs, sky_sigma=None, ids=None, meta: dict | None = None) -> None:
        super().__init__()
        self.images = np.asarray(images)
        if self.images.ndim == 2:
            self.images = self.images[None]
        if self.images.ndim != 3:
            raise InputDataError(f"images must have shape (B, H, W), got {self.images.shape}")
        self.n_rows = len(self.images)
        self.psfs = np.asarray(psfs, dtype=float)
        if self.psfs.ndim == 3 and len(self.psfs) != self.n_rows:
            raise InputDataError(f"{len(self.psfs)} PSFs for {self.n_rows} images")
        self._psf_cache: dict = {}
        if self.psfs.ndim != 3:  # one PSF for every stamp: one that cannot be repaired is an error now
            shared_psf(self.psfs, self.psf_size, self._psf_cache, name="psfs")
        sky_sigma = check_sky_sigma(sky_sigma, "sky_sigma")
        self.sky = (
            None if sky_sigma is None else np.broadcast_to(np.asarray(sky_sigma, float), (self.n_rows,))
        )
        if ids is not None and len(ids) != self.n_rows:
            raise InputDataError(f"{len(ids)} ids for {self.n_rows} images")
        self.ids = np.arange(self.n_rows) if ids is None else unique_ids(ids, where="ids")
        self.meta = dict(meta or {})

    def read_rows(self, start: int, stop: int) -> Chunk:
        b = stop - start
        return Chunk(
            start=start,
            ids=self.ids[start:stop],
            images=self.images[start:stop],
            psfs=self.psfs[start:stop] if self.psfs.ndim == 3 else self.psfs,
            sky_sigma=np.full(b, np.nan) if self.sky is None else self.sky[start:stop],
            flags=np.zeros(b, np.int64),
            bad=np.zeros(b, bool),
            offset=np.zeros((b, 2)),
            sky_given=np.full(b, self.sky is not None),
        )

    def read_chunk(self, start: int, stop: int) -> Chunk:
        raw = self.read_rows(start, stop)
        psfs, fixed = raw.psfs, None
        if self.psfs.ndim != 3:
            psfs, was_fixed = shared_psf(self.psfs, self.psf_size, self._psf_cache, name="psfs")
            fixed = np.full(stop - start, was_fixed)
        return finish_chunk(
            start,
            raw.ids,
            raw.images,
            psfs,
            None if self.sky is None else raw.sky_sigma,
            names=[f"row {i}" for i in range(start, stop)],
            psf_fixed=fixed,
            stamp_size=self.stamp_size,
            psf_size=self.psf_size,
            sky_given=self.sky is not None,
        )
