"""One writer at a time per backup directory, across processes and hosts.

RocksDB's BackupEngine assumes a single writer and says nothing across
processes; two writers racing would reuse an id or let one's garbage
collection delete the other's fresh files.  rbackup takes a lock around every
mutating operation (create, delete, purge, garbage collection); readers never
take it, since a backup only becomes visible through its atomic meta commit.

- Stores that are a local directory (`env.local_path`): a real `flock` on
  `<backup_dir>/rbackup.lock`, released by the kernel when its holder dies,
  so a killed writer can never leave a lock behind.  The file also records
  the holder so the next writer can say who holds it.
- Every other store: a lease object `rbackup.lock` created with
  `create_exclusive` (S3's If-None-Match), renewed by a heartbeat thread and
  expiring `lock_ttl` seconds after its holder stops renewing.  A lease from a
  dead process on this host is recognised at once (its pid is gone).

The lock file lives at the root of the backup directory, where RocksDB's own
tools and garbage collection never look.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Iterator

from .env.base import BackupEnv
from .errors import AlreadyExists, BackupError, LockError, NotFound

LOCK_NAME = "rbackup.lock"

log = logging.getLogger("rbackup")


@dataclass
class Holder:
    host: str
    pid: int
    since: float
    expires: float
    token: str
    operation: str

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"host {self.host}, pid {self.pid}, since {since} ({self.operation})"

    @classmethod
    def parse(cls, data: bytes) -> "Holder | None":
        try:
            raw = json.loads(data.decode("utf-8"))
            return cls(str(raw["host"]), int(raw["pid"]), float(raw["since"]), float(raw["expires"]),
                       str(raw["token"]), str(raw.get("operation", "")))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None


def _new_holder(operation: str, ttl: float) -> Holder:
    now = time.time()
    return Holder(socket.gethostname(), os.getpid(), now, now + ttl, uuid.uuid4().hex, operation)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(holder: Holder | None, now: float) -> bool:
    if holder is None:
        return True  # unreadable lease: a crash mid-write of the lease itself
    if holder.expires < now:
        return True
    return holder.host == socket.gethostname() and not _pid_alive(holder.pid)


@contextlib.contextmanager
def writer_lock(env: BackupEnv, operation: str, *, timeout: float = 0.0, ttl: float = 300.0) -> Iterator[Holder]:
    local = env.local_path("")
    if local is not None:
        with _flock(local, operation, timeout, ttl) as holder:
            yield holder
    else:
        with _lease(env, operation, timeout, ttl) as holder:
            yield holder


def _busy(where: str, holder: Holder | None) -> LockError:
    who = holder.describe() if holder else "an unknown holder"
    return LockError(f"backup directory {where} is locked by another writer: {who}",
                     asdict(holder) if holder else None)


@contextlib.contextmanager
def _flock(root: str, operation: str, timeout: float, ttl: float) -> Iterator[Holder]:
    path = os.path.join(root, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if time.monotonic() >= deadline:
                    raise _busy(root, Holder.parse(os.pread(fd, 4096, 0))) from None
                time.sleep(0.05)
        holder = _new_holder(operation, ttl)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(holder)).encode(), 0)
        try:
            yield holder
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _lease(env: BackupEnv, operation: str, timeout: float, ttl: float) -> Iterator[Holder]:
    deadline = time.monotonic() + timeout
    holder = _new_holder(operation, ttl)
    while True:
        try:
            env.create_exclusive(LOCK_NAME, json.dumps(asdict(holder)).encode(), sync=True)
            break
        except AlreadyExists:
            try:
                current = Holder.parse(env.read_bytes(LOCK_NAME, 64 << 10))
            except NotFound:
                continue  # released between our attempt and the read: try again at once
            if _is_stale(current, time.time()):
                log.warning("taking over a stale lock on %s (%s)", env.describe(LOCK_NAME),
                            current.describe() if current else "unreadable")
                env.delete([LOCK_NAME])
                continue
            if time.monotonic() >= deadline:
                raise _busy(env.describe(), current) from None
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(ttl / 3):
            holder.expires = time.time() + ttl
            try:
                env.write_bytes(LOCK_NAME, json.dumps(asdict(holder)).encode())
            except BackupError as exc:
                log.warning("could not renew the lock on %s: %s", env.describe(LOCK_NAME), exc)

    beat = threading.Thread(target=heartbeat, name="rbackup-lock-heartbeat", daemon=True)
    beat.start()
    try:
        yield holder
    finally:
        stop.set()
        beat.join()
        try:
            current = Holder.parse(env.read_bytes(LOCK_NAME, 64 << 10))
            if current is not None and current.token == holder.token:
                env.delete([LOCK_NAME])
        except BackupError as exc:
            log.warning("could not release the lock on %s: %s", env.describe(LOCK_NAME), exc)
