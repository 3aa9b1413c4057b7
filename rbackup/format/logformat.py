"""RocksDB's log format (MANIFEST and WAL files), read in pure Python.

Why: a DB directory that rocksdict cannot open (a newer RocksDB wrote it) is backed up by reading its
MANIFEST ourselves, and the MANIFEST is a log of VersionEdit records in this format.  Only a file
object passed in is read, 32 KiB at a time, so memory stays flat however long the log is.

Layout followed (RocksDB db/log_format.h, db/log_reader.cc):

* The file is a sequence of 32 KiB blocks.  A block holds physical records; a tail of fewer than
  7 bytes is zero padding.
* A physical record: masked CRC-32C (u32 LE), payload length (u16 LE), type (1 byte), and for the
  recyclable types the log number (u32 LE), then the payload.  The CRC covers the type byte, the log
  number if any, and the payload.
* Types: 1 full, 2 first, 3 middle, 4 last, 5-8 the same for recycled logs, 9 a WAL compression
  marker, 10/11 user-defined timestamp sizes, 130/131 a WAL's predecessor info; 0 with length 0 is
  preallocated space.  Unknown types with bit 7 set are ignored; other unknown types are corrupt.
* A logical record is one full record or first + middles + last.

What is tolerated, as RocksDB tolerates it by default (kTolerateCorruptedTailRecords, the mode it
reads MANIFESTs with): a truncated record or fragment at the very end of the file (a writer died
mid-append; that record was never acknowledged) ends the log; so does, in a recycled log, a record
of an earlier incarnation.  Anything else (a CRC mismatch before the end, a fragment out of order,
an unknown type) raises `Corruption` naming the file and offset.  A compressed WAL (type 9 with a
compression other than none) raises `NotSupported`.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import Corruption, NotSupported
from .checksum import crc32c

log = logging.getLogger("rbackup")

BLOCK_SIZE = 32768
HEADER_SIZE = 7
RECYCLABLE_HEADER_SIZE = 11
_MASK_DELTA = 0xA282EAD8

ZERO, FULL, FIRST, MIDDLE, LAST = 0, 1, 2, 3, 4
RECYCLABLE_FULL, RECYCLABLE_FIRST, RECYCLABLE_MIDDLE, RECYCLABLE_LAST = 5, 6, 7, 8
SET_COMPRESSION = 9
TIMESTAMP_SIZE, RECYCLABLE_TIMESTAMP_SIZE = 10, 11
PREDECESSOR_WAL_INFO, RECYCLABLE_PREDECESSOR_WAL_INFO = 130, 131
_SAFE_IGNORE_MASK = 1 << 7

_RECYCLABLE = {RECYCLABLE_FULL, RECYCLABLE_FIRST, RECYCLABLE_MIDDLE, RECYCLABLE_LAST, RECYCLABLE_TIMESTAMP_SIZE,
               RECYCLABLE_PREDECESSOR_WAL_INFO}
_META_TYPES = {TIMESTAMP_SIZE, RECYCLABLE_TIMESTAMP_SIZE, PREDECESSOR_WAL_INFO, RECYCLABLE_PREDECESSOR_WAL_INFO}
_FRAGMENT_ROLE = {FULL: FULL, RECYCLABLE_FULL: FULL, FIRST: FIRST, RECYCLABLE_FIRST: FIRST,
                  MIDDLE: MIDDLE, RECYCLABLE_MIDDLE: MIDDLE, LAST: LAST, RECYCLABLE_LAST: LAST}


def mask_crc(crc: int) -> int:
    """RocksDB's crc32c::Mask: stored CRCs are rotated and offset so CRCs of CRCs stay strong."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


@dataclass(frozen=True)
class _Physical:
    kind: int
    payload: bytes
    offset: int


class _EndOfLog(Exception):
    """The log ends here: EOF, a torn tail, or a record of an earlier incarnation of a recycled log."""


