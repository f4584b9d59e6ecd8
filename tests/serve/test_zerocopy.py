#!/usr/bin/env python3
"""test_zerocopy.py - `coemu serve` sends rows straight from the mapped shard
files (docs/stream-protocol.md, "Zero copy") and the consumers get the same bytes as
with `--copy-rows` (every row copied with pread, the path before zero copy):
- a dataset of 3 shards (5, 5, 2 samples) made by `coemu generate`; for
  batch 1, 2 and 16 (--pad: the 12 samples wrap to 16; each row its own
  frame, gathered into one batch by the clients), order exact and shards, two epochs of split 'all' to the
  Python client (python/coemu through coemu_stream) and to the C consumer
  (serve_dump.c): the same ids, positions and bytes with and without
  --copy-rows, equal to the dataset's arrays (read through dataset.h5 with
  h5py); serve reports every row sent from the mapped files (batch 1: one
  row a chunk; batch 2 and 16: shuffled rows of several shards, each row
  frame pointing into its own shard's mapping), none with --copy-rows;
- a row damaged on disk (one byte of a /targets row) is named by serve (the
  shard file, the sample, its row) to both consumers, on both paths, and is
  never delivered;
- `coemu bench serve --trainer` runs the trainer's in-process reader over
  the dataset and prints its line.
Functional, not timed. Prints "N passed, N failed"."""
import os
import re
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np

COEMU = os.environ['COEMU']
DUMP = os.environ['COEMU_SERVE_DUMP']
ROOT = os.environ['COEMU_SOURCE_ROOT']
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.join(ROOT, 'pipeline', 'stream'))
from pycheck import check, run_in_tmpdir, sanitizer_full_stacks  # noqa: E402
from servetest import serve_stored, stop  # noqa: E402
import coemu_stream as cs  # noqa: E402

sanitizer_full_stacks()
SLOW = 4 if os.environ.get('COEMU_SANITIZE') else 1

MODELS, DIRS, PER_SHARD = 3, 4, 5  # 12 samples: shards of 5, 5, 2
JOB = f"""name: zerocopy
inputs:
  synth: {{count: {MODELS}, seed: 1, levels: 2}}
sampling: {{directions: {DIRS}, n: 16, seed: 5}}
line: {{lamda: builtin:co.dat, transition: 2}}
output: {{directory: zc-out, samples_per_shard: {PER_SHARD}}}
splits: {{train: 0.34, validation: 0.33, test: 0.33, seed: 1}}
"""
S = MODELS * DIRS


def mapped_rows(err):
    m = re.search(r'rows read: (\d+) samples sent from the mapped shard files', err)
    return int(m.group(1)) if m else None


def python_epochs(d, tmp, args):
    """Two epochs to the Python client: [(epoch, position, id, inputs, targets)],
    the client's error, serve's stderr."""
    p, ep = serve_stored(d, tmp, args)
    got, cerr = [], ''
    try:
        c = cs.StreamClient(ep, rank=0, world=1, timeout_s=20 * SLOW, heartbeat_s=0.2)
        try:
            for _ in range(2):
                for ch in c.iter_epoch():
                    for k, i in enumerate(ch.ids):
                        got.append((ch.epoch, ch.position + k, int(i), ch.inputs[k].tobytes(),
                                    ch.targets[k].tobytes()))
        except Exception as e:  # noqa: BLE001 - the error the consumer sees
            cerr = str(e)
        finally:
            c.close()
    finally:
        if cerr:
            p.terminate()
        err = stop(p)
    return got, cerr, err


def c_epochs(d, tmp, args):
    """Two epochs to the C consumer: its lines, its stderr, serve's stderr."""
    p, ep = serve_stored(d, tmp, args)
    r = None
    try:
        r = subprocess.run([DUMP, ep, '2'], capture_output=True, text=True, timeout=120 * SLOW)
    finally:
        if r is None or r.returncode != 0:
            p.terminate()  # the consumer left on an error: serve would wait for it
        err = stop(p)
    return r.stdout.splitlines(), r.stderr, err


def flip_target(path, row):
    """Flip one byte inside row `row` of the shard's /targets."""
    with h5py.File(path, 'r') as h:
        d = h['targets']
        off = d.id.get_chunk_info_by_coord((row,) + (0,) * (d.ndim - 1)).byte_offset
    with open(path, 'r+b') as f:
        f.seek(off + 41)
        b = f.read(1)
        f.seek(off + 41)
        f.write(bytes([b[0] ^ 0x20]))


