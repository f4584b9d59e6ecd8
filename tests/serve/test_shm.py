#!/usr/bin/env python3
"""test_shm.py - the same-host shared-memory transport (docs/stream-protocol.md,
"Shared memory"): `coemu serve` copies a chunk's rows into the consumer's
segment and sends their descriptors; the Python client maps the segment
read-only and checks and gathers the rows from it.
- a stored dataset and its images-only twin (store_inputs: false), batch 1
  and 4 (--pad), two epochs to the Python client over frames
  (transport="socket"), "shm" and "auto": the same ids, positions and
  bytes, equal to the stored dataset's arrays; serve says every chunk went
  through the segment;
- `serve --no-shm`: "auto" takes frames (shm_error says why), "shm" raises;
- a client that cannot map the segment (its open fails): "auto" takes
  frames (serve counts the session as taking frames), "shm" raises;
- no segment is left in /dev/shm: after a normal end, during a stream (the
  name is unlinked once the consumer has mapped it), after the consumer is
  killed, and for a consumer that asked for one and never answered: after
  serve drops it (--timeout), and after serve is terminated (SIGTERM) while
  the segment waits for the answer.
- the C client (serve_dump.c) the same: "socket", "auto" and "shm" give the
  same samples as the Python client, every chunk through the segment with
  auto and shm; with --no-shm auto takes frames and shm fails clearly.
- a consumer "on another host": in a mount namespace of its own with an
  empty /dev/shm (unshare -m; where that cannot be made, the check says
  so and is not counted), the C client with auto takes frames (the same
  samples, the reason named), with shm fails clearly, and the Python client
  with auto takes frames;
- from a fake producer (tests/fake_shm.py): the C client answers with the
  segment's nonce, drops a row damaged in the segment, a descriptor outside
  it and one of another size (counted malformed) and gets the 7 good
  samples right (the Python client: tests/python/test_package.py).
Functional, not timed. Prints "N passed, N failed"."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import zmq

COEMU = os.environ['COEMU']
DUMP = os.environ['COEMU_SERVE_DUMP']
ROOT = os.environ['COEMU_SOURCE_ROOT']
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.join(ROOT, 'python'))
from pycheck import check, run_in_tmpdir, sanitizer_full_stacks  # noqa: E402
from servetest import serve_stored, stop  # noqa: E402
from coemu import stream as cs  # noqa: E402
from fake_shm import fake_shm_producer  # noqa: E402

sanitizer_full_stacks()
SLOW = 4 if os.environ.get('COEMU_SANITIZE') else 1

MODELS, DIRS, PER_SHARD = 3, 4, 5  # 12 samples: shards of 5, 5, 2
JOB = """name: shm
inputs:
  synth: {{count: {m}, seed: 1, levels: 2}}
sampling: {{directions: {d}, n: 16, seed: 5}}
line: {{lamda: builtin:co.dat, transition: 2}}
output: {{directory: {out}, samples_per_shard: {s}{extra}}}
splits: {{train: 0.34, validation: 0.33, test: 0.33, seed: 1}}
"""
S = MODELS * DIRS


def segments(pid):
    """This serve's segments in /dev/shm (their names carry its pid)."""
    return [f for f in os.listdir('/dev/shm') if f.startswith(f'coemu-stream-{pid}-')]


def epochs(d, tmp, args, transport):
    """Two epochs to the Python client: ([(epoch, position, id, inputs, targets)],
    the client's error, serve's stderr, the client's shm_mapped and shm_error,
    segments seen in /dev/shm during the stream, segments left after)."""
    p, ep = serve_stored(d, tmp, args)
    got, cerr, mapped, why, during = [], '', 0, None, None
    try:
        c = cs.StreamClient(ep, rank=0, world=1, timeout_s=20 * SLOW, heartbeat_s=0.2,
                            transport=transport)
        try:
            for _ in range(2):
                for ch in c.iter_epoch():
                    if during is None:
                        during = segments(p.pid)
                    for k, i in enumerate(ch.ids):
                        got.append((ch.epoch, ch.position + k, int(i), ch.inputs[k].tobytes(),
                                    ch.targets[k].tobytes()))
            mapped, why = c.shm_mapped, c.shm_error
        except Exception as e:  # noqa: BLE001 - the error the consumer sees
            cerr = f'{type(e).__name__}: {e}'
        finally:
            c.close(grace_s=1.0)
    except Exception as e:  # noqa: BLE001 - raised by the constructor
        cerr = f'{type(e).__name__}: {e}'
    finally:
        if cerr:
            p.terminate()
        err = stop(p)
    return got, cerr, err, mapped, why, during, segments(p.pid)