class LogReader:
    """Iterates the logical records of one log file (`name` is only for messages)."""

    def __init__(self, f: BinaryIO, name: str, log_number: int | None = None, *, start: int = 0) -> None:
        """`start`: the file offset `f` is positioned at, the end of a logical record an earlier reader
        reported as `record_end` (a log only grows at its end, so reading on from there is exact)."""
        self._f = f
        self._name = name
        self._log_number = log_number
        self._block = b""
        self._pos = 0
        self._block_offset = start
        self._eof = False
        self._recycled: bool | None = None
        self.record_end = start
        """The file offset just past the last logical record yielded: where a later reader may start."""

    def __iter__(self) -> Iterator[bytes]:
        pending: list[bytes] | None = None
        while True:
            try:
                rec = self._next_physical()
            except _EndOfLog:
                if pending is not None:
                    log.info("%s ends inside a fragmented record (a torn last write); ignoring that record",
                             self._name)
                return
            if rec.kind == SET_COMPRESSION:
                if rec.payload[:1] not in (b"", b"\x00"):
                    raise NotSupported(f"{self._name} is a compressed WAL (compression type "
                                       f"{rec.payload[0]}): rbackup cannot read its records")
                continue
            if rec.kind in _META_TYPES or (rec.kind not in _FRAGMENT_ROLE and rec.kind & _SAFE_IGNORE_MASK):
                continue
            role = _FRAGMENT_ROLE.get(rec.kind)
            if role is None:
                raise Corruption(f"{self._name}: unknown record type {rec.kind} at offset {rec.offset}")
            if role == FULL or role == FIRST:
                if pending and any(pending):  # an empty unfinished first fragment is an old writer's quirk
                    raise Corruption(f"{self._name}: a record at offset {rec.offset} starts before the previous "
                                     f"one ended (partial record without end)")
                if role == FULL:
                    pending = None
                    self.record_end = self._block_offset + self._pos
                    yield rec.payload
                else:
                    pending = [rec.payload]
            else:
                if pending is None:
                    raise Corruption(f"{self._name}: fragment at offset {rec.offset} has no start "
                                     f"(missing start of fragmented record)")
                pending.append(rec.payload)
                if role == LAST:
                    self.record_end = self._block_offset + self._pos
                    yield b"".join(pending)
                    pending = None

    def _fill(self) -> None:
        """Move to the next block (the rest of the first one, when reading from a `start` inside it);
        raise _EndOfLog at EOF."""
        self._block_offset += len(self._block)
        want = BLOCK_SIZE - self._block_offset % BLOCK_SIZE
        self._block = self._f.read(want)
        self._pos = 0
        if not self._block:
            raise _EndOfLog()
        if len(self._block) < want:
            self._eof = True

    def _next_physical(self) -> _Physical:
        while True:
            left = len(self._block) - self._pos
            if left < HEADER_SIZE:
                if left and self._eof:
                    raise _EndOfLog()  # a truncated header at the end of the file
                self._fill()
                continue
            b, p = self._block, self._pos
            offset = self._block_offset + p
            length = b[p + 4] | (b[p + 5] << 8)
            kind = b[p + 6]
            header = RECYCLABLE_HEADER_SIZE if kind in _RECYCLABLE else HEADER_SIZE
            if header + length > left:
                if self._eof:
                    raise _EndOfLog()  # a torn last record
                raise Corruption(f"{self._name}: record at offset {offset} claims {length} bytes, past its block")
            if kind == ZERO and length == 0:
                # preallocated space (mmap writes of old RocksDBs): the rest of the block is empty
                self._pos = len(b)
                continue
            expected = int.from_bytes(b[p:p + 4], "little")
            actual = mask_crc(crc32c(b[p + 6:p + header + length]))
            if actual != expected:
                if self._recycled and self._eof:
                    raise _EndOfLog()
                raise Corruption(f"{self._name}: checksum mismatch in the record at offset {offset}")
            self._pos = p + header + length
            if kind in _RECYCLABLE:
                if self._recycled is False:
                    raise Corruption(f"{self._name}: recyclable record at offset {offset} in a log that is "
                                     f"not recycled")
                self._recycled = True
                number = int.from_bytes(b[p + 7:p + 11], "little")
                if self._log_number is not None and number != (self._log_number & 0xFFFFFFFF):
                    raise _EndOfLog()  # left over from the log's previous life
            elif self._recycled is None:
                self._recycled = False
            return _Physical(kind, b[p + header:p + header + length], offset)


def read_records(f: BinaryIO, name: str, log_number: int | None = None) -> Iterator[bytes]:
    """The logical records of the log in `f`, in order (see the module docstring for what ends it)."""
    return iter(LogReader(f, name, log_number))


def encode_records(records: list[bytes], *, recyclable_log_number: int | None = None) -> bytes:
    """Pure: a log holding `records`, as RocksDB's log::Writer lays it out (for tests and tools)."""
    out = bytearray()
    header = HEADER_SIZE if recyclable_log_number is None else RECYCLABLE_HEADER_SIZE
    for record in records:
        left = record
        first = True
        while True:
            room = BLOCK_SIZE - len(out) % BLOCK_SIZE
            if room < header:
                out += bytes(room)
                continue
            chunk = left[:room - header]
            left = left[len(chunk):]
            role = (FULL if not left else FIRST) if first else (LAST if not left else MIDDLE)
            kind = role if recyclable_log_number is None else role + 4
            body = bytes([kind])
            if recyclable_log_number is not None:
                body += (recyclable_log_number & 0xFFFFFFFF).to_bytes(4, "little")
            body += chunk
            out += mask_crc(crc32c(body)).to_bytes(4, "little") + len(chunk).to_bytes(2, "little")
            out += body
            first = False
            if not left:
                break
    return bytes(out)
