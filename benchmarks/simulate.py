"""Benchmark of the simulation stage: galaxies / s of generate_batch (default preset, neighbours on),
with the time split between rendering (``render_scene``) and the rest, the end-to-end rate of
``simulate_dataset`` (generate + write + merge HDF5), GalSim's rate for the same stamps, and peak memory.

Usage::

    python benchmarks/simulate.py            # 4096 stamps, GalSim on 50
    python benchmarks/simulate.py --quick    # < 1 minute
    python benchmarks/simulate.py --threads 1 --write-n 4096 --workers 2 --compression lzf

The last line printed is one JSON object with the figures.

The three sides (``generate_batch``, ``simulate_dataset`` end to end, GalSim) are timed in this process,
interleaved, ``--repeats`` times (>= 3); rates are quoted from the median and the best repeat. The
thread settings and a load check come first (``--require-idle`` refuses a loaded machine; else
``"loaded": true`` in the JSON).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np

from _timing import add_timing_args, check_machine, emit_with_state, interleaved, ratio, timing_figures


def _galsim_draw(config, batch, n_gal: int) -> int:
    """Draw the first ``n_gal`` stamps of ``batch`` (target + neighbours, same ePSFs) with GalSim."""
    import galsim

    from galnet.conventions import to_galsim
    from galnet.params import IX_RE

    size, zp = config.stamp_size, config.zeropoint
    params, nb, owner = batch["params"], batch["_nb_params"], batch["_owner"]
    for i in range(n_gal):
        psf = galsim.InterpolatedImage(galsim.Image(batch["psfs"][i].astype(np.float64), scale=1.0))
        img = galsim.Image(size, size, scale=1.0)
        for p in [params[i], *nb[owner == i]]:
            g = to_galsim(*p, zeropoint=zp)
            if p[IX_RE] <= 0.011:  # star
                obj = galsim.DeltaFunction(flux=g["flux"])
            else:
                n = float(np.clip(g["n"], 0.3, 6.2))  # GalSim's Sersic range
                obj = galsim.Sersic(n, half_light_radius=g["half_light_radius"], flux=g["flux"]).shear(
                    q=g["q"], beta=g["beta_deg"] * galsim.degrees)
            conv = galsim.Convolve(obj, psf)
            # ePSF already holds the pixel: no_pixel; GalSim's image centre convention: true_center
            conv.drawImage(img, method="no_pixel", add_to_image=True,
                           offset=(g["x"] - img.true_center.x, g["y"] - img.true_center.y))
        img.array[:] += np.random.default_rng(i).normal(0, batch["sky_sigma"][i], (size, size))
    return n_gal


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (< 1 minute)")
    ap.add_argument("--n", type=int, default=None, help="stamps to generate (default 4096, quick 768)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--galsim-n", type=int, default=None,
                    help="stamps drawn with GalSim (default 50, quick 20)")
    ap.add_argument("--preset", default="hsc-r")
    ap.add_argument("--wrap-tolerance", type=float, default=None)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's; use 1 on a CPU shared with other jobs, where "
                         "oversubscribed OpenMP threads are ~10x slower)")
    ap.add_argument("--write-n", type=int, default=None,
                    help="stamps written by simulate_dataset (default min(n, 1024))")
    ap.add_argument("--workers", type=int, default=1, help="simulate_dataset worker processes (default 1)")
    ap.add_argument("--compression", choices=("gzip", "lzf"), default="gzip",
                    help="simulate_dataset HDF5 compression (default gzip)")
    add_timing_args(ap)
    args = ap.parse_args(argv)
    n = args.n or (512 if args.quick else 4096)
    n_gs = args.galsim_n if args.galsim_n is not None else (10 if args.quick else 50)

    import torch

    import galnet.render
    from galnet.simulate import generate as gen
    from galnet.simulate import generate_batch, load_preset, simulate_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    state = check_machine(args, threads=torch.get_num_threads())
    over = {} if args.wrap_tolerance is None else {"wrap_tolerance": args.wrap_tolerance}
    config = load_preset(args.preset, over)
    print(f"preset {config.name}: wrap_tolerance {config.wrap_tolerance}, render {config.render_dtype}, "
          f"torch threads {torch.get_num_threads()}")

    # time spent inside the renderer (targets, then neighbours and stars as scenes), objects rendered,
    # counted while the generate_batch side runs
    real_render = galnet.render.render_scene
    stats = {"render_s": 0.0, "objects": 0, "on": False}

    def timed_render(params, *a, **k):
        t = time.perf_counter()
        out = real_render(params, *a, **k)
        if stats["on"]:
            stats["render_s"] += time.perf_counter() - t
            stats["objects"] += len(params)
        return out

    real_nb = gen._draw_neighbours
    keep = {}

    def keep_nb(*a, **k):
        out = real_nb(*a, **k)
        keep["nb"], keep["owner"] = out[0], out[1]
        return out

    n_w = args.write_n or min(n, 256 if args.quick else 1024)
    tmp = tempfile.TemporaryDirectory()
    writes = []

    def generate():
        stats["on"] = True
        rng = np.random.default_rng(1)
        done = 0
        while done < n:
            done += len(generate_batch(config, min(args.batch, n - done), seed=rng)["images"])
        stats["on"] = False
        return done

    def write():  # shards generated and compressed (by the workers), then merged into the splits
        out = f"{tmp.name}/w{len(writes)}"
        writes.append(out)
        simulate_dataset(config, out, n_w, seed=0, shard_size=256, progress=False, workers=args.workers,
                         compression=args.compression, threads=args.threads)

    galnet.render.render_scene = timed_render
    gen._draw_neighbours = keep_nb
    try:
        generate_batch(config, 32, seed=0)  # warm-up (tables, caches)
        b = generate_batch(config, max(1, n_gs), seed=np.random.default_rng(1))
        first = {**b, "_nb_params": keep["nb"], "_owner": keep["owner"]}
        sides = {"generate": generate, "write": write}
        try:
            import galsim  # noqa: F401

            if n_gs > 0:
                sides["galsim"] = lambda: _galsim_draw(config, first, min(n_gs, len(first["images"])))
        except ImportError:
            print("GalSim not installed: skipped")
        stats.update(render_s=0.0, objects=0)
        runs = interleaved(sides, repeats=args.repeats, warmup=False)
    finally:
        galnet.render.render_scene = real_render
        gen._draw_neighbours = real_nb
        tmp.cleanup()
    total_gen = sum(runs["generate"].seconds)
    res = {
        "galaxies_per_s": n / runs["generate"].median,
        "galaxies_per_s_best": n / runs["generate"].best,
        "n": n,
        "repeats": args.repeats,
        "render_fraction": stats["render_s"] / total_gen,
        "objects_per_stamp": stats["objects"] / (n * len(runs["generate"].seconds)),
        "objects_rendered_per_s": stats["objects"] / stats["render_s"],
        "wrap_tolerance": config.wrap_tolerance,
        "torch_threads": torch.get_num_threads(),
        "write_galaxies_per_s": n_w / runs["write"].median,
        "write_galaxies_per_s_best": n_w / runs["write"].best,
        "write_n": n_w, "workers": args.workers, "compression": args.compression,
    }
    print(f"generate_batch: {res['galaxies_per_s']:.0f} galaxies/s (best {res['galaxies_per_s_best']:.0f}; "
          f"{n} stamps, {res['objects_per_stamp']:.2f} objects/stamp, "
          f"{100 * res['render_fraction']:.0f}% of the time in render_scene)")
    print(f"simulate_dataset (generate + write + merge HDF5, {args.compression}, {args.workers} worker(s)): "
          f"{res['write_galaxies_per_s']:.0f} galaxies/s ({n_w} stamps)")
    if "galsim" in runs:
        n_g = runs["galsim"].result
        res.update(galsim_galaxies_per_s=n_g / runs["galsim"].median,
                   galsim_galaxies_per_s_best=n_g / runs["galsim"].best, galsim_n=n_g,
                   **ratio(runs["generate"], runs["galsim"], "ratio_vs_galsim", per_a=n, per_b=n_g, digits=1))
        print(f"GalSim, same stamps (InterpolatedImage ePSF, no_pixel): "
              f"{res['galsim_galaxies_per_s']:.1f} galaxies/s ({n_g} stamps); "
              f"ratio {res['ratio_vs_galsim']} x")
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (RSS): {res['peak_rss_mb']:.0f} MB")
    res = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}
    res["timings"] = timing_figures(runs)
    emit_with_state(res, state)
    return res

if __name__ == "__main__":
    main()
