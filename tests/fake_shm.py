"""fake_shm.py - a fake producer of the shared-memory transport
(docs/stream-protocol.md, "Shared memory") for the clients' tests
(tests/python/test_package.py: the Python client; tests/serve/test_shm.py:
the C client): it makes a segment as serve does, sends a WELCOME naming it,
records the consumer's answer, then sends 7 samples in 3 good chunks (ids
0-2, 3-5 and 6; input rows filled with id + 0.25, shape (1, 2, 3, 1),
target rows id + 0.5, shape (1, 1, 4)) and 3 bad ones between them: a row
damaged in the segment after its checksum was made, a descriptor outside
the segment, and one of another row size."""
import mmap
import os
import struct

import numpy as np
import zmq

from coemu import stream

def shm_chunk(seg, slot, pos, n, flip=None, desc_off=None, desc_len=None):
    """A CHUNK whose rows are written into slot `slot` of seg (a writable
    mmap): flip k: one byte of sample k's input row changed after its
    checksum; desc_off / desc_len (j, value): descriptor j says so."""
    ids = np.arange(pos, pos + n, dtype="<u8")
    xin = [np.full((2, 3), i + 0.25, "<f4").tobytes() for i in ids]
    xout = [np.full((4,), i + 0.5, "<f4").tobytes() for i in ids]
    sums = np.array([[stream.xxh64_small(xin[k]), stream.xxh64_small(xout[k])]
                     for k in range(n)], dtype="<u8")
    off = stream.SHM_HEAD + slot * 4096
    desc = []
    for k, row in enumerate(xin + xout):
        seg[off:off + len(row)] = row
        desc += [off, len(row)]
        off += len(row)
    if flip is not None:
        seg[desc[2 * flip]] ^= 0x40
    if desc_off is not None:
        desc[2 * desc_off[0]] = desc_off[1]
    if desc_len is not None:
        desc[2 * desc_len[0] + 1] = desc_len[1]
    d = np.array(desc, dtype="<u8").tobytes()
    h = struct.pack(stream._FMT, stream.MAGIC, stream.VERSION, stream.CHUNK, stream.FLAG_SHM, 0,
                    0, 0, n, 0, pos, 1, 0, 1, 2, 3, 1, 1, 1, 4,
                    stream.xxh64_small(ids.tobytes() + sums.tobytes() + d))
    h += struct.pack("<Q", stream.xxh64_small(h))
    return [h, ids.tobytes(), sums.tobytes(), d]


def fake_shm_producer(ep, ready, name, answer):
    size = stream.SHM_HEAD + 8 * 4096
    fd = os.open("/dev/shm" + name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, size)
    seg = mmap.mmap(fd, size)
    os.close(fd)
    nonce = 0x1234567890ABCDEF
    struct.pack_into("<5Q", seg, 0, stream.SHM_MAGIC, nonce, size, 4096, 8)
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    s.bind(ep)
    ready.set()
    try:
        if s.poll(20000):
            peer, hello = s.recv_multipart()[:2]
            hh = stream.Header.decode(hello)
            if hh.type == stream.HELLO and hh.flags & stream.FLAG_SHM:
                nm = name.encode()
                w = struct.pack(stream._FMT, stream.MAGIC, stream.VERSION, stream.WELCOME,
                                stream.FLAG_SHM, 8, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                stream.xxh64_small(nm))
                s.send_multipart([peer, w + struct.pack("<Q", stream.xxh64_small(w)), nm])
                if s.poll(10000):
                    a = stream.Header.decode(s.recv_multipart()[1])
                    answer.append((a.type, a.flags & stream.FLAG_SHM_ANSWER, a.chunk_id == nonce))
                    os.unlink("/dev/shm" + name)  # as serve: the name goes once it is mapped
                for slot, fr in enumerate((shm_chunk(seg, 0, 0, 3),
                                           shm_chunk(seg, 1, 3, 3, flip=1),
                                           shm_chunk(seg, 2, 3, 3, desc_off=(4, size - 8)),
                                           shm_chunk(seg, 3, 3, 3, desc_len=(0, 20)),
                                           shm_chunk(seg, 4, 3, 3), shm_chunk(seg, 5, 6, 1))):
                    s.send_multipart([peer] + fr)
                s.send_multipart([peer, stream.Header.encode(stream.EPOCH_END, epoch=0,
                                                             position=7)])
                s.poll(3000)
    finally:
        s.close()
        seg.close()
        if os.path.exists("/dev/shm" + name):
            os.unlink("/dev/shm" + name)
