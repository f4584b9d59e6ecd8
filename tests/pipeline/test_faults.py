"""test_faults.py - fault injection against a finished dataset (made with the
analytic producer of tests/pipeline/testgen.c): bytes flipped in a shard, a
shard removed or truncated. Every reader (coemu stats, coemu serve and its
Python client, h5py users through coemu_stream.check_dataset_sample) must
either fail naming the shard (and the sample) or read the right data; never
silently wrong data. Prints the faults injected and what the readers did,
then "N passed, N failed"."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

TESTGEN = os.environ['COEMU_TESTGEN']
COEMU = os.environ['COEMU']
MPIEXEC = os.environ.get('COEMU_MPIEXEC', 'mpiexec')
ROOT = os.environ['COEMU_SOURCE_ROOT']
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.join(ROOT, 'pipeline', 'stream'))
from pycheck import check, report, sanitizer_full_stacks  # noqa: E402
sanitizer_full_stacks()
import coemu_stream as cs  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
from fault_campaign import serve_all as campaign_serve_all  # noqa: E402

M, D, N, S = 4, 4, 8, 4  # 16 samples in 4 shards
JOB = f"""name: faults
inputs:
  synth: {{count: {M}, seed: 3}}
sampling: {{directions: {D}, n: {N}, seed: 99}}
line: {{lamda: builtin:co.dat}}
output: {{samples_per_shard: {S}}}
splits: {{train: 0.5, validation: 0.25, test: 0.25, seed: 2}}
"""
counts = {'faults': 0, 'detected': 0, 'silently_changed': 0, 'samples_lost': 0, 'stats_kept': 0,
          'refused': 0}


def mpi(n, exe, args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([MPIEXEC, '--allow-run-as-root', '--oversubscribe', '-n', str(n), exe]
                          + args, capture_output=True, text=True, timeout=90, env=e)


def stats(d, ranks=1):
    return mpi(ranks, COEMU, ['stats', d, '--split', 'all', '--quiet'])


def flip(path, dataset, row, at=100):
    """Flip two bytes inside the stored row `row` of `dataset` (chunked by sample)."""
    with h5py.File(path, 'r') as h:
        off = h[dataset].id.get_chunk_info(row).byte_offset
    with open(path, 'r+b') as f:
        f.seek(off + at)
        b = bytearray(f.read(2))
        f.seek(off + at)
        f.write(bytes([b[0] ^ 0x40, b[1] ^ 0x01]))
    counts['faults'] += 1


def serve_all(d, tmp, live=False):
    """Stream split 'all' once through coemu serve; (samples, failed, error text)."""
    return campaign_serve_all(COEMU, d, tmp, live)


def reference(d):
    with h5py.File(os.path.join(d, 'dataset.h5'), 'r') as h:
        return h['inputs'][()], h['targets'][()]


def judge(what, rc, err, shard, sample=None, got=None, ref=None):
    """A reader either failed naming the shard (and sample), or read exactly the reference."""
    named = shard in err and (sample is None or f'sample {sample}' in err)
    if rc != 0 and named:
        counts['detected'] += 1
    if got is not None and ref is not None:
        changed = sum(1 for i, (x, y) in got.items()
                      if not (np.array_equal(x, ref[0][i]) and np.array_equal(y, ref[1][i])))
        counts['silently_changed'] += changed
        check(changed == 0, f'{what}: {changed} samples served with changed values')
    check(rc != 0 and named, f'{what}: an error naming {shard}'
          f'{"" if sample is None else f" and sample {sample}"}: rc {rc}: {err[-600:]}')


def main():
    tmp = tempfile.mkdtemp(prefix='coemu-faults-')
    try:
        run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print('faults injected {faults}: damaged/missing shards detected naming the shard {detected}, '
          'samples silently changed {silently_changed}, samples lost silently {samples_lost}; '
          'stats killed or out of space with a readable old/new /stats {stats_kept}; concurrent '
          'generate refused {refused}'.format(**counts))
    report()


def mark_old_stats(d):
    """Tag the /stats now in dataset.h5 ('old'); a rewritten /stats has no tag."""
    with h5py.File(os.path.join(d, 'dataset.h5'), 'r+') as h:
        h['stats'].attrs['test_marker'] = 1


def stats_split(d):
    """'old' (the tagged /stats) or 'new' (a /stats written since); the file
    must open (else the check fails)."""
    try:
        with h5py.File(os.path.join(d, 'dataset.h5'), 'r') as h:
            return 'old' if 'test_marker' in h['stats'].attrs else 'new'
    except Exception as e:  # noqa: BLE001
        return f'unreadable: {e}'


def stats_faults(base, tmp):
    """coemu stats killed at every step of writing /stats, and a full disk:
    dataset.h5 keeps the old /stats (or has the new one), always readable."""
    for point, expect in (('copied', 'old'), ('written', 'old'), ('closed', 'old'),
                          ('renamed', 'new')):
        d = fresh(base, tmp, 'kill-' + point)
        mark_old_stats(d)
        check(stats_split(d) == 'old', 'the old /stats is tagged')
        r = subprocess.run([MPIEXEC, '--allow-run-as-root', '--oversubscribe', '-n', '2', COEMU,
                            'stats', d, '--quiet'], capture_output=True, text=True, timeout=90,
                           env=dict(os.environ, COEMU_FAULT_STATS=point))
        counts['faults'] += 1
        got = stats_split(d)
        counts['stats_kept'] += got == expect
        check(r.returncode != 0 and got == expect,
              f'stats killed after "{point}": /stats {got!r}, expected {expect!r}: {r.stderr[-300:]}')
        got, failed, err = serve_all(d, tmp)
        check(not failed and len(got) == M * D, f'serve reads it after a kill at {point}: {err}')
        r = mpi(1, COEMU, ['stats', d, '--quiet'])
        check(r.returncode == 0 and stats_split(d) == 'new', f'stats reruns there: {r.stderr}')
    # a full disk: while copying dataset.h5, and while writing the new one
    size = os.path.getsize(os.path.join(base, 'dataset.h5'))
    for limit in (size // 2, size + 100):
        d = fresh(base, tmp, f'full-{limit}')
        mark_old_stats(d)
        r = subprocess.run([MPIEXEC, '--allow-run-as-root', '--oversubscribe', '-n', '1', COEMU,
                            'stats', d, '--quiet'], capture_output=True, text=True, timeout=90,
                           env=dict(os.environ, COEMU_FAULT_STATS_FSIZE=str(limit)))
        counts['faults'] += 1
        check(r.returncode == 1 and 'File too large' in r.stderr and 'Segmentation' not in
              r.stderr and 'signal' not in r.stderr.lower(),
              f'full disk ({limit} bytes): a clean error, no crash: {r.stderr[-600:]}')
        counts['stats_kept'] += stats_split(d) == 'old'
        check(stats_split(d) == 'old' and
              not [f for f in os.listdir(d) if '.tmp.' in f], 'the old /stats kept, no temporary file')


def two_runs(tmp):
    """A second generate (or stats) on a folder a generate is writing is
    refused at once, naming the holder; the first run finishes intact."""
    out = os.path.join(tmp, 'two')
    cmd = [MPIEXEC, '--allow-run-as-root', '--oversubscribe', '-n', '1', TESTGEN,
           os.path.join(tmp, 'job.yaml'), '--out', out, '--quiet']
    p = subprocess.Popen(cmd, env=dict(os.environ, COEMU_TEST_DELAY_MS='1500'),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = os.path.join(out, '.lock')
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (os.path.exists(lock) and
                                               open(lock).read().startswith('pid ')):
        time.sleep(0.05)
    holder = open(lock).read().split(':')[0] if os.path.exists(lock) else '?'
    r = mpi(1, TESTGEN, [os.path.join(tmp, 'job.yaml'), '--out', out, '--quiet'])
    counts['faults'] += 1
    counts['refused'] += r.returncode != 0 and 'in use by another coemu' in r.stderr
    check(r.returncode != 0 and 'in use by another coemu' in r.stderr and holder in r.stderr,
          f'a second generate is refused naming {holder}: {r.stderr[-400:]}')
    r = mpi(1, COEMU, ['stats', out, '--quiet'])
    # both refusals mean something only while the first run still holds the
    # folder: 16 samples x 1.5 s keep it busy ~24 s, far above two MPI
    # launches even on a loaded 2-core host (at 0.5 s a sample the run once
    # ended before stats started, and stats then rightly succeeded)
    check(p.poll() is None, 'the first generate is still running after both checks '
          '(else the refusals above were not tested)')
    check(r.returncode != 0 and 'in use by another coemu' in r.stderr,
          f'stats on a folder being generated is refused: rc {r.returncode}, {r.stderr[-400:]}')
    _, err = p.communicate(timeout=90)
    check(p.returncode == 0, f'the first generate finishes: {err[-400:]}')
    r = subprocess.run([COEMU, 'verify', out], capture_output=True, text=True)
    check(r.returncode == 0, f'its dataset verifies: {r.stderr}')


def fresh(base, tmp, name):
    d = os.path.join(tmp, name)
    shutil.copytree(base, d)
    return d


def run(tmp):
    open(os.path.join(tmp, 'job.yaml'), 'w').write(JOB)
    shutil.copy(os.path.join(ROOT, 'tests', 'data', 'lamda', 'co.dat'), tmp)
    base = os.path.join(tmp, 'base')
    r = mpi(1, TESTGEN, [os.path.join(tmp, 'job.yaml'), '--out', base, '--quiet'])
    check(r.returncode == 0, f'generate: {r.stderr}')
    ref = reference(base)

    # the clean dataset: every reader works and agrees
    r = stats(base)
    check(r.returncode == 0 and 'note' not in r.stderr, f'stats on a clean dataset: {r.stderr}')
    got, failed, err = serve_all(base, tmp)
    check(len(got) == M * D and not failed, f'serve streams all {M * D}: {err}')
    with h5py.File(os.path.join(base, 'dataset.h5'), 'r') as h:
        bad = []
        for i in range(M * D):
            try:
                cs.check_dataset_sample(h, i)
            except ValueError as e:
                bad.append(str(e))
        check(not bad, f'h5py: every sample matches /checksums: {bad}')

    # two flipped bytes in one sample of shard 0 (inputs), of shard 1 (targets)
    for name, shard, dset, row, sample in (('in', 'shard-000000.h5', 'inputs', 1, 1),
                                           ('tg', 'shard-000001.h5', 'targets', 2, 6)):
        d = fresh(base, tmp, 'flip-' + name)
        flip(os.path.join(d, 'shards', shard), dset, row)
        r = stats(d, ranks=2)
        judge(f'stats, /{dset} flipped', r.returncode, r.stderr, shard, sample)
        check(f'/{dset}' in r.stderr, f'stats names /{dset}: {r.stderr}')
        flip(os.path.join(d, 'shards', shard), dset, row, at=300)
        got, failed, err = serve_all(d, tmp)
        judge(f'serve, /{dset} flipped', int(failed), err, shard, sample, got, ref)
        counts['faults'] += 1  # the second flip above
        got, failed, err = serve_all(d, tmp, live=True)
        judge(f'serve --live, /{dset} flipped', int(failed), err, shard, sample, got, ref)
        with h5py.File(os.path.join(d, 'dataset.h5'), 'r') as h:
            try:
                cs.check_dataset_sample(h, sample)
                ok = False
            except ValueError as e:
                ok = f'sample {sample}' in str(e)
        check(ok, 'h5py: check_dataset_sample finds the damaged sample')
        r = subprocess.run([COEMU, 'verify', d], capture_output=True, text=True)
        check(r.returncode == 1 and shard in r.stderr, f'verify: {r.stderr}')

    # verify names every damaged dataset of a shard, not only the first
    d = fresh(base, tmp, 'flip-both')
    flip(os.path.join(d, 'shards', 'shard-000003.h5'), 'inputs', 0)
    flip(os.path.join(d, 'shards', 'shard-000003.h5'), 'targets', 3)
    r = subprocess.run([COEMU, 'verify', d], capture_output=True, text=True)
    check(r.returncode == 1 and 'shard-000003.h5' in r.stderr and '/inputs' in r.stderr and
          '/targets' in r.stderr, f'verify names /inputs and /targets: {r.stderr}')

    # a removed shard: no reader sees zeros or a shorter split
    d = fresh(base, tmp, 'removed')
    os.unlink(os.path.join(d, 'shards', 'shard-000002.h5'))
    counts['faults'] += 1
    r = stats(d, ranks=2)
    judge('stats, shard removed', r.returncode, r.stderr, 'shard-000002.h5')
    check('samples 8..11' in r.stderr and 'missing' in r.stderr, f'stats says which: {r.stderr}')
    got, failed, err = serve_all(d, tmp)
    counts['samples_lost'] += 0 if failed else M * D - len(got)
    judge('serve, shard removed', int(failed), err, 'shard-000002.h5', None, got, ref)

    # a truncated shard (a disk that lost its tail)
    d = fresh(base, tmp, 'truncated')
    p = os.path.join(d, 'shards', 'shard-000003.h5')
    os.truncate(p, os.path.getsize(p) // 2)
    counts['faults'] += 1
    r = stats(d)
    judge('stats, shard truncated', r.returncode, r.stderr, 'shard-000003.h5')
    got, failed, err = serve_all(d, tmp)
    counts['samples_lost'] += 0 if failed else M * D - len(got)
    judge('serve, shard truncated', int(failed), err, 'shard-000003.h5', None, got, ref)

    # damaged metadata: bytes flipped inside the object header of /inputs and of
    # /targets. Shards use HDF5 1.10's format, whose metadata carry checksums,
    # so HDF5 refuses them (the earliest format has none: damaged headers were
    # misread, and one flip crashed serve inside HDF5). Fail naming the shard.
    for dset in ('inputs', 'targets'):
        d = fresh(base, tmp, 'meta-' + dset)
        p = os.path.join(d, 'shards', 'shard-000001.h5')
        with h5py.File(p, 'r') as h:
            addr = h5py.h5o.get_info(h[dset].id).addr
        sb = open(p, 'rb').read(9)[8]  # superblock version: 2 and 3 checksum the metadata
        check(sb >= 2, f'shards are written in a format with metadata checksums: superblock v{sb}')
        with open(p, 'r+b') as f:
            f.seek(addr + 24)
            b = bytearray(f.read(2))
            f.seek(addr + 24)
            f.write(bytes([b[0] ^ 0x10, b[1] ^ 0x01]))
        counts['faults'] += 1
        # format 2.3: the readers open the shard at the offsets the manifest
        # records and never parse the header; the rows they use are intact
        # and checked (XXH64 against /checksums, /checksums against the
        # manifest's CRC-32), so they read exactly the reference, and verify
        # names the damage (docs/faults.md, "Damaged HDF5 metadata")
        r = stats(d)
        check(r.returncode == 0 and 'Segmentation' not in r.stderr,
              f'stats (layout), /{dset} header damaged: the intact rows: rc {r.returncode}: {r.stderr[-300:]}')
        got, failed, err = serve_all(d, tmp)
        check(not failed and len(got) == M * D and
              all(np.array_equal(x, ref[0][i]) and np.array_equal(y, ref[1][i]) for i, (x, y) in got.items()),
              f'serve (layout), /{dset} header damaged: exactly the reference samples: {err[-300:]}')
        r = subprocess.run([COEMU, 'verify', d], capture_output=True, text=True)
        check(r.returncode == 1 and 'shard-000001.h5' in r.stderr, f'verify: {r.stderr[-300:]}')
        # a 2.2 manifest (no layout): the readers open the shard with HDF5,
        # which refuses the damaged header, naming the shard
        mpath = os.path.join(d, 'manifest.json')
        man = json.load(open(mpath))
        json.dump(dict(man, shards=[{k: v for k, v in e.items() if k != 'layout'} for e in man['shards']]),
                  open(mpath, 'w'))
        r = stats(d)
        check(r.returncode == 1 and 'Segmentation' not in r.stderr,
              f'stats, /{dset} header damaged: a clean error: rc {r.returncode}: {r.stderr[-300:]}')
        judge(f'stats, /{dset} header damaged', r.returncode, r.stderr, 'shard-000001.h5')
        got, failed, err = serve_all(d, tmp)
        judge(f'serve, /{dset} header damaged', int(failed), err, 'shard-000001.h5', None, got, ref)

    # damaged labels: /valid and /split decide which samples a reader uses;
    # a flipped byte there would drop or move samples without a word. Readers
    # check each shard's slice against the CRC-32 in manifest.json.
    for dset, value in (('valid', 0), ('split', 2)):
        d = fresh(base, tmp, 'label-' + dset)
        with h5py.File(os.path.join(d, 'shards', 'shard-000002.h5'), 'r+') as h:
            v = h[dset][()]
            v[1] = value if v[1] != value else 1
            h[dset][...] = v
        counts['faults'] += 1
        got, failed, err = serve_all(d, tmp)
        counts['samples_lost'] += 0 if failed else M * D - len(got)
        judge(f'serve, /{dset} damaged', int(failed), err, 'shard-000002.h5', None, got, ref)
        check(f'/{dset}' in err, f'serve names /{dset}: {err[-300:]}')
        if dset == 'split':  # stats uses the split (the training split's statistics)
            r = mpi(1, COEMU, ['stats', d, '--quiet'])
            judge('stats, /split damaged', r.returncode, r.stderr, 'shard-000002.h5')

    # a dataset of format 1 (no /checksums): read with the documented fallback
    d = fresh(base, tmp, 'format1')
    with h5py.File(os.path.join(d, 'dataset.h5'), 'r+') as h:
        del h['checksums']
    r = mpi(1, COEMU, ['stats', d, '--split', 'all'])
    check(r.returncode == 0 and 'no per-sample /checksums' in r.stderr,
          f'format 1: stats works and says samples are not checked: {r.stderr}')
    os.unlink(os.path.join(d, 'shards', 'shard-000001.h5'))
    r = stats(d)
    check(r.returncode == 1 and 'shard-000001.h5' in r.stderr and 'missing' in r.stderr,
          f'format 1: a missing shard is still an error: {r.stderr}')
    stats_faults(base, tmp)
    two_runs(tmp)
    check(counts['silently_changed'] == 0 and counts['samples_lost'] == 0,
          f'no reader used damaged data silently: {counts}')


if __name__ == '__main__':
    main()
