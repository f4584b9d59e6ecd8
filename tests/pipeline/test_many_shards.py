"""test_many_shards.py - the readers at many shards (docs/dataset-format.md,
"Reading"): one job made twice, with 2,000 shards of one sample and with 4
shards of 500 (only output.samples_per_shard differs; 512 shards of one and
4 of 128 in a sanitizer build, still far past the reader's cap), with the analytic
producer of tests/pipeline/testgen.c. Every reader must give the same bytes
from both: `coemu stats` (/stats, on 2 ranks and on 1), `coemu serve` (the
streamed ids and arrays, to the Python client), `coemu verify`, `coemu
inspect`; the serve process never holds more shard files open than its cap;
serve streams the same bytes with 1 and 4 reader threads (--read-threads);
a damaged shard among them is named by stats, serve and verify.
Functional, not timed. Prints "N passed, N failed"."""
import json
import os
import subprocess
import sys
import threading
import time

import h5py
import numpy as np

TESTGEN = os.environ['COEMU_TESTGEN']
COEMU = os.environ['COEMU']
MPIEXEC = os.environ.get('COEMU_MPIEXEC', 'mpiexec')
ROOT = os.environ['COEMU_SOURCE_ROOT']
SANITIZE = bool(os.environ.get('COEMU_SANITIZE'))
SLOW = 4 if SANITIZE else 1  # subprocess time limits under the sanitizers
# 2,000 samples of 4^3 cubes; 512 under the sanitizers (~4x slower per shard:
# the same paths at a quarter of the cost). Whole batches of 8 (serve_epoch).
M, D, N = (128 if SANITIZE else 500), 4, 4
NS = M * D  # samples, and shards of the 'many' dataset
FEW = NS // 4  # samples per shard of the 'few' dataset
DAMAGED, MISSING = NS * 617 // 1000, NS * 777 // 2000  # 1234 and 777 of 2,000
CAP = 64  # SHARD_READER_MAX_OPEN (pipeline/dataset/shard_reader.h)

JOB = f"""name: many-shards
inputs:
  synth: {{count: {M}, seed: 3}}
sampling: {{directions: {D}, n: {N}, seed: 99}}
line: {{lamda: builtin:co.dat}}
output: {{samples_per_shard: SPS}}
splits: {{train: 0.5, validation: 0.25, test: 0.25, seed: 2}}
"""

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(ROOT, 'pipeline', 'stream'))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
from pycheck import check, h5_group_bytes, run_in_tmpdir, sanitizer_full_stacks, wait_bound  # noqa: E402
import coemu_stream as cs  # noqa: E402
sanitizer_full_stacks()



def mpi(n, exe, args):
    cmd = [MPIEXEC, '--allow-run-as-root', '--oversubscribe', '-n', str(n), exe] + args
    env = dict(os.environ)
    if SANITIZE:  # MPI processes: no leak checks (tests/mpirun.sh says why)
        env['ASAN_OPTIONS'] = env.get('ASAN_OPTIONS', '') + ':detect_leaks=0'
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300 * SLOW, env=env)


def stats_of(d):
    return h5_group_bytes(os.path.join(d, 'dataset.h5'), 'stats')


def open_fds(pid):
    try:
        return len(os.listdir(f'/proc/{pid}/fd'))
    except OSError:
        return 0


