"""Meta files (`meta/<id>`): RocksDB's writer and reader, byte for byte (docs/format.md §2).

A backup exists exactly when its meta file does, and the meta file is all a
reader knows about the backup, so both directions follow RocksDB precisely:
`serialize_meta` writes what `BackupMeta::StoreToFile` writes (BE:3238-3338)
and `parse_meta` accepts and rejects what `BackupMeta::LoadFromFile` does
(BE:2982-3230), down to its quirks (a final line without `\\n` is dropped;
timestamp and sequence number go through `strtoull`; the file count through
`strtoul`, trailing junk ignored).

The reader is stricter than RocksDB in one respect on purpose: a meta file is
untrusted input that names paths the engine will read and write, so every path
must be `shared/<name>`, `shared_checksum/<name>` or `private/<id>/<name>` for
the backup's own id, names must be ordinary single components, a path may
appear only once, and no two entries may restore to the same DB file.  None of
these can occur in a meta file RocksDB wrote.

Checking entries against the files on disk (existence, `size`) is the engine's
job; this module never does I/O.
"""
from __future__ import annotations

import binascii
import functools
import itertools
import logging
import operator
import re
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast, overload

from ..errors import BackupError, Corruption, InvalidArgument, NotSupported
from .naming import (
    PRIVATE_DIR,
    SHARED_CHECKSUM_DIR,
    SHARED_DIR,
    db_filename_from_backup_name,
    parse_backup_id,
)
from .paths import check_path

__all__ = [
    "MAX_APP_METADATA",
    "MAX_META_FILE_SIZE",
    "SCHEMA_2_VERSION",
    "TEMPERATURES",
    "BackupMeta",
    "EntryList",
    "EntryTable",
    "MetaFileEntry",
    "parse_meta",
    "serialize_meta",
]

logger = logging.getLogger(__name__)

MAX_APP_METADATA = 1 << 20
"""Largest app metadata in raw bytes (BE:746, 1164-1166); larger -> InvalidArgument."""

MAX_META_FILE_SIZE = 64 << 20
"""The engine refuses to read a bigger meta file (RocksDB has no limit; ours bounds memory)."""

SCHEMA_2_VERSION = "2.1"
"""The version string written for schema 2: HEAD's, not v7.8.3's `2.0`.

Every schema-2 reader since 6.19 (v7.8.3 included) accepts any `2` or `2.x`
and uses the minor number for nothing but diagnostics, so `2.1` costs no
compatibility, and it is byte-identical to what current RocksDB writes.  It is
also truthful: `ni::excluded` entries, which we may write, are a 2.1 feature.
"""

TEMPERATURES = frozenset({"kHot", "kWarm", "kCool", "kCold", "kIce"})
"""Temperature names RocksDB writes (options_helper.cc); others read as unknown."""

_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1
_SCHEMA_PREFIX = "schema_version "
_FOOTER_MARKER = "// FOOTER"
_FIELD_METADATA = "metadata"
_FIELD_CRC32 = "crc32"  # crc32c, named "crc32" by historical accident (BE:2919-2920)
_FIELD_SIZE = "size"
_FIELD_TEMP = "temp"
_FIELD_EXCLUDED = "ni::excluded"
_NON_IGNORABLE_PREFIX = "ni::"
_PRIVATE_PREFIX = PRIVATE_DIR + "/"

_CANONICAL_DECIMAL_RE = re.compile(r"0|[1-9][0-9]{0,9}")
_DIGITS_RE = re.compile(r"[0-9]*")
_STRTOULL_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]*)")


@dataclass(slots=True)
class MetaFileEntry:
    """One file line of a meta file.

    Loaded backups share these: a file named by 100 meta files is one entry
    (see `EntryTable`), so treat entries you did not build as read-only.
    """

    path: str
    """Backup-relative, e.g. `shared_checksum/000012_sX_123.sst`, `private/3/CURRENT`."""
    crc32c: int | None
    """Unmasked CRC-32C; None only when a schema-2 line omits it (nothing to verify then)."""
    size: int | None = None
    """The schema-2 `size` field, when present; the engine checks it against the store."""
    temperature: str | None = None
    """One of TEMPERATURES, or None for unknown."""
    excluded: bool = False
    """A schema-2 `ni::excluded true` entry: recorded, not copied, not counted in N."""


