"""What a backup directory holds: loaded backups, corrupt ones, and file references.

Loading follows RocksDB's BackupEngine::Initialize: one listing of the whole
directory, every canonical `meta/<id>` parsed (concurrently: on S3 a meta file
is a round trip), each backup checked against the listing newest first.  A
backup whose meta file is damaged, or that names a file that is not there,
is corrupt: reported, never restored, and its files are only kept while a
valid backup also uses them.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import threading
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import attrgetter

from .env.base import BackupEnv
from .errors import BackupError, Corruption, FileTooLarge, NotFound, NotSupported, PermissionDenied
from .format.meta import MAX_META_FILE_SIZE, BackupMeta, EntryList, EntryTable, parse_meta
from .format.naming import ENCRYPTION_MARKER, META_DIR, PRIVATE_DIR, SHARED_CHECKSUM_DIR, meta_path, parse_backup_id
from .lock import is_lock_file

_PATH, _CRC = attrgetter("path"), attrgetter("crc32c")
_SHARED_CHECKSUM = SHARED_CHECKSUM_DIR + "/"


@dataclass
class LoadedBackup:
    backup_id: int
    meta: BackupMeta | None = None
    error: BackupError | None = None
    """Set for a corrupt backup: why it failed to load."""
    sizes: Mapping[str, int] = field(default_factory=dict)
    """Size of every (non-excluded) file of the backup, as found in the store."""

    @property
    def corrupt(self) -> bool:
        return self.error is not None

    @property
    def live_paths(self) -> list[str]:
        assert self.meta is not None
        return [e.path for e in self.meta.files if not e.excluded]

    @property
    def live_bytes(self) -> int:
        """Total size of the (non-excluded) files: RocksDB's `BackupInfo::size`."""
        sizes = self.sizes
        return sizes.total if isinstance(sizes, StoreSizes) else sum(sizes.values())


