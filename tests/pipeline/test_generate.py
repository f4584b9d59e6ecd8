"""test_generate.py - the generate pipeline end to end, with the analytic
producer of tests/pipeline/testgen.c: 1, 2 and 3 ranks give the same sample
data; runs killed at random moments resume to the same data; verify catches
corruption; bad models stop the job or are skipped; a file-size limit fails
cleanly and the job resumes after it.  Prints "N passed, N failed"."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import h5py
import yaml
import numpy as np

TESTGEN = os.environ['COEMU_TESTGEN']
COEMU = os.environ['COEMU']
MPIEXEC = os.environ.get('COEMU_MPIEXEC', 'mpiexec')
# what MPI_Get_library_version says for the build's MPI family (meson.build)
MPI_LIBRARY = {'openmpi': 'Open MPI', 'mpich': 'MPICH', 'other': ''}
ROOT = os.environ['COEMU_SOURCE_ROOT']
M, D, N, F, S = 6, 4, 16, 7, 4

JOB = f"""name: pipeline-test
inputs:
  synth: {{count: {M}, seed: 3}}
sampling: {{directions: {D}, n: {N}, seed: 99}}
line: {{lamda: builtin:co.dat}}
output: {{samples_per_shard: {S}, gzip: 1}}
splits: {{train: 0.5, validation: 0.25, test: 0.25, seed: 2}}
"""

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, h5_group_bytes, run_in_tmpdir, sanitizer_full_stacks  # noqa: E402
sanitizer_full_stacks()


def mpi(n, args, env=None, **kw):
    cmd = [MPIEXEC, '--allow-run-as-root', '--oversubscribe', '-n', str(n), TESTGEN] + args
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=90, **kw)


def expected(model, direction):
    x, y, z = np.meshgrid(np.arange(N), np.arange(N), np.arange(N), indexing='ij')
    inp = np.stack([(x - y) * 10 + model * 100 + direction,
                    10 + x + 2 * y + 3 * z + model + 0.5 * direction,
                    (1 + model) * 1000 + z * direction]).astype(np.float32)
    f, x2, y2 = np.meshgrid(np.arange(F), np.arange(N), np.arange(N), indexing='ij')
    tg = np.ldexp((((f + 1) * 1000 + x2 * 37 + y2 * 11 + model * 7 + direction * 3) % 65536)
                  .astype(np.float64), -40).astype(np.float32)
    return inp, tg


def arrays(out):
    with h5py.File(os.path.join(out, 'dataset.h5'), 'r') as h:
        return {k: h[k][()] for k in ('inputs', 'targets', 'model_id', 'direction_index',
                                      'direction', 'split', 'valid')}


def same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


def main():
    run_in_tmpdir('coemu-gen-', run_tests)


def run_tests(tmp):
    job = os.path.join(tmp, 'job.yaml')
    open(job, 'w').write(JOB)

    # --check: the shipped jobs validate; a bad one names file:line:column
    for name in ('demo', 'paper', 'coemunet-compat'):
        r = subprocess.run([TESTGEN, os.path.join(ROOT, 'jobs', name + '.yaml'), '--check'],
                           capture_output=True, text=True)
        check(r.returncode == 0 and ': ok: ' in r.stdout, f'--check jobs/{name}.yaml: {r.stderr}')
    r = subprocess.run([TESTGEN, '--schema-doc'], capture_output=True, text=True)
    check(r.returncode == 0 and r.stdout in open(os.path.join(ROOT, 'docs', 'jobs.md')).read(),
          'docs/jobs.md holds the table generated from the schema')
    bad = os.path.join(tmp, 'bad.yaml')
    open(bad, 'w').write(JOB.replace('n: 16', 'n: 0'))
    r = subprocess.run([TESTGEN, bad, '--check'], capture_output=True, text=True)
    check(r.returncode == 1 and 'bad.yaml:4:' in r.stderr and 'sampling.n' in r.stderr,
          f'bad job: {r.returncode} {r.stderr}')

    # 1, 2, 3 ranks: identical data, equal to the producer's values
    outs = {}
    for ranks in (1, 2, 3):
        out = os.path.join(tmp, f'r{ranks}')
        r = mpi(ranks, [job, '--out', out, '--quiet'])
        check(r.returncode == 0, f'{ranks} ranks: {r.stderr}')
        outs[ranks] = out
    ref = arrays(outs[1])
    check(ref['inputs'].shape == (M * D, 3, N, N, N) and ref['targets'].shape == (M * D, F, N, N),
          'shapes')
    ok = True
    for i in range(M * D):
        m, d = divmod(i, D)
        inp, tg = expected(m, d)
        ok &= np.array_equal(ref['inputs'][i], inp) and np.array_equal(ref['targets'][i], tg)
        ok &= ref['model_id'][i] == m and ref['direction_index'][i] == d
    check(ok, 'values equal the analytic producer')
    check(np.allclose(np.linalg.norm(ref['direction'], axis=1), 1), 'unit quaternions')  # double: ~1e-16
    check(same(ref, arrays(outs[2])) and same(ref, arrays(outs[3])), '1, 2, 3 ranks identical')
    with h5py.File(os.path.join(outs[2], 'dataset.h5'), 'r') as h:
        msplit = h['models/split'][()]
        check(np.array_equal(ref['split'], np.repeat(msplit, D)), 'split per sample = per model')
        # 6 models, 0.5/0.25/0.25: round(3) train, round(1.5) = 2 validation, 1 test
        check(list(np.bincount(msplit, minlength=3)) == [3, 2, 1], 'split fractions')
        check(h['frequencies'][3] == 230538000000.0 and h['frequencies'].shape == (F,), 'frequencies')
        p = h['provenance'].attrs
        check(p['job'] == JOB and 'analytic' in p['producer'] and p['seed'] == 99 and
              p['hdf5_version'].startswith('1.') and
              MPI_LIBRARY[os.environ.get('COEMU_MPI_FLAVOUR', 'openmpi')] in p['mpi_version'],
              f"provenance (MPI: {p['mpi_version'][:60]!r})")
        # the build line: `coemu version --verbose`'s build rows, its MPI this run's
        # (this suite runs in CI's MPICH step too: MPICH's several-line version string)
        vr = subprocess.run([COEMU, 'version', '--verbose'], capture_output=True, text=True)
        v = vr.stdout
        check(vr.returncode == 0 and "\n  solver, cuda " in v,
              f"version --verbose: status {vr.returncode}, {v[-300:]!r} {vr.stderr[-300:]!r}")
        b = v.split('\nbuild\n', 1)[-1].split('\nlibraries', 1)[0].splitlines()
        b = {ln[2:].partition('  ')[0]: ln[2:].partition('  ')[2].strip() for ln in b}
        want = (f"{b.get('compiler')}; {b.get('build type')}; {b.get('instruction sets')}; MPI {b.get('MPI')}; "
                f"CUDA {b.get('CUDA')}; sanitize {b.get('sanitize')}")
        check(p['build'] == want and f"MPI {os.environ.get('COEMU_MPI_FLAVOUR', 'openmpi')} " in p['build'],
              f"provenance build {p['build']!r}, version --verbose {want!r}")
        check(h['inputs'].attrs['units'] == 'm/s, K, m^-3', 'units')
    man = json.load(open(os.path.join(outs[3], 'manifest.json')))
    check(len(man['shards']) == M * D // S and man['samples'] == M * D, 'manifest')
    man1 = json.load(open(os.path.join(outs[1], 'manifest.json')))
    check([s['crc32'] for s in man['shards']] == [s['crc32'] for s in man1['shards']],
          'checksums independent of ranks')
    # the manifest is written from what the ranks that made the shards
    # handed rank 0 (no shard is opened again): the same bytes on 1, 2, 3 ranks
    def manifest_bytes(out):
        with open(os.path.join(out, 'manifest.json'), 'rb') as f:
            return f.read()
    check(manifest_bytes(outs[1]) == manifest_bytes(outs[2]) == manifest_bytes(outs[3]),
          'manifest.json byte-identical on 1, 2, 3 ranks')

    # the layout is the one schemas/dataset.yaml describes
    lay = yaml.safe_load(open(os.path.join(ROOT, 'schemas', 'dataset.yaml')))
    sym = {'N': M * D, 'M': M, 'n': N, 'F': F, 'S': S}

    def conforms(h, spec):
        bad = []
        for name, d in spec['datasets'].items():
            if name not in h:
                bad.append(name + ' missing')
                continue
            shape = tuple(sym[x] if isinstance(x, str) else x for x in d['shape'])
            kind = 'string' if h[name].dtype.kind == 'O' else str(h[name].dtype)
            if h[name].shape != shape or kind != d['dtype']:
                bad.append(f'{name} {h[name].shape} {kind}')
            if 'chunk' in d and h[name].chunks != tuple(sym[x] if isinstance(x, str) else x
                                                        for x in d['chunk']):
                bad.append(name + ' chunks')
            bad += [f'{name}.{a}' for a in d.get('attrs', []) if a not in h[name].attrs]
        for g, gd in spec.get('groups', {}).items():
            if gd.get('optional') and g not in h:  # /geometry, /solver: the real producer's
                continue
            bad += [f'{g}.{a}' for a in gd['attrs'] if a not in h[g].attrs]
        bad += [a for a in spec.get('attrs', []) if a not in h.attrs]
        return bad
    with h5py.File(os.path.join(outs[1], 'dataset.h5'), 'r') as h:
        bad = conforms(h, lay['dataset.h5'])
        check(not bad and h['inputs'].is_virtual, f'dataset.h5 as schemas/dataset.yaml says: {bad}')
    with h5py.File(os.path.join(outs[1], 'shards', 'shard-000001.h5'), 'r') as h:
        bad = conforms(h, lay['shard'])
        check(not bad, f'shard as schemas/dataset.yaml says: {bad}')

    # dataset.h5 opens from any working directory (the same numpy sum of the
    # same float32 values in both processes: equal; 1e-6 is float32 room)
    r = subprocess.run([sys.executable, '-c',
                        'import h5py,sys; print(h5py.File(sys.argv[1])["targets"][5].sum())',
                        os.path.join(outs[1], 'dataset.h5')], capture_output=True, text=True,
                       cwd='/')
    check(r.returncode == 0 and abs(float(r.stdout) / float(ref['targets'][5].sum()) - 1) < 1e-6,
          f'VDS from another cwd: {r.stderr}')

    # verify and inspect
    r = subprocess.run([COEMU, 'verify', outs[2]], capture_output=True, text=True)
    check(r.returncode == 0 and 'ok' in r.stdout, f'verify: {r.stderr}')
    r = subprocess.run([TESTGEN, 'inspect', outs[2]], capture_output=True, text=True)
    check(r.returncode == 0 and 'samples   24 (6 models' in r.stdout and 'rest frequency 230.538000 GHz' in r.stdout,
          f'inspect: {r.stdout} {r.stderr}')
    shard = os.path.join(outs[3], 'shards', 'shard-000002.h5')
    with h5py.File(shard, 'r+') as h:
        h['targets'][1, 0, 0, 0] = 5.0
    r = subprocess.run([COEMU, 'verify', outs[3]], capture_output=True, text=True)
    check(r.returncode == 1 and 'shard-000002.h5' in r.stderr and '/targets' in r.stderr,
          f'verify finds corruption: {r.stderr}')
    # a rerun of the finished job reads no shard: it leaves the damage
    # (verify's to find) and names the remedy; the remedy remakes the shard
    r = mpi(2, [job, '--out', outs[3]])
    check(r.returncode == 0 and 'is finished' in r.stderr and 'coemu verify' in r.stderr and
          '--verify-kept reads every shard back' in r.stderr,
          f'a rerun of a finished dataset reads no shard, names verify: {r.stderr}')
    with h5py.File(shard, 'r') as h:
        check(h['targets'][1, 0, 0, 0] == 5.0, 'the rerun left the damaged shard as it was')
    # --check says what that rerun does, and with --verify-kept reads the
    # shards back and names the damaged one (removing nothing)
    r = subprocess.run([TESTGEN, job, '--check', '--out', outs[3]], capture_output=True, text=True)
    check(r.returncode == 0 and "holds this job's finished dataset: nothing to make" in r.stdout,
          f'--check on a finished dataset: {r.stdout} {r.stderr}')
    r = subprocess.run([TESTGEN, job, '--check', '--out', outs[3], '--verify-kept'],
                       capture_output=True, text=True)
    check(r.returncode == 0 and 'shard-000002.h5: /targets: checksum mismatch' in r.stdout and
          'with 1 damaged shard' in r.stdout and os.path.exists(shard),
          f'--check --verify-kept on a damaged finished dataset: {r.stdout} {r.stderr}')
    # --verify-kept on the finished dataset honours the flag: it reads every
    # shard back and makes the damaged one again (it was taken for finished
    # and left the damage, exit 0)
    r = mpi(2, [job, '--out', outs[3], '--quiet', '--verify-kept'])
    check(r.returncode == 0 and 'shard-000002.h5: /targets: checksum mismatch' in r.stderr and
          'making the shard again' in r.stderr and same(ref, arrays(outs[3])),
          f'a finished dataset with --verify-kept: the damaged shard made again: {r.stderr}')
    r = subprocess.run([COEMU, 'verify', outs[3]], capture_output=True, text=True)
    check(r.returncode == 0, f'verify after --verify-kept repaired it: {r.stderr}')
    # ... and, every shard good, leaves the dataset as it was
    before = os.stat(os.path.join(outs[3], 'dataset.h5')).st_mtime_ns
    r = mpi(2, [job, '--out', outs[3], '--verify-kept'])
    check(r.returncode == 0 and 'CRC-32s matching (--verify-kept)' in r.stderr and
          'nothing to make' in r.stderr and
          os.stat(os.path.join(outs[3], 'dataset.h5')).st_mtime_ns == before,
          f'a good finished dataset with --verify-kept: nothing made or rewritten: {r.stderr}')
    os.unlink(shard)
    r = mpi(2, [job, '--out', outs[3], '--quiet'])
    check(r.returncode == 0 and same(ref, arrays(outs[3])),
          f'removed and rerun: the damaged shard made again: {r.stderr}')
    # its manifest, from sums of kept shards (their claims, read by the rank
    # that checked each) and one made now, equals the uninterrupted run's
    check(manifest_bytes(outs[3]) == manifest_bytes(outs[1]),
          'a resume\'s manifest (kept and made shards) equals the uninterrupted run\'s')
    # a resume (an unfinished dataset: its manifest gone) keeps an earlier
    # run's shard on what the file claims, reading no data: damage inside
    # the data stays (verify's to find) ...
    with h5py.File(shard, 'r+') as h:
        h['targets'][1, 0, 0, 0] = 5.0
    os.unlink(os.path.join(outs[3], 'manifest.json'))
    # --check says the run resumes it, and what it keeps (one shard gone: made)
    os.rename(shard, shard + '.away')
    r = subprocess.run([TESTGEN, job, '--check', '--out', outs[3]], capture_output=True, text=True)
    K = M * D // S
    check(r.returncode == 0 and f"holds this job's unfinished dataset: the run resumes it, keeping "
          f"{K - 1} of {K} shards ({M * D - S} of {M * D} samples; judged on what their files "
          f"claim, no data read) and making 1" in r.stdout,
          f'--check on an unfinished dataset: {r.stdout} {r.stderr}')
    os.rename(shard + '.away', shard)
    r = mpi(2, [job, '--out', outs[3], '--quiet'])
    with h5py.File(shard, 'r') as h:
        check(r.returncode == 0 and h['targets'][1, 0, 0, 0] == 5.0 and 'shard-000002' not in r.stderr,
              f'a resume reads no data of a kept shard: {r.stderr}')
    r = subprocess.run([COEMU, 'verify', outs[3]], capture_output=True, text=True)
    check(r.returncode == 1 and 'shard-000002.h5: /targets: checksum mismatch' in r.stderr,
          f'verify finds what the resume kept: {r.stderr}')
    # ... and a resume with --verify-kept reads it back, reports it and makes it again
    os.unlink(os.path.join(outs[3], 'manifest.json'))
    r = mpi(2, [job, '--out', outs[3], '--quiet', '--verify-kept'])
    check(r.returncode == 0 and 'shard-000002.h5: /targets: checksum mismatch' in r.stderr and
          'making the shard again' in r.stderr and same(ref, arrays(outs[3])),
          f'resume --verify-kept repairs a damaged shard: {r.stderr}')
    # a shard whose claims fail (a truncated copy: HDF5 will not open it;
    # another job's shard under this name) is made again by a plain resume
    other = os.path.join(outs[3], 'shards', 'shard-000003.h5')
    os.truncate(shard, os.path.getsize(shard) // 2)
    with h5py.File(other, 'r+') as h:
        fp = h.attrs['job_fingerprint']
        h.attrs.modify('job_fingerprint', np.uint32(fp ^ 1))
    os.unlink(os.path.join(outs[3], 'manifest.json'))
    r = mpi(2, [job, '--out', outs[3], '--quiet'])
    check(r.returncode == 0 and 'shard-000002.h5: not a readable HDF5 file' in r.stderr and
          'shard-000003.h5: made by a different job' in r.stderr and same(ref, arrays(outs[3])),
          f'a resume remakes a truncated shard and another job\'s: {r.stderr}')
    os.unlink(os.path.join(outs[3], 'shards', 'shard-000004.h5'))
    r = subprocess.run([COEMU, 'verify', outs[3]], capture_output=True, text=True)
    check(r.returncode == 1 and 'shard-000004.h5' in r.stderr, 'verify finds a missing shard')
    # under mpirun the ranks share the shards: the same findings, one summary
    for k in (2, 3):
        r = subprocess.run([MPIEXEC, '--allow-run-as-root', '--oversubscribe', '-n', str(k), COEMU,
                            'verify', outs[3]], capture_output=True, text=True, timeout=120)
        check(r.returncode != 0 and
              sum('shard-000004.h5' in line for line in r.stderr.splitlines()) == 1 and
              r.stderr.count('1 problem (listed above)') == 1, f'verify on {k} ranks: {r.stderr}')
        r = subprocess.run([MPIEXEC, '--allow-run-as-root', '--oversubscribe', '-n', str(k), COEMU,
                            'verify', outs[2]], capture_output=True, text=True, timeout=120)
        check(r.returncode == 0 and r.stdout.count('ok: every shard matches') == 1,
              f'verify of a good dataset on {k} ranks: {r.stdout} {r.stderr}')

    # a different job into the same directory is refused
    other = os.path.join(tmp, 'other.yaml')
    open(other, 'w').write(JOB.replace('seed: 99', 'seed: 98'))
    # --check refuses it as the run does, with the run's message (before it
    # said ok, and the run was refused only once nodes were allocated)
    rc = subprocess.run([TESTGEN, other, '--check', '--out', outs[1]], capture_output=True, text=True)
    r = mpi(1, [other, '--out', outs[1], '--quiet'])
    check(r.returncode != 0 and 'different job' in r.stderr, f'different job refused: {r.stderr}')
    msg = r.stderr[r.stderr.index(outs[1] + ': holds the dataset'):].split('\n')[0]
    check(rc.returncode == 1 and ': ok: ' not in rc.stdout and msg in rc.stderr,
          f'--check refuses a different job\'s dataset with the run\'s message: {rc.stdout} {rc.stderr}')
    # the remedy the message names: the dataset's own job resumes it
    mine = os.path.join(outs[1], 'job.yaml')
    check(f'`coemu generate {mine} --out {outs[1]}`' in r.stderr, f'the remedy named: {r.stderr}')
    r = mpi(1, [mine, '--out', outs[1], '--quiet'])
    check(r.returncode == 0 and same(ref, arrays(outs[1])), f'its own job.yaml resumes it: {r.stderr}')

    # kills at random moments, then resume: same data
    rnd = random.Random(7)
    for trial, ranks in enumerate((2, 3)):
        out = os.path.join(tmp, f'kill{trial}')
        for attempt in range(2):
            cmd = [MPIEXEC, '--allow-run-as-root', '--oversubscribe', '-n', str(ranks), TESTGEN,
                   job, '--out', out, '--quiet']
            env = dict(os.environ, COEMU_TEST_DELAY_MS='40')
            p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
            time.sleep(rnd.uniform(0.6, 1.4))
            if attempt == 1 and trial == 1:
                # kill one rank only: mpirun must take the others down
                kids = [int(l.split()[0]) for l in subprocess.run(
                    ['ps', '-o', 'pid=', '--ppid', str(p.pid)], capture_output=True,
                    text=True).stdout.split()]
                if kids:
                    os.kill(kids[-1], signal.SIGKILL)
            else:
                os.killpg(p.pid, signal.SIGKILL)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                check(False, 'a killed run hung')
        if os.path.exists(os.path.join(out, 'manifest.json')):
            man = json.load(open(os.path.join(out, 'manifest.json')))
            check(len(man['shards']) == M * D // S, 'manifest only when complete')
        sd = os.path.join(out, 'shards')
        done = len([f for f in os.listdir(sd) if f.endswith('.h5')]) if os.path.isdir(sd) else 0
        r = mpi(ranks, [job, '--out', out])
        check(r.returncode == 0, f'resume after kills: {r.stderr}')
        if 'is finished' in r.stderr:  # the last run ended before its kill
            check(done == M * D // S, f'finished only with every shard ({done}): {r.stderr}')
        else:
            check(f'({M * D // S - done} made now, {done} kept from an earlier run)' in r.stderr,
                  f'resume makes only the unfinished shards ({done} were done): {r.stderr}')
        check(same(ref, arrays(out)), f'kill trial {trial}: identical after resume')
        check(not [f for f in os.listdir(os.path.join(out, 'shards')) if '.tmp.' in f],
              'no temporary files left')

    # a rerun of the finished job: nothing made, read or rewritten
    def mtimes(d):
        return {f: os.stat(os.path.join(d, f)).st_mtime_ns
                for f in ['manifest.json', 'dataset.h5'] +
                [os.path.join('shards', x) for x in os.listdir(os.path.join(d, 'shards'))]}
    before = mtimes(out)
    r = mpi(ranks, [job, '--out', out])
    check(r.returncode == 0 and f'is finished: {M * D} samples in {M * D // S} shards' in r.stderr
          and 'with /stats' in r.stderr and 'made now' not in r.stderr and mtimes(out) == before,
          f'rerun of a finished job: nothing made or rewritten: {r.stderr}')
    # ... but its /stats, when missing (a run ended before it), is computed
    stats_ref = h5_group_bytes(os.path.join(out, 'dataset.h5'), 'stats')
    with h5py.File(os.path.join(out, 'dataset.h5'), 'r+') as h:
        del h['stats']
    r = mpi(ranks, [job, '--out', out])
    check(r.returncode == 0 and 'has no /stats yet' in r.stderr and h5_group_bytes(os.path.join(out, 'dataset.h5'), 'stats') == stats_ref,
          f'rerun of a finished job without /stats: /stats computed, the same: {r.stderr}')
    # a manifest of another fingerprint (another coemu's reading of the same
    # job.yaml) is no finished dataset of this job: the rerun resumes
    mpath = os.path.join(out, 'manifest.json')
    man = open(mpath).read()
    fp = json.loads(man)['job_fingerprint']
    open(mpath, 'w').write(man.replace(fp, '%08x' % (int(fp, 16) ^ 1)))
    r = mpi(ranks, [job, '--out', out])
    check(r.returncode == 0 and 'is finished' not in r.stderr and open(mpath).read() == man,
          f'a manifest of another fingerprint: resumed, the manifest written again: {r.stderr}')
    # a rerun that keeps every shard but finds no manifest (a run ended
    # after its last shard) makes nothing: its rate line says so (not the
    # kept samples over the time of the resume checks), nor does its
    # progress line (0/s, no ETA), and the last progress line is printed once
    os.unlink(os.path.join(out, 'manifest.json'))
    r = mpi(ranks, [job, '--out', out])
    final = [l for l in r.stderr.splitlines() if f': {M * D}/{M * D} samples (100.0%)' in l]
    check(r.returncode == 0 and f'(0 made now, {M * D // S} kept from an earlier run)' in r.stderr
          and f'({ranks} ranks, no sample made now)' in r.stderr and 'samples/s)' not in r.stderr
          and len(final) == 1 and '(100.0%)  0/s  ' in final[0],
          f'rerun of a finished job: {final} {r.stderr}')

    # a model that cannot be read: stop, naming it; or skip when the job says so
    out = os.path.join(tmp, 'bad-model')
    r = mpi(2, [job, '--out', out, '--quiet'], env={'COEMU_TEST_FAIL_MODEL': '4'})
    check(r.returncode != 0 and 'rank' in r.stderr and 'model 4 (synth-3-000004)' in r.stderr and
          'cannot read' in r.stderr, f'bad model stops the job: {r.stderr}')
    check(not os.path.exists(os.path.join(out, 'manifest.json')), 'no manifest after failure')
    skip = os.path.join(tmp, 'skip.yaml')
    open(skip, 'w').write(JOB.replace('seed: 3}', 'seed: 3}\n  on_bad_model: skip'))
    out = os.path.join(tmp, 'skip')
    r = mpi(2, [skip, '--out', out, '--quiet'], env={'COEMU_TEST_FAIL_MODEL': '4'})
    a = arrays(out) if r.returncode == 0 else None
    check(r.returncode == 0 and 'skipped' in r.stderr and
          json.load(open(os.path.join(out, 'manifest.json')))['skipped_models'] == [4] and
          list(a['valid']) == [0 if i // D == 4 else 1 for i in range(M * D)] and
          not a['targets'][16:20].any() and np.array_equal(a['targets'][:16], ref['targets'][:16]),
          f'bad model skipped and reported: {r.stderr}')

    # a file-size limit (a full disk) fails cleanly; the same command resumes
    out = os.path.join(tmp, 'fsize')
    # below one shard (~15.7 KB in HDF5 1.10's format, since shards carry
    # checksummed metadata) and above job.yaml and plan.json (< 300 B)
    lim = 10_000

    r = mpi(1, [job, '--out', out, '--quiet'], env={'COEMU_TEST_FSIZE': str(lim)})
    check(r.returncode != 0 and 'File too large' in r.stderr and 'shard-' in r.stderr,
          f'file-size limit fails cleanly: {r.stderr}')
    check('file-size limit' in r.stderr and 'free space' not in r.stderr,
          f'EFBIG is called a file-size limit, not a full disk: {r.stderr}')
    check(not os.path.exists(os.path.join(out, 'manifest.json')) and
          not [f for f in os.listdir(os.path.join(out, 'shards'))], 'nothing partial left')
    r = mpi(1, [job, '--out', out, '--quiet'])
    check(r.returncode == 0 and same(ref, arrays(out)), f'resume after the limit: {r.stderr}')


if __name__ == '__main__':
    sys.exit(main())
