#!/usr/bin/env python3
"""bench_images_only.py DIR [--batch B] [--epochs E] [--cores C] [--transport T] - serve
throughput of an images-only dataset (docs/benchmarks.md, "Images-only
datasets").

Runs `coemu serve DIR --split all` and one Python consumer (the stream
client) that reads E epochs; prints samples/s per epoch, and serve's own
figures for the same run: the thread CPU milliseconds per rebuilt input cube
(t_c: sampling and hashing, model loads apart) and the model loads' seconds.
The bounds it compares against (each per epoch):
  producer bound   C / t_c: C cores doing nothing but rebuild cubes (C: the
                   host's cores, --cores); the issue's target is >= 90 % of
                   it after epoch 0, whose bound also pays the model loads,
                   which run in parallel with each other and with the cubes
                   (input_rebuild.h): N / ((load_s + N t_c) / C);
  per core obtained  samples/s x t_c / (serve's CPU seconds / wall seconds):
                   the same ratio against the cores the host actually gave
                   serve (on a shared host fewer than C), so it says what serve
                   did with the CPU it got.
The consumer's CPU seconds per GB received (inputs and targets; all its
threads, ZeroMQ's I/O thread included, and of that the Python thread's)
are printed per epoch: steadier than its cores on a loaded host. --python DIR
takes the coemu package from DIR (default: this checkout's python/), so two
versions of the client can be compared on the same serve. --transport
socket (default) or shm: the client's rows as ZeroMQ frames, or through
serve's shared-memory segment (docs/stream-protocol.md, "Shared memory";
shm fails if the segment cannot be mapped).
The load average before and after is printed: the first ratio is only
meaningful when serve can get C cores. On a shared host, 'had work for'
(serve's threads' running plus runnable-but-waiting seconds, from
/proc/PID/task/*/schedstat, over the wall seconds) says how many cores serve
kept busy or wanted: >= C means it would use all C on a quiet host."""
import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument('dir')
ap.add_argument('--batch', type=int, default=8)
ap.add_argument('--epochs', type=int, default=3)
ap.add_argument('--coemu', default=os.path.join(ROOT, 'build', 'pipeline', 'coemu'))
ap.add_argument('--cores', type=int, default=os.cpu_count())
ap.add_argument('--python', default=os.path.join(ROOT, 'python'),
                help='the folder holding the coemu package the consumer imports')
ap.add_argument('--transport', choices=('socket', 'shm'), default='socket',
                help="the consumer's rows: ZeroMQ frames, or through serve's shared segment")
a = ap.parse_args()
sys.path.insert(0, a.python)
from coemu.stream import StreamClient  # noqa: E402

sock = f'/tmp/bench-images-only-{os.getpid()}.sock'
ep = f'ipc://{sock}'


def remove_socket():
    """serve leaves its ipc socket file behind when it is terminated: removed
    at every exit of this script (normal, an error, SIGTERM/SIGINT/SIGHUP)."""
    try:
        os.unlink(sock)
    except FileNotFoundError:
        pass


def on_signal(sig, frame):
    raise SystemExit(128 + sig)  # runs the finally below (serve stopped, socket removed)


for sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, on_signal)
p = subprocess.Popen([a.coemu, 'serve', a.dir, '--endpoint', ep, '--split', 'all', '--batch', str(a.batch),
                      '--epochs', str(a.epochs)], stderr=subprocess.PIPE, text=True)
rates, used, sizes, demand, per_gb = [], [], [], [], []
TICK = os.sysconf('SC_CLK_TCK')


def serve_cpu():
    f = open(f'/proc/{p.pid}/stat').read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK  # utime + stime


def serve_demand():
    """Seconds serve's threads ran plus the seconds they were runnable but
    waiting for a core (/proc/PID/task/*/schedstat): over wall seconds, the
    cores serve had work for, which it would get on a quiet host."""
    t = 0
    for tid in os.listdir(f'/proc/{p.pid}/task'):
        try:
            f = open(f'/proc/{p.pid}/task/{tid}/schedstat').read().split()
            t += int(f[0]) + int(f[1])
        except (OSError, IndexError, ValueError):
            pass  # a thread that ended meanwhile
    return t / 1e9


print('load average before: ' + ' '.join(open('/proc/loadavg').read().split()[:3]), flush=True)
try:
    time.sleep(0.5)
    c = StreamClient(ep, rank=0, world=1, timeout_s=120, transport=a.transport)
    print(f'transport {a.transport}', flush=True)
    for e in range(a.epochs):
        t0, n, s0, c0, d0 = time.monotonic(), 0, serve_cpu(), time.process_time(), serve_demand()
        m0, nbytes = time.thread_time(), 0
        for ch in c.iter_epoch():
            n += len(ch.ids)
            nbytes += ch.inputs.nbytes + ch.targets.nbytes
        dt = time.monotonic() - t0
        ccpu, mcpu = time.process_time() - c0, time.thread_time() - m0
        rates.append(n / dt)
        sizes.append(n)
        used.append((serve_cpu() - s0) / dt)
        demand.append((serve_demand() - d0) / dt)
        per_gb.append(ccpu / (nbytes / 1e9))
        print(f'epoch {e}: {n} samples in {dt:.2f} s = {n / dt:.1f} samples/s; serve used '
              f'{(serve_cpu() - s0) / dt:.2f} cores (had work for {demand[-1]:.2f}: running or '
              f'waiting for a core), the consumer {ccpu / dt:.2f} ({per_gb[-1]:.3f} CPU s per GB '
              f'received, its Python thread {mcpu / (nbytes / 1e9):.3f})', flush=True)
    c.close()
finally:
    p.terminate()
    try:
        err = p.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        p.kill()
        err = p.communicate()[1]
    remove_socket()
m = re.search(r'(\d+) input cubes rebuilt, ([0-9.]+) ms CPU each.*?(\d+) model loads, ([0-9.]+) s', err)
print('load average after: ' + ' '.join(open('/proc/loadavg').read().split()[:3]))
steady = rates[1:] or rates
for line in err.splitlines():
    if 'shared memory:' in line:
        print(line)
print(f'median after epoch 0 {statistics.median(steady):.1f} samples/s; the consumer '
      f'{statistics.median(per_gb[1:] or per_gb):.3f} CPU s per GB received')
if m:
    ms, load_s = float(m.group(2)), float(m.group(4))
    tc = ms / 1e3
    bound = a.cores / tc
    bound0 = sizes[0] / ((load_s + sizes[0] * tc) / a.cores)
    print(f'rebuild: {m.group(1)} cubes, {ms:.2f} ms CPU each; {m.group(3)} model loads, {load_s:.2f} s')
    print(f'producer bound {a.cores} cores / {ms:.2f} ms = {bound:.1f} samples/s; epoch 0 with its '
          f'model loads: {bound0:.1f} samples/s')
    print('per epoch, % of the producer bound: ' +
          ' '.join(f'{100 * r / (bound0 if e == 0 else bound):.0f}%' for e, r in enumerate(rates)) +
          f'; median after epoch 0 {100 * statistics.median(steady) / bound:.0f}%')
    # what the machine gave serve: samples/s per core it actually ran on,
    # against 1 / (seconds per cube) (a shared machine gives less than cores)
    eff = [r * tc / u for r, u in zip(rates, used) if u > 0]
    print('per epoch, % per core obtained (samples/s x seconds per cube / cores serve ran on): ' +
          ' '.join(f'{100 * e:.0f}%' for e in eff))
else:
    print('serve reported no rebuilt cubes (a dataset with stored inputs)')
    print(err[-800:])
