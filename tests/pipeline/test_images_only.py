"""test_images_only.py - images-only datasets (output.store_inputs false;
docs/dataset-format.md, "Images-only datasets"), end to end with the real
coemu: a tiny job generated twice, with and without its input cubes, and

- the images-only shards are smaller by exactly what the inputs take (the
  expected size ratio is computed from the layout and stated);
- dataset.h5 and the manifest say images-only (format_minor 2);
- /stats of the two are equal (coemu stats reads the rebuilt cubes);
- coemu serve streams byte-identical samples from both, to the Python
  client and to the C consumer (the trainer's stream reader), and equal to
  the stored /inputs and /targets;
- the trainer's dataset reader (train_data) gets identical batches;
- serve's readers rebuild their chunks at once, outside the HDF5 lock
  (docs/onthefly.md, "Images-only serve"): with 3 reader threads, batches of
  2 and 2 epochs the Python client gets the full dataset's sequence (ids,
  order, bytes), a client resumed mid-epoch gets its tail, the C consumer
  identical batches; images_only_threads checks the rebuild from several
  threads at once against one call, the model cache's cap, and errors raised
  on worker threads (the sample, model and file named);
- the same with the paper's gridding (coemunet_compat) on the AMRVAC files;
- verify and inspect pass on both;
- a model file that is not the one the dataset was made with, a truncated
  model file and a damaged target are errors naming the shard, the sample,
  its row and the array (verify and serve), never served;
- a targets-only manifest (store_inputs false without "inputs": "rebuilt",
  as format_minor 1 wrote them) is still refused by serve naming /inputs,
  and an unknown "inputs" value is an error.
Prints "N passed, N failed"."""
import json
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
BATCHES = os.environ['COEMU_IMAGES_ONLY_BATCHES']
ROOT = os.environ['COEMU_SOURCE_ROOT']
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.join(ROOT, 'pipeline', 'stream'))
from pycheck import check, report, sanitizer_full_stacks, wait_bound  # noqa: E402
import coemu_stream as cs  # noqa: E402

sanitizer_full_stacks()

N_MODELS, DIRS, N, NF, PER_SHARD = 3, 3, 16, 7, 2
JOB = f"""name: {{name}}
inputs:
  synth: {{{{count: {N_MODELS}, seed: 1, levels: 2}}}}
sampling: {{{{directions: {DIRS}, n: {N}, seed: 5}}}}
line: {{{{lamda: builtin:co.dat, transition: 2}}}}
output: {{{{directory: {{name}}-out, samples_per_shard: {PER_SHARD}{{extra}}}}}}
splits: {{{{train: 0.34, validation: 0.33, test: 0.33, seed: 1}}}}
"""


def run(args, cwd, exe=COEMU):
    return subprocess.run([exe] + args, capture_output=True, text=True, cwd=cwd, timeout=300)


THREADS = os.environ['COEMU_IMAGES_ONLY_THREADS']


def serve(d, tmp, extra=()):
    ep = f'ipc://{tmp}/s-{time.monotonic_ns()}.sock'
    p = subprocess.Popen([COEMU, 'serve', d, '--endpoint', ep, '--split', 'all', '--batch', '3',
                          '--epochs', '1', '--heartbeat', '0.2', *extra], stderr=subprocess.PIPE, text=True)
    wait_bound(p, ep)
    return p, ep


def stop(p):
    p.terminate()
    try:
        return p.communicate(timeout=20)[1]
    except subprocess.TimeoutExpired:
        p.kill()
        return p.communicate()[1]


def stream_all(d, tmp):
    """Split 'all' once through coemu serve to the Python client:
    {id: (inputs bytes, targets bytes)}, the client's error, serve's stderr."""
    p, ep = serve(d, tmp)
    got, cerr = {}, ''
    try:
        c = cs.StreamClient(ep, rank=0, world=1, timeout_s=20, heartbeat_s=0.2)
        try:
            for ch in c.iter_epoch():
                for k, i in enumerate(ch.ids):
                    got[int(i)] = (ch.inputs[k].tobytes(), ch.targets[k].tobytes())
        except Exception as e:  # noqa: BLE001 - the error the consumer sees
            cerr = str(e)
        finally:
            c.close()
    finally:
        err = stop(p)
    return got, cerr, err