@dataclass
class BackupMeta:
    """The content of one meta file."""

    timestamp: int
    """Seconds since the epoch as written (uint64; RocksDB writes 1 if the clock failed)."""
    sequence_number: int
    """Approximate latest sequence number at backup time (uint64)."""
    files: Sequence[MetaFileEntry]
    """In file order; `excluded` entries are written after all counted ones.  A list, or
    for a backup the engine loaded an `EntryList` over entries shared with other backups."""
    app_metadata: bytes = b""
    schema_version: str = "1"
    """As read: "1" when there is no `schema_version` line, else e.g. "2", "2.0", "2.1", "2.5.70"."""


# --------------------------------------------------------------------------- writer


def serialize_meta(meta: BackupMeta, schema_version: int = 1) -> bytes:
    """The exact bytes RocksDB's `StoreToFile` writes for `meta` (BE:3238-3338).

    Schema 1 is what RocksDB writes by default and what every version reads.
    Schema 2 adds `schema_version 2.1` first and per-file `temp` (if known),
    `size` (if set; production RocksDB never sets it, so leave it None to match
    RocksDB byte for byte) and `ni::excluded true` lines after the N counted
    entries.  Schema 1 has no room for temperatures or sizes, so RocksDB drops
    them there; so does this.  `meta.schema_version` is ignored: the caller
    picks the version to write.

    Raises InvalidArgument for anything RocksDB could not have written or our
    own reader would reject (so a written backup can always be read back),
    NotSupported for schema_version > 2.
    """
    if isinstance(schema_version, bool) or not isinstance(schema_version, int):
        raise InvalidArgument(f"schema_version must be an int, got {schema_version!r}")
    if schema_version < 1:
        raise InvalidArgument(f"schema_version must be >= 1, got {schema_version}")
    if schema_version > 2:
        raise NotSupported(f"only schema_version <= 2 is supported, got {schema_version}")
    if not isinstance(meta.app_metadata, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"app metadata must be bytes, got {type(meta.app_metadata).__name__}")
    app_metadata = bytes(meta.app_metadata)
    if len(app_metadata) > MAX_APP_METADATA:
        raise InvalidArgument(
            f"app metadata is {len(app_metadata)} bytes; at most {MAX_APP_METADATA} are allowed"
        )
    for what, value in (("timestamp", meta.timestamp), ("sequence number", meta.sequence_number)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64:
            raise InvalidArgument(f"{what} must be a uint64, got {value!r}")

    plain = _plain_lines(meta.files)
    counted, excluded = (plain, []) if plain is not None else _checked_lines(meta.files, schema_version)

    out = [f"{_SCHEMA_PREFIX}{SCHEMA_2_VERSION}\n"] if schema_version >= 2 else []
    out.append(f"{meta.timestamp}\n{meta.sequence_number}\n")
    if app_metadata:
        out.append(f"{_FIELD_METADATA} {app_metadata.hex().upper()}\n")
    out.append(f"{len(counted)}\n")
    out += counted
    out += excluded
    return "".join(out).encode("utf-8")


def _checked_lines(files: Sequence[MetaFileEntry], schema_version: int) -> tuple[list[str], list[str]]:
    """The counted lines and the `ni::excluded` ones, each entry checked on its own (`InvalidArgument`
    names the first that RocksDB could not have written)."""
    counted: list[str] = []
    excluded: list[str] = []
    unique = _UniquePaths()
    private_ids: set[str] = set()
    for entry in files:
        _check_entry_for_write(entry, schema_version, unique, private_ids)
        if entry.excluded:
            excluded.append(f"{entry.path} {_FIELD_EXCLUDED} true\n")
            continue
        line = entry.path
        if entry.crc32c is not None:
            line += f" {_FIELD_CRC32} {entry.crc32c}"
        if schema_version >= 2:
            if entry.temperature is not None:
                line += f" {_FIELD_TEMP} {entry.temperature}"
            if entry.size is not None:
                line += f" {_FIELD_SIZE} {entry.size}"
        counted.append(line + "\n")
    return counted, excluded


_PATH, _CRC, _SIZE, _TEMPERATURE, _EXCLUDED = map(operator.attrgetter, ("path", "crc32c", "size", "temperature",
                                                                         "excluded"))
_IS_PRIVATE = operator.methodcaller("startswith", _PRIVATE_PREFIX)


def _plain_lines(files: Sequence[MetaFileEntry]) -> list[str] | None:
    """The lines of `files` if every entry is a plain one `_check_entry_for_write` passes (a checked
    path, no path nor DB file name twice, one backup's private files, a uint32 CRC-32C, no size,
    temperature or exclusion: every entry a backup writes), checked with C loops over all of them
    at once: 10,000 entries in ~7 ms instead of ~11.  None otherwise: `_checked_lines` decides,
    entry by entry, and names the one at fault."""
    if not files:
        return []
    paths, crcs = list(map(_PATH, files)), list(map(_CRC, files))
    if (set(map(type, paths)) != {str} or set(map(type, crcs)) != {int} or min(crcs) < 0 or max(crcs) > _U32
            or set(map(_SIZE, files)) != {None} or set(map(_TEMPERATURE, files)) != {None}
            or any(map(_EXCLUDED, files))):
        return None
    try:
        names = set(map(_writable_restore_name, paths))
    except _BadPath:
        return None
    if len(set(paths)) != len(paths) or len(names) != len(paths):
        return None
    if len({p.split("/", 2)[1] for p in filter(_IS_PRIVATE, paths)}) > 1:
        return None
    return [f"{path} {_FIELD_CRC32} {crc}\n" for path, crc in zip(paths, crcs, strict=True)]


def _check_entry_for_write(
    entry: MetaFileEntry, schema_version: int, unique: _UniquePaths, private_ids: set[str]
) -> None:
    path = entry.path
    if not isinstance(path, str):
        raise InvalidArgument(f"backup file path must be a str, got {path!r}")
    try:
        unique.add(path, None)
        if path.startswith(PRIVATE_DIR + "/"):
            private_ids.add(path.split("/", 2)[1])
            if len(private_ids) > 1:
                raise _BadPath(f"private files of several backups ({', '.join(sorted(private_ids))})")
    except _BadPath as exc:
        raise InvalidArgument(f"invalid backup file path {path!r}: {exc}") from None
    if entry.excluded and schema_version < 2:
        raise InvalidArgument(f"excluded file {path!r} needs schema_version 2")
    crc = entry.crc32c
    if crc is None:
        if schema_version < 2 and not entry.excluded:
            raise InvalidArgument(f"schema_version 1 needs a crc32c for {path!r}")
    elif isinstance(crc, bool) or not isinstance(crc, int) or not 0 <= crc <= _U32:
        raise InvalidArgument(f"crc32c of {path!r} must be a uint32, got {crc!r}")
    size = entry.size
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= _U64):
        raise InvalidArgument(f"size of {path!r} must be a uint64, got {size!r}")
    if entry.temperature is not None and entry.temperature not in TEMPERATURES:
        raise InvalidArgument(
            f"temperature of {path!r} must be one of {sorted(TEMPERATURES)} or None,"
            f" got {entry.temperature!r}"
        )


