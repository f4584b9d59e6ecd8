"""coemu.stream: a Python consumer of the coemu stream protocol (version 3).

Needs pyzmq and numpy. Mirrors pipeline/stream/stream_client.c: it says HELLO with
its rank, the number of ranks, the (epoch, position) to resume from and a
credit, checks every message (header checksum, shapes, frame sizes, payload
XXH64) and grants one credit per chunk consumed. See docs/stream-protocol.md.

XXH64 of the payloads: the `xxhash` module when installed, else the system's
libxxhash (ctypes; Debian's libxxhash0), else pure Python (about 3 MB/s, with a
warning when the first client starts). Header checks are always made.

    from coemu.stream import StreamClient, server_info
    info = server_info("tcp://127.0.0.1:5555")   # world, shapes, normalisation...
    with StreamClient("tcp://127.0.0.1:5555", rank=0, world=info["world"]) as c:
        for chunk in c.iter_epoch():     # one epoch
            x, y, ids = chunk.inputs, chunk.targets, chunk.ids
"""
import ctypes
import ctypes.util
import json
import logging
import mmap
import os
import re
import struct
import sys
import threading
import time
import weakref
import warnings

import numpy as np
import zmq

#: where the producer's NOTICEs are logged (as warnings: with no logging set
#: up, Python prints them on stderr)
log = logging.getLogger("coemu.stream")

MAGIC = 0x534D4543
VERSION = 3
HEADER_SIZE = 96
HELLO, WELCOME, CREDIT, CHUNK, EPOCH_END, HEARTBEAT, ERROR, BYE, INFO, RESET, NOTICE = range(1, 12)
# HELLO flags bits 1-2: the epoch order asked for (0: the producer's), as
# SERVE_FLAG_ORDER in pipeline/serve/serve.h
ORDERS = ("exact", "shards")
# same-host shared memory (docs/stream-protocol.md, "Shared memory"), as
# STREAM_FLAG_SHM* in pipeline/stream/stream_proto.h
FLAG_SHM, FLAG_SHM_ANSWER = 8, 16
# every message of this client: it understands RESET (STREAM_FLAG_RESETS) and
# NOTICE (STREAM_FLAG_NOTICES)
FLAG_RESETS, FLAG_NOTICES = 32, 64
# a NOTICE's value (STREAM_NOTICE_* in pipeline/stream/stream_proto.h)
NOTICE_STOPPED, NOTICE_RESUMED = 1, 2
SHM_MAGIC = 0x314D4853534D4543  # "CEMSSHM1"
SHM_HEAD = 4096
# the only names a producer may give (a name is opened: no path of its choosing)
_SHM_NAME = re.compile(r"/coemu-stream-[0-9]{1,10}-[0-9a-f]{32}")
TRANSPORTS = ("socket", "shm", "auto")


def order_flags(order):
    """HELLO flag bits for order None (the producer's), "exact" or "shards"."""
    if order is None:
        return 0
    if order not in ORDERS:
        raise ValueError(f"order {order!r}: expected None, 'exact' or 'shards'")
    return (ORDERS.index(order) + 1) << 1
_FMT = "<IHHIIQIIQQHH4I3IQ"  # bytes 0..87
assert struct.calcsize(_FMT) == 88

_P1, _P2, _P3, _P4, _P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                           0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)
_M = (1 << 64) - 1


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc, v):
    acc = (acc + v * _P2) & _M
    return (_rotl(acc, 31) * _P1) & _M


def xxh64_small(data: bytes, seed: int = 0) -> int:
    """XXH64 in pure Python (for the 88-byte headers)."""
    n = len(data)
    p = 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M, (seed + _P2) & _M, seed, (seed - _P1) & _M]
        while p + 32 <= n:
            for i in range(4):
                v[i] = _round(v[i], struct.unpack_from("<Q", data, p + 8 * i)[0])
            p += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M
        for i in range(4):
            h = ((h ^ _round(0, v[i])) * _P1 + _P4) & _M
    else:
        h = (seed + _P5) & _M
    h = (h + n) & _M
    while p + 8 <= n:
        h ^= _round(0, struct.unpack_from("<Q", data, p)[0])
        h = (_rotl(h, 27) * _P1 + _P4) & _M
        p += 8
    if p + 4 <= n:
        h ^= (struct.unpack_from("<I", data, p)[0] * _P1) & _M
        h = (_rotl(h, 23) * _P2 + _P3) & _M
        p += 4
    while p < n:
        h ^= (data[p] * _P5) & _M
        h = (_rotl(h, 11) * _P1) & _M
        p += 1
    h ^= h >> 33
    h = (h * _P2) & _M
    h ^= h >> 29
    h = (h * _P3) & _M
    h ^= h >> 32
    return h


try:  # fast payload checks when available
    import xxhash as _xxhash
except ImportError:  # pragma: no cover
    _xxhash = None