def serve_epoch(d, tmp, split='all', fds=None, extra=()):
    """One epoch of `split` through coemu serve to the Python client:
    [(id, inputs bytes, targets bytes)], the server's stderr. fds: a list
    that receives the server's open file count, sampled while it serves:
    every 5 ms and at every chunk received (a fast epoch under a loaded host
    gave the timer only 4 samples)."""
    ep = f"ipc://{tmp}/serve-{time.monotonic_ns()}.sock"
    p = subprocess.Popen([COEMU, 'serve', d, '--endpoint', ep, '--split', split, '--batch', '8',
                          '--epochs', '1', '--seed', '11', '--heartbeat', '0.2', *extra],
                         stderr=subprocess.PIPE, text=True)
    got, err = [], ''
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            fds.append(open_fds(p.pid))
            time.sleep(0.005)
    t = threading.Thread(target=sample) if fds is not None else None
    try:
        wait_bound(p, ep, 60 * SLOW)
        if t:
            t.start()
        c = cs.StreamClient(ep, rank=0, world=1, timeout_s=30 * SLOW, heartbeat_s=0.2)
        try:
            for ch in c.drain():
                if fds is not None:  # at least one sample a chunk, however fast the epoch
                    fds.append(open_fds(p.pid))
                for k, i in enumerate(ch.ids):
                    got.append((int(i), ch.inputs[k].tobytes(), ch.targets[k].tobytes()))
        except (cs.ProtocolError, cs.ProducerSilent) as e:
            err = str(e)
        finally:
            c.close()
    finally:
        stop.set()
        if t:
            t.join()
        p.terminate()
        try:
            err += p.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
            p.kill()
            err += p.communicate()[1]
    return got, err


def flip_sample(path, dset, row):
    """Flip two bytes inside row `row` of an uncompressed, chunked /dset."""
    with h5py.File(path, 'r') as h:
        d = h[dset]
        off = d.id.get_chunk_info_by_coord((row,) + (0,) * (d.ndim - 1)).byte_offset
    with open(path, 'r+b') as f:
        f.seek(off + 40)
        b = bytearray(f.read(2))
        f.seek(off + 40)
        f.write(bytes([b[0] ^ 0x40, b[1] ^ 0x01]))