def stream_seq(d, tmp, epoch=0, position=0):
    """Two epochs of split 'all' at batch 2 from 3 reader threads, as the
    Python client gets them from (epoch, position): [(epoch, position, ids,
    inputs bytes, targets bytes)] per chunk, and serve's stderr."""
    p, ep = serve(d, tmp, ['--batch', '2', '--epochs', '2', '--read-threads', '3', '--prefetch', '3'])
    seq = []
    try:
        c = cs.StreamClient(ep, rank=0, world=1, epoch=epoch, position=position, timeout_s=20,
                            heartbeat_s=0.2)
        try:
            for e in range(epoch, 2):
                for ch in c.iter_epoch():
                    seq.append((ch.epoch, ch.position, [int(i) for i in ch.ids], ch.inputs.tobytes(),
                                ch.targets.tobytes()))
        finally:
            c.close()
    finally:
        err = stop(p)
    return seq, err


def shard_bytes(d):
    return sum(os.path.getsize(os.path.join(d, 'shards', f)) for f in os.listdir(os.path.join(d, 'shards')))


def main(tmp):
    dirs = {}
    for name, extra in (('full', ''), ('img', ', store_inputs: false')):
        open(os.path.join(tmp, f'{name}.yaml'), 'w').write(JOB.format(name=name, extra=extra))
        r = run(['generate', f'{name}.yaml', '--quiet'], tmp)
        check(r.returncode == 0, f'{name}: generate (+ stats): {r.stderr}')
        dirs[name] = os.path.join(tmp, f'{name}-out')
    full, img = dirs['full'], dirs['img']
    S = N_MODELS * DIRS

    # the format says so
    man = json.load(open(os.path.join(img, 'manifest.json')))
    with h5py.File(os.path.join(img, 'dataset.h5'), 'r') as h:
        check(man['store_inputs'] is False and man['inputs'] == 'rebuilt' and man['format_minor'] == 4 and
              h.attrs['format_minor'] == 4 and h.attrs['inputs'] in (b'rebuilt', 'rebuilt') and 'inputs' not in h
              and 'units_file' in h['models'].attrs, f'images-only in manifest and dataset.h5: {man}')
        isums, istats = h['checksums'][()], {k: v for k, v in h['stats'].attrs.items()}
        igroups = {g: dict(h['stats'][g].attrs) for g in h['stats']}
    with h5py.File(os.path.join(full, 'dataset.h5'), 'r') as h:
        check(h.attrs['inputs'] in (b'stored', 'stored'), 'the full dataset says inputs stored')
        inputs, targets, fsums = h['inputs'][()], h['targets'][()], h['checksums'][()]
        fstats = {k: v for k, v in h['stats'].attrs.items()}
        fgroups = {g: dict(h['stats'][g].attrs) for g in h['stats']}
    # per-sample integrity: the images-only dataset records the checksums of the cubes it did not store
    check(np.array_equal(isums, fsums), 'the /checksums of the twins are equal (inputs column included)')

    # size: the images-only shards lack exactly the input rows (3 n^3 float32 a
    # sample) and /inputs' header and chunk index (at most 4 KiB a shard)
    fb, ib = shard_bytes(full), shard_bytes(img)
    rows = S * 3 * N**3 * 4
    shards = -(-S // PER_SHARD)
    check(rows <= fb - ib <= rows + 4096 * shards,
          f'the images-only shards are smaller by the input rows: {fb} - {ib} = {fb - ib}, rows {rows}')
    expect = (fb - rows) / fb
    print(f'size ratio images-only / full: {ib / fb:.4f} (expected from the layout {expect:.4f}: '
          f'({fb} - {rows}) / {fb}; at 64^3 x 7 channels the demo measures 1/28)')

    # the demo geometry (64^3, 7 channels): generate --check's per-sample bytes
    # (the layout's arithmetic, what the demo measures: docs/benchmarks.md)
    demo = open(os.path.join(ROOT, 'jobs', 'demo.yaml')).read()
    open(os.path.join(tmp, 'demo-img.yaml'), 'w').write(
        demo.replace('  samples_per_shard: 32\n', '  samples_per_shard: 32\n  store_inputs: false\n'))
    per = {}
    for name, path in (('full', os.path.join(ROOT, 'jobs', 'demo.yaml')), ('img', 'demo-img.yaml')):
        r = run(['generate', path, '--check'], tmp)
        m = re.search(r'disk: ([0-9.]+) (KiB|MiB) per sample', r.stdout)
        per[name] = float(m.group(1)) * (1024 if m.group(2) == 'KiB' else 1024**2) if m else None
    want_full = 3 * 64**3 * 4 + 7 * 64**2 * 4 + 66
    check(per['full'] and per['img'] and abs(per['full'] - want_full) <= 0.005 * want_full and
          abs(per['img'] - (want_full - 3 * 64**3 * 4)) <= 0.5 * 1024 and per['img'] / per['full'] <= 1 / 20,
          f'demo geometry: images-only / full per sample = {per} (<= 1/20; 1/{per["full"] / per["img"]:.1f})'
          if per['full'] and per['img'] else f'generate --check: {per}')

    # /stats: coemu stats reads the rebuilt cubes, so the twins agree exactly
    same = fstats.keys() == istats.keys() and all(
        np.array_equal(fstats[k], istats[k]) or (isinstance(fstats[k], bytes) and k in ('job_fingerprint',))
        for k in fstats if k not in ('dataset', 'job_fingerprint'))
    check(same and fgroups.keys() == igroups.keys() and all(
        all(np.array_equal(fgroups[g][a], igroups[g][a], equal_nan=True) for a in fgroups[g]) for g in fgroups),
        f'/stats of the twins equal (input fields from the rebuilt cubes): {sorted(fgroups)} vs {sorted(igroups)}')

    # serve -> the Python client: byte-identical samples, equal to the stored arrays
    a, ca, ea = stream_all(full, tmp)
    b, cb, eb = stream_all(img, tmp)
    check(len(a) == S and a == b, f'serve: the same {S} samples byte for byte from both ({len(a)}, {len(b)}; '
          f'{ca} {cb} {eb[-400:]})')
    check(all(b[i][0] == inputs[i].astype(np.float32).tobytes() and b[i][1] == targets[i].tobytes() for i in b),
          'the rebuilt inputs equal the stored /inputs')

    # serve's readers rebuilding at once (3 reader threads, batch 2, 2 epochs):
    # the full dataset's sequence, in order, byte for byte; resumed mid-epoch
    fs, fe = stream_seq(full, tmp)
    ims, ie = stream_seq(img, tmp)
    check(len(fs) == 2 * (S // 2) and fs == ims,  # drop_last: 4 chunks of 2 an epoch
          f'3 readers, batch 2, 2 epochs: the images-only sequence is the full one ({len(fs)}, {len(ims)} chunks) '
          f'{ie[-400:]}')
    tail, te = stream_seq(img, tmp, epoch=1, position=4)
    ref = [c for c in fs if c[0] == 1 and c[1] >= 4]
    check(len(ref) > 0 and tail == ref,
          f'resumed at (1, 4): the tail of the uninterrupted epoch ({len(tail)}, {len(ref)} chunks) {te[-400:]}')
    r = run(['ok', img], tmp, exe=THREADS)
    check(r.returncode == 0 and '2 passed, 0 failed' in r.stdout,
          f'images_only_threads: the rebuild from several threads: {r.stdout} {r.stderr}')

    # the trainer's dataset reader (train_data), and the C stream consumer
    r1 = run(['dataset', full, '3'], tmp, exe=BATCHES)
    r2 = run(['dataset', img, '3'], tmp, exe=BATCHES)
    check(r1.returncode == 0 and r2.returncode == 0 and r1.stdout.count('batch') == S // 3 and
          r1.stdout == r2.stdout, f'train_data: identical batches: {r1.stdout} {r2.stdout} {r1.stderr} {r2.stderr}')
    outs = []
    for d in (full, img):
        p, ep = serve(d, tmp, ['--read-threads', '3'])
        try:
            outs.append(run(['stream', ep, '3'], tmp, exe=BATCHES))
        finally:
            stop(p)
    check(all(o.returncode == 0 for o in outs) and outs[0].stdout.count('batch') == S // 3 and
          outs[0].stdout == outs[1].stdout,
          f'the C consumer gets identical batches: {[o.stdout + o.stderr for o in outs]}')

    for d in (full, img):
        r = run(['verify', d], tmp)
        check(r.returncode == 0, f'verify {os.path.basename(d)}: {r.stdout} {r.stderr}')
    r = run(['inspect', img], tmp)
    check(r.returncode == 0 and 'images-only' in r.stdout and 'rebuilt' in r.stdout, f'inspect: {r.stdout} {r.stderr}')

    # a model file that is not the one the dataset was made with
    bad = os.path.join(tmp, 'bad-model')
    shutil.copytree(img, bad)
    shutil.copy(os.path.join(bad, 'models', 'synth_00000.dat'), os.path.join(bad, 'models', 'synth_00001.dat'))
    r = run(['verify', bad], tmp)
    # model 1's first sample is sample 3: shard 1, row 1
    want = ['shard-000001.h5: sample 3 (row 1 of the shard): /inputs rebuilt from model 1',
            'synth_00001.dat', 'does not match its checksum']
    check(r.returncode == 1 and all(w in r.stderr for w in want), f'verify: a wrong model file named: {r.stderr}')
    # the ranks of an mpirun share the rebuild (blocks of samples): the same
    # finding, from the rank whose block holds sample 3 (the other rank's
    # block starts with model 1's sample 4: its own finding), one summary
    r = subprocess.run([os.environ.get('COEMU_MPIEXEC', 'mpiexec'), '--allow-run-as-root', '--oversubscribe',
                        '-n', '2', COEMU, 'verify', bad], capture_output=True, text=True, cwd=tmp,
                       timeout=300)
    check(r.returncode == 1 and all(w in r.stderr for w in want) and
          r.stderr.count('2 problems (listed above)') == 1 and 'shard-000002.h5: sample 4 (row 0' in r.stderr,
          f'verify on 2 ranks: a wrong model file named: {r.stderr}')
    r = subprocess.run([os.environ.get('COEMU_MPIEXEC', 'mpiexec'), '--allow-run-as-root', '--oversubscribe',
                        '-n', '2', COEMU, 'verify', img], capture_output=True, text=True, cwd=tmp,
                       timeout=300)
    check(r.returncode == 0, f'verify on 2 ranks, images-only: {r.stdout} {r.stderr}')
    got, cerr, err = stream_all(bad, tmp)
    check(len(got) < S and all(w in cerr + err for w in ('/inputs rebuilt from model 1', 'synth_00001.dat')),
          f'serve: the wrong model is an error to the consumer, not a sample ({len(got)} samples): {cerr} {err[-600:]}')
    r = run(['error', bad, '3', '5', '/inputs rebuilt from model 1', 'synth_00001.dat', 'does not match its checksum'],
            tmp, exe=THREADS)
    check(r.returncode == 0 and '1 passed, 0 failed' in r.stdout,
          f'images_only_threads: the wrong model named from worker threads: {r.stdout} {r.stderr}')
    # a truncated model file
    trunc = os.path.join(tmp, 'trunc-model')
    shutil.copytree(img, trunc)
    os.truncate(os.path.join(trunc, 'models', 'synth_00002.dat'), 1000)
    r = run(['verify', trunc], tmp)
    check(r.returncode == 1 and 'model 2' in r.stderr and 'synth_00002.dat' in r.stderr and 'truncated' in r.stderr,
          f'verify: a truncated model file named: {r.stderr}')
    r = run(['error', trunc, '6', '8', 'model 2', 'synth_00002.dat', 'truncated'], tmp, exe=THREADS)
    check(r.returncode == 0 and '1 passed, 0 failed' in r.stdout,
          f'images_only_threads: the truncated model named from worker threads: {r.stdout} {r.stderr}')
    got, cerr, err = stream_all(trunc, tmp)
    check(len(got) < S and all(w in cerr + err for w in ('model 2', 'synth_00002.dat', 'truncated')),
          f'serve: the truncated model is an error to the consumer ({len(got)} samples): {cerr} {err[-600:]}')

    # a dataset made by another version of its reconstruction's arithmetic
    # (sampler_recon_version: linear 3) is refused, naming both versions;
    # the version is per reconstruction, so constant and limited keep 1
    old = os.path.join(tmp, 'old-sampler')
    shutil.copytree(img, old)
    with h5py.File(os.path.join(old, 'dataset.h5'), 'r+') as h:
        recon = h['geometry'].attrs['reconstruction']
        recon = recon.decode() if isinstance(recon, bytes) else str(recon)
        check(recon == 'linear' and int(h['geometry'].attrs['sampler_version']) == 3,
              f'the job samples with linear, recorded as sampler version 3: {recon}')
        h['geometry'].attrs.modify('sampler_version', np.int64(2))
    r = run(['verify', old], tmp)
    check(r.returncode == 1 and 'sampler_version 2' in r.stderr and 'version 3 for reconstruction linear' in r.stderr,
          f'verify: a linear dataset of sampler version 2 (the monomial form) is refused: {r.stderr}')

    # a damaged target (the shard's bytes changed in place)
    dmg = os.path.join(tmp, 'damaged-target')
    shutil.copytree(img, dmg)
    with h5py.File(os.path.join(dmg, 'shards', 'shard-000002.h5'), 'r+') as h:
        t = h['targets'][1]
        t[3, 5, 7] *= 2
        h['targets'][1] = t
    r = run(['verify', dmg], tmp)
    check(r.returncode == 1 and 'shard-000002.h5' in r.stderr and '/targets' in r.stderr,
          f'verify: a damaged target named: {r.stderr}')
    got, cerr, err = stream_all(dmg, tmp)
    check(len(got) < S and 'sample 5 (row 1 of the shard): /targets does not match its checksum' in cerr + err,
          f'serve: the damaged target is an error naming shard, row and array: {cerr} {err[-600:]}')

    # the paper's gridding (sampling.coemunet_compat, rotate/compat_grid) on the
    # AMRVAC snapshots: the rebuilt cubes are the stored ones too
    amr = os.path.join(ROOT, 'tests', 'data', 'amrvac')
    cj = (f"name: compat\ninputs: {{amrvac: {{glob: {amr}/agbwind3d_*.dat}}}}\n"
          "sampling: {directions: 2, sampler: coemunet, n: 64, edge: auto, k: 1, seed: 1234, coemunet_compat: true}\n"
          "line: {lamda: builtin:co.dat, transition: 2}\n"
          "output: {directory: OUT, samples_per_shard: 2EXTRA}\n"
          "splits: {train: 0.34, validation: 0.33, test: 0.33, seed: 3}\n")
    cd = {}
    for name, extra in (('cfull', ''), ('cimg', ', store_inputs: false')):
        open(os.path.join(tmp, f'{name}.yaml'), 'w').write(cj.replace('OUT', name).replace('EXTRA', extra))
        r = run(['generate', f'{name}.yaml', '--quiet'], tmp)
        check(r.returncode == 0, f'{name}: generate: {r.stderr}')
        cd[name] = stream_all(os.path.join(tmp, name), tmp)[0]
    check(len(cd['cfull']) == 6 and cd['cfull'] == cd['cimg'],
          f'coemunet_compat: the same samples from both ({len(cd["cfull"])}, {len(cd["cimg"])})')
    r = run(['ok', os.path.join(tmp, 'cimg')], tmp, exe=THREADS)
    check(r.returncode == 0 and '2 passed, 0 failed' in r.stdout,
          f'images_only_threads (coemunet_compat): {r.stdout} {r.stderr}')

    # a targets-only manifest (format_minor 1's store_inputs false): refused by serve
    old = os.path.join(tmp, 'targets-only')
    shutil.copytree(img, old)
    mp = os.path.join(old, 'manifest.json')
    text = open(mp).read()
    open(mp, 'w').write(text.replace('  "inputs": "rebuilt",\n', ''))
    r = run(['serve', old, '--endpoint', f'ipc://{tmp}/old.sock', '--epochs', '1'], tmp)
    check(r.returncode != 0 and '/inputs' in r.stderr, f'a targets-only dataset: serve refuses naming /inputs: {r.stderr}')
    open(mp, 'w').write(text.replace('"inputs": "rebuilt"', '"inputs": "regenerated"'))
    r = run(['verify', old], tmp)
    r2 = run(['inspect', old], tmp)
    check(r2.returncode == 1 and "inputs: 'regenerated', expected stored or rebuilt" in r2.stderr,
          f'an unknown inputs value is an error: {r2.stderr}')


with tempfile.TemporaryDirectory() as tmp:
    try:
        main(tmp)
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        check(False, f'{type(e).__name__}: {e}')

report()
