"""coemu_stream: the old name of the Python stream client, kept so scripts
that put pipeline/stream on sys.path keep working. The client lives in the
`coemu` package (python/coemu/stream.py; `pip install ./python`, docs/python.md):

    from coemu.stream import StreamClient      # new code
    from coemu_stream import StreamClient      # old code, the same class
"""
import os as _os
import sys as _sys

# this checkout's package first, so the shim and the package never disagree
_PKG = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "..", "..", "python")
if _os.path.isdir(_os.path.join(_PKG, "coemu")) and _os.path.abspath(_PKG) not in _sys.path:
    _sys.path.insert(0, _os.path.abspath(_PKG))

from coemu.stream import *  # noqa: E402,F401,F403
from coemu.stream import (  # noqa: E402,F401
    BYE, CHUNK, CREDIT, EPOCH_END, ERROR, HEADER_SIZE, HEARTBEAT, HELLO, INFO, MAGIC, VERSION,
    WELCOME, XXH64_BACKEND, Chunk, Header, ProducerSilent, ProtocolError, StreamClient,
    check_dataset_sample, rows_ok, server_info, xxh64, xxh64_frames, xxh64_small)
