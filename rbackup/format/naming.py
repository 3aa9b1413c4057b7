"""Names in a backup directory and in a DB directory, as RocksDB spells them.

Pure functions only: the engine decides what to copy where, this module just
says what each thing is called (docs/format.md §1 and §3), so that a directory written by
rbackup is indistinguishable from one written by RocksDB's BackupEngine.
"""
from __future__ import annotations

import enum
import re

from ..errors import InvalidArgument
from .tempnames import is_meta_temp_name, is_temp_name, temp_path

__all__ = [
    "ENCRYPTION_MARKER",
    "MAX_BACKUP_ID",
    "META_DIR",
    "PRIVATE_DIR",
    "SHARED_CHECKSUM_DIR",
    "SHARED_DIR",
    "SIDE_FILES",
    "FileKind",
    "classify",
    "db_filename_from_backup_name",
    "file_number",
    "is_meta_temp_name",
    "is_shareable",
    "is_temp_name",
    "is_valid_session_id",
    "meta_path",
    "parse_backup_id",
    "private_dir",
    "private_file_path",
    "shared_checksum_file_path",
    "shared_checksum_name",
    "shared_file_path",
    "temp_path",
]

META_DIR = "meta"
PRIVATE_DIR = "private"
SHARED_DIR = "shared"
SHARED_CHECKSUM_DIR = "shared_checksum"

SIDE_FILES: tuple[str, ...] = ("rocksdict-config.json",)
"""Files a rocksdict DB needs that are not RocksDB files.

RocksDB rejects a backup that lists them ("Fail to parse filename"), so they
never appear in a meta file; the engine carries them some other way.
"""

ENCRYPTION_MARKER = "rbackup-encryption.json"
"""Not a RocksDB name: the root file that marks a directory encrypted by `EncryptedEnv`
(which hides it); the engine refuses a directory that shows it (state.load_state)."""

MAX_BACKUP_ID = 0xFFFFFFFF
"""Backup ids are uint32 (RocksDB's `BackupID`); 0 is never a valid id."""

_BACKUP_ID_RE = re.compile(r"[1-9][0-9]{0,9}")


def _check_backup_id(backup_id: int) -> int:
    if isinstance(backup_id, bool) or not isinstance(backup_id, int) or not 1 <= backup_id <= MAX_BACKUP_ID:
        raise InvalidArgument(f"invalid backup id {backup_id!r}: must be an integer in 1..{MAX_BACKUP_ID}")
    return backup_id


def _check_name(name: str) -> str:
    """A single, ordinary path component: what may follow a backup directory."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
    ):
        raise InvalidArgument(f"invalid file name {name!r}: must be a single path component")
    return name


def meta_path(backup_id: int) -> str:
    """`meta/<id>`: the file whose existence *is* the backup."""
    return f"{META_DIR}/{_check_backup_id(backup_id)}"


def private_dir(backup_id: int) -> str:
    """`private/<id>`: the backup's unshared files (MANIFEST, CURRENT, OPTIONS, WALs)."""
    return f"{PRIVATE_DIR}/{_check_backup_id(backup_id)}"


def parse_backup_id(name: str) -> int | None:
    """The id a `meta/` or `private/` child names, or None if it names none.

    Only canonical decimal uint32 >= 1 count (`.1.tmp`, `01`, `x`, `0`,
    `4294967296` are skipped at Open and never deleted, BE:1014-1025).
    """
    if not _BACKUP_ID_RE.fullmatch(name):
        return None
    value = int(name)
    return value if value <= MAX_BACKUP_ID else None


class FileKind(enum.Enum):
    """The DB file types a backup deals with (RocksDB's `ParseFileName`, reduced)."""

    TABLE = "table"
    BLOB = "blob"
    MANIFEST = "manifest"
    CURRENT = "current"
    OPTIONS = "options"
    WAL = "wal"
    OTHER = "other"


_MAX_FILE_NUMBER = (1 << 64) - 1  # RocksDB file numbers are uint64; bigger ones do not parse
_KIND_PATTERNS: tuple[tuple[re.Pattern[str], FileKind], ...] = (
    (re.compile(r"([0-9]+)\.(?:sst|ldb)"), FileKind.TABLE),
    (re.compile(r"([0-9]+)\.blob"), FileKind.BLOB),
    (re.compile(r"([0-9]+)\.log"), FileKind.WAL),
    (re.compile(r"MANIFEST-([0-9]+)"), FileKind.MANIFEST),
    (re.compile(r"OPTIONS-([0-9]+)"), FileKind.OPTIONS),
)


