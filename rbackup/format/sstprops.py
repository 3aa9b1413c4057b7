"""Read an SST file's table properties (notably its DB session id) in pure Python.

Why: BackupEngine names a shared SST `<N>_s<session>_<size>.sst`, where
`<session>` is the table property `rocksdb.creating.session.identity`, and
rocksdict exposes no SST reader.  Only the tail of the file is touched: the
footer, the metaindex block and the properties block (a few KB), never the data.

Layout followed (RocksDB table/format.cc Footer::DecodeFrom, table/meta_blocks.cc,
table/block_based/block_builder.cc):

* Footer, the last 53 bytes: checksum type (1 byte), 40 bytes of "part 2",
  format_version (u32 LE), magic (u64 LE).  Part 2 holds the metaindex and index
  handles (two varint64 pairs) for format_version <= 5; for >= 6 it holds an
  extended magic, a footer checksum, a base context checksum and the metaindex
  *size*, the metaindex ending right before its trailer, right before the footer.
  Plain tables use the 48-byte legacy footer (handles + legacy magic).
* Block-based tables follow each block with a 5-byte trailer: compression type
  byte + checksum.  Plain and cuckoo tables have no trailers.
* A block is a run of entries (varint32 shared, non_shared, value_length, key
  delta, value) followed by a restart array (u32 each) and its count (u32).
* The metaindex maps block names to handles; "rocksdb.properties" (formerly
  "rocksdb.stats") points at the properties block: property name -> raw value.

Every malformation raises `Corruption`; a valid file this reader cannot decode
(legacy format, unsupported compression, a future format_version) raises
`NotSupported`, on which the caller falls back to legacy `<crc32c>_<size>`
naming.  I/O errors of `f` itself propagate unchanged.

Block checksums are not verified: RocksDB's default checksum is XXH3, which
has no pure-Python implementation here.  A flipped bit inside a property value
can therefore yield a wrong (but well-formed) name; the copied file and its
crc32c are unaffected, and restore maps any name back by its number.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import Corruption, NotSupported
from . import _snappy

log = logging.getLogger(__name__)

SESSION_ID_PROPERTY = "rocksdb.creating.session.identity"
_SESSION_ID_KEY = SESSION_ID_PROPERTY.encode()
_PROPERTIES_BLOCK_NAMES = (b"rocksdb.properties", b"rocksdb.stats")

_BLOCK_BASED_MAGIC = 0x88E241B785F4CFF7
_LEGACY_BLOCK_BASED_MAGIC = 0xDB4775248B80FB57
_PLAIN_MAGIC = 0x8242229663BF9564
_LEGACY_PLAIN_MAGIC = 0x4F3418EB7A8F13B8
_CUCKOO_MAGIC = 0x926789D0C5F17873

# format_version range each table type may carry in a new-style footer.
# Block-based 7 only changes how data blocks name their compressor.
_SUPPORTED_VERSIONS = {
    _BLOCK_BASED_MAGIC: ("block-based", range(1, 8)),
    _PLAIN_MAGIC: ("plain", range(0, 1)),
    _CUCKOO_MAGIC: ("cuckoo", range(1, 2)),
}

_FOOTER_LEN = 53  # Footer::kNewVersionsEncodedLength
_LEGACY_FOOTER_LEN = 48  # Footer::kVersion0EncodedLength
_BLOCK_TRAILER_LEN = 5
_EXTENDED_MAGIC = b"\x3e\x00\x7a\x00"
_MAX_CHECKSUM_TYPE = 4  # kxxHash64 .. kXXH3: IsSupportedChecksumType

# Metaindex and properties blocks are KBs; anything beyond this is not an SST
# we should trust with an allocation.
MAX_META_BLOCK = 64 << 20

_COMPRESSION_NAMES = {
    2: "zlib", 3: "bzip2", 4: "lz4", 5: "lz4hc", 6: "xpress", 7: "zstd",
    0x40: "zstd (pre-1.0 format)",
}

# Block footer flag bits (table/block_based/data_block_footer.cc).  Only data
# blocks ever set them; the "uniform keys" bit is a hint and harmless.
_HASH_INDEX_BIT = 1 << 31
_UNIFORM_KEYS_BIT = 1 << 29
_SEPARATED_KV_BIT = 1 << 28

# DB sessions write 20 base-36 chars; SstFileWriter in RocksDB 6.12 to ~6.2x
# wrote a UUID (Env::GenerateUniqueId).  Both are safe inside a file name.
_SESSION_ID_RE = re.compile(rb"[0-9A-Za-z-]{1,64}")


@dataclass(frozen=True)
class _Footer:
    """What the footer says about where the metaindex is (not yet bounds-checked)."""

    table: str
    format_version: int
    metaindex_offset: int
    metaindex_size: int
    trailer_len: int
    footer_offset: int


def _read_exact(f: BinaryIO, offset: int, n: int, what: str) -> bytes:
    """Read exactly n bytes at offset; a short read means the file is truncated."""
    f.seek(offset)
    chunks = []
    remaining = n
    while remaining > 0:
        chunk = f.read(remaining)
        if not chunk:
            raise Corruption(
                f"SST truncated: {what} needs {n} bytes at offset {offset}, "
                f"got {n - remaining}")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _varint(buf: bytes, pos: int, end: int, bits: int, what: str) -> tuple[int, int]:
    """Decode a little-endian base-128 varint of at most `bits` bits from buf[pos:end]."""
    result = 0
    shift = 0
    while pos < end and shift < bits:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result >> bits:
                raise Corruption(f"{what}: varint exceeds {bits} bits")
            return result, pos
        shift += 7
    raise Corruption(f"{what}: truncated or overlong varint")


def _parse_footer(f: BinaryIO, file_size: int) -> _Footer:
    """Decode the footer, validating its magic and version; handles are checked on use."""
    if isinstance(file_size, bool) or not isinstance(file_size, int) or file_size < 0:
        raise Corruption(f"invalid SST file size {file_size!r}")
    if file_size < _LEGACY_FOOTER_LEN:
        raise Corruption(f"file is too short ({file_size} bytes) to be an SST")
    tail_len = min(file_size, _FOOTER_LEN)
    tail = _read_exact(f, file_size - tail_len, tail_len, "footer")
    magic = int.from_bytes(tail[-8:], "little")

    if magic == _LEGACY_BLOCK_BASED_MAGIC:
        raise NotSupported(
            "SST uses the legacy block-based footer (format_version 0, RocksDB < 4.6); "
            "its properties are not read")
    if magic == _LEGACY_PLAIN_MAGIC:
        footer_offset = file_size - _LEGACY_FOOTER_LEN
        part2 = tail[-_LEGACY_FOOTER_LEN:-8]
        offset, pos = _varint(part2, 0, len(part2), 64, "metaindex handle")
        size, _ = _varint(part2, pos, len(part2), 64, "metaindex handle")
        return _Footer("plain", 0, offset, size, 0, footer_offset)
    if magic not in _SUPPORTED_VERSIONS:
        raise Corruption(f"bad SST magic number 0x{magic:016x}: not an SST file")

    table, versions = _SUPPORTED_VERSIONS[magic]
    if file_size < _FOOTER_LEN:
        raise Corruption(f"file is too short ({file_size} bytes) for a {table} SST footer")
    version = int.from_bytes(tail[-12:-8], "little")
    if version not in versions:
        raise NotSupported(
            f"{table} SST has format_version {version}, this reader knows "
            f"{versions.start}..{versions.stop - 1}")
    checksum_type = tail[0]
    if checksum_type > _MAX_CHECKSUM_TYPE:
        raise Corruption(f"SST footer has unknown checksum type {checksum_type}")
    footer_offset = file_size - _FOOTER_LEN
    trailer_len = _BLOCK_TRAILER_LEN if magic == _BLOCK_BASED_MAGIC else 0
    part2 = tail[1:41]

    if magic == _BLOCK_BASED_MAGIC and version >= 6:
        if part2[:4] != _EXTENDED_MAGIC:
            raise Corruption(f"bad SST extended magic 0x{part2[:4].hex()}")
        if part2[32:40] != bytes(8):
            raise NotSupported(
                "SST footer uses a future feature (reserved bytes are not zero)")
        size = int.from_bytes(part2[12:16], "little")
        offset = footer_offset - trailer_len - size
        return _Footer(table, version, offset, size, trailer_len, footer_offset)

    # Handles may run into the version bytes, as RocksDB decodes them.
    offset, pos = _varint(tail, 1, len(tail) - 8, 64, "metaindex handle")
    size, _ = _varint(tail, pos, len(tail) - 8, 64, "metaindex handle")
    return _Footer(table, version, offset, size, trailer_len, footer_offset)


def _check_handle(footer: _Footer, offset: int, size: int, what: str) -> None:
    """Reject a block handle that does not fit between file start and footer."""
    if offset < 0 or offset + size + footer.trailer_len > footer.footer_offset:
        raise Corruption(
            f"{what} handle (offset {offset}, size {size}) points outside the "
            f"{footer.footer_offset} bytes before the footer")
    if size > MAX_META_BLOCK:
        raise Corruption(f"{what} claims {size} bytes, more than {MAX_META_BLOCK}")


def _read_block(f: BinaryIO, footer: _Footer, offset: int, size: int, what: str) -> bytes:
    """Read a block and its trailer; return its uncompressed contents."""
    _check_handle(footer, offset, size, what)
    raw = _read_exact(f, offset, size + footer.trailer_len, what)
    if not footer.trailer_len:
        return raw
    contents, ctype = raw[:size], raw[size]
    if ctype == 0:
        return contents
    if ctype == 1:
        log.debug("%s at offset %d is snappy-compressed", what, offset)
        return _snappy.decompress(contents, MAX_META_BLOCK)
    name = _COMPRESSION_NAMES.get(ctype, f"type 0x{ctype:02x}")
    raise NotSupported(f"{what} at offset {offset} is compressed with {name}")


def _parse_block(data: bytes, what: str) -> dict[bytes, bytes]:
    """Decode every entry of a key-delta-encoded block, in file order."""
    if len(data) < 4:
        raise Corruption(f"{what} is too short ({len(data)} bytes) for a block")
    packed = int.from_bytes(data[-4:], "little")
    if packed & (_HASH_INDEX_BIT | _SEPARATED_KV_BIT):
        raise Corruption(f"{what} claims a data-block-only layout (footer 0x{packed:08x})")
    num_restarts = packed & ~_UNIFORM_KEYS_BIT
    end = len(data) - 4 - 4 * num_restarts
    if end < 0:
        raise Corruption(f"{what} claims {num_restarts} restart points in {len(data)} bytes")

    entries: dict[bytes, bytes] = {}
    key = b""
    key_bytes = 0  # shared prefixes are re-materialised: bound the total
    pos = 0
    while pos < end:
        # The three lengths are nearly always one byte: decode those inline (_varint is the
        # per-SST cost of naming a cold backup), the rest, and every error, through _varint.
        shared = data[pos]
        if shared < 0x80:
            pos += 1
        else:
            shared, pos = _varint(data, pos, end, 32, what)
        if pos < end and data[pos] < 0x80:
            non_shared = data[pos]
            pos += 1
        else:
            non_shared, pos = _varint(data, pos, end, 32, what)
        if pos < end and data[pos] < 0x80:
            value_len = data[pos]
            pos += 1
        else:
            value_len, pos = _varint(data, pos, end, 32, what)
        if shared > len(key):
            raise Corruption(f"{what}: entry shares {shared} bytes of a {len(key)}-byte key")
        if pos + non_shared + value_len > end:
            raise Corruption(f"{what}: entry at offset {pos} runs past the entries' end")
        key = key[:shared] + data[pos:pos + non_shared]
        pos += non_shared
        key_bytes += len(key)
        if key_bytes > MAX_META_BLOCK:
            raise Corruption(f"{what}: keys expand to more than {MAX_META_BLOCK} bytes")
        if key in entries:
            raise Corruption(f"{what}: duplicate key {key!r}")
        entries[key] = data[pos:pos + value_len]
        pos += value_len
    return entries


def _decode_handle(value: bytes, what: str) -> tuple[int, int]:
    """Decode a metaindex value: a block handle (varint64 offset, varint64 size)."""
    offset, pos = _varint(value, 0, len(value), 64, what)
    size, _ = _varint(value, pos, len(value), 64, what)
    return offset, size


def read_table_properties(f: BinaryIO, file_size: int) -> dict[str, bytes]:
    """All entries of the properties block (name -> raw value bytes).

    Numeric properties stay varint-encoded, as stored.  Names are decoded as
    UTF-8 with surrogateescape, so arbitrary user-collected names round-trip.
    """
    return {k.decode("utf-8", "surrogateescape"): v for k, v in _raw_properties(f, file_size).items()}


def _raw_properties(f: BinaryIO, file_size: int) -> dict[bytes, bytes]:
    footer = _parse_footer(f, file_size)
    metaindex = _parse_block(
        _read_block(f, footer, footer.metaindex_offset, footer.metaindex_size,
                    "metaindex block"),
        "metaindex block")
    for name in _PROPERTIES_BLOCK_NAMES:
        if name in metaindex:
            offset, size = _decode_handle(metaindex[name], "properties block handle")
            break
    else:
        raise Corruption(f"{footer.table} SST has no properties block")
    return _parse_block(_read_block(f, footer, offset, size, "properties block"), "properties block")


def read_session_id(f: BinaryIO, file_size: int) -> str | None:
    """Return the SST's `rocksdb.creating.session.identity` table property.

    That is 20 chars [0-9A-Z] for SSTs written by a DB; SstFileWriter in
    RocksDB 6.12 to ~6.2x wrote a 36-char UUID, which BackupEngine uses as is.
    None when the file is a valid SST without that property (SSTs written
    before RocksDB 6.12): BackupEngine then uses legacy naming.  A value that
    is not safe inside a file name raises NotSupported.
    """
    value = _raw_properties(f, file_size).get(_SESSION_ID_KEY, b"")
    if not value:
        return None
    if not _SESSION_ID_RE.fullmatch(value):
        raise NotSupported(f"SST session id {value[:80]!r} is not usable in a file name")
    return value.decode("ascii")
