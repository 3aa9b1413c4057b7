"""A DB's live files from its CURRENT and MANIFEST, decoded in pure Python (no RocksDB needed).

Why: rocksdict bundles one RocksDB (9.8.4), which refuses DBs that a newer RocksDB wrote (SST
format_version 7, unknown options).  The MANIFEST says exactly which files RocksDB considers live,
and its format has been stable and forward-compatible since RocksDB 5: a log (`logformat`) of
VersionEdit records, each a run of tagged fields, which we replay the way RocksDB's recovery does.

Layout followed (RocksDB db/version_edit.h/.cc, db/wal_edit.cc, db/blob/blob_file_addition.cc,
db/blob/blob_file_garbage.cc, db/version_builder.cc, db/version_edit_handler.cc):

* A VersionEdit is `varint32 tag, value` pairs.  Tags 1-10 come from LevelDB (comparator, log
  number, next file number, last sequence, compact cursor, deleted file, new file, prev log
  number, min log number to keep); 100/102/103 are newer new-file forms (103 carries custom fields:
  varint32 tag + length-prefixed value, ended by tag 1; a tag with bit 6 set must be understood);
  200-203 column family id / add / drop / max; 300 atomic groups; 400/401 blob file addition and
  garbage.  Tags with bit 13 set are "safe to ignore": length-prefixed, except the first WAL
  addition/deletion forms and the deprecated blob forms, which are decoded.
* Replay: each edit applies to the column family its tag 200 names (0, "default", if none);
  deletions before additions; an atomic group applies only once all its edits are read.  A blob
  file is dead once no SST links to it (an SST's oldest blob file) and all its blobs are garbage.

What is refused: a damaged or unreadable CURRENT or MANIFEST is `Corruption` naming the file; a
field this reader does not know and may not ignore (a future RocksDB) or an SST in another
`db_paths` entry is `NotSupported`.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from ..errors import Corruption, NotSupported
from .logformat import LogReader

DEFAULT_CF = "default"

# VersionEdit tags (db/version_edit.h, enum Tag)
COMPARATOR, LOG_NUMBER, NEXT_FILE_NUMBER, LAST_SEQUENCE, COMPACT_CURSOR = 1, 2, 3, 4, 5
DELETED_FILE, NEW_FILE, PREV_LOG_NUMBER, MIN_LOG_NUMBER_TO_KEEP = 6, 7, 9, 10
NEW_FILE2, NEW_FILE3, NEW_FILE4 = 100, 102, 103
COLUMN_FAMILY, COLUMN_FAMILY_ADD, COLUMN_FAMILY_DROP, MAX_COLUMN_FAMILY = 200, 201, 202, 203
IN_ATOMIC_GROUP = 300
BLOB_FILE_ADDITION, BLOB_FILE_GARBAGE = 400, 401
SAFE_IGNORE_MASK = 1 << 13
DB_ID, BLOB_FILE_ADDITION_OLD, BLOB_FILE_GARBAGE_OLD = SAFE_IGNORE_MASK + 1, SAFE_IGNORE_MASK + 2, SAFE_IGNORE_MASK + 3
WAL_ADDITION, WAL_DELETION = SAFE_IGNORE_MASK + 4, SAFE_IGNORE_MASK + 5
WAL_ADDITION2, WAL_DELETION2 = SAFE_IGNORE_MASK + 7, SAFE_IGNORE_MASK + 8

# NewFile4 custom fields (enum NewFileCustomTag)
NF_TERMINATE, NF_NEED_COMPACTION, NF_MIN_LOG_HACK, NF_OLDEST_BLOB = 1, 2, 3, 4
NF_NON_SAFE_IGNORE_MASK = 1 << 6
NF_PATH_ID = NF_NON_SAFE_IGNORE_MASK + 1

_BLOB_FORWARD_INCOMPATIBLE = 1 << 6
_WAL_TERMINATE, _WAL_SYNCED_SIZE = 1, 2
_MANIFEST_NAME = re.compile(r"MANIFEST-(\d+)")


class _Cursor:
    """Reads RocksDB's coding (util/coding.h) from one record; every short read is `Corruption`."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def done(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self, bits: int = 64) -> int:
        data = self.data
        if self.pos < len(data) and data[self.pos] < 0x80:  # most fields are one byte: the fast path
            self.pos += 1
            return data[self.pos - 1]
        result = shift = 0
        while self.pos < len(data) and shift < bits:
            byte = data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                if result >> bits:
                    break
                return result
            shift += 7
        raise Corruption(f"{self.what}: bad varint{bits} at byte {self.pos}")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise Corruption(f"{self.what}: field of {n} bytes runs past the record's end")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def slice(self) -> bytes:
        """A length-prefixed slice (varint32 length, bytes)."""
        return self.take(self.varint(32))