def run(tmp):
    open(os.path.join(tmp, 'job.yaml'), 'w').write(JOB)
    r = subprocess.run([COEMU, 'generate', 'job.yaml', '--quiet'], capture_output=True, text=True,
                       cwd=tmp, timeout=300 * SLOW)
    check(r.returncode == 0, f'generate: {r.stderr[-600:]}')
    d = os.path.join(tmp, 'zc-out')
    with h5py.File(os.path.join(d, 'dataset.h5'), 'r') as h:
        inputs, targets = np.asarray(h['inputs'], dtype=np.float32), np.asarray(h['targets'])
    check(inputs.shape[0] == S and targets.dtype == np.float32, f'dataset: {inputs.shape} {targets.dtype}')

    # batch 16 (serve's default; protocol 3 sends each row as a frame of its own and the
    # clients gather them into one batch) with --pad: the 12 samples wrap around to 16
    for batch in ('1', '2', '16'):
        for order in ('exact', 'shards'):
            pad = ['--pad'] if batch == '16' else []
            args = ['--batch', batch, '--order', order] + pad
            what = f'batch {batch} order {order}'
            py_map, e1, s1 = python_epochs(d, tmp, args)
            py_copy, e2, s2 = python_epochs(d, tmp, args + ['--copy-rows'])
            per_epoch = -(-S // int(batch)) * int(batch) if pad else S // int(batch) * int(batch)
            check(not e1 and not e2 and len(py_map) == 2 * per_epoch,
                  f'{what}: Python client: 2 epochs of {per_epoch} ({len(py_map)}): {e1} {e2} {s1[-300:]}')
            check(py_map == py_copy, f'{what}: Python client: the same ids, positions and bytes '
                  f'with and without --copy-rows')
            check(all(x == inputs[i].tobytes() and y == targets[i].tobytes() for _, _, i, x, y in py_map),
                  f'{what}: the streamed bytes are the dataset\'s')
            check(pad or sorted(i for e, _, i, _, _ in py_map if e == 0) == sorted(set(i for e, _, i, _, _ in py_map if e == 0)),
                  f'{what}: no sample twice in an epoch')
            check(set(i for e, _, i, _, _ in py_map if e == 0) == set(range(S)),
                  f'{what}: every sample in an epoch')
            n_map, n_copy = mapped_rows(s1), mapped_rows(s2)
            check(n_copy == 0, f'{what}: --copy-rows: no row sent from the mapped files ({n_copy}): {s2[-300:]}')
            if batch == '1':  # every chunk is one row: all sent from the mapping
                check(n_map is not None and n_map >= 2 * S,
                      f'{what}: rows sent from the mapped files: {n_map} (expected every one, >= {2 * S})')
            else:  # shuffled rows of several shards: each row frame from its own shard's mapping
                check(n_map is not None and n_map >= 2 * per_epoch,
                      f'{what}: rows sent from the mapped files: {n_map} (expected every one, '
                      f'>= {2 * per_epoch}): {s1[-300:]}')
            c_map, ce1, _ = c_epochs(d, tmp, args)
            c_copy, ce2, _ = c_epochs(d, tmp, args + ['--copy-rows'])
            want = [f'{e} {pos} {i} {cs.xxh64(x):016x} {cs.xxh64(y):016x}' for e, pos, i, x, y in py_map]
            check(not ce1 and not ce2 and c_map == c_copy == want,
                  f'{what}: the C consumer gets the same samples and bytes with and without '
                  f'--copy-rows, and as the Python client ({len(c_map)}, {len(c_copy)}): {ce1} {ce2}')

    # coemu bench serve --trainer: the trainer's in-process reader over the
    # same split reads every whole batch of the timed epoch (12 samples,
    # batch 2: 6 batches) and says so on its own line
    r = subprocess.run([COEMU, 'bench', 'serve', d, '--batch', '2', '--epochs', '2', '--trainer',
                        '--transport', 'ipc'], capture_output=True, text=True, timeout=120 * SLOW)
    m = re.search(r'^serve trainer_reader sample_MB [0-9.]+ batch 2 samples/s ([0-9]+) '
                  r'ms_per_sample ([0-9.]+)', r.stdout, re.M)
    check(r.returncode == 0 and m is not None and int(m.group(1)) > 0 and float(m.group(2)) > 0,
          f'bench serve --trainer prints the trainer reader\'s rate: {r.stdout[-400:]} {r.stderr[-400:]}')

    # a damaged row: named by serve to both consumers, never delivered
    bad = os.path.join(tmp, 'damaged')
    shutil.copytree(d, bad)
    shard = os.path.join(bad, 'shards', 'shard-000001.h5')
    flip_target(shard, 2)  # sample 7
    name = 'shard-000001.h5: sample 7 (row 2 of the shard): /targets does not match its checksum'
    for extra in ([], ['--copy-rows']):
        got, cerr, err = python_epochs(bad, tmp, ['--batch', '1'] + extra)
        check(name in cerr and all(i != 7 for _, _, i, _, _ in got),
              f'{extra}: the Python client gets serve\'s error naming the row, not the sample: {cerr}')
        # serve's own log says so too, once, with the rank (it said only
        # 'sent N samples'), and counts it on its end line
        logged = [ln for ln in err.splitlines() if ln.startswith('serve: error sent to rank 0: ')]
        check(len(logged) == 1 and name in logged[0] and
              'serve: 1 error sent to consumers (each distinct one logged above)' in err,
              f'{extra}: serve logs the error it sent: {err[-1500:]}')
        lines, cerr, _ = c_epochs(bad, tmp, ['--batch', '1'] + extra)
        check(name in cerr and not any(ln.split()[2] == '7' for ln in lines),
              f'{extra}: the C consumer gets serve\'s error naming the row: {cerr}')


def main():
    run_in_tmpdir('coemu-zerocopy-', run)


if __name__ == '__main__':
    main()
