"""ckptfile - read a coemu checkpoint (docs/trainer.md, "Checkpoint format")
in Python, independently of the C reader: the tests use it to look at the
tensors a run saved, by their PyTorch state_dict names."""
import struct
import zlib

import numpy as np


def read_ckpt(path):
    """(architecture fields, {name: float64 array}) of a checkpoint; checks the
    magic, the CRC-32 and that the tensor table accounts for every byte."""
    b = open(path, "rb").read()
    assert b[:8] == b"COEMUCKP", f"{path}: magic"
    assert struct.unpack_from("<I", b, len(b) - 4)[0] == zlib.crc32(b[:-4]), f"{path}: CRC-32"
    arch = struct.unpack_from("<9I", b, 16)
    ntens = struct.unpack_from("<I", b, 16 + 128)[0]
    pos, table = 16 + 132, []
    for _ in range(ntens):
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
    return arch, w