@dataclass(frozen=True)
class TableFile:
    number: int
    level: int
    size: int
    path_id: int = 0
    oldest_blob_file: int = 0
    """The oldest blob file this SST references (0: none); it keeps that blob file alive."""


@dataclass
class BlobFile:
    number: int
    total_count: int
    total_bytes: int
    garbage_count: int = 0
    garbage_bytes: int = 0


@dataclass
class VersionEdit:
    """One decoded MANIFEST record; None means the field was absent."""

    column_family: int = 0
    cf_add: str | None = None
    cf_drop: bool = False
    comparator: str | None = None
    db_id: str | None = None
    log_number: int | None = None
    prev_log_number: int | None = None
    next_file_number: int | None = None
    last_sequence: int | None = None
    min_log_number_to_keep: int | None = None
    max_column_family: int | None = None
    atomic_group_remaining: int | None = None
    deleted_files: list[tuple[int, int]] = field(default_factory=list)
    """(level, number)"""
    new_files: list[TableFile] = field(default_factory=list)
    blob_additions: list[BlobFile] = field(default_factory=list)
    blob_garbage: list[tuple[int, int, int]] = field(default_factory=list)
    """(blob number, garbage count, garbage bytes)"""
    wal_additions: list[tuple[int, int | None]] = field(default_factory=list)
    """(WAL number, synced size if recorded)"""
    wal_deletion_before: int | None = None


@dataclass
class ColumnFamily:
    id: int
    name: str
    log_number: int = 0
    """WALs older than this hold nothing of this column family that is not in its SSTs."""
    comparator: str | None = None
    tables: dict[int, TableFile] = field(default_factory=dict)
    blobs: dict[int, BlobFile] = field(default_factory=dict)

    def live_blobs(self) -> list[BlobFile]:
        """Blob files RocksDB keeps: linked from an SST, or holding some blob that is not garbage."""
        linked = {t.oldest_blob_file for t in self.tables.values()}
        return [b for n, b in sorted(self.blobs.items()) if n in linked or b.garbage_count < b.total_count]


@dataclass
class DbVersion:
    """The state of a DB as its MANIFEST records it."""

    manifest: str
    column_families: dict[int, ColumnFamily]
    next_file_number: int
    last_sequence: int
    prev_log_number: int = 0
    min_log_number_to_keep: int = 0
    db_id: str | None = None
    wals: dict[int, int | None] = field(default_factory=dict)
    """WALs the MANIFEST tracks (track_and_verify_wals_in_manifest): number -> synced size."""

    def tables(self) -> list[TableFile]:
        return sorted((t for cf in self.column_families.values() for t in cf.tables.values()),
                      key=lambda t: t.number)

    def blobs(self) -> list[BlobFile]:
        return sorted((b for cf in self.column_families.values() for b in cf.live_blobs()), key=lambda b: b.number)

    def min_wal_number(self) -> int:
        """WALs numbered below this hold nothing recovery needs: it skips them (and deletes them).
        With two-phase commit, WALs from `min_log_number_to_keep` on may hold prepared transactions;
        without it RocksDB skips those that only hold flushed data, so counting them in is harmless."""
        numbers = [cf.log_number for cf in self.column_families.values()]
        numbers += [n for n in (self.prev_log_number, self.min_log_number_to_keep) if n]
        return min(numbers)


