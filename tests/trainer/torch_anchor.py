#!/usr/bin/env python3
"""The PyTorch + cuDNN anchor of the trainer's device check
(scripts/gpu-check-trainer.sh): COEmuNet as coemunet_torch.py builds it (the
paper's 7-channel model at its defaults), coemu's loss (0.8 MSE + 0.2 mean
|FFT2(t) - FFT2(p)|, docs/trainer.md) and Adam (lr 4e-4), on random data on
one GPU, in the same run as coemu's CUDA backend:

  - training samples/s at --batch in float32 (TF32 off for convolutions and
    matrix products), TF32, and bfloat16 autocast (float32 master weights,
    the loss in float32);
  - inference samples/s (evaluation mode, no gradients) at --infer-batch
    in the same precisions;
  - the loss curve of --curve-steps steps from one initialisation on one
    fixed batch per step in each precision, and its largest relative
    distance from the float32 curve (the measured effect of TF32 / bf16).

Each rate is measured with the batch fed three ways (--feeds; coemu's
trainer_gpu_check the same, trainer/train_bench.h):
  pageable  copied from ordinary host memory before each step (x.to(dev)),
            as coemu's trainer_step uploads input and targets: the line
            without a feed= word, as in the earlier runs;
  pinned    from page-locked host memory (pin_memory), copied on a second
            CUDA stream into one of two device buffers while the step
            before computes: "feed=pinned";
  resident  already on the GPU: the network's own rate, "feed=resident".
A batch of 64 inputs is 201 MB: from pageable memory (~5 GB/s) that copy
alone is ~40 ms, ~1,600 samples/s whatever the network does. The copies'
rates alone come first:
  anchor: upload torch pageable bytes=201326592 GB/s X
Each figure is the mean of --iters
timed iterations after 3 warm-ups, with
torch.backends.cudnn.benchmark on (cuDNN's algorithms found once per shape,
as coemu's backend does). Output: one line per figure,
  anchor: train torch fp32 batch=32 samples/s 1234.5
  anchor: infer torch fp32 batch=64 feed=resident samples/s 1234.5
Exit 77 (skipped) when torch sees no CUDA device.

--profile PRECS (e.g. fp32,tf32) instead: where a training step's device
time goes, for each precision in turn: the training step above at --batch,
3 warm-ups, then --profile-steps (5) steps under torch.profiler (CPU and CUDA
activity); the --profile-top (25) CUDA kernels (and memcpys / memsets) by
total device time, one per line, the name cut to 100 characters (cuDNN's
and cuBLAS's kernel names say which implementation ran), then the sum over
all of them and the wall time per step:
  anchor: profile torch fp32 kernel <name> ms_per_step X calls_per_step Y
  anchor: profile torch fp32 total: ms_per_step X calls_per_step Y (...)
  anchor: profile torch fp32 wall: ms_per_step X (...)
The rates and curves are not run then.

--channels-last: the same figures with the model's weights and the input
batch in PyTorch's channels-last layouts (torch.channels_last_3d for the
5-D tensors, channels_last for 4-D; cuDNN then runs NDHWC convolutions,
the layout its tensor-core kernels take without transposes), each line
marked "channels_last" (and no loss curves):
  anchor: train torch bf16 channels_last batch=32 samples/s 1234.5
Both codes run NCDHW otherwise; this asks whether the layout is the way to
the inference target (5,000 samples/s at batch 64) that neither reaches.

--self-test (no GPU needed; the CPU, float32, 2 threads): the
channels-last model is the same function: its output at batch 2 against
the float64 one lies within 4x the float32 NCDHW output's own distance
from it (the host's float32 noise), its activations are channels-last, and
one training step from the same weights gives the same loss within the
same floor.

Usage: torch_anchor.py [--batch 32] [--infer-batch 64] [--iters 10]
                       [--nfreq 7] [--precisions fp32,tf32,bf16] [--curve-steps 20]
                       [--channels-last] [--feeds pageable,pinned,resident]
                       [--profile PRECS [--profile-steps 5] [--profile-top 25]]
       torch_anchor.py --self-test
"""
import argparse
import contextlib
import os
import sys
import time

