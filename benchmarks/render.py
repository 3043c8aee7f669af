"""Render the same HSC-like stamps with galnet and with GalSim; print stamps/s and their ratio.

61x61 stamps, 25x25 PSF image (Moffat FWHM 4.5 px, beta 3, pixel included), parameters from the
default HSC r-band prior (n capped at GalSim's 6.2). GalSim draws Sersic ⊗ InterpolatedImage(PSF)
with method='no_pixel' (the PSF image holds the pixel), at its default accuracy. Also reports
galnet's worst per-pixel difference from GalSim on the common stamps, relative to each peak.
"""

from __future__ import annotations

import numpy as np
import torch

from _common import emit, hsc_like_params, parser, timed
from galnet.conventions import to_galsim
from galnet.render import MoffatPSF, render_sersic, required_fourier_size


def galsim_stamps(params: np.ndarray, psf: np.ndarray) -> np.ndarray:
    import galsim

    psf_obj = galsim.InterpolatedImage(galsim.ImageD(psf, scale=1.0))
    out = np.empty((len(params), 61, 61))
    for i, p in enumerate(params):
        d = to_galsim(*p)
        gal = galsim.Sersic(p[4], half_light_radius=d["half_light_radius"], flux=d["flux"])
        gal = gal.shear(q=p[5], beta=d["beta_deg"] * galsim.degrees)
        img = galsim.ImageD(61, 61, scale=1.0)
        c = img.true_center
        galsim.Convolve(gal, psf_obj).drawImage(img, method="no_pixel", offset=(p[0] - c.x, p[1] - c.y))
        out[i] = img.array
    return out


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(args.threads)
    count = 500 if args.quick else 2000
    n_galsim = 40 if args.quick else 2000
    params = hsc_like_params(count, seed=1)
    params[:, 4] = np.minimum(params[:, 4], 6.2)  # GalSim's Sersic stops at n = 6.2
    psf = MoffatPSF(fwhm=4.5, beta=3.0).draw(25).numpy()
    p32 = torch.tensor(params, dtype=torch.float32)
    psf32 = torch.tensor(psf, dtype=torch.float32)
    render_sersic(p32[:8], psf32)  # warm up: builds the Fourier table once
    t_galnet, ours = timed(render_sersic, p32, psf32, repeat=2)
    t_fixed, _ = timed(render_sersic, p32, psf32, fourier_size=96, repeat=2)
    t_galsim, ref = timed(galsim_stamps, params[:n_galsim], psf)
    ours = ours[:n_galsim].double().numpy()
    err = (np.abs(ours - ref).max(axis=(1, 2)) / ref.max(axis=(1, 2)))
    sizes = required_fourier_size(params, (61, 61), 25)
    rate_galnet = count / t_galnet
    rate_galsim = n_galsim / t_galsim
    print(f"galnet (auto DFT size, float32): {rate_galnet:9.0f} stamps/s")
    print(f"galnet (DFT size fixed at 96):    {count / t_fixed:9.0f} stamps/s")
    print(f"GalSim (InterpolatedImage PSF):   {rate_galsim:9.1f} stamps/s")
    print(f"ratio galnet / GalSim:            {rate_galnet / rate_galsim:9.0f} x")
    print(f"median DFT size {np.median(sizes):.0f}, share needing > 128: {np.mean(sizes > 128):.2f}")
    print(f"galnet vs GalSim, per-pixel |diff| / peak: median {np.median(err):.1e}, worst {err.max():.1e}")
    emit({
        "benchmark": "render", "stamps": count, "galsim_stamps": n_galsim, "threads": args.threads,
        "galnet_stamps_per_s": round(rate_galnet, 1),
        "galnet_fixed96_stamps_per_s": round(count / t_fixed, 1),
        "galsim_stamps_per_s": round(rate_galsim, 2), "ratio": round(rate_galnet / rate_galsim, 1),
        "median_err_of_peak": float(np.median(err)), "worst_err_of_peak": float(err.max()),
    })


if __name__ == "__main__":
    main()
