"""Real HSC galaxies: every galnet mode and a GALFIT-like baseline on the same pixels, judged by χ²ν.

Usage::

    python benchmarks/real_hsc.py [--scenes DIR] [--quick] [--threads 2] [--refine 2] [--model hsc-r]
                                  [--no-pyimfit] [--out benchmarks/results/real_hsc]

Data: the even-id HSC COSMOS scenes of ``lsst/testdata_deblender`` (:mod:`galnet.data.hsc`; downloaded into
``--scenes`` when that folder is empty; odd ids are reserved for an independent test and never read here).
Each scene gives one galaxy: its brightest detected peak (r-band flux in the 3×3 pixels around the peak). A
61×61 stamp is cut around it (pixels outside the scene or outside the footprint are excluded), with the
scene's r-band PSF and its σ = 1/√weight map.

The same pixels for every method: the valid pixels minus galnet's own neighbour mask
(:func:`galnet.fit.neighbour_mask`, computed once per stamp). The same χ²ν for every method:
``Σ ((image − model) / σ)² / (N − p)`` over those pixels (p = 7, or 8 with a fitted sky, which is then part
of the model), the model drawn by galnet's renderer with the
scene's full 41×41 PSF from each method's parameters. Methods:

* ``network``: ``galnet predict`` (:func:`galnet.predict.predict_arrays`; the stamp with its excluded pixels);
* ``refine<K>``: K batched Levenberg–Marquardt steps from the network (:class:`galnet.fit.Refiner`), rows
  left above ``--refine-finish`` fitted on to convergence, with a fitted constant sky, as
  ``galnet predict --refine K`` does; ``refine<max K>:nosky`` without the sky (``--no-refine-sky``);
* ``fitter``: :func:`galnet.fit.fit_stamps` from image moments (``galnet fit``'s default); ``fitter-sky``:
  the same with a fitted constant sky (``galnet fit --fit-sky``);
* ``hybrid``: :func:`galnet.fit.fit_stamps` from the network's answer;
* ``pyimfit``: the GALFIT-like baseline, PyImfit's Levenberg–Marquardt from the same moment starts, with the
  same mask, σ map and PSF (``benchmarks/fit.py``'s runner), one process per thread.

Prints per method the median and mean χ²ν, the per-galaxy χ²ν ratio to the baseline, the fraction of galaxies
where the method's χ²ν is at most the baseline's, the agreement with the fitter of the same model (mag, re,
n, q; ``fitter-sky`` for the methods that fit a sky) and the time
per galaxy; writes ``<out>.md``, ``<out>.json`` and image / model / residual mosaics of typical and worst
cases (``benchmarks/.cache/real_hsc/``: they show the scenes' pixels, which are not redistributed), and the
``galnet evaluate`` report there. Last line: one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, parser  # noqa: E402

HERE = Path(__file__).parent
STAMP = 61


def brightest_peak(scene) -> int:
    """Index of the scene's peak with the most r-band flux in the 3×3 pixels around it."""
    img = np.where(scene.valid, scene.image, 0.0)
    h, w = img.shape
    flux = []
    for x, y in scene.peaks:
        xi, yi = int(round(x)), int(round(y))
        flux.append(img[max(yi - 1, 0) : min(yi + 2, h), max(xi - 1, 0) : min(xi + 2, w)].sum())
    return int(np.argmax(flux))


def scene_files(folder: Path) -> list[Path]:
    """The even-id scene files in ``folder``, downloaded there first when it has none (odd ids: never)."""
    from galnet.data.hsc import fetch_scenes, list_scenes

    if not folder.is_dir() or not any(folder.glob("*.npz")):
        fetch_scenes(folder, parity="even")
    return list_scenes(folder, parity="even")


def stamp_noise(st: dict) -> np.ndarray:
    """The median σ (B,) of each stamp's valid pixels: the sky σ the network is given."""
    return np.array([np.nanmedian(np.where(ex, np.nan, sg)) for ex, sg in zip(st["excluded"], st["sigma"])])


