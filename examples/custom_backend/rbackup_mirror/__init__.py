"""An example third-party backend: mirror every backup file to two stores.

`mirror://` URLs take their two stores from storage options::

    BackupableDBOptions("mirror://offsite", storage_options={
        "primary": "/backups/rocksdb",
        "replica": "s3://bucket/rocksdb",
        "replica_options": {"client_kwargs": {"endpoint_url": "..."}},
    })

The primary is the source of truth (listings, sizes, the commit arbiter);
the replica receives every file too, and reads fall back to it when the
primary has lost or cannot serve a file.  The whole backend is this file
plus one entry point in pyproject.toml; it passes rbackup's conformance kit
(examples/custom_backend/tests/test_custom_backend.py) without any change to the engine.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from rbackup.env.base import AtomicWriter, BackupEnv, Capabilities, FileInfo, ReadStream, refuse_unknown_options
from rbackup.env.registry import open_env
from rbackup.errors import BackupError, InvalidArgument, NotFound

log = logging.getLogger("rbackup.mirror")


class _MirrorWriter(AtomicWriter):
    """Streams each chunk to both stores; the replica commits first, so a file
    visible on the primary (the one that is listed) is always on both."""

    def __init__(self, primary: AtomicWriter, replica: AtomicWriter) -> None:
        self._primary = primary
        self._replica = replica

    def write(self, data: bytes | memoryview) -> int:
        self._replica.write(data)
        return self._primary.write(data)

    def commit(self) -> None:
        try:
            self._replica.commit()
        except BaseException:
            self._primary.abort()
            raise
        self._primary.commit()

    def abort(self) -> None:
        try:
            self._replica.abort()
        finally:
            self._primary.abort()


class MirrorEnv(BackupEnv):
    def __init__(self, url: str = "", *, storage_options: dict | None = None,
                 primary: BackupEnv | None = None, replica: BackupEnv | None = None) -> None:
        opts = dict(storage_options or {})
        refuse_unknown_options(url or "mirror://", opts, ("primary", "replica", "primary_options", "replica_options"))
        if primary is None or replica is None:
            if "primary" not in opts or "replica" not in opts:
                raise InvalidArgument("mirror:// needs storage options 'primary' and 'replica' (paths or URLs)")
            primary = open_env(opts["primary"], storage_options=opts.get("primary_options"))
            replica = open_env(opts["replica"], storage_options=opts.get("replica_options"))
        self.primary = primary
        self.replica = replica
        self.url = url or f"mirror://{primary.url}+{replica.url}"
        p, r = primary.capabilities, replica.capabilities
        self.capabilities = Capabilities(
            atomic_rename=False,  # two stores: publishing is per store, not one rename
            conditional_create=p.conditional_create,  # the primary arbitrates commits and locks
            durable_sync=p.durable_sync and r.durable_sync,
            directories=p.directories or r.directories,
            concurrency=min(p.concurrency, r.concurrency),
            transfer_width=min(p.transfer_width, r.transfer_width),  # every file goes to both
            buffer_size=max(p.buffer_size, r.buffer_size),
        )

    def open_read(self, path: str) -> ReadStream:
        try:
            return self.primary.open_read(path)
        except BackupError as exc:
            log.warning("%s unreadable on the primary (%s); reading the replica", path, exc)
            try:
                return self.replica.open_read(path)
            except NotFound:
                raise exc from None

    def open_write(self, path: str, *, sync: bool = True) -> AtomicWriter:
        replica = self.replica.open_write(path, sync=sync)
        try:
            primary = self.primary.open_write(path, sync=sync)
        except BaseException:
            replica.abort()
            raise
        return _MirrorWriter(primary, replica)

    def create_exclusive(self, path: str, data: bytes, *, sync: bool = True) -> None:
        self.primary.create_exclusive(path, data, sync=sync)  # AlreadyExists stops here
        self.replica.write_bytes(path, data, sync=sync)

    def list(self, prefix: str = "") -> list[FileInfo]:
        return self.primary.list(prefix)

    def stat(self, path: str) -> FileInfo:
        return self.primary.stat(path)

    def delete(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        self.primary.delete(paths)
        self.replica.delete(paths)

    def makedirs(self, path: str = "") -> None:
        self.primary.makedirs(path)
        self.replica.makedirs(path)

    def remove_dir(self, path: str) -> None:
        self.primary.remove_dir(path)
        self.replica.remove_dir(path)

    def sync_dir(self, path: str = "") -> None:
        self.primary.sync_dir(path)
        self.replica.sync_dir(path)

    def close(self) -> None:
        try:
            self.primary.close()
        finally:
            self.replica.close()
