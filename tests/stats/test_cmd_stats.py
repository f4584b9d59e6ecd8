"""`coemu stats` end to end: a small dataset.h5 whose /inputs and /targets are
virtual datasets over two shard files (and one with plain datasets), with known adversarial contents (an
outlier sample, NaN, a zero temperature, zero intensities, a validation
split). Checks the /stats group against numpy references, that 1, 2 and 3
ranks give identical results, the outlier rule, and errors on bad input."""
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np

COEMU = os.environ["COEMU"]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402



EPS = float(np.finfo(np.float64).eps)


def close(a, b, rtol, what):
    check(abs(a - b) <= rtol * abs(b), f"{what}: {a!r} vs {b!r}")


def make_dataset(d, F, virtual, n=6, N=10):
    """virtual: /inputs and /targets as VDS over two shards (read per rank
    with the default driver where HDF5 < 1.14), else plain datasets (read
    through MPI-IO)."""
    rng = np.random.default_rng(1)
    inputs = np.empty((N, 3, n, n, n), np.float32)
    inputs[:, 0] = rng.normal(2e3, 3e3, (N, n, n, n)) + 1e4
    inputs[:, 1] = np.exp(rng.normal(4, 1.5, (N, n, n, n)))
    inputs[:, 2] = np.exp(rng.normal(20, 3, (N, n, n, n)))
    inputs[3, 0, 0, 0, 0] = 2e5  # outlier sample (range > 1e5 m/s)
    inputs[2, 1, 1, 1, 1] = np.nan  # NaN in T
    inputs[4, 1, 2, 2, 2] = 0.0  # zero T -> ln = -inf
    targets = np.exp(rng.normal(-33, 2, (N, F, n, n))).astype(np.float32)
    targets[1, 0, :2, :] = 0.0  # zeros -> the sample's smallest positive value
    targets[5, -1, 0, 0] = np.float32(np.exp(-45))  # below the clip
    split = np.zeros(N, np.uint8)
    split[[7, 9]] = 1
    split[8] = 2
    cut = 6
    if not virtual:
        with h5py.File(os.path.join(d, "dataset.h5"), "w") as f:
            f["inputs"] = inputs
            f["targets"] = targets
            f["split"] = split
        return inputs, targets, split
    for k, (a, b) in enumerate([(0, cut), (cut, N)]):
        with h5py.File(os.path.join(d, f"shard{k}.h5"), "w") as f:
            f["inputs"] = inputs[a:b]
            f["targets"] = targets[a:b]
    with h5py.File(os.path.join(d, "dataset.h5"), "w") as f:
        for name, arr in (("inputs", inputs), ("targets", targets)):
            lay = h5py.VirtualLayout(shape=arr.shape, dtype=np.float32)
            for k, (a, b) in enumerate([(0, cut), (cut, N)]):
                lay[a:b] = h5py.VirtualSource(f"shard{k}.h5", name, shape=(b - a,) + arr.shape[1:])
            f.create_virtual_dataset(name, lay)
        f["split"] = split
    return inputs, targets, split


def run(args, nranks=1, cwd=None):
    """Under mpiexec (nranks 0: directly, for errors found before MPI starts;
    an MPI singleton is avoided: LeakSanitizer's tracer fails in one)."""
    cmd = [COEMU, "stats"]
    if nranks:
        cmd = [os.environ.get("COEMU_MPIEXEC", "mpiexec"), "--allow-run-as-root", "--oversubscribe",
               "-n", str(nranks)] + cmd
    return subprocess.run(cmd + args, capture_output=True, text=True, cwd=cwd, timeout=120)


def read_stats(path, group="stats"):
    out = {}
    with h5py.File(path, "r") as f:
        g = f[group]
        out["/"] = {k: g.attrs[k] for k in g.attrs}
        for name in g:
            out[name] = {k: g[name].attrs[k] for k in g[name].attrs}
    return out


def lnI(sample, clip):
    s = sample.astype(np.float64)
    pos = s[s > 0]
    s = np.where(s == 0, pos.min(), s)
    t = np.log(s)
    if clip is not None:
        t = np.maximum(t, clip)
    return t.astype(np.float32)