try:
    import torch
except ImportError:  # main() says so (exit 77: skipped)
    torch = None

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if torch is not None:
    from coemunet_torch import COEmuNet  # noqa: E402


def loss_fn(p, t):
    p, t = p.float(), t.float()
    e = p - t
    return 0.8 * (e * e).mean() + 0.2 * torch.fft.fft2(e).abs().mean()


def autocast(prec):
    return torch.autocast("cuda", dtype=torch.bfloat16) if prec == "bf16" else contextlib.nullcontext()


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def set_precision(prec):
    tf32 = prec == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


def batch(nfreq, grid, n, step):
    """A batch in host memory: each step copies it to the GPU, as coemu's
    trainer_step uploads its input and targets (pageable memory, both)."""
    g = torch.Generator(device="cpu").manual_seed(1000 + step)
    x = torch.rand(n, 3, grid, grid, grid, generator=g) * 2 - 1
    t = torch.rand(n, 1, nfreq, grid, grid, generator=g)
    return x, t


def model_for(nfreq, dev, channels_last=False):
    torch.manual_seed(1234)
    m = COEmuNet(nfreq, 64, 4, [8, 16, 32], 4096, 64, "reference").to(dev)
    return to_channels_last(m) if channels_last else m


def layout(t, channels_last):
    """t in the channels-last layout of its rank (5-D: channels_last_3d,
    4-D: channels_last) when asked, else as it is"""
    if not channels_last or t.dim() not in (4, 5):
        return t
    return t.contiguous(memory_format=torch.channels_last_3d if t.dim() == 5
                        else torch.channels_last)


def to_channels_last(m):
    """the model's 4-D and 5-D parameters (convolution weights) in the
    channels-last layouts; Module.to(memory_format=) takes one format for
    both ranks, which the 5-D one refuses for 4-D tensors"""
    with torch.no_grad():
        for p in m.parameters():
            p.data = layout(p.data, True)
    return m


FEEDS = ("pageable", "pinned", "resident")


def feeder(xh, th, feed, dev, cl):
    """A function giving the next step's batch on dev, fed from the host
    batch (xh, th; th may be None) as `feed` says (module docstring)."""
    def put(x):
        return layout(x, cl)

    if feed == "pageable":
        return lambda: (put(xh.to(dev)), th.to(dev) if th is not None else None)
    if feed == "resident" or dev.type != "cuda":  # (no page-locking without a device)
        x, t = put(xh.to(dev)), th.to(dev) if th is not None else None
        return lambda: (x, t)
    # pinned: two device buffers; batch k+1 copies on `copy` while step k
    # computes; a buffer is refilled only after the step that read it
    host = [xh.pin_memory()] + ([th.pin_memory()] if th is not None else [])
    copy = torch.cuda.Stream()
    bufs = [[torch.empty_like(h, device=dev) for h in host] for _ in range(2)]
    ready = [torch.cuda.Event(), torch.cuda.Event()]
    state = {"k": 0}

    def queue(k, after):
        with torch.cuda.stream(copy):
            copy.wait_event(after)
            for b, h in zip(bufs[k], host):
                b.copy_(h, non_blocking=True)
            ready[k].record(copy)

    start = torch.cuda.Event()
    start.record()
    queue(0, start)

    def nxt():
        k = state["k"]
        cur = torch.cuda.current_stream()
        cur.wait_event(ready[k])
        read = torch.cuda.Event()
        read.record(cur)  # after the work that last read buffer k ^ 1
        queue(k ^ 1, read)
        state["k"] = k ^ 1
        b = bufs[k]
        return put(b[0]), b[1] if len(b) > 1 else None

    return nxt