def parse_current(data: bytes, name: str = "CURRENT") -> str:
    """The MANIFEST file name that CURRENT names (RocksDB writes `MANIFEST-<n>\\n`)."""
    if not data.endswith(b"\n"):
        raise Corruption(f"{name} does not end with a newline (a torn or foreign file): {data[:80]!r}")
    text = data[:-1].decode("ascii", "replace")
    if not _MANIFEST_NAME.fullmatch(text):
        raise Corruption(f"{name} does not name a MANIFEST file: {data[:80]!r}")
    return text


def decode_edit(record: bytes, what: str) -> VersionEdit:
    """Pure: one VersionEdit from one MANIFEST record (`what` names it in errors)."""
    c = _Cursor(record, what)
    edit = VersionEdit()
    while not c.done():
        tag = c.varint(32)
        _decode_field(c, tag, edit)
    return edit


def _decode_field(c: _Cursor, tag: int, e: VersionEdit) -> None:  # one branch per tag, as RocksDB's
    if tag == COMPARATOR:
        e.comparator = c.slice().decode("utf-8", "replace")
    elif tag == LOG_NUMBER:
        e.log_number = c.varint()
    elif tag == PREV_LOG_NUMBER:
        e.prev_log_number = c.varint()
    elif tag == NEXT_FILE_NUMBER:
        e.next_file_number = c.varint()
    elif tag == LAST_SEQUENCE:
        e.last_sequence = c.varint()
    elif tag == MIN_LOG_NUMBER_TO_KEEP:
        e.min_log_number_to_keep = c.varint()
    elif tag == MAX_COLUMN_FAMILY:
        e.max_column_family = c.varint(32)
    elif tag == COMPACT_CURSOR:
        c.varint(32)
        _internal_key(c)
    elif tag == DELETED_FILE:
        level = c.varint(32)
        e.deleted_files.append((level, c.varint()))
    elif tag in (NEW_FILE, NEW_FILE2, NEW_FILE3):
        e.new_files.append(_old_new_file(c, tag))
    elif tag == NEW_FILE4:
        e.new_files.append(_new_file4(c, e))
    elif tag == COLUMN_FAMILY:
        e.column_family = c.varint(32)
    elif tag == COLUMN_FAMILY_ADD:
        e.cf_add = c.slice().decode("utf-8", "surrogateescape")
    elif tag == COLUMN_FAMILY_DROP:
        e.cf_drop = True
    elif tag == IN_ATOMIC_GROUP:
        e.atomic_group_remaining = c.varint(32)
    elif tag in (BLOB_FILE_ADDITION, BLOB_FILE_ADDITION_OLD):
        e.blob_additions.append(_blob_addition(c))
    elif tag in (BLOB_FILE_GARBAGE, BLOB_FILE_GARBAGE_OLD):
        e.blob_garbage.append(_blob_garbage(c))
    elif tag == WAL_ADDITION:
        e.wal_additions.append(_wal_addition(c))
    elif tag == WAL_ADDITION2:
        e.wal_additions.append(_wal_addition(_Cursor(c.slice(), c.what)))
    elif tag == WAL_DELETION:
        e.wal_deletion_before = c.varint()
    elif tag == WAL_DELETION2:
        e.wal_deletion_before = _Cursor(c.slice(), c.what).varint()
    elif tag == DB_ID:
        e.db_id = c.slice().decode("ascii", "replace")
    elif tag & SAFE_IGNORE_MASK:
        c.slice()  # a field from a newer RocksDB that older ones may skip (timestamps, progress, ...)
    else:
        raise NotSupported(f"{c.what}: VersionEdit tag {tag} is unknown and may not be ignored "
                           f"(written by a RocksDB newer than this reader knows?)")


