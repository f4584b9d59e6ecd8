#!/usr/bin/env python3
"""The pilot pass of `coemu serve --generate` (--pilot N, the job key
stream.stats.pilot; docs/onthefly.md, "Normalisation").

A tiny job (4 synthetic models x 4 directions, 16^3 cubes, 3 channels; 2
training models) is streamed under mpirun -n 2:
- --pilot 4 (directions 0..1 of both training models): the pilot's /stats,
  written with --pilot-out, equal bit for bit (every dataset and attribute
  but samples_total and ranks) the /stats `coemu stats` computes, on 1 rank, on the
  dataset `coemu generate` makes of the same job with sampling.directions 2,
  which holds exactly that subset as its training split;
- INFO names the pass (samples, subset, id); the server prints its cost;
- --stats FILE (the file the pass wrote) and --stats REF (the dataset):
  the same INFO normalisation and id, and normalised samples byte for byte
  those of the pilot run;
- restarted with --pilot, a consumer resuming mid-epoch gets the rest of the
  uninterrupted run's normalised epoch, with the same normalisation;
- the job key (samples 5: a partial round, direction 2 of the first training
  model only): the subset checked against the stored samples (v_z count, min,
  max and exact mean), the file written, INFO from the job;
- bad settings: --pilot 0, more than the training samples, --pilot without
  --generate, with --stats, --pilot-out alone (exit 2, before MPI starts);
  the job key with mode live, samples 0 and too many (the job file's
  FILE:LINE:COL, exit 1 as every bad job file)."""
import math
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, mpi_singleton_env, report  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servetest import COEMU, LAMDA, MPI, ROOT, cs, finish, start, wait_up  # noqa: E402,F401


def consume(ep, epoch=0, position=0, **kw):
    """the chunks of one epoch from (epoch, position)."""
    c = cs.StreamClient(ep, rank=0, world=1, epoch=epoch, position=position, timeout_s=30,
                        heartbeat_s=0.2, **kw)
    got = []
    try:
        while True:
            ch = c.next()
            if ch is None or ch.epoch != epoch:
                break
            got.append(ch)
    finally:
        c.close()
    return got


def same_chunks(a, b):
    return (len(a) == len(b) and
            all(list(x.ids) == list(y.ids) and np.array_equal(x.inputs, y.inputs) and
                np.array_equal(x.targets, y.targets) for x, y in zip(a, b)))


def stats_group(path):
    """every dataset and attribute of /stats, by name."""
    out = {}
    with h5py.File(path, "r") as f:
        g = f["stats"]
        for k, v in g.attrs.items():
            out["@" + k] = v

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
            for k, v in obj.attrs.items():
                out[name + "@" + k] = v
        g.visititems(visit)
    return out


def bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f" and b.dtype.kind == "f":  # NaN equal to NaN, -0 apart from 0
        return a.shape == b.shape and a.tobytes() == b.tobytes()
    return a.shape == b.shape and bool(np.all(a == b))


JOB = """name: pilot
inputs:
  synth: {{count: 4, seed: 11, levels: 2}}
sampling: {{directions: {D}, sampler: haar, n: 16, edge: 3.0e13, k: 2, seed: 5}}
line: {{lamda: {lamda}, transition: 2, channels: {{mode: grid, vmin: -600, vmax: 600, count: 3}}}}
output: {{directory: {out}, samples_per_shard: 3}}
splits: {{train: 0.5, validation: 0.25, test: 0.25, seed: 2}}
statistics: {{compute: true}}
stream: {{mode: {mode}, endpoint: "ipc://{tmp}/job.sock", batch: 2, epochs: 1{extra}}}
"""


def write_job(tmp, name, D=4, out="ds", mode="generate", extra=""):
    path = os.path.join(tmp, name)
    open(path, "w").write(JOB.format(D=D, lamda=LAMDA, out=os.path.join(tmp, out), tmp=tmp,
                                     mode=mode, extra=extra))
    return path


