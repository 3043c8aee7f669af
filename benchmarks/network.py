"""Benchmark the network on CPU: inference gal/s (eager, channels_last, ONNX Runtime), training samples/s.

Also measures the machine's fp32 matmul peak in the same run and reports the fraction of it each
backend reaches (2 FLOP per MAC). The last line printed is one JSON object with all figures.

Usage::

    python benchmarks/network.py --quick          # < 1 minute
    python benchmarks/network.py --model galnet-psf --threads 2 --batch 512
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from galnet.models import count_macs, count_parameters, create_model
from galnet.models.card import export_onnx


def _timeit(fn, *, min_time: float, min_reps: int) -> float:
    """Seconds per call (best of the timed calls, after one warm-up call)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def matmul_peak_gflops(n: int = 2048, *, min_time: float = 2.0) -> float:
    """fp32 GFLOP/s of an n×n×n matmul (2 n³ FLOP)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    sec = _timeit(lambda: a @ b, min_time=min_time, min_reps=3)
    return 2 * n**3 / sec / 1e9


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="galnet-psf")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--train-batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (< 1 minute)")
    ap.add_argument("--no-onnx", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    min_time = 1.0 if args.quick else 5.0
    reps = 2 if args.quick else 5
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    macs, n_params = count_macs(model), count_parameters(model)
    b = args.batch
    img = torch.randn(b, 61, 61) * 3
    psf = torch.rand(b, 25, 25)
    psf = psf / psf.sum(dim=(-2, -1), keepdim=True)
    sky = torch.full((b,), 2.0)
    res: dict = {"model": args.model, "params": n_params, "macs_per_galaxy": macs, "batch": b,
                 "threads": args.threads, "torch": torch.__version__}
    res["peak_gflops"] = round(matmul_peak_gflops(min_time=min_time), 1)
    print(f"fp32 matmul peak: {res['peak_gflops']:.1f} GFLOP/s", flush=True)

    def gflops(gal_s: float) -> float:
        return 2 * macs * gal_s / 1e9

    with torch.inference_mode():
        sec = _timeit(lambda: model.predict_params(img, psf, sky), min_time=min_time, min_reps=reps)
        res["eager_gal_s"] = round(b / sec)
        cl = create_model(args.model).eval().to(memory_format=torch.channels_last)
        cl.load_state_dict(model.state_dict())
        sec = _timeit(lambda: cl.predict_params(img, psf, sky), min_time=min_time, min_reps=reps)
        res["channels_last_gal_s"] = round(b / sec)
    print(f"eager {res['eager_gal_s']} gal/s, channels_last {res['channels_last_gal_s']} gal/s", flush=True)
    if not args.no_onnx:
        try:
            import onnxruntime as ort

            with tempfile.TemporaryDirectory() as tmp:
                path = export_onnx(model, Path(tmp) / "m.onnx")
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = args.threads
                opts.inter_op_num_threads = 1
                sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {"image": img.numpy(), "psf": psf.numpy(), "sky_sigma": sky.numpy()}
            sec = _timeit(lambda: sess.run(None, feed), min_time=min_time, min_reps=reps)
            res["onnx_gal_s"] = round(b / sec)
            with torch.inference_mode():
                ref = model.predict_params(img, psf, sky).numpy()
            got = sess.run(None, feed)[0]
            res["onnx_max_abs_diff_xy_mag"] = float(np.abs(got[:, :3] - ref[:, :3]).max())
            print(f"onnx runtime {res['onnx_gal_s']} gal/s", flush=True)
        except ImportError as exc:
            res["onnx_gal_s"] = None
            res["onnx_error"] = str(exc)
    for k in ("eager", "channels_last", "onnx"):
        v = res.get(f"{k}_gal_s")
        if v:
            res[f"{k}_frac_peak"] = round(gflops(v) / res["peak_gflops"], 4)
    # training
    tm = create_model(args.model).train().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(tm.parameters(), lr=1e-3)
    tb = args.train_batch
    timg, tpsf, tsky = img[:tb].clone(), psf[:tb].clone(), sky[:tb].clone()
    target = torch.randn(tb, 8)

    def step():
        loss = F.huber_loss(tm(timg, tpsf, tsky), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sec = _timeit(step, min_time=min_time, min_reps=reps + 1)
    res["train_samples_s"] = round(tb / sec)
    res["train_epoch_s_160k"] = round(160_000 / res["train_samples_s"])
    print(f"training {res['train_samples_s']} samples/s (batch {tb}, Adam, channels_last): "
          f"{res['train_epoch_s_160k']} s per 160k epoch", flush=True)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
