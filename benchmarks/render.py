"""Render the same HSC-like stamps with galnet and with GalSim; print stamps/s and their ratio.

61x61 stamps, 25x25 PSF image (Moffat FWHM 4.5 px, beta 3, pixel included), parameters from the
default HSC r-band prior (n capped at GalSim's 6.2). GalSim draws Sersic ⊗ InterpolatedImage(PSF)
with method='no_pixel' (the PSF image holds the pixel), at its default accuracy. Also reports
galnet's worst per-pixel difference from GalSim on the common stamps, relative to each peak.

The three sides (galnet auto DFT size, galnet fixed 96, GalSim) are timed in this process, interleaved,
``--repeats`` times (>= 3); rates and the ratio are quoted from the median and from the best repeat.
The thread settings and a load check come first (``--require-idle`` refuses a loaded machine; else
``"loaded": true`` in the JSON). Use ``--threads 1`` on a shared CPU: torch's multi-threaded path
collapses when its threads do not get their cores.
"""

from __future__ import annotations

import numpy as np
import torch

from _common import hsc_like_params, parser
from _timing import add_timing_args, check_machine, emit_with_state, interleaved, rates, ratio, timing_figures
from galnet.conventions import to_galsim
from galnet.params import IX_N, IX_Q, IX_X, IX_Y
from galnet.render import MoffatPSF, render_sersic, required_fourier_size


def galsim_stamps(params: np.ndarray, psf: np.ndarray) -> np.ndarray:
    import galsim

    psf_obj = galsim.InterpolatedImage(galsim.ImageD(psf, scale=1.0))
    out = np.empty((len(params), 61, 61))
    for i, p in enumerate(params):
        d = to_galsim(*p)
        gal = galsim.Sersic(p[IX_N], half_light_radius=d["half_light_radius"], flux=d["flux"])
        gal = gal.shear(q=p[IX_Q], beta=d["beta_deg"] * galsim.degrees)
        img = galsim.ImageD(61, 61, scale=1.0)
        c = img.true_center
        galsim.Convolve(gal, psf_obj).drawImage(img, method="no_pixel", offset=(p[IX_X] - c.x, p[IX_Y] - c.y))
        out[i] = img.array
    return out


def main() -> None:
    args = add_timing_args(parser(__doc__.splitlines()[0])).parse_args()
    torch.set_num_threads(args.threads)
    state = check_machine(args, threads=args.threads)
    count = 500 if args.quick else 2000
    n_galsim = 20 if args.quick else 500
    params = hsc_like_params(count, seed=1)
    params[:, IX_N] = np.minimum(params[:, IX_N], 6.2)  # GalSim's Sersic stops at n = 6.2
    psf = MoffatPSF(fwhm=4.5, beta=3.0).draw(25).numpy()
    p32 = torch.tensor(params, dtype=torch.float32)
    psf32 = torch.tensor(psf, dtype=torch.float32)
    runs = interleaved({
        "galnet": lambda: render_sersic(p32, psf32),
        "galnet_fixed96": lambda: render_sersic(p32, psf32, fourier_size=96),
        "galsim": lambda: galsim_stamps(params[:n_galsim], psf),
    }, repeats=args.repeats)
    ours = runs["galnet"].result[:n_galsim].double().numpy()
    ref = runs["galsim"].result
    err = (np.abs(ours - ref).max(axis=(1, 2)) / ref.max(axis=(1, 2)))
    sizes = required_fourier_size(params, (61, 61), 25)
    figures = {
        "benchmark": "render", "stamps": count, "galsim_stamps": n_galsim, "threads": args.threads,
        "repeats": args.repeats,
        **rates(runs["galnet"], count, "galnet_stamps_per_s"),
        **rates(runs["galnet_fixed96"], count, "galnet_fixed96_stamps_per_s"),
        **rates(runs["galsim"], n_galsim, "galsim_stamps_per_s", digits=2),
        **ratio(runs["galnet"], runs["galsim"], "ratio", per_a=count, per_b=n_galsim, digits=1),
        "median_err_of_peak": float(np.median(err)), "worst_err_of_peak": float(err.max()),
        "timings": timing_figures(runs),
    }
    print(f"galnet (auto DFT size, float32): {figures['galnet_stamps_per_s']:9.0f} stamps/s "
          f"(best {figures['galnet_stamps_per_s_best']:.0f})")
    print(f"galnet (DFT size fixed at 96):    {figures['galnet_fixed96_stamps_per_s']:9.0f} stamps/s")
    print(f"GalSim (InterpolatedImage PSF):   {figures['galsim_stamps_per_s']:9.1f} stamps/s")
    print(f"ratio galnet / GalSim:            {figures['ratio']:9.0f} x (best-of-{args.repeats}: "
          f"{figures['ratio_best']:.0f} x)")
    print(f"median DFT size {np.median(sizes):.0f}, share needing > 128: {np.mean(sizes > 128):.2f}")
    print(f"galnet vs GalSim, per-pixel |diff| / peak: median {np.median(err):.1e}, worst {err.max():.1e}")
    emit_with_state(figures, state)

if __name__ == "__main__":
    main()