def c_epochs(d, tmp, args, transport):
    """Two epochs to the C consumer: its lines, its stderr, serve's stderr,
    segments left."""
    p, ep = serve_stored(d, tmp, args)
    r = None
    try:
        r = subprocess.run([DUMP, ep, '2', transport], capture_output=True, text=True,
                           timeout=120 * SLOW)
    finally:
        if r is None or r.returncode != 0:
            p.terminate()
        err = stop(p)
    return r.stdout.splitlines(), r.stderr, err, segments(p.pid)


def shm_line(err):
    m = re.search(r'shared memory: (\d+) sessions mapped their segment, (\d+) chunks sent '
                  r'through it, (\d+) sessions took frames instead', err)
    return tuple(map(int, m.groups())) if m else (0, 0, 0)


def generate(tmp, out, extra):
    job = os.path.join(tmp, out + '.yaml')
    open(job, 'w').write(JOB.format(m=MODELS, d=DIRS, s=PER_SHARD, out=out, extra=extra))
    r = subprocess.run([COEMU, 'generate', job, '--quiet'], capture_output=True, text=True,
                       cwd=tmp, timeout=300 * SLOW)
    check(r.returncode == 0, f'generate {out}: {r.stderr[-600:]}')
    return os.path.join(tmp, out)


class _NoShm:
    """os.open refusing /dev/shm: a consumer that cannot map its segment."""

    def __init__(self):
        self.real = cs.os.open

    def __call__(self, path, *a, **k):
        if str(path).startswith('/dev/shm/'):
            raise PermissionError(13, 'Permission denied (test)', path)
        return self.real(path, *a, **k)