# --------------------------------------------------------------------------- reader


def _strtoull(text: str) -> int:
    """C `strtoull(text, NULL, 10)`: never fails; junk -> 0, overflow -> 2**64-1, '-n' wraps."""
    m = _STRTOULL_RE.match(text)
    assert m is not None  # the pattern matches the empty prefix of anything
    digits = m.group(2).lstrip("0")
    if len(digits) > 20 or (digits and int(digits) > _U64):
        return _U64
    value = int(digits or "0")
    return (-value) & _U64 if m.group(1) == "-" else value


class _BadPath(ValueError):
    """Why a path may not appear in a meta file; callers add the context."""


def _restore_name(path: str, backup_id: int | None) -> str:
    """The DB file name `path` restores to, if it may appear in `backup_id`'s meta file.

    Raises _BadPath otherwise.  None for `backup_id` accepts any canonical id
    in `private/<id>/` (the writer does not know the id).
    """
    top, _, name = path.partition("/")
    if top == PRIVATE_DIR:
        id_text, _, name = name.partition("/")
        private_id = parse_backup_id(id_text)
        if private_id is None:
            raise _BadPath(f"{_show(id_text)} is not a backup id")
        if backup_id is not None and private_id != backup_id:
            raise _BadPath(f"private file of another backup ({private_id})")
    elif top != SHARED_DIR and top != SHARED_CHECKSUM_DIR:
        raise _BadPath("not shared/<name>, shared_checksum/<name> or private/<id>/<name>")
    # isprintable() is False for control characters and for lone surrogates
    # (bytes that were not UTF-8); a space would break the writer's line.
    if not name or "/" in name or "\\" in name or " " in name or not name.isprintable():
        raise _BadPath("not a single ordinary file name")
    if name in (".", ".."):
        raise _BadPath("'.' or '..' as a file name")
    if top == SHARED_CHECKSUM_DIR:
        if "_" not in name:
            raise _BadPath("shared_checksum name without '_'")  # RocksDB itself would crash on it
        name = db_filename_from_backup_name(name)
        if name in ("", ".", ".."):
            raise _BadPath("shared_checksum name maps to no usable DB file name")
    try:
        check_path(path)  # the gate every store relies on; the checks above should make it redundant
    except InvalidArgument as exc:
        raise _BadPath(str(exc)) from None
    return name


