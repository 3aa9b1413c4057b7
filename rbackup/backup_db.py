"""A backup opened as a read-only DB, without restoring it (RocksDB's `name_for_open` / `env_for_open`).

RocksDB reads a DB from one directory by its DB file names, while a backup keeps
them under `shared_checksum/<renamed>` and `private/<id>/`.  The bridge is a
*view*: a fresh temporary directory of symlinks, one per DB file, pointing at
the backup's files in place on local disk (nothing copied but rocksdict's small
config file, which rocksdict rewrites on open; the backup directory is only ever
read) or at verified copies in a local `FileCache` for remote stores.  RocksDB
opens the view read-only; closing the returned `BackupDB` closes the DB and
removes the view (links only, never what they point at).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import rocksdict

from .alternates import Located
from .backup_cache import FileCache
from .errors import BackupError, NotSupported, StorageError
from .format.naming import SIDE_FILES

__all__ = ["BackupDB", "open_view"]


def _open_read_only(db_path: str) -> Any:
    """The view opened read-only as rocksdict would (its config), or else as RocksDB's
    own tools write DBs: raw bytes, bytewise comparator, the DB's own column families."""
    config = os.path.join(db_path, "rocksdict-config.json")
    access = rocksdict.AccessType.read_only()
    if os.path.exists(config):
        return rocksdict.Rdict(db_path, access_type=access)
    names = rocksdict.Rdict.list_cf(db_path)
    cfs = {name: rocksdict.Options(raw_mode=True) for name in names if name != "default"}
    return rocksdict.Rdict(db_path, rocksdict.Options(raw_mode=True), column_families=cfs or None,
                           access_type=access)

_READS = frozenset({
    "get", "items", "keys", "values", "iter", "get_column_family", "property_value", "property_int_value",
    "live_files", "path", "get_entity", "key_may_exist", "columns", "entities", "latest_sequence_number",
    "snapshot", "get_column_family_handle",
})
"""The Rdict methods a read-only backup offers; every other attribute is refused."""

_WRITES = frozenset({
    "put", "delete", "write", "merge", "delete_range", "flush", "flush_wal", "compact_range",
    "ingest_external_file", "create_column_family", "drop_column_family", "set_options", "put_entity",
    "try_catch_up_with_primary", "cancel_all_background", "set_dumps", "set_loads", "set_read_options",
    "set_write_options", "destroy", "repair",
})


class BackupDB:
    """A read-only `rocksdict.Rdict` over one backup, with its column families and raw mode as backed up.

    Reads (`db[key]`, `get`, `items`, `keys`, `iter`, `get_column_family`,
    `property_value`, `live_files`, ...) go to RocksDB; writes raise NotSupported.
    Use it as a context manager, or call `close()`: that removes the temporary view.
    """

    def __init__(self, db: Any, backup_id: int, view_dir: str | None, *, owner: bool = True,
                 raw_mode: bool = False, column_families: tuple[str, ...] = ("default",)) -> None:
        self._db = db
        self.backup_id = backup_id
        self.raw_mode = raw_mode
        """True for a DB without rocksdict's config (written by RocksDB's tools): keys are bytes."""
        self.column_families = column_families
        self.view_dir = view_dir
        """The directory RocksDB opened (symlinks); None for a column family handle."""
        self._owner = owner
        self._closed = False

    def _refuse(self, what: str) -> NotSupported:
        return NotSupported(f"backup {self.backup_id} is open read-only: {what} is not allowed")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _WRITES:
            def refused(*args: Any, **kwargs: Any) -> Any:
                raise self._refuse(name)
            return refused
        if name not in _READS:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (reads only)")
        if self._closed:
            raise StorageError(f"backup {self.backup_id}: the opened backup is closed")
        if name == "get_column_family":
            return lambda cf_name: BackupDB(self._db.get_column_family(cf_name), self.backup_id, None,
                                            owner=False, raw_mode=self.raw_mode)
        return getattr(self._db, name)

    def __getitem__(self, key: Any) -> Any:
        return self._db[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._db

    def __iter__(self) -> Iterator[Any]:
        return iter(self._db.keys())

    def __setitem__(self, key: Any, value: Any) -> None:
        raise self._refuse("a put")

    def __delitem__(self, key: Any) -> None:
        raise self._refuse("a delete")

    def close(self) -> None:
        if self._closed or not self._owner:
            self._closed = True
            return
        self._closed = True
        try:
            self._db.close()
        finally:
            if self.view_dir is not None:
                shutil.rmtree(self.view_dir, ignore_errors=True)

    def __enter__(self) -> BackupDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BackupDB(backup {self.backup_id}, view {self.view_dir!r})"


def _raw_mode(view: str) -> bool:
    """Keys are bytes unless rocksdict's config says the DB was written in its (pickling) default mode;
    a DB without that config (RocksDB's own tools) is opened raw."""
    try:
        with open(os.path.join(view, SIDE_FILES[0]), "rb") as fh:
            return bool(json.load(fh).get("raw_mode", False))
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False


def open_view(backup_id: int, files: list[Located], side_files: list[Located], *, cache: FileCache | None,
              workers: int, log: logging.Logger, view_parent: str | None = None) -> BackupDB:
    """Link every DB file of the backup into a fresh view directory and open it read-only.

    Files on a store with a local path are linked in place; others are fetched
    into `cache` first (required then).  Side files (rocksdict's config) ride along.
    """
    everything = files + side_files
    local = {f.path: f.env.local_path(f.path) if f.env is not None else None for f in everything}
    remote = [f for f in everything if local[f.path] is None]
    if remote:
        if cache is None:
            raise NotSupported(f"backup {backup_id}: its files are on a remote store; open_backup needs a cache "
                               "directory for them")
        fetched_paths, fetched = cache.fetch(remote, workers)
        local.update(fetched_paths)
        log.info("open_backup %d: %d files through the cache %s, %d bytes fetched", backup_id, len(remote),
                 cache.root, fetched)
    view = tempfile.mkdtemp(prefix=f"rbackup-backup-{backup_id}-", dir=view_parent)
    try:
        for f in everything:
            target = local[f.path]
            assert target is not None
            if f in side_files:  # rocksdict rewrites its config on open: a link would write into the backup
                shutil.copyfile(target, os.path.join(view, f.db_name))
            else:
                os.symlink(os.path.abspath(target), os.path.join(view, f.db_name))
        db = _open_read_only(view)
        families = tuple(rocksdict.Rdict.list_cf(view))
        raw = _raw_mode(view)
    except BaseException as exc:
        shutil.rmtree(view, ignore_errors=True)
        if isinstance(exc, Exception) and not isinstance(exc, BackupError):
            raise StorageError(f"backup {backup_id}: RocksDB cannot open it read-only: {exc}") from exc
        raise
    return BackupDB(db, backup_id, view, raw_mode=raw, column_families=families)
