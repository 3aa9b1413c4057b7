"""Deciding, without I/O, where each DB file goes and whether it must be copied.

Inputs are facts already gathered (the snapshot's files, each SST's session
id or precomputed crc, the files valid backups already hold); the output is
the backup's file list in RocksDB's order.  Keeping this pure makes the
incremental rule easy to test: a shared file already referenced by a valid
backup is reused without being read again, after its size is checked.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

from .errors import Corruption
from .format.naming import (
    FileKind,
    is_shareable,
    private_dir,
    private_file_path,
    shared_checksum_file_path,
    shared_checksum_name,
    shared_file_path,
)


@dataclass(slots=True)
class SourceFile:
    """One DB file a backup takes.  Not frozen, like `PlannedFile` and `dbdir.LiveFile`: a backup of a
    DB of 10,000 SSTs makes 10,000 of each, and a frozen dataclass's `__init__` (an `object.__setattr__`
    per field) costs 1.1 us against 0.4; nothing changes them once made."""

    name: str
    """The DB file name, e.g. 000012.sst, MANIFEST-000005."""
    path: str
    """Where to read it from (inside the checkpoint, or the DB dir for WALs)."""
    size: int
    kind: FileKind
    stat: os.stat_result | None = field(default=None, compare=False, repr=False)
    """The stat the snapshot took of it, when it took one (the naming cache's key comes from it)."""


@dataclass(frozen=True, slots=True)
class NamingFacts:
    """What naming a shared_checksum file needs, read from the DB file."""

    session_id: str | None = None
    crc32c: int | None = None
    """Only computed when the name needs it (no session id, blob files)."""


@dataclass(slots=True)
class PlannedFile:
    source: SourceFile
    dest: str
    """Backup-relative path."""
    copy: bool
    """False: an identical file is already in the backup directory."""
    expected_crc32c: int | None
    """Known before copying: from the backup that holds it, or computed for the name."""


def needs_naming_facts(f: SourceFile, *, share_table_files: bool, share_files_with_checksum: bool) -> bool:
    return share_table_files and share_files_with_checksum and is_shareable(f.kind)


def needs_crc_for_name(f: SourceFile, session_id: str | None) -> bool:
    """Legacy names carry the crc: blobs always, SSTs without a session id."""
    return f.kind is FileKind.BLOB or session_id is None


def destination(f: SourceFile, backup_id: int, *, share_table_files: bool,
                share_files_with_checksum: bool, facts: NamingFacts | None) -> str:
    if not (share_table_files and is_shareable(f.kind)):
        return private_file_path(backup_id, f.name)
    if not share_files_with_checksum:
        return shared_file_path(f.name)
    facts = facts or NamingFacts()
    return shared_checksum_dest(f.name, f.size, facts.session_id if f.kind is FileKind.TABLE else None,
                                 facts.crc32c)


@functools.lru_cache(maxsize=1 << 16)
def shared_checksum_dest(name: str, size: int, session_id: str | None, crc32c: int | None) -> str:
    """An SST's destination under shared_checksum/ (a blob file's: session_id None).  Memoised: every
    incremental backup names the same 10,000 files again (8 us each otherwise); the bound holds the
    files of a DB of 65,536 SSTs (~10 MB), and a miss only costs the naming."""
    return shared_checksum_file_path(shared_checksum_name(name, size=size, session_id=session_id, crc32c=crc32c))


def plan_backup(files: list[SourceFile], backup_id: int, *, share_table_files: bool,
                share_files_with_checksum: bool, facts: dict[str, NamingFacts],
                referenced: dict[str, tuple[int, int | None]]) -> list[PlannedFile]:
    """`referenced`: path -> (size, crc32c) of every file valid backups hold.  Written for 10,000
    files a backup: an SST's shared_checksum name is looked up directly (memoised), not through
    `destination`'s general case."""
    plan: list[PlannedFile] = []
    own = f"{private_dir(backup_id)}/"
    by_checksum = share_table_files and share_files_with_checksum
    table = FileKind.TABLE
    for f in files:
        known = facts.get(f.name)
        if by_checksum and known is not None and f.kind is table:
            dest = shared_checksum_dest(f.name, f.size, known.session_id, known.crc32c)
        else:
            dest = destination(f, backup_id, share_table_files=share_table_files,
                               share_files_with_checksum=share_files_with_checksum, facts=known)
        expected = known.crc32c if known else None
        held = referenced.get(dest)
        if held is not None and not dest.startswith(own):
            size, crc = held
            if size != f.size:
                raise Corruption(
                    f"backup {backup_id}: {dest} already in the backup directory is {size} bytes but "
                    f"the DB's {f.name} is {f.size} bytes (a file-number clash with an older backup; "
                    "delete the backups that hold it, or use share_files_with_checksum=True)")
            if expected is not None and crc is not None and crc != expected:
                raise Corruption(f"backup {backup_id}: {dest} in the backup directory has crc32c {crc}, "
                                 f"the DB's {f.name} has {expected}")
            plan.append(PlannedFile(f, dest, False, crc))
        else:
            plan.append(PlannedFile(f, dest, True, expected))
    return plan