@functools.lru_cache(maxsize=1 << 16)
def _writable_restore_name(path: str) -> str:
    """`_restore_name(path, None)`, memoised for the writer: each backup of a DB writes the same
    10,000 shared paths again (5 us each to check); pure, and a bad path raises (never cached).
    The bound holds the files of a DB of 65,536 SSTs."""
    return _restore_name(path, None)


class _UniquePaths:
    """No path twice, and no two paths restoring to the same DB file name.

    A DB's live files have distinct names, so RocksDB never writes either;
    allowing them would let one entry overwrite another on restore.
    """

    def __init__(self) -> None:
        self.by_restore_name: dict[str, str] = {}
        self.paths: set[str] = set()

    def add(self, path: str, backup_id: int | None) -> None:
        """Check `path` (see `_restore_name`) and record it; raises _BadPath."""
        restore_name = _writable_restore_name(path) if backup_id is None else _restore_name(path, backup_id)
        if path in self.paths:
            raise _BadPath("listed twice")
        self.paths.add(path)
        other = self.by_restore_name.setdefault(restore_name, path)
        if other != path:
            raise _BadPath(f"restores to the same DB file {restore_name!r} as {_show(other)}")


class EntryTable:
    """Every distinct file line of the meta files parsed with it, known once.

    RocksDB keeps one `FileInfo` per backup file and pointers to it from each
    backup; this is the same idea for a loader in Python: a line such as
    `shared_checksum/000012_s..._983.sst crc32 1234` that 100 meta files hold
    is parsed and checked once, becomes one `MetaFileEntry`, and each backup
    keeps only the index of it (`EntryList`).  Lines naming a private file
    belong to one backup and are never looked up for another.
    """

    def __init__(self) -> None:
        self.entries: list[MetaFileEntry] = []
        self.restore_ids = array("I")
        """Per entry: the interned DB file name it restores to (the uniqueness check)."""
        self.excluded: set[int] = set()
        """Indices of `ni::excluded` entries (not counted, not in the store)."""
        self.clashing: set[int] = set()
        """Indices of entries restoring to a DB file name that another entry has too."""
        self._by_line: dict[str, int] = {}
        self._restore_names: dict[str, int] = {}
        self._first_of: list[int] = []
        """By restore id: the first entry with that name."""

    def __len__(self) -> int:
        return len(self.entries)

    def _add(self, entry: MetaFileEntry, restore_name: str) -> int:
        index = len(self.entries)
        self.entries.append(entry)
        restore_id = self._restore_names.setdefault(restore_name, len(self._restore_names))
        self.restore_ids.append(restore_id)
        if restore_id == len(self._first_of):
            self._first_of.append(index)
        else:
            self.clashing.update((self._first_of[restore_id], index))
        if entry.excluded:
            self.excluded.add(index)
        return index

    def compacted(self, lists: Sequence[EntryList]) -> tuple[EntryTable, list[EntryList]]:
        """A new table holding only the entries `lists` use, and `lists` over it.

        Entries of backups that are gone would otherwise stay for the life of the
        engine; this and the lists given are left untouched for whoever holds them.
        """
        used = sorted(set().union(*(lst.indices for lst in lists)))
        table = EntryTable()
        remap = {}
        line_of = {index: line for line, index in self._by_line.items()}
        names = {rid: name for name, rid in self._restore_names.items()}
        for old in used:
            remap[old] = new = table._add(self.entries[old], names[self.restore_ids[old]])
            if old in line_of:
                table._by_line[line_of[old]] = new
        return table, [EntryList(table, array("I", map(remap.__getitem__, lst.indices))) for lst in lists]


