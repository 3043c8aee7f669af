"""FITS stamp inputs: a cube of stamps (:class:`FitsCubeSource`) and a directory of cutouts
(:class:`CutoutDirSource`).

Cutout-directory layout
-----------------------
One FITS file per galaxy, ``<id>.fits`` (or ``.fits.gz``, ``.fit``); the id is the file name without the
extension. In it:

* the stamp: the HDU named ``SCI`` if there is one, else the first HDU with 2-D data (counts, sky-subtracted);
* the PSF: an HDU named ``PSF``, else a side file ``<id>.psf.fits``, else the ``psf`` given to the source;
* the noise: an HDU named ``SIGMA`` (per-pixel σ map, counts), else a side file ``<id>.sigma.fits``; the sky σ
  comes from the header keyword ``SKYSIG`` of the stamp HDU, else the MAD of the stamp border.

Side files (``*.psf.fits``, ``*.sigma.fits``) are never read as galaxies.

σ-map and mask files (``galnet fit --sigma/--mask``) go with both forms: one plane per stamp, read row by
row (:class:`~galnet.data.FitsPlanes`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import unique_ids
from ..errors import InputDataError, PSFError
from ..flags import Flag
from .chunk import Chunk, finish_chunk, resize_stamps
from .fits_io import FitsPlanes, fits_stem, header_dict, header_meta, image_hdu, is_fits_name, open_input_fits
from .noise import check_sky_sigma
from .psfs import prepare_psf, read_psf_file, shared_psf
from .shards import file_id
from .sources import InputSource, plane_settings, psf_setting, sky_setting

log = logging.getLogger(__name__)

__all__ = ["FitsCubeSource", "CutoutDirSource"]


def sigma_planes(sigma, variance, shape3) -> FitsPlanes | None:
    """The σ planes of a stamp input: a σ-map file, or a variance file read as σ; at most one of them."""
    if sigma is not None and variance is not None:
        raise InputDataError("give a sigma map or a variance map, not both")
    if sigma is not None:
        return FitsPlanes(sigma, "sigma", shape3)
    return None if variance is None else FitsPlanes(variance, "variance", shape3)


class FitsCubeSource(InputSource):
    """A FITS cube of stamps (N, H, W) (or one 2-D stamp), read in row ranges through a memory map.

    Parameters
    ----------
    path : path
        FITS file; the first HDU with 3-D (or 2-D) data, or ``hdu``.
    psf : path or ndarray
        PSF image (P, P) shared by every stamp, or a PSF cube (N, P, P), one per stamp (FITS path or array).
    sky_sigma : float or ndarray (N,), optional
        Sky σ in counts / pixel; if omitted, the header keyword ``SKYSIG``, else the MAD of each stamp's
        border.
    sigma, variance, mask : path, optional
        σ-map (counts) or variance (counts²) and bad-pixel mask (non-zero = bad) files with one plane per
        stamp.
    zeropoint, gain, pixel_scale : float, optional
        Override the header (``MAGZPT``/``ZEROPT``, ``GAIN``, ``PIXSCALE``).
    hdu : int or str, optional

    Raises
    ------
    InputDataError
        Unreadable files, no PSF, a PSF cube or plane file that does not match the stamps; PSFError for a
        shared PSF that cannot be repaired (the message names the file).
    """

    kind = "fits-cube"

    def __init__(
        self, path, *, psf, sky_sigma=None, sigma=None, mask=None, zeropoint=None, gain=None,
        pixel_scale=None, hdu=None, variance=None
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.hdu = hdu
        with open_input_fits(self.path, "stamp cube") as hdul:
            h = image_hdu(hdul, self.path, hdu)
            self.shape = tuple(h.data.shape)
            header = h.header.copy()
            self._hdu_index = [i for i, x in enumerate(hdul) if x is h][0] if hdu is None else (hdu or 0)
        self.n_rows = 1 if len(self.shape) == 2 else self.shape[0]
        self.ids = np.arange(self.n_rows)
        self.header = header_dict(header)
        self.meta = header_meta(header, zeropoint=zeropoint, gain=gain, pixel_scale=pixel_scale)
        sky_sigma = check_sky_sigma(sky_sigma, "sky_sigma")
        if sky_sigma is None and isinstance(header.get("SKYSIG"), (int, float)):
            sky_sigma = float(header["SKYSIG"])
        self.sky_sigma = (
            None
            if sky_sigma is None
            else np.broadcast_to(np.asarray(sky_sigma, dtype=float), (self.n_rows,)).copy()
        )
        self._set_psf(psf)
        shape3 = (self.n_rows, *self.shape[-2:])
        self.sigma_planes = sigma_planes(sigma, variance, shape3)
        self.mask_planes = None if mask is None else FitsPlanes(mask, "mask", shape3)

    def _set_psf(self, psf) -> None:
        """``psf_path``, ``psf`` (in-memory image or cube) or ``psf_cube_path`` (a cube read per chunk)."""
        self.psf_path = None
        self.psf = None
        self.psf_cube_path = None
        self._psf_cache: dict = {}
        if psf is None:
            raise InputDataError(f"{self.path}: a stamp cube needs a PSF (--psf FILE: image or cube)")
        arr = None if isinstance(psf, (str, os.PathLike)) else np.asarray(psf, dtype=float)
        if arr is None:
            self.psf_path = Path(psf)
            with open_input_fits(self.psf_path, "PSF") as hdul:
                ph = image_hdu(hdul, self.psf_path)
                if ph.data.ndim == 2:
                    arr = np.array(ph.data, dtype=float)
                elif ph.data.shape[0] != self.n_rows:
                    raise InputDataError(
                        f"{self.psf_path}: PSF cube has {ph.data.shape[0]} PSFs for "
                        f"{self.n_rows} stamps in {self.path}"
                    )
                else:
                    self.psf_cube_path = self.psf_path
        if arr is not None and arr.ndim == 3:
            if arr.shape[0] != self.n_rows:
                raise InputDataError(
                    f"PSF cube has {arr.shape[0]} PSFs for {self.n_rows} stamps in {self.path}"
                )
            self.psf = arr
        elif arr is not None:
            self.psf = arr
            if self._shared_psf()[1]:
                log.warning(
                    "PSF %s was renormalised / re-centred (flag PSF_FIXED on every row)",
                    self.psf_path or "array",
                )

    def _shared_psf(self) -> tuple[np.ndarray, bool]:
        return shared_psf(self.psf, self.psf_size, self._psf_cache, name=f"PSF {self.psf_path or 'array'}")

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), **file_id(self.path)}

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "sky_sigma": sky_setting(self.sky_sigma), "image_hdu": self.hdu,
                "psf": psf_setting(self.psf_path, None if self.psf_path is not None else self.psf),
                **plane_settings(self.sigma_planes, self.mask_planes)}

    def _section(self, path: Path, hdu, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of an image HDU, in the stored dtype (a 2-D image is one row)."""
        with open_input_fits(path, "FITS") as hdul:
            h = hdul[hdu]
            try:
                data = h.section[start:stop] if h.data.ndim == 3 else h.data[None]
            except Exception:  # noqa: BLE001 - some compressed layouts have no .section
                data = h.data[start:stop]
            return np.array(data)

    def _psf_rows(self, start: int, stop: int) -> np.ndarray:
        if self.psf_cube_path is not None:
            with open_input_fits(self.psf_cube_path, "PSF") as hdul:
                h = image_hdu(hdul, self.psf_cube_path)
                return np.array(h.data[start:stop], dtype=np.float64)
        return self.psf[start:stop] if self.psf.ndim == 3 else self.psf

    def read_rows(self, start: int, stop: int) -> Chunk:
        b = stop - start
        return Chunk(
            start=start,
            ids=np.arange(start, stop),
            images=self._section(self.path, self._hdu_index, start, stop),
            psfs=self._psf_rows(start, stop),
            sky_sigma=np.full(b, np.nan) if self.sky_sigma is None else self.sky_sigma[start:stop],
            flags=np.zeros(b, np.int64),
            bad=np.zeros(b, bool),
            mask=None if self.mask_planes is None else self.mask_planes.rows(start, stop) != 0,
            sigma_maps=None if self.sigma_planes is None else self.sigma_planes.rows(start, stop),
            offset=np.zeros((b, 2)),
            sky_given=np.full(b, self.sky_sigma is not None),
        )

    def read_chunk(self, start: int, stop: int) -> Chunk:
        raw = self.read_rows(start, stop)
        psfs, fixed = raw.psfs, None
        if raw.psfs.ndim == 2:
            psfs, was_fixed = self._shared_psf()
            fixed = np.full(stop - start, was_fixed)
        return finish_chunk(
            start,
            raw.ids,
            raw.images,
            psfs,
            None if self.sky_sigma is None else raw.sky_sigma,
            names=[f"{self.path.name}[{i}]" for i in range(start, stop)],
            psf_fixed=fixed,
            sigma_maps=raw.sigma_maps,
            input_mask=raw.mask,
            stamp_size=self.stamp_size,
            psf_size=self.psf_size,
            sky_given=self.sky_sigma is not None,
        )


