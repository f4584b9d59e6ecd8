#!/usr/bin/env python3
"""COEmuNet weights between coemu and PyTorch (`coemu export --format
safetensors` / `--format ckpt`, docs/export.md).

dump_forward (C) trains small fixed-seed nets 20 steps (nfreq 1 and 3,
reference and input shortcut) and writes their checkpoints, an input batch
and the C outputs in evaluation mode. Here:

1. each checkpoint is exported to safetensors; the file is parsed with
   json + numpy (independently of coemu's reader); every value equals the
   checkpoint's (read by tests/ckptfile.py) bit for bit;
2. a PyTorch COEmuNet written here from docs/trainer.md (torch.nn modules
   named as in the reference code) loads it with load_state_dict(strict=True)
   and runs the same input; its float32 output and the C output must lie
   within FLOOR_FACTOR x the float32 noise floor of the float64 PyTorch
   output (the approach of test_forward_golden.py: the floor is how far
   legitimate float32 variants lie from float64 on this host: as is, batch
   reversed, inputs one ulp up or down);
3. round trip: safetensors -> checkpoint (`--format ckpt`) holds exactly the
   checkpoint's weights and buffers; without --out the import (and the export
   again) is refused, since the default name exists: the checkpoint is untouched;
4. the other way: the PyTorch model takes a training step (weights and
   BatchNorm running statistics change), is saved as safetensors by this
   script, imported into a checkpoint, and the C forward (ckpt_forward) of
   that checkpoint agrees with PyTorch's within the same bound; the imported
   values are exactly PyTorch's;
5. bad files: wrong shape, wrong dtype, a missing tensor, an extra tensor,
   malformed JSON, a header length past the end, truncated data, no
   architecture metadata: exit 1, a message naming the tensor or the byte,
   no output file.

torch is Debian's python3-torch; when the interpreter running this has no
torch, the script re-runs itself under /usr/bin/python3 if that one has it,
and is skipped (exit 77) only when torch cannot be imported anywhere.

Usage: test_safetensors.py DUMP_FORWARD_EXE CKPT_FORWARD_EXE   ($COEMU: coemu)"""
import json
import os
import struct
import subprocess
import sys
import tempfile

try:
    import torch
except ImportError:
    for exe in ("/usr/bin/python3",):
        if (os.path.exists(exe) and os.path.realpath(exe) != os.path.realpath(sys.executable)
                and subprocess.run([exe, "-c", "import torch, numpy"], capture_output=True).returncode == 0):
            os.execv(exe, [exe] + sys.argv)
    print("SKIP: torch cannot be imported by this Python or /usr/bin/python3 "
          "(apt-get install python3-torch)")
    sys.exit(77)
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402
from ckptfile import read_ckpt  # noqa: E402

torch.set_num_threads(1)
COEMU = os.environ["COEMU"]
DUMP, FWD = sys.argv[1], sys.argv[2]
FLOOR_FACTOR = 10
F32_EPS = float(np.finfo(np.float32).eps)

# ---- safetensors in Python (json + numpy) ------------------------------------

DT = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}