def network_answers(images: np.ndarray, psfs: np.ndarray, sky: np.ndarray, model: str, threads: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``galnet predict --refine 0``'s parameters (B, 7) and errors (B, 7), catalog conventions."""
    from galnet.predict import predict_arrays

    tab = predict_arrays(images, psfs, sky, model=model, ids=np.arange(len(images)), threads=threads)
    cols = ("x", "y", "mag", "re_pix", "n", "q", "pa")
    return (np.stack([np.asarray(tab[c], float) for c in cols], 1),
            np.stack([np.asarray(tab[f"{c}_err"], float) for c in cols], 1))


def load_stamps(files: list[Path]) -> dict:
    """Stamps, σ maps, excluded pixels, PSFs and ids of each scene's brightest galaxy."""
    from galnet.data.hsc import cut_stamp, read_scene

    out = {k: [] for k in ("ids", "images", "sigma", "excluded", "psfs", "peak", "n_peaks")}
    for f in files:
        sc = read_scene(f, "r")
        j = brightest_peak(sc)
        x, y = sc.peaks[j]
        stamp, sigma, excluded, _ = cut_stamp(sc.image, sc.variance, x, y, STAMP)
        out["ids"].append(sc.id)
        out["images"].append(stamp)
        out["sigma"].append(sigma)
        out["excluded"].append(excluded)
        out["psfs"].append(sc.psf / sc.psf.sum())
        out["peak"].append((x, y))
        out["n_peaks"].append(len(sc.peaks))
    return {k: np.asarray(v) for k, v in out.items()}


def common_mask(st: dict) -> np.ndarray:
    """Excluded pixels plus galnet's neighbour mask: the pixels no method is judged on (True = out)."""
    from galnet.fit import neighbour_mask

    filled = np.where(st["excluded"], 0.0, st["images"])
    sig = np.where(st["excluded"], np.nan, st["sigma"])
    nb, _ = neighbour_mask(filled, sig, mask=st["excluded"], psf=st["psfs"])
    return st["excluded"] | nb


def chi2nu(st: dict, mask: np.ndarray, params: np.ndarray, sky: np.ndarray | None = None) -> np.ndarray:
    """χ²ν of each method's parameters (plus its fitted sky, counts / px, which then counts as an eighth free
    parameter) on the common pixels, galnet's renderer with the full PSF."""
    import torch

    from galnet.render import render_sersic

    b = len(params)
    out = np.full(b, np.nan)
    ok = np.all(np.isfinite(params), axis=1)
    for i in np.flatnonzero(ok):
        try:
            with torch.no_grad():
                model = render_sersic(
                    torch.as_tensor(params[i : i + 1], dtype=torch.float64),
                    torch.as_tensor(st["psfs"][i], dtype=torch.float64),
                    shape=(STAMP, STAMP),
                ).numpy()[0]
        except Exception:  # off the renderer's range: no χ² (counted as missing)
            continue
        n_free = 7
        if sky is not None and np.isfinite(sky[i]):
            model, n_free = model + sky[i], 8
        good = ~mask[i]
        r = ((st["images"][i] - model) / st["sigma"][i])[good]
        out[i] = float(np.sum(r * r) / max(good.sum() - n_free, 1))
    return out


def run_methods(st: dict, mask: np.ndarray, args) -> dict:
    """Parameters (B, 7) and seconds of every method; galnet's timed interleaved (``--repeats``)."""
    from _timing import interleaved
    from galnet.fit import FitConfig, Refiner, fit_stamps, moments_start

    filled = np.where(mask, 0.0, st["images"]).astype(np.float32)
    sig = np.where(mask, 1.0, st["sigma"]).astype(np.float32)
    sky = stamp_noise(st)
    cfg = FitConfig(max_iter=100)
    res: dict = {}

    def network(model: str) -> np.ndarray:
        return network_answers(st["images"], st["psfs"], sky, model, args.threads)[0]

    def refine(start: np.ndarray, k: int, fit_sky: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        fr, _ = Refiner(k, mask_neighbours=False, finish_chi2=args.refine_finish or None, fit_sky=fit_sky)(
            filled, st["psfs"], start, sky_sigma=sky, sigma=sig, mask=mask
        )
        ok = np.isfinite(fr.params).all(1)
        return np.where(ok[:, None], fr.params, start), (np.where(ok, fr.sky, np.nan) if fit_sky else None)

    def fit(init=None, fit_sky: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        fr = fit_stamps(filled, st["psfs"], sigma=sig, mask=mask, init=init, config=cfg, fit_sky=fit_sky)
        return fr.params, (fr.sky if fit_sky else None)

    sides = {}
    models = {"network": args.model, **{f"network:{Path(m).stem}": m for m in args.compare_model}}
    for name, model in models.items():
        network(model)  # load the model once (warm-up), then time
        sides[name] = lambda model=model: (network(model), None)
    nets = {name: side()[0] for name, side in sides.items()}
    for name, net in nets.items():
        tag = "" if name == "network" else name.split(":", 1)[1] + ":"
        for k in args.refine:
            sides[f"{tag}refine{k}"] = lambda net=net, k=k: refine(net, k)
    if args.refine:  # the largest K without the fitted sky (galnet predict --no-refine-sky)
        k_max = max(args.refine)
        sides[f"refine{k_max}:nosky"] = lambda: refine(nets["network"], k_max, fit_sky=False)
    sides["fitter"] = lambda: fit()
    sides["fitter-sky"] = lambda: fit(fit_sky=True)
    sides["hybrid"] = lambda: fit(init=nets["network"])
    out: dict = {}
    runs = interleaved(
        {k: (lambda f=f, k=k: out.__setitem__(k, f())) for k, f in sides.items()}, repeats=args.repeats
    )
    for name in sides:  # a refinement's or the hybrid's time includes its network's
        net = (
            None
            if name.startswith("fitter") or name.startswith("network")
            else "network" if ":" not in name or name.endswith(":nosky")
            else "network:" + name.split(":")[0]
        )
        extra = runs[net].median if net else 0.0
        res[name] = {
            "params": out[name][0],
            "sky": out[name][1],
            "seconds": runs[name].median + extra,
            "best_seconds": runs[name].best + (runs[net].best if net else 0.0),
        }
    if not args.no_pyimfit:
        res["pyimfit"] = pyimfit_cached(st, mask, filled, sig, sky, moments_start(filled, sigma=sig), args)
    return res


def pyimfit_cached(st, mask, filled, sig, sky, starts, args) -> dict:
    """PyImfit (LM from the moment starts), cached by a hash of its inputs (its fits take seconds each)."""
    import hashlib

    from fit import Stamps, run_pyimfit

    h = hashlib.sha256()
    for a in (filled, sig, mask, st["psfs"], starts):
        h.update(np.ascontiguousarray(a).tobytes())
    cache = HERE / ".cache" / f"real_hsc_pyimfit_{h.hexdigest()[:12]}.npz"
    if cache.exists():
        d = np.load(cache)
        return {
            "params": d["params"],
            "seconds": float(d["seconds"]),
            "native_chi2nu": d["native_chi2nu"],
            "cached": True,
        }
    b = len(filled)
    stamps = Stamps(
        images=filled,
        psfs=st["psfs"],
        sigma=sig,
        sky_sigma=sky,
        truth=np.full((b, 7), np.nan),
        zeropoint=27.0,
        source="real HSC",
        mask=mask,
    )
    pim = run_pyimfit(stamps, starts, max(args.threads, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        native = pim["stat"] / (pim["nvalid"] - 7)
    seconds = pim["wall"] * max(args.threads, 1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, params=pim["params"], seconds=seconds, native_chi2nu=native)
    return {"params": pim["params"], "seconds": seconds, "native_chi2nu": native, "cached": False}


def _frac(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return (a - b) / b


def summarise(st: dict, res: dict, chi: dict, baseline: str, rows: np.ndarray | None = None) -> dict:
    """Per-method figures (see the module docstring), over ``rows`` (default all)."""
    from galnet.params import index

    b = len(st["ids"])
    rows = np.arange(b) if rows is None else rows
    base = chi[baseline][rows]
    out = {}
    for name, r in res.items():
        c = chi[name][rows]
        params = r["params"][rows]
        # agreement with the fitter of the same model: with a fitted sky, the fitter with one
        same = "fitter-sky" if r.get("sky") is not None and "fitter-sky" in res else "fitter"
        ref = res[same]["params"][rows]
        both = np.isfinite(c) & np.isfinite(base)
        ratio = c[both] / base[both]
        agree = {}
        for p in ("mag", "re_pix", "n", "q"):
            j = index("re" if p == "re_pix" else p)
            d = (params[:, j] - ref[:, j]) if p == "mag" else _frac(params[:, j], ref[:, j])
            d = d[np.isfinite(d)]
            agree[p] = float(1.4826 * np.median(np.abs(d - np.median(d)))) if d.size else float("nan")
        out[name] = {
            "n": int(np.isfinite(c).sum()),
            "n_rows": int(len(rows)),
            "median_chi2nu": float(np.nanmedian(c)),
            "mean_chi2nu": float(np.nanmean(c)),
            "median_ratio_to_baseline": float(np.median(ratio)) if ratio.size else float("nan"),
            "mean_chi2nu_vs_baseline": float(np.mean(c[both]) / np.mean(base[both]) - 1)
            if both.any()
            else None,
            "frac_le_baseline": float(np.mean(c[both] <= base[both] * (1 + 1e-9))) if both.any() else None,
            "nmad_vs_fitter": agree,
            "ms_per_galaxy": 1e3 * r["seconds"] / b,
        }
    return out


def mosaic(
    st: dict, mask: np.ndarray, res: dict, chi: dict, method: str, rows: list[int], path: Path
) -> None:
    """Image / model / residual (σ units) rows for ``rows`` of ``method``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from galnet.render import render_sersic

    fig, axes = plt.subplots(len(rows), 3, figsize=(6.6, 2.2 * len(rows)), squeeze=False)
    for a, i in zip(axes, rows):
        img = np.where(st["excluded"][i], np.nan, st["images"][i])
        p = res[method]["params"][i]
        model = np.full_like(img, np.nan)
        if np.all(np.isfinite(p)):
            with torch.no_grad():
                model = render_sersic(
                    torch.as_tensor(p[None], dtype=torch.float64),
                    torch.as_tensor(st["psfs"][i], dtype=torch.float64),
                    shape=(STAMP, STAMP),
                ).numpy()[0]
            if res[method].get("sky") is not None:
                model = model + np.nan_to_num(res[method]["sky"][i])
        scale = np.nanpercentile(img, 99.5)
        soft = np.nanmedian(st["sigma"][i])
        for ax, data, title in (
            (a[0], img, f"id …{str(st['ids'][i])[-6:]}"),
            (a[1], model, method),
            (a[2], np.where(mask[i], np.nan, (img - model) / st["sigma"][i]), f"χ²ν {chi[method][i]:.2f}"),
        ):
            if title.startswith("χ²ν"):
                ax.imshow(data, origin="lower", cmap="RdBu_r", vmin=-5, vmax=5)
            else:
                ax.imshow(
                    np.arcsinh(data / soft) / np.arcsinh(scale / soft),
                    origin="lower",
                    cmap="gray_r",
                    vmin=-0.05,
                    vmax=1,
                )
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def evaluate_report(st: dict, res: dict, out: Path) -> Path:
    """The ``galnet evaluate`` report of every method on the real stamps (no truth: χ²ν, residuals, mosaics).

    Writes ``<out>_stamps.h5`` (the stamps with their σ maps and NaN true parameters), one catalog per method
    and runs ``galnet evaluate``; returns the report folder. ``out`` is under ``benchmarks/.cache/``: the
    stamps and mosaics show the scenes' pixels, which are not redistributed (no licence), so they stay out of
    the repository.
    """
    import subprocess

    from galnet.catalog import make_catalog
    from galnet.data import write_split
    from galnet.data.hsc import centre_crop_psf

    b = len(st["ids"])
    arrays = {
        "images": st["images"].astype(np.float32),
        "psfs": np.stack([centre_crop_psf(p, 25) for p in st["psfs"]]),
        "sky_sigma": np.array([np.nanmedian(s) for s in st["sigma"]], np.float32),
        "params": np.full((b, 7), np.nan),
        "snr": np.full(b, np.nan, np.float32),
        "ids": st["ids"].astype(np.int64),
        "sigma_maps": np.where(np.isfinite(st["sigma"]), st["sigma"], np.inf).astype(np.float32),
    }
    stamps = out.parent / f"{out.name}_stamps.h5"
    meta = {"zeropoint": 27.0, "pixel_scale": 0.168, "source": "real HSC even-id scenes"}
    write_split(stamps, arrays, meta)
    cmd = [sys.executable, "-m", "galnet", "evaluate", "--truth", str(stamps), "--out",
           str(out.parent / f"{out.name}_report"), "--title", "real HSC galaxies", "--no-progress"]
    for name, r in res.items():
        if ":galnet-renderer" in name:
            continue
        cat = out.parent / f"{out.name}_{name.replace(':', '_')}.fits"
        make_catalog(st["ids"], r["params"]).write(cat, overwrite=True)
        cmd += ["--catalog", f"{name.replace(':', '_')}={cat}", "--time",
                f"{name.replace(':', '_')}={r['seconds'] / b}"]
    subprocess.run(cmd, check=True, capture_output=True)
    return out.parent / f"{out.name}_report"


def markdown(summary: dict, title: str) -> str:
    """One markdown table of :func:`summarise`'s figures under a ``##`` title."""
    lines = [
        f"## {title}",
        "",
        "| method | n | median χ²ν | mean χ²ν | mean vs baseline | median ratio to baseline "
        "| χ²ν ≤ baseline | NMAD vs fitter mag / re / n / q | ms / galaxy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        a = s["nmad_vs_fitter"]
        mv = "—" if s["mean_chi2nu_vs_baseline"] is None else f"{100 * s['mean_chi2nu_vs_baseline']:+.1f} %"
        fl = "—" if s["frac_le_baseline"] is None else f"{100 * s['frac_le_baseline']:.0f} %"
        lines.append(
            f"| {name} | {s['n']}/{s['n_rows']} | {s['median_chi2nu']:.3f} | {s['mean_chi2nu']:.2f} | {mv} | "
            f"{s['median_ratio_to_baseline']:.3f} | {fl} | "
            f"{a['mag']:.3f} / {a['re_pix']:.3f} / {a['n']:.3f} / {a['q']:.3f} | {s['ms_per_galaxy']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--scenes", default=str(HERE / ".cache" / "hsc_cosmos"))
    p.add_argument("--n", type=int, default=None, help="only the first N scenes")
    p.add_argument("--refine", type=int, nargs="*", default=[2, 5])
    p.add_argument("--refine-finish", type=float, default=1.5,
                   help="as galnet predict --refine-finish (default 1.5; 0: K steps for every row)")
    p.add_argument("--model", default="hsc-r")
    p.add_argument(
        "--compare-model",
        action="append",
        default=[],
        metavar="CARD",
        help="another network to run (with its own refine rows), e.g. a candidate model card",
    )
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats (>= 3)")
    p.add_argument(
        "--groups",
        action="store_true",
        help="also report the scenes with id %% 4 == 2 alone (no background of theirs is used "
        "for training: data/bg_train.h5 holds id %% 4 == 0)",
    )
    p.add_argument("--no-pyimfit", action="store_true")
    p.add_argument("--out", default=str(HERE / "results" / "real_hsc"))
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    files = scene_files(Path(args.scenes))
    if args.quick or args.n:
        files = files[: args.n or 12]
    st = load_stamps(files)
    mask = common_mask(st)
    res = run_methods(st, mask, args)
    chi = {name: chi2nu(st, mask, r["params"], r.get("sky")) for name, r in res.items()}
    if "pyimfit" in res:  # the baseline's own model (Imfit's renderer) against the image, same pixels and σ
        chi["pyimfit:galnet-renderer"] = chi["pyimfit"]
        res["pyimfit:galnet-renderer"] = res["pyimfit"]
        chi["pyimfit"] = res["pyimfit"]["native_chi2nu"]
    baseline = "pyimfit" if "pyimfit" in res else "fitter"
    summary = summarise(st, res, chi, baseline)
    md = "\n".join(
        [
            f"# Real HSC galaxies: {len(files)} even-id HSC COSMOS scenes (brightest peak each)",
            "",
            "Same pixels (valid minus galnet's neighbour mask), same σ for every method; χ²ν of galnet's "
            "renderer with the scene's 41×41 PSF for the galnet methods, of Imfit's own model for `pyimfit` "
            "(the same parameters drawn by galnet's renderer: `pyimfit:galnet-renderer`). Baseline: "
            f"`{baseline}`. NMAD vs fitter: spread of each method's answer around the fitter's with the "
            "same sky model (`fitter-sky` for methods that fit a sky; fractional for re, n, q). Times: "
            f"median of {args.repeats} interleaved repeats, {args.threads} thread(s) "
            "(PyImfit: one run, one process per thread).",
            "",
            markdown(summary, "all scenes"),
        ]
    )
    if args.groups:
        held = np.flatnonzero(st["ids"] % 4 == 2)
        summary_held = summarise(st, res, chi, baseline, held)
        md += "\n" + markdown(
            summary_held, f"the {len(held)} scenes with id % 4 == 2 (no training background)"
        )
    print(md)
    out = Path(args.out)
    if not args.quick:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = HERE / ".cache" / "real_hsc" / out.name
        work.parent.mkdir(parents=True, exist_ok=True)
        report = evaluate_report(st, res, work)
        md += f"\nThe `galnet evaluate` report (image / model / residual mosaics): `{report}`\n"
        out.with_suffix(".md").write_text(md)
        figs = work.parent / f"{out.name}_figures"
        figs.mkdir(exist_ok=True)
        for name in res:
            c = np.where(np.isfinite(chi[name]), chi[name], np.inf)
            order = np.argsort(c)
            typical = [int(i) for i in order[len(order) // 2 - 2 : len(order) // 2 + 2]]
            worst = [int(i) for i in order[np.isfinite(c[order])][-4:]]
            mosaic(st, mask, res, chi, name, typical, figs / f"mosaic_typical_{name}.png")
            mosaic(st, mask, res, chi, name, worst, figs / f"mosaic_worst_{name}.png")
        per_galaxy = {
            "ids": [int(i) for i in st["ids"]],
            **{f"chi2nu_{k}": [None if not np.isfinite(v) else float(v) for v in c] for k, c in chi.items()},
        }
        out.with_suffix(".json").write_text(
            json.dumps(
                {
                    "summary": summary,
                    **({"summary_id_mod4_2": summary_held} if args.groups else {}),
                    "per_galaxy": per_galaxy,
                },
                indent=1,
            )
        )
    emit(
        {
            "benchmark": "real_hsc",
            "n": len(files),
            "threads": args.threads,
            "baseline": baseline,
            **{
                k: {
                    kk: v[kk]
                    for kk in ("median_chi2nu", "mean_chi2nu", "mean_chi2nu_vs_baseline", "ms_per_galaxy")
                }
                for k, v in summary.items()
            },
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