with tempfile.TemporaryDirectory() as tmp:
    job = write_job(tmp, "job.yaml")
    # -- usage errors, before MPI starts (no mpirun: a bad option exits 2 at once)
    for args, want in [(["--pilot", "0"], "--pilot 0: expected 1..8"),
                       (["--pilot", "9"], "--pilot 9: expected 1..8, the samples of"),
                       (["--pilot", "-3"], "--pilot -3: expected 1..8"),
                       (["--pilot", "2", "--stats", tmp], "--stats and --pilot"),
                       (["--pilot-out", os.path.join(tmp, "x.h5")], "give --pilot N")]:
        r = subprocess.run([COEMU, "serve", "--generate", job] + args, capture_output=True,
                           text=True, timeout=60)
        check(r.returncode == 2 and want in r.stderr, f"{args}: exit {r.returncode}: {r.stderr}")
    r = subprocess.run([COEMU, "serve", tmp, "--pilot", "2"], capture_output=True, text=True,
                       timeout=60)
    check(r.returncode == 2 and "--pilot" in r.stderr and "go with --generate" in r.stderr,
          f"--pilot without --generate: {r.returncode}: {r.stderr}")
    # -- the job key's bad values: the job file's position, exit 1
    for name, mode, extra, want in [
            ("live.yaml", "live", ", stats: {pilot: {samples: 2}}",
             "stream.stats.pilot: a pilot pass is run by coemu serve --generate, so it goes with "
             "stream.mode generate, got mode live"),
            ("zero.yaml", "generate", ", stats: {pilot: {samples: 0}}",
             "stream.stats.pilot.samples"),
            ("many.yaml", "generate", ", stats: {pilot: {samples: 9}}",
             "stream.stats.pilot.samples: expected at most the 8 samples of the training split "
             "(2 training models x 4 directions), got 9")]:
        bad = write_job(tmp, name, mode=mode, extra=extra)
        for cmd in (["serve", "--generate", bad], ["generate", bad, "--check"]):
            r = subprocess.run([COEMU] + cmd, capture_output=True, text=True, timeout=60)
            check(r.returncode == 1 and f"{name}:9:" in r.stderr and want in r.stderr,
                  f"{cmd[0]} {name}: exit {r.returncode}: {r.stderr}")

    # -- --pilot-out into a missing folder: said before the pass, exit 1
    r = subprocess.run(MPI + ["-n", "2", COEMU, "serve", "--generate", job, "--pilot", "2",
                              "--pilot-out", os.path.join(tmp, "none", "p.h5"), "--endpoint",
                              f"ipc://{tmp}/none.sock"], capture_output=True, text=True, timeout=120)
    check(r.returncode != 0 and f"{tmp}/none/p.h5 cannot be written: its folder {tmp}/none is not "
          "there or not writable" in r.stderr and "pilot pass, rank 0's share" not in r.stderr,
          f"--pilot-out in a missing folder: {r.returncode}: {r.stderr[-1500:]}")

    # -- an endpoint already taken: said before the pass, not after it
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = subprocess.run(MPI + ["-n", "2", COEMU, "serve", "--generate", job, "--pilot", "2",
                                  "--endpoint", f"tcp://127.0.0.1:{port}"], capture_output=True,
                           text=True, timeout=120)
    check(r.returncode != 0 and f"cannot bind tcp://127.0.0.1:{port}: Address already in use"
          in r.stderr and "pilot pass" not in r.stderr,
          f"a busy endpoint before the pilot pass: {r.returncode}: {r.stderr[-1500:]}")

    # -- the reference: the same job with 2 directions, generated and its /stats
    # recomputed by coemu stats on 1 rank (the pilot runs on 2: exact statistics
    # do not depend on the ranks)
    ref_job = write_job(tmp, "ref.yaml", D=2, out="ref")
    g = subprocess.run(MPI + ["-n", "2", COEMU, "generate", ref_job, "--quiet"],
                       capture_output=True, text=True, timeout=300)
    check(g.returncode == 0, f"generate ref: {g.stderr[-1500:]}")
    ref = os.path.join(tmp, "ref")
    r = subprocess.run([COEMU, "stats", ref, "--quiet"], capture_output=True, text=True, timeout=300,
                       env=mpi_singleton_env())
    check(r.returncode == 0, f"coemu stats ref: {r.stderr[-1500:]}")
    with h5py.File(os.path.join(ref, "dataset.h5"), "r") as f:
        check(int((f["split"][()] == 0).sum()) == 4, "the reference's training split: 4 samples")

    common = ["--batch", "2", "--heartbeat", "0.2", "--seed", "1234", "--split", "train"]
    # -- --pilot 4 with --pilot-out: the statistics, INFO, the cost line
    pfile = os.path.join(tmp, "pilot4.h5")
    ep = f"ipc://{tmp}/p4.sock"
    p = start(["--generate", job, "--endpoint", ep, "--epochs", "1", "--pilot", "4",
               "--pilot-out", pfile] + common)
    info = wait_up(ep, p)
    check(info is not None, "serve --generate --pilot 4 up")
    pilot_run = consume(ep, normalised=True) if info else []
    err = finish(p, "serve --generate --pilot 4")
    check(len(pilot_run) == 4, f"one normalised epoch of the 8 training samples: {len(pilot_run)}")
    src = str((info or {}).get("normalisation_source"))
    check(src.startswith("pilot pass: 4 samples of split train: directions 0..1 of all 2 "
                         "training models"), f"INFO normalisation_source: {src}")
    pil = (info or {}).get("pilot") or {}
    check(pil.get("samples") == 4 and pil.get("directions") == 2 and pil.get("extra_models") == 0
          and pil.get("training_models") == 2 and pil.get("used") == 4, f"INFO pilot: {pil}")
    nid = (info or {}).get("normalisation_id")
    check(isinstance(nid, str) and len(nid) == 16, f"INFO normalisation_id: {nid}")
    check("serve: pilot pass: 4 samples of split train" in err and "4 samples made on 2 ranks in"
          in err and "ms of rank time per pilot sample" in err and f"statistics id {nid}" in err
          and "written to " + pfile in err, f"the pilot's cost line: {err[-1500:]}")
    check("serve: pilot pass, rank 0's share: 2/2 samples" in err,
          f"a progress line of the pass: {err[-1500:]}")

    a = stats_group(pfile)
    b = stats_group(os.path.join(ref, "dataset.h5"))
    check(set(a) == set(b), f"the same /stats layout: {sorted(set(a) ^ set(b))}")
    # provenance that differs by design: the samples in the file (the pilot's
    # 4, the reference dataset's 8 with validation and test) and the ranks
    diff = [k for k in sorted(set(a) & set(b))
            if k not in ("@samples_total", "@ranks") and not bits_equal(a[k], b[k])]
    check(not diff, "pilot /stats == coemu stats of the generated subset, bit for bit: "
          + ", ".join(f"{k}: {a[k]} vs {b[k]}" for k in diff[:6]))
    check(int(a["@samples_total"]) == 4 and int(a["@samples_used"]) == 4 and
          int(b["@samples_total"]) == 8 and int(a["@ranks"]) == 2 and int(b["@ranks"]) == 1,
          "samples_total: the pilot's 4, the reference's 8; ranks 2 and 1")
    check(int(a["ln_T@count"]) == 4 * 16 ** 3, f"ln_T: the values of 4 cubes: {a['ln_T@count']}")
    with h5py.File(pfile, "r") as f:
        note = f.attrs.get("source", "")
    check("pilot pass: 4 samples of split train" in str(note) and "job.yaml" in str(note),
          f"the file says what it is: {note}")

    # -- --stats FILE and --stats REF: the same normalisation, the same samples
    for what, stats in [("the pilot file", pfile), ("the reference dataset", ref)]:
        ep = f"ipc://{tmp}/st{len(what)}.sock"
        p = start(["--generate", job, "--endpoint", ep, "--epochs", "1", "--stats", stats] + common)
        sinfo = wait_up(ep, p)
        check(sinfo is not None, f"serve --generate --stats {what} up")
        got = consume(ep, normalised=True) if sinfo else []
        finish(p, f"serve --generate --stats {what}")
        sinfo = sinfo or {}
        check(sinfo.get("normalisation") == (info or {}).get("normalisation") and
              sinfo.get("normalisation_id") == nid,
              f"--stats {what}: INFO normalisation and id those of the pass: {sinfo}")
        check(same_chunks(got, pilot_run), f"--stats {what}: normalised samples == the pilot run's")
        if stats == pfile:
            check(str(sinfo.get("normalisation_source")).startswith(f"pilot statistics {pfile} "
                                                                     "(pilot pass: 4 samples"),
                  f"--stats FILE names the file and its pass: {sinfo.get('normalisation_source')}")

    # -- the stored reference served: the same normalisation_id (every source's
    # INFO carries it, so a consumer can tell it may switch streams)
    ep = f"ipc://{tmp}/stored.sock"
    p = start([ref, "--endpoint", ep, "--epochs", "1", "--idle-exit", "2"] + common, mpi=False)
    dinfo = wait_up(ep, p)
    finish(p, "serve REF (stored), ended by its idle exit")
    check((dinfo or {}).get("normalisation_id") == nid and
          (dinfo or {}).get("normalisation") == (info or {}).get("normalisation"),
          f"a stored dataset's INFO: the same normalisation and id: {dinfo}")

    # -- resume: a restarted server (the pass run again) continues the epoch
    # with the same normalisation
    ep = f"ipc://{tmp}/resume.sock"
    p = start(["--generate", job, "--endpoint", ep, "--epochs", "1", "--pilot", "4"] + common)
    rinfo = wait_up(ep, p)
    tail = consume(ep, epoch=0, position=4, normalised=True) if rinfo else []
    finish(p, "serve --generate --pilot 4 (resumed)")
    check((rinfo or {}).get("normalisation_id") == nid and
          (rinfo or {}).get("normalisation") == (info or {}).get("normalisation"),
          "restarted: the same normalisation")
    ids = [int(i) for ch in pilot_run for i in ch.ids]
    tids = [int(i) for ch in tail for i in ch.ids]
    check(tids == ids[4:], f"resumed at (0, 4): {tids} == {ids[4:]}")
    check(same_chunks(tail, pilot_run[2:]), "resumed samples, normalised, == the uninterrupted run's")

    # -- the job key: samples 5 (direction 2 of the first training model too)
    out5 = os.path.join(tmp, "pilot5.h5")
    job5 = write_job(tmp, "job5.yaml", extra=f", stats: {{pilot: {{samples: 5, out: {out5}}}}}")
    ep = f"ipc://{tmp}/job.sock"
    p = start(["--generate", job5])
    info5 = wait_up(ep, p)
    check(info5 is not None, "serve --generate (pilot from the job) up")
    if info5:
        consume(ep, normalised=True)
    err = finish(p, "serve --generate (pilot from the job)")
    src5 = str((info5 or {}).get("normalisation_source"))
    check(src5.startswith("pilot pass: 5 samples of split train: directions 0..1 of all 2 training "
                          "models and direction 2 of the first 1"), f"INFO: {src5}")
    check(((info5 or {}).get("pilot") or {}).get("extra_models") == 1, f"INFO pilot: {info5}")
    check(os.path.exists(out5) and (info5 or {}).get("normalisation_id") != nid,
          "the job's out file written; other statistics than the pass of 4")
    # the subset against the stored samples: generate the job (4 directions)
    g = subprocess.run(MPI + ["-n", "2", COEMU, "generate", job, "--quiet"], capture_output=True,
                       text=True, timeout=300)
    check(g.returncode == 0, f"generate the job: {g.stderr[-1500:]}")
    with h5py.File(os.path.join(tmp, "ds", "dataset.h5"), "r") as f:
        X, split = f["inputs"][()], f["split"][()]
    train_models = sorted({i // 4 for i in range(len(split)) if split[i] == 0})
    t0, t1 = train_models
    subset = [t0 * 4 + d for d in range(3)] + [t1 * 4 + d for d in range(2)]
    vz = X[subset, 0].astype(np.float64).ravel()
    s5 = stats_group(out5)
    check(int(s5["v_z@count"]) == vz.size, f"v_z count: {s5['v_z@count']} vs {vz.size}")
    mn, mx, mean = s5["v_z@min"], s5["v_z@max"], s5["v_z@mean"]
    check(float(mn) == vz.min() and float(mx) == vz.max(),
          f"v_z min, max of the subset: {mn} {mx} vs {vz.min()} {vz.max()}")
    check(float(mean) == math.fsum(vz) / vz.size,
          f"v_z mean exact: {mean!r} vs {math.fsum(vz) / vz.size!r}")
    wrong = [t0 * 4 + d for d in range(2)] + [t1 * 4 + d for d in range(3)]
    check(math.fsum(X[wrong, 0].astype(np.float64).ravel()) / vz.size != float(mean),
          "the other partial round (direction 2 of the second model) gives another mean")

sys.exit(report())
