#!/usr/bin/env python3
"""bench_images_only.py DIR [--batch B] [--epochs E] - serve throughput of an
images-only dataset (docs/benchmarks.md, "Images-only datasets").

Runs `coemu serve DIR --split all` and one Python consumer (the stream
client) that reads E epochs; prints samples/s per epoch and their median,
and serve's own figure for the same run: the CPU milliseconds per rebuilt
input cube, whence the producer bound = cores / (seconds per cube)."""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'python'))
from coemu.stream import StreamClient  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument('dir')
ap.add_argument('--batch', type=int, default=8)
ap.add_argument('--epochs', type=int, default=3)
ap.add_argument('--coemu', default=os.path.join(ROOT, 'build', 'pipeline', 'coemu'))
ap.add_argument('--cores', type=int, default=os.cpu_count())
a = ap.parse_args()

ep = f'ipc:///tmp/bench-images-only-{os.getpid()}.sock'
p = subprocess.Popen([a.coemu, 'serve', a.dir, '--endpoint', ep, '--split', 'all', '--batch', str(a.batch),
                      '--epochs', str(a.epochs)], stderr=subprocess.PIPE, text=True)
rates, used = [], []
TICK = os.sysconf('SC_CLK_TCK')


def serve_cpu():
    f = open(f'/proc/{p.pid}/stat').read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK  # utime + stime


try:
    time.sleep(0.5)
    c = StreamClient(ep, rank=0, world=1, timeout_s=120)
    for e in range(a.epochs):
        t0, n, s0, c0 = time.monotonic(), 0, serve_cpu(), time.process_time()
        for ch in c.iter_epoch():
            n += len(ch.ids)
        dt = time.monotonic() - t0
        rates.append(n / dt)
        used.append((serve_cpu() - s0) / dt)
        print(f'epoch {e}: {n} samples in {dt:.2f} s = {n / dt:.1f} samples/s; serve used '
              f'{(serve_cpu() - s0) / dt:.2f} cores, the consumer {(time.process_time() - c0) / dt:.2f}',
              flush=True)
    c.close()
finally:
    p.terminate()
    err = p.communicate(timeout=60)[1]
m = re.search(r'(\d+) input cubes rebuilt, ([0-9.]+) ms CPU each.*?(\d+) model loads, ([0-9.]+) s', err)
med = statistics.median(rates)
print(f'median {med:.1f} samples/s')
if m:
    ms = float(m.group(2))
    bound = a.cores / (ms / 1e3)
    print(f'rebuild: {m.group(1)} cubes, {ms:.2f} ms CPU each; producer bound {a.cores} cores / '
          f'{ms:.2f} ms = {bound:.1f} samples/s; served {100 * med / bound:.0f}% of it (median); '
          f'{m.group(3)} model loads, {m.group(4)} s')
    # what the machine gave serve: samples/s per core it actually ran on,
    # against 1 / (seconds per cube) (a shared machine gives less than cores)
    eff = [r * ms / 1e3 / u for r, u in zip(rates, used) if u > 0]
    print('per epoch, samples/s x seconds per cube / cores serve ran on: ' +
          ' '.join(f'{100 * e:.0f}%' for e in eff))
else:
    print('serve reported no rebuilt cubes (a dataset with stored inputs)')
    print(err[-800:])
