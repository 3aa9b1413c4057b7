"""A small, strict, pure-Python Snappy *raw format* decompressor.

Why it exists: a block of a RocksDB SST may be Snappy-compressed (block type
byte 1), and rbackup must read an SST's properties without adding a native
dependency.  Only decompression of the raw format (no framing, no CRC) is
needed, and the inputs are a few KB, so clarity and hostile-input safety matter
more than speed.

Format (github.com/google/snappy, format_description.txt): a varint32 with the
uncompressed length, then elements whose tag byte's low two bits say literal
(0), copy with 1-byte offset (1), 2-byte offset (2) or 4-byte offset (3).

Safety: the declared length is checked against a caller-given ceiling and
against the largest length the input could possibly expand to *before*
anything is allocated; every element is bounds-checked; the loop consumes at
least one input byte per element, so it always terminates quickly.  Any
malformation raises `rbackup.errors.Corruption`.
"""
from __future__ import annotations

from ..errors import Corruption

# The best expansion any element achieves is a 3-byte copy-2 element that
# writes 64 bytes, so no valid stream decodes to more than 64/3 of its size.
_MAX_EXPANSION_NUM, _MAX_EXPANSION_DEN = 64, 3


def uncompressed_length(data: bytes) -> tuple[int, int]:
    """Return (declared uncompressed length, size of its varint32 preamble)."""
    result = 0
    for i in range(min(5, len(data))):
        byte = data[i]
        result |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if result > 0xFFFFFFFF:
                raise Corruption("snappy: uncompressed length does not fit in 32 bits")
            return result, i + 1
    raise Corruption("snappy: truncated or overlong uncompressed-length varint")


def decompress(data: bytes, max_output: int) -> bytes:
    """Decompress one raw Snappy stream whose output may not exceed `max_output` bytes.

    `max_output` is the caller's budget (e.g. a block-size cap); a stream that
    declares more is rejected without allocating anything.
    """
    data = bytes(data)
    expected, pos = uncompressed_length(data)
    if expected > max_output:
        raise Corruption(
            f"snappy: declared uncompressed length {expected} exceeds the limit {max_output}")
    if expected * _MAX_EXPANSION_DEN > (len(data) - pos) * _MAX_EXPANSION_NUM:
        raise Corruption(
            f"snappy: declared uncompressed length {expected} is impossible for "
            f"{len(data) - pos} bytes of compressed data")
    out = bytearray()
    end = len(data)
    while pos < end:
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                if pos + extra > end:
                    raise Corruption("snappy: truncated literal length")
                length = int.from_bytes(data[pos:pos + extra], "little")
                pos += extra
            length += 1
            if pos + length > end:
                raise Corruption("snappy: literal runs past the end of the input")
            if len(out) + length > expected:
                raise Corruption("snappy: output longer than the declared length")
            out += data[pos:pos + length]
            pos += length
            continue
        if kind == 1:
            if pos + 1 > end:
                raise Corruption("snappy: truncated copy element")
            length = 4 + ((tag >> 2) & 7)
            offset = ((tag >> 5) << 8) | data[pos]
            pos += 1
        else:
            width = 2 if kind == 2 else 4
            if pos + width > end:
                raise Corruption("snappy: truncated copy element")
            length = (tag >> 2) + 1
            offset = int.from_bytes(data[pos:pos + width], "little")
            pos += width
        if offset == 0 or offset > len(out):
            raise Corruption(
                f"snappy: copy offset {offset} outside the {len(out)} bytes produced so far")
        if len(out) + length > expected:
            raise Corruption("snappy: output longer than the declared length")
        start = len(out) - offset
        if offset >= length:
            out += out[start:start + length]
        else:
            # Overlapping copy: the source repeats with period `offset`.
            pattern = bytes(out[start:])
            out += (pattern * (length // offset + 1))[:length]
    if len(out) != expected:
        raise Corruption(
            f"snappy: stream produced {len(out)} bytes, header declared {expected}")
    return bytes(out)