def _load_libxxhash():
    """The system's libxxhash through ctypes, or None."""
    for name in ("libxxhash.so.0", ctypes.util.find_library("xxhash")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            lib.XXH64.restype = ctypes.c_ulonglong
            lib.XXH64.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_ulonglong)
            lib.XXH64_createState.restype = ctypes.c_void_p
            lib.XXH64_freeState.argtypes = (ctypes.c_void_p,)
            lib.XXH64_reset.argtypes = (ctypes.c_void_p, ctypes.c_ulonglong)
            lib.XXH64_update.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
            lib.XXH64_digest.restype = ctypes.c_ulonglong
            lib.XXH64_digest.argtypes = (ctypes.c_void_p,)
            if lib.XXH64(b"abc", 3, 0) != xxh64_small(b"abc"):
                continue
            return lib
        except (OSError, AttributeError):
            continue
    return None


_libxxh = None if _xxhash is not None else _load_libxxhash()

#: which XXH64 implementation checks payloads: "xxhash", "libxxhash" or "python"
XXH64_BACKEND = "xxhash" if _xxhash is not None else ("libxxhash" if _libxxh else "python")


def _addr(buf):
    """(address, length) of any contiguous buffer, read-only ones included."""
    a = np.frombuffer(buf, dtype=np.uint8)
    return a.ctypes.data, a.size


def xxh64_frames(bufs, seed: int = 0) -> int:
    """XXH64 over the concatenation of several buffers (bytes, memoryviews,
    numpy arrays), without joining them where a fast backend exists."""
    if _xxhash is not None:
        x = _xxhash.xxh64(seed=seed)
        for b in bufs:
            x.update(b)
        return x.intdigest()
    if _libxxh is not None:
        st = _libxxh.XXH64_createState()
        try:
            _libxxh.XXH64_reset(st, seed)
            for b in bufs:
                a = np.ascontiguousarray(np.frombuffer(memoryview(b).cast("B"), dtype=np.uint8))
                _libxxh.XXH64_update(st, a.ctypes.data, a.size)
            return int(_libxxh.XXH64_digest(st))
        finally:
            _libxxh.XXH64_freeState(st)
    return xxh64_small(b"".join(bytes(memoryview(b).cast("B")) for b in bufs), seed)


def _one_shot():
    """XXH64 (seed 0) of one contiguous buffer by the fastest backend, in one
    call: no state object, no intermediate bytes (a received frame is hashed
    where ZeroMQ put it)."""
    if _xxhash is not None:
        return _xxhash.xxh64_intdigest
    if _libxxh is not None:
        def h(buf):
            a = np.frombuffer(buf, dtype=np.uint8)
            return _libxxh.XXH64(a.ctypes.data, a.size, 0)
        return h
    return lambda buf: xxh64_small(bytes(memoryview(buf).cast("B")))


_hash_buf = _one_shot()


def rows_ok(inputs, in_bytes, targets, out_bytes, n, sums) -> bool:
    """Protocol 2's row check (docs/stream-protocol.md): the XXH64 of each
    sample's inputs row and targets row (bytes-like frames of n rows) equal
    sums[2k] and sums[2k+1] (a frame of 2n little-endian uint64). Rows are
    hashed in place (memoryview slices), by the fastest backend."""
    want = struct.unpack(f"<{2 * n}Q", sums)
    mi, mo = memoryview(inputs).cast("B"), memoryview(targets).cast("B")
    for k in range(n):
        if _hash_buf(mi[k * in_bytes:(k + 1) * in_bytes]) != want[2 * k] or \
                _hash_buf(mo[k * out_bytes:(k + 1) * out_bytes]) != want[2 * k + 1]:
            return False
    return True


def xxh64(data, seed: int = 0) -> int:
    """XXH64 of a buffer: the `xxhash` module, else libxxhash, else pure Python
    (correct but slow: about 1 s per few MB)."""
    return xxh64_frames([data], seed)


def read_key_file(path):
    """(public, secret) Z85 keys of a `coemu keygen` file (secret None in a
    NAME.key public file)."""
    keys = {}
    with open(path, encoding="ascii") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            k, sep, v = line.partition("=")
            v = v.strip().strip('"')
            if not sep or k.strip() not in ("public-key", "secret-key") or len(v) != 40:
                raise ValueError(f"{path}:{n}: expected public-key = \"<40 Z85 characters>\" "
                                 f"or secret-key = ...")
            keys[k.strip()] = v.encode("ascii")
    if "public-key" not in keys:
        raise ValueError(f"{path}: no public-key")
    return keys["public-key"], keys.get("secret-key")


def _secure(sock, curve):
    """curve = (producer's NAME.key, this consumer's NAME.key_secret), or None."""
    if curve is None:
        return
    server_file, client_file = curve
    server_pub, _ = read_key_file(server_file)
    pub, sec = read_key_file(client_file)
    if sec is None:
        raise ValueError(f"{client_file}: no secret-key (give the consumer's NAME.key_secret)")
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_pub, pub, sec


