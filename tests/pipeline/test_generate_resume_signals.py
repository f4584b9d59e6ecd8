"""test_generate_resume_signals.py - wall-time signals during a resume's
first pass (docs/jobs.md, "Wall-time limits"): before any shard is handed
out, rank r checks the shards r, r + P, ... that an earlier run left
(generate.c, resume_pass).  A signal there (SIGTERM, SIGINT or SIGUSR1, to
one rank or to all) ends that rank's checks after the one in progress; no
shard is made, every rank stops and the command exits with 3; every shard
the earlier run finished is left as it was (same file, not made again),
nothing partial is left (no temporary, no manifest.json, no dataset.h5);
and rerunning the same command resumes to a dataset byte-identical to an
uninterrupted run.  The test producer (tests/pipeline/testgen.c) signals a
rank just before it checks a chosen shard (COEMU_TEST_RESUME_SIGNAL) or
slows every check (COEMU_TEST_RESUME_DELAY_MS), so that a last case can
signal every rank from outside while they check, as Slurm does at the time
limit.  The helpers and the job are test_generate_signals.py's.  Prints
"N passed, N failed"."""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
from test_generate_signals import JOB, M, D, S, cmd, finished, rank_pids, \
    resumes, run, stopped_cleanly, temporaries  # noqa: E402
from pycheck import check, run_in_tmpdir  # noqa: E402

SHARDS = M * D // S  # 6


def kept_files(out):
    """Each finished shard's identity: a shard made again (written under a
    temporary name and renamed over it) or removed changes it."""
    d = os.path.join(out, 'shards')
    return {f: (os.stat(os.path.join(d, f)).st_ino, os.stat(os.path.join(d, f)).st_mtime_ns)
            for f in finished(out)}