def raw_hello(ep):
    """A DEALER that asks for a segment and never answers: (socket, context,
    the WELCOME's flags, the segment name)."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(ep)
    s.send(cs.Header.encode(cs.HELLO, 2, cs.FLAG_SHM, 0, 0, 1, 0, 0))
    flags, name = 0, ''
    if s.poll(10000 * SLOW):
        fr = s.recv_multipart()
        h = cs.Header.decode(fr[0])
        flags = h.flags if h.type == cs.WELCOME else -1
        name = fr[1].decode() if len(fr) > 1 else ''
    return s, ctx, flags, name


def run(tmp):
    d = generate(tmp, 'stored', '')
    img = generate(tmp, 'images', ', store_inputs: false')
    with h5py.File(os.path.join(d, 'dataset.h5'), 'r') as h:
        inputs, targets = np.asarray(h['inputs'], dtype=np.float32), np.asarray(h['targets'])
    with h5py.File(os.path.join(img, 'dataset.h5'), 'r') as h:
        check('inputs' not in h, 'the images-only twin stores no /inputs')

    for batch in ('1', '4'):
        args = ['--batch', batch, '--pad']
        ref = None
        for name, dd in (('stored', d), ('images-only', img)):
            for transport in ('socket', 'shm', 'auto'):
                what = f'{name} batch {batch} transport {transport}'
                got, cerr, err, mapped, why, during, left = epochs(dd, tmp, args, transport)
                check(not cerr and len(got) == 2 * S, f'{what}: 2 epochs of {S} ({len(got)}): '
                      f'{cerr} {err[-400:]}')
                if ref is None:
                    ref = got
                    check(all(x == inputs[i].tobytes() and y == targets[i].tobytes()
                              for _, _, i, x, y in got), f'{what}: the stored dataset\'s bytes')
                    check(set(i for e, _, i, _, _ in got if e == 0) == set(range(S)),
                          f'{what}: every sample in an epoch')
                check(got == ref, f'{what}: the same ids, positions and bytes as {name} '
                      f'over frames of the stored dataset')
                nmap, nchunks, nframes = shm_line(err)
                if transport == 'socket':
                    check(mapped == 0 and nmap == 0 and nchunks == 0,
                          f'{what}: no segment asked for ({mapped}, {nmap}, {nchunks})')
                else:
                    check(mapped == 1 and why is None and nmap == 1 and
                          nchunks == 2 * S // int(batch) and nframes == 0,
                          f'{what}: every chunk through the segment ({mapped}, {why}, '
                          f'{nmap}, {nchunks}, {nframes}): {err[-300:]}')
                check(not during and not left, f'{what}: no segment in /dev/shm during the '
                      f'stream (unlinked once mapped) nor after: {during} {left}')

    # the C client: the same samples over frames and through the segment
    for batch in ('1', '4'):
        args = ['--batch', batch, '--pad']
        py, _, _, _, _, _, _ = epochs(img, tmp, args, 'socket')
        want = [f'{e} {pos} {i} {cs.xxh64(x):016x} {cs.xxh64(y):016x}' for e, pos, i, x, y in py]
        for transport in ('socket', 'auto', 'shm'):
            what = f'C client, images-only batch {batch} transport {transport}'
            lines, cerr, err, left = c_epochs(img, tmp, args, transport)
            check(lines == want and len(want) == 2 * S, f'{what}: the Python client\'s samples '
                  f'({len(lines)}): {cerr[-300:]}')
            nch = 2 * S // int(batch)
            if transport == 'socket':
                check(shm_line(err) == (0, 0, 0), f'{what}: no segment ({shm_line(err)})')
            else:
                check(f'shm: mapped 1 chunks {nch} malformed 0\n' in cerr and shm_line(err) == (1, nch, 0)
                      and not left, f'{what}: every chunk through the segment, none left '
                      f'({shm_line(err)}, {left}): {cerr[-300:]}')
    lines, cerr, err, _ = c_epochs(d, tmp, ['--batch', '4', '--no-shm'], 'auto')
    check(len(lines) == 2 * S and 'shm: mapped 0 chunks 0 malformed 0 why: the producer did not offer' in cerr,
          f'C client, --no-shm, auto: frames ({len(lines)}): {cerr[-300:]}')
    lines, cerr, err, _ = c_epochs(d, tmp, ['--batch', '4', '--no-shm'], 'shm')
    check(not lines and 'error: stream client: shm required: the producer did not offer' in cerr,
          f'C client, --no-shm, shm: a clear error: {cerr[-300:]}')

    # the C client against a fake producer: damaged rows and descriptors dropped
    ep = f'ipc://{tmp}/fake-shm.sock'
    name = f'/coemu-stream-{os.getpid()}-{os.urandom(16).hex()}'
    ready, answer = threading.Event(), []
    th = threading.Thread(target=fake_shm_producer, args=(ep, ready, name, answer), daemon=True)
    th.start()
    ready.wait(10)
    r = subprocess.run([DUMP, ep, '1', 'shm'], capture_output=True, text=True, timeout=60 * SLOW)
    th.join(10)
    want = [f'0 {i} {i} {cs.xxh64(np.full((2, 3), i + 0.25, "<f4").tobytes()):016x} '
            f'{cs.xxh64(np.full((4,), i + 0.5, "<f4").tobytes()):016x}' for i in range(7)]
    check(r.returncode == 0 and answer == [(cs.CREDIT, cs.FLAG_SHM_ANSWER, True)] and
          r.stdout.splitlines() == want and 'shm: mapped 1 chunks 3 malformed 3\n' in r.stderr,
          f'C client, fake producer: nonce answered, 3 bad chunks dropped, 7 samples right '
          f'({answer}): {r.stdout[-400:]} {r.stderr[-400:]}')

    # batch 4 of the stored dataset over frames: what the checks below compare with
    ref, _, _, _, _, _, _ = epochs(d, tmp, ['--batch', '4'], 'socket')

    # a consumer on "another host": its own /dev/shm (a private tmpfs)
    alone = ['unshare', '-m', 'sh', '-c', 'mount -t tmpfs tmpfs /dev/shm && exec "$@"', 'sh']
    probe = subprocess.run(alone + ['true'], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f'note: another host not simulated (unshare -m: {probe.stderr.strip()[-200:]})')
    else:
        want = [f'{e} {pos} {i} {cs.xxh64(x):016x} {cs.xxh64(y):016x}' for e, pos, i, x, y in ref]
        for transport in ('auto', 'shm'):
            p, ep = serve_stored(d, tmp, ['--batch', '4'])
            r = None
            try:
                r = subprocess.run(alone + [DUMP, ep, '2', transport], capture_output=True,
                                   text=True, timeout=120 * SLOW)
            finally:
                if r is None or r.returncode != 0:
                    p.terminate()
                err = stop(p)
            if transport == 'auto':
                check(r.stdout.splitlines() == want and 'why: cannot map shared-memory segment'
                      in r.stderr and shm_line(err) == (0, 0, 1) and not segments(p.pid),
                      f'another host, C client, auto: frames, the same samples, the reason '
                      f'({shm_line(err)}): {r.stderr[-300:]}')
            else:
                check(r.returncode == 1 and 'shm required: cannot map shared-memory segment'
                      in r.stderr and not segments(p.pid),
                      f'another host, C client, shm: a clear error: {r.stderr[-300:]}')
        p, ep = serve_stored(d, tmp, ['--batch', '4'])
        code = (f'import sys; sys.path.insert(0, {os.path.join(ROOT, "python")!r}); '
                f'from coemu import stream as cs; '
                f'c = cs.StreamClient({ep!r}, transport="auto", timeout_s=20); '
                f'n = sum(len(ch.ids) for _ in range(2) for ch in c.iter_epoch()); '
                f'print(n, c.shm_mapped, c.shm_error); c.close(grace_s=1.0)')
        r = subprocess.run(alone + [sys.executable, '-c', code], capture_output=True, text=True,
                           timeout=120 * SLOW)
        err = stop(p)
        check(r.returncode == 0 and r.stdout.startswith(f'{len(ref)} 0 cannot map') and
              shm_line(err) == (0, 0, 1), f'another host, Python client, auto: frames '
              f'({r.stdout.strip()}): {r.stderr[-300:]}')

    # serve --no-shm: "auto" takes frames, "shm" says why it cannot
    got, cerr, err, mapped, why, _, left = epochs(d, tmp, ['--batch', '4', '--no-shm'], 'auto')
    check(not cerr and got == ref and mapped == 0 and why and 'did not offer' in why and not left,
          f'--no-shm, auto: frames, the same bytes ({mapped}, {why}): {cerr}')
    got, cerr, err, _, _, _, left = epochs(d, tmp, ['--batch', '4', '--no-shm'], 'shm')
    check('ProtocolError' in cerr and 'did not offer shared memory' in cerr and not got,
          f'--no-shm, shm: a clear error: {cerr}')

    # a client that cannot map its segment
    cs.os.open = _NoShm()
    try:
        got, cerr, err, mapped, why, _, left = epochs(d, tmp, ['--batch', '4'], 'auto')
        check(not cerr and got == ref and mapped == 0 and why and 'cannot map' in why and
              shm_line(err) == (0, 0, 1) and not left,
              f'cannot map, auto: frames, the same bytes, serve counts it ({why}, '
              f'{shm_line(err)}, {left}): {cerr}')
        got, cerr, err, _, _, _, left = epochs(d, tmp, ['--batch', '4'], 'shm')
        check('ProtocolError' in cerr and 'cannot map' in cerr and not left,
              f'cannot map, shm: a clear error: {cerr}')
    finally:
        cs.os.open = cs.os.open.real

    # killed consumer: serve goes on and leaves no segment
    p, ep = serve_stored(d, tmp, ['--batch', '1', '--timeout', '1'])
    code = (f'import sys, os; sys.path.insert(0, {os.path.join(ROOT, "python")!r}); '
            f'from coemu import stream as cs; '
            f'c = cs.StreamClient({ep!r}, transport="shm", timeout_s=20); c.next(); '
            f'print(c.shm_mapped, flush=True); os.kill(os.getpid(), 9)')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       timeout=60 * SLOW)
    check(r.returncode == -9 and r.stdout.strip() == '1', f'killed consumer had mapped its '
          f'segment: {r.returncode} {r.stdout} {r.stderr[-300:]}')
    check(not segments(p.pid), f'consumer killed: no segment left: {segments(p.pid)}')
    # one that asks and never answers: its segment exists until serve drops it
    s, ctx, flags, name = raw_hello(ep)
    check(flags == cs.FLAG_SHM and name[1:] in segments(p.pid),
          f'a segment granted and waiting for the answer is in /dev/shm ({flags}, {name}, '
          f'{segments(p.pid)})')
    s.close()
    ctx.term()
    t0 = time.monotonic()
    while segments(p.pid) and time.monotonic() - t0 < 10 * SLOW:
        time.sleep(0.1)
    check(not segments(p.pid), f'silent consumer dropped: its segment removed: {segments(p.pid)}')
    # serve terminated while a segment waits for its answer
    s, ctx, flags, name = raw_hello(ep)
    check(name[1:] in segments(p.pid), f'second segment waiting ({name})')
    p.send_signal(signal.SIGTERM)
    err = stop(p)
    s.close()
    ctx.term()
    check(p.returncode == 0 and not segments(p.pid),
          f'serve terminated (SIGTERM): exit {p.returncode}, no segment left '
          f'{segments(p.pid)}: {err[-300:]}')


def main():
    run_in_tmpdir('coemu-shm-', run)


if __name__ == '__main__':
    main()
