"""test_slurm.py - the Slurm batch scripts of jobs/slurm/ (docs/cluster.md).

No Slurm here, so: every script parses (`bash -n`; shellcheck too where it
is installed); every #SBATCH line is a known sbatch option in the form
sbatch reads; every coemu command and option the scripts use exists
(against `coemu CMD --help`); the training-job template, filled in as
serve-train.sbatch fills it, passes `coemu train --check`; and
generate.sbatch and stats.sbatch run end to end with a stand-in `srun`
(mpiexec with 2 ranks) and `scontrol` on PATH: a run stopped by SIGUSR1
exits 3 and requeues itself, the resubmitted script finishes the dataset,
stats.sbatch verifies it and recomputes /stats; serve-train.sbatch runs
end to end on that dataset (one server, one trainer, CURVE over tcp, a
small model for one epoch; suite blas: it trains), named by a relative
path.  Prints "N passed, N failed"."""
import glob
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile

COEMU = os.environ['COEMU']
TESTGEN = os.environ['COEMU_TESTGEN']
MPIEXEC = os.environ.get('COEMU_MPIEXEC', 'mpiexec')
ROOT = os.environ['COEMU_SOURCE_ROOT']
SLURM = os.path.join(ROOT, 'jobs', 'slurm')

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402

# sbatch options the scripts may use (a typo such as --ntask-per-node fails)
SBATCH_OPTIONS = {'job-name', 'nodes', 'ntasks', 'ntasks-per-node', 'cpus-per-task', 'mem',
                  'mem-per-cpu', 'time', 'signal', 'requeue', 'open-mode', 'output', 'partition',
                  'gpus-per-node', 'gpus-per-task', 'account', 'qos', 'constraint'}


def coemu_commands():
    r = subprocess.run([COEMU, '--help'], capture_output=True, text=True)
    return set(re.findall(r'^\s{2}([a-z]+)\s', r.stdout + r.stderr, re.M))


def options_of(cmd):
    r = subprocess.run([COEMU, cmd, '--help'], capture_output=True, text=True)
    return set(re.findall(r'^\s+(--[a-z][a-z0-9-]*)', r.stdout, re.M))


def coemu_calls(text):
    """(command, [options]) of every "$COEMU" call, continuation lines joined."""
    text = text.replace('\\\n', ' ')
    calls = []
    for line in text.splitlines():
        line = line.split(' #')[0]
        for m in re.finditer(r'"\$COEMU"\s+(.*)', line):
            rest = re.split(r'\s(?:\|\||&&|;|&|\|)(?:\s|$)|\s&$', m.group(1))[0]
            words = shlex.split(rest, posix=True)
            # options, also those given through ${VAR:+--option}
            calls.append((words[0], re.findall(r'(?<![\w-])--[a-z][a-z0-9-]*',
                                               ' '.join(words[1:]))))
    return calls


def write_exe(path, text):
    open(path, 'w').write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


def static_checks():
    scripts = sorted(glob.glob(os.path.join(SLURM, '*.sbatch')))
    check({os.path.basename(s) for s in scripts} >=
          {'generate.sbatch', 'stats.sbatch', 'serve-train.sbatch'}, f'the scripts: {scripts}')
    commands = coemu_commands()
    check({'generate', 'stats', 'serve', 'train', 'keygen', 'verify'} <= commands,
          f'coemu --help lists the commands: {sorted(commands)}')
    have_shellcheck = shutil.which('shellcheck') is not None
    for s in scripts:
        name = os.path.basename(s)
        r = subprocess.run(['bash', '-n', s], capture_output=True, text=True)
        check(r.returncode == 0, f'{name}: bash -n: {r.stderr}')
        if have_shellcheck:
            r = subprocess.run(['shellcheck', '-s', 'bash', s], capture_output=True, text=True)
            check(r.returncode == 0, f'{name}: shellcheck: {r.stdout}')
        text = open(s).read()
        check(text.startswith('#!/bin/bash\n'), f'{name}: a bash script')
        # sbatch reads #SBATCH lines only before the first command
        head = text.split('\nset -u')[0]
        for line in text.splitlines():
            if not line.startswith('#SBATCH'):
                continue
            check(line in head, f'{name}: #SBATCH after the first command: {line}')
            arg = line.split()[1]
            m = re.fullmatch(r'--([a-z-]+)(=\S+)?', arg)
            check(arg == 'hetjob' or (m and m.group(1) in SBATCH_OPTIONS),
                  f'{name}: unknown sbatch option: {line}')
        calls = coemu_calls(text)
        check(calls, f'{name}: calls coemu')
        for cmd, opts in calls:
            check(cmd in commands, f'{name}: coemu {cmd}: no such command')
            known = options_of(cmd)
            bad = [o for o in opts if o not in known]
            check(not bad, f'{name}: coemu {cmd}: options not in its --help: {bad}')


