"""What naming a DB file needed last time, kept per process so an incremental backup reads no SST twice.

Why: a shared_checksum name needs each SST's DB session id (or, for blob files and SSTs without one,
its crc32c), and reading the properties block of 10,000 SSTs in Python costs 1-2.5 s of CPU per backup,
though RocksDB never changes a DB file once written.  So the facts read from a file are remembered
under the file's identity and reused while that identity holds.

The identity is (st_dev, st_ino, st_size, st_mtime_ns, DB file name).  A checkpoint's hard link is the
DB file's own inode with its own mtime, so one entry serves every later checkpoint of the same file.
What may not change it, and so is left out: st_ctime and st_nlink, which every checkpoint's link and
unlink move.  What a stale entry would need to return a wrong fact: a new file written into a freed
inode of the same device, under the same DB file name (RocksDB never reuses a number within a DB),
with the same size and an mtime equal to the nanosecond (the kernel's coarse clock makes that one
tick, a few ms) - or a file modified in place with its mtime forged back, which RocksDB never does.
Filesystems that report no inode number (st_ino 0) or no mtime are never cached.

Only successful reads are remembered (a Corruption is raised again next time); the cache is bounded
(`MAX_ENTRIES` beyond the latest backup's files, least recently used out first) and lives in memory
only: nothing is written to the DB, the backup directory or anywhere else, so a lost cache costs speed.
"""
from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import compress

from .plan import NamingFacts, SourceFile

MAX_ENTRIES = 100_000
"""Entries kept beyond those of the latest backup (~300 bytes each): the files of other DBs, and of
this one's earlier versions.  A backup's own files are always kept, however many, so a DB bigger than
this does not make every backup miss (least-recently-used eviction would, backup after backup)."""

Identity = bytes
"""st_dev, st_ino, st_size, st_mtime_ns packed, then the DB file name: one small object per entry."""

_IDENTITY = struct.Struct("<QQQq")


def identity_of(f: SourceFile) -> Identity | None:
    """The cache key of `f`, from the stat its snapshot took (or a new one); None: not cacheable."""
    return identity(f.name, f.size, f.stat if f.stat is not None else _stat(f.path))


def identity(name: str, size: int, st: os.stat_result | None) -> Identity | None:
    """The cache key of the DB file `name` of `size` bytes that `st` is the stat of; None: not cacheable."""
    if st is None or not st.st_ino or not st.st_mtime_ns or st.st_size != size:
        return None
    try:
        packed = _IDENTITY.pack(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except struct.error:  # out of 64 bits (a FUSE fs's odd numbers): not worth a special key
        return None
    return packed + name.encode("utf-8", "surrogateescape")


_last_pinned: dict[str, tuple[os.stat_result, int, Identity | None]] = {}


def pinned_identities(candidates: list[tuple[str, int, os.stat_result]]) -> list[Identity | None]:
    """`identity` of each (name, size, stat), for the stats a live DB's snapshot kept from the one before
    (`sidecar`'s pins): the same SST comes back with the very same stat object at every backup, so its
    key is made once (10,000 SSTs: 8 ms a backup otherwise).  Only the last call's are remembered."""
    global _last_pinned
    last, memo = _last_pinned, {}
    keys = []
    for name, size, st in candidates:
        hit = last.get(name)
        key = hit[2] if hit is not None and hit[0] is st and hit[1] == size else identity(name, size, st)
        memo[name] = (st, size, key)
        keys.append(key)
    _last_pinned = memo
    return keys


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None  # the read that follows reports it, naming the file


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class NamingCache:
    """Facts by file identity, shared by every engine of the process (thread-safe, bounded)."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._max = max_entries
        self._facts: OrderedDict[Identity, NamingFacts] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._facts)

    def clear(self) -> None:
        with self._lock:
            self._facts.clear()

    def known(self, keys: list[Identity | None]) -> list[NamingFacts | None]:
        """The facts remembered under each key, None where there are none (nothing read, nothing counted);
        the ones found count as just used, as in `facts` (the caller names its files with them)."""
        with self._lock:
            found = list(map(self._facts.get, keys))  # type: ignore[arg-type]  # a None key finds None
            deque(map(self._facts.move_to_end, compress(keys, found)), maxlen=0)  # type: ignore[arg-type]
            return found

    def facts(self, files: list[SourceFile],
              read_all: Callable[[list[SourceFile]], list[NamingFacts]]) -> dict[str, NamingFacts]:
        """Name -> facts of `files`: remembered ones as they are, the others by `read_all` (and remembered)."""
        keys = [identity_of(f) for f in files]
        found: dict[str, NamingFacts] = {}
        missing: list[tuple[SourceFile, Identity | None]] = []
        with self._lock:
            for f, key in zip(files, keys, strict=True):
                known = self._facts.get(key) if key is not None else None
                if known is None:
                    missing.append((f, key))
                else:
                    self._facts.move_to_end(key)  # type: ignore[arg-type]
                    found[f.name] = known
            self.stats.hits += len(found)
            self.stats.misses += len(missing)
        read = read_all([f for f, _ in missing]) if missing else []
        with self._lock:
            for (f, key), facts in zip(missing, read, strict=True):
                found[f.name] = facts
                if key is not None:
                    self._facts[key] = facts
                    self._facts.move_to_end(key)
            while len(self._facts) > max(self._max, len(files)):  # files: the most recently used
                self._facts.popitem(last=False)
        return found


PROCESS_CACHE = NamingCache()
"""The one every engine uses: backups of the same DB by different engine objects share it."""
