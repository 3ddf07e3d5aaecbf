"""Length-prefixed pickle frames between ortforge and its measurement subprocesses."""

from __future__ import annotations

import pickle
import struct
from typing import Any, BinaryIO

HEADER = struct.Struct("<Q")


def send(stream: BinaryIO, message: Any) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def receive(stream: BinaryIO) -> Any:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        raise EOFError("measurement process closed its pipe")
    (length,) = HEADER.unpack(header)
    payload = stream.read(length)
    if len(payload) < length:
        raise EOFError("measurement process closed its pipe mid-message")
    return pickle.loads(payload)