def _internal_key(c: _Cursor) -> bytes:
    key = c.slice()
    if len(key) < 8:
        raise Corruption(f"{c.what}: internal key of {len(key)} bytes (at least 8 expected)")
    return key


def _old_new_file(c: _Cursor, tag: int) -> TableFile:
    level, number = c.varint(32), c.varint()
    path_id = c.varint(32) if tag == NEW_FILE3 else 0
    size = c.varint()
    _internal_key(c)
    _internal_key(c)
    if tag != NEW_FILE:
        c.varint()
        c.varint()
    return TableFile(number, level, size, path_id)


def _new_file4(c: _Cursor, e: VersionEdit) -> TableFile:
    """Decoded on local variables, not through `_Cursor`: a MANIFEST snapshot written at a DB's open
    is one record of a NewFile4 per live SST (10,000 of them: 0.3 s through the cursor's methods).
    The varints that are one byte in practice (level, key lengths, custom field tags and lengths:
    some 17 of the 22 of an SST that RocksDB 9 writes) are read inline, the others by `_varint`."""
    data, pos, end = c.data, c.pos, len(c.data)
    try:
        level = data[pos]
        pos += 1
        if level >= 0x80:
            level, pos = _varint(data, pos - 1, 32, c)
        number, pos = _varint(data, pos, 64, c)
        size, pos = _varint(data, pos, 64, c)
        for _ in range(2):  # smallest and largest internal keys
            length = data[pos]
            pos += 1
            if length >= 0x80:
                length, pos = _varint(data, pos - 1, 32, c)
            if length < 8:
                raise Corruption(f"{c.what}: internal key of {length} bytes (at least 8 expected)")
            pos += length
        _, pos = _varint(data, pos, 64, c)  # smallest seqno
        _, pos = _varint(data, pos, 64, c)  # largest seqno
        path_id = oldest_blob = 0
        while True:
            custom = data[pos]
            pos += 1
            if custom >= 0x80:
                custom, pos = _varint(data, pos - 1, 32, c)
            if custom == NF_TERMINATE:
                break
            length = data[pos]
            pos += 1
            if length >= 0x80:
                length, pos = _varint(data, pos - 1, 32, c)
            if pos + length > end:
                raise IndexError
            if custom == NF_PATH_ID:
                if length != 1 or data[pos] > 3:
                    raise Corruption(f"{c.what}: bad path id {data[pos:pos + length]!r} of SST #{number}")
                path_id = data[pos]
            elif custom == NF_OLDEST_BLOB:
                oldest_blob = _Cursor(data[pos:pos + length], c.what).varint()
            elif custom == NF_MIN_LOG_HACK:
                if length != 8:
                    raise Corruption(f"{c.what}: bad min log number field of SST #{number}")
                e.min_log_number_to_keep = max(e.min_log_number_to_keep or 0,
                                               int.from_bytes(data[pos:pos + 8], "little"))
            elif custom & NF_NON_SAFE_IGNORE_MASK:
                raise NotSupported(f"{c.what}: SST #{number} carries field {custom}, which a reader must understand "
                                   f"and this one does not (written by a newer RocksDB?)")
            pos += length
        if pos > end:
            raise IndexError
    except IndexError:
        raise Corruption(f"{c.what}: a new-file field runs past the record's end") from None
    c.pos = pos
    return TableFile(number, level, size, path_id, oldest_blob)


def _varint(data: bytes, pos: int, bits: int, c: _Cursor) -> tuple[int, int]:
    """(value, next position) of the varint at `pos` (IndexError if `pos` is past the end, as the
    caller expects); a varint that is cut off or too long is left to `_Cursor.varint` to report."""
    start = pos
    result = shift = 0
    try:
        while shift < bits:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                if not result >> bits:
                    return result, pos
                break
            shift += 7
    except IndexError:
        if pos == start:
            raise
    c.pos = start
    c.varint(bits)  # raises, naming the byte
    raise AssertionError("unreachable: _Cursor.varint accepted what _varint refused")