def train_step(args, prec, dev):
    """One training step at --batch in precision prec (a fresh model and
    optimiser): step(x, t) on a batch on dev, and the host batch."""
    set_precision(prec)
    m = model_for(args.nfreq, dev, args.channels_last).train()
    opt = torch.optim.Adam(m.parameters(), lr=4e-4)
    xh, th = batch(args.nfreq, 64, args.batch, 0)

    def step(x, t):
        opt.zero_grad(set_to_none=True)
        with autocast(prec):
            y = m(x)
        loss = loss_fn(y, t)
        loss.backward()
        opt.step()
        return loss

    return step, xh, th


def timed_rate(fn, nxt, n, iters, dev):
    """samples/s of fn on nxt()'s batches, n samples each: 3 warm-ups, then
    iters timed calls to the device's end"""
    for _ in range(3):
        fn(*nxt())
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn(*nxt())
    sync(dev)
    return n * iters / (time.perf_counter() - t0)


def train_rates(args, prec, dev, feeds):
    """{feed: training samples/s}, one model for all feeds"""
    step, xh, th = train_step(args, prec, dev)
    return {f: timed_rate(step, feeder(xh, th, f, dev, args.channels_last), args.batch,
                          args.iters, dev) for f in feeds}


def upload_rates(args, dev):
    """GB/s of copying a batch of --infer-batch inputs to the GPU from
    pageable and from page-locked memory, the copy alone"""
    xh, _ = batch(args.nfreq, 64, args.infer_batch, 0)
    out = {}
    for feed, src in (("pageable", xh), ("pinned", xh.pin_memory())):
        d = torch.empty_like(src, device=dev)
        d.copy_(src, non_blocking=True)
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(args.iters):
            d.copy_(src, non_blocking=True)
        sync(dev)
        out[feed] = src.numel() * src.element_size() * args.iters / (time.perf_counter() - t0) / 1e9
    return xh.numel() * xh.element_size(), out


