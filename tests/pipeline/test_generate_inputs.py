"""test_generate_inputs.py - what a new user meets first with `coemu generate`
(issue 15, "Broken"), end to end with the real coemu and small synthetic jobs:

- output.store_inputs false (an images-only dataset): generate, stats (the
  same /stats as with inputs: the cubes are rebuilt), verify, inspect, serve
  (the rebuilt inputs equal the stored ones), the outlier rule;
- output.inputs_dtype float64: generate, stats (the same /stats as float32,
  bit for bit), the stream (serve) carries the float64 values as float32;
- --check reads the input files (LAMDA, transition, AMRVAC headers, units
  sidecars), names the job key's line:column, and estimates samples, disk
  and time; a failed start leaves no folder; a folder left by a failed start
  of another job is taken over; a finished dataset of another job is refused;
- the embedded default job and builtin:co.dat work from any folder;
- under MPI a user error prints one message and no MPI_ABORT banner, for an
  error every rank meets and for one rank's failure (the testgen producer);
- stats: per-split groups (/stats_validation never replaces /stats), words
  explained, mostly-empty targets counted (threshold stated) in stats and
  inspect.
Prints "N passed, N failed"."""
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

COEMU = os.environ['COEMU']
TESTGEN = os.environ['COEMU_TESTGEN']
MPIEXEC = os.environ.get('COEMU_MPIEXEC', 'mpiexec')
ROOT = os.environ['COEMU_SOURCE_ROOT']
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.join(ROOT, 'pipeline', 'stream'))
from pycheck import check, report, sanitizer_full_stacks, wait_bound  # noqa: E402
import coemu_stream as cs  # noqa: E402

sanitizer_full_stacks()

# 2 synthetic models (2 AMR levels) x 3 directions, 16^3 cubes, 7 channels
JOB = """name: {name}
inputs:
  synth: {{count: 2, seed: 1, levels: 2}}
sampling: {{directions: 3, n: 16, seed: 5}}
line: {{lamda: builtin:co.dat, transition: 2}}
output: {{directory: {name}-out, samples_per_shard: 2{extra}}}
splits: {{train: 0.5, validation: 0.5, test: 0.0, seed: 1}}
"""


def job(tmp, name, extra='', text=None):
    p = os.path.join(tmp, name + '.yaml')
    open(p, 'w').write(text if text is not None else JOB.format(name=name, extra=extra))
    return p


def run(args, cwd, **kw):
    if os.environ.get('COEMU_SANITIZE') and args[0] in ('generate', 'stats') and 'env' not in kw:
        # MPI processes run without leak checks, as tests/mpirun.sh says why
        # (LeakSanitizer's tracer also dies among Open MPI's threads there)
        env = dict(os.environ)
        env['ASAN_OPTIONS'] = env.get('ASAN_OPTIONS', '') + ':detect_leaks=0'
        kw['env'] = env
    return subprocess.run([COEMU] + args, capture_output=True, text=True, cwd=cwd, timeout=300,
                          **kw)


