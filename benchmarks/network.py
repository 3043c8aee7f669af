"""Benchmark the network on CPU: inference gal/s (eager, channels_last, ONNX Runtime), training samples/s.

Also measures the machine's fp32 matmul peak in the same run and reports the fraction of it each
backend reaches (2 FLOP per MAC). The last line printed is one JSON object with all figures.

The backends (eager, channels_last, ONNX Runtime), the training step and the matmul are timed in this
process, interleaved, ``--repeats`` times (>= 3); each figure is quoted from the median repeat and
from the best (``*_best``). The thread settings and a load check come first (``--require-idle``
refuses a loaded machine; else ``"loaded": true`` in the JSON).

Usage::

    python benchmarks/network.py --quick          # < 1 minute
    python benchmarks/network.py --model galnet-psf --threads 2 --batch 512
    python benchmarks/network.py --model-config '{"widths": [32, 64, 128, 192]}'   # a variant
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _timing import add_timing_args, check_machine, emit_with_state, interleaved, timing_figures
from galnet.models import count_macs, count_parameters, create_model
from galnet.models.card import export_onnx
from galnet.params import IX_MAG, IX_X, IX_Y

#: Size of the matmul that measures the fp32 peak (2 n³ FLOP per call).
MATMUL_N = 2048


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="galnet-psf")
    ap.add_argument("--model-config", default="{}", metavar="JSON",
                    help="overrides of the network config, as galnet train --model-config takes them")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--train-batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smaller batches (< 1 minute)")
    ap.add_argument("--no-onnx", action="store_true")
    add_timing_args(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    state = check_machine(args, threads=args.threads)
    try:
        overrides = json.loads(args.model_config)
    except json.JSONDecodeError as exc:
        ap.error(f"--model-config is not JSON: {exc}")
    if not isinstance(overrides, dict):
        ap.error(f"--model-config must be a JSON object, got {args.model_config!r}")

    def build():
        return create_model(args.model, **overrides)

    torch.manual_seed(0)
    model = build().eval()
    macs, n_params = count_macs(model), count_parameters(model)
    b = 128 if args.quick and args.batch == 512 else args.batch
    tb = 64 if args.quick and args.train_batch == 256 else args.train_batch
    img = torch.randn(b, 61, 61) * 3
    psf = torch.rand(b, 25, 25)
    psf = psf / psf.sum(dim=(-2, -1), keepdim=True)
    sky = torch.full((b,), 2.0)
    res: dict = {"model": args.model, "model_config": overrides, "params": n_params, "macs_per_galaxy": macs,
                 "batch": b, "train_batch": tb, "threads": args.threads, "torch": torch.__version__,
                 "repeats": args.repeats}
    mn = MATMUL_N // 2 if args.quick else MATMUL_N
    ma, mb = torch.randn(mn, mn), torch.randn(mn, mn)
    cl = build().eval().to(memory_format=torch.channels_last)
    cl.load_state_dict(model.state_dict())
    tm = build().train().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(tm.parameters(), lr=1e-3)
    timg, tpsf, tsky = img[:tb].clone(), psf[:tb].clone(), sky[:tb].clone()
    target = torch.randn(tb, 8)

    def step():
        loss = F.huber_loss(tm(timg, tpsf, tsky), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer(m):
        with torch.inference_mode():
            return m.predict_params(img, psf, sky)

    sides = {"matmul": lambda: ma @ mb, "eager": lambda: infer(model), "channels_last": lambda: infer(cl),
             "train": step}
    feed = sess = None
    tmp = tempfile.TemporaryDirectory()
    if not args.no_onnx:
        try:
            import onnxruntime as ort

            path = export_onnx(model, Path(tmp.name) / "m.onnx")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {"image": img.numpy(), "psf": psf.numpy(), "sky_sigma": sky.numpy()}
            sides["onnx"] = lambda: sess.run(None, feed)[0]
        except ImportError as exc:
            res["onnx_gal_s"] = None
            res["onnx_error"] = str(exc)
    runs = interleaved(sides, repeats=args.repeats)
    tmp.cleanup()
    res["peak_gflops"] = round(2 * mn**3 / runs["matmul"].median / 1e9, 1)
    res["peak_gflops_best"] = round(2 * mn**3 / runs["matmul"].best / 1e9, 1)
    for k in ("eager", "channels_last", "onnx"):
        if k in runs:
            res[f"{k}_gal_s"] = round(b / runs[k].median)
            res[f"{k}_gal_s_best"] = round(b / runs[k].best)
            res[f"{k}_frac_peak"] = round(2 * macs * b / runs[k].median / 1e9 / res["peak_gflops"], 4)
    if "onnx" in runs:
        ref = runs["eager"].result.numpy()
        xy_mag = [IX_X, IX_Y, IX_MAG]
        res["onnx_max_abs_diff_xy_mag"] = float(np.abs(runs["onnx"].result[:, xy_mag] - ref[:, xy_mag]).max())
    res["train_samples_s"] = round(tb / runs["train"].median)
    res["train_samples_s_best"] = round(tb / runs["train"].best)
    res["train_epoch_s_160k"] = round(160_000 / res["train_samples_s"])
    res["timings"] = timing_figures(runs)
    print(f"fp32 matmul peak: {res['peak_gflops']:.1f} GFLOP/s (best {res['peak_gflops_best']:.1f})")
    print(f"eager {res['eager_gal_s']} gal/s, channels_last {res['channels_last_gal_s']} gal/s, "
          f"onnx runtime {res.get('onnx_gal_s')} gal/s (medians of {args.repeats})")
    print(f"training {res['train_samples_s']} samples/s (batch {tb}, Adam, channels_last): "
          f"{res['train_epoch_s_160k']} s per 160k epoch")
    emit_with_state(res, state)
    return res


if __name__ == "__main__":
    main()
