"""Figure of simulated stamps: a grid of stamps next to their PSFs, and histograms of the drawn
parameters and S/N. Writes ``docs/img/simulated_stamps.png``.

Usage::

    python benchmarks/plot_simulated.py [--n 1024] [--seed 0] [--out docs/img/simulated_stamps.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="stamps drawn for the histograms")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="hsc-r")
    default_out = Path(__file__).resolve().parent.parent / "docs/img/simulated_stamps.png"
    ap.add_argument("--out", default=str(default_out))
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from galnet.params import IX_MAG, IX_N, IX_PA, IX_Q, IX_RE, IX_X, IX_Y
    from galnet.simulate import generate_batch, load_preset

    config = load_preset(args.preset)
    rng = np.random.default_rng(args.seed)
    parts = [generate_batch(config, min(256, args.n - i), seed=rng) for i in range(0, args.n, 256)]
    b = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    from matplotlib.ticker import NullFormatter

    ncol, nrow = 6, 3
    fig = plt.figure(figsize=(15, 13.5))
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.35, 1])
    axes = top.subplots(nrow, 2 * ncol, gridspec_kw={"width_ratios": [1, 0.6] * ncol})
    for k in range(nrow * ncol):
        r, c = divmod(k, ncol)
        img, psf, p = b["images"][k], b["psfs"][k], b["params"][k]
        ax, ax2 = axes[r, 2 * c], axes[r, 2 * c + 1]
        s = b["sky_sigma"][k]
        ax.imshow(np.arcsinh(img / (3 * s)), origin="lower", cmap="gray_r", vmin=-1,
                  vmax=np.arcsinh(img.max() / (3 * s)))
        ax.plot(p[IX_X] - 1, p[IX_Y] - 1, "+", color="tab:red", ms=6)
        ax.set_title(f"m={p[IX_MAG]:.1f} re={p[IX_RE]:.1f}px n={p[IX_N]:.1f}\n"
                     f"q={p[IX_Q]:.2f} pa={p[IX_PA]:.0f} "
                     f"S/N={b['snr'][k]:.0f} nb={b['n_neighbours'][k]}", fontsize=7)
        ax2.imshow(np.log10(np.maximum(psf / psf.max(), 1e-4)), origin="lower", cmap="magma", vmin=-4)
        fw = b["psf_fwhm"][k] * config.pixel_scale
        ax2.set_title(f'PSF {fw:.2f}"' if np.isfinite(fw) else "PSF", fontsize=7)
        for a in (ax, ax2):
            a.set_xticks([])
            a.set_yticks([])
    p = b["params"]
    hists = [
        ("mag", p[:, IX_MAG], "linear"), ("re [arcsec]", p[:, IX_RE] * config.pixel_scale, "log"),
        ("Sérsic n", p[:, IX_N], "log"), ("q", p[:, IX_Q], "linear"), ("pa [deg]", p[:, IX_PA], "linear"),
        ("x - 31 [px]", p[:, IX_X] - 31, "linear"),
        ("S/N (target)", b["snr"], "log"), ("neighbours + stars / stamp", b["n_neighbours"], "linear"),
        ('PSF FWHM ["]', b["psf_fwhm"] * config.pixel_scale, "linear"),
        ("sky sigma [counts/px]", b["sky_sigma"], "linear"),
    ]
    hax = bottom.subplots(2, 5)
    for ax, (label, vals, scale) in zip(hax.ravel(), hists):
        vals = vals[np.isfinite(vals)]
        bins = np.geomspace(vals.min(), vals.max(), 30) if scale == "log" else 30
        if label.startswith("neighbours"):
            bins = np.arange(vals.max() + 2) - 0.5
        ax.hist(vals, bins=bins, color="tab:blue", alpha=0.8)
        ax.set_xscale(scale)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.suptitle(f"galnet simulate, preset {config.name}: {args.n} stamps (seed {args.seed}); "
                 f"stamps asinh-scaled in units of 3 sky sigma, PSFs log10, + = true centre", fontsize=10)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")
    snr = b["snr"]
    print("S/N percentiles 5/25/50/75/95:", np.percentile(snr, [5, 25, 50, 75, 95]).round(1))
    print(f"neighbours per stamp: mean {b['n_neighbours'].mean():.2f}; "
          f"sky sigma median {np.median(b['sky_sigma']):.4f}")
    return out


if __name__ == "__main__":
    main()