def lower_median(x):
    x = np.sort(x)
    return x[(len(x) - 1) // 2]


def references(inputs, targets, sel, F):
    clip = -40.0 if F > 1 else None
    fields = {}
    chunks = {}
    for i in sel:
        vals = {
            "v_z": inputs[i, 0].ravel(),
            "ln_T": np.log(inputs[i, 1].astype(np.float64)).astype(np.float32).ravel(),
            "ln_n_CO": np.log(inputs[i, 2].astype(np.float64)).astype(np.float32).ravel(),
        }
        li = lnI(targets[i], clip)
        vals["ln_I"] = li.ravel()
        if F > 1:
            for c in range(F):
                vals[f"ln_I_ch{c}"] = li[c].ravel()
        for k, v in vals.items():
            fields.setdefault(k, []).append(v)
            fin = v[np.isfinite(v)]
            chunks.setdefault(k, []).append(lower_median(fin))
    ref = {}
    for k, parts in fields.items():
        x = np.concatenate(parts)
        fin = x[np.isfinite(x)].astype(np.float64)
        mom = lower_median(np.array(chunks[k], np.float32))
        ref[k] = dict(count=len(fin), mean=fin.mean(), std=fin.std(), min=fin.min(), max=fin.max(),
                      cond=float(np.abs(fin).sum() / max(abs(fin.sum()), 1e-300)),
                      median=np.median(fin), median_of_medians=float(mom),
                      mom_quantile_lo=np.sum(fin < mom) / len(fin),
                      mom_quantile_hi=np.sum(fin <= mom) / len(fin),
                      nan_count=int(np.isnan(x).sum()), inf_count=int(np.isinf(x).sum()))
    return ref


def compare(st, ref, label):
    for k, r in ref.items():
        a = st.get(k)
        check(a is not None, f"{label}: /stats/{k} present")
        if a is None:
            continue
        check(a["count"] == r["count"], f"{label} {k} count {a['count']} vs {r['count']}")
        check(a["nan_count"] == r["nan_count"] and a["inf_count"] == r["inf_count"],
              f"{label} {k} nan/inf {a['nan_count']},{a['inf_count']} vs {r['nan_count']},{r['inf_count']}")
        # numpy's float64 log may differ from glibc's in the last bit of the
        # float32 ln values: ln fields are compared to 1e-6 relative.
        tol = 0 if k == "v_z" else 1e-6
        for q in ("min", "max", "median", "median_of_medians"):
            close(a[q], r[q], tol, f"{label} {k} {q}")
        # coemu's moments are exact, rounded once; numpy's float64 sums are
        # pairwise (in an order its SIMD dispatch picks on this CPU): within
        # (log2 n + 1) eps x the sum of magnitudes, for the mean relative to
        # it by the condition sum|x| / |sum x|; std's two-pass variance sums
        # squares (condition 1) after the mean's error cancels to first order
        lg = np.log2(max(r["count"], 2)) + 4
        close(a["mean"], r["mean"], max(tol, lg * EPS * r["cond"]), f"{label} {k} mean")
        close(a["std"], r["std"], max(tol, 2 * lg * EPS), f"{label} {k} std")
        if k == "v_z":
            close(a["mom_quantile_lo"], r["mom_quantile_lo"], 0, f"{label} {k} mom q lo")
            close(a["mom_quantile_hi"], r["mom_quantile_hi"], 0, f"{label} {k} mom q hi")
        check(a["mom_quantile_hi"] >= 0.25 and a["mom_quantile_lo"] <= 0.75, f"{label} {k} mom bound")


def main():
    with tempfile.TemporaryDirectory() as d:
        for F in (7, 1):
            sub = os.path.join(d, f"F{F}")
            os.mkdir(sub)
            inputs, targets, split = make_dataset(sub, F, virtual=F > 1)
            path = os.path.join(sub, "dataset.h5")
            results = []
            counts = (1, 2, 3) if F > 1 else (2,)
            for k in counts:
                p = run([sub], k, cwd="/")
                check(p.returncode == 0, f"F={F} ranks={k}: exit {p.returncode}: {p.stderr}")
                results.append(read_stats(path))
            for k, res in zip(counts[1:], results[1:]):
                for g in res:
                    for a in res[g]:
                        if a == "ranks":
                            continue
                        same = np.array_equal(res[g][a], results[0][g][a], equal_nan=True) \
                            if not isinstance(res[g][a], bytes) else res[g][a] == results[0][g][a]
                        check(same, f"F={F}: ranks {k} vs 1: /stats/{g} {a}: {res[g][a]} vs {results[0][g][a]}")
            st = results[0]
            train = [i for i in range(len(split)) if split[i] == 0]
            compare(st, references(inputs, targets, train, F), f"F={F} train")
            top = st["/"]
            check(top["samples_used"] == len(train) and top["samples_outliers"] == 0, f"F={F} samples")
            check(top["split"] == b"train", f"F={F} split attr {top['split']}")
            check(top["I_mode"] == (b"minmax" if F > 1 else b"median"), f"F={F} I_mode")
            check(st["ln_T"]["inf_count"] == 1 and st["ln_T"]["nan_count"] == 1, "T: one NaN, one zero")
            # Transform parameters: from the statistics, as coemunet.md says.
            close(top["vz_mean"], st["v_z"]["mean"], 0, "vz_mean")
            close(top["lnT_scale"], st["ln_T"]["median"] - st["ln_T"]["min"], 0, "lnT_scale")
            if F > 1:
                close(top["lnI_scale"], st["ln_I"]["max"] - st["ln_I"]["min"], 0, "lnI_scale")
                check(st["ln_I"]["min"] == -40.0, f"ln_I clipped at -40: {st['ln_I']['min']}")
            else:
                close(top["lnI_scale"], st["ln_I"]["median"] - st["ln_I"]["min"], 0, "lnI_scale")
            # The outlier rule drops sample 3 (train).
            p = run([sub, "--drop-outliers", "--split", "all"], 3 if F > 1 else 1)
            check(p.returncode == 0, f"drop-outliers: {p.stderr}")
            # not the normalisation split (train): its own group, /stats kept
            now, last = read_stats(path), results[-1]
            check(now.keys() == last.keys() and all(
                now[g].keys() == last[g].keys() and all(
                    now[g][a] == last[g][a] if isinstance(now[g][a], bytes)
                    else np.array_equal(now[g][a], last[g][a], equal_nan=True) for a in now[g])
                for g in now), "/stats left as it was by --split all")
            st2 = read_stats(path, "stats_all")
            allsel = [i for i in range(len(split)) if i != 3]
            check(st2["/"]["samples_outliers"] == 1 and st2["/"]["samples_used"] == 9, "outliers")
            compare(st2, references(inputs, targets, allsel, F), f"F={F} all -outlier")
            with h5py.File(path, "r") as f:
                check("stats.tmp" not in f and "stats_all.tmp" not in f, "no /stats.tmp left")

        # Bad input: a clear message and a non-zero exit, never a hang.
        p = run([os.path.join(d, "nope")], 2)
        check(p.returncode != 0 and "nope: no such dataset folder" in p.stderr, f"missing: {p.stderr}")
        os.makedirs(os.path.join(d, "unfinished", "shards"))
        open(os.path.join(d, "unfinished", "shards", "shard-000000.h5"), "w").close()
        p = run([os.path.join(d, "unfinished")], 2)
        check(p.returncode != 0 and "unfinished is not a finished dataset: no dataset.h5 yet, 1 "
              "shard made so far" in p.stderr and "coemu generate" in p.stderr,
              f"an unfinished dataset: {p.stderr}")
        p = run([os.path.join(d, "F7"), "--split", "bogus"], 0)
        check(p.returncode == 2 and "expected train, validation, test or all" in p.stderr, p.stderr)
        bad = os.path.join(d, "bad")
        os.mkdir(bad)
        f32 = np.float32
        cases = [  # (inputs, targets, split, ranks, expected message)
            (np.ones((2, 3, 4, 4, 4), f32), np.ones((2, 1, 4, 5), f32), None, 1, "/targets shape"),
            (np.ones((2, 3, 4, 4, 4), f32), np.ones((2, 1, 4, 4), f32), np.array([0, 7], np.uint8), 2,
             "/split[1] = 7"),
            (np.ones((2, 3, 4, 4, 4), f32), np.ones((2, 1, 4, 4), f32), None, 1, "not > 0"),
            # float64 is read (output.inputs_dtype); integers are not
            (np.ones((2, 3, 4, 4, 4), np.int32), np.ones((2, 1, 4, 4), f32), None, 1,
             "/inputs is not float32 or float64"),
        ]
        for inputs, targets, split, k, msg in cases:
            with h5py.File(os.path.join(bad, "dataset.h5"), "w") as f:
                f["inputs"] = inputs
                f["targets"] = targets
                if split is not None:
                    f["split"] = split
            p = run([bad], k)
            check(p.returncode != 0 and msg in p.stderr, f"expected '{msg}': {p.stderr}")
        # a split with no samples is named as such (as serve names it), not as a field
        with h5py.File(os.path.join(bad, "dataset.h5"), "w") as f:
            f["inputs"] = np.ones((2, 3, 4, 4, 4), f32)
            f["targets"] = np.ones((2, 1, 4, 4), f32)
            f["split"] = np.zeros(2, np.uint8)
        p = run([bad, "--split", "test"], 2)
        check(p.returncode != 0 and "split 'test' has no samples" in p.stderr
              and "no finite values" not in p.stderr, f"an empty split: {p.stderr}")

        # A line fainter than the ln I clip (another molecule, a rarer
        # isotopologue): every pixel below e^-40 is an error that says so
        # and how to recompute, not "constant data"; --ln-intensity-clip (or
        # the job's statistics.ln_intensity_clip) sets a lower one, and most
        # pixels below the clip is a warning.
        faint = os.path.join(d, "faint")
        os.mkdir(faint)
        inputs, _, _ = make_dataset(faint, 7, virtual=False)
        rng = np.random.default_rng(5)
        targets = np.exp(rng.normal(-55, 2, (10, 7, 6, 6))).astype(np.float32)
        with h5py.File(os.path.join(faint, "dataset.h5"), "w") as f:
            f["inputs"] = inputs
            f["targets"] = targets
        path = os.path.join(faint, "dataset.h5")
        p = run([faint], 2)
        check(p.returncode == 1 and "every ln I of split 'train' is at or below the clip -40" in p.stderr
              and "--ln-intensity-clip" in p.stderr and "constant data" not in p.stderr,
              f"faint line, default clip: {p.stderr}")
        for clip, warn in ((-80, False), (-50, True)):
            p = run([faint, "--ln-intensity-clip", str(clip)], 2)
            st = read_stats(path)
            below = float(np.mean(targets.astype(np.float64) < np.exp(clip)))
            check(p.returncode == 0 and st["/"]["lnI_clip"] == clip and st["ln_I"]["min"] >= clip
                  and abs(st["/"]["pixels_below_clip"] - below) < 1e-12
                  and ("normalise to 0" in p.stderr) == warn,
                  f"faint line, clip {clip}: {p.returncode} {st['/'].get('lnI_clip')} "
                  f"{st['/'].get('pixels_below_clip')} vs {below}: {p.stderr}")
        with open(os.path.join(faint, "job.yaml"), "w") as f:
            f.write("name: faint\ninputs: {synth: {count: 2}}\nline: {lamda: builtin:co.dat}\nstatistics: {ln_intensity_clip: -70}\n")
        p = run([faint], 1)
        check(p.returncode == 0 and read_stats(path)["/"]["lnI_clip"] == -70,
              f"the job's statistics.ln_intensity_clip: {p.stderr}")
        for v in ("1e9", "nan", "x"):
            p = run([faint, "--ln-intensity-clip", v], 0)
            check(p.returncode == 2 and "--ln-intensity-clip" in p.stderr, f"--ln-intensity-clip {v}: {p.stderr}")

    report()


if __name__ == "__main__":
    sys.exit(main())
