"""Restore planning without I/O: where each backup file goes in the target
(`plan_restore_targets`), and which files an incremental restore may keep
(`plan_restore`, RocksDB's RestoreOptions::Mode).

An incremental restore leaves in place the target's files that are provably the
backup's own and copies everything else; the result is exactly the backup, as a
full restore would leave it.  What counts as proof is the mode:

- KEEP_LATEST_DB_SESSION_ID_FILES: an existing `.sst` whose DB session id and size
  spell the backup's `NNNNNN_s<sid>_<size>.sst` name (no data is read but the
  properties block; RocksDB trusts the same evidence).  Files with any other name
  in the backup (legacy `_<crc>_<size>`, `shared/`, private) cannot be judged so
  and are copied, as RocksDB copies them; each such fallback is reported.
- VERIFY_CHECKSUM: an existing `.sst`/`.blob` of the recorded size whose CRC-32C
  equals the one the meta file records.
- PURGE_ALL_FILES: nothing is kept (a full restore; RocksDB's default).

The facts about existing files (size, session id, crc) are handed in as a listing
and a `Probe`, so this module never touches storage and its rules are unit-tested
with plain dictionaries.  Reading only what a decision needs (the session id of a
same-sized SST, the crc only when the session id did not settle it) is the
probe's caller's gain: a restore into an almost-identical DB reads almost nothing.
"""
from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from .errors import Corruption
from .format.naming import SIDE_FILES, FileKind, classify, is_shareable, private_file_path
from .format.tempnames import RESTORE_CURRENT_TEMP

__all__ = ["KeepDecision", "LocatedFile", "Probe", "RestoreItem", "RestoreMode", "RestorePlan", "RestoreTargets",
           "WantedFile", "parse_mode", "plan_restore", "plan_restore_targets"]

Store = TypeVar("Store")
Store_co = TypeVar("Store_co", covariant=True)


