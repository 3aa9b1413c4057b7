"""A bounded local cache of backup files, for opening backups that live on remote stores.

RocksDB must read a DB from a local directory, so `open_backup` on S3 or HDFS
fetches the backup's files here first.  Each cached file is named after its
backup path and its recorded CRC-32C, verified (size and CRC-32C) as it arrives
and published by rename, so a file in the cache is always a whole, checked copy
and a second open of the same or a later backup fetches only what it lacks.
Shared SSTs are immutable under their names; private files carry their crc in
the cache name, so a reused backup id with other content is never confused.

The cache is bounded: after a fetch the least recently used files not needed by
the current open are removed until the total is under the limit.  A DB already
open keeps its files open, so an eviction by another process never breaks it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field

from .alternates import Located
from .errors import NotFound, StorageError
from .transfer import Buffers, run_parallel, stream_copy

__all__ = ["DEFAULT_CACHE_LIMIT", "FileCache", "default_cache_dir"]

DEFAULT_CACHE_LIMIT = 8 << 30
"""8 GiB unless the caller says otherwise; a backup bigger than the limit is still fetched whole."""


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rbackup", "open")


@dataclass
class FileCache:
    root: str
    limit: int = DEFAULT_CACHE_LIMIT
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("rbackup"))

    def _dir_for(self, f: Located) -> str:
        """One subdirectory per backup directory, so equal names in two stores never mix."""
        assert f.env is not None
        digest = hashlib.sha256(f.env.describe().encode("utf-8", "surrogateescape")).hexdigest()[:16]
        return os.path.join(self.root, digest)

    def _name(self, f: Located) -> str:
        return f"{f.path.replace('/', '%')}.{f.crc32c if f.crc32c is not None else 'nocrc'}"

    def fetch(self, files: list[Located], workers: int) -> tuple[dict[str, str], int]:
        """Local paths of `files` (by backup path), fetching what is missing; returns (paths, bytes fetched)."""
        paths: dict[str, str] = {}
        fetched = [0]
        lock = threading.Lock()
        buffers = Buffers()

        def one(f: Located) -> None:
            env = f.env
            assert env is not None, "excluded files are resolved before fetching"
            directory = self._dir_for(f)
            final = os.path.join(directory, self._name(f))
            paths[f.path] = final
            if f.crc32c is not None and _size(final) == f.size:
                os.utime(final)  # most recently used
                return
            os.makedirs(directory, exist_ok=True)
            tmp = f"{final}.{os.getpid()}.{threading.get_ident()}.tmp"
            try:
                with env.open_read(f.path) as src, open(tmp, "wb") as out:
                    result = stream_copy(src, out.write, buf=buffers.get(), stop=threading.Event(),
                                         limit=f.size + 1)
                result.check(None, env.describe(f.path), f.size, f.crc32c)
                os.replace(tmp, final)
            except NotFound as exc:
                raise NotFound(f"{env.describe(f.path)} is missing from the backup directory") from exc
            except OSError as exc:
                raise StorageError(f"cannot write {tmp} in the open_backup cache: {exc}") from exc
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            with lock:
                fetched[0] += f.size
        run_parallel(files, one, workers, threading.Event())
        self.evict(protect=set(paths.values()))
        return paths, fetched[0]

    def evict(self, protect: set[str]) -> None:
        entries: list[tuple[float, int, str]] = []
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.limit:
                break
            if path in protect:
                continue
            try:
                os.unlink(path)
                total -= size
            except FileNotFoundError:
                pass
        if total > self.limit:
            self.logger.warning("open_backup cache %s holds %d bytes, over its limit of %d: the open backup "
                                "alone needs that much", self.root, total, self.limit)


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None