def template_check(tmp):
    run = os.path.join(tmp, 'run')
    os.makedirs(os.path.join(run, 'keys'))
    for k in ('server', 'trainer'):
        r = subprocess.run([COEMU, 'keygen', os.path.join(run, 'keys', k)], capture_output=True,
                           text=True)
        check(r.returncode == 0, f'keygen {k}: {r.stderr}')
    # the substitution of serve-train.sbatch
    text = open(os.path.join(SLURM, 'serve-train.sbatch')).read()
    m = re.search(r'sed (-e .*?) \\\n\s*"\$TEMPLATE"', text, re.S)
    check(m is not None, 'serve-train.sbatch fills the template with sed')
    if not m:
        return
    env = dict(os.environ, ENDPOINT='tcp://node017:5555', DATASET=os.path.join(tmp, 'ds'),
               BATCH='64', TEMPLATE=os.path.join(SLURM, 'train-stream.yaml'))
    r = subprocess.run(['bash', '-c', f'sed {m.group(1)} "$TEMPLATE" > {run}/train.yaml'],
                       env=env, capture_output=True, text=True)
    check(r.returncode == 0, f'template filled: {r.stderr}')
    # (--no-data: the job file only; the dataset it names is the cluster's)
    r = subprocess.run([COEMU, 'train', os.path.join(run, 'train.yaml'), '--check', '--no-data'],
                       capture_output=True, text=True)
    check(r.returncode == 0 and 'tcp://node017:5555' in r.stdout and 'batch 64' in r.stdout,
          f'the filled training job passes coemu train --check --no-data: {r.stdout} {r.stderr}')
    r = subprocess.run([COEMU, 'train', os.path.join(run, 'train.yaml'), '--check'],
                       capture_output=True, text=True)
    check(r.returncode == 1 and 'validation.dataset' in r.stderr and 'no such dataset folder' in r.stderr,
          f'with the data checked, the missing dataset is named: {r.stdout} {r.stderr}')