class LocatedFile(Protocol[Store_co]):
    """A backup file and the store holding it (`alternates.Located`); the store is opaque here."""

    @property
    def env(self) -> Store_co | None: ...

    @property
    def path(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def crc32c(self) -> int | None: ...

    @property
    def db_name(self) -> str: ...


@dataclass(frozen=True)
class RestoreItem(Generic[Store]):
    """One file a restore writes: `src` of store `env` to the absolute path `dest`."""

    src: str
    dest: str
    size: int
    crc32c: int | None
    env: Store | None = None
    """The store holding `src` (the backup's own or an alternate's); None for an excluded file no
    alternate holds, which only an incremental restore can keep."""


@dataclass(frozen=True)
class RestoreTargets(Generic[Store]):
    """Every file of a restore, and CURRENT apart: it is written to `CURRENT.tmp` and renamed
    onto `CURRENT` last, which is the restore's commit."""

    items: list[RestoreItem[Store]]
    current: RestoreItem[Store]


def plan_restore_targets(backup_id: int, located: Iterable[LocatedFile[Store]], listing: Mapping[str, int],
                         own: Store, db_dir: str, wal_dir: str) -> RestoreTargets[Store]:
    """Where each file of backup `backup_id` goes: WALs into `wal_dir`, the rest into
    `db_dir`, plus the side files (rbackup's, unlisted in the meta file) that `listing`
    shows in its private directory, read from `own`, the backup's own store."""
    items: list[RestoreItem[Store]] = []
    current: RestoreItem[Store] | None = None
    for f in located:
        kind = classify(f.db_name)
        if kind is FileKind.CURRENT:
            current = RestoreItem(f.path, os.path.join(db_dir, RESTORE_CURRENT_TEMP), f.size, f.crc32c, f.env)
        else:
            target_dir = wal_dir if kind is FileKind.WAL else db_dir
            items.append(RestoreItem(f.path, os.path.join(target_dir, f.db_name), f.size, f.crc32c, f.env))
    if current is None:
        raise Corruption(f"backup {backup_id}: no CURRENT file in the backup")
    for side in SIDE_FILES:
        src = private_file_path(backup_id, side)
        if src in listing:
            items.append(RestoreItem(src, os.path.join(db_dir, side), listing[src], None, own))
    return RestoreTargets(items, current)


class RestoreMode(enum.IntFlag):
    """RocksDB's `RestoreOptions::Mode` values (HEAD >= 9.11), usable as flags."""

    KEEP_LATEST_DB_SESSION_ID_FILES = 1
    VERIFY_CHECKSUM = 2
    PURGE_ALL_FILES = 0xFFFF


_MODE_NAMES = {
    "keep-latest": RestoreMode.KEEP_LATEST_DB_SESSION_ID_FILES,
    "verify": RestoreMode.VERIFY_CHECKSUM,
    "keep-latest+verify": RestoreMode.KEEP_LATEST_DB_SESSION_ID_FILES | RestoreMode.VERIFY_CHECKSUM,
    "full": RestoreMode.PURGE_ALL_FILES,
}


def parse_mode(name: str) -> RestoreMode:
    """The command line's names for the modes (`keep-latest`, `verify`, `keep-latest+verify`, `full`)."""
    try:
        return _MODE_NAMES[name]
    except KeyError:
        raise ValueError(f"unknown restore mode {name!r}: one of {', '.join(_MODE_NAMES)}") from None


def purges_all(mode: RestoreMode) -> bool:
    """PURGE_ALL_FILES has every low bit set, so it is tested as a whole, not as a flag."""
    return (mode & RestoreMode.PURGE_ALL_FILES) == RestoreMode.PURGE_ALL_FILES


@dataclass(frozen=True)
class WantedFile:
    """One file of the backup, as the restore will place it."""

    db_name: str
    """Its name in the DB directory, e.g. `000012.sst`."""
    backup_name: str
    """Its name in the backup directory (last path component), e.g. `000012_sABC_1234.sst`."""
    size: int
    crc32c: int | None
    shared_checksum: bool
    """True when the backup holds it under `shared_checksum/`, the only place session-id names exist."""


class Probe(Protocol):
    """Reads facts of an existing target file on demand (the caller's I/O)."""

    def session_id(self, db_name: str) -> str | None:
        """The SST's `rocksdb.creating.session.identity`; None when unreadable or absent."""

    def crc32c(self, db_name: str) -> int | None:
        """The whole file's CRC-32C; None when unreadable."""


@dataclass(frozen=True)
class KeepDecision:
    db_name: str
    kept: bool
    reason: str


@dataclass
class RestorePlan:
    keep: set[str] = field(default_factory=set)
    """DB-directory names left in place."""
    decisions: list[KeepDecision] = field(default_factory=list)
    """One per backup file that had a same-named candidate in the target, with why (for the log)."""
    fallbacks: list[str] = field(default_factory=list)
    """Files the mode could not judge and that are copied instead (RocksDB's fallback)."""


def _session_id_name_parts(backup_name: str) -> tuple[str, int] | None:
    """(`sid`, size) from `NNNNNN_s<sid>_<size>.sst`, the only form KEEP_LATEST recognises (BE:554-563)."""
    stem, dot, ext = backup_name.rpartition(".")
    if not dot or ext != "sst":
        return None
    parts = stem.split("_")
    if len(parts) != 3 or not parts[1].startswith("s") or len(parts[1]) < 2 or not parts[2].isdigit():
        return None
    return parts[1][1:], int(parts[2])


def plan_restore(wanted: list[WantedFile], existing: dict[str, int], mode: RestoreMode,
                 probe: Probe) -> RestorePlan:
    """Which of `existing` (DB-directory name -> size) to keep for restoring `wanted` under `mode`.

    Only table and blob files are ever kept: MANIFEST, CURRENT, OPTIONS and WALs
    are small and always copied, as in RocksDB.
    """
    plan = RestorePlan()
    if purges_all(mode):
        return plan
    keep_latest = bool(mode & RestoreMode.KEEP_LATEST_DB_SESSION_ID_FILES)
    verify = bool(mode & RestoreMode.VERIFY_CHECKSUM)
    for f in wanted:
        kind = classify(f.db_name)
        if not is_shareable(kind):
            continue
        parts = _session_id_name_parts(f.backup_name) if f.shared_checksum else None
        if keep_latest and not verify and (parts is None or kind is not FileKind.TABLE):
            plan.fallbacks.append(f"{f.db_name}: the backup names it {f.backup_name}, which carries no "
                                  "DB session id and size; keep-latest cannot judge it, so it is copied")
            continue
        size = existing.get(f.db_name)
        if size is None:
            continue
        decision = _decide(f, kind, size, parts, keep_latest, verify, probe)
        plan.decisions.append(decision)
        if decision.kept:
            plan.keep.add(f.db_name)
    return plan


def _decide(f: WantedFile, kind: FileKind, size: int, parts: tuple[str, int] | None, keep_latest: bool,
            verify: bool, probe: Probe) -> KeepDecision:
    if size != f.size:
        return KeepDecision(f.db_name, False, f"size {size}, the backup's is {f.size}")
    if keep_latest and parts is not None and kind is FileKind.TABLE:
        session_id = probe.session_id(f.db_name)
        if session_id == parts[0] and size == parts[1]:
            return KeepDecision(f.db_name, True, "DB session id and size match")
        if not verify:
            return KeepDecision(f.db_name, False, f"DB session id {session_id}, the backup's is {parts[0]}")
    if verify:
        if f.crc32c is None:
            return KeepDecision(f.db_name, False, "the meta file records no crc32c to compare")
        crc = probe.crc32c(f.db_name)
        if crc == f.crc32c:
            return KeepDecision(f.db_name, True, "CRC-32C matches")
        return KeepDecision(f.db_name, False, f"crc32c {crc}, the backup's is {f.crc32c}")
    return KeepDecision(f.db_name, False, "nothing the mode can compare")