def run(tmp):
    dirs = {}
    for name, sps in (('many', 1), ('few', FEW)):
        job = os.path.join(tmp, f'{name}.yaml')
        open(job, 'w').write(JOB.replace('SPS', str(sps)))
        out = os.path.join(tmp, name)
        r = mpi(2, TESTGEN, [job, '--out', out, '--quiet'])
        check(r.returncode == 0, f'generate {name}: {r.stderr[-600:]}')
        dirs[name] = out
    many, few = dirs['many'], dirs['few']
    check(len(os.listdir(os.path.join(many, 'shards'))) == NS, f'{NS} shards')
    check(len(os.listdir(os.path.join(few, 'shards'))) == 4, 'few shards')
    # format 2.3 (and later): every one-sample shard's layout is recorded, so the readers
    # below open them without HDF5 (shard_reader.h)
    man_many = json.load(open(os.path.join(many, 'manifest.json')))
    check(man_many['format_minor'] == 4 and
          all(len(e.get('layout', ())) == 7 for e in man_many['shards']),
          f'manifest: the layout of every one of the {NS:,} shards recorded')

    # stats: generate's /stats (2 ranks), then `coemu stats` on 2 ranks and on 1
    ref = stats_of(few)
    check(len(ref) > 10, f'/stats has content: {len(ref)} entries')
    check(stats_of(many) == ref, f'generate: /stats of {NS:,} shards == /stats of 4 shards')
    for ranks in (2, 1):
        for name, d in dirs.items():
            r = mpi(ranks, COEMU, ['stats', d, '--quiet'])
            check(r.returncode == 0, f'stats {name} on {ranks} ranks: {r.stderr[-600:]}')
        a, b = stats_of(many), stats_of(few)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        check(not diff, f'coemu stats on {ranks} ranks: /stats byte-identical: differ {diff[:8]}')

    # verify and inspect
    for name, d in dirs.items():
        r = subprocess.run([COEMU, 'verify', d], capture_output=True, text=True, timeout=300 * SLOW)
        check(r.returncode == 0 and 'ok' in r.stdout, f'verify {name}: {r.stdout} {r.stderr}')
    ins = {}
    for name, d in dirs.items():
        r = subprocess.run([COEMU, 'inspect', d], capture_output=True, text=True, timeout=120 * SLOW)
        check(r.returncode == 0, f'inspect {name}: {r.stderr}')
        ins[name] = [ln for ln in r.stdout.splitlines() if ln.split()[0] in
                     ('samples', 'inputs', 'targets', 'channels', 'stats')]
    check(ins['many'] == ins['few'] and len(ins['many']) >= 4,
          f'inspect: the same summary: {ins}')

    # serve: the same samples in the same order, the same bytes; the server
    # holds at most CAP shard files open (sampled while it serves them all)
    fds = []
    a, err_a = serve_epoch(many, tmp, fds=fds)
    b, err_b = serve_epoch(few, tmp)
    check(len(a) == NS and not err_a.count('error'), f'serve many: {len(a)} samples: {err_a[-400:]}')
    check(a == b, f'serve: {NS:,} shards and 4 shards stream the same bytes ({len(a)}, {len(b)})')
    check(sorted(i for i, _, _ in a) == list(range(NS)), 'serve: every sample once')
    with h5py.File(os.path.join(few, 'dataset.h5'), 'r') as h:
        same = all(h['inputs'][i].tobytes() == x and h['targets'][i].tobytes() == y
                   for i, x, y in a[::97])
    check(same, 'serve: the streamed bytes are the dataset\'s')
    check(len(fds) > 5 and max(fds) < CAP + 40,
          f'serve: open files stay under the cap of {CAP} shards (+ sockets, libraries): '
          f'max {max(fds) if fds else None} over {len(fds)} samples')
    # the same shards through HDF5 (the manifest without its layouts,
    # as a 2.2 coemu wrote it): the same bytes
    mpath = os.path.join(many, 'manifest.json')
    kept = open(mpath).read()
    json.dump(dict(man_many, shards=[{k: v for k, v in e.items() if k != 'layout'}
                                     for e in man_many['shards']]), open(mpath, 'w'))
    a_h5, err_h5 = serve_epoch(many, tmp)
    open(mpath, 'w').write(kept)
    check(a_h5 == a, f'serve: the same bytes through HDF5 as through the recorded layout: {err_h5[-300:]}')
    # the pool of readers (--read-threads): the same bytes with 1 and 4
    for n in ('1', '4'):
        a_n, err_n = serve_epoch(many, tmp, extra=('--read-threads', n))
        check(a_n == a, f'serve --read-threads {n}: the same bytes ({len(a_n)}): {err_n[-300:]}')
    t, err_t = serve_epoch(many, tmp, split='train')
    u, _ = serve_epoch(few, tmp, split='train')
    check(t == u and len(t) > 0, f'serve --split train: the same bytes: {err_t[-300:]}')

    # a damaged sample among the shards: every reader names its shard
    shard = f'shard-{DAMAGED:06d}.h5'
    flip_sample(os.path.join(many, 'shards', shard), 'targets', 0)
    r = mpi(2, COEMU, ['stats', many, '--split', 'all', '--quiet'])
    check(r.returncode == 1 and shard in r.stderr and f'sample {DAMAGED}' in r.stderr,
          f'stats names the damaged shard and sample: {r.stderr[-400:]}')
    for n in ('1', '4'):
        got, err = serve_epoch(many, tmp, extra=('--read-threads', n))
        check(shard in err and f'sample {DAMAGED}' in err and '/targets does not match its checksum' in err,
              f'serve --read-threads {n} names it: {err[-400:]}')
    r = subprocess.run([COEMU, 'verify', many], capture_output=True, text=True, timeout=300 * SLOW)
    check(r.returncode == 1 and shard in r.stderr, f'verify names it: {r.stderr[-400:]}')
    missing = f'shard-{MISSING:06d}.h5'
    os.unlink(os.path.join(many, 'shards', missing))
    r = mpi(1, COEMU, ['stats', many, '--quiet'])
    check(r.returncode == 1 and missing in r.stderr and 'missing' in r.stderr,
          f'stats: a missing shard among {NS:,} is named at open: {r.stderr[-400:]}')
    r = subprocess.run([COEMU, 'inspect', many], capture_output=True, text=True, timeout=120 * SLOW)
    check(r.returncode == 1 and missing in r.stderr, f'inspect: {r.stderr[-400:]}')


def main():
    run_in_tmpdir('coemu-many-', run)


if __name__ == '__main__':
    main()
