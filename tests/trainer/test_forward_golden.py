#!/usr/bin/env python3
"""COEmuNet's forward pass against an independent numpy implementation.

dump_forward (C) trains small fixed-seed nets 20 steps and writes their
checkpoints, an input batch and the outputs in evaluation and training
mode. Here the architecture of docs/trainer.md / the reference code is
written again in numpy (float64, direct sums), the weights are taken from the
checkpoint by their PyTorch state_dict names (so the names, shapes and the
file format are checked too), and the outputs must agree to float32
accuracy. The BatchNorm running statistics the training-mode pass leaves
(momentum 0.1, unbiased variance) are checked as well.

"float32 accuracy" is measured here, not assumed: how far a float32
forward lies from the float64 one depends on the net's conditioning (in
training mode the last encoder stage normalises 3 values per channel) and on
the BLAS kernel (its summation order), so no constant holds on every host
(2e-5 of the largest output, measured on one, fails with
OPENBLAS_CORETYPE=Prescott). The same forward is run in float32 by numpy
(its own BLAS, the same per-layer roundings), in three legitimate variants
(as is, batch reversed, inputs one ulp up or down), and the C outputs must
lie within FLOOR_FACTOR x the largest of those float32 errors (measured on
12 OpenBLAS kernels: within 3.1x for the outputs, 1.8x for the running
statistics).

Usage: test_forward_golden.py DUMP_FORWARD_EXE"""
import os
import subprocess
import sys
import tempfile

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402
from ckptfile import read_ckpt  # noqa: E402


class Net:
    """The COEmuNet forward pass in numpy, float64, NCDHW."""

    def __init__(self, arch, w, train, dtype=np.float64):
        self.nfreq, self.grid, self.stem = arch[0], arch[1], arch[2]
        self.enc, self.latent, self.dec, self.shortcut = arch[3:6], arch[6], arch[7], arch[8]
        self.w = {k: v.astype(dtype) for k, v in w.items()}
        self.train, self.stats, self.dtype = train, {}, dtype

    def conv(self, x, name, stride=(1, 1, 1), pad=(0, 0, 0)):
        W, b = self.w[name + ".weight"], self.w[name + ".bias"]
        x = np.pad(x, ((0, 0), (0, 0)) + tuple((p, p) for p in pad))
        win = sliding_window_view(x, W.shape[2:], axis=(2, 3, 4))
        win = win[:, :, ::stride[0], ::stride[1], ::stride[2]]
        return np.einsum("ncdhwijk,ocijk->nodhw", win, W, optimize=True) + b[None, :, None, None, None]

    def bn(self, x, name):
        g, be = self.w[name + ".weight"], self.w[name + ".bias"]
        if self.train:
            mean = x.mean(axis=(0, 2, 3, 4))
            var = x.var(axis=(0, 2, 3, 4))
            m = x.size // x.shape[1]
            self.stats[name] = (mean, var * m / (m - 1))
        else:
            mean, var = self.w[name + ".running_mean"], self.w[name + ".running_var"]
        s = (g / np.sqrt(var + self.dtype(1e-5)))[None, :, None, None, None]
        return (x - mean[None, :, None, None, None]) * s + be[None, :, None, None, None]

    def cbr(self, x, p, stride=(1, 1, 1), pad=(0, 0, 0)):
        return np.maximum(self.bn(self.conv(x, p + "layers.0", stride, pad), p + "layers.1"), 0)

    def block(self, x, p, stride, conv_skip):
        x1 = self.cbr(x, p + "CBR0.", (stride,) * 3, (1, 1, 1))
        x2 = self.cbr(x1, p + "CBR1.", (1, 1, 1), (1, 1, 1))
        if not conv_skip:
            return x2 + x
        if self.shortcut == 0:  # the reference code's shortcut, on the block's own output
            return x2 + self.cbr(x2, p + "short_CBR0.")
        return x2 + self.cbr(x, p + "short_CBR0.", (stride,) * 3)

    def encoder(self, x, e):
        h = self.cbr(x, f"encoder{e}.layers.0.")
        n = h.shape[2] // 2
        h = h[:, :, :2 * n, :2 * n, :2 * n].reshape(h.shape[0], h.shape[1], n, 2, n, 2, n, 2).max(axis=(3, 5, 7))
        i = 2
        for st in range(3):
            for b in range(3):
                h = self.block(h, f"encoder{e}.layers.{i}.", 2 if b == 0 else 1, b == 0)
                i += 1
        return h.reshape(h.shape[0], -1)

    def __call__(self, x):
        N, F, lg = x.shape[0], self.nfreq, self.grid // 8
        h = np.concatenate([self.encoder(x[:, e:e + 1], e) for e in range(3)], axis=1)
        h = h @ self.w["to_lat.weight"].T + self.w["to_lat.bias"]
        h = np.maximum(h @ self.w["to_dec.weight"].T + self.w["to_dec.bias"], 0)
        h = h.reshape(N, self.dec, F, lg, lg)
        p = "decoder.layers." if F == 1 else "decoder3d.layers."
        i = 0
        for st in range(3):
            for _ in range(1 if F == 1 else 3):
                h = self.conv(h, p + str(i), pad=(0, 1, 1))
                h = np.maximum(self.bn(h, p + str(i + 1)), 0)
                i += 3
            h = h.repeat(2, axis=3).repeat(2, axis=4)
            i += 1
        h = self.conv(h, p + str(i), pad=(0, 1, 1))
        return np.tanh(h) if F > 1 else h


