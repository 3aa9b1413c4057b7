"""CRC-32C exactly as RocksDB's BackupEngine records it (docs/format.md §4).

RocksDB stores the *unmasked* CRC-32C of a whole file (`crc32c::Extend(0, data)`)
as an unsigned decimal in meta files and legacy shared names, and as 8
uppercase hex digits of the big-endian bytes in memory (the form the DB's
`FileChecksumGenCrc32cFactory` uses too).  Check value: b"123456789" ->
3808858755 (0xE3069283).

The `crc32c` package does the arithmetic: it hashes any contiguous buffer in
place (memoryview slices of the reused copy buffers included), uses the
CPU's CRC instruction (>10 GB/s here) and releases the GIL, so checksumming
overlaps other files' I/O.  google-crc32c was measured too: its `extend`
refuses memoryviews, which would force a copy of every chunk.
"""
from __future__ import annotations

import crc32c as _crc32c

__all__ = ["crc32c", "crc32c_combine", "crc32c_hex"]

_MASK32 = 0xFFFFFFFF
_POLY = 0x82F63B78
"""CRC-32C's polynomial, bit-reflected (the CRC is computed LSB first)."""


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Extend the unmasked CRC-32C `crc` with `data` (RocksDB's `crc32c::Extend`).

    `crc32c(b2, crc32c(b1)) == crc32c(b1 + b2)`, so a stream is hashed chunk
    by chunk.
    """
    if isinstance(data, str):
        raise TypeError("crc32c needs bytes, not str")
    if isinstance(data, memoryview) and not data.contiguous:
        data = data.tobytes()
    return _crc32c.crc32c(data, crc & _MASK32)


def crc32c_hex(crc: int) -> str:
    """RocksDB's in-memory form: 8 uppercase hex digits of the big-endian bytes."""
    return f"{crc & _MASK32:08X}"


def _multiply(a: int, b: int) -> int:
    """a * b modulo the polynomial, both reflected (bit 31 is x^0)."""
    product = 0
    mask = 1 << 31
    while a:
        if a & mask:
            product ^= b
            a ^= mask
        mask >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


_X_POW_2N = [1 << 30]
"""x^(2^n) modulo the polynomial for n = 0..63 (x^1 is bit 30 when reflected): lengths up to 2^61 bytes.
(zlib repeats its table after 32 entries; that holds for CRC-32's polynomial, not for CRC-32C's.)"""
for _ in range(63):
    _X_POW_2N.append(_multiply(_X_POW_2N[-1], _X_POW_2N[-1]))


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32C of `a + b` from `crc1 = crc32c(a)`, `crc2 = crc32c(b)` and `len(b)`, without the bytes.

    zlib's `crc32_combine` (shift `crc1` by `len2` zero bytes: a multiplication by
    x^(8 * len2) modulo the polynomial, then add `crc2`).  An S3 upload sends a big
    file as parts and computes each part's CRC-32C anyway; combining them gives the
    whole object's CRC-32C (S3's full-object checksum) for a few microseconds a part
    instead of a second pass over the data."""
    shift = 1 << 31  # x^0
    bits, n = len2 * 8, 0
    while bits:
        if bits & 1:
            shift = _multiply(_X_POW_2N[n], shift)
        bits >>= 1
        n += 1
    return (_multiply(shift, crc1 & _MASK32) ^ crc2) & _MASK32