def _blob_custom_fields(c: _Cursor, what: str) -> None:
    while True:
        custom = c.varint(32)
        if custom == 0:  # kEndMarker
            return
        if custom & _BLOB_FORWARD_INCOMPATIBLE:
            raise NotSupported(f"{c.what}: {what} carries field {custom}, which a reader must understand")
        c.slice()


def _blob_addition(c: _Cursor) -> BlobFile:
    blob = BlobFile(c.varint(), c.varint(), c.varint())
    c.slice()  # checksum method
    c.slice()  # checksum value
    _blob_custom_fields(c, f"blob file #{blob.number}")
    return blob


def _blob_garbage(c: _Cursor) -> tuple[int, int, int]:
    garbage = (c.varint(), c.varint(), c.varint())
    _blob_custom_fields(c, f"blob garbage of #{garbage[0]}")
    return garbage


def _wal_addition(c: _Cursor) -> tuple[int, int | None]:
    number, synced = c.varint(), None
    while True:
        tag = c.varint(32)
        if tag == _WAL_TERMINATE:
            return number, synced
        if tag != _WAL_SYNCED_SIZE:
            raise Corruption(f"{c.what}: unknown tag {tag} in the addition of WAL #{number}")
        synced = c.varint()


class _Replay:
    """Applies VersionEdits in order, as RocksDB's VersionEditHandler does on recovery."""

    def __init__(self, manifest: str) -> None:
        self.manifest = manifest
        self.cfs = {0: ColumnFamily(0, DEFAULT_CF)}
        self.next_file_number: int | None = None
        self.last_sequence: int | None = None
        self.saw_log_number = False
        self.prev_log_number = 0
        self.min_log_number_to_keep = 0
        self.db_id: str | None = None
        self.wals: dict[int, int | None] = {}
        self.group: list[VersionEdit] = []

    def copy(self) -> _Replay:
        """A replay that goes on from here without changing this one (nor the DbVersion it returned)."""
        twin = copy.copy(self)
        twin.cfs = {i: dataclasses.replace(cf, tables=dict(cf.tables),
                                           blobs={n: dataclasses.replace(b) for n, b in cf.blobs.items()})
                    for i, cf in self.cfs.items()}
        twin.wals = dict(self.wals)
        twin.group = list(self.group)
        return twin

    def add(self, edit: VersionEdit, index: int) -> None:
        if edit.atomic_group_remaining is None:
            if self.group:
                raise Corruption(f"{self.manifest}: record {index} breaks an unfinished atomic group")
            self.apply(edit, index)
            return
        if self.group and edit.atomic_group_remaining != self.group[-1].atomic_group_remaining - 1:  # type: ignore
            raise Corruption(f"{self.manifest}: record {index} does not continue its atomic group")
        self.group.append(edit)
        if edit.atomic_group_remaining == 0:
            for member in self.group:
                self.apply(member, index)
            self.group = []

    def apply(self, e: VersionEdit, index: int) -> None:
        where = f"{self.manifest} (record {index})"
        if e.cf_add is not None:
            if e.column_family in self.cfs:
                raise Corruption(f"{where}: column family {e.column_family} ({e.cf_add!r}) is added twice")
            self.cfs[e.column_family] = ColumnFamily(e.column_family, e.cf_add)
        cf = self.cfs.get(e.column_family)
        if cf is None:
            raise Corruption(f"{where}: an edit for column family {e.column_family}, which does not exist")
        if e.cf_drop:
            del self.cfs[e.column_family]
            return
        self._apply_files(cf, e, where)
        if e.comparator is not None:
            cf.comparator = e.comparator
        if e.log_number is not None:
            cf.log_number = max(cf.log_number, e.log_number)
            self.saw_log_number = True
        for name, value in (("next_file_number", e.next_file_number), ("last_sequence", e.last_sequence),
                            ("prev_log_number", e.prev_log_number), ("db_id", e.db_id)):
            if value is not None:
                setattr(self, name, value)
        if e.min_log_number_to_keep is not None:
            self.min_log_number_to_keep = max(self.min_log_number_to_keep, e.min_log_number_to_keep)
        if e.wal_deletion_before is not None:
            self.wals = {n: s for n, s in self.wals.items() if n >= e.wal_deletion_before}
        for number, synced in e.wal_additions:
            self.wals[number] = synced

    @staticmethod
    def _apply_files(cf: ColumnFamily, e: VersionEdit, where: str) -> None:
        for level, number in e.deleted_files:
            if number not in cf.tables or cf.tables[number].level != level:
                raise Corruption(f"{where}: deletes SST #{number} from level {level} of column family "
                                 f"{cf.name!r}, which does not have it there")
            del cf.tables[number]
        for table in e.new_files:
            cf.tables[table.number] = table
        for blob in e.blob_additions:
            if blob.number in cf.blobs:
                raise Corruption(f"{where}: blob file #{blob.number} is added twice")
            cf.blobs[blob.number] = blob
        for number, count, size in e.blob_garbage:
            if number not in cf.blobs:
                raise Corruption(f"{where}: garbage for blob file #{number}, which column family {cf.name!r} "
                                 f"does not have")
            cf.blobs[number].garbage_count += count
            cf.blobs[number].garbage_bytes += size

    def result(self) -> DbVersion:
        missing = [what for what, ok in (("next file number", self.next_file_number is not None),
                                         ("last sequence number", self.last_sequence is not None),
                                         ("log number", self.saw_log_number)) if not ok]
        if missing:
            raise Corruption(f"{self.manifest} has no {', no '.join(missing)} entry: not a complete MANIFEST")
        return DbVersion(self.manifest, self.cfs, self.next_file_number or 0, self.last_sequence or 0,
                         self.prev_log_number, self.min_log_number_to_keep, self.db_id, self.wals)


