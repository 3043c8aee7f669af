"""The dataset schema: one HDF5 file per split, read lazily by :class:`StampDataset`.

Schema of ``<out>/{train,val,test}.h5``
---------------------------------------
=============== ============== ========= ==================================================================
dataset         shape          dtype     meaning
=============== ============== ========= ==================================================================
``images``      (N, 61, 61)    float32   stamp, counts, sky-subtracted (background noise around 0)
``psfs``        (N, 25, 25)    float32   effective PSF (pixel included), unit sum, centred
``sky_sigma``   (N,)           float32   sky noise σ of the stamp, counts / pixel
``params``      (N, 7)         float64   true ``x, y, mag, re, n, q, pa`` (:mod:`galnet.conventions`;
                                         ``x, y`` 1-based stamp coordinates)
``snr``         (N,)           float32   optimal S/N of the target galaxy
``ids``         (N,)           int64     unique object id within the dataset
``sigma_maps``  (N, 61, 61)    float32   optional: per-pixel σ (real backgrounds with variance planes)
=============== ============== ========= ==================================================================

Extra diagnostic datasets written by :func:`galnet.simulate.simulate_dataset`: ``n_neighbours``
(int16), ``psf_fwhm`` (float32, pixels, NaN for library PSFs), ``background`` (int16, -1 = simulated
sky). Without ``sigma_maps`` the per-pixel σ is ``sqrt(sky_sigma**2 + max(model, 0) / gain)`` with
``model`` the noise-free target and ``gain`` from ``meta``.

Root attribute ``meta``: a JSON string with ``preset`` (the simulation config dict), ``seed``,
``split``, ``galnet_version``, ``conventions_version``, ``zeropoint``, ``pixel_scale``, ``gain``.

Stamps are chunked by :data:`CHUNK_STAMPS` along N (small chunks keep random access cheap:
a chunk is what one read decompresses) and compressed: gzip level 1 with shuffle by default
(readable everywhere), or lzf (``galnet simulate --compression lzf``: about 2.5x cheaper to write,
files about 8 % larger, readable by h5py only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..errors import InputDataError
from ..io import atomic_write

__all__ = [
    "REQUIRED_KEYS",
    "OPTIONAL_KEYS",
    "CHUNK_STAMPS",
    "write_split",
    "read_arrays",
    "read_meta",
    "check_split_shapes",
    "StampDataset",
]

#: Datasets every split file has, with their dtype.
REQUIRED_KEYS: dict[str, str] = {
    "images": "float32",
    "psfs": "float32",
    "sky_sigma": "float32",
    "params": "float64",
    "snr": "float32",
    "ids": "int64",
}
#: Optional datasets and their dtype.
OPTIONAL_KEYS: dict[str, str] = {
    "sigma_maps": "float32",
    "n_neighbours": "int16",
    "psf_fwhm": "float32",
    "background": "int16",
}
#: Stamps per HDF5 chunk (32 x 61 x 61 float32 = 476 kB).
CHUNK_STAMPS = 32


def _check_arrays(arrays: dict[str, np.ndarray], where: str) -> int:
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise InputDataError(f"{where}: missing array(s) {', '.join(missing)}")
    n = len(arrays["images"])
    for k, v in arrays.items():
        if len(v) != n:
            raise InputDataError(f"{where}: array {k!r} has {len(v)} rows, images has {n}")
    if arrays["params"].ndim != 2 or arrays["params"].shape[1] != 7:
        raise InputDataError(f"{where}: params must have shape (N, 7), got {arrays['params'].shape}")
    return n


def write_split(path: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any], *,
                chunk_stamps: int = CHUNK_STAMPS, compression: str = "gzip") -> Path:
    """Write one split file (atomically: a temporary file renamed at the end).

    Parameters
    ----------
    path : str or Path
        Output ``.h5`` file.
    arrays : dict of ndarray
        At least :data:`REQUIRED_KEYS`; :data:`OPTIONAL_KEYS` are written when present, other
        keys are ignored. Cast to the schema dtypes.
    meta : dict
        JSON-serialisable metadata, stored as the root attribute ``meta``.
    chunk_stamps : int
        Stamps per chunk.
    compression : str
        ``"gzip"`` (level 1 + shuffle) or ``"lzf"``.

    Returns
    -------
    Path of the written file.
    """
    import h5py

    path = Path(path)
    n = _check_arrays(arrays, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    opts: dict[str, Any] = {"compression": compression, "shuffle": True}
    if compression == "gzip":
        opts["compression_opts"] = 1

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["meta"] = json.dumps(meta, sort_keys=True)
            for key, dtype in {**REQUIRED_KEYS, **OPTIONAL_KEYS}.items():
                if key not in arrays:
                    continue
                arr = np.ascontiguousarray(arrays[key], dtype=dtype)
                chunks = (max(1, min(chunk_stamps, n)),) + arr.shape[1:] if n else None
                f.create_dataset(key, data=arr, chunks=chunks, **(opts if n else {}))

    return atomic_write(path, write)


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` attribute of a split file, as a dict."""
    import h5py

    with _open(path, h5py) as f:
        raw = f.attrs.get("meta", "{}")
    try:
        meta = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (TypeError, ValueError) as exc:
        raise InputDataError(f"{path}: the 'meta' attribute is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise InputDataError(f"{path}: the 'meta' attribute is not a JSON object")
    return meta


def _open(path, h5py, **kwargs):
    p = Path(path)
    if not p.exists():
        raise InputDataError(f"{p}: dataset file not found")
    try:
        return h5py.File(p, "r", **kwargs)
    except OSError as exc:
        raise InputDataError(f"{p}: not a readable HDF5 file ({exc})") from exc


def check_split_shapes(path: str | Path, *, required: tuple[str, ...] = ("images", "psfs", "sky_sigma")
                       ) -> dict[str, tuple[int, ...]]:
    """Check the datasets of a split file before reading it: present, same number of rows, sane shapes.

    Parameters
    ----------
    path : path of the ``.h5`` file
    required : tuple of str
        Datasets that must be present.

    Returns
    -------
    dict ``name → shape`` of the schema datasets present (:data:`REQUIRED_KEYS`, :data:`OPTIONAL_KEYS`,
    ``masks``).

    Raises
    ------
    InputDataError
        One line naming the file and the dataset: missing, another number of rows than ``images``,
        ``images`` not (N, H, W), ``psfs`` not (N, P, P), ``sky_sigma``/``ids`` not (N,), ``sigma_maps`` or
        ``masks`` not the shape of ``images``.
    """
    import h5py

    with _open(path, h5py) as f:
        missing = [k for k in required if k not in f]
        if missing:
            raise InputDataError(f"{path}: missing dataset(s) {', '.join(missing)}")
        names = [k for k in (*REQUIRED_KEYS, *OPTIONAL_KEYS, "masks") if k in f]
        shapes = {}
        for k in names:
            if not isinstance(f[k], h5py.Dataset):
                raise InputDataError(f"{path}: {k!r} is not a dataset")
            shapes[k] = tuple(int(v) for v in f[k].shape)
    if "images" not in shapes:
        return shapes
    img = shapes["images"]
    if len(img) != 3:
        raise InputDataError(f"{path}: images must be (N, H, W), got {img}")
    n = img[0]
    for k, shp in shapes.items():
        if len(shp) == 0 or shp[0] != n:
            raise InputDataError(f"{path}: dataset {k!r} has {shp[0] if shp else 0} rows, images has {n}")
    expect = {"psfs": 3, "sky_sigma": 1, "ids": 1, "snr": 1, "params": 2}
    for k, nd in expect.items():
        if k in shapes and len(shapes[k]) != nd:
            raise InputDataError(f"{path}: dataset {k!r} must have {nd} dimension(s), got shape {shapes[k]}")
    if "psfs" in shapes and shapes["psfs"][1] != shapes["psfs"][2]:
        raise InputDataError(f"{path}: psfs must be square (N, P, P), got {shapes['psfs']}")
    for k in ("sigma_maps", "masks"):
        if k in shapes and shapes[k] != img:
            raise InputDataError(f"{path}: dataset {k!r} has shape {shapes[k]}, images has {img}")
    return shapes


def read_arrays(path: str | Path, start: int = 0, stop: int | None = None,
                keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """Bulk read rows ``start:stop`` of every dataset (or of ``keys``) into numpy arrays."""
    import h5py

    with _open(path, h5py) as f:
        names = keys if keys is not None else list(f.keys())
        missing = [k for k in names if k not in f]
        if missing:
            raise InputDataError(f"{path}: no dataset(s) {', '.join(missing)}")
        return {k: f[k][start:stop] for k in names}


class StampDataset(Dataset):
    """A torch ``Dataset`` over one split file, reading stamps lazily.

    The HDF5 file is opened on first access in each process (DataLoader workers each open their
    own handle), so memory stays flat whatever the size of the file.

    Parameters
    ----------
    path : str or Path
        A split file written by :func:`write_split`.

    Attributes
    ----------
    meta : dict
        The file's metadata.
    path : Path

    Notes
    -----
    ``dataset[i]`` is a dict: ``image`` float32 (61, 61), ``psf`` float32 (25, 25), ``sky_sigma``
    float32 0-d, ``params`` float32 (7,), ``id`` int64 0-d, and ``sigma_map`` float32 (61, 61)
    when the file has ``sigma_maps``.
    """

    def __init__(self, path: str | Path):
        import h5py

        self.path = Path(path)
        with _open(self.path, h5py) as f:
            missing = [k for k in REQUIRED_KEYS if k not in f]
            if missing:
                raise InputDataError(f"{self.path}: not a galnet dataset (missing {', '.join(missing)})")
            self._len = int(f["images"].shape[0])
            self.has_sigma_maps = "sigma_maps" in f
            self.meta = json.loads(f.attrs.get("meta", "{}"))
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        return self._len

    def _handle(self):
        import h5py

        if self._file is None or self._pid != os.getpid():
            self._file = _open(self.path, h5py, rdcc_nbytes=8 * 2**20)
            self._pid = os.getpid()
        return self._file

    def __getitem__(self, i: int) -> dict:
        import torch

        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"index {i} out of range for {self._len} stamps")
        f = self._handle()
        item = {
            "image": torch.from_numpy(np.asarray(f["images"][i], dtype=np.float32)),
            "psf": torch.from_numpy(np.asarray(f["psfs"][i], dtype=np.float32)),
            "sky_sigma": torch.tensor(float(f["sky_sigma"][i]), dtype=torch.float32),
            "params": torch.from_numpy(np.asarray(f["params"][i], dtype=np.float32)),
            "id": torch.tensor(int(f["ids"][i]), dtype=torch.int64),
        }
        if self.has_sigma_maps:
            item["sigma_map"] = torch.from_numpy(np.asarray(f["sigma_maps"][i], dtype=np.float32))
        return item

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state

    def close(self) -> None:
        """Close the file handle of this process (reopened on next access)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def concatenate_files(out_path: str | Path, parts: list[str | Path], meta: dict[str, Any], *,
                      chunk_stamps: int = CHUNK_STAMPS, compression: str = "gzip") -> Path:
    """Stream several split files (e.g. shards) into one, in order, without loading them all.

    Datasets present in the first part are concatenated (all parts must have the same set);
    the result gets ``meta``. Written atomically like :func:`write_split`.
    """
    import h5py

    out_path = Path(out_path)
    sizes, keys, shapes = [], None, {}
    for p in parts:
        with _open(p, h5py) as f:
            k = sorted(f.keys())
            if keys is None:
                keys = k
                shapes = {name: f[name].shape[1:] for name in k}
            elif k != keys:
                raise InputDataError(f"{p}: datasets {k} differ from the first part's {keys}")
            sizes.append(int(f["images"].shape[0]))
    total = sum(sizes)
    opts: dict[str, Any] = {"compression": compression, "shuffle": True}
    if compression == "gzip":
        opts["compression_opts"] = 1
    allk = {**REQUIRED_KEYS, **OPTIONAL_KEYS}

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as out:
            out.attrs["meta"] = json.dumps(meta, sort_keys=True)
            for name in keys or []:
                chunks = (max(1, min(chunk_stamps, total)),) + shapes[name]
                out.create_dataset(name, shape=(total,) + shapes[name], dtype=allk.get(name, "float32"),
                                   chunks=chunks if total else None, **(opts if total else {}))
            row = 0
            for p, m in zip(parts, sizes):
                with _open(p, h5py) as f:
                    for name in keys or []:
                        out[name][row : row + m] = f[name][...]
                row += m

    return atomic_write(out_path, write)


__all__.append("concatenate_files")
