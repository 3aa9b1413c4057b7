"""The live files of a closed DB directory, found without opening the DB.

Why: opening a DB (even read-only) needs a RocksDB at least as new as the one that wrote it, and
writes a LOG into the directory.  RocksDB itself needs only three things to know what is live:
`CURRENT` names the MANIFEST; the MANIFEST (`manifest`) lists the SSTs and blob files of every
column family and from which WAL number on the WALs still matter; the newest `OPTIONS-<n>` says
where those WALs are (`wal_dir`).  This module gathers exactly those, reading only (the caller
holds the DB's LOCK, so nothing moves meanwhile), and checks each named file is there at the size
the MANIFEST recorded.  It also reads each live WAL's batch headers for the newest sequence number,
as the DB would report it after recovery.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

from .errors import Corruption, NotFound, NotSupported
from .format import optionsfile
from .format.logformat import read_records
from .format.manifest import DbVersion, TableFile, parse_current, read_manifest

log = logging.getLogger("rbackup")

_OPTIONS_NAME = re.compile(r"OPTIONS-(\d+)")
_WAL_NAME = re.compile(r"(\d+)\.log")
_BATCH_HEADER = 12  # WriteBatch: fixed64 sequence, fixed32 count


@dataclass(slots=True)
class LiveFile:
    name: str
    path: str
    size: int
    stat: os.stat_result | None = field(default=None, compare=False, repr=False)
    """The stat taken of it while it was pinned, when one was (the naming cache keys on it)."""


@dataclass(frozen=True)
class ClosedDb:
    """Everything a backup of a closed DB copies, in RocksDB's live-file order by kind."""

    version: DbVersion
    tables: list[LiveFile]
    blobs: list[LiveFile]
    manifest: LiveFile
    current: LiveFile
    options: LiveFile | None
    wals: list[LiveFile]
    wal_dir: str
    sequence_number: int


def read_closed_db(db_path: str, *, with_wals: bool = True) -> ClosedDb:
    """The live files of the DB at `db_path` (closed, its LOCK held by the caller)."""
    current = _live(db_path, "CURRENT", "the DB's CURRENT file")
    with open(current.path, "rb") as fh:
        manifest_name = parse_current(fh.read(4096), current.path)
    manifest = _live(db_path, manifest_name, f"the MANIFEST that {current.path} names")
    with open(manifest.path, "rb") as fh:
        version = read_manifest(fh, manifest.path)
    options = newest_options(db_path)
    wal_dir = wal_dir_of(db_path, options, read_options(options))
    tables = [_table(db_path, t) for t in version.tables()]
    blobs = [_live(db_path, f"{b.number:06d}.blob", f"blob file #{b.number} that {manifest.path} lists")
             for b in version.blobs()]
    wals = live_wals(wal_dir, version) if with_wals else []
    sequence = max([version.last_sequence] + [last_sequence_in(w) for w in wals])
    return ClosedDb(version, tables, blobs, manifest, current, options, wals, wal_dir, sequence)


def _live(directory: str, name: str, what: str) -> LiveFile:
    path = os.path.join(directory, name)
    try:
        return LiveFile(name, path, os.stat(path).st_size)
    except FileNotFoundError:
        raise Corruption(f"{what} is missing: {path}") from None


def _table(db_path: str, table: TableFile) -> LiveFile:
    """An SST, `.sst` or (from LevelDB days) `.ldb`, at the size its MANIFEST entry records."""
    number, size = table.number, table.size
    if table.path_id:
        raise NotSupported(f"SST #{number} of the DB at {db_path} is in its db_paths/cf_paths entry {table.path_id}, "
                           f"outside the DB directory: a backup by path cannot take it")
    for ext in (".sst", ".ldb"):
        path = os.path.join(db_path, f"{number:06d}{ext}")
        if os.path.exists(path):
            actual = os.stat(path).st_size
            if actual != size:
                raise Corruption(f"{path} has {actual} bytes, its MANIFEST entry says {size}")
            return LiveFile(os.path.basename(path), path, size)
    raise Corruption(f"SST #{number} that the MANIFEST lists is missing from {db_path} "
                     f"(or the DB keeps it in a db_paths directory, which a backup by path cannot take)")