def replay(records: Iterable[bytes], manifest: str) -> DbVersion:
    """Pure: the DB state after every (complete) edit of `records`; an atomic group cut off by the
    end of the log is dropped, as RocksDB drops it."""
    state = _Replay(manifest)
    for index, record in enumerate(records):
        state.add(decode_edit(record, f"{manifest} (record {index})"), index)
    return state.result()


def read_manifest(f: BinaryIO, manifest: str) -> DbVersion:
    """The DB state that the MANIFEST in `f` records (`manifest` names it in errors)."""
    return read_manifest_from(f, manifest)[0]


@dataclass(frozen=True)
class ManifestProgress:
    """Where a read of a MANIFEST stopped (the end of its last complete record) and the replay there.

    A MANIFEST only ever grows at its end, so a later read of the same file goes on from here and
    decodes only the edits appended since: a DB of 10,000 SSTs has a MANIFEST of ~1 MB that costs
    0.3 s of Python to decode whole.  Never changed once made (`read_manifest_from` copies it)."""

    offset: int
    records: int
    replay: _Replay


def read_manifest_from(f: BinaryIO, manifest: str,
                       since: ManifestProgress | None = None) -> tuple[DbVersion, ManifestProgress]:
    """The DB state the MANIFEST in `f` records, and how far it was read.  With `since` (a progress of
    this very file), `f` is positioned at `since.offset` and only what follows is decoded."""
    state = since.replay.copy() if since is not None else _Replay(manifest)
    first = since.records if since is not None else 0
    reader = LogReader(f, manifest, start=since.offset if since is not None else 0)
    count = first
    for index, record in enumerate(reader, first):
        state.add(decode_edit(record, f"{manifest} (record {index})"), index)
        count = index + 1
    return state.result(), ManifestProgress(reader.record_end, count, state)
