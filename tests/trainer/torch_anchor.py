#!/usr/bin/env python3
"""The PyTorch + cuDNN anchor of the trainer's device check
(scripts/gpu-check-trainer.sh): COEmuNet as coemunet_torch.py builds it (the
paper's 7-channel model at its defaults), coemu's loss (0.8 MSE + 0.2 mean
|FFT2(t) - FFT2(p)|, docs/trainer.md) and Adam (lr 4e-4), on random data on
one GPU, in the same run as coemu's CUDA backend:

  - training samples/s at --batch in float32 (TF32 off for convolutions and
    matrix products), TF32, and bfloat16 autocast (float32 master weights,
    the loss in float32);
  - inference samples/s (evaluation mode, no gradients) at --infer-batch
    in the same precisions;
  - the loss curve of --curve-steps steps from one initialisation on one
    fixed batch per step in each precision, and its largest relative
    distance from the float32 curve (the measured effect of TF32 / bf16).

Each step copies its batch from host memory to the GPU, as coemu's
trainer_step uploads input and targets. Each figure is the mean of --iters
timed iterations after 3 warm-ups, with
torch.backends.cudnn.benchmark on (cuDNN's algorithms found once per shape,
as coemu's backend does). Output: one line per figure,
  anchor: train torch fp32 batch=32 samples/s 1234.5
Exit 77 (skipped) when torch sees no CUDA device.

Usage: torch_anchor.py [--batch 32] [--infer-batch 64] [--iters 10]
                       [--nfreq 7] [--precisions fp32,tf32,bf16] [--curve-steps 20]
"""
import argparse
import contextlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from coemunet_torch import COEmuNet  # noqa: E402


def loss_fn(p, t):
    p, t = p.float(), t.float()
    e = p - t
    return 0.8 * (e * e).mean() + 0.2 * torch.fft.fft2(e).abs().mean()


def autocast(prec):
    return torch.autocast("cuda", dtype=torch.bfloat16) if prec == "bf16" else contextlib.nullcontext()


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def set_precision(prec):
    tf32 = prec == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


def batch(nfreq, grid, n, step):
    """A batch in host memory: each step copies it to the GPU, as coemu's
    trainer_step uploads its input and targets (pageable memory, both)."""
    g = torch.Generator(device="cpu").manual_seed(1000 + step)
    x = torch.rand(n, 3, grid, grid, grid, generator=g) * 2 - 1
    t = torch.rand(n, 1, nfreq, grid, grid, generator=g)
    return x, t


def model_for(nfreq, dev):
    torch.manual_seed(1234)
    return COEmuNet(nfreq, 64, 4, [8, 16, 32], 4096, 64, "reference").to(dev)


def train_rate(args, prec, dev):
    set_precision(prec)
    m = model_for(args.nfreq, dev).train()
    opt = torch.optim.Adam(m.parameters(), lr=4e-4)
    xh, th = batch(args.nfreq, 64, args.batch, 0)

    def step():
        x, t = xh.to(dev), th.to(dev)
        opt.zero_grad(set_to_none=True)
        with autocast(prec):
            y = m(x)
        loss = loss_fn(y, t)
        loss.backward()
        opt.step()
        return loss

    for _ in range(3):
        step()
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync(dev)
    return args.batch * args.iters / (time.perf_counter() - t0)


def infer_rate(args, prec, dev):
    set_precision(prec)
    m = model_for(args.nfreq, dev).eval()
    xh, _ = batch(args.nfreq, 64, args.infer_batch, 0)
    with torch.no_grad(), autocast(prec):
        for _ in range(3):
            m(xh.to(dev))
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(args.iters):
            m(xh.to(dev))
        sync(dev)
    return args.infer_batch * args.iters / (time.perf_counter() - t0)


def curve(args, prec, dev):
    set_precision(prec)
    m = model_for(args.nfreq, dev).train()
    opt = torch.optim.Adam(m.parameters(), lr=4e-4)
    out = []
    for k in range(args.curve_steps):
        x, t = batch(args.nfreq, 64, args.curve_batch, k)
        x, t = x.to(dev), t.to(dev)
        opt.zero_grad(set_to_none=True)
        with autocast(prec):
            y = m(x)
        loss = loss_fn(y, t)
        loss.backward()
        opt.step()
        out.append(float(loss))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--infer-batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--nfreq", type=int, default=7)
    ap.add_argument("--precisions", default="fp32,tf32,bf16")
    ap.add_argument("--curve-steps", type=int, default=20)
    ap.add_argument("--curve-batch", type=int, default=4)
    args = ap.parse_args()
    precs = [p for p in args.precisions.split(",") if p]
    bad = [p for p in precs if p not in ("fp32", "tf32", "bf16")]
    if bad:
        print(f"torch_anchor.py: error: --precisions: {bad[0]!r}: expected fp32, tf32 or bf16",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("SKIP: torch sees no CUDA device")
        return 77
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"anchor: torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
          f"{torch.cuda.get_device_name(0)}", flush=True)
    for prec in precs:
        r = train_rate(args, prec, dev)
        print(f"anchor: train torch {prec} batch={args.batch} samples/s {r:.1f}", flush=True)
        r = infer_rate(args, prec, dev)
        print(f"anchor: infer torch {prec} batch={args.infer_batch} samples/s {r:.1f}", flush=True)
    if args.curve_steps > 0:
        curves = {p: curve(args, p, dev) for p in precs}
        ref = curves.get("fp32")
        for p, c in curves.items():
            print(f"anchor: curve torch {p} " + " ".join(f"{v:.6g}" for v in c), flush=True)
            if ref and p != "fp32":
                d = max(abs(a - b) / abs(b) for a, b in zip(c, ref))
                print(f"anchor: curve torch {p} vs fp32: largest relative loss difference {d:.3g} "
                      f"over {len(c)} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
