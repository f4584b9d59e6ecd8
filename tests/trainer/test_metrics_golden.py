"""SSIM (both conventions), ZNCC and MaxRel of trainer/metrics.c against an
independent numpy implementation (direct 2-D windows, not the separable
filter the C code uses). Usage: test_metrics_golden.py TEST_METRICS_EXE.

Both sides are double precision and differ in summation order only (the C
code's fixed loops, numpy's SIMD sums chosen by the host's CPU), so the
tolerances are error bounds computed from the data, not constants: a sum of
n terms is within gamma_n x the sum of their magnitudes (Higham), and each
metric's condition (the cancellation in a variance E[x^2] - E[x]^2, in
|I_t - I_p|) multiplies that; both implementations are within the bound of
the exact value, so they are within twice it of each other."""
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


EPS = np.finfo(np.float64).eps


def gamma(n):
    return n * EPS / 2 / (1 - n * EPS / 2)


def ssim(pred, target, reflect):
    """(mean, per sample, condition): condition bounds how far a rounding of
    relative size e in the window sums moves the map, relative: cond x e."""
    n, f = pred.shape[:2]
    win = gaussian_window()
    per = np.zeros(n)
    cond = 0.0
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
            exx, eyy, exy = filt(x * x, win), filt(y * y, win), filt(x * y, win)
            # every factor's sum of magnitudes over its value (the window
            # weights and the data are >= 0, so |E[.]| are their own magnitudes)
            k = (2 * (np.abs(exy) + np.abs(mx * my)) + C2) / np.abs(2 * sxy + C2)
            k += (exx + mx * mx + eyy + my * my + C2) / np.abs(sxx + syy + C2)
            k += (2 * np.abs(mx * my) + C1) / np.abs(2 * mx * my + C1) + 1
            cond = max(cond, float(k.max()))
    return per.mean(), per, cond


def zncc(pred, target):
    """(mean, per sample, condition: sum |p t| / |sum p t| and the mean
    subtraction's |x| / std, the cancellations a rounding is amplified by)"""
    n, f = pred.shape[:2]
    per = np.zeros(n)
    cond = 0.0
    for s in range(n):
        for c in range(f):
            p = pred[s, c] - pred[s, c].mean()
            t = target[s, c] - target[s, c].mean()
            den = np.sqrt((p * p).sum() * (t * t).sum())
            per[s] += ((p * t).sum() / den if den > 0 else 0.0) / f
            cond = max(cond, float(np.abs(p * t).sum() / abs((p * t).sum())),
                       float(np.abs(pred[s, c]).max() / pred[s, c].std()),
                       float(np.abs(target[s, c]).max() / target[s, c].std()))
    return per.mean(), per, cond


def maxrel(pred, target, lo=-40.0, hi=-27.064306):
    it = np.exp(target.astype(np.float64) * (hi - lo) + lo)
    ip = np.exp(pred.astype(np.float64) * (hi - lo) + lo)
    rel = np.abs(it - ip) / it.max(axis=1, keepdims=True)
    # exp of an argument up to |lo| + |hi| carries that many ulps (the
    # argument's rounding), amplified by the cancellation in |I_t - I_p|
    cond = float(((it + ip) / np.maximum(np.abs(it - ip), 1e-300)).max()) * (abs(lo) + abs(hi) + 2)
    return rel.mean(axis=(1, 2, 3)) * 100, cond


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
    z, zper, zc = zncc(p, t)
    si, siper, sic = ssim(p, t, False)
    sr, srper, src = ssim(p, t, True)
    mr, mrc = maxrel(p.astype(np.float32), t.astype(np.float32))
    hw = p.shape[2] * p.shape[3]
    # twice (both sides) the bound: sums of up to hw terms (means, windows of
    # 121 summed separably or directly), times the condition; then the means
    # over pixels and samples (positive terms)
    tz = 2 * (gamma(2 * hw) * zc + gamma(p.size))
    ts = 2 * (gamma(4 * 121) * max(sic, src) + gamma(p.size))
    tm = 2 * (gamma(8) * mrc + gamma(p.size))
    print(f"relative tolerances (bounds): zncc {tz:.1e}, ssim {ts:.1e}, maxrel {tm:.1e}")
    check("zncc mean", np.isclose(res[0], z, rtol=tz, atol=0), f"{res[0]} vs {z}")
    check("ssim interior mean", np.isclose(res[1], si, rtol=ts, atol=0), f"{res[1]} vs {si}")
    check("ssim reflect mean", np.isclose(res[2], sr, rtol=ts, atol=0), f"{res[2]} vs {sr}")
    check("zncc per sample", np.allclose(res[3:3 + n], zper, rtol=tz, atol=0))
    check("ssim interior per sample", np.allclose(res[3 + n:3 + 2 * n], siper, rtol=ts, atol=0))
    check("ssim reflect per sample", np.allclose(res[3 + 2 * n:3 + 3 * n], srper, rtol=ts, atol=0))
    check("maxrel per sample", np.allclose(res[3 + 3 * n:3 + 4 * n], mr, rtol=tm, atol=0),
          f"{res[3 + 3 * n:]} vs {mr}")
    check("the two SSIM conventions differ", abs(si - sr) > 1e-6, f"{si} {sr}")


main()
pycheck.report()
