"""ckptfile - read a coemu checkpoint (docs/trainer.md, "Checkpoint format")
in Python, independently of the C reader: the tests use it to look at the
tensors a run saved, by their PyTorch state_dict names."""
import struct
import zlib

import numpy as np


# The u32 at offset 12 counts the header after the magic, version and itself
# (offsets 16..147), so the tensor table starts at 16 + 132 = 148.
HEADER_BYTES = 132
TABLE_AT = 16 + HEADER_BYTES
INT32_MAX = 2**31 - 1  # the StepLR step size of a constant rate (step_size 0)


def read_header(b):
    """The fixed header of checkpoint bytes b as a dict; checks the magic,
    the version and the header size."""
    assert b[:8] == b"COEMUCKP", "magic"
    version, hbytes = struct.unpack_from("<2I", b, 8)
    assert version == 1 and hbytes == HEADER_BYTES, f"version {version}, header size {hbytes}"
    h = {"arch": struct.unpack_from("<9I", b, 16)}
    (h["seed"], h["step"], h["epoch"], h["adam_kind"], h["lr"], h["beta1"], h["beta2"], h["eps"],
     h["weight_decay"], h["adam_t"], h["lr0"], h["gamma"], h["step_size"],
     h["ntensors"]) = struct.unpack_from("<QQII5dQddiI", b, 52)
    assert struct.calcsize("<QQII5dQddiI") == TABLE_AT - 52, "the header's fields fill it"
    return h


def read_ckpt(path, header=False):
    """(architecture fields, {name: float64 array}) of a checkpoint (with
    header=True, the read_header dict instead of the architecture fields);
    checks the magic, the version, the header size, the CRC-32 and that the
    tensor table accounts for every byte."""
    b = open(path, "rb").read()
    h = read_header(b)
    assert struct.unpack_from("<I", b, len(b) - 4)[0] == zlib.crc32(b[:-4]), f"{path}: CRC-32"
    pos, table = TABLE_AT, []
    for _ in range(h["ntensors"]):
        ln = struct.unpack_from("<H", b, pos)[0]
        name = b[pos + 2:pos + 2 + ln].decode()
        nd, fl = b[pos + 2 + ln], b[pos + 3 + ln]
        shape = struct.unpack_from("<%dQ" % nd, b, pos + 4 + ln)
        pos += 4 + ln + 8 * nd
        table.append((name, shape, fl))
    w = {}
    for name, shape, fl in table:
        n = int(np.prod(shape))
        w[name] = np.frombuffer(b, "<f4", n, pos).reshape(shape).astype(np.float64)
        pos += 4 * n * (3 if fl & 4 else 1)  # flag 4: Adam moments follow the values
    assert pos == len(b) - 4, f"{path}: tensor table and file size"
    return (h if header else h["arch"]), w