class ProtocolError(Exception):
    pass


class ProducerSilent(Exception):
    pass


class CurveRefused(ProducerSilent):
    """The producer refused this consumer's CURVE key: it sends nothing to
    such a consumer, and ZeroMQ reports the refused handshake."""


def _watch(sock, curve):
    """With CURVE: a monitor socket that hears of refused handshakes, else None."""
    return None if curve is None else sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def _unwatch(sock, mon):
    if mon is not None:
        sock.disable_monitor()
        mon.close(0)


def _check_refused(mon, endpoint):
    """Raise CurveRefused if the monitor heard the producer refuse the key."""
    from zmq.utils.monitor import recv_monitor_message
    while mon is not None and mon.poll(0):
        ev = recv_monitor_message(mon)
        if ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            raise CurveRefused(
                f"the producer at {endpoint} refused this consumer's CURVE key (ZAP status "
                f"{ev['value']}): its public key must be among the producer's authorised keys "
                f"(coemu serve --curve-authorized, stream.curve_authorized of a live job)")


class Header:
    __slots__ = ("type", "flags", "value", "dataset_id", "epoch", "nsamples", "chunk_id",
                 "position", "dtype", "rank", "in_shape", "out_shape", "payload_xxh64")

    @classmethod
    def decode(cls, buf: bytes) -> "Header":
        if len(buf) != HEADER_SIZE:
            raise ProtocolError(f"header frame of {len(buf)} bytes, expected {HEADER_SIZE}")
        f = struct.unpack_from(_FMT, buf)
        if f[0] != MAGIC:
            raise ProtocolError("bad magic")
        if struct.unpack_from("<Q", buf, 88)[0] != _hash_buf(buf[:88]):
            raise ProtocolError("header checksum mismatch")
        if f[1] != VERSION:
            raise ProtocolError(f"protocol version {f[1]}, expected {VERSION}")
        h = cls()
        (h.type, h.flags, h.value, h.dataset_id, h.epoch, h.nsamples, h.chunk_id, h.position,
         h.dtype, h.rank) = f[2:12]
        h.in_shape, h.out_shape, h.payload_xxh64 = f[12:16], f[16:19], f[19]
        return h

    @staticmethod
    def encode(type_, value=0, flags=0, dataset_id=0, epoch=0, nsamples=0, position=0, rank=0,
               chunk_id=0):
        b = struct.pack(_FMT, MAGIC, VERSION, type_, flags, value, dataset_id, epoch, nsamples,
                        chunk_id, position, 0, rank, 0, 0, 0, 0, 0, 0, 0, 0)
        return b + struct.pack("<Q", _hash_buf(b))


def _array(frame, dtype, shape):
    """A writable array over a received frame's own memory (it keeps the
    frame alive), copied only when ZeroMQ left it misaligned for dtype."""
    a = np.frombuffer(frame, dtype=dtype).reshape(shape)
    return a if a.flags.aligned and a.flags.writeable else a.copy()


class _BatchBuffers:
    """Protocol 3 sends each row as a frame of its own; a chunk of n > 1
    samples is handed out as one (n, ...) array, its rows copied in. A
    buffer of 52 MB (16 samples of 3.26 MB) fresh from the allocator is a
    new mmap the kernel faults in and zeroes page by page, so buffers are
    reused: only when nothing but this pool refers to it (sys.getrefcount:
    a Chunk, a view or slice of it, torch.from_numpy, a memoryview all hold
    a reference), so an array handed out is never overwritten while anyone
    holds it. At most `keep` buffers of each shape are kept."""

    def __init__(self, keep=4):
        self.keep, self.bufs, self.reused, self.made = keep, {}, 0, 0

    def get(self, dtype, shape):
        pool = self.bufs.setdefault((dtype, shape), [])
        for a, refs in zip(pool, _refcounts(pool)):
            if refs <= _UNHELD:  # the pool's own reference only
                self.reused += 1
                return a
        a = np.empty(shape, dtype=dtype)
        self.made += 1
        if len(pool) < self.keep:
            pool.append(a)
        return a


def _refcounts(arrays):
    """sys.getrefcount of each array, counted the same way every time."""
    return [sys.getrefcount(a) for a in arrays]


# the count _refcounts sees for an array that only its list refers to (measured
# through the same code, so it holds whatever this interpreter counts)
_UNHELD = _refcounts([np.empty(0)])[0]


def _gather_checked(rows, n, size, want, out):
    """Rows rows[0 .. n) (buffers: received frames' memory, or slices of the
    shared segment) copied into out (n x size bytes), each checked against
    want[2k] first; False (out left part-written) at the first row of
    another size or another XXH64. Each row is copied right after it is
    hashed, while it is still in the cache: a batch's rows are read from
    memory once, not once to check them all and again to gather them."""
    flat = out.reshape(n, -1).view(np.uint8)
    h = _hash_buf
    for k in range(n):
        b = rows[k]
        if len(b) != size or h(b) != want[2 * k]:
            return False
        flat[k] = np.frombuffer(b, dtype=np.uint8)
    return True


