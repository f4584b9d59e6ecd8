#!/usr/bin/env python3
"""bench_vds.py - what reading a dataset through dataset.h5's virtual
datasets (VDS) costs with h5py, against reading the shard files the manifest
lists (docs/dataset-format.md, "Reading many shards"; docs/benchmarks.md).

  python3 scripts/bench_vds.py DATASET            # a coemu dataset
  python3 scripts/bench_vds.py --synthetic 34072  # a VDS over K one-sample
                                                  # source files made here

Prints, for the VDS: the file open, the /targets dataset open, the first
read, the mean of random single-sample reads; for the shards: the mean of
the same random reads, each opening its shard file (no cache), and with the
manifest's map and an LRU of 64 open shards over a sequential pass."""
import argparse
import collections
import json
import os
import random
import shutil
import tempfile
import time

import h5py
import numpy as np


def synthetic(k, tmp, n=8, f=7):
    """k source files of one [1, f, n, n] sample, a manifest and a VDS over them."""
    os.makedirs(os.path.join(tmp, 'shards'))
    shards = []
    for s in range(k):
        name = f'shards/shard-{s:06d}.h5'
        with h5py.File(os.path.join(tmp, name), 'w', libver=('v110', 'latest')) as h:
            h['targets'] = np.full((1, f, n, n), s, np.float32)
        shards.append({'file': name, 'first': s, 'count': 1})
    with open(os.path.join(tmp, 'manifest.json'), 'w') as m:
        json.dump({'samples': k, 'shards': shards}, m)
    lay = h5py.VirtualLayout(shape=(k, f, n, n), dtype=np.float32)
    for s in range(k):
        lay[s:s + 1] = h5py.VirtualSource(f'shards/shard-{s:06d}.h5', 'targets', shape=(1, f, n, n))
    with h5py.File(os.path.join(tmp, 'dataset.h5'), 'w', libver=('v110', 'latest')) as h:
        h.create_virtual_dataset('targets', lay)
    return tmp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('dataset', nargs='?')
    ap.add_argument('--synthetic', type=int, default=0)
    ap.add_argument('--reads', type=int, default=200)
    a = ap.parse_args()
    tmp = None
    d = a.dataset
    if a.synthetic:
        tmp = tempfile.mkdtemp(prefix='coemu-vds-', dir='/dev/shm' if os.path.isdir('/dev/shm') else None)
        t = time.perf_counter()
        d = synthetic(a.synthetic, tmp)
        print(f'made {a.synthetic} sources in {time.perf_counter() - t:.1f} s')
    try:
        man = json.load(open(os.path.join(d, 'manifest.json')))
        firsts = [s['first'] for s in man['shards']]
        k, n = len(firsts), man['samples']
        rnd = random.Random(1)
        idx = [rnd.randrange(n) for _ in range(a.reads)]
        t = time.perf_counter()
        h = h5py.File(os.path.join(d, 'dataset.h5'), 'r')
        t_file = time.perf_counter() - t
        t = time.perf_counter()
        v = h['targets']
        t_dset = time.perf_counter() - t
        t = time.perf_counter()
        v[idx[0]]
        t_first = time.perf_counter() - t
        t = time.perf_counter()
        ref = [v[i] for i in idx]
        t_vds = (time.perf_counter() - t) / len(idx)
        h.close()

        def shard_of(i):
            import bisect
            return bisect.bisect_right(firsts, i) - 1
        t = time.perf_counter()
        got = []
        for i in idx:
            s = man['shards'][shard_of(i)]
            with h5py.File(os.path.join(d, s['file']), 'r') as f:
                got.append(f['targets'][i - s['first']])
        t_shard = (time.perf_counter() - t) / len(idx)
        assert all(np.array_equal(x, y) for x, y in zip(ref, got))
        # sequential pass over the first min(n, 4 * reads) samples, LRU of 64
        cache = collections.OrderedDict()
        m = min(n, 4 * a.reads)
        t = time.perf_counter()
        for i in range(m):
            si = shard_of(i)
            if si not in cache:
                if len(cache) >= 64:
                    cache.popitem(last=False)[1].close()
                cache[si] = h5py.File(os.path.join(d, man['shards'][si]['file']), 'r')
            cache.move_to_end(si)
            cache[si]['targets'][i - man['shards'][si]['first']]
        t_seq = (time.perf_counter() - t) / m
        for f in cache.values():
            f.close()
        print(f'{d}: {n} samples in {k} shards')
        print(f'  VDS   file open {t_file * 1e3:.1f} ms, /targets open {t_dset * 1e3:.1f} ms, '
              f'first read {t_first * 1e3:.1f} ms, random read {t_vds * 1e3:.2f} ms/sample')
        print(f'  shard random read (open + read + close) {t_shard * 1e3:.2f} ms/sample; '
              f'sequential with an LRU of 64 open shards {t_seq * 1e3:.2f} ms/sample')
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
