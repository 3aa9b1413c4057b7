"""Taking RocksDB's `LOCK` of a DB directory without ever dropping a lock this process holds.

RocksDB locks `<db>/LOCK` with a POSIX record lock (`fcntl(F_SETLK)`).  Such locks belong to the
*process*, and closing *any* descriptor of that file in the process drops them.  So a naive
`open(LOCK); lockf(); close()` in a process that has the same DB open through rocksdict silently
releases RocksDB's lock: afterwards a second process can open the DB for writing beside the first.
Worse, a POSIX lock taken by this process on a file it already holds just succeeds.

Hence the order here:
1. stat `LOCK` and look its device:inode up in `/proc/locks` *before* opening it.  An entry of this
   process (POSIX locks carry our pid) means RocksDB in this process has the DB open: refuse,
   without ever opening the file.  An entry of another process: refuse, naming it.
2. Otherwise open it and take an *open file description* lock (`F_OFD_SETLK`).  OFD locks conflict
   with POSIX locks even within one process, so RocksDB (in this process or another) cannot open the
   DB while we hold it, and closing our descriptor drops only our OFD lock.
3. Belt and braces: should the OFD lock still meet a POSIX lock of this process (a /proc mounted
   from another pid namespace, say), the descriptor is deliberately kept open for the life of the
   process, because closing it would release RocksDB's lock; we refuse all the same.

Linux only (`/proc/locks`, OFD locks); elsewhere `NotSupported`.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import LockError, NotSupported, StorageError

log = logging.getLogger("rbackup")

PROC_LOCKS = "/proc/locks"

_kept_open: list[int] = []
"""Descriptors of LOCK files that must never be closed (see step 3 above)."""


@dataclass(frozen=True)
class LockHolder:
    """One lock on a file as /proc/locks reports it."""

    kind: str
    """POSIX, OFDLCK or FLOCK."""
    pid: int
    """The holder's pid in our pid namespace; -1 for OFD locks (they belong to no process), 0 if unknown."""


def holders(path: str, locks_text: str | None = None) -> list[LockHolder]:
    """The locks currently held on the file at `path` (blocked waiters are not holders)."""
    st = os.stat(path)
    text = locks_text if locks_text is not None else _read_proc_locks()
    return parse_proc_locks(text, os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)


def parse_proc_locks(text: str, major: int, minor: int, inode: int) -> list[LockHolder]:
    """Pure: the holders of dev major:minor, inode `inode` in the text of /proc/locks.

    A line reads `1: POSIX  ADVISORY  WRITE 6522 fe:00:398608 0 EOF` (device numbers in hex, the
    inode in decimal); a line with `->` after the id is a waiter and is skipped."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->":
            continue
        kind, pid_text, where = fields[1], fields[4], fields[5]
        parts = where.split(":")
        if len(parts) != 3:
            continue
        try:
            dev_major, dev_minor, ino = int(parts[0], 16), int(parts[1], 16), int(parts[2])
            pid = int(pid_text)
        except ValueError:
            continue
        if ino == inode and (dev_major, dev_minor) == (major, minor):
            found.append(LockHolder(kind, pid))
    return found


def _read_proc_locks() -> str:
    try:
        with open(PROC_LOCKS, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError as exc:
        raise NotSupported(f"cannot read {PROC_LOCKS} ({exc}): without it rbackup cannot tell whether this "
                           f"process holds a DB's LOCK, and must not risk dropping it") from exc


def _ofd_lock(fd: int, exclusive: bool) -> None:
    """Non-blocking OFD lock on the whole file; OSError(EAGAIN) if anyone else's lock conflicts."""
    lock_type = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    # struct flock {short l_type; short l_whence; off_t l_start; off_t l_len; pid_t l_pid;}; l_pid must be 0.
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", lock_type, os.SEEK_SET, 0, 0, 0))


