#!/usr/bin/env python3
"""Live streaming while generating: a job with a `stream:` section starts
`coemu serve --live`; a Python consumer reads a whole epoch while the job
runs; every sample equals the finished dataset's; epoch 0 is in generation
order; the server exits once the consumer is done. And, deterministically,
shards appearing one after another are served as they appear, while the
producer keeps the consumer alive; with --order shards, epochs after the
first are the finished dataset's --order shards epochs. A rerun of the
finished job starts no server and says how the dataset is served."""
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import h5py
import numpy as np

ROOT = os.environ.get("COEMU_SOURCE_ROOT", ".")
sys.path.insert(0, os.path.join(ROOT, "pipeline", "stream"))
import coemu_stream as cs  # noqa: E402

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
MPI = [os.environ.get("COEMU_MPIEXEC", "mpirun"), "--allow-run-as-root", "--oversubscribe"]
LAMDA = os.path.join(ROOT, "tests", "data", "lamda", "co.dat")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, mpi_singleton_env, report  # noqa: E402



with tempfile.TemporaryDirectory() as tmp:
    ep = f"ipc://{tmp}/live.sock"
    job = os.path.join(tmp, "job.yaml")
    open(job, "w").write(f"""name: live
inputs:
  synth: {{count: 6, seed: 11, levels: 3}}
sampling: {{directions: 6, sampler: haar, n: 32, edge: 3.0e13, k: 2, seed: 5}}
line: {{lamda: {LAMDA}, transition: 2, channels: {{mode: coemunet}}}}
output: {{directory: unused, samples_per_shard: 2}}
splits: {{train: 0.5, validation: 0.25, test: 0.25, seed: 2}}
statistics: {{compute: false}}
stream: {{endpoint: "{ep}", ranks: 1, batch: 2, epochs: 1, split: all}}
""")
    d = os.path.join(tmp, "ds")
    gen = subprocess.Popen(MPI + ["-n", "2", COEMU, "generate", job, "--out", d, "--quiet"],
                           stderr=subprocess.PIPE, text=True)
    # the server appears once the plan is written
    t0 = time.time()
    while not os.path.exists(os.path.join(d, "serve.pid")) and time.time() - t0 < 60:
        time.sleep(0.05)
    check(os.path.exists(os.path.join(d, "serve.pid")), "the live server started")
    got = []
    c = cs.StreamClient(ep, rank=0, world=1, timeout_s=30, heartbeat_s=0.2)
    try:
        got = c.drain()
    finally:
        c.close()
    err = gen.communicate(timeout=300)[1]
    check(gen.returncode == 0, f"generate: {err[-1500:]}")
    ids = [int(i) for ch in got for i in ch.ids]
    check(ids == list(range(36)), f"epoch 0 in generation order: {ids}")
    with h5py.File(os.path.join(d, "dataset.h5"), "r") as f:
        X, Y = f["inputs"][()], f["targets"][()]
    ok = all(np.array_equal(ch.inputs[k], X[i]) and np.array_equal(ch.targets[k], Y[i])
             for ch in got for k, i in enumerate(ch.ids))
    check(ok, "streamed samples equal the finished dataset")
    pid = int(open(os.path.join(d, "serve.pid")).read())
    t0 = time.time()
    while time.time() - t0 < 10:
        try:
            os.kill(pid, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
    check(time.time() - t0 < 10, "the live server exited after its consumer's last epoch")
    log = open(os.path.join(d, "serve.log")).read()
    check("(live)" in log and "sent 36 samples" in log, f"serve log: {log[-500:]}")
    # a rerun of the finished job starts no live server, and says where the
    # dataset is served (a consumer waiting on the job's endpoint would wait
    # for ever), with --quiet too
    mtime = os.path.getmtime(os.path.join(d, "serve.log"))
    r = subprocess.run([COEMU, "generate", job, "--out", d, "--quiet"], capture_output=True, text=True,
                       timeout=120, env=mpi_singleton_env())  # an MPI singleton
    check(r.returncode == 0 and "the job's stream section starts no live server for a finished dataset: "
          f"serve it with `coemu serve {d} --endpoint {ep}`" in r.stderr
          and os.path.getmtime(os.path.join(d, "serve.log")) == mtime,
          f"a rerun of the finished job: rc {r.returncode}, {r.stderr[-600:]}")

    # Deterministically: a dataset with only its first shard finished is served
    # up to that shard; the producer then waits (heart-beating, the consumer
    # does not time out) and sends the rest as soon as the shards appear.
    part = os.path.join(tmp, "partial")
    os.makedirs(os.path.join(part, "shards"))
    for name in ("plan.json", "job.yaml"):
        shutil.copy(os.path.join(d, name), part)
    shards = sorted(os.listdir(os.path.join(d, "shards")))
    shutil.copy(os.path.join(d, "shards", shards[0]), os.path.join(part, "shards"))
    ep2 = f"ipc://{tmp}/partial.sock"
    srv = subprocess.Popen([COEMU, "serve", part, "--live", "--endpoint", ep2, "--batch", "2",
                            "--epochs", "1", "--split", "all", "--heartbeat", "0.2"],
                           stderr=subprocess.PIPE, text=True)

    def finish_later():
        time.sleep(1.5)
        for name in shards[1:]:  # as generate does: a temporary name, then rename
            shutil.copy(os.path.join(d, "shards", name), os.path.join(part, "shards", name + ".tmp"))
            os.rename(os.path.join(part, "shards", name + ".tmp"), os.path.join(part, "shards", name))

    c = cs.StreamClient(ep2, rank=0, world=1, timeout_s=3, heartbeat_s=0.2)
    t0 = time.time()
    first = c.next()
    check(first is not None and list(first.ids) == [0, 1], "the finished shard is served at once")
    th = threading.Thread(target=finish_later)
    th.start()
    rest = []
    try:
        while True:
            ch = c.next()
            if ch is None:
                break
            rest.append((time.time() - t0, ch))
        ok = True
    except cs.ProducerSilent:
        ok = False
    c.close()
    th.join()
    check(ok, "the consumer never timed out while the producer waited for shards")
    check(rest and rest[0][0] >= 1.4, "later chunks waited for their shards")
    ids = list(first.ids) + [int(i) for _, ch in rest for i in ch.ids]
    check(ids == list(range(36)), f"partial: every sample once, in order: {ids}")
    check(all(np.array_equal(ch.inputs[k], X[i]) for _, ch in rest for k, i in enumerate(ch.ids)),
          "partial: data equal the finished dataset")
    srv.wait(timeout=20)
    check(srv.returncode == 0, "partial: server exit status")

    # Live with --order shards (the shard-aware order, pipeline/serve/order.c),
    # shards appearing as generate makes them: epoch 0 is in generation order
    # (as in exact mode: training starts with the first shards), later epochs
    # are permutations, deterministic in (seed, epoch): the same as the
    # finished dataset's --order shards epochs (the live plan's sample ->
    # shard map, sample // samples_per_shard, is the manifest's).
    part3 = os.path.join(tmp, "partial-shards")
    os.makedirs(os.path.join(part3, "shards"))
    for name in ("plan.json", "job.yaml"):
        shutil.copy(os.path.join(d, name), part3)
    shutil.copy(os.path.join(d, "shards", shards[0]), os.path.join(part3, "shards"))
    order_args = ["--order", "shards", "--order-shards", "3", "--order-buffer", "4", "--seed", "7",
                  "--batch", "2", "--epochs", "3", "--split", "all", "--heartbeat", "0.2"]

    def epochs_of(ep_, n_epochs=3, timeout_s=5):
        out = []
        with cs.StreamClient(ep_, rank=0, world=1, timeout_s=timeout_s, heartbeat_s=0.2) as cl:
            for _ in range(n_epochs):
                out.append([(int(i), ch.inputs[k].copy()) for ch in cl.iter_epoch()
                            for k, i in enumerate(ch.ids)])
        return out

    ep3 = f"ipc://{tmp}/partial-shards.sock"
    srv = subprocess.Popen([COEMU, "serve", part3, "--live", "--endpoint", ep3] + order_args,
                           stderr=subprocess.PIPE, text=True)

    def finish_part3():  # as generate does: a temporary name, then rename
        time.sleep(1.0)
        for name in shards[1:]:
            tmpname = os.path.join(part3, "shards", name + ".tmp")
            shutil.copy(os.path.join(d, "shards", name), tmpname)
            os.rename(tmpname, os.path.join(part3, "shards", name))

    th = threading.Thread(target=finish_part3)
    th.start()
    live_eps = epochs_of(ep3)
    th.join()
    srv.wait(timeout=20)
    check(srv.returncode == 0, f"live shards: server exit status {srv.returncode}")
    ids_live = [[i for i, _ in e] for e in live_eps]
    check(ids_live[0] == list(range(36)), f"live shards: epoch 0 in generation order: {ids_live[0]}")
    check(all(sorted(e) == list(range(36)) for e in ids_live[1:]),
          f"live shards: epochs 1, 2 are permutations: {ids_live[1:]}")
    check(ids_live[1] != ids_live[2] and ids_live[1] != list(range(36)),
          "live shards: epochs 1 and 2 shuffled, and differently")
    check(all(np.array_equal(x, X[i]) for e in live_eps for i, x in e),
          "live shards: data equal the finished dataset")
    ep4 = f"ipc://{tmp}/finished-shards.sock"
    srv = subprocess.Popen([COEMU, "serve", d, "--endpoint", ep4] + order_args,
                           stderr=subprocess.PIPE, text=True)
    fin_eps = epochs_of(ep4)
    srv.wait(timeout=20)
    ids_fin = [[i for i, _ in e] for e in fin_eps]
    check(ids_live[1:] == ids_fin[1:],
          f"live shards: epochs 1, 2 equal the finished dataset's --order shards epochs: "
          f"{ids_live[1:]} vs {ids_fin[1:]}")
    check(sorted(ids_fin[0]) == list(range(36)) and ids_fin[0] != list(range(36)),
          "finished shards: epoch 0 shuffled (live epoch 0 alone is in generation order)")
    # deterministic: the live server again, all shards there, gives the same epochs
    srv = subprocess.Popen([COEMU, "serve", part3, "--live", "--endpoint", ep3] + order_args,
                           stderr=subprocess.PIPE, text=True)
    again = [[i for i, _ in e] for e in epochs_of(ep3)]
    srv.wait(timeout=20)
    check(again == ids_live, "live shards: the same (seed, epoch) gives the same order again")

    # the pid file cannot be written (OUT/serve.pid is a directory): the job
    # fails saying so, and stops the server it started (no orphan holding the
    # endpoint for the idle-exit hour)
    bad = os.path.join(tmp, "nopid")
    os.makedirs(os.path.join(bad, "serve.pid"))
    job3 = os.path.join(tmp, "job3.yaml")
    open(job3, "w").write(open(job).read().replace(ep, f"ipc://{tmp}/nopid.sock"))
    with open(os.path.join(tmp, "nopid.err"), "w+") as errf:  # a file: an orphan holding a
        r = subprocess.run([COEMU, "generate", job3, "--out", bad, "--quiet"],  # pipe can't hang us
                           stdout=subprocess.DEVNULL, stderr=errf, timeout=300)
        errf.seek(0)
        err3 = errf.read()
    check(r.returncode != 0 and "cannot record the pid of coemu serve" in err3,
          f"unwritable serve.pid: rc {r.returncode}: {err3[-600:]}")

    def live_servers(path):
        found = []
        for pid in os.listdir("/proc"):
            try:
                argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if b"serve" in argv and os.fsencode(path) in argv:
                found.append(int(pid))
        return found

    t0 = time.time()
    while live_servers(bad) and time.time() - t0 < 10:
        time.sleep(0.1)
    left = live_servers(bad)
    check(not left, f"unwritable serve.pid: the live server was stopped (left: {left})")
    for pid in left:
        os.kill(pid, 9)

    # The job making a live dataset stops (killed, failed): its lock on
    # OUT/.lock goes with it. The server logs it and tells its consumers (a
    # NOTICE: the client logs it), who wait on (a requeued job resumes); the
    # job's rerun takes the lock again: logged and told, and the stream goes
    # on. Here this process holds the lock for "coemu generate", and shards
    # appear as generate makes them.
    import fcntl

    def partial(name):
        o = os.path.join(tmp, name)
        os.makedirs(os.path.join(o, "shards"))
        for f in ("plan.json", "job.yaml"):
            shutil.copy(os.path.join(d, f), o)
        shutil.copy(os.path.join(d, "shards", shards[0]), os.path.join(o, "shards"))
        return o

    orph = partial("orphan")
    lockf = open(os.path.join(orph, ".lock"), "w")
    fcntl.flock(lockf, fcntl.LOCK_EX)  # "coemu generate" runs
    ep4 = f"ipc://{tmp}/orphan.sock"
    srv = subprocess.Popen([COEMU, "serve", orph, "--live", "--endpoint", ep4, "--batch", "2",
                            "--epochs", "1", "--split", "all", "--heartbeat", "0.2"],
                           stderr=subprocess.PIPE, text=True)
    c = cs.StreamClient(ep4, rank=0, world=1, timeout_s=3, heartbeat_s=0.2)
    first = c.next()
    res = {}

    def read_rest():
        try:
            res["ids"] = [int(i) for ch in c.iter_epoch() for i in ch.ids]
        except Exception as e:  # noqa: BLE001 - reported below
            res["err"] = e

    th = threading.Thread(target=read_rest)
    th.start()
    time.sleep(1.5)  # the server looks every second: the lock is held, nothing to say
    check(c.notices == 0, f"no notice while the job holds its lock: {c.notice}")
    fcntl.flock(lockf, fcntl.LOCK_UN)  # the job is killed
    t0 = time.time()
    while c.notices < 1 and time.time() - t0 < 60:
        time.sleep(0.1)
    check(c.notices == 1 and f"no coemu generate holds {orph}/.lock" in (c.notice or "") and
          "shard-000001.h5 is not made yet" in c.notice,
          f"the consumer is told that the job stopped: {c.notices} {c.notice}")
    check(th.is_alive() and not res, f"the consumer waits on (no error, no timeout): {res}")
    fcntl.flock(lockf, fcntl.LOCK_EX)  # the job's rerun
    t0 = time.time()
    while c.notices < 2 and time.time() - t0 < 60:  # told before any shard comes
        time.sleep(0.1)
    for name in shards[1:]:
        shutil.copy(os.path.join(d, "shards", name), os.path.join(orph, "shards", name + ".tmp"))
        os.rename(os.path.join(orph, "shards", name + ".tmp"), os.path.join(orph, "shards", name))
    th.join(120)
    c.close()
    check(list(first.ids) + res.get("ids", []) == list(range(36)),
          f"orphaned and resumed: every sample once, in order: {res}")
    check(c.notices == 2 and "the stream's producer is back" in (c.notice or ""),
          f"the consumer is told that the job is back: {c.notices} {c.notice}")
    err4 = srv.communicate(timeout=30)[1]
    check(srv.returncode == 0 and
          f"serve: warning: no coemu generate holds {orph}/.lock (the job making it was killed" in err4
          and "serve: the stream's producer is back after" in err4,
          f"serve logs the job's stop and return: {err4[-1500:]}")
    fcntl.flock(lockf, fcntl.LOCK_UN)
    lockf.close()

    # --live-orphan-exit S: after S s without a job, the consumers get an
    # error saying why and the server exits
    orph2 = partial("orphan2")
    ep5 = f"ipc://{tmp}/orphan2.sock"
    srv = subprocess.Popen([COEMU, "serve", orph2, "--live", "--endpoint", ep5, "--batch", "2",
                            "--epochs", "1", "--split", "all", "--heartbeat", "0.2",
                            "--live-orphan-exit", "1"], stderr=subprocess.PIPE, text=True)
    c = cs.StreamClient(ep5, rank=0, world=1, timeout_s=30, heartbeat_s=0.2)
    ids, err5 = [], None
    try:
        for ch in c.iter_epoch():
            ids += [int(i) for i in ch.ids]
    except cs.ProtocolError as e:
        err5 = str(e)
    c.close()
    check(ids == [0, 1] and err5 is not None and f"no coemu generate holds {orph2}/.lock" in err5
          and "it waited 1 s for it to come back" in err5,
          f"--live-orphan-exit: the consumer's error: {ids} {err5}")
    err6 = srv.communicate(timeout=30)[1]
    check(srv.returncode == 0 and "serve: error sent to rank 0: the producer stopped serving" in err6
          and "serve: ended: no coemu generate made the dataset for 1 s" in err6,
          f"--live-orphan-exit: serve's log: {err6[-1500:]}")

    # a live stream refuses endpoints reachable from other machines
    text = open(job).read().replace(ep, "tcp://0.0.0.0:5999")
    open(job, "w").write(text)
    r = subprocess.run([COEMU, "generate", "--check", job], capture_output=True, text=True)
    check(r.returncode != 0 and "reachable from other machines: give stream.curve_secret" in r.stderr,
          f"non-local live endpoint without CURVE keys: {r.returncode} {r.stderr}")
    # --live on a directory without a plan
    r = subprocess.run([COEMU, "serve", tmp, "--live"], capture_output=True, text=True)
    check(r.returncode != 0 and "no sample plan" in r.stderr, f"no plan: {r.stderr}")

report()
