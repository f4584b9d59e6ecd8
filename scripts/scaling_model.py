#!/usr/bin/env python3
"""scaling_model.py - time, disk, file-system operations and memory of a
`coemu generate` job on N ranks, from measured per-sample, per-model,
per-shard and per-rank costs (docs/scaling.md explains every term and where
each default was measured).

    python3 scripts/scaling_model.py                    # the paper job, the table of docs/scaling.md
    python3 scripts/scaling_model.py --ranks 128 --fs-GBps 20 --samples-per-shard 100
    python3 scripts/scaling_model.py --check-doc docs/scaling.md   # the doc's table is this script's

Defaults are jobs/paper.yaml (10,903 synthetic 4-level models x 200
directions, 64^3 cubes, k = 2, linear reconstruction, 7 channels, float32
inputs stored, 64 samples per shard) with the costs measured on one core of
this project's 2-core AMD Zen 4/5 hosts (docs/scaling.md, "Measured costs").
Replace them with your own cluster's (`coemu generate --check` and one short
run's end-of-run breakdown give them) and the model gives your job.
"""
import argparse
import math
import re
import sys

MB = 1e6


def model(a, ranks):
    """The job on `ranks` ranks: a dict of times [s], bytes and counts."""
    samples = a.models * a.directions
    shards = math.ceil(samples / a.samples_per_shard)
    # model loads: a rank keeps one model in memory and samples run in
    # (model, direction) order, so a model is loaded once for each shard its
    # samples fall in (shards go to ranks dynamically)
    S, D = a.samples_per_shard, a.directions
    loads = sum((m * D + D - 1) // S - (m * D) // S + 1 for m in range(a.models))
    sample_bytes = (3 * a.n ** 3 * 4 if a.store_inputs else 0) + a.channels * a.n ** 2 * 4 + 64
    data_bytes = samples * sample_bytes + shards * a.shard_overhead_bytes
    model_bytes = a.models * a.model_MB * MB if a.synth else 0.0

    # compute, in core-seconds, then spread over the ranks (dynamic shards)
    synth_cs = a.models * a.synth_s if a.synth else 0.0
    produce_cs = samples * a.ms_per_sample / 1e3 + loads * a.model_load_s
    shard_cs = shards * a.shard_ms / 1e3
    work = (produce_cs + shard_cs) / ranks
    # the idle tail: the last shards end at different times, at most one shard
    shard_s = a.samples_per_shard * a.ms_per_sample / 1e3 + a.model_load_s
    tail = shard_s if shards >= ranks else 0.0
    if shards < ranks:  # fewer shards than ranks: one shard each, the rest idle
        work = shard_s
    compute = synth_cs / ranks + work + tail
    # the file system: every byte written once (models, when synthetic, too)
    io = (data_bytes + model_bytes) / (a.fs_GBps * 1e9)
    meta_ops = shards * a.meta_ops_per_shard + (a.models * 4 if a.synth else 0)
    meta = meta_ops / a.mds_ops_per_s
    finish = a.finish_s + shards * a.finish_us_per_shard / 1e6  # rank 0: manifest + dataset.h5
    generate = max(compute, io, meta) + a.startup_s + finish
    # /stats: two passes over the training split's bytes, per-shard opens;
    # an images-only dataset rebuilds every input cube in each pass (sampling,
    # not solving) and loads each training model once a pass
    train_bytes = a.train * samples * sample_bytes
    per_sample_ms = a.stats_ms_per_sample + (0.0 if a.store_inputs else a.rebuild_ms_per_sample)
    rebuild_loads_s = 0.0 if a.store_inputs else 2 * a.train * a.models * a.model_load_s
    stats = max(2 * train_bytes / (a.read_GBps * 1e9),
                (2 * a.train * samples * per_sample_ms / 1e3 + rebuild_loads_s) / ranks) \
        + 2 * shards * a.read_open_ms / 1e3 / ranks
    memory = a.rank_base_MB * MB + a.model_mem_factor * a.model_MB * MB
    finish_memory = a.rank_base_MB * MB + shards * a.finish_kB_per_shard * 1e3  # rank 0 at the end
    return dict(samples=samples, shards=shards, loads=loads, data_bytes=data_bytes,
                model_bytes=model_bytes, compute=compute, io=io, meta=meta,
                meta_ops=meta_ops, generate=generate, stats=stats,
                memory=memory, finish_memory=finish_memory, bound=max((compute, 'compute'), (io, 'disk bandwidth'), (meta, 'metadata'))[1],
                core_hours=(synth_cs + produce_cs + shard_cs) / 3600)


def hms(s):
    if s < 120:
        return f'{s:.0f} s'
    if s < 7200:
        return f'{s / 60:.0f} min'
    return f'{s / 3600:.1f} h'


def table(a, ranks_list):
    rows = ['| ranks | generate | bound by | compute | writing | metadata | /stats |',
            '|---|---|---|---|---|---|---|']
    for r in ranks_list:
        m = model(a, r)
        rows.append(f"| {r} | {hms(m['generate'])} | {m['bound']} | {hms(m['compute'])} | "
                    f"{hms(m['io'])} | {hms(m['meta'])} | {hms(m['stats'])} |")
    return rows


def summary(a):
    m = model(a, 1)
    return [f"samples {m['samples']:,}, shards {m['shards']:,}, model loads {m['loads']:,.0f}, "
            f"core-hours {m['core_hours']:.1f}",
            f"disk: dataset {m['data_bytes'] / 1e12:.2f} TB ({m['data_bytes'] / 2**40:.2f} TiB), "
            f"synthetic models {m['model_bytes'] / 1e12:.2f} TB; "
            f"file-system metadata operations {m['meta_ops']:,.0f}; memory per rank {m['memory'] / MB:.0f} MB, "
            f"rank 0 at the end {m['finish_memory'] / 1e9:.1f} GB"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group('the job (defaults: jobs/paper.yaml)')
    g.add_argument('--models', type=int, default=10903)
    g.add_argument('--directions', type=int, default=200)
    g.add_argument('--n', type=int, default=64, help='cube side')
    g.add_argument('--channels', type=int, default=7)
    g.add_argument('--samples-per-shard', type=int, default=64)
    g.add_argument('--no-inputs', dest='store_inputs', action='store_false', help='output.store_inputs: false')
    g.add_argument('--no-synth', dest='synth', action='store_false', help='models are read, not made by the job')
    g.add_argument('--train', type=float, default=0.8, help='training fraction (/stats reads it)')
    c = p.add_argument_group('costs (defaults: measured here, docs/scaling.md)')
    c.add_argument('--ms-per-sample', type=float, default=68.0, help='sample + solve + write, one core')
    c.add_argument('--model-load-s', type=float, default=0.71, help='load a model (read, tree, reconstruction)')
    c.add_argument('--synth-s', type=float, default=0.7, help='make one synthetic model')
    c.add_argument('--model-MB', type=float, default=65.0, help='one model on disk')
    c.add_argument('--shard-ms', type=float, default=1.5, help='create, fsync, rename one shard')
    c.add_argument('--shard-overhead-bytes', type=float, default=5e3)
    c.add_argument('--meta-ops-per-shard', type=float, default=10.0, help='creates, opens, stats, renames, fsyncs')
    c.add_argument('--finish-s', type=float, default=1.0)
    c.add_argument('--finish-us-per-shard', type=float, default=90.0, help='manifest + virtual datasets')
    c.add_argument('--startup-s', type=float, default=2.0, help='MPI start, job checks, line data')
    c.add_argument('--stats-ms-per-sample', type=float, default=13.0, help='moments + median of one sample, one pass')
    c.add_argument('--rebuild-ms-per-sample', type=float, default=32.0,
                   help='--no-inputs: remake one input cube for /stats (sampling), one core')
    c.add_argument('--read-open-ms', type=float, default=0.14, help='open a shard to read it')
    c.add_argument('--finish-kB-per-shard', type=float, default=44.0, help="rank 0's memory while writing dataset.h5")
    c.add_argument('--rank-base-MB', type=float, default=180.0)
    c.add_argument('--model-mem-factor', type=float, default=2.0, help='memory of a loaded model / its file size')
    f = p.add_argument_group('the file system')
    f.add_argument('--fs-GBps', type=float, default=20.0, help='aggregate write bandwidth')
    f.add_argument('--read-GBps', type=float, default=40.0, help='aggregate read bandwidth')
    f.add_argument('--mds-ops-per-s', type=float, default=20000.0, help='metadata server operations/s')
    p.add_argument('--ranks', type=int, nargs='*', default=[1, 16, 64, 256, 1024, 4096])
    p.add_argument('--check-doc', metavar='MD', help='check that MD holds this table (docs/scaling.md)')
    a = p.parse_args()
    if a.samples_per_shard < 1 or a.models < 1 or a.directions < 1 or min(a.ranks) < 1:
        p.error('models, directions, samples per shard and ranks must be >= 1')
    out = summary(a) + [''] + table(a, a.ranks)
    if a.check_doc:
        text = open(a.check_doc).read()
        missing = [line for line in out if line and line not in text]
        if missing:
            print(f'{a.check_doc}: these lines of the model are not in the doc (rerun '
                  f'scripts/scaling_model.py and paste its output):', file=sys.stderr)
            for line in missing:
                print('  ' + line, file=sys.stderr)
            return 1
        print(f'{a.check_doc}: the table is the model\'s ({len(out)} lines)')
        return 0
    print('\n'.join(out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
