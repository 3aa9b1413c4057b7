"""Incremental restore's I/O: what the target holds, and the probes `restore_plan` asks for.

Called by `restore.restore_backup` while it holds the target's LOCK and before it
writes the in-progress marker, so the facts read here cannot change before the
files they describe are kept.  Everything else (marker, deletion of what is not
kept, copy, CURRENT last) is the full restore's own code path: an incremental
restore is a full restore with fewer files to copy, and exactly as crash-safe.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from .errors import BackupError
from .format import sstprops
from .format.naming import SHARED_CHECKSUM_DIR
from .restore_plan import RestoreItem, RestoreMode, WantedFile, plan_restore, purges_all
from .transfer import file_crc32c

__all__ = ["files_to_keep"]


class _LocalProbe:
    """Reads an existing DB file's session id or crc; an unreadable file proves nothing (None)."""

    def __init__(self, db_dir: str, log: logging.Logger) -> None:
        self.db_dir = db_dir
        self.log = log
        self.bytes_read = 0

    def session_id(self, db_name: str) -> str | None:
        path = os.path.join(self.db_dir, db_name)
        try:
            with open(path, "rb") as fh:
                return sstprops.read_session_id(fh, os.fstat(fh.fileno()).st_size)
        except (OSError, BackupError) as exc:
            self.log.info("incremental restore: cannot read the session id of %s (%s); it is copied", path, exc)
            return None

    def crc32c(self, db_name: str) -> int | None:
        path = os.path.join(self.db_dir, db_name)
        try:
            with open(path, "rb") as fh:
                result = file_crc32c(fh, memoryview(bytearray(1 << 20)))
        except OSError as exc:
            self.log.info("incremental restore: cannot read %s (%s); it is copied", path, exc)
            return None
        self.bytes_read += result.size
        return result.crc32c


def _existing(db_dir: str) -> dict[str, int]:
    """Regular files of the target by name: a symlink is never trusted to stay what it shows."""
    out: dict[str, int] = {}
    try:
        entries = list(os.scandir(db_dir))
    except FileNotFoundError:
        return out
    for e in entries:
        if e.is_file(follow_symlinks=False):
            out[e.name] = e.stat(follow_symlinks=False).st_size
    return out


def files_to_keep(files: Iterable[RestoreItem[Any]], db_dir: str, mode: RestoreMode, backup_id: int,
                  log: logging.Logger) -> set[str]:
    """Absolute paths in `db_dir` that already hold what the backup would write there."""
    if purges_all(mode):
        return set()
    mine = [f for f in files if os.path.dirname(f.dest) == db_dir]
    wanted = [WantedFile(os.path.basename(f.dest), f.src.rsplit("/", 1)[-1], f.size, f.crc32c,
                         f.src.startswith(f"{SHARED_CHECKSUM_DIR}/")) for f in mine]
    probe = _LocalProbe(db_dir, log)
    plan = plan_restore(wanted, _existing(db_dir), mode, probe)
    for note in plan.fallbacks:
        log.info("incremental restore of backup %d: %s", backup_id, note)
    for d in plan.decisions:
        log.debug("incremental restore of backup %d: %s %s (%s)", backup_id, d.db_name,
                  "kept" if d.kept else "replaced", d.reason)
    kept_bytes = sum(f.size for f in mine if os.path.basename(f.dest) in plan.keep)
    log.info("incremental restore of backup %d into %s (%s): keeping %d of %d files (%d bytes), "
             "%d bytes read to decide", backup_id, db_dir, mode.name or str(mode), len(plan.keep), len(mine),
             kept_bytes, probe.bytes_read)
    return {os.path.join(db_dir, name) for name in plan.keep}