class StoreSizes(Mapping[str, int]):
    """`LoadedBackup.sizes` of a loaded backup, without a dict per backup.

    The sizes live once per distinct file (`entry_sizes`, by `EntryTable`
    index); the total and the count come from them in C at load, and the
    path -> size dict that restore and verify look up is built on first use,
    for the one backup they work on.
    """

    __slots__ = ("_by_path", "_count", "_entry_sizes", "_files", "_total")

    def __init__(self, files: EntryList, entry_sizes: array) -> None:
        self._files = files
        self._entry_sizes = entry_sizes
        self._total: int | None = None
        excluded = files.table.excluded
        self._count = len(files) - (sum(map(excluded.__contains__, files.indices)) if excluded else 0)
        self._by_path: dict[str, int] | None = None

    @property
    def total(self) -> int:
        if self._total is None:  # excluded entries have size 0
            self._total = sum(map(self._entry_sizes.__getitem__, self._files.indices))
        return self._total

    def _dict(self) -> dict[str, int]:
        if self._by_path is None:
            entries, sizes = self._files.table.entries, self._entry_sizes
            self._by_path = {entries[i].path: sizes[i] for i in self._files.indices if not entries[i].excluded}
        return self._by_path

    def __getitem__(self, path: str) -> int:
        return self._dict()[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return self._count


@dataclass
class BackupState:
    listing: dict[str, int]
    """Every file in the backup directory and its size, as listed at load."""
    backups: dict[int, LoadedBackup]
    """Valid and corrupt backups by id."""
    latest_backup_id: int
    """Highest meta id seen, corrupt ones included: the next backup gets this + 1."""
    stable_sizes: dict[str, int] = field(default_factory=dict)
    """Sizes this load found, as their meta lines say, for the `shared_checksum/` files meta files
    name: what the next load of the same engine may take as known (`BackupEnv.list_sizes`).  Why
    these: such a name fixes the file's bytes (the SST's DB session id and number, or its CRC-32C
    and size), files are published whole and never written in place, so while the name is listed
    its size stands; a file found at another size than its line says is left out, so a copy that
    replaces it is measured again."""

    @property
    def valid(self) -> list[LoadedBackup]:
        return [self.backups[i] for i in sorted(self.backups) if not self.backups[i].corrupt]

    @property
    def corrupt_ids(self) -> list[int]:
        return sorted(i for i, b in self.backups.items() if b.corrupt)

    @property
    def unreadable_ids(self) -> list[int]:
        """Corrupt backups whose meta file this version cannot read (NotSupported: a newer
        format or feature), as opposed to damaged ones: garbage collection keeps their files."""
        return sorted(i for i, b in self.backups.items() if isinstance(b.error, NotSupported))

    def referenced(self) -> dict[str, tuple[int, int | None]]:
        """path -> (size, crc32c) for every file a valid backup uses (the oldest
        backup's crc if two disagree).  Each distinct entry is looked at once,
        however many backups share it: the union of their indices is C work."""
        valid = self.valid
        lists = [b.meta.files for b in valid if b.meta is not None and isinstance(b.meta.files, EntryList)]
        if len(lists) != len(valid) or len({id(lst.table) for lst in lists}) > 1:
            return self._referenced_in_order(valid, None)
        if not lists:
            return {}
        table = lists[0].table
        used = set().union(*(lst.indices for lst in lists))
        used -= table.excluded
        picked = list(map(table.entries.__getitem__, used))  # C loops from here on: 10,000 entries
        paths = list(map(_PATH, picked))
        held = zip(map(self.listing.__getitem__, paths), map(_CRC, picked), strict=True)
        refs = dict(zip(paths, held, strict=True))
        if len(refs) != len(paths):  # two lines for one path (other crcs): the oldest backup decides
            seen: set[str] = set()
            disputed = {p for p in paths if p in seen or seen.add(p)}  # type: ignore[func-returns-value]
            refs.update(self._referenced_in_order(valid, disputed))
        return refs

    def _referenced_in_order(self, valid: list[LoadedBackup],
                             only: set[str] | None) -> dict[str, tuple[int, int | None]]:
        refs: dict[str, tuple[int, int | None]] = {}
        for backup in valid:
            assert backup.meta is not None
            for entry in backup.meta.files:
                if not entry.excluded and entry.path not in refs and (only is None or entry.path in only):
                    refs[entry.path] = (backup.sizes[entry.path], entry.crc32c)
        return refs

    def latest_valid(self) -> LoadedBackup | None:
        valid = self.valid
        return valid[-1] if valid else None


class MetaCache:
    """What a reload after another writer's commit reuses: each meta file parsed
    (by id, with its size then, or its parse error) and the `EntryTable` their
    entries live in, so it re-reads only meta files it has not seen."""

    _MIN_COMPACT = 4096

    def __init__(self) -> None:
        self.table = EntryTable()
        self.metas: dict[int, tuple[int, BackupMeta | BackupError]] = {}
        self.lock = threading.Lock()
        """Held by a load: parsing adds to the shared table."""
        self._compact_at: int | None = None
        """Table size that triggers a compaction: twice the size after the first load or the last compaction."""

    def pop(self, backup_id: int, default: object = None) -> object:
        return self.metas.pop(backup_id, default)

    def compact_if_due(self) -> None:
        """Drop the entries only forgotten backups used, once the table doubled since last time."""
        if self._compact_at is None:
            self._compact_at = max(self._MIN_COMPACT, 2 * len(self.table))
        if len(self.table) < self._compact_at:
            return
        parsed: list[tuple[int, int, BackupMeta, EntryList]] = []
        for i, (size, m) in self.metas.items():
            if isinstance(m, BackupMeta) and isinstance(m.files, EntryList):
                parsed.append((i, size, m, m.files))
        table, lists = self.table.compacted([files for _, _, _, files in parsed])
        for (i, size, m, _), files in zip(parsed, lists, strict=True):
            self.metas[i] = (size, dataclasses.replace(m, files=files))
        self.table = table
        self._compact_at = max(self._MIN_COMPACT, 2 * len(table))


class _FileCheck:
    """Each distinct entry checked against the listing once per load, however many
    backups name it; a backup is then checked with one C pass over its indices, and only
    if a bad entry can be one of its own: a bad shared entry, or a bad private entry of its id
    (a private line is only ever in its own backup's meta file, `parse_meta`).  The private files
    of a backup deleted since the table learnt them are bad (gone) until the table is compacted,
    and must not cost every other backup a pass."""

    def __init__(self, table: EntryTable, listing: dict[str, int], *, stable: bool = False) -> None:
        self.table = table
        self.listing = listing
        self.sizes = array("q")
        """Store size by entry index; 0 for excluded and missing entries."""
        self.bad: dict[int, str] = {}
        self._bad_owners: set[int | None] = set()
        """Whose the bad entries are: a private entry's backup id, None for a shared one."""
        self.stable: dict[str, int] | None = {} if stable else None
        """`BackupState.stable_sizes`: path -> size of the shared_checksum entries found as their lines say
        (kept for writers only: a read-only engine never loads again)."""

    def _catch_up(self) -> None:
        entries, listing, sizes, bad, stable = self.table.entries, self.listing, self.sizes, self.bad, self.stable
        for i in range(len(sizes), len(entries)):
            entry = entries[i]
            size = 0 if entry.excluded else listing.get(entry.path)
            if size is None:
                bad[i] = f"{entry.path} is named in the meta file but not found"
                self._bad_owners.add(_private_owner(entry.path))
                size = 0
            elif entry.size is not None and entry.size != size and not entry.excluded:
                bad[i] = f"{entry.path} is {size} bytes, the meta file says {entry.size}"
                self._bad_owners.add(_private_owner(entry.path))
            elif stable is not None and not entry.excluded and entry.path.startswith(_SHARED_CHECKSUM):
                stable[entry.path] = size
            sizes.append(size)

    def finish(self) -> None:
        """Every entry looked at, the ones no loaded backup asked about too, and `stable` without
        a file that any line found at another size (another, sizeless, line may have let it in)."""
        self._catch_up()
        entries, stable = self.table.entries, self.stable
        if stable is not None:
            for i in self.bad:
                stable.pop(entries[i].path, None)

    def check(self, backup_id: int, meta: BackupMeta) -> tuple[BackupError | None, Mapping[str, int]]:
        """(why the backup is corrupt or None, its sizes)."""
        files = meta.files
        assert isinstance(files, EntryList) and files.table is self.table
        self._catch_up()
        bad, owners = self.bad, self._bad_owners
        if (None in owners or backup_id in owners) and any(map(bad.__contains__, files.indices)):
            first = next(i for i in files.indices if i in bad)
            return Corruption(f"backup {backup_id}: {bad[first]}"), {}
        return None, StoreSizes(files, self.sizes)


def _private_owner(path: str) -> int | None:
    """The backup id of a `private/<id>/...` path, None for any other (a shared file)."""
    top, _, rest = path.partition("/")
    return parse_backup_id(rest.partition("/")[0]) if top == PRIVATE_DIR else None


_Fetched = BackupMeta | BackupError | bytes | None
"""A meta file as read: parsed already (cache), its error, its bytes, or None (deleted meanwhile)."""


def load_state(env: BackupEnv, *, max_valid: int | None = None, workers: int = 8,
               logger: logging.Logger | None = None, cache: MetaCache | None = None,
               unchanged: BackupState | None = None, known_sizes: Mapping[str, int] | None = None,
               keep_sizes: bool = False) -> BackupState:
    """Load the directory: newest backup first, each meta file parsed as soon as it
    is read (up to `workers` reads in flight), stopping after `max_valid` valid
    backups, so opening the newest N costs N meta files, not all of them.

    `unchanged`: a state this engine loaded (with `max_valid` None) and has not changed since;
    its backups are kept if the directory still lists exactly the same files and sizes (meta files
    are immutable once committed, so the same listing loads to the same state), which saves
    checking every file of every backup again when a writer reloads under its lock.

    `known_sizes`: the `stable_sizes` of this engine's previous load, which the listing takes as
    known instead of asking the store for each (`BackupEnv.list_sizes`; on local disk a `stat` each);
    `keep_sizes`: fill this load's `stable_sizes` (a writer, which loads again under its lock)."""
    log = logger or logging.getLogger("rbackup")
    cache = cache if cache is not None else MetaCache()
    # meta/ on its own, first: a backup whose meta file shows here was committed, files and
    # all, before the full listing starts, so a commit racing that (non-atomic) listing is
    # missed whole rather than seen without its files, i.e. as a corrupt backup.
    committed = {fi.path for fi in env.list(META_DIR)}
    listing = env.list_sizes("", known=known_sizes)
    if ENCRYPTION_MARKER in listing:  # an EncryptedEnv hides its marker: this env cannot decrypt
        raise PermissionDenied(f"{env.describe()} is encrypted ({ENCRYPTION_MARKER} found): open it with its key, "
                               "the storage option encryption_key_file=PATH")
    if unchanged is not None and max_valid is None and _same_files(unchanged.listing, listing):
        # new dicts: the writer may drop entries from its state while a reader still walks the old one
        return BackupState(listing, dict(unchanged.backups), unchanged.latest_backup_id, unchanged.stable_sizes)
    ids: dict[int, int] = {}
    for path in committed:
        size = listing.get(path)
        _, _, name = path.partition("/")
        if size is not None and "/" not in name:
            backup_id = parse_backup_id(name)
            if backup_id is not None:
                ids[backup_id] = size
            # non-canonical names (.1.tmp, 01, x) are skipped and never deleted, as RocksDB does

    def read(backup_id: int) -> _Fetched:
        too_big = Corruption(f"backup {backup_id}: meta file larger than {MAX_META_FILE_SIZE} bytes")
        if ids[backup_id] > MAX_META_FILE_SIZE:  # this backup's damage, not the whole directory's
            return too_big
        try:
            return env.read_bytes(meta_path(backup_id), MAX_META_FILE_SIZE)
        except NotFound:
            return None  # deleted between listing and reading
        except FileTooLarge:  # it grew after the listing
            return too_big

    with cache.lock:
        for gone in [i for i in cache.metas if i not in ids]:
            del cache.metas[gone]
        check = _FileCheck(cache.table, listing, stable=keep_sizes)
        backups: dict[int, LoadedBackup] = {}

        def load(backup_id: int, fetched: _Fetched) -> bool:
            """Parse and check one backup as it arrives; True if it is valid."""
            if fetched is None:
                return False
            if isinstance(fetched, bytes):
                try:
                    fetched = parse_meta(fetched, backup_id, table=cache.table)
                except (Corruption, NotSupported) as exc:
                    fetched = exc
                cache.metas[backup_id] = (ids[backup_id], fetched)
            backup = LoadedBackup(backup_id)
            if isinstance(fetched, BackupError):
                backup.error = fetched
            else:
                backup.meta = fetched
                backup.error, backup.sizes = check.check(backup_id, fetched)
            if backup.error is not None:
                log.info("backup %d is corrupt: %s", backup_id, backup.error)
            backups[backup_id] = backup
            return backup.error is None

        def cached(backup_id: int) -> _Fetched | None:
            hit = cache.metas.get(backup_id)
            return hit[1] if hit is not None and hit[0] == ids[backup_id] else None

        newest_first = sorted(ids, reverse=True)
        kept = _load_newest_first(newest_first, cached, read, load, max_valid, workers)
        for backup_id in newest_first[kept:]:
            backups.pop(backup_id, None)  # read ahead of the cut: read-only engines see the newest N valid only
        check.finish()
        cache.compact_if_due()
    return BackupState(listing, backups, max(ids, default=0), check.stable if check.stable is not None else {})


def _same_files(a: dict[str, int], b: dict[str, int]) -> bool:
    """Whether two listings hold the same files at the same sizes, the writer lock's own files aside
    (taking the lock rewrites them)."""
    if a == b:
        return True
    differ = (a.keys() ^ b.keys()) | {p for p in a.keys() & b.keys() if a[p] != b[p]}
    return all(map(is_lock_file, differ))


def _load_newest_first(newest_first: list[int], cached: Callable[[int], _Fetched | None],
                       read: Callable[[int], _Fetched], load: Callable[[int, _Fetched], bool],
                       max_valid: int | None, workers: int) -> int:
    """Feed every backup to `load`, reading meta files up to `workers` at a time (and
    never more than `workers` past the newest ones already loaded) and handing each
    over the moment it arrives, until the newest `max_valid` valid ones are known;
    returns how many of `newest_first` that took (the rest are cut)."""
    valid: dict[int, bool] = {}
    done = 0  # newest_first[:done] are loaded, in order
    count = 0

    def advance() -> bool:
        """Move the cut past loaded backups; True once max_valid valid are behind it."""
        nonlocal done, count
        while done < len(newest_first) and newest_first[done] in valid:
            if max_valid is not None and count >= max_valid:
                return True
            count += valid.pop(newest_first[done])
            done += 1
        return max_valid is not None and count >= max_valid

    pending: dict[cf.Future[_Fetched], int] = {}
    upcoming = 0  # newest_first[:upcoming] are loaded or being read
    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rbackup-meta") if workers > 1 else None
    try:
        while True:
            # read at most `workers` ahead of the loaded prefix: a stalled read cannot pull in
            # the whole directory past the cut; cached ones need no read
            while upcoming < len(newest_first) and (pool is None or upcoming < done + workers):
                backup_id = newest_first[upcoming]
                upcoming += 1
                hit = cached(backup_id)
                if hit is not None:
                    valid[backup_id] = load(backup_id, hit)
                elif pool is None:
                    valid[backup_id] = load(backup_id, read(backup_id))
                else:
                    pending[pool.submit(read, backup_id)] = backup_id
                if advance():
                    return done
            if not pending:  # everything up to `upcoming` is loaded, and that is all of it
                advance()
                return done
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                backup_id = pending.pop(future)
                valid[backup_id] = load(backup_id, future.result())
            if advance():
                return done
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