def run_scripts(tmp):
    bindir = os.path.join(tmp, 'bin')
    os.makedirs(bindir)
    log = os.path.join(tmp, 'scontrol.log')
    # stand-ins: srun = mpiexec with 2 ranks; scontrol records what it is asked
    write_exe(os.path.join(bindir, 'srun'),
              f'#!/bin/sh\nwhile [ $# -gt 0 ]; do case "$1" in --cpus-per-task=*) shift;; '
              f'--*) echo "srun stand-in: unexpected option $1" >&2; exit 2;; *) break;; esac; '
              f'done\nexec {shlex.quote(MPIEXEC)} --allow-run-as-root --oversubscribe -n 2 "$@"\n')
    write_exe(os.path.join(bindir, 'scontrol'), f'#!/bin/sh\necho "$@" >> {log}\n')
    # coemu with the analytic producer for generate (signals at known samples)
    write_exe(os.path.join(bindir, 'coemu-test'),
              f'#!/bin/sh\nif [ "$1" = generate ]; then shift; exec {shlex.quote(TESTGEN)} "$@"; '
              f'fi\nexec {shlex.quote(COEMU)} "$@"\n')
    job = os.path.join(tmp, 'job.yaml')
    open(job, 'w').write('name: slurm-test\ninputs:\n  synth: {count: 4, seed: 3}\n'
                         'sampling: {directions: 4, n: 16, seed: 9}\n'
                         'line: {lamda: builtin:co.dat}\noutput: {samples_per_shard: 2}\n'
                         'splits: {train: 0.5, validation: 0.25, test: 0.25, seed: 2}\n')
    out = os.path.join(tmp, 'out')
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ['PATH'],
               COEMU=os.path.join(bindir, 'coemu-test'), JOB=job, OUT=out,
               SLURM_JOB_ID='4242', SLURM_CPUS_PER_TASK='1', COEMU_TEST_DELAY_MS='20')
    gen = os.path.join(SLURM, 'generate.sbatch')
    r = subprocess.run(['bash', gen], env=dict(env, COEMU_TEST_SIGNAL='USR1:5'),
                       capture_output=True, text=True, timeout=120, cwd=tmp)
    check(r.returncode == 3 and 'requeued' in r.stdout,
          f'generate.sbatch stopped by SIGUSR1: exit 3, requeued: {r.returncode} {r.stdout} '
          f'{r.stderr[-1000:]}')
    check(os.path.exists(log) and open(log).read().strip() == 'requeue 4242',
          'generate.sbatch asked scontrol to requeue its job')
    shards = os.listdir(os.path.join(out, 'shards')) if os.path.isdir(out) else []
    check(shards and not [s for s in shards if '.tmp' in s] and len(shards) < 8,
          f'a clean stop: some shards kept, no temporaries: {shards}')
    r = subprocess.run(['bash', gen], env=env, capture_output=True, text=True, timeout=120,
                       cwd=tmp)
    check(r.returncode == 0 and 'is complete' in r.stdout and
          os.path.exists(os.path.join(out, 'manifest.json')),
          f'the resubmitted generate.sbatch finishes: {r.stdout} {r.stderr[-1000:]}')
    r = subprocess.run(['bash', os.path.join(SLURM, 'stats.sbatch')],
                       env=dict(env, COEMU=COEMU, SPLIT='all'), capture_output=True, text=True,
                       timeout=120, cwd=tmp)
    check(r.returncode == 0, f'stats.sbatch: {r.stdout} {r.stderr[-1000:]}')
    import h5py
    with h5py.File(os.path.join(out, 'dataset.h5'), 'r') as h:
        check('stats_all' in h, f'stats.sbatch wrote /stats_all: {list(h)}')
    serve_train(tmp, bindir, out)
    r = subprocess.run(['bash', gen], env=dict(env, JOB=os.path.join(tmp, 'missing.yaml')),
                       capture_output=True, text=True, timeout=60, cwd=tmp)
    check(r.returncode == 1 and 'missing.yaml' in r.stderr,
          f'a bad job stops generate.sbatch before srun: {r.returncode} {r.stderr}')


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def serve_train(tmp, bindir, dataset):
    """serve-train.sbatch end to end: srun runs each component as one rank
    (--het-group dropped), scontrol names this host; the job template is a
    small model for one epoch. DATASET is given relative to the submission
    folder, as a user would: the training job written to RUN/ must still
    find it."""
    sb = os.path.join(tmp, 'het')
    os.makedirs(sb)
    write_exe(os.path.join(sb, 'srun'),
              f'#!/bin/sh\ncase "$1" in --het-group=*) shift;; *) echo "srun stand-in: expected '
              f'--het-group, got $1" >&2; exit 2;; esac\n'
              f'exec {shlex.quote(MPIEXEC)} --allow-run-as-root --oversubscribe -n 1 "$@"\n')
    write_exe(os.path.join(sb, 'scontrol'),
              '#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && echo 127.0.0.1\n')
    template = os.path.join(tmp, 'train-small.yaml')
    text = open(os.path.join(SLURM, 'train-stream.yaml')).read()
    text = re.sub(r'model:\n(  .*\n)+', 'model: {stem: 2, encoder: [4, 4, 8], latent: 32, '
                  'decoder: 16}\n', text)
    text = text.replace('epochs: 100', 'epochs: 1').replace('batch: 16', 'batch: 2')
    check('epochs: 1\n' in text and 'latent: 32' in text, 'the small template was made')
    open(template, 'w').write(text)
    run = os.path.join(tmp, 'trainrun')
    env = dict(os.environ, PATH=sb + os.pathsep + bindir + os.pathsep + os.environ['PATH'],
               COEMU=COEMU, DATASET=os.path.relpath(dataset, tmp), RUN=run, TEMPLATE=template,
               PORT=str(free_port()), BATCH='2', SLURM_JOB_ID='4243')
    r = subprocess.run(['bash', os.path.join(SLURM, 'serve-train.sbatch')], env=env,
                       capture_output=True, text=True, timeout=240, cwd=tmp)
    check(r.returncode == 0 and 'coemu-train: done' in r.stdout
          and os.path.exists(os.path.join(run, 'train', 'finetune', 'last.ckpt')),
          f'serve-train.sbatch with a relative DATASET trains one epoch: {r.returncode} '
          f'{r.stdout[-1500:]} {r.stderr[-1500:]}')
    r = subprocess.run(['bash', os.path.join(SLURM, 'serve-train.sbatch')],
                       env=dict(env, DATASET='no-such-ds'), capture_output=True, text=True,
                       timeout=60, cwd=tmp)
    check(r.returncode == 1 and 'DATASET=no-such-ds: no such directory' in r.stderr,
          f'a DATASET that is not there stops the script first: {r.returncode} {r.stderr}')


def main():
    tmp = tempfile.mkdtemp(prefix='coemu-slurm-')
    try:
        static_checks()
        template_check(tmp)
        run_scripts(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report()


if __name__ == '__main__':
    main()