def profile_kernels(args, prec, dev):
    """--profile: the device time of --profile-steps training steps per CUDA
    kernel (memcpys and memsets too), largest first."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    step, xh, th = train_step(args, prec, dev)
    nxt = feeder(xh, th, "pageable", dev, args.channels_last)
    for _ in range(3):  # cudnn.benchmark's search, the allocator's pools
        step(*nxt())
    sync(dev)
    n = args.profile_steps
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(n):
            step(*nxt())
        sync(dev)
        wall = time.perf_counter() - t0
    kernels = {}  # name -> [microseconds, calls]
    for e in prof.events():
        if e.device_type != DeviceType.CUDA:
            continue
        k = kernels.setdefault(e.name, [0.0, 0])
        k[0] += e.time_range.end - e.time_range.start
        k[1] += 1
    if not kernels:
        print(f"anchor: profile torch {prec}: error: the profiler recorded no CUDA activity",
              flush=True)
        return 1
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:args.profile_top]
    for name, (us, calls) in top:
        name = " ".join(name.split())
        short = name if len(name) <= 100 else name[:97] + "..."
        print(f"anchor: profile torch {prec} kernel {short} ms_per_step {us / 1e3 / n:.3f} "
              f"calls_per_step {calls / n:g}")
    us = sum(v[0] for v in kernels.values())
    calls = sum(v[1] for v in kernels.values())
    print(f"anchor: profile torch {prec} total: ms_per_step {us / 1e3 / n:.3f} calls_per_step "
          f"{calls / n:g} ({len(kernels)} kernels, the top {len(top)} above, {n} steps at batch "
          f"{args.batch})")
    print(f"anchor: profile torch {prec} wall: ms_per_step {wall * 1e3 / n:.3f} (the profiler "
          f"on; wall - total: the device idle between kernels)", flush=True)
    return 0


def infer_rates(args, prec, dev, feeds):
    """{feed: inference samples/s}, evaluation mode, no gradients"""
    set_precision(prec)
    m = model_for(args.nfreq, dev, args.channels_last).eval()
    xh, _ = batch(args.nfreq, 64, args.infer_batch, 0)
    with torch.no_grad(), autocast(prec):
        return {f: timed_rate(lambda x, t: m(x), feeder(xh, None, f, dev, args.channels_last),
                              args.infer_batch, args.iters, dev) for f in feeds}


def curve(args, prec, dev):
    set_precision(prec)
    m = model_for(args.nfreq, dev).train()
    opt = torch.optim.Adam(m.parameters(), lr=4e-4)
    out = []
    for k in range(args.curve_steps):
        x, t = batch(args.nfreq, 64, args.curve_batch, k)
        x, t = x.to(dev), t.to(dev)
        opt.zero_grad(set_to_none=True)
        with autocast(prec):
            y = m(x)
        loss = loss_fn(y, t)
        loss.backward()
        opt.step()
        out.append(float(loss))
    return out


def stem_layout(args, dev):
    """what layout the stem's convolution gives on this device (one line):
    cuDNN picks the channels-last one when the weight is channels-last"""
    m = model_for(args.nfreq, dev, True).eval()
    seen = {}

    def hook(mod, inp, out):  # returns None: the output stays as it is
        seen["cl"] = out.is_contiguous(memory_format=torch.channels_last_3d)

    h = m.encoder0.layers[0].layers[0].register_forward_hook(hook)
    xh, _ = batch(args.nfreq, 64, 1, 0)
    with torch.no_grad():
        m(layout(xh.to(dev), True))
    h.remove()
    print(f"anchor: channels_last: the stem convolution's output is "
          f"{'channels-last' if seen.get('cl') else 'NCDHW'}", flush=True)


def self_test():
    """--self-test: the channels-last model is the same function (CPU)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from pycheck import check, report

    torch.set_num_threads(2)
    cpu = torch.device("cpu")
    xh, th = batch(7, 64, 2, 0)

    def run(cl, dtype):
        m = model_for(7, cpu, cl).to(dtype).eval()
        with torch.no_grad():
            return m(layout(xh.to(dtype), cl)).double(), m

    ref, _ = run(False, torch.float64)
    plain, _ = run(False, torch.float32)
    chl, m = run(True, torch.float32)
    scale = ref.abs().max().item()
    floor = (plain - ref).abs().max().item() / scale
    err = (chl - ref).abs().max().item() / scale
    print(f"self-test: forward, channels-last vs float64 {err:.3g} of the largest output; "
          f"NCDHW float32 vs float64 (the floor) {floor:.3g}")
    check(0 < floor < 1e-4, f"the float32 floor {floor:.3g} (0 would mean no float32 ran)")
    check(err <= 4 * floor, f"channels-last forward {err:.3g} > 4 x the floor {floor:.3g}")
    # every convolution weight in its channels-last layout (whether the
    # activations follow is the device's choice: the CPU convolutions of
    # torch 1.13 return NCDHW whatever they are given; on a device the run
    # prints what the stem gave, stem_layout below)
    convs = [mod for mod in m.modules() if isinstance(mod, (torch.nn.Conv3d, torch.nn.Conv2d))]
    check(convs and all(layout(c.weight, True).data_ptr() == c.weight.data_ptr() and
                        c.weight.is_contiguous(memory_format=torch.channels_last_3d
                                               if c.weight.dim() == 5 else torch.channels_last)
                        for c in convs),
          f"the {len(convs)} convolution weights are channels-last")
    check(all(not c.weight.is_contiguous() for c in convs
              if c.in_channels > 1 and c.weight[0, 0].numel() > 1),
          "the weights with more than one input channel and a kernel of more than one "
          "voxel are no longer NCDHW (for the others the two layouts are one)")

    def one_step(cl, dtype):
        m = model_for(7, cpu, cl).to(dtype).train()
        opt = torch.optim.Adam(m.parameters(), lr=4e-4)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(m(layout(xh.to(dtype), cl)), th.to(dtype))
        loss.backward()
        opt.step()
        with torch.no_grad():
            return loss.item(), loss_fn(m(layout(xh.to(dtype), cl)), th.to(dtype)).item()

    r, p, c = one_step(False, torch.float64), one_step(False, torch.float32), one_step(True, torch.float32)
    for k, what in enumerate(("the loss", "the loss after one Adam step")):
        fl = abs(p[k] - r[k]) / abs(r[k])
        e = abs(c[k] - r[k]) / abs(r[k])
        print(f"self-test: {what}, channels-last vs float64 {e:.3g}, NCDHW float32 {fl:.3g}")
        check(e <= 4 * max(fl, 1e-7), f"{what}: channels-last {e:.3g} > 4 x the floor {fl:.3g}")
    report()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--infer-batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--nfreq", type=int, default=7)
    ap.add_argument("--precisions", default="fp32,tf32,bf16")
    ap.add_argument("--curve-steps", type=int, default=20)
    ap.add_argument("--curve-batch", type=int, default=4)
    ap.add_argument("--profile", metavar="PRECS", default=None,
                    help="only the kernel profile of a training step in these precisions "
                         "(e.g. fp32,tf32)")
    ap.add_argument("--profile-steps", type=int, default=5)
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--channels-last", action="store_true",
                    help="weights and inputs in the channels-last layouts (NDHWC convolutions)")
    ap.add_argument("--feeds", default=",".join(FEEDS),
                    help="how the rates' batches reach the GPU: pageable, pinned, resident "
                         "(comma-separated; module docstring)")
    ap.add_argument("--self-test", action="store_true",
                    help="check the channels-last model against the NCDHW one on the CPU")
    args = ap.parse_args()
    if torch is None:
        print(f"SKIP: {sys.executable} cannot import torch")
        return 77
    if args.self_test:
        return self_test()
    precs = [p for p in args.precisions.split(",") if p]
    prof = [p for p in args.profile.split(",") if p] if args.profile is not None else None
    for opt, ps in (("--precisions", precs), ("--profile", prof or [])):
        bad = [p for p in ps if p not in ("fp32", "tf32", "bf16")]
        if bad:
            print(f"torch_anchor.py: error: {opt}: {bad[0]!r}: expected fp32, tf32 or bf16",
                  file=sys.stderr)
            return 2
    feeds = [f for f in args.feeds.split(",") if f]
    if not feeds or any(f not in FEEDS for f in feeds):
        bad = next((f for f in feeds if f not in FEEDS), "")
        print(f"torch_anchor.py: error: --feeds: {bad!r}: expected pageable, pinned or resident",
              file=sys.stderr)
        return 2
    if prof is not None and (not prof or args.profile_steps < 1 or args.profile_top < 1):
        print("torch_anchor.py: error: --profile needs a precision, --profile-steps and "
              "--profile-top at least 1", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("SKIP: torch sees no CUDA device")
        return 77
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"anchor: torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
          f"{torch.cuda.get_device_name(0)}", flush=True)
    if prof is not None:
        return 1 if any([profile_kernels(args, p, dev) for p in prof]) else 0
    tag = " channels_last" if args.channels_last else ""
    if args.channels_last:
        stem_layout(args, dev)
    nbytes, up = upload_rates(args, dev)
    for feed, r in up.items():
        print(f"anchor: upload torch {feed} bytes={nbytes} GB/s {r:.2f} "
              f"({nbytes / r / 1e6:.2f} ms a batch of {args.infer_batch})", flush=True)

    def show(kind, b, rates):
        for feed, r in rates.items():
            word = "" if feed == "pageable" else f"feed={feed} "
            print(f"anchor: {kind} torch {prec}{tag} batch={b} {word}samples/s {r:.1f}", flush=True)

    for prec in precs:
        show("train", args.batch, train_rates(args, prec, dev, feeds))
        show("infer", args.infer_batch, infer_rates(args, prec, dev, feeds))
    if args.curve_steps > 0 and not args.channels_last:
        curves = {p: curve(args, p, dev) for p in precs}
        ref = curves.get("fp32")
        for p, c in curves.items():
            print(f"anchor: curve torch {p} " + " ".join(f"{v:.6g}" for v in c), flush=True)
            if ref and p != "fp32":
                d = max(abs(a - b) / abs(b) for a, b in zip(c, ref))
                print(f"anchor: curve torch {p} vs fp32: largest relative loss difference {d:.3g} "
                      f"over {len(c)} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