def _conflicting_pid(fd: int, exclusive: bool) -> int:
    """The pid of the lock that blocks ours (-1 for an OFD lock, 0 if none)."""
    lock_type = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    packed = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, struct.pack("hhqqi", lock_type, os.SEEK_SET, 0, 0, 0))
    l_type, _, _, _, l_pid = struct.unpack("hhqqi", packed)
    return 0 if l_type == fcntl.F_UNLCK else l_pid


def _held_message(db_dir: str, purpose: str, found: list[LockHolder]) -> str:
    mine = [h for h in found if h.pid == os.getpid()]
    if mine:
        return (f"the DB at {db_dir} is open in this process (RocksDB holds its LOCK): cannot {purpose} by path; "
                f"pass the open Rdict instead (rbackup never touches a LOCK this process holds)")
    who = ", ".join(f"pid {h.pid}" if h.pid > 0 else "a backup or restore (an OFD lock)" if h.kind == "OFDLCK"
                    else f"a {h.kind} lock" for h in found)
    return f"the DB at {db_dir} is open in another process ({who} holds its LOCK): cannot {purpose}"


@contextlib.contextmanager
def hold_db_lock(db_dir: str, *, purpose: str = "back it up", exclusive: bool = True) -> Iterator[None]:
    """Hold `<db_dir>/LOCK` so that no RocksDB (in this process or another) opens the DB meanwhile.

    `exclusive=False` takes a shared lock: it still keeps every RocksDB out (RocksDB wants a write
    lock) but lets several readers, e.g. two backups, hold it together, and needs only read access.
    Raises `LockError` if the DB is open anywhere, naming this process when it is us.  Creates
    nothing: a DB directory without `LOCK` (never opened by RocksDB since it was copied there) is
    held by no one, and the caller gets no lock but a check on exit that none appeared meanwhile."""
    lock_path = os.path.join(db_dir, "LOCK")
    if not os.path.lexists(lock_path):
        yield
        if os.path.lexists(lock_path):
            raise LockError(f"the DB at {db_dir} was opened by RocksDB (it created {lock_path}) while rbackup "
                            f"was reading it: cannot {purpose}")
        return
    try:
        found = holders(lock_path)
    except OSError as exc:
        raise StorageError(f"cannot stat {lock_path}: {exc}") from exc
    posix = [h for h in found if h.kind == "POSIX"]
    if posix:  # RocksDB's kind of lock; other OFD holders (another backup) are for our OFD lock to meet
        raise LockError(_held_message(db_dir, purpose, posix), {"path": lock_path, "pids": [h.pid for h in posix]})
    fd = _open_lock_file(lock_path, exclusive)
    if fd is None:
        yield  # a read-only file system: no RocksDB can open the DB for writing there
        return
    try:
        _ofd_lock(fd, exclusive)
    except OSError as exc:
        _refuse_after_open(fd, db_dir, lock_path, purpose, exclusive, exc)
    try:
        yield
    finally:
        os.close(fd)  # drops only our OFD lock: nobody else's lock lives on this descriptor


def _open_lock_file(lock_path: str, exclusive: bool) -> int | None:
    flags = (os.O_RDWR if exclusive else os.O_RDONLY) | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        return os.open(lock_path, flags)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return None
        raise StorageError(f"cannot open {lock_path}: {exc}") from exc


def _refuse_after_open(fd: int, db_dir: str, lock_path: str, purpose: str, exclusive: bool, exc: OSError) -> None:
    """Our OFD lock was refused: raise, and close `fd` only if that cannot drop a lock of this process."""
    if exc.errno not in (errno.EACCES, errno.EAGAIN):
        os.close(fd)
        raise StorageError(f"cannot lock {lock_path}: {exc}") from exc
    pid = _conflicting_pid(fd, exclusive)
    if pid == os.getpid():
        _kept_open.append(fd)  # closing it would release RocksDB's lock in this process
        log.warning("%s is locked by this process but %s did not show it; keeping a descriptor of it open",
                    lock_path, PROC_LOCKS)
    else:
        os.close(fd)
    holder = LockHolder("POSIX" if pid > 0 else "OFDLCK", pid)
    raise LockError(_held_message(db_dir, purpose, [holder]), {"path": lock_path, "pids": [pid]}) from exc