def mpi(n, exe, args, cwd, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([MPIEXEC, '--allow-run-as-root', '--oversubscribe', '-n', str(n), exe] +
                          args, capture_output=True, text=True, cwd=cwd, env=e, timeout=300)


def errors(stderr):
    return [l for l in stderr.splitlines() if ' error: ' in l]


def ln_intensity(tg):
    """stats/transforms.h: zeros -> the sample's smallest positive value, ln in
    double rounded to float32, max(t, -40) (7 channels: minmax mode)."""
    t = tg.astype(np.float32).ravel().copy()
    pos = t[t > 0]
    if pos.size:
        t[t == 0] = pos.min()
    with np.errstate(divide='ignore'):
        x = np.log(t.astype(np.float64)).astype(np.float32)
    return np.maximum(x, np.float32(-40))


def stats_attrs(h5, group):
    with h5py.File(h5, 'r') as h:
        if group not in h:
            return None
        g = h[group]
        out = {k: g.attrs[k] for k in g.attrs}
        for f in g:
            out.update({f'{f}.{k}': g[f].attrs[k] for k in g[f].attrs})
        return out


def same_attrs(a, b, skip=()):
    if a is None or b is None or set(a) != set(b):
        return False
    for k in a:
        if k in skip:
            continue
        x, y = a[k], b[k]
        if isinstance(x, (bytes, str)) or isinstance(y, (bytes, str)):
            if x != y:
                return False
        elif not (np.array_equal(x, y) or (np.isnan(x) and np.isnan(y))):
            return False
    return True


def stream_all(d, tmp):
    """Split 'all' once through coemu serve: {id: (inputs, targets)}, error text."""
    ep = f'ipc://{tmp}/s-{time.monotonic_ns()}.sock'
    p = subprocess.Popen([COEMU, 'serve', d, '--endpoint', ep, '--split', 'all', '--batch', '2',
                          '--epochs', '1', '--heartbeat', '0.2'], stderr=subprocess.PIPE, text=True)
    got, err = {}, ''
    try:
        wait_bound(p, ep)
        if p.poll() is None:
            c = cs.StreamClient(ep, rank=0, world=1, timeout_s=20, heartbeat_s=0.2)
            try:
                for ch in c.iter_epoch():
                    for k, i in enumerate(ch.ids):
                        got[int(i)] = (ch.inputs[k].copy(), ch.targets[k].copy())
            finally:
                c.close()
    finally:
        p.terminate()
        try:
            err = p.communicate(timeout=20)[1]
        except subprocess.TimeoutExpired:
            p.kill()
            err = p.communicate()[1]
    return got, err


def section(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        check(False, f'{fn.__name__}: {type(e).__name__}: {e}')
        return None


def main():
    tmp = tempfile.mkdtemp(prefix='coemu-geninputs-')
    try:
        # each part on its own: an exception fails that part, the rest still run
        base = section(test_dtypes, tmp)
        section(test_check, tmp)
        section(test_folders, tmp)
        section(test_mpi, tmp)
        section(test_stats_splits, tmp, base or os.path.join(tmp, 'f32-out'))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report()


def test_dtypes(tmp):
    # the float32 reference, then float64 inputs and no inputs (same samples)
    ref = job(tmp, 'f32')
    r = run(['generate', ref, '--quiet'], tmp)
    check(r.returncode == 0, f'float32 job: {r.stderr}')
    f32 = os.path.join(tmp, 'f32-out')

    f64job = job(tmp, 'f64', ', inputs_dtype: float64')
    r = run(['generate', f64job, '--quiet'], tmp)
    check(r.returncode == 0, f'inputs_dtype float64: generate + stats succeed: {r.stderr}')
    f64 = os.path.join(tmp, 'f64-out')
    with h5py.File(os.path.join(f32, 'dataset.h5'), 'r') as a, \
            h5py.File(os.path.join(f64, 'dataset.h5'), 'r') as b:
        check(b['inputs'].dtype == np.float64 and a['inputs'].dtype == np.float32,
              'float64 inputs stored as float64')
        # the producer makes float32; float64 storage holds them exactly
        check(np.array_equal(b['inputs'][()].astype(np.float32), a['inputs'][()]) and
              np.array_equal(b['inputs'][()], a['inputs'][()].astype(np.float64)) and
              np.array_equal(b['targets'][()], a['targets'][()]), 'the same samples, exactly')
    # the statistics read the float64 inputs as float32: the same /stats, bit
    # for bit (ranks and timings aside)
    check(same_attrs(stats_attrs(os.path.join(f32, 'dataset.h5'), 'stats'),
                     stats_attrs(os.path.join(f64, 'dataset.h5'), 'stats')),
          'float64 inputs: /stats equal to the float32 dataset\'s')
    r = run(['verify', f64], tmp)
    check(r.returncode == 0, f'verify float64: {r.stdout} {r.stderr}')
    got, err = stream_all(f64, tmp)
    with h5py.File(os.path.join(f64, 'dataset.h5'), 'r') as h:
        inp, tg = h['inputs'][()], h['targets'][()]
    check(len(got) == 6 and all(np.array_equal(got[i][0], inp[i].astype(np.float32)) and
                                np.array_equal(got[i][1], tg[i]) for i in got),
          f'serve streams the float64 inputs as float32: {len(got)} samples {err[-300:]}')

    # output.store_inputs false: an images-only dataset (docs/dataset-format.md,
    # "Images-only datasets"): no /inputs stored; readers rebuild them, so
    # /stats, serve and the outlier rule see the same cubes as the float32 job
    # (test_images_only.py tests the format, the faults and the stream)
    noin = job(tmp, 'noin', ', store_inputs: false')
    r = run(['generate', noin, '--quiet'], tmp)
    check(r.returncode == 0, f'store_inputs false: generate + stats succeed: {r.stderr}')
    d = os.path.join(tmp, 'noin-out')
    h5 = os.path.join(d, 'dataset.h5')
    with h5py.File(h5, 'r') as h:
        check('inputs' not in h and 'stats' in h, 'no /inputs, a /stats')
    check(same_attrs(stats_attrs(os.path.join(f32, 'dataset.h5'), 'stats'), stats_attrs(h5, 'stats')),
          'images-only: /stats (input fields from the rebuilt cubes) equal to the float32 dataset\'s')
    r = run(['verify', d], tmp)
    check(r.returncode == 0, f'verify without inputs: {r.stdout} {r.stderr}')
    r = run(['inspect', d], tmp)
    check(r.returncode == 0 and 'images-only' in r.stdout, f'inspect: {r.stdout} {r.stderr}')
    got, err = stream_all(d, tmp)
    with h5py.File(os.path.join(f32, 'dataset.h5'), 'r') as h:
        inp, tg = h['inputs'][()], h['targets'][()]
    check(len(got) == 6 and all(np.array_equal(got[i][0], inp[i]) and np.array_equal(got[i][1], tg[i])
                                for i in got),
          f'serve streams the rebuilt inputs, equal to the stored ones: {len(got)} samples {err[-300:]}')
    r = run(['stats', d, '--drop-outliers'], tmp)
    check(r.returncode == 0, f'--drop-outliers reads the rebuilt inputs: {r.stderr}')
    ok = job(tmp, 'noin-outl', text=JOB.format(name='noin-outl', extra=', store_inputs: false') +
             'statistics: {drop_outliers: true}\n')
    r = run(['generate', ok, '--check'], tmp)
    check(r.returncode == 0, f'drop_outliers with an images-only dataset is accepted: {r.stderr}')
    return f32


def test_check(tmp):
    # --check: the estimate
    j = job(tmp, 'chk')
    r = run(['generate', j, '--check'], tmp)
    check(r.returncode == 0 and ': ok: ' in r.stdout and '6 samples' in r.stdout and
          'disk:' in r.stdout and 'time:' in r.stdout and 'CO J=2-1, 230.5380000 GHz (LAMDA transition 2)' in r.stdout,
          f'--check estimates: {r.stdout} {r.stderr}')
    m = re.search(r'disk: ([0-9.]+) KiB per sample', r.stdout)
    # 3 x 16^3 + 7 x 16^2 float32 + 66 bytes of per-sample arrays = 55.06 KiB,
    # printed to 3 significant digits (half a unit of the last: 0.05 KiB)
    want = (3 * 16**3 * 4 + 7 * 16**2 * 4 + 66) / 1024
    check(m and abs(float(m.group(1)) - want) <= 0.05, f'per-sample bytes: {r.stdout}')
    check(not os.path.exists(os.path.join(tmp, 'chk-out')), '--check creates nothing')

    # a missing LAMDA file: --check fails naming job:line:col and the key
    text = JOB.format(name='nolamda', extra='').replace('builtin:co.dat', './lamda/c0.dat')
    j = job(tmp, 'nolamda', text=text)
    r = run(['generate', j, '--check'], tmp)
    check(r.returncode == 1 and 'nolamda.yaml:5:' in r.stderr and 'line.lamda' in r.stderr and
          'c0.dat' in r.stderr and 'ok' not in r.stdout, f'--check: missing LAMDA: {r.stderr}')
    r = run(['generate', j, '--quiet'], tmp)
    check(r.returncode == 1 and 'nolamda.yaml:5:' in r.stderr and len(errors(r.stderr)) == 1,
          f'generate: missing LAMDA: {r.stderr}')
    check(not os.path.exists(os.path.join(tmp, 'nolamda-out')), 'a failed start leaves no folder')
    # the corrected job runs in the same folder
    j = job(tmp, 'nolamda', text=JOB.format(name='nolamda', extra=''))
    r = run(['generate', j, '--quiet'], tmp)
    check(r.returncode == 0, f'the corrected job: {r.stderr}')

    # a transition the file does not have
    j = job(tmp, 'badtr', text=JOB.format(name='badtr', extra='').replace('transition: 2',
                                                                           'transition: 9999'))
    r = run(['generate', j, '--check'], tmp)
    check(r.returncode == 1 and 'badtr.yaml:5:' in r.stderr and '9999' in r.stderr,
          f'--check: bad transition: {r.stderr}')

    # AMRVAC inputs: headers and units sidecars are read
    am = os.path.join(tmp, 'amr')
    os.makedirs(am)
    src = os.path.join(ROOT, 'tests', 'data', 'amrvac')
    for f in ('agbwind3d_0000.dat', 'agbwind3d_0001.dat'):
        shutil.copy(os.path.join(src, f), am)
    shutil.copy(os.path.join(src, 'agbwind3d_0000.units.yaml'), am)
    amr = ("name: amr\ninputs:\n  amrvac: {glob: 'amr/*.dat'}\nsampling: {directions: 2, n: 16}\n"
           "line: {lamda: builtin:co.dat}\noutput: {directory: amr-out}\n")
    j = job(tmp, 'amr', text=amr)
    r = run(['generate', j, '--check'], tmp)
    check(r.returncode == 1 and 'amr.yaml:3:' in r.stderr and 'inputs.amrvac.glob' in r.stderr and
          'agbwind3d_0001.dat' in r.stderr and 'units' in r.stderr,
          f'--check: a missing units sidecar: {r.stderr}')
    shutil.copy(os.path.join(src, 'agbwind3d_0001.units.yaml'), am)
    r = run(['generate', j, '--check'], tmp)
    check(r.returncode == 0 and 'header' in r.stdout, f'--check: AMRVAC ok: {r.stdout} {r.stderr}')
    open(os.path.join(am, 'agbwind3d_0002.dat'), 'w').write('not an AMRVAC file\n')
    shutil.copy(os.path.join(src, 'agbwind3d_0001.units.yaml'),
                os.path.join(am, 'agbwind3d_0002.units.yaml'))
    r = run(['generate', j, '--check'], tmp)
    check(r.returncode == 1 and 'amr.yaml:3:' in r.stderr and 'agbwind3d_0002.dat' in r.stderr,
          f'--check: an unreadable header: {r.stderr}')
    r = run(['generate', j, '--quiet'], tmp)
    check(r.returncode == 1 and not os.path.exists(os.path.join(tmp, 'amr-out')),
          f'generate: an unreadable header, no folder: {r.stderr}')
    units = amr.replace("glob: 'amr/*.dat'", "glob: 'amr/*.dat', units: amr/none.yaml")
    j = job(tmp, 'amru', text=units)
    r = run(['generate', j, '--check'], tmp)
    check(r.returncode == 1 and 'amru.yaml:3:' in r.stderr and 'inputs.amrvac.units' in r.stderr
          and 'none.yaml' in r.stderr, f'--check: a missing units file: {r.stderr}')

    # the embedded default job and builtin:co.dat from a folder outside the source
    elsewhere = os.path.join(tmp, 'elsewhere')
    os.makedirs(elsewhere)
    r = run(['generate', '--check'], elsewhere)
    check(r.returncode == 0 and 'builtin:co.dat' in r.stdout and '512 samples' in r.stdout,
          f'the default job from another folder: {r.stdout} {r.stderr}')
    for name in ('demo', 'paper', 'coemunet-compat'):
        r = run(['generate', os.path.join(ROOT, 'jobs', name + '.yaml'), '--check'], elsewhere)
        check(r.returncode == 0, f'jobs/{name}.yaml --check from another folder: {r.stderr}')


def test_folders(tmp):
    # a folder an old failed start left (another job's job.yaml, empty
    # shards/, models/) is taken over; a finished dataset of another job is not
    d = os.path.join(tmp, 'left-out')
    os.makedirs(os.path.join(d, 'shards'))
    os.makedirs(os.path.join(d, 'models'))
    open(os.path.join(d, 'job.yaml'), 'w').write('name: another\n')
    open(os.path.join(d, 'models', 'synth_00000.dat'), 'w').write('stale')
    j = job(tmp, 'left')
    r = run(['generate', j, '--quiet'], tmp)
    check(r.returncode == 0 and 'failed start' in r.stderr, f'a failed start\'s folder is used: '
          f'{r.stderr}')
    check(open(os.path.join(d, 'job.yaml')).read() == open(j).read() and
          os.path.getsize(os.path.join(d, 'models', 'synth_00000.dat')) > 5,
          'this job\'s job.yaml and models')
    j2 = job(tmp, 'left', text=JOB.format(name='left', extra='').replace('seed: 5', 'seed: 6'))
    r = run(['generate', j2, '--quiet'], tmp)
    check(r.returncode == 1 and 'different job' in r.stderr, f'a dataset is kept: {r.stderr}')

    # an output folder that cannot be made (its parent is a file; the same
    # path as a read-only file system or a parent without permission): one
    # error naming it, and no warning about removing a folder never made
    open(os.path.join(tmp, 'a-file'), 'w').write('x')
    r = run(['generate', j, '--out', os.path.join(tmp, 'a-file', 'ds'), '--quiet'], tmp)
    check(r.returncode == 1 and 'a-file/ds: cannot create directory' in r.stderr and
          'could not remove' not in r.stderr and len(r.stderr.strip().splitlines()) == 1,
          f'a folder that cannot be made: {r.stderr}')

    # testgen: a producer that cannot start on one rank of 2: one message, no
    # MPI_ABORT, no folder; the same command then runs
    tj = os.path.join(tmp, 'tg.yaml')
    open(tj, 'w').write('name: tg\ninputs:\n  synth: {count: 6, seed: 3}\n'
                        'sampling: {directions: 4, n: 8, seed: 99}\nline: {lamda: builtin:co.dat}\n'
                        'output: {samples_per_shard: 2}\n')
    out = os.path.join(tmp, 'tg-open')
    r = mpi(2, TESTGEN, [tj, '--out', out, '--quiet'], tmp, {'COEMU_TEST_FAIL_OPEN': '1'})
    check(r.returncode != 0 and len(errors(r.stderr)) == 1 and 'cannot set up' in r.stderr and
          'MPI_ABORT' not in r.stderr and not os.path.exists(out),
          f'one rank cannot start: {r.returncode} {r.stderr}')


def test_mpi(tmp):
    # an error every rank meets (a bad job; a missing LAMDA file): one message
    bad = job(tmp, 'mpibad', text=JOB.format(name='mpibad', extra='').replace('n: 16', 'n: 0'))
    for what, j in (('bad job', bad),
                    ('missing LAMDA', job(tmp, 'mpilam', text=JOB.format(
                        name='mpilam', extra='').replace('builtin:co.dat', 'nope.dat')))):
        r = mpi(2, COEMU, ['generate', j, '--quiet'], tmp)
        check(r.returncode != 0 and len(errors(r.stderr)) == 1 and 'MPI_ABORT' not in r.stderr
              and 'ORTE_ERROR_LOG' not in r.stderr and '.yaml:' in r.stderr,
              f'2 ranks, {what}: one message, no abort banner: {r.returncode} {r.stderr}')
    r = mpi(2, COEMU, ['stats', os.path.join(tmp, 'nothing-here')], tmp)
    check(r.returncode != 0 and len(errors(r.stderr)) == 1 and 'MPI_ABORT' not in r.stderr,
          f'2 ranks, stats of a missing dataset: {r.stderr}')
    # one rank fails mid-run (a model that cannot be read, testgen): the other
    # ranks stop after their shard, one message, the finished shards kept
    tj = os.path.join(tmp, 'tg.yaml')
    out = os.path.join(tmp, 'tg-model')
    r = mpi(3, TESTGEN, [tj, '--out', out, '--quiet'], tmp, {'COEMU_TEST_FAIL_MODEL': '4'})
    check(r.returncode != 0 and len(errors(r.stderr)) == 1 and 'model 4' in r.stderr and
          'MPI_ABORT' not in r.stderr and 'resume' in r.stderr,
          f'a bad model on one rank of 3: {r.returncode} {r.stderr}')
    r = mpi(2, TESTGEN, [tj, '--out', out, '--quiet'], tmp)
    check(r.returncode == 0, f'the same command resumes: {r.stderr}')
    # a full disk (a file-size limit) while writing shards: HDF5 cannot close
    # the shard; the ranks still end with one message and status 1, no crash
    # in HDF5's shutdown at MPI_Finalize
    for ranks in (1, 2):
        out = os.path.join(tmp, f'tg-full{ranks}')
        r = mpi(ranks, TESTGEN, [tj, '--out', out, '--quiet'], tmp, {'COEMU_TEST_FSIZE': '3000'})
        check(r.returncode == 1 and len(errors(r.stderr)) == 1 and 'File too large' in r.stderr
              and 'Segmentation' not in r.stderr and 'signal' not in r.stderr.lower() and
              'MPI_ABORT' not in r.stderr,
              f'{ranks} rank(s), a full disk: one message, status 1: {r.returncode} {r.stderr}')


def test_stats_splits(tmp, f32):
    h5 = os.path.join(f32, 'dataset.h5')
    before = stats_attrs(h5, 'stats')
    r = run(['stats', f32, '--split', 'validation'], tmp)
    check(r.returncode == 0 and '/stats_validation' in r.stdout, f'stats validation: {r.stdout}'
          f'{r.stderr}')
    check(same_attrs(before, stats_attrs(h5, 'stats')),
          '--split validation leaves /stats (the training split\'s) as it was')
    v = stats_attrs(h5, 'stats_validation')
    check(v is not None and v['split'] in (b'validation', 'validation') and
          v['samples_used'] == 3, 'its own group /stats_validation')
    # words: the output says what its columns are
    check('median of the per-sample medians' in r.stdout and 'quantile' in r.stdout and
          'rank error' not in r.stdout and ' mom=' not in r.stdout, f'words: {r.stdout}')
    # mostly empty targets, the threshold stated, the count equal to numpy's
    with h5py.File(h5, 'r') as h:
        split, tg = h['split'][()], h['targets'][()]
    want = {s: sum(1 for i in range(len(tg)) if split[i] == s and
                   np.count_nonzero(tg[i].astype(np.float64) < math.exp(-40)) > 0.9 * tg[i].size)
            for s in (0, 1)}
    m = re.search(r'mostly empty targets: (\d+) of (\d+) samples have more than 90% of their '
                  r'pixels below I = e\^-40', r.stdout)
    check(m and int(m.group(1)) == want[1] and int(m.group(2)) == 3,
          f'stats counts mostly empty targets ({want[1]}): {r.stdout}')
    check(v['empty_targets'] == want[1] and before['empty_targets'] == want[0] and
          v['empty_fraction'] == 0.9 and v['empty_ln_level'] == -40, 'counts in the groups')
    # the share of all pixels x channels below the clip (a ratio of integer counts: exact)
    below = {s: sum(np.count_nonzero(tg[i].astype(np.float64) < math.exp(-40))
                    for i in range(len(tg)) if split[i] == s) /
                (sum(1 for i in range(len(tg)) if split[i] == s) * tg[0].size) for s in (0, 1)}
    check(abs(v['pixels_below_clip'] - below[1]) <= 1e-15 and
          abs(before['pixels_below_clip'] - below[0]) <= 1e-15,
          f'pixels_below_clip {v["pixels_below_clip"]}, {before["pixels_below_clip"]}: {below}')
    check(f'pixels below the clip: {100 * below[1]:.1f}%' in r.stdout, f'printed: {r.stdout}')
    r = run(['inspect', f32], tmp)
    check(r.returncode == 0 and f'/stats: split train, 3 samples' in r.stdout and
          f'{want[0]} mostly empty (> 90% of pixels below I = e^-40' in r.stdout and
          f'/stats_validation: split validation, 3 samples; {want[1]} mostly empty' in r.stdout,
          f'inspect reports mostly empty targets: {r.stdout}')
    # the training split recomputed: /stats again (the same numbers)
    r = run(['stats', f32, '--split', 'train', '--quiet'], tmp)
    check(r.returncode == 0 and same_attrs(before, stats_attrs(h5, 'stats')),
          '--split train rewrites /stats with the same numbers')


if __name__ == '__main__':
    sys.exit(main())
