"""test_generate_signals.py - wall-time limits of `coemu generate`
(docs/jobs.md, "Wall-time limits"): SIGTERM/SIGINT stop at once (the shard
being made is abandoned, its temporary file removed, unless its last sample
was already under way), SIGUSR1 finishes the shard being made; every rank
stops, the command exits with 3, nothing partial is left, and rerunning the
same command resumes to a dataset byte-identical to an uninterrupted run
(every shard and manifest.json; dataset.h5's datasets and attributes, its
group headers holding HDF5 timestamps).  The analytic producer of
tests/pipeline/testgen.c sends the signal itself at a chosen sample
(COEMU_TEST_SIGNAL) for stops at known places: at a shard boundary and
mid-shard; a last case signals every rank from outside mid-run, as Slurm
does at the time limit, and another signals ranks already stopping.  After
the last shard, signals while the run writes manifest.json, dataset.h5,
preview.png and /stats (COEMU_TEST_FINISH_SIGNAL / _PAUSE) stop it there
too (exit 3, nothing partial) and the rerun writes what is missing; the
temporaries a killed run leaves in OUT/models are removed by the rerun.
Prints "N passed, N failed"."""
import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

TESTGEN = os.environ['COEMU_TESTGEN']
MPIEXEC = os.environ.get('COEMU_MPIEXEC', 'mpiexec')
M, D, N, S = 6, 4, 16, 4          # 24 samples, 6 shards of 4
# samples slow enough (30 ms) that the rank not signalled cannot make every
# other shard (>= 360 ms) before the signalled one has told rank 0 (one sample)
SLOW = {'COEMU_TEST_DELAY_MS': '30'}
JOB = f"""name: signal-test
inputs:
  synth: {{count: {M}, seed: 3}}
sampling: {{directions: {D}, n: {N}, seed: 99}}
line: {{lamda: builtin:co.dat}}
output: {{samples_per_shard: {S}}}
splits: {{train: 0.5, validation: 0.25, test: 0.25, seed: 2}}
"""

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, mpi_singleton_env, run_in_tmpdir  # noqa: E402


def cmd(ranks, job, out):
    return [MPIEXEC, '--allow-run-as-root', '--oversubscribe', '-n', str(ranks), TESTGEN, job,
            '--out', out]