class CutoutDirSource(InputSource):
    """A directory of per-galaxy FITS cutouts (layout in the module docstring).

    Stamps of another size than ``stamp_size`` are cropped/padded around their central pixel (``RESAMPLED``;
    ``Chunk.offset`` keeps the cutout's frame); each cutout's PSF is made ``psf_size`` as it is read.

    Parameters
    ----------
    directory : path
    psf : path or ndarray, optional
        PSF for cutouts that have neither a ``PSF`` HDU nor a ``<id>.psf.fits`` side file.
    sky_sigma : float, optional
        Sky σ (counts / pixel) for cutouts without ``SKYSIG`` or a σ map; else the border MAD.
    sigma, mask : path, optional
        σ-map and bad-pixel mask files with one plane per cutout (in file-name order), each the size of
        the cutouts (see :meth:`native_sizes`); a σ-map file replaces the cutouts' own σ maps.
    zeropoint, gain, pixel_scale : float, optional
        Override the first cutout's header.

    Raises
    ------
    InputDataError
        Not a directory, no cutouts, unreadable PSF or plane files.
    """

    kind = "cutout-dir"

    def __init__(
        self, directory, *, psf=None, sky_sigma=None, sigma=None, mask=None, zeropoint=None, gain=None,
        pixel_scale=None, variance=None
    ) -> None:
        super().__init__()
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise InputDataError(f"{self.directory}: not a directory")
        names = sorted(n for n in os.listdir(self.directory) if is_fits_name(n))
        side = {n for n in names if fits_stem(n).endswith((".psf", ".sigma"))}
        self.files = [n for n in names if n not in side]
        self.side = side
        if not self.files:
            raise InputDataError(f"{self.directory}: no FITS cutouts (*.fits) in the directory")
        self.n_rows = len(self.files)
        self.ids = self._file_ids()
        self.sky_sigma = check_sky_sigma(sky_sigma, "sky_sigma")
        self.psf = None
        self.psf_path = Path(psf) if isinstance(psf, (str, os.PathLike)) else None
        self._psf_cache: dict = {}
        if psf is not None:
            self.psf = read_psf_file(psf) if isinstance(psf, (str, os.PathLike)) else np.asarray(psf, float)
            shared_psf(self.psf, self.psf_size, self._psf_cache, name=f"PSF {psf}")  # refused now if bad
        header = None
        try:
            with open_input_fits(self.directory / self.files[0], "cutout") as hdul:
                header = image_hdu(hdul, self.directory / self.files[0], None, (2,)).header.copy()
        except InputDataError:
            pass
        self.header = header_dict(header)
        self.meta = header_meta(header, zeropoint=zeropoint, gain=gain, pixel_scale=pixel_scale)
        self.sigma_planes = self.mask_planes = None
        if sigma is not None or variance is not None or mask is not None:
            shape3 = (self.n_rows, *(self.native_sizes()[0],) * 2)
            self.sigma_planes = sigma_planes(sigma, variance, shape3)
            self.mask_planes = None if mask is None else FitsPlanes(mask, "mask", shape3)

    def _file_ids(self) -> np.ndarray:
        """The file stems; two files with one stem (g0007.fits, g0007.fits.gz) keep their full names."""
        stems = [fits_stem(f) for f in self.files]
        count = Counter(stems)
        dup = [f for f, st in zip(self.files, stems) if count[st] > 1]
        if dup:
            log.warning("%s: %d cutouts share an id with another file (%s); they use their full file names "
                        "as ids", self.directory, len(dup), ", ".join(dup[:4]))
        return unique_ids(np.array([f if count[st] > 1 else st for f, st in zip(self.files, stems)]),
                          where=str(self.directory))

    def native_sizes(self) -> tuple[int, int]:
        """``(stamp size, PSF size)`` of the cutouts as stored, from the headers only (cached).

        The stamp size is the most common ``max(H, W)`` of the stamp HDUs; the PSF size is the odd size
        (``max(P, Q) | 1``) of the shared PSF, else of the first cutout's own PSF (HDU or side file), else
        :data:`~galnet.data.PSF_SIZE`. ``galnet fit`` reads the cutouts at these sizes.
        """
        if getattr(self, "_native", None) is None:
            sizes, psf_shape = [], None if self.psf is None else self.psf.shape
            for name in self.files:
                try:
                    shape, own_psf = self._header_shapes(name)
                except InputDataError as exc:
                    log.error("%s", exc)
                    continue
                sizes.append(max(shape))
                psf_shape = psf_shape or own_psf
            if not sizes:
                raise InputDataError(f"{self.directory}: no readable 2-D cutouts")
            stamp = Counter(sizes).most_common(1)[0][0]
            self._native = (stamp, (max(psf_shape) | 1) if psf_shape else self.psf_size)
        return self._native

    def _header_shapes(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
        """(stamp shape, own PSF shape or None) of one cutout, from its headers."""
        path = self.directory / name
        with open_input_fits(path, "cutout") as hdul:
            names = [h.name.upper() for h in hdul]
            sci = hdul["SCI"] if "SCI" in names else image_hdu(hdul, path, None, (2,))
            shape = tuple(int(sci.header.get(f"NAXIS{k}", 0)) for k in (2, 1))
            psf = None
            if "PSF" in names:
                psf = tuple(int(hdul["PSF"].header.get(f"NAXIS{k}", 0)) for k in (2, 1))
        for suf in (".fits", ".fits.gz"):
            side = f"{fits_stem(name)}.psf{suf}"
            if psf is None and side in self.side:
                psf = read_psf_file(self.directory / side).shape
        return shape, psf

    def fingerprint(self) -> dict[str, Any]:
        h = hashlib.sha256()
        for name in self.files + sorted(self.side):
            try:
                st = (self.directory / name).stat()
                h.update(f"{name}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
            except OSError:
                h.update(f"{name}\0missing\n".encode())
        return {**super().fingerprint(), "dir": str(self.directory.resolve()), "files_sha256": h.hexdigest()}

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "sky_sigma": sky_setting(self.sky_sigma),
                "psf": psf_setting(self.psf_path, None if self.psf_path is not None else self.psf),
                **plane_settings(self.sigma_planes, self.mask_planes)}

    def _read_one(self, name: str) -> tuple[np.ndarray, np.ndarray | None, float | None, np.ndarray | None]:
        """(stamp float64, own PSF or None, SKYSIG or None, own σ map or None) of one cutout."""
        path = self.directory / name
        stem = fits_stem(name)
        psf = sigma = None
        sky = None
        with open_input_fits(path, "cutout") as hdul:
            names = [h.name.upper() for h in hdul]
            sci = hdul["SCI"] if "SCI" in names else image_hdu(hdul, path, None, (2,))
            if sci.data is None or sci.data.ndim != 2:
                raise InputDataError(f"{path}: the stamp HDU has no 2-D data")
            img = np.array(sci.data, dtype=np.float64)
            if isinstance(sci.header.get("SKYSIG"), (int, float)):
                sky = float(sci.header["SKYSIG"])
            if "PSF" in names:
                psf = np.array(hdul["PSF"].data, dtype=float)
            if "SIGMA" in names:
                sigma = np.array(hdul["SIGMA"].data, dtype=np.float32)
        for suf in (".fits", ".fits.gz"):
            if psf is None and f"{stem}.psf{suf}" in self.side:
                psf = read_psf_file(self.directory / f"{stem}.psf{suf}")
            if sigma is None and f"{stem}.sigma{suf}" in self.side:
                with open_input_fits(self.directory / f"{stem}.sigma{suf}", "sigma map") as h2:
                    sigma = np.array(
                        image_hdu(h2, self.directory / f"{stem}.sigma{suf}", None, (2,)).data,
                        dtype=np.float32,
                    )
        if sigma is not None and sigma.shape != img.shape:
            raise InputDataError(f"{path}: sigma map shape {sigma.shape} differs from the stamp {img.shape}")
        return img, psf, sky, sigma

    def _row_psf(self, psf, name: str, label: str) -> tuple[np.ndarray, bool]:
        """A cutout's PSF at ``psf_size``: its own, else the shared one (InputDataError if neither)."""
        if psf is not None:
            return prepare_psf(psf, self.psf_size, name=f"{label} PSF")
        if self.psf is None:
            raise InputDataError(
                f"{label}: no PSF (no PSF HDU, no side file {fits_stem(name)}.psf.fits and no --psf)"
            )
        return shared_psf(self.psf, self.psf_size, self._psf_cache, name="PSF")

    def read_rows(self, start: int, stop: int) -> Chunk:
        s, p, b = self.stamp_size, self.psf_size, stop - start
        chunk = Chunk(
            start=start,
            ids=self.ids[start:stop],
            images=np.full((b, s, s), np.nan),
            psfs=np.zeros((b, p, p), np.float32),
            sky_sigma=np.full(b, np.nan if self.sky_sigma is None else float(self.sky_sigma)),
            flags=np.zeros(b, np.int64),
            bad=np.zeros(b, bool),
            sigma_maps=np.full((b, s, s), np.nan, np.float32),
            offset=np.zeros((b, 2)),
            sky_given=np.full(b, self.sky_sigma is not None),
        )
        chunk.psfs[:, p // 2, p // 2] = 1.0
        has_sigma = False
        for k, name in enumerate(self.files[start:stop]):
            try:
                has_sigma |= self._fill_row(chunk, k, name)
            except (InputDataError, PSFError) as exc:
                log.error("%s; row flagged BAD_INPUT", exc)
                chunk.bad[k] = True
                chunk.images[k] = 0.0
        if not has_sigma:
            chunk.sigma_maps = None
        if self.sigma_planes is not None:
            chunk.sigma_maps = self._plane_rows(self.sigma_planes, start, stop, np.inf).astype(np.float32)
        if self.mask_planes is not None:
            chunk.mask = self._plane_rows(self.mask_planes, start, stop, 1.0) != 0
        return chunk

    def _fill_row(self, chunk: Chunk, k: int, name: str) -> bool:
        """Read one cutout into row ``k`` of ``chunk``; whether it has its own σ map."""
        s = self.stamp_size
        label = str(self.directory / name)
        img, psf, sk, sigma = self._read_one(name)
        chunk.psfs[k], fixed = self._row_psf(psf, name, label)
        if fixed:
            chunk.flags[k] |= int(Flag.PSF_FIXED)
        if img.shape != (s, s):
            img, ox, oy = resize_stamps(img[None], s)
            img = img[0]
            chunk.offset[k] = (ox, oy)
            chunk.flags[k] |= int(Flag.RESAMPLED)
            log.warning("%s: stamp %s cropped/padded to %dx%d (flag RESAMPLED)", label,
                        sigma.shape if sigma is not None else "", s, s)
            if sigma is not None:
                sigma = resize_stamps(sigma[None], s, fill=np.inf)[0][0]
        chunk.images[k] = img
        if sk is not None:
            chunk.sky_sigma[k] = sk
            chunk.sky_given[k] = True
        if sigma is None:
            return False
        chunk.sigma_maps[k] = sigma
        if not np.isfinite(chunk.sky_sigma[k]):
            good = np.isfinite(sigma) & (sigma > 0)
            chunk.sky_sigma[k] = float(np.median(sigma[good])) if good.any() else np.nan
        return True

    def _plane_rows(self, planes: FitsPlanes, start: int, stop: int, fill: float) -> np.ndarray:
        rows = planes.rows(start, stop)
        if rows.shape[1:] != (self.stamp_size, self.stamp_size):
            rows = resize_stamps(rows, self.stamp_size, fill=fill)[0]
        return rows

    def read_chunk(self, start: int, stop: int) -> Chunk:
        raw = self.read_rows(start, stop)
        chunk = finish_chunk(
            start,
            raw.ids,
            raw.images,
            raw.psfs,
            raw.sky_sigma,
            names=[str(self.directory / f) for f in self.files[start:stop]],
            flags=raw.flags,
            bad=raw.bad,
            psf_fixed=(raw.flags & int(Flag.PSF_FIXED)) != 0,
            input_mask=raw.mask,
            offset=raw.offset,
            stamp_size=self.stamp_size,
            psf_size=self.psf_size,
            sky_given=raw.sky_given,
        )
        if raw.sigma_maps is not None:
            sig = raw.sigma_maps
            missing = ~np.isfinite(sig).any(axis=(1, 2))
            sig[missing] = chunk.sky_sigma[missing, None, None]
            chunk.sigma_maps = sig
            bad_sig = ~(np.isfinite(sig) & (sig > 0))
            if chunk.mask is not None:
                bad_sig &= ~chunk.mask
            chunk.flags[bad_sig.reshape(len(raw), -1).any(axis=1)] |= int(Flag.BAD_SIGMA)
        return chunk
