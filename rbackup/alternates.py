"""Where a backup's files are: its own directory, or, for `ni::excluded` entries, an alternate one.

RocksDB lets a backup leave out files that another backup directory holds
(`exclude_files_callback`); restore and open then find them through
`RestoreOptions.alternate_dirs`, engines over those directories, searched in
order.  A file counts as held by an alternate only if one of its valid backups
references it, so a file that directory's GC may delete is never relied on.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .env.base import BackupEnv
from .errors import Corruption, InvalidArgument, NotFound
from .format.naming import db_filename_from_backup_name
from .state import LoadedBackup
from .transfer import file_crc32c

if TYPE_CHECKING:
    from .engine import BackupEngine

__all__ = ["Located", "locate_files", "missing_error", "verify_alternate_file"]


@dataclass(frozen=True)
class Located:
    """A backup file and the store that holds it."""

    env: BackupEnv | None
    """None: excluded and held by no alternate (a keep-latest restore may still find it in the target)."""
    path: str
    """Relative to that store's backup directory."""
    size: int
    crc32c: int | None
    db_name: str


def locate_files(env: BackupEnv, backup: LoadedBackup, alternates: Sequence[BackupEngine], *,
                 allow_missing: bool = False) -> list[Located]:
    """Every file of `backup` in meta-file order, excluded ones resolved through `alternates`.

    An excluded file no alternate holds raises `missing_error`, unless
    `allow_missing` (then it comes back with env None and the size its
    session-id name states, for a keep-latest restore to look for in the target).
    """
    assert backup.meta is not None
    out: list[Located] = []
    for entry in backup.meta.files:
        name = entry.path.rsplit("/", 1)[-1]
        db_name = db_filename_from_backup_name(name)
        if not entry.excluded:
            out.append(Located(env, entry.path, backup.sizes[entry.path], entry.crc32c, db_name))
            continue
        for engine in alternates:
            held = engine.lookup_file(entry.path)
            if held is not None:
                out.append(Located(engine.env, entry.path, held[0], held[1], db_name))
                break
        else:
            if not allow_missing:
                raise missing_error(backup.backup_id, entry.path, alternates)
            out.append(Located(None, entry.path, _size_in_name(name), None, db_name))
    return out


def missing_error(backup_id: int, path: str, alternates: Sequence[BackupEngine]) -> InvalidArgument | NotFound:
    """No alternates at all is the caller's mistake (InvalidArgument, as RocksDB); alternates
    that lack the file is NotFound, naming the file, the backup and where we looked."""
    if not alternates:
        return InvalidArgument(f"backup {backup_id}: {path} was excluded from the backup; give the backup "
                               "directories that hold it as alternate_dirs")
    return NotFound(f"backup {backup_id}: excluded file {path} is in none of the alternate directories "
                    f"({', '.join(e.env.describe() for e in alternates)})")


def _size_in_name(name: str) -> int:
    """The size a `NNNNNN_s<sid>_<size>.sst` name states; -1 (matches nothing) for other names."""
    stem = name.rpartition(".")[0]
    size = stem.rpartition("_")[2]
    return int(size) if "_s" in stem and size.isdigit() else -1


def verify_alternate_file(backup_id: int, f: Located, with_checksum: bool) -> None:
    """An excluded file as its alternate directory holds it now: present, of the size and
    (with checksums) the CRC-32C that directory's meta file records."""
    assert f.env is not None
    now = {fi.path: fi.size for fi in f.env.list(f.path.rsplit("/", 1)[0])}
    if f.path not in now:
        raise NotFound(f"backup {backup_id}: excluded file {f.env.describe(f.path)} is missing")
    if now[f.path] != f.size:
        raise Corruption(f"backup {backup_id}: excluded file {f.env.describe(f.path)} is {now[f.path]} bytes, "
                         f"expected {f.size}")
    if with_checksum and f.crc32c is not None:
        with f.env.open_read(f.path) as src:
            crc = file_crc32c(src, memoryview(bytearray(1 << 20))).crc32c
        if crc != f.crc32c:
            raise Corruption(f"backup {backup_id}: checksum mismatch in excluded file {f.env.describe(f.path)} "
                             f"(crc32c {crc}, its meta file says {f.crc32c})")