def st_read(path):
    """({name: array}, metadata) of a safetensors file."""
    b = open(path, "rb").read()
    n = struct.unpack_from("<Q", b, 0)[0]
    head = json.loads(b[8:8 + n])
    meta = head.pop("__metadata__", {})
    out = {}
    for k, e in head.items():
        a, z = e["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + a:8 + n + z], DT[e["dtype"]]).reshape(e["shape"])
    return out, meta


def st_write(path, tensors, meta, dtypes=None, shapes=None):
    """tensors {name: array} (float32 or int64) into a safetensors file;
    dtypes / shapes override what the header claims (for bad files)."""
    head, blobs, off = {}, [], 0
    for k, v in tensors.items():
        v = np.array(v, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        dt = {np.dtype("float32"): "F32", np.dtype("float64"): "F64", np.dtype("int64"): "I64"}[v.dtype]
        raw = v.astype(v.dtype.newbyteorder("<")).tobytes()
        head[k] = {"dtype": (dtypes or {}).get(k, dt), "shape": list((shapes or {}).get(k, v.shape)),
                   "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    head["__metadata__"] = meta
    h = json.dumps(head).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


# ---- COEmuNet in PyTorch: coemunet_torch.py (shared with torch_anchor.py) ------

from coemunet_torch import COEmuNet  # noqa: E402


def build(meta):
    enc = [int(v) for v in meta["enc"].split(",")]
    return COEmuNet(int(meta["nfreq"]), int(meta["grid"]), int(meta["stem"]), enc,
                    int(meta["latent"]), int(meta["dec"]), meta["shortcut"])


def load(model, tensors):
    sd = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
    return model.load_state_dict(sd, strict=True)


# ---- the bound ------------------------------------------------------------------


def rel_err(a, ref):
    return float(np.max(np.abs(a - ref)) / max(1e-30, np.max(np.abs(ref))))


def forward(model, x, dtype):
    m = model.to(dtype).eval()
    with torch.no_grad():
        return m(torch.from_numpy(x).to(dtype)).double().numpy()


def floor_of(model, x, ref):
    """The float32 noise floor: legitimate float32 variants against float64."""
    rng = np.random.default_rng(5)
    up = rng.random(x.shape) < 0.5
    moved = np.where(up, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf)))
    runs = [forward(model, x, torch.float32), forward(model, x[::-1].copy(), torch.float32)[::-1],
            forward(model, moved.astype(np.float32), torch.float32)]
    return max([F32_EPS] + [rel_err(y, ref) for y in runs]), runs[0]


def agree(what, c_out, model, x, broken=None):
    """c_out within the bound of model's output; with broken (a model whose
    weights were mapped wrongly) also that the bound can fail."""
    ref = forward(model, x, torch.float64)
    floor, t32 = floor_of(model, x, ref)
    model.to(torch.float32)
    check(c_out.shape == ref.shape, f"{what}: shape {c_out.shape} vs {ref.shape}")
    if c_out.shape != ref.shape:
        return
    err_c, err_t = rel_err(c_out, ref), rel_err(t32, ref)
    check(np.std(ref) > 1e-3, f"{what}: a non-trivial output (std {np.std(ref):.2g})")
    check(err_c <= FLOOR_FACTOR * floor,
          f"{what}: C output {err_c:.2e} of the largest value from PyTorch's float64 output, more "
          f"than {FLOOR_FACTOR} x the float32 floor {floor:.2e}")
    print(f"{what}: output {ref.shape}, C vs PyTorch float64 {err_c:.1e}, PyTorch float32 "
          f"{err_t:.1e}, floor {floor:.1e}")
    if broken is not None:
        err_b = rel_err(c_out, forward(broken, x, torch.float64))
        check(err_b > 100 * FLOOR_FACTOR * floor,
              f"{what}: a wrongly mapped weight must lie far outside the bound ({err_b:.1e})")
        print(f"{what}: with one kernel mirrored (a wrong mapping) {err_b:.1e}")


def coemu(*args):
    return subprocess.run([COEMU, "export", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def same_values(what, ckpt_w, tensors):
    """Every checkpoint tensor equals the file's exactly (the 2-D decoder's
    unit axis dropped); the file has nothing else but num_batches_tracked."""
    bad = [k for k, v in ckpt_w.items()
           if k not in tensors or not np.array_equal(np.asarray(tensors[k], np.float64).ravel(), v.ravel())
           or int(np.prod(tensors[k].shape)) != v.size]
    extra = [k for k in tensors if k not in ckpt_w and not k.endswith(".num_batches_tracked")]
    check(not bad and not extra, f"{what}: tensors differing {bad[:3]}, extra {extra[:3]}")


with tempfile.TemporaryDirectory() as d:
    r = subprocess.run([DUMP, d], capture_output=True, text=True)
    check(r.returncode == 0, f"dump_forward: {r.stderr}")
    for case in ("f1-reference", "f3-reference", "f1-input", "f3-input"):
        ck, st = os.path.join(d, case + ".ckpt"), os.path.join(d, case + ".safetensors")
        r = coemu(ck, "--format", "safetensors", "--quiet")
        check(r.returncode == 0 and r.stdout == "", f"{case}: export: {r.returncode} {r.stderr}")
        arch, w = read_ckpt(ck)
        tensors, meta = st_read(st)
        # 1. the file: exact values, the metadata
        same_values(f"{case} export", w, tensors)
        check([int(meta[k]) for k in ("nfreq", "grid", "stem")] == list(arch[:3])
              and meta["enc"] == ",".join(map(str, arch[3:6])) and int(meta["latent"]) == arch[6]
              and int(meta["dec"]) == arch[7] and meta["shortcut"] == ("reference", "input")[arch[8]]
              and meta["step"] == "20" and "coemu_version" in meta,
              f"{case}: metadata {meta}")
        nbt = [v for k, v in tensors.items() if k.endswith("num_batches_tracked")]
        check(nbt and all(v.dtype == np.int64 and v.shape == () and int(v) == 20 for v in nbt),
              f"{case}: num_batches_tracked (int64 scalars = the step count)")
        # 2. PyTorch loads it (strict) and computes what C computed
        model = build(meta)
        load(model, tensors)
        x = np.load(os.path.join(d, case + "-x.npy"))
        broken = build(meta)  # the output convolution's kernel mirrored: a wrong layout
        k = [k for k, v in tensors.items() if k.startswith("decoder") and v.ndim >= 4][-1]
        load(broken, {**tensors, k: np.array(tensors[k][..., ::-1])})
        agree(f"{case} C -> PyTorch", np.load(os.path.join(d, case + "-eval.npy")).astype(np.float64),
              model, x, broken)
        # 3. round trip C -> safetensors -> C: the same weights, bit for bit
        rt = os.path.join(d, case + "-rt.ckpt")
        r = coemu(st, "--format", "ckpt", "--out", rt)
        check(r.returncode == 0 and "wrote" in r.stdout, f"{case}: import: {r.returncode} {r.stderr}")
        # the default name of the import is the checkpoint exported from: refused,
        # the checkpoint (with its optimiser state) untouched
        before = open(ck, "rb").read()
        r = coemu(st, "--format", "ckpt")
        check(r.returncode == 2 and ck in r.stderr and "exists" in r.stderr and "--out" in r.stderr
              and open(ck, "rb").read() == before,
              f"{case}: an import onto the default name that exists: {r.returncode} {r.stderr}")
        r = coemu(ck, "--format", "safetensors")
        check(r.returncode == 2 and st in r.stderr, f"{case}: the export again: {r.stderr}")
        arch2, w2 = read_ckpt(rt)
        check(arch2 == arch and list(w2) == list(w) and all(np.array_equal(w[k], w2[k]) for k in w),
              f"{case}: round trip changed the architecture or a tensor")
        # 4. PyTorch -> C: a training step in PyTorch, saved, imported, run in C
        model.train().to(torch.float32)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        xt = torch.from_numpy(x)
        out = model(xt)
        loss = ((out - 0.5) ** 2).mean()
        loss.backward()
        opt.step()
        sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        moved = max(float(np.max(np.abs(sd[k].ravel().astype(np.float64) - w[k].ravel()))) for k in w)
        check(moved > 1e-4, f"{case}: the PyTorch step changed the weights ({moved:.1e})")
        pt = os.path.join(d, case + "-torch.safetensors")
        st_write(pt, sd, meta)
        back = os.path.join(d, case + "-torch.ckpt")
        r = coemu(pt, "--format", "ckpt", "--out", back)
        check(r.returncode == 0, f"{case}: import of PyTorch's file: {r.stderr}")
        _, w3 = read_ckpt(back)
        same_values(f"{case} PyTorch -> C", w3, sd)
        y = os.path.join(d, case + "-torch-y.npy")
        r = subprocess.run([FWD, back, os.path.join(d, case + "-x.npy"), y], capture_output=True, text=True)
        check(r.returncode == 0, f"{case}: ckpt_forward: {r.stderr}")
        agree(f"{case} PyTorch -> C", np.load(y).astype(np.float64), model, x)

    # 5. bad files (f3-reference's tensors): exit 1, the message, nothing written
    tensors, meta = st_read(os.path.join(d, "f3-reference.safetensors"))
    tensors = {k: np.array(v) for k, v in tensors.items()}
    good = os.path.join(d, "good.safetensors")
    st_write(good, tensors, meta)
    check(coemu(good, "--format", "ckpt", "--out", os.path.join(d, "good.ckpt")).returncode == 0,
          "the rewritten file imports")

    def bad(name, path, *needles):
        out = os.path.join(d, "bad.ckpt")
        r = coemu(path, "--format", "ckpt", "--out", out)
        check(r.returncode == 1 and "coemu export: error: " in r.stderr
              and all(n in r.stderr for n in needles) and not os.path.exists(out),
              f"{name}: status {r.returncode}, stderr {r.stderr!r}, expected {needles}")

    def variant(name, t, m=meta, **kw):
        p = os.path.join(d, name + ".safetensors")
        st_write(p, t, m, **kw)
        return p

    t = dict(tensors)
    t["to_lat.bias"] = np.zeros(tensors["to_lat.bias"].size + 1, np.float32)
    bad("wrong shape", variant("shape", t), "'to_lat.bias' has shape [9], expected [8]")
    t = dict(tensors)
    t["to_dec.weight"] = tensors["to_dec.weight"].astype(np.float64)
    bad("float64", variant("dtype", t), "'to_dec.weight' has dtype F64, expected F32")
    t = dict(tensors)
    del t["encoder1.layers.3.CBR1.layers.1.running_var"]
    bad("missing", variant("missing", t), "'encoder1.layers.3.CBR1.layers.1.running_var' is missing")
    t = dict(tensors)
    t["head.weight"] = np.ones(3, np.float32)
    bad("extra", variant("extra", t), "unexpected tensor 'head.weight'")
    bad("no architecture", variant("nometa", tensors, {k: v for k, v in meta.items() if k != "grid"}),
        "metadata key 'grid'")
    bad("shape/offsets", variant("offsets", tensors, shapes={"to_lat.bias": [4]}),
        "'to_lat.bias': data_offsets", "need 16")
    raw = open(good, "rb").read()
    n = struct.unpack_from("<Q", raw, 0)[0]
    p = os.path.join(d, "json.safetensors")
    open(p, "wb").write(raw[:8] + raw[8:8 + n].replace(b'"shape":', b'"shape";', 1) + raw[8 + n:])
    bad("malformed JSON", p, "safetensors header, byte", "expected ':'")
    # a backslash and a NUL byte inside a key: an error, not a key cut short
    hdr = raw[8:8 + n].replace(b'"shape":', b'"sh\\\x00ape":', 1)
    p = os.path.join(d, "nul.safetensors")
    open(p, "wb").write(struct.pack("<Q", len(hdr)) + hdr + raw[8 + n:])
    bad("a NUL escaped in a key", p, "safetensors header, byte", "bad escape")
    hdr = raw[8:8 + n].replace(b'"shape":', b'"shape":\x00', 1)  # and between two tokens
    open(p, "wb").write(struct.pack("<Q", len(hdr)) + hdr + raw[8 + n:])
    bad("a NUL between tokens", p, "safetensors header, byte")
    p = os.path.join(d, "len.safetensors")
    open(p, "wb").write(struct.pack("<Q", len(raw)) + raw[8:])
    bad("header length", p, "header length", "bytes 0-7")
    p = os.path.join(d, "trunc.safetensors")
    open(p, "wb").write(raw[:-6])
    bad("truncated", p, "truncated")
    p = os.path.join(d, "ckpt-as-st.safetensors")
    open(p, "wb").write(open(os.path.join(d, "f3-reference.ckpt"), "rb").read())
    bad("a checkpoint given as safetensors", p, "not a safetensors file?")
    # architecture mismatch: the f1 file's tensors with the f3 metadata
    t1, _ = st_read(os.path.join(d, "f1-reference.safetensors"))
    bad("another architecture", variant("arch", {k: np.array(v) for k, v in t1.items()}),
        "'to_dec.weight' has shape [64, 8], expected [192, 8]")
    r = coemu(os.path.join(d, "nope.ckpt"), "--format", "safetensors")
    check(r.returncode == 1 and "nope.ckpt" in r.stderr, f"missing checkpoint: {r.stderr}")
report()