FLOOR_FACTOR = 10
F32_EPS = float(np.finfo(np.float32).eps)  # the floor of any float32 output


def float32_runs(arch, w, x, train):
    """The same forward in float32, in legitimate variants: (outputs, BatchNorm
    statistics) of each, outputs in the original sample order."""
    x32 = x.astype(np.float32)
    rng = np.random.default_rng(5)
    up = rng.random(x32.shape) < 0.5
    moved = np.where(up, np.nextafter(x32, np.float32(np.inf)), np.nextafter(x32, np.float32(-np.inf)))
    for xv, back in ((x32, slice(None)), (x32[::-1], slice(None, None, -1)), (moved, slice(None))):
        n = Net(arch, w, train, np.float32)
        yield n(xv)[back].astype(np.float64), n.stats


def rel_err(a, ref):
    return float(np.max(np.abs(a - ref)) / max(1e-30, np.max(np.abs(ref))))


def want_stats(stats, w):
    """The running statistics a training-mode pass with these batch statistics
    leaves (momentum 0.1; the variances unbiased)."""
    return {f"{name}.{key}": 0.9 * w[f"{name}.{key}"] + 0.1 * np.asarray(batch, np.float64)
            for name, (mean, var) in stats.items()
            for key, batch in (("running_mean", mean), ("running_var", var))}


def stats_err(got, want):
    """Largest relative difference between two sets of running statistics."""
    return max(float(np.max(np.abs(got[k] - v) / (np.abs(v) + 1e-3))) for k, v in want.items())


exe = sys.argv[1]
with tempfile.TemporaryDirectory() as d:
    r = subprocess.run([exe, d], capture_output=True, text=True)
    check(r.returncode == 0, f"dump_forward: {r.stderr}")
    for case in ("f1-reference", "f3-reference", "f1-input", "f3-input"):
        arch, w = read_ckpt(os.path.join(d, case + ".ckpt"))
        x = np.load(os.path.join(d, case + "-x.npy")).astype(np.float64)
        for mode in ("eval", "train"):
            net = Net(arch, w, mode == "train")
            ref = net(x)
            got = np.load(os.path.join(d, f"{case}-{mode}.npy"))
            check(got.shape == ref.shape, f"{case} {mode}: shape {got.shape} vs {ref.shape}")
            if got.shape != ref.shape:
                continue
            runs = list(float32_runs(arch, w, x, mode == "train"))
            floor = max([F32_EPS] + [rel_err(y, ref) for y, _ in runs])
            err = rel_err(got, ref)
            check(err <= FLOOR_FACTOR * floor,
                  f"{case} {mode}: largest difference {err:.2e} of the largest value, more than "
                  f"{FLOOR_FACTOR} x numpy's float32 error {floor:.2e}")
            check(np.std(ref) > 1e-3, f"{case} {mode}: a non-trivial output")
            print(f"{case} {mode}: output {ref.shape} (std {np.std(ref):.2g}), largest difference "
                  f"{err:.1e}, float32 floor {floor:.1e}")
        # running statistics after the training-mode pass (the last `net`, `runs`)
        _, after = read_ckpt(os.path.join(d, case + "-after.ckpt"))
        want = want_stats(net.stats, w)
        worst = stats_err(after, want)
        sfloor = max([F32_EPS] + [stats_err(want_stats(st, w), want) for _, st in runs])
        check(len(net.stats) > 20 and worst <= FLOOR_FACTOR * sfloor,
              f"{case}: running statistics of {len(net.stats)} BatchNorms, worst {worst:.1e}, "
              f"float32 floor {sfloor:.1e}")
        print(f"{case}: running statistics worst {worst:.1e}, float32 floor {sfloor:.1e}")
report()