class Chunk:
    def __init__(self, header, ids, inputs, targets):
        self.header, self.ids, self.inputs, self.targets = header, ids, inputs, targets
        self.epoch, self.position = header.epoch, header.position
        self.normalised = bool(header.flags & 1)


_malloc_tuned = False


def _tune_malloc():
    """As the C stream library does (stream_proto.h, stream_tune_malloc):
    keep chunk-sized blocks (below 32 MiB) on the heap and up to 256 MiB of
    free heap, so ZeroMQ's receive buffers are not faulted in and zeroed by
    the kernel again for every chunk (a third of a stream's CPU time,
    docs/benchmarks.md). Once per process, glibc only, and not when the
    user set MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_."""
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    import os
    import platform
    if platform.libc_ver()[0] != "glibc" or "MALLOC_MMAP_THRESHOLD_" in os.environ or \
            "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # pragma: no cover
        pass


def _warn_slow_hash():
    if XXH64_BACKEND == "python" and not StreamClient._warned:
        StreamClient._warned = True
        warnings.warn("coemu.stream: neither the xxhash module nor libxxhash is available: "
                      "payloads are checked in pure Python (slow for large chunks); "
                      "pip install xxhash (or apt-get install libxxhash0)",
                      RuntimeWarning, stacklevel=3)


