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
import logging
from dataclasses import dataclass, field

from .env.base import BackupEnv
from .errors import BackupError, Corruption, InvalidArgument, NotFound, NotSupported, PermissionDenied
from .meta import MAX_META_FILE_SIZE, BackupMeta, parse_meta
from .naming import ENCRYPTION_MARKER, META_DIR, meta_path, parse_backup_id


@dataclass
class LoadedBackup:
    backup_id: int
    meta: BackupMeta | None = None
    error: BackupError | None = None
    """Set for a corrupt backup: why it failed to load."""
    sizes: dict[str, int] = field(default_factory=dict)
    """Size of every (non-excluded) file of the backup, as found in the store."""

    @property
    def corrupt(self) -> bool:
        return self.error is not None

    @property
    def live_paths(self) -> list[str]:
        assert self.meta is not None
        return [e.path for e in self.meta.files if not e.excluded]


@dataclass
class BackupState:
    listing: dict[str, int]
    """Every file in the backup directory and its size, as listed at load."""
    backups: dict[int, LoadedBackup]
    """Valid and corrupt backups by id."""
    latest_backup_id: int
    """Highest meta id seen, corrupt ones included: the next backup gets this + 1."""

    @property
    def valid(self) -> list[LoadedBackup]:
        return [self.backups[i] for i in sorted(self.backups) if not self.backups[i].corrupt]

    @property
    def corrupt_ids(self) -> list[int]:
        return sorted(i for i, b in self.backups.items() if b.corrupt)

    def referenced(self) -> dict[str, tuple[int, int | None]]:
        """path -> (size, crc32c) for every file a valid backup uses."""
        refs: dict[str, tuple[int, int | None]] = {}
        for backup in self.valid:
            assert backup.meta is not None
            for entry in backup.meta.files:
                if not entry.excluded and entry.path not in refs:
                    refs[entry.path] = (backup.sizes[entry.path], entry.crc32c)
        return refs

    def latest_valid(self) -> LoadedBackup | None:
        valid = self.valid
        return valid[-1] if valid else None


MetaCache = dict[int, tuple[int, BackupMeta | BackupError]]
"""backup id -> (meta file size, parsed meta or the parse error): a reload
after another writer's commit re-reads only meta files it has not seen."""


def load_state(env: BackupEnv, *, max_valid: int | None = None, workers: int = 8,
               logger: logging.Logger | None = None, cache: MetaCache | None = None) -> BackupState:
    log = logger or logging.getLogger("rbackup")
    # meta/ on its own, first: a backup whose meta file shows here was committed, files and
    # all, before the full listing starts, so a commit racing that (non-atomic) listing is
    # missed whole rather than seen without its files, i.e. as a corrupt backup.
    committed = {fi.path for fi in env.list(META_DIR)}
    listing = {fi.path: fi.size for fi in env.list("")}
    if ENCRYPTION_MARKER in listing:  # an EncryptedEnv hides its marker: this env cannot decrypt
        raise PermissionDenied(f"{env.describe()} is encrypted ({ENCRYPTION_MARKER} found): open it with its key, "
                               "the storage option encryption_key_file=PATH")
    ids: dict[int, int] = {}
    for path, size in listing.items():
        directory, _, name = path.partition("/")
        if directory == META_DIR and "/" not in name and path in committed:
            backup_id = parse_backup_id(name)
            if backup_id is not None:
                ids[backup_id] = size
            # non-canonical names (.1.tmp, 01, x) are skipped and never deleted, as RocksDB does
    cache = cache if cache is not None else {}

    def read(backup_id: int) -> tuple[int, BackupMeta | BackupError | None]:
        hit = cache.get(backup_id)
        if hit is not None and hit[0] == ids[backup_id]:
            return backup_id, hit[1]
        too_big = Corruption(f"backup {backup_id}: meta file larger than {MAX_META_FILE_SIZE} bytes")
        if ids[backup_id] > MAX_META_FILE_SIZE:  # this backup's damage, not the whole directory's
            return backup_id, too_big
        try:
            data = env.read_bytes(meta_path(backup_id), MAX_META_FILE_SIZE)
        except NotFound:
            return backup_id, None  # deleted between listing and reading
        except InvalidArgument:  # it grew after the listing
            return backup_id, too_big
        try:
            parsed: BackupMeta | BackupError = parse_meta(data, backup_id)
        except (Corruption, NotSupported) as exc:
            parsed = exc
        cache[backup_id] = (ids[backup_id], parsed)
        return backup_id, parsed

    results: dict[int, BackupMeta | BackupError | None] = {}
    if len(ids) > 1 and workers > 1:
        with cf.ThreadPoolExecutor(max_workers=min(workers, len(ids)), thread_name_prefix="rbackup-meta") as pool:
            results = dict(pool.map(read, sorted(ids)))
    else:
        results = dict(read(i) for i in sorted(ids))

    backups: dict[int, LoadedBackup] = {}
    valid_count = 0
    for backup_id in sorted(results, reverse=True):
        parsed = results[backup_id]
        if parsed is None:
            continue
        if max_valid is not None and valid_count >= max_valid:
            break  # read-only engines may open only the newest N valid backups
        backup = LoadedBackup(backup_id)
        if isinstance(parsed, BackupError):
            backup.error = parsed
        else:
            backup.meta = parsed
            backup.error = _check_files(backup_id, parsed, listing, backup.sizes)
        if backup.error is not None:
            log.info("backup %d is corrupt: %s", backup_id, backup.error)
        else:
            valid_count += 1
        backups[backup_id] = backup
    return BackupState(listing, backups, max(ids, default=0))


def _check_files(backup_id: int, meta: BackupMeta, listing: dict[str, int],
                 sizes: dict[str, int]) -> BackupError | None:
    for entry in meta.files:
        if entry.excluded:
            continue
        size = listing.get(entry.path)
        if size is None:
            return Corruption(f"backup {backup_id}: {entry.path} is named in the meta file but not found")
        if entry.size is not None and entry.size != size:
            return Corruption(f"backup {backup_id}: {entry.path} is {size} bytes, the meta file says {entry.size}")
        sizes[entry.path] = size
    return None
