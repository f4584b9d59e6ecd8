"""SSIM (both conventions), ZNCC and MaxRel of trainer/metrics.c against an
independent numpy implementation (direct 2-D windows, not the separable
filter the C code uses). Usage: test_metrics_golden.py TEST_METRICS_EXE."""
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pycheck  # noqa: E402


def check(name, ok, detail=""):
    pycheck.check(ok, f"{name} {detail}")


def gaussian_window():
    x = np.arange(11) - 5.0
    g = np.exp(-x * x / (2 * 1.5 * 1.5))
    g /= g.sum()
    return np.outer(g, g)


def filt(img, win):
    v = np.lib.stride_tricks.sliding_window_view(img, win.shape)
    return np.einsum("ijkl,kl->ij", v, win)


def ssim(pred, target, reflect):
    n, f = pred.shape[:2]
    win = gaussian_window()
    per = np.zeros(n)
    for c in range(f):
        L = target[:, c].max() - target[:, c].min()
        C1, C2 = (0.01 * L) ** 2, (0.03 * L) ** 2
        for s in range(n):
            x, y = pred[s, c], target[s, c]
            if reflect:
                x, y = np.pad(x, 5, mode="reflect"), np.pad(y, 5, mode="reflect")
            mx, my = filt(x, win), filt(y, win)
            sxx = filt(x * x, win) - mx * mx
            syy = filt(y * y, win) - my * my
            sxy = filt(x * y, win) - mx * my
            m = ((2 * mx * my + C1) * (2 * sxy + C2)) / ((mx * mx + my * my + C1) * (sxx + syy + C2))
            per[s] += m.mean() / f
    return per.mean(), per


def zncc(pred, target):
    n, f = pred.shape[:2]
    per = np.zeros(n)
    for s in range(n):
        for c in range(f):
            p = pred[s, c] - pred[s, c].mean()
            t = target[s, c] - target[s, c].mean()
            den = np.sqrt((p * p).sum() * (t * t).sum())
            per[s] += ((p * t).sum() / den if den > 0 else 0.0) / f
    return per.mean(), per


def maxrel(pred, target, lo=-40.0, hi=-27.064306):
    it = np.exp(target.astype(np.float64) * (hi - lo) + lo)
    ip = np.exp(pred.astype(np.float64) * (hi - lo) + lo)
    rel = np.abs(it - ip) / it.max(axis=1, keepdims=True)
    return rel.mean(axis=(1, 2, 3)) * 100


def main():
    exe = sys.argv[1]
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([exe, "--dump", d], capture_output=True, text=True)
        check("dump runs", r.returncode == 0, r.stderr)
        if r.returncode != 0:
            return
        p = np.load(os.path.join(d, "pred.npy")).astype(np.float64)
        t = np.load(os.path.join(d, "target.npy")).astype(np.float64)
        res = np.load(os.path.join(d, "results.npy"))
    n = p.shape[0]
    z, zper = zncc(p, t)
    si, siper = ssim(p, t, False)
    sr, srper = ssim(p, t, True)
    mr = maxrel(p.astype(np.float32), t.astype(np.float32))
    tol = dict(rtol=1e-10, atol=1e-12)
    check("zncc mean", np.isclose(res[0], z, **tol), f"{res[0]} vs {z}")
    check("ssim interior mean", np.isclose(res[1], si, **tol), f"{res[1]} vs {si}")
    check("ssim reflect mean", np.isclose(res[2], sr, **tol), f"{res[2]} vs {sr}")
    check("zncc per sample", np.allclose(res[3:3 + n], zper, **tol))
    check("ssim interior per sample", np.allclose(res[3 + n:3 + 2 * n], siper, **tol))
    check("ssim reflect per sample", np.allclose(res[3 + 2 * n:3 + 3 * n], srper, **tol))
    check("maxrel per sample", np.allclose(res[3 + 3 * n:3 + 4 * n], mr, **tol),
          f"{res[3 + 3 * n:]} vs {mr}")
    check("the two SSIM conventions differ", abs(si - sr) > 1e-6, f"{si} {sr}")


main()
pycheck.report()