def _parse_db_filename(db_filename: str) -> tuple[FileKind, int | None]:
    if db_filename == "CURRENT":
        return FileKind.CURRENT, None
    for pattern, kind in _KIND_PATTERNS:
        m = pattern.fullmatch(db_filename)
        if m:
            digits = m.group(1).lstrip("0")
            if len(digits) > 20 or (digits and int(digits) > _MAX_FILE_NUMBER):
                return FileKind.OTHER, None
            return kind, int(digits or "0")
    return FileKind.OTHER, None


def classify(db_filename: str) -> FileKind:
    """What a DB directory entry is: `000012.sst` -> TABLE, `MANIFEST-000005` -> MANIFEST, ..."""
    return _parse_db_filename(db_filename)[0]


def file_number(db_filename: str) -> int | None:
    """The number in a numbered DB file name (`000012.sst` -> 12); None for CURRENT and others."""
    return _parse_db_filename(db_filename)[1]


def is_shareable(kind: FileKind) -> bool:
    """Only table and blob files are immutable and unique enough to share (BE:1309-1331)."""
    return kind in (FileKind.TABLE, FileKind.BLOB)


_SESSION_ID_RE = re.compile(r"[0-9A-Za-z-]+")


def is_valid_session_id(session_id: str) -> bool:
    """Whether a DB session id can go into a shared_checksum name.

    Real ids are 20 characters of [0-9A-Z] (table/unique_id.cc); anything that
    is not plain alphanumerics (plus '-', as in a UUID) could not be spliced
    into a file name safely, so the caller should use legacy naming instead,
    as RocksDB does for an SST without a session id.
    """
    return bool(_SESSION_ID_RE.fullmatch(session_id))


def shared_checksum_name(
    db_filename: str,
    *,
    size: int,
    session_id: str | None = None,
    crc32c: int | None = None,
) -> str:
    """The `shared_checksum/` name of a table or blob file (docs/format.md §3; BE:529-563).

    With a session id this is the default naming (0x80000002 =
    kUseDbSessionId | kFlagIncludeFileSize): `000012_s<sid>_<size>.sst`.
    Without one it is the legacy `000012_<crc32c decimal>_<size>.<ext>`, which
    needs the crc.  Blob files carry no session id, so they always get the
    legacy name and `session_id` is ignored for them.  Everything is inserted
    before the last `.`.
    """
    kind = classify(_check_name(db_filename))
    if not is_shareable(kind):
        raise InvalidArgument(f"{db_filename!r} is not a table or blob file; only those are shared")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidArgument(f"invalid size {size!r} for {db_filename!r}")
    stem, dot, ext = db_filename.rpartition(".")
    if session_id is not None and kind is FileKind.TABLE:
        if not is_valid_session_id(session_id):
            raise InvalidArgument(f"invalid DB session id {session_id!r} for {db_filename!r}")
        return f"{stem}_s{session_id}_{size}{dot}{ext}"
    if isinstance(crc32c, bool) or not isinstance(crc32c, int) or not 0 <= crc32c <= 0xFFFFFFFF:
        raise InvalidArgument(
            f"legacy shared_checksum name for {db_filename!r} needs a uint32 crc32c, got {crc32c!r}"
        )
    return f"{stem}_{crc32c}_{size}{dot}{ext}"


def db_filename_from_backup_name(name: str) -> str:
    """The DB file name a shared_checksum name restores to (BE:229-246, 565-571).

    Drop everything from the first `_` up to the last `.`:
    `000012_s<sid>_123.sst` -> `000012.sst`.  A name without `_` is returned
    unchanged (RocksDB would crash on it).  When no `.` follows the first `_`,
    RocksDB's `erase` removes everything from the `_` on; so does this.
    """
    underscore = name.find("_")
    if underscore < 0:
        return name
    dot = name.rfind(".")
    if dot < underscore:
        return name[:underscore]
    return name[:underscore] + name[dot:]


def shared_file_path(db_filename: str) -> str:
    """`shared/<dbfile>`: sharing without checksums in names (deprecated option)."""
    return f"{SHARED_DIR}/{_check_name(db_filename)}"


def shared_checksum_file_path(name: str) -> str:
    """`shared_checksum/<name>`, with `name` from `shared_checksum_name`."""
    return f"{SHARED_CHECKSUM_DIR}/{_check_name(name)}"


def private_file_path(backup_id: int, db_filename: str) -> str:
    """`private/<id>/<dbfile>`: an unshared file of one backup, under its DB name."""
    return f"{private_dir(backup_id)}/{_check_name(db_filename)}"
