#!/usr/bin/env python3
"""COEmuNet's forward pass against an independent numpy implementation.

dump_forward (C) trains small fixed-seed nets two steps and writes their
checkpoints, an input batch and the outputs in evaluation and training
mode. Here the architecture of docs/trainer.md / the reference code is
written again in numpy (float64, direct sums), the weights are taken from the
checkpoint by their PyTorch state_dict names (so the names, shapes and the
file format are checked too), and the outputs must agree to float32
accuracy. The BatchNorm running statistics the training-mode pass leaves
(momentum 0.1, unbiased variance) are checked as well.

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

    def __init__(self, arch, w, train):
        self.nfreq, self.grid, self.stem = arch[0], arch[1], arch[2]
        self.enc, self.latent, self.dec, self.shortcut = arch[3:6], arch[6], arch[7], arch[8]
        self.w, self.train, self.stats = w, train, {}

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
        s = (g / np.sqrt(var + 1e-5))[None, :, None, None, None]
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
            err = float(np.max(np.abs(got - ref)) / max(1e-30, np.max(np.abs(ref))))
            check(err < 2e-5, f"{case} {mode}: largest difference {err:.2e} of the largest value")
            check(np.std(ref) > 1e-3, f"{case} {mode}: a non-trivial output")
            print(f"{case} {mode}: output {ref.shape} (std {np.std(ref):.2g}), largest difference {err:.1e}")
        # running statistics after the training-mode pass
        _, after = read_ckpt(os.path.join(d, case + "-after.ckpt"))
        worst = 0.0
        for name, (mean, var) in net.stats.items():
            for key, batch in (("running_mean", mean), ("running_var", var)):
                want = 0.9 * w[f"{name}.{key}"] + 0.1 * batch
                worst = max(worst, float(np.max(np.abs(after[f"{name}.{key}"] - want) / (np.abs(want) + 1e-3))))
        check(len(net.stats) > 20 and worst < 1e-4,
              f"{case}: running statistics of {len(net.stats)} BatchNorms, worst {worst:.1e}")
report()