def server_info(endpoint, timeout_s=5.0, context=None, curve=None):
    """Ask the producer at `endpoint` what it serves (the INFO message,
    docs/stream-protocol.md): a dict with at least "world" (the ranks it
    serves: its --ranks), "samples_per_rank" (per epoch), "epochs" (0:
    unbounded), "dataset_id", and from `coemu serve`: "batch", "split",
    "seed", "order" ("exact" or "shards"), "order_shards" and "order_buffer"
    (K and B of order shards, None for exact), "in_shape", "out_shape",
    "dtype" and "normalisation" (the /stats parameters, or None),
    "timeout_s" and "heartbeat_s" (the producer drops a consumer silent for
    timeout_s). Raises ProducerSilent when nothing answers
    within timeout_s (nothing listening there, or a coemu older than the
    INFO message: then give the world yourself; or a CURVE server that does
    not accept this consumer's key). curve: as for StreamClient."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    mon = None
    try:
        _secure(sock, curve)
        mon = _watch(sock, curve)
        sock.connect(endpoint)
        sock.send(Header.encode(INFO))
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1):
                _check_refused(mon, endpoint)
                raise ProducerSilent(
                    f"no INFO reply from {endpoint} within {timeout_s:g} s: is `coemu serve` "
                    f"running there? (a coemu without the INFO message does not answer: then "
                    f"pass the server's --ranks as world=)")
            frames = sock.recv_multipart()
            try:
                h = Header.decode(frames[0])
            except ProtocolError:
                continue
            if h.type == ERROR:
                text = frames[1].decode("utf-8", "replace") if len(frames) > 1 else ""
                raise ProtocolError(f"producer error: {text}")
            if h.type != INFO:
                continue
            if len(frames) != 2 or xxh64_small(frames[1]) != h.payload_xxh64:
                raise ProtocolError(f"{endpoint}: damaged INFO reply")
            info = json.loads(frames[1].decode("utf-8")) if frames[1] else {}
            info["world"] = h.value
            info["samples_per_rank"] = h.nsamples
            info["epochs"] = h.epoch
            info["dataset_id"] = h.dataset_id
            info["timeout_s"] = h.position / 1000.0
            info["heartbeat_s"] = h.chunk_id / 1000.0
            return info
    finally:
        _unwatch(sock, mon)
        sock.close(0)


class StreamClient:
    _warned = False

    def __init__(self, endpoint, rank=0, world=1, epoch=0, position=0, credit=4,
                 normalised=False, dataset_id=0, heartbeat_s=1.0, timeout_s=10.0, context=None,
                 resume_after_s=None, curve=None, keepalive=True, taper=False, order=None,
                 transport="auto"):
        """order: None (whatever the producer serves), "exact" or "shards":
        the epoch order this consumer expects (docs/stream-protocol.md,
        "Order"); a producer serving the other one answers with an error
        (ProtocolError) naming both.
        keepalive: a background thread sends HEARTBEAT every heartbeat_s
        while the consumer is not inside next() (a training step longer than
        the producer's --timeout would otherwise have it drop this consumer);
        the socket is only ever used under a lock.
        resume_after_s: when next() is called after this many seconds
        without a message to the producer (no keepalive, or a process that
        was stopped), reconnect first and resume at (epoch, position):
        nothing lost or repeated.
        taper: near an epoch's end, grant credit only for the chunks left in
        it (see _grant): a consumer that leaves at the end of an epoch is
        then sent at most one chunk of the next one.
        curve: (the producer's public key file NAME.key, this consumer's
        key pair NAME.key_secret), both from `coemu keygen`, for a producer
        started with --curve-secret (required off loopback).
        transport: "auto" (default): ask the producer for its rows through a
        shared-memory segment (docs/stream-protocol.md, "Shared memory": a
        consumer on the producer's host then reads them without the socket's
        two kernel copies), and take frames when none is offered or it
        cannot be mapped (shm_error says why); "shm": the same, but raise
        ProtocolError instead of taking frames; "socket": always frames."""
        if transport not in TRANSPORTS:
            raise ValueError(f"transport {transport!r}: expected one of {TRANSPORTS}")
        # the producer drops a HELLO outside these ranges without a word
        # (docs/stream-protocol.md, "Range checks"): say so here, not by silence
        if not 1 <= int(world) <= 65535:
            raise ValueError(f"world {world}: expected 1..65535 consumer ranks (the server's "
                             f"--ranks; server_info(endpoint)['world'])")
        if not 0 <= int(rank) < int(world):
            raise ValueError(f"rank {rank}: expected 0..{int(world) - 1} (world {world})")
        if int(credit) < 1:
            raise ValueError(f"credit {credit}: expected at least 1")
        self.endpoint, self.rank, self.world = endpoint, rank, world
        self.epoch, self.position, self.credit = epoch, position, credit
        self.transport = transport
        self.flags = (1 if normalised else 0) | order_flags(order) | \
            (FLAG_SHM if transport != "socket" else 0) | FLAG_RESETS | FLAG_NOTICES
        self._shm = self._shm_view = None
        self._shm_size, self.shm_mapped, self.shm_error = 0, 0, None
        self.order = order
        self.dataset_id, self.heartbeat_s, self.timeout_s = dataset_id, heartbeat_s, timeout_s
        self.malformed = 0
        self.curve, self.taper = curve, taper
        self.resume_after_s, self.resumes = resume_after_s, 0
        # HELLOs said; CREDITs and HEARTBEATs carry it (chunk_id) and a RESET
        # echoes it: a RESET of an earlier session is stale
        self._hello_gen, self.resets = 0, 0
        # the producer's NOTICEs (docs/stream-protocol.md, "Notices"): how many,
        # and the last one's text (e.g. a live stream whose job stopped)
        self.notices, self.notice = 0, None
        _warn_slow_hash()
        _tune_malloc()
        self.samples_per_epoch = None
        self._own_ctx = context is None
        self._ctx = zmq.Context() if context is None else context
        self._batch = 0
        self._bufs = _BatchBuffers()
        self._said_bye = False
        self._mon = None
        self._sock = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        try:
            self._connect()
        except ValueError:
            if self._own_ctx:
                self._ctx.term()
            raise
        self._keepalive = None
        if keepalive:
            # the thread holds the client by a weak reference: a client
            # dropped without close() is collected, and its thread ends
            # instead of heart-beating for the life of the process
            self._keepalive = threading.Thread(
                target=StreamClient._keepalive_loop,
                args=(weakref.ref(self), self._stop, self.heartbeat_s / 2), daemon=True,
                name=f"coemu-stream-keepalive-{rank}")
            self._keepalive.start()
            weakref.finalize(self, self._stop.set)

    @staticmethod
    def _keepalive_loop(ref, stop, period_s):
        while not stop.wait(period_s):
            client = ref()
            if client is None:
                return
            try:
                client._keepalive_once()
            finally:
                del client

    def _keepalive_once(self):
        if not self._lock.acquire(blocking=False):
            return  # next() is running: it heart-beats itself
        try:
            if self._sock is not None and time.monotonic() - self._last_sent > self.heartbeat_s:
                self._send(HEARTBEAT)
        except zmq.ZMQError:
            pass
        finally:
            self._lock.release()

    def _connect(self):
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 200)
        _secure(self._sock, self.curve)
        self._mon = _watch(self._sock, self.curve)
        try:
            self._sock.connect(self.endpoint)
        except zmq.ZMQError as e:
            _unwatch(self._sock, self._mon)
            self._sock.close(0)
            self._sock = None
            raise ValueError(f"endpoint '{self.endpoint}': {e} (expected tcp://HOST:PORT or "
                             f"ipc:///PATH, as coemu serve --endpoint)") from None
        self._last_recv = time.monotonic()
        self._say_hello()

    def _say_hello(self):
        """HELLO from (epoch, position): a new session."""
        self._hello_gen += 1
        self._granted = self.credit  # the WELCOME says what the producer granted
        self._est = self.credit      # credit the producer holds + chunks on their way
        self._send(HELLO, self.credit)

    def _send(self, type_, value=0, flags=None, chunk_id=None):
        # never blocks (as the C client): a DEALER whose handshake failed (a
        # CURVE producer refusing this consumer, or one without CURVE at all)
        # has no peer, and a blocking send would wait for ever instead of
        # ending in ProducerSilent; control messages are tiny, far below the
        # high-water mark of a connected peer
        try:
            self._sock.send(Header.encode(type_, value, self.flags if flags is None else flags,
                                          self.dataset_id, self.epoch, self.world, self.position,
                                          self.rank,
                                          self._hello_gen if chunk_id is None else chunk_id),
                              zmq.NOBLOCK)
        except zmq.Again:
            pass
        self._last_sent = time.monotonic()

    def reconnect(self):
        """A new connection that resumes at (epoch, position)."""
        with self._lock:
            _unwatch(self._sock, self._mon)
            self._sock.close(0)
            self._said_bye = False
            self._connect()

    def _grant(self):
        """Top the producer's credit up to what it granted, one per chunk
        consumed; with taper, near an epoch's end only to the chunks left in
        it (at least 1, for the EPOCH_END): the producer starts the next
        epoch on this connection at once, and chunks of it sent to a
        consumer that then leaves would be sent twice."""
        target = self._granted
        if self.taper and self.samples_per_epoch and self._batch and \
                self.position <= self.samples_per_epoch:
            left = -(-(self.samples_per_epoch - self.position) // self._batch)
            target = min(target, max(left, 1))
        if target > self._est:
            self._send(CREDIT, target - self._est)
            self._est = target

    def next(self):
        """The next Chunk, or None at the end of an epoch."""
        with self._lock:
            return self._next()

    def _next(self):
        if self.resume_after_s and time.monotonic() - self._last_sent > self.resume_after_s:
            self.resumes += 1
            self.reconnect()
        self._grant()
        while True:
            now = time.monotonic()
            if now - self._last_sent > self.heartbeat_s:
                self._send(HEARTBEAT)
            # silence is judged after a poll: messages that came while the
            # consumer was busy elsewhere are not silence
            wait = max(0.0, min(self.timeout_s - (now - self._last_recv), self.heartbeat_s))
            if not self._sock.poll(int(wait * 1000) + 1):
                quiet = time.monotonic() - self._last_recv
                _check_refused(self._mon, self.endpoint)
                if quiet >= self.timeout_s:
                    raise ProducerSilent(f"producer at {self.endpoint} silent for {quiet:.1f} s")
                continue
            frames = self._sock.recv_multipart(copy=False)
            self._last_recv = time.monotonic()
            try:
                h = Header.decode(frames[0].bytes)
            except ProtocolError:
                self.malformed += 1
                continue
            if h.type == CHUNK:
                self._est -= 1  # each chunk took one credit, whatever becomes of it
                n = h.nsamples
                ins = (n,) + tuple(h.in_shape)
                outs = (n,) + tuple(h.out_shape)
                inb, outb = 4 * int(np.prod(h.in_shape)), 4 * int(np.prod(h.out_shape))
                # protocol 3: header, ids, row checksums, then one frame per row
                # (or the rows' descriptors in the shared segment); never
                # skipped: ids and row checksums, then every row (fastest XXH64)
                if h.flags & FLAG_SHM:
                    ok, inputs, targets = self._shm_rows(h, frames, n, ins, outs, inb, outb)
                else:
                    ok = len(frames) == 3 + 2 * n and len(frames[1]) == 8 * n and \
                        len(frames[2]) == 16 * n and \
                        xxh64_frames([frames[1].buffer, frames[2].buffer]) == h.payload_xxh64
                    if ok:
                        want = struct.unpack(f"<{2 * n}Q", frames[2].buffer)
                        if n == 1:  # the frames themselves
                            fi, fo = frames[3], frames[4]
                            ok = len(fi) == inb and len(fo) == outb and \
                                _hash_buf(fi.buffer) == want[0] and _hash_buf(fo.buffer) == want[1]
                            if ok:
                                inputs, targets = _array(fi, "<f4", ins), _array(fo, "<f4", outs)
                        else:  # checked and gathered row by row into reused batch buffers
                            inputs = self._bufs.get("<f4", ins)
                            targets = self._bufs.get("<f4", outs)
                            ok = _gather_checked([f.buffer for f in frames[3:3 + n]], n, inb, want,
                                                 inputs) and \
                                _gather_checked([f.buffer for f in frames[3 + n:3 + 2 * n]], n, outb,
                                                want[1:], targets)
                if not ok:
                    self.malformed += 1
                    self._send(CREDIT, 1)
                    self._est += 1
                    continue
                if h.epoch != self.epoch or h.position != self.position:
                    continue  # in flight from before a reconnect
                ids = _array(frames[1], "<u8", (n,))
                del frames
                self.position += n
                self._batch = n
                return Chunk(h, ids, inputs, targets)
            if h.type == WELCOME:
                self._shm_welcome(h, frames)
                self.samples_per_epoch = h.nsamples
                self._granted = self._est = max(1, h.value)
                self.dataset_id_seen = h.dataset_id
            elif h.type == EPOCH_END and h.epoch == self.epoch:
                self.epoch += 1
                self.position = 0
                return None
            elif h.type == ERROR:
                text = frames[1].bytes.decode("utf-8", "replace") if len(frames) > 1 else ""
                raise ProtocolError(f"producer error: {text}")
            elif h.type == NOTICE:
                # the stream goes on; the trainer's operator is told (a
                # consumer waiting for chunks nothing makes would look hung)
                if len(frames) != 2 or _hash_buf(frames[1].buffer) != h.payload_xxh64:
                    self.malformed += 1
                    continue
                self.notice = frames[1].bytes.decode("utf-8", "replace")
                self.notices += 1
                log.warning("notice from the producer at %s (rank %d): %s", self.endpoint,
                            self.rank, self.notice)
            elif h.type == RESET and h.chunk_id == self._hello_gen:
                # the producer has no session for this connection (it was
                # restarted, or dropped this consumer): resume where we are.
                # RESETs answering messages of an earlier session are stale.
                self.resets += 1
                self._say_hello()

    def _shm_welcome(self, h, frames):
        """The producer's answer to this HELLO's request for shared memory:
        map the segment it names and answer with the nonce read from it (the
        proof that this consumer is on the producer's host and has it mapped),
        or answer 0 and take rows as frames. transport "shm" raises instead."""
        self._shm_close()
        if not self.flags & FLAG_SHM:
            return
        why = None
        if not h.flags & FLAG_SHM:
            why = "the producer did not offer shared memory (coemu serve --no-shm, a producer " \
                  "without it, or it could not make a segment)"
        elif len(frames) != 2 or _hash_buf(frames[1].buffer) != h.payload_xxh64:
            why = "the WELCOME's segment name is damaged"
        else:
            name = frames[1].bytes.decode("ascii", "replace")
            if not _SHM_NAME.fullmatch(name):
                why = f"the producer named segment {name!r}, not a coemu stream segment"
            else:
                try:
                    fd = os.open("/dev/shm" + name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                    try:
                        size = os.fstat(fd).st_size
                        mm = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size > SHM_HEAD else None
                    finally:
                        os.close(fd)
                    head = struct.unpack_from("<5Q", mm, 0) if mm is not None else None
                    if head is None or head[0] != SHM_MAGIC or head[2] != size:
                        if mm is not None:
                            mm.close()
                        why = f"segment {name} is not a coemu stream segment of its size"
                    else:
                        self._shm, self._shm_view, self._shm_size = mm, memoryview(mm), size
                        self._send(CREDIT, 0, flags=self.flags | FLAG_SHM_ANSWER,
                                   chunk_id=head[1])
                        self.shm_mapped += 1
                        return
                except (OSError, ValueError) as e:
                    why = f"cannot map shared-memory segment {name}: {e}"
        self.shm_error = why
        if h.flags & FLAG_SHM:  # frames then, for this session
            self._send(CREDIT, 0, flags=self.flags | FLAG_SHM_ANSWER, chunk_id=0)
        if self.transport == "shm":
            raise ProtocolError(f"transport 'shm': {why}")

    def _shm_close(self):
        if self._shm is not None:
            self._shm_view.release()
            try:
                self._shm.close()
            except BufferError:  # a row view still alive (never handed out): unmapped when freed
                pass
            self._shm = self._shm_view = None

    def _shm_rows(self, h, frames, n, ins, outs, inb, outb):
        """(ok, inputs, targets) of a CHUNK whose rows lie in the shared
        segment: the descriptors checked to lie in it and to have the row
        sizes, every row checked against its row checksum and gathered into
        the batch buffers where it lies (one pass), as rows sent as frames."""
        if self._shm is None or len(frames) != 4 or len(frames[1]) != 8 * n or \
                len(frames[2]) != 16 * n or len(frames[3]) != 32 * n or \
                xxh64_frames([frames[1].buffer, frames[2].buffer, frames[3].buffer]) \
                != h.payload_xxh64:
            return False, None, None
        want = struct.unpack(f"<{2 * n}Q", frames[2].buffer)
        d = struct.unpack(f"<{4 * n}Q", frames[3].buffer)
        v, size, rows = self._shm_view, self._shm_size, []
        for k in range(2 * n):
            off, ln = d[2 * k], d[2 * k + 1]
            if ln != (inb if k < n else outb) or off < SHM_HEAD or off + ln > size:
                return False, None, None
            rows.append(v[off:off + ln])
        inputs = self._bufs.get("<f4", ins)
        targets = self._bufs.get("<f4", outs)
        ok = _gather_checked(rows[:n], n, inb, want, inputs) and \
            _gather_checked(rows[n:], n, outb, want[1:], targets)
        for r in rows:
            r.release()
        return ok, inputs, targets

    def iter_epoch(self):
        """Iterate over the chunks of the current epoch."""
        while True:
            c = self.next()
            if c is None:
                return
            yield c

    def drain(self):
        """The rest of the current epoch: its chunks as a list, read up to its
        EPOCH_END (the client then stands at the next epoch's start)."""
        return list(self.iter_epoch())

    def say_bye(self, receipt=True):
        """Send BYE now, with an INFO request behind it when receipt: the
        producer answers in order, so its INFO reply says that it has read
        the BYE (see wait_bye). close() then closes without sending another.
        Lets a consumer with several connections say BYE on all of them
        first."""
        self._stop.set()
        with self._lock:
            if self._sock is not None and not self._said_bye:
                self._said_bye = True
                self._send(BYE)
                if receipt:
                    try:
                        self._sock.send(Header.encode(INFO), zmq.NOBLOCK)
                    except zmq.Again:  # no peer: wait_bye runs out
                        pass

    def wait_bye(self, timeout_s):
        """Wait (at most timeout_s) until the producer has read the BYE: a
        connection that goes before that may be dropped as vanished, its
        BYE then ignored (and with --epochs its rank never counted done).
        True when confirmed; a producer older than INFO never confirms."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._sock is not None and self._said_bye:
                left = deadline - time.monotonic()
                if left <= 0 or not self._sock.poll(int(left * 1000) + 1):
                    return False
                frames = self._sock.recv_multipart(copy=False)
                try:
                    if Header.decode(frames[0].bytes).type == INFO:
                        return True
                except ProtocolError:
                    continue
        return False

    def close(self, grace_s=0.0):
        """Say BYE (with this consumer's epoch and position: the producer
        frees the connection at once) and close. grace_s > 0: first wait at
        most that long until the producer confirms it has read the BYE
        (wait_bye); a producer that sees the disconnect before the BYE drops
        the consumer as vanished and ignores the BYE (after the last epoch
        of `serve --epochs`: that rank is then never counted done). The
        producer shuts a connection that says BYE while chunks to it are
        still queued, and then cannot confirm: the wait runs out. Safe to
        call twice."""
        self._stop.set()
        try:
            if not self._said_bye and self._sock is not None:
                self.say_bye(receipt=grace_s > 0)
                if grace_s > 0:
                    self.wait_bye(grace_s)
        finally:
            with self._lock:
                if self._sock is not None:
                    _unwatch(self._sock, self._mon)
                    self._sock.close()
                    self._sock = None
                self._shm_close()
            if self._keepalive is not None and self._keepalive is not threading.current_thread():
                self._keepalive.join()
            if self._own_ctx and not self._ctx.closed:
                self._ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def check_dataset_sample(h5, i, inputs=None, targets=None):
    """For h5py users of a coemu dataset.h5 (format 2, docs/dataset-format.md):
    raise ValueError unless sample i matches its recorded /checksums row.
    h5 is an open h5py.File; inputs/targets are the rows already read (read
    here when None). HDF5 reads a missing shard as zeros, so check the
    samples you use (or run `coemu verify DIR` once)."""
    if "checksums" not in h5:
        raise ValueError(f"{h5.filename} has no /checksums (dataset format 1): run `coemu verify`")
    want = h5["checksums"][i]
    if targets is None:
        targets = h5["targets"][i]
    got_t = xxh64(np.ascontiguousarray(targets, dtype="<f4"))
    if got_t != int(want[1]):
        raise ValueError(_damaged(h5, "targets", i))
    if "inputs" in h5:
        if inputs is None:
            inputs = h5["inputs"][i]
        if xxh64(np.ascontiguousarray(inputs, dtype="<f4")) != int(want[0]):
            raise ValueError(_damaged(h5, "inputs", i))


def _shard_of(h5, name, i):
    """(shard file, its row) that holds sample i of the virtual dataset
    /name, or None (plain arrays, or a mapping h5py cannot tell): the file a
    user has to look at, or rerun the job for, when the sample is damaged."""
    try:
        ds = h5[name]
        if not ds.is_virtual:
            return None
        for m in ds.virtual_sources():
            lo, hi = m.vspace.get_select_bounds()
            if lo[0] <= i <= hi[0]:
                path = m.file_name
                if path != "." and not os.path.isabs(path):
                    path = os.path.join(os.path.dirname(os.path.abspath(h5.filename)), path)
                return path, i - lo[0] + _first_row(m.src_space)
    except (AttributeError, KeyError, OSError, TypeError, ValueError):
        pass
    return None


def _first_row(space):
    """The first row a virtual mapping takes from its source file: 0 for
    the whole source (coemu's shards; h5py cannot give bounds for that
    selection), else the selection's start."""
    import h5py
    if space.get_select_type() == h5py.h5s.SEL_ALL:
        return 0
    return space.get_select_bounds()[0][0]


def _damaged(h5, name, i):
    """The error for sample i whose /name row does not match /checksums,
    naming the dataset file and the shard that holds the row."""
    where = _shard_of(h5, name, i)
    shard = f" (shard {where[0]}, its row {where[1]})" if where else ""
    return (f"{h5.filename}: sample {i}{shard}: /{name} does not match its checksum (damaged or "
            f"missing shard: `coemu verify DIR` names every damaged shard; rerunning the same "
            f"generate job after removing it remakes it)")