def newest_options(db_path: str, names: list[str] | None = None) -> LiveFile | None:
    """The newest OPTIONS file; `names`: the DB directory's listing, when the caller has one."""
    names = os.listdir(db_path) if names is None else names
    numbered = [(int(m.group(1)), name) for name in names
                if name.startswith("OPTIONS-") and (m := _OPTIONS_NAME.fullmatch(name))]
    if not numbered:
        return None  # RocksDB < 4.x wrote none; nothing else to read then
    return _live(db_path, max(numbered)[1], "the OPTIONS file")


def read_options(options: LiveFile | None) -> optionsfile.OptionsFile | None:
    """The parsed OPTIONS file (None without one); refuses DBs that keep data files elsewhere."""
    if options is None:
        return None
    with open(options.path, "rb") as fh:
        settings = optionsfile.parse(fh.read(), options.path)
    _refuse_other_paths(os.path.dirname(options.path), options.path, settings)
    return settings


def _refuse_other_paths(db_path: str, source: str, settings: optionsfile.OptionsFile) -> None:
    """SSTs may live in `db_paths`/`cf_paths` (RocksDB rarely writes those options, so `_table` checks
    path ids too); backing those up is not supported: say so."""
    named = [(s.title, s.options[o]) for s in settings.sections for o in ("db_paths", "cf_paths")
             if s.options.get(o, "").strip("{} ")]
    if named:
        raise NotSupported(f"the DB at {db_path} keeps data files outside its directory ({source} sets "
                           f"{', '.join(f'{t}: {v}' for t, v in named)}): a backup by path cannot take those")


def wal_dir_of(db_path: str, options: LiveFile | None, settings: optionsfile.OptionsFile | None) -> str:
    """Where the DB's WALs are: the OPTIONS' wal_dir, else the DB directory."""
    source = options.path if options else "OPTIONS"
    configured = settings.db_options.get("wal_dir", "") if settings else ""
    if not configured or os.path.realpath(configured) == os.path.realpath(db_path):
        return db_path
    if not os.path.isabs(configured):
        raise NotSupported(f"{source} sets a relative wal_dir {configured!r}: relative to the writer's working "
                           f"directory, which rbackup cannot know")
    if not os.path.isdir(configured):
        raise NotFound(f"the WAL directory {configured} that {source} names does not exist: "
                       f"the DB's newest writes may be there")
    return configured


def live_wals(wal_dir: str, version: DbVersion, names: list[str] | None = None) -> list[LiveFile]:
    """WALs recovery would replay (number >= the MANIFEST's minimum), plus any it tracks; empty ones
    hold nothing and RocksDB does not list them unless its MANIFEST tracks them.  `names`: the WAL
    directory's listing, when the caller has one (a DB directory of 10,000 SSTs is listed once)."""
    oldest = version.min_wal_number()
    wals = []
    for name in sorted(n for n in (os.listdir(wal_dir) if names is None else names) if n.endswith(".log")):
        m = _WAL_NAME.fullmatch(name)
        path = os.path.join(wal_dir, name)
        if not m or not os.path.isfile(path):
            continue
        number, size = int(m.group(1)), os.stat(path).st_size
        if number in version.wals or (number >= oldest and size > 0):
            wals.append(LiveFile(name, path, size))
    missing = [n for n in version.wals if n >= oldest and not any(int(w.name[:-4]) == n for w in wals)]
    if missing:
        raise Corruption(f"WAL(s) {', '.join(f'{n:06d}.log' for n in missing)} that {version.manifest} tracks "
                         f"are missing from {wal_dir}")
    return wals


def last_sequence_in(wal: LiveFile) -> int:
    """The sequence number of the last write in a WAL (0 if it has none or cannot be read)."""
    last = 0
    try:
        with open(wal.path, "rb") as fh:
            for record in read_records(fh, wal.path, int(wal.name[:-4])):
                if len(record) >= _BATCH_HEADER:
                    first, count = int.from_bytes(record[:8], "little"), int.from_bytes(record[8:12], "little")
                    last = max(last, first + max(count, 1) - 1)
    except (Corruption, NotSupported) as exc:
        log.info("%s: sequence numbers read up to a record rbackup cannot read (%s)", wal.path, exc)
    return last