def run(ranks, job, out, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(cmd(ranks, job, out), capture_output=True, text=True, env=e, timeout=120)


def shard_files(out):
    d = os.path.join(out, 'shards')
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def finished(out):
    return [f for f in shard_files(out) if f.endswith('.h5')]


def temporaries(out):
    return [f for f in shard_files(out) if '.tmp' in f]


def h5_content(path):
    """Every dataset's values and every attribute of dataset.h5, by name
    (its group headers carry HDF5 timestamps, so its bytes differ by those)."""
    items = {}
    with h5py.File(path, 'r') as h:
        def visit(name, obj):
            items[name + '@attrs'] = {k: repr(v) for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                items[name] = obj[()].tobytes() if obj.dtype.kind != 'O' else repr(obj[()])
        visit('/', h)
        h.visititems(visit)
    return items


def identical(ref, out):
    """Every shard and manifest.json byte for byte, dataset.h5's content."""
    names = ['manifest.json'] + ['shards/' + f for f in finished(ref)]
    bad = [n for n in names if not os.path.exists(os.path.join(out, n)) or
           not filecmp.cmp(os.path.join(ref, n), os.path.join(out, n), shallow=False)]
    if not os.path.exists(os.path.join(out, 'dataset.h5')) or \
            h5_content(os.path.join(ref, 'dataset.h5')) != h5_content(os.path.join(out, 'dataset.h5')):
        bad.append('dataset.h5 (content)')
    return bad + [f for f in finished(out) if f not in finished(ref)]


def rank_pids(p):
    """The ranks mpirun (process p) started: its descendants that run the
    test binary (Open MPI's mpiexec starts them itself, MPICH's Hydra through
    a hydra_pmi_proxy per node, which does not pass SIGTERM on)."""
    children = {}
    for line in subprocess.run(['ps', '-e', '-o', 'pid=,ppid=,comm='], capture_output=True,
                               text=True).stdout.splitlines():
        pid, ppid, comm = line.split(None, 2)
        children.setdefault(int(ppid), []).append((int(pid), comm))
    ranks, todo = [], [p.pid]
    while todo:
        for pid, comm in children.get(todo.pop(), []):
            todo.append(pid)
            if os.path.basename(TESTGEN).startswith(comm):  # comm: at most 15 characters
                ranks.append(pid)
    return ranks


def wait_signalled(p, what):
    """stderr of a signalled run once it exits; a run still there after 60 s
    is killed and counted as hung."""
    try:
        return p.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        err = p.communicate()[1]
        check(False, f'{what}: the run hung')
        return err


def stopped_cleanly(r, out, what):
    """Exit 3, said so, nothing partial: no temporary, no manifest, no dataset.h5."""
    check(r.returncode == 3, f'{what}: exit status {r.returncode}, expected 3: {r.stderr[-1500:]}')
    check('stopped by SIG' in r.stderr and 'rerun the same command to resume' in r.stderr,
          f'{what}: says it stopped and how to resume: {r.stderr[-1500:]}')
    check(not temporaries(out), f'{what}: no temporary shard left: {temporaries(out)}')
    check(not os.path.exists(os.path.join(out, 'manifest.json')) and
          not os.path.exists(os.path.join(out, 'dataset.h5')),
          f'{what}: no manifest or dataset.h5 for an unfinished dataset')


def resumes(ranks, job, out, ref, what):
    made_before = len(finished(out))
    r = run(ranks, job, out)
    check(r.returncode == 0, f'{what}: resume: {r.stderr[-1500:]}')
    check(f'({M * D // S - made_before} made now, {made_before} kept from an earlier run)'
          in r.stderr, f'{what}: the resume kept the {made_before} finished shards: '
                       f'{r.stderr[-800:]}')
    bad = identical(ref, out)
    check(not bad, f'{what}: byte-identical to the uninterrupted run (differs: {bad})')


def all_temporaries(out):
    """Every temporary (NAME.tmp.PID) in OUT, OUT/shards and OUT/models."""
    found = []
    for sub in ('', 'shards', 'models'):
        d = os.path.join(out, sub)
        if os.path.isdir(d):
            found += [os.path.join(sub, f) for f in os.listdir(d) if '.tmp.' in f]
    return found


def has_stats(out):
    p = os.path.join(out, 'dataset.h5')
    if not os.path.exists(p):
        return False
    with h5py.File(p, 'r') as h:
        return 'stats' in h


def stopped_finishing(r, out, what, written, signalled):
    """A run stopped in its finishing steps: exit 3 on every rank (mpirun's
    status), said so with what is left, each signalled rank names its
    signal; the files under their final names are exactly `written` (of
    manifest.json, dataset.h5, preview.png, stats) and no temporary is left."""
    check(r.returncode == 3, f'{what}: exit status {r.returncode}, expected 3: {r.stderr[-1500:]}')
    check('stopped by a signal after every shard was made' in r.stderr and
          'rerun the same command to resume' in r.stderr,
          f'{what}: says it stopped and how to resume: {r.stderr[-1500:]}')
    for rank, sig in signalled:
        check(f'rank {rank}: stopped by SIG{sig}' in r.stderr,
              f'{what}: rank {rank} names SIG{sig}: {r.stderr[-800:]}')
    got = [f for f in ('manifest.json', 'dataset.h5', 'preview.png')
           if os.path.exists(os.path.join(out, f))] + (['stats'] if has_stats(out) else [])
    check(got == written, f'{what}: written {got}, expected {written}')
    check(not all_temporaries(out), f'{what}: no temporary left: {all_temporaries(out)}')
    check(len(finished(out)) == M * D // S, f'{what}: every shard kept: {finished(out)}')


def finishes(ranks, job, out, ref, what, resumed):
    """The rerun of a run stopped while finishing: makes no shard, writes
    what is missing (preview.png and /stats included), equal to the
    uninterrupted run. resumed: dataset.h5 was missing, so the rerun is a
    resume that keeps every shard; else a rerun of a finished dataset."""
    r = run(ranks, job, out)
    check(r.returncode == 0, f'{what}: rerun: {r.stderr[-1500:]}')
    said = f'(0 made now, {M * D // S} kept from an earlier run)' if resumed else 'is finished'
    check(said in r.stderr, f'{what}: the rerun makes no shard ({said!r}): {r.stderr[-800:]}')
    check(os.path.exists(os.path.join(out, 'preview.png')) and has_stats(out),
          f'{what}: the rerun writes preview.png and /stats: {os.listdir(out)}')
    check(not all_temporaries(out), f'{what}: no temporary after the rerun: {all_temporaries(out)}')
    bad = identical(ref, out)
    check(not bad, f'{what}: equal to the uninterrupted run (differs: {bad})')


def term_every_rank_at(args, env, marker, what, where):
    """Start the 2-rank run `args`, wait until both ranks have printed
    `marker` (a test hook holds them there), send each SIGTERM from outside
    (as Slurm does at the limit); its stderr and the process, once ended."""
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    lines, seen = [], 0
    t0 = time.time()
    while seen < 2 and time.time() - t0 < 60:
        line = p.stderr.readline()
        if not line:
            break
        lines.append(line)
        seen += marker in line
    check(seen == 2, f'{what}: {where}: {lines[-8:]}')
    for pid in rank_pids(p):
        os.kill(pid, signal.SIGTERM)
    return ''.join(lines) + wait_signalled(p, what), p


def finishing_signals(tmp, job, ref):
    """Signals after the last shard, while the run writes manifest.json and
    dataset.h5, preview.png and /stats (minutes at the paper's size; /stats
    12 minutes on 64 ranks): the step under way is finished and the run
    stops before the next one (or between reads of /stats) on every rank,
    exit 3, nothing partial under a final name; the rerun writes what is
    missing. Before, SIGTERM/SIGINT killed the ranks there (143/130: no
    requeue, a dataset.h5.tmp.PID or preview.png.tmp.PID left, and a rerun
    never made preview.png). SIGUSR1 asks to finish: the run finishes. testgen's
    COEMU_TEST_FINISH_SIGNAL signals a rank as a step begins."""
    cases = [
        # rank 0 is told before it writes anything: nothing is written, the
        # rerun is a resume that keeps every shard
        ('INT', 'dataset', 0, [], True),
        # rank 1, while rank 0 writes: rank 0 finishes its steps (it hears
        # of the stop when the ranks meet), /stats is left
        ('TERM', 'dataset', 1, ['manifest.json', 'dataset.h5', 'preview.png'], False),
        # before preview.png: the rerun of the finished dataset makes it
        ('TERM', 'preview', 0, ['manifest.json', 'dataset.h5'], False),
        # inside /stats: every rank at its first read; one rank (rank 0
        # stops at the end of its first pass of reads, where the ranks meet)
        ('TERM', 'stats', None, ['manifest.json', 'dataset.h5', 'preview.png'], False),
        ('INT', 'stats', 1, ['manifest.json', 'dataset.h5', 'preview.png'], False),
    ]
    for sig, step, rank, written, resumed in cases:
        who = 'every rank' if rank is None else f'rank {rank}'
        what = f'SIG{sig} to {who} at the finishing step {step}'
        out = os.path.join(tmp, f'fin-{sig}-{step}-{rank}')
        at = f'{sig}:{step}' + ('' if rank is None else f':{rank}')
        r = run(2, job, out, {'COEMU_TEST_FINISH_SIGNAL': at})
        stopped_finishing(r, out, what, written, [(k, sig) for k in ((0, 1) if rank is None else (rank,))])
        if step == 'preview':
            # the rerun of the finished dataset is stopped too, before its
            # preview.png, and then finishes it
            r = run(2, job, out, {'COEMU_TEST_FINISH_SIGNAL': f'{sig}:preview:0'})
            stopped_finishing(r, out, f'{what}, its rerun signalled again', written, [(0, sig)])
        if step == 'stats' and rank is None:
            # and the rerun's own /stats is stopped again
            r = run(2, job, out, {'COEMU_TEST_FINISH_SIGNAL': f'{sig}:stats'})
            stopped_finishing(r, out, f'{what}, its rerun signalled again', written,
                              [(0, sig), (1, sig)])
        finishes(2, job, out, ref, what, resumed)

    # SIGUSR1 (the early warning: finish) is not acted on after the last
    # shard: the run finishes, exit 0, as an unsignalled one; were it too
    # long, the SIGTERM at the limit would stop it (the cases above)
    for step, rank in (('dataset', 0), ('preview', 0), ('stats', None)):
        what = f'SIGUSR1 to {"every rank" if rank is None else f"rank {rank}"} at the finishing step {step}'
        out = os.path.join(tmp, f'fin-USR1-{step}')
        r = run(2, job, out, {'COEMU_TEST_FINISH_SIGNAL': f'USR1:{step}' + ('' if rank is None else f':{rank}')})
        check(r.returncode == 0 and 'stopped' not in r.stderr and all(
              os.path.exists(os.path.join(out, f)) for f in ('manifest.json', 'dataset.h5', 'preview.png')),
              f'{what}: finished, exit 0: {r.returncode} {r.stderr[-800:]}')
        finishes(2, job, out, ref, what, False)

    # From outside, as Slurm at the time limit: every rank paused as /stats
    # begins gets SIGTERM from the test
    out = os.path.join(tmp, 'fin-outside')
    env = dict(os.environ, COEMU_TEST_FINISH_PAUSE='stats:1000')
    err, p = term_every_rank_at(cmd(2, job, out), env, ': finishing stats',
                                'SIGTERM from outside in /stats', 'both ranks paused there')
    stopped_finishing(subprocess.CompletedProcess(p.args, p.returncode, '', err), out,
                      'SIGTERM from outside to every rank in /stats',
                      ['manifest.json', 'dataset.h5', 'preview.png'], [(0, 'TERM'), (1, 'TERM')])
    finishes(2, job, out, ref, 'SIGTERM from outside to every rank in /stats', False)

    # A finished dataset whose preview.png is missing (a full disk stopped
    # the run there; its /stats then too): the rerun makes it
    out = os.path.join(tmp, 'fin-nopreview')
    shutil.copytree(ref, out)
    os.remove(os.path.join(out, 'preview.png'))
    r = run(2, job, out)
    check(r.returncode == 0 and 'has no preview.png yet: making it' in r.stderr and
          os.path.exists(os.path.join(out, 'preview.png')),
          f'a finished dataset without preview.png: the rerun makes it: {r.stderr[-800:]}')


def models_swept(tmp):
    """The temporaries a kill during synthesis leaves in OUT/models
    (synth_00000.dat.tmp.PID, beside the finished models) are removed by
    the rerun, as those of shards/ are (the real coemu: testgen writes no
    models). The rerun holds the folder's lock before it sweeps, and no rank
    of it has written a model yet, so none is a live run's."""
    job = os.path.join(tmp, 'synth.yaml')
    open(job, 'w').write(JOB.replace(f'count: {M}', 'count: 2').replace(f'directions: {D}',
                                                                       'directions: 2'))
    out = os.path.join(tmp, 'synth')
    r = subprocess.run([os.environ['COEMU'], 'generate', job, '--out', out, '--quiet'],
                       capture_output=True, text=True, timeout=120, env=mpi_singleton_env())
    check(r.returncode == 0, f'synthetic job: {r.stderr[-800:]}')
    left = ['synth_00000.dat.tmp.4194301', 'synth_00001.units.yaml.tmp.4194302']
    for f in left:  # what kill -9 leaves: a model half written under a temporary name
        open(os.path.join(out, 'models', f), 'wb').write(b'\0' * 100)
    for f in ('manifest.json', 'dataset.h5'):  # so that the rerun is a resume, as after a kill
        os.remove(os.path.join(out, f))
    r = subprocess.run([os.environ['COEMU'], 'generate', job, '--out', out, '--quiet'],
                       capture_output=True, text=True, timeout=120, env=mpi_singleton_env())
    check(r.returncode == 0, f'synthetic job, rerun: {r.stderr[-800:]}')
    check(not all_temporaries(out), f'the rerun removes the models\' temporaries: '
                                    f'{all_temporaries(out)}')
    check(sorted(os.listdir(os.path.join(out, 'models'))) ==
          ['synth_00000.dat', 'synth_00000.units.yaml', 'synth_00001.dat',
           'synth_00001.units.yaml'], f'the finished models stay: {os.listdir(os.path.join(out, "models"))}')


def main():
    run_in_tmpdir('coemu-sig-', run_tests)


def run_tests(tmp):
    job = os.path.join(tmp, 'job.yaml')
    open(job, 'w').write(JOB)
    ref = os.path.join(tmp, 'ref')
    r = run(2, job, ref)
    check(r.returncode == 0 and len(finished(ref)) == M * D // S,
          f'uninterrupted run: {r.stderr[-1500:]}')

    # At a shard boundary: SIGTERM arrives while the last sample of shard 1
    # (samples 4..7) is being made: that shard is finished and kept; the
    # other rank finishes its shard; nobody starts another.
    out = os.path.join(tmp, 'boundary')
    r = run(2, job, out, {'COEMU_TEST_SIGNAL': f'TERM:{2 * S - 1}', **SLOW})
    stopped_cleanly(r, out, 'SIGTERM at a shard boundary')
    check('shard-000001.h5' in finished(out) and len(finished(out)) < M * D // S,
          f'SIGTERM at a shard boundary: shard 1 kept, not all made: {finished(out)}')
    resumes(2, job, out, ref, 'SIGTERM at a shard boundary')

    # Mid-shard, SIGTERM: shard 2 (samples 8..11) is abandoned at its second
    # sample, its temporary file removed; on one rank only, the other stops
    # after its own shard.
    out = os.path.join(tmp, 'mid-term')
    r = run(2, job, out, {'COEMU_TEST_SIGNAL': f'TERM:{2 * S + 1}', **SLOW})
    stopped_cleanly(r, out, 'SIGTERM mid-shard')
    check('shard-000002.h5' not in finished(out),
          f'SIGTERM mid-shard: the shard being made is abandoned: {finished(out)}')
    resumes(2, job, out, ref, 'SIGTERM mid-shard')

    # Mid-shard, SIGINT on one rank: as SIGTERM
    out = os.path.join(tmp, 'mid-int')
    r = run(1, job, out, {'COEMU_TEST_SIGNAL': f'INT:{3 * S + 2}'})
    stopped_cleanly(r, out, 'SIGINT mid-shard')
    check(finished(out) == [f'shard-{k:06d}.h5' for k in range(3)],
          f'SIGINT mid-shard on 1 rank: shards 0-2 kept, 3 abandoned: {finished(out)}')
    resumes(2, job, out, ref, 'SIGINT mid-shard (resumed on 2 ranks)')

    # Mid-shard, SIGUSR1: the shard being made is finished, then every rank stops
    out = os.path.join(tmp, 'mid-usr1')
    r = run(2, job, out, {'COEMU_TEST_SIGNAL': f'USR1:{2 * S + 1}', **SLOW})
    stopped_cleanly(r, out, 'SIGUSR1 mid-shard')
    check('shard-000002.h5' in finished(out) and len(finished(out)) < M * D // S,
          f'SIGUSR1 mid-shard: the shard being made is finished: {finished(out)}')
    resumes(2, job, out, ref, 'SIGUSR1 mid-shard')

    # From outside, as Slurm at the time limit: SIGTERM to every rank while
    # shards are being made (slow samples), once at least one is finished;
    # then the same again, and the resume.
    out = os.path.join(tmp, 'outside')
    for attempt in range(2):
        env = dict(os.environ, COEMU_TEST_DELAY_MS='60')
        p = subprocess.Popen(cmd(2, job, out), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        t0 = time.time()
        target = len(finished(out)) + 1
        while time.time() - t0 < 60 and not (len(finished(out)) >= target and temporaries(out)):
            time.sleep(0.02)
        check(temporaries(out), f'outside attempt {attempt}: caught a shard being made')
        for pid in rank_pids(p):
            os.kill(pid, signal.SIGTERM)
        err = wait_signalled(p, f'SIGTERM to every rank from outside, attempt {attempt}')
        stopped_cleanly(subprocess.CompletedProcess(p.args, p.returncode, '', err), out,
                        f'SIGTERM to every rank from outside, attempt {attempt}')
    resumes(2, job, out, ref, 'SIGTERM to every rank from outside')

    # A rank that is already stopping (one rank's signal stops them all) and
    # then gets its own SIGTERM, late, as Slurm's to every rank can arrive:
    # still a clean stop, exit 3 (the batch script requeues on 3), not 143.
    # The rank making sample 9 (mid-shard 2) signals itself; the producer's
    # close then holds every rank, past its shards, while the test signals
    # them all.
    out = os.path.join(tmp, 'late')
    env = dict(os.environ, COEMU_TEST_SIGNAL=f'TERM:{2 * S + 1}', COEMU_TEST_CLOSE_PAUSE_MS='1500', **SLOW)
    err, p = term_every_rank_at(cmd(2, job, out), env, ': closing', 'late SIGTERM',
                                "both ranks reached the producer's close")
    stopped_cleanly(subprocess.CompletedProcess(p.args, p.returncode, '', err), out,
                    'a late SIGTERM to ranks already stopping')
    resumes(2, job, out, ref, 'a late SIGTERM to ranks already stopping')

    finishing_signals(tmp, job, ref)
    models_swept(tmp)

    # The row writer: float32 inputs without gzip are written by a background
    # thread into chunks HDF5 allocated (4 KiB-aligned, O_DIRECT where the
    # file system takes it: 32^3 rows, 1.5 MiB per shard, are aligned);
    # their values equal what HDF5 itself writes (gzip: 1 takes that path),
    # and verify's CRC-32 of every dataset holds.
    big = JOB.replace(f'n: {N},', 'n: 32,').replace(f'count: {M},', 'count: 2,')
    outs = {}
    for name, text in (('rows', big), ('hdf5', big.replace('samples_per_shard: 4',
                                                          'samples_per_shard: 4, gzip: 1'))):
        jp = os.path.join(tmp, name + '.yaml')
        open(jp, 'w').write(text)
        outs[name] = os.path.join(tmp, name)
        r = run(2, jp, outs[name])
        check(r.returncode == 0, f'{name}: {r.stderr[-1000:]}')
        r = subprocess.run([os.environ['COEMU'], 'verify', outs[name]], capture_output=True,
                           text=True)
        check(r.returncode == 0, f'{name}: verify: {r.stdout} {r.stderr}')
    with h5py.File(os.path.join(outs['rows'], 'dataset.h5'), 'r') as a, \
            h5py.File(os.path.join(outs['hdf5'], 'dataset.h5'), 'r') as b:
        check(a['inputs'].shape == (8, 3, 32, 32, 32) and
              np.array_equal(a['inputs'][()], b['inputs'][()]) and
              np.array_equal(a['targets'][()], b['targets'][()]),
              'rows from the row writer equal rows written by HDF5')
    with h5py.File(os.path.join(outs['rows'], 'shards', 'shard-000000.h5'), 'r') as h:
        check(h['inputs'].chunks == (1, 3, 32, 32, 32), 'chunked by sample, as before')

    r = run(2, job, ref)
    check(r.returncode == 0 and 'is finished' in r.stderr and 'made now' not in r.stderr,
          f'a finished dataset reruns to itself, making nothing: {r.stderr[-800:]}')
    man = json.load(open(os.path.join(ref, 'manifest.json')))
    check(len(man['shards']) == M * D // S, 'manifest lists every shard')


if __name__ == '__main__':
    main()
