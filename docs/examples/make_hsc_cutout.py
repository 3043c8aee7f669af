"""Write one HSC COSMOS deblender scene as an HSC pipeline coadd cutout, with its PSF and its detected peaks.

Usage: ``python docs/examples/make_hsc_cutout.py SCENE.npz OUT_DIR``

The scene is one of the even-id ``.npz`` files of ``lsst/testdata_deblender`` (``real_data/hsc_cosmos/
not_matched``; ``galnet.data.hsc.fetch_scenes`` downloads them). Written: ``OUT_DIR/cutout.fits`` in the
pipeline's layout (primary HDU with ``FLUXMAG0``; ``IMAGE``; ``MASK`` with ``MP_*`` plane names, ``NO_DATA``
set outside the deblender footprint; ``VARIANCE`` = 1 / weight), ``OUT_DIR/psf.fits`` (the r-band PSF) and
``OUT_DIR/peaks.ecsv`` (id, 1-based x, y of the detected peaks). No pixels of the scenes are shipped with
galnet.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from galnet.data.hsc import read_scene

PLANES = {"BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5, "NO_DATA": 8, "SUSPECT": 7}


def main(scene_path: str, out_dir: str) -> None:
    sc = read_scene(scene_path, "r")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mask = np.where(sc.valid, 0, 1 << PLANES["NO_DATA"]).astype(np.int32)
    mh = fits.Header()
    for name, bit in PLANES.items():
        mh[f"HIERARCH MP_{name}"] = bit
    variance = np.where(sc.valid, sc.variance, np.inf).astype(np.float32)
    fits.HDUList([
        fits.PrimaryHDU(header=fits.Header({"FLUXMAG0": 10 ** (0.4 * 27.0), "FILTER": "HSC-R"})),
        fits.ImageHDU(sc.image, name="IMAGE"),
        fits.ImageHDU(mask, header=mh, name="MASK"),
        fits.ImageHDU(variance, name="VARIANCE"),
    ]).writeto(out / "cutout.fits", overwrite=True)
    fits.writeto(out / "psf.fits", sc.psf.astype(np.float32), overwrite=True)
    ids = np.arange(1, len(sc.peaks) + 1)
    peaks = Table({"id": ids, "x": sc.peaks[:, 0] + 1.0, "y": sc.peaks[:, 1] + 1.0})
    peaks.write(out / "peaks.ecsv", overwrite=True)
    print(f"{out / 'cutout.fits'}: {sc.image.shape[1]}x{sc.image.shape[0]} px, {len(sc.peaks)} peaks")


if __name__ == "__main__":
    main(*sys.argv[1:3])
