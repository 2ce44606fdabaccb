"""MP4 boxes: XMP in a top-level ``uuid`` box, and moving the index (``moov``) to the front.

XMP goes in a top-level ``uuid`` box, as the XMP specification (Part 3, ISO base media files) asks.

The box's user type is BE7ACFCB-97A9-42E8-9C71-999491E3AFAC and its payload the XMP packet in UTF-8.
It is appended after the last top-level box, so no chunk offset in ``moov`` moves; exiftool and Adobe
tools read it from there. Only the top-level box list is parsed, with sizes checked against the data.

``faststart`` does what FFmpeg's ``movflags=+faststart`` does (which needs a named file for its second
pass; clips never touch the disk unencrypted): ``moov`` before ``mdat``, chunk offsets shifted to match.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

XMP_UUID = uuid.UUID("be7acfcb-97a9-42e8-9c71-999491e3afac").bytes
MAX_XMP = 1 << 20  # a larger "XMP" box is not ours; ignore it


@dataclass(frozen=True)
class Box:
    """A top-level ISO BMFF box: its four-character type, where it starts, its size and header length."""

    type: bytes
    start: int
    size: int
    header: int

    def payload(self, data: bytes) -> bytes:
        return data[self.start + self.header : self.start + self.size]


def boxes(data: bytes) -> Iterator[Box]:
    """The top-level boxes of ``data``; stops at the first malformed one."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:  # 64-bit size follows
            if pos + 16 > len(data):
                return
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
            header = 16
        elif size == 0:  # extends to the end of the file
            size = len(data) - pos
        if size < header or pos + size > len(data):
            return
        if kind == b"uuid":
            header += 16
            if size < header:
                return
        yield Box(kind, pos, size, header)
        pos += size


_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}  # the path from moov down to the chunk offsets


def _shift_offsets(data: bytearray, start: int, end: int, delta: int) -> None:
    """Add ``delta`` to every chunk offset (``stco``/``co64``) in the boxes within ``data[start:end]``."""
    for box in boxes(bytes(data[start:end])):
        at = start + box.start
        if box.type in _CONTAINERS:
            _shift_offsets(data, at + box.header, at + box.size, delta)
        elif box.type in (b"stco", b"co64"):
            wide = box.type == b"co64"
            count = struct.unpack(">I", data[at + box.header + 4 : at + box.header + 8])[0]
            fmt, width = (">Q", 8) if wide else (">I", 4)
            first = at + box.header + 8
            if first + count * width > at + box.size:
                raise ValueError("malformed chunk offset table")
            for i in range(count):
                pos = first + i * width
                value = struct.unpack(fmt, data[pos : pos + width])[0] + delta
                if not wide and value >= 1 << 32:
                    raise ValueError("chunk offset overflows stco")
                data[pos : pos + width] = struct.pack(fmt, value)


def faststart(data: bytes) -> bytes:
    """``data`` with its ``moov`` box moved right after ``ftyp`` (a no-op when it is already before
    ``mdat``); every chunk offset moves by the size of ``moov``."""
    top = list(boxes(data))
    kinds = [box.type for box in top]
    if b"moov" not in kinds or b"mdat" not in kinds or kinds.index(b"moov") < kinds.index(b"mdat"):
        return data
    if sum(box.size for box in top) != len(data) or kinds[0] != b"ftyp":
        raise ValueError("unexpected MP4 layout")
    moov = top[kinds.index(b"moov")]
    moved = bytearray(data[moov.start : moov.start + moov.size])
    _shift_offsets(moved, 0, len(moved), moov.size)
    rest = b"".join(data[box.start : box.start + box.size] for box in top[1:] if box.type != b"moov")
    return data[: top[0].size] + bytes(moved) + rest


def is_mp4(data: bytes) -> bool:
    """Whether ``data`` starts like an ISO BMFF file (an ``ftyp`` box)."""
    return len(data) >= 12 and data[4:8] == b"ftyp"


def _uuid_of(data: bytes, box: Box) -> bytes:
    return data[box.start + box.header - 16 : box.start + box.header]


def add_xmp(data: bytes, packet: str) -> bytes:
    """``data`` with an XMP ``uuid`` box holding ``packet`` appended as its last top-level box."""
    if not is_mp4(data):
        raise ValueError("not an MP4 file")
    payload = packet.encode("utf-8")
    return data + struct.pack(">I4s", 8 + 16 + len(payload), b"uuid") + XMP_UUID + payload


def read_xmp(data: bytes) -> str | None:
    """The XMP packet of an MP4 file, as text, or None."""
    for box in boxes(data):
        if box.type == b"uuid" and _uuid_of(data, box) == XMP_UUID and box.size - box.header <= MAX_XMP:
            return box.payload(data).decode("utf-8", errors="replace")
    return None