class EntryList(Sequence[MetaFileEntry]):
    """One backup's files in meta-file order: indices into an `EntryTable` (4 bytes a file)."""

    __slots__ = ("indices", "table")

    def __init__(self, table: EntryTable, indices: array) -> None:
        self.table = table
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, i: int) -> MetaFileEntry: ...

    @overload
    def __getitem__(self, i: slice) -> list[MetaFileEntry]: ...

    def __getitem__(self, i: int | slice) -> MetaFileEntry | list[MetaFileEntry]:
        if isinstance(i, slice):
            return list(map(self.table.entries.__getitem__, self.indices[i]))
        return self.table.entries[self.indices[i]]

    def __iter__(self) -> Iterator[MetaFileEntry]:
        return map(self.table.entries.__getitem__, self.indices)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (EntryList, list)):
            return len(self) == len(other) and all(map(operator.eq, self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"EntryList({len(self)} files)"


def parse_meta(data: bytes, backup_id: int, *, ignored_fields: set[str] | None = None,
               table: EntryTable | None = None) -> BackupMeta:
    """Parse the content of `meta/<backup_id>` as RocksDB's `LoadFromFile` does.

    Raises Corruption for a malformed or hostile file and NotSupported for a
    schema or `ni::` field from a future version (RocksDB marks the backup
    corrupt in both cases), each naming the backup and the line.

    Unrecognised ignorable fields are logged once per name; pass the same
    `ignored_fields` set (it collects `meta:x`, `file:x`, `footer:x`) across
    calls to warn once per engine, as RocksDB does.

    With `table`, the files come back as an `EntryList` over entries shared
    with every meta file parsed with the same table (the engine's loader);
    without, as a list of entries of their own.
    """
    shared = table is not None
    parser = _Parser(bytes(data), backup_id, set() if ignored_fields is None else ignored_fields,
                     table if table is not None else EntryTable())
    meta = parser.parse()
    if not shared:
        meta.files = list(meta.files)
    return meta


class _Parser:
    """One pass over the lines of one meta file; `lineno` drives the error messages."""

    def __init__(self, data: bytes, backup_id: int, ignored_fields: set[str], table: EntryTable) -> None:
        self.backup_id = backup_id
        self.ignored_fields = ignored_fields
        self.table = table
        if len(data) > MAX_META_FILE_SIZE:
            raise Corruption(
                f"backup {backup_id}: meta file is {len(data)} bytes,"
                f" more than the {MAX_META_FILE_SIZE} allowed"
            )
        # surrogateescape keeps every byte: unknown fields may carry anything,
        # and a path that is not UTF-8 is caught by the path check instead.
        # The piece after the last '\n' is never a line (LineFileReader).
        self.lines = data.decode("utf-8", "surrogateescape").split("\n")[:-1]
        self.lineno = 0

    def error(self, message: str, cls: type[BackupError] = Corruption) -> BackupError:
        where = f" line {self.lineno}" if self.lineno else ""
        return cls(f"backup {self.backup_id}: meta file{where}: {message}")

    def next_line(self) -> str | None:
        if self.lineno >= len(self.lines):
            return None
        self.lineno += 1
        return self.lines[self.lineno - 1]

    def ignore(self, kind: str, name: str) -> None:
        key = f"{kind}:{name}"
        if key not in self.ignored_fields:
            self.ignored_fields.add(key)
            logger.warning(
                "backup %d: ignoring unrecognized %s field %s in meta file", self.backup_id, kind, _show(name)
            )

    def parse(self) -> BackupMeta:
        schema_version = "1"
        line = self.next_line()
        if line is not None:
            if line.startswith(_SCHEMA_PREFIX):
                schema_version = line[len(_SCHEMA_PREFIX):]
                if schema_version != "2" and not schema_version.startswith("2."):
                    raise self.error(f"unsupported schema version {_show(schema_version)}", NotSupported)
                line = None
            elif line == "":
                raise self.error("unexpected empty line")
        schema2 = schema_version != "1"
        if line is None:
            line = self.next_line()
        timestamp = _strtoull(line) if line is not None else 0
        line = self.next_line()
        sequence_number = _strtoull(line) if line is not None else 0
        count, app_metadata = self.parse_header(schema2)
        files, footer = self.parse_files(schema2)
        if footer:
            self.parse_footer()
        excluded = self.table.excluded
        counted = len(files) - (sum(map(excluded.__contains__, files.indices)) if excluded else 0)
        self.lineno = 0
        if count is None:
            raise self.error("missing or incomplete header: no file count")
        if count != counted:
            raise self.error(f"file count is {count} but {counted} file entries follow")
        return BackupMeta(timestamp, sequence_number, files, app_metadata, schema_version)

    def parse_header(self, schema2: bool) -> tuple[int | None, bytes]:
        """The optional `name data` lines up to the file count; returns (count, app metadata)."""
        app_metadata = b""
        while (line := self.next_line()) is not None:
            if line == "":
                raise self.error("unexpected empty line")
            if "0" <= line[0] <= "9":
                # strtoul, trailing junk ignored; stricter than RocksDB, which
                # would truncate a count past uint32 instead of rejecting it
                digits = _DIGITS_RE.match(line).group().lstrip("0")  # type: ignore[union-attr]
                if len(digits) > 10 or (digits and int(digits) > _U32):
                    raise self.error(f"file count {_show(line)} out of range")
                return int(digits or "0"), app_metadata
            name, space, value = line.partition(" ")
            if not space:
                raise self.error(f"expected file count or meta field, got {_show(line)}")
            if name == _FIELD_METADATA:
                app_metadata = self.decode_hex(value)
            elif not schema2:
                raise self.error(f"expected file count or {_FIELD_METADATA!r}, got field {_show(name)}")
            elif name.startswith(_NON_IGNORABLE_PREFIX):
                raise self.error(f"unrecognized non-ignorable meta field {_show(name)}", NotSupported)
            else:
                self.ignore("meta", name)
        return None, app_metadata

    def decode_hex(self, value: str) -> bytes:
        """Slice::DecodeHex: pairs of hex digits in either case, nothing else."""
        if len(value) % 2:
            raise self.error("app metadata hex has odd length")
        try:
            return binascii.unhexlify(value)  # refuses whitespace, unlike bytes.fromhex
        except (binascii.Error, ValueError):
            raise self.error("app metadata is not valid hex") from None

    def parse_files(self, schema2: bool) -> tuple[EntryList, bool]:
        """File lines up to the end or the footer marker; returns (entries, footer seen).

        The work per line is done in C (dict look-ups through `map`): only lines
        the table has not seen are parsed in Python.  Any error sends the file
        through `first_error`, line by line, so it is reported exactly as a
        sequential parse would report it.
        """
        first = self.lineno
        body = self.lines[first:]
        end = len(body)
        footer = False
        if schema2:
            try:
                end = body.index(_FOOTER_MARKER)
            except ValueError:
                pass
            else:
                # the marker ends the entries unless an earlier line is bad, which first_error reports
                body, footer = body[:end], True
        table = self.table
        known = table._by_line
        private: list[str] = []
        try:
            found = list(map(known.get, body))  # one hash per line, in C
            if None in found:
                for pos in itertools.compress(range(len(body)), map(operator.is_, found, itertools.repeat(None))):
                    line = body[pos]
                    index = known.get(line)
                    if index is None:  # else a line repeated in this file: caught as a duplicate below
                        entry, restore_name = self.parse_line(first + pos + 1, line, schema2)
                        known[line] = index = table._add(entry, restore_name)
                        if entry.path.startswith(_PRIVATE_PREFIX):
                            private.append(line)
                    found[pos] = index
            indices = array("I", cast("list[int]", found))  # every None was filled in above
        except BackupError:
            self.first_error(first, body, schema2)
            raise
        finally:
            for line in private:  # another backup's file under this name would be someone else's
                del known[line]
        # No line twice, and no two entries restoring to one DB file: only entries whose
        # DB file name another entry also has (every backup's CURRENT, say) need a look.
        clash, restore_ids = table.clashing, table.restore_ids
        if len(set(indices)) != len(indices) or (
                clash and _repeats([restore_ids[i] for i in filter(clash.__contains__, indices)])):
            self.first_error(first, body, schema2)
        self.lineno = first + end + footer  # past the marker line, if any
        return EntryList(table, indices), footer

    def first_error(self, first: int, body: list[str], schema2: bool) -> None:
        """Raise the error of the first bad line in `body`, as a line-by-line parse finds it."""
        unique = _UniquePaths()
        for lineno, line in enumerate(body, first + 1):
            entry, _ = self.parse_line(lineno, line, schema2)  # sets self.lineno for the errors
            try:
                unique.add(entry.path, self.backup_id)
            except _BadPath as exc:
                raise self.error(f"invalid path {_show(entry.path)}: {exc}") from None

    def parse_line(self, lineno: int, line: str, schema2: bool) -> tuple[MetaFileEntry, str]:
        """One file line: its entry and the DB file name it restores to."""
        self.lineno = lineno
        # std::getline splitting: "a  b" has an empty middle token, a trailing
        # space adds no token, and "" has no tokens at all.
        tokens = line.split(" ")
        if tokens[-1] == "":
            tokens.pop()
        if not tokens:
            raise self.error("empty line instead of file entry")
        path = tokens[0]
        if schema2:
            if len(tokens) % 2 != 1:
                raise self.error(f"bad number of fields for {_show(path)}")
        elif len(tokens) < 3:
            raise self.error(f"checksum missing for {_show(path)}")
        elif tokens[1] != _FIELD_CRC32:
            raise self.error(f"unknown checksum type {_show(tokens[1])} for {_show(path)}")
        elif len(tokens) > 3:
            raise self.error(f"extra data for {_show(path)}")
        if len(tokens) == 3 and tokens[1] == _FIELD_CRC32:  # the usual line, parsed inline for speed
            entry = MetaFileEntry(path, self.parse_crc32(path, tokens[2]))
        else:
            entry = self.parse_fields(path, tokens)
            if entry.excluded:  # RocksDB keeps only the path of an excluded file
                entry = MetaFileEntry(path, None, excluded=True)
        try:
            return entry, _restore_name(path, self.backup_id)
        except _BadPath as exc:
            raise self.error(f"invalid path {_show(path)}: {exc}") from None

    def parse_crc32(self, path: str, value: str) -> int:
        """strtoul, then "must print back identically": a canonical decimal uint32."""
        if not _CANONICAL_DECIMAL_RE.fullmatch(value) or int(value) > _U32:
            raise self.error(f"invalid checksum {_show(value)} for {_show(path)}")
        return int(value)

    def parse_fields(self, path: str, tokens: list[str]) -> MetaFileEntry:
        entry = MetaFileEntry(path, None)
        for i in range(1, len(tokens), 2):
            name, value = tokens[i], tokens[i + 1]
            if name == _FIELD_CRC32:
                entry.crc32c = self.parse_crc32(path, value)
            elif name == _FIELD_SIZE:
                entry.size = _strtoull(value)
            elif name == _FIELD_TEMP:
                entry.temperature = value if value in TEMPERATURES else None
            elif name == _FIELD_EXCLUDED:
                if value not in ("true", "false"):
                    raise self.error(f"unrecognized value {_show(value)} for {name}", NotSupported)
                entry.excluded = value == "true"
            elif name.startswith(_NON_IGNORABLE_PREFIX):
                raise self.error(f"unrecognized non-ignorable file field {_show(name)}", NotSupported)
            else:
                self.ignore("file", name)
        return entry

    def parse_footer(self) -> None:
        while (line := self.next_line()) is not None:
            if line == "":
                raise self.error("unexpected empty line")
            name, space, _ = line.partition(" ")
            if not space:
                raise self.error(f"expected footer field, got {_show(line)}")
            if name.startswith(_NON_IGNORABLE_PREFIX):
                raise self.error(f"unrecognized non-ignorable footer field {_show(name)}", NotSupported)
            self.ignore("footer", name)


def _repeats(items: list[int]) -> bool:
    return len(set(items)) != len(items)


def _show(text: str, limit: int = 80) -> str:
    """A bounded, printable rendering of untrusted text for an error message."""
    shown = repr(text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."