class Run:
    """`testgen` under mpirun in its own session, its stderr read by a
    thread (so that a silent, hung run cannot block the test)."""

    def __init__(self, ranks, job, out, env):
        e = dict(os.environ)
        e.update(env)
        self.p = subprocess.Popen(cmd(ranks, job, out), env=e, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.p.stderr:
            self.lines.append(line)

    def wait_for(self, pred, limit=60):
        t0 = time.time()
        while time.time() - t0 < limit and self.p.poll() is None and not pred(self.lines):
            time.sleep(0.005)
        return pred(self.lines)

    def finish(self, what):
        """The CompletedProcess once the run exits; one still there after
        60 s is killed and counted as hung (its status is then -9)."""
        try:
            self.p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
            check(False, f'{what}: the run hung')
        self.t.join(10)
        return subprocess.CompletedProcess(self.p.args, self.p.returncode, '', ''.join(self.lines))


def checked(lines, rank):
    """The shards rank `rank` announced it was about to check."""
    pre = f'testgen: rank {rank}: checking shard '
    return [int(x[len(pre):]) for x in lines if x.startswith(pre)]


def stopped_in_pass(r, out, before, what, gone=()):
    """Exit 3 and nothing partial (stopped_cleanly); no shard made now; every
    shard the earlier run finished still the same file, but those in `gone`
    (damaged: removed by the check)."""
    stopped_cleanly(r, out, what)
    check(' 0 shards made now' in r.stderr, f'{what}: no shard made: {r.stderr[-1500:]}')
    want = {f: v for f, v in before.items() if f not in gone}
    now = kept_files(out)
    check(now == want, f'{what}: the finished shards left as they were: before '
                       f'{sorted(before)}, after {sorted(now)}, '
                       f'rewritten {sorted(f for f in want if f in now and now[f] != want[f])}')


def run_tests(tmp):
    job = os.path.join(tmp, 'job.yaml')
    open(job, 'w').write(JOB)
    ref = os.path.join(tmp, 'ref')
    r = run(2, job, ref)
    check(r.returncode == 0 and len(finished(ref)) == SHARDS,
          f'uninterrupted run: {r.stderr[-1500:]}')

    # What the earlier run leaves: SIGINT on one rank mid-shard 5, so shards
    # 0-4 are finished and 5 is to make. Each case below resumes a copy on 2
    # ranks: rank 0 checks shards 0, 2, 4 and rank 1 shards 1, 3, 5.
    base = os.path.join(tmp, 'base')
    r = run(1, job, base, {'COEMU_TEST_SIGNAL': f'INT:{5 * S + 1}'})
    check(r.returncode == 3 and finished(base) == [f'shard-{k:06d}.h5' for k in range(5)],
          f'the interrupted run to resume: shards 0-4: {finished(base)} {r.stderr[-1000:]}')

    def case(name, env, what, damage=None):
        out = os.path.join(tmp, name)
        shutil.copytree(base, out)
        if damage is not None:  # half a shard: it fails its check and is removed
            p = os.path.join(out, 'shards', f'shard-{damage:06d}.h5')
            os.truncate(p, os.path.getsize(p) // 2)
        before = kept_files(out)
        t0 = time.time()
        r = Run(2, job, out, env).finish(what)
        return out, before, r, time.time() - t0

    # (a) SIGTERM to rank 1 while it checks shard 1 (its first): that check
    # ends, rank 1 checks no other (3 is left unchecked, 5 is not there),
    # and no rank makes a shard, though shards 3 and 5 are then "to make":
    # rank 0 must not make one before it hears of the stop (a finished
    # shard 3 made again; minutes of work after a SIGTERM at the paper's size)
    # Then SIGINT to rank 0 before its first check (shard 0): as SIGTERM;
    # rank 0 is the one handing out shards.
    for sig, rank in (('TERM', 1), ('INT', 0)):
        what = f'SIG{sig} to rank {rank} in the resume pass'
        out, before, r, dt = case(f'{sig.lower()}{rank}',
                                  {'COEMU_TEST_RESUME_SIGNAL': f'{sig}:{rank}:{rank}'}, what)
        stopped_in_pass(r, out, before, what)
        check(f'rank {rank}: stopped by SIG{sig}' in r.stderr,
              f'{what}: rank {rank} says so: {r.stderr[-800:]}')
        check(checked(r.stderr.splitlines(True), rank) == [rank],
              f'{what}: rank {rank} checks no shard after the signal: {r.stderr[-800:]}')
        resumes(2, job, out, ref, what)
        print(f'{what}: stopped in {dt:.1f} s')

    # (b) SIGUSR1 to rank 1 while it checks shard 1, which is damaged: no
    # shard is being made, so "finish the shard being made" is finishing the
    # check in progress (shard 1 found damaged and removed, not left under
    # its final name) and stopping there; nothing is made
    what = 'SIGUSR1 to rank 1 in the resume pass'
    out, before, r, dt = case('usr1', {'COEMU_TEST_RESUME_SIGNAL': 'USR1:1:1'}, what, damage=1)
    stopped_in_pass(r, out, before, what, gone=['shard-000001.h5'])
    check('rank 1: stopped by SIGUSR1' in r.stderr, f'{what}: rank 1 says so: {r.stderr[-800:]}')
    check('shard-000001.h5' in r.stderr and 'making the shard again' in r.stderr,
          f'{what}: the check in progress ends (the damaged shard 1 found): {r.stderr[-800:]}')
    check(checked(r.stderr.splitlines(True), 1) == [1],
          f'{what}: rank 1 checks no shard after the signal: {r.stderr[-800:]}')
    resumes(2, job, out, ref, what)

    # (c) From outside, as Slurm at the time limit: SIGTERM to every rank
    # once both are checking (each check slowed to 400 ms, three a rank);
    # each ends the check in progress and stops
    what = 'SIGTERM to every rank from outside in the resume pass'
    out = os.path.join(tmp, 'outside')
    shutil.copytree(base, out)
    before = kept_files(out)
    t0 = time.time()
    p = Run(2, job, out, {'COEMU_TEST_RESUME_DELAY_MS': '400'})
    both = p.wait_for(lambda ls: checked(ls, 0) and checked(ls, 1))
    check(both, f'{what}: both ranks reached their checks: {p.lines[-8:]}')
    pids = rank_pids(p.p)
    check(len(pids) == 2, f'{what}: the 2 ranks: {pids}')
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    r = p.finish(what)
    dt = time.time() - t0
    stopped_in_pass(r, out, before, what)
    check(r.stderr.count('stopped by SIGTERM') == 2,
          f'{what}: both ranks say so: {r.stderr[-800:]}')
    for rank in (0, 1):
        check(len(checked(r.stderr.splitlines(True), rank)) < 3,
              f'{what}: rank {rank} stops before its last check: {r.stderr[-800:]}')
    resumes(2, job, out, ref, what)
    print(f'{what}: stopped in {dt:.1f} s')

    check(not temporaries(base), 'the interrupted run left no temporary')


if __name__ == '__main__':
    run_in_tmpdir('coemu-rsig-', run_tests)
