"""One writer at a time per backup directory, across processes and hosts.

RocksDB's BackupEngine assumes a single writer and says nothing across
processes; two writers racing would reuse an id or let one's garbage
collection delete the other's fresh files.  rbackup takes a lock around every
mutating operation (create, delete, purge, garbage collection); readers never
take it, since a backup only becomes visible through its atomic meta commit.

Local directory (`env.local_path` is not None)
    A real `flock` on `<backup_dir>/rbackup.lock`.  The kernel releases it
    when its holder dies, however it dies, so a killed writer never leaves a
    lock behind.  The file also records the holder (host, pid, since when,
    operation) so that the next writer can say who holds it.  The file is
    never deleted: deleting a flock file lets two processes lock two
    different inodes.

Every other store: a lease taken by *generations*
    Leases are small JSON objects `rbackup.lock.d/<n>` (n zero-padded).  The
    lease in force is the one with the highest n; its holder owns the
    directory until it writes a "released" tombstone into it, or until it
    goes stale: it expired (`lock_ttl` seconds after its holder's last
    heartbeat, renewed every ttl/3), or it belongs to a process of this very
    machine that no longer exists.  To take the lock a writer lists the
    leases, checks that the highest, n, is released or stale, and creates
    n+1 with `create_exclusive` (S3: a PUT with If-None-Match): of several
    writers that found the same stale lease exactly one creates n+1.  The
    winner then lists again and backs off if a higher lease exists (a slow
    writer re-creating a number already cleaned up), and finally deletes the
    leases below its own.  The highest lease is never deleted, only
    superseded, which is what makes the takeover race-free: there is no
    "delete the stale lease, then create mine" window in which a second
    taker could delete the first one's fresh lease (the flaw of a single
    lock object).

Guarantee.  Given an atomic create-if-absent and a listing that shows every
completed create (S3 has both since 2020), two writers hold the lock at the
same time only if one of them was judged stale while still alive: it stalled
for longer than `lock_ttl` (no heartbeat got through), or the clocks of the
two hosts differ by more than about 2/3 of `lock_ttl` (expiry compares the
holder's clock with the taker's).  A holder that lost its lease this way
notices at its next heartbeat or at its next `check` (`Lease.lost` is set and
an error is logged), stops renewing and does not release the successor's
lease.  `check` (the `WriterLock` protocol) is what writers call before every
step that could damage a successor's work; `create.py` says what a create
does besides.  On stores without atomic create-if-absent
(`capabilities.conditional_create` False) the lease is best effort: a taker
reads its lease back after `BEST_EFFORT_SETTLE` seconds, and heartbeats and
checks compare the lease's token with their own.

Backup ids across a takeover.  A holder judged stale while alive may resume
with requests already in flight, which no check of its own can stop (some
stores check `If-None-Match` when a PUT's headers arrive, not when its body
is stored).  So writers never share a backup id across a takeover: a create
records its id in its lease (`claim`) before publishing anything, a writer
that takes over an *expired* lease inherits that id as `reserved`, and the
engine creates above it (and above any leftover `private/<id>/` of such a
holder).  The reservation is carried from lease to lease, since the stalled
writer may resume after several more takeovers.  Ids need not be contiguous:
RocksDB's own format and tools accept gaps, as deleted backups leave them.
"""
from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Protocol

from .env.base import BackupEnv, translate_os_error
from .errors import AlreadyExists, BackupError, LockError, NotFound

LOCK_NAME = "rbackup.lock"
"""The flock file at the root of a local backup directory."""
LEASE_DIR = "rbackup.lock.d"
"""Where the leases of object stores live: `rbackup.lock.d/<20-digit generation>`."""
_LEASE_DIGITS = 20
BEST_EFFORT_SETTLE = 1.0
"""Seconds a taker waits before reading its lease back on a store without create-if-absent."""
_MAX_LOCK_FILE = 64 << 10

log = logging.getLogger("rbackup")


def is_lock_file(path: str) -> bool:
    """Whether a backup-directory path is part of the writer lock (not backup data): the lock
    file, the lease directory (listed to find the newest lease) or a lease in it."""
    return path in (LOCK_NAME, LEASE_DIR) or path.startswith(LEASE_DIR + "/")


def lease_path(generation: int) -> str:
    return f"{LEASE_DIR}/{generation:0{_LEASE_DIGITS}d}"


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read(256).strip()
    except OSError:
        return ""


def _boot_id() -> str:
    """Tells two boots (and two machines sharing a host name) apart."""
    return _read_text("/proc/sys/kernel/random/boot_id")


def _pid_namespace() -> str:
    """Tells two containers on one kernel apart: their pids are not comparable."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot), so a reused pid is not taken for its
    predecessor; None where /proc is unavailable."""
    stat = _read_text(f"/proc/{pid}/stat") if pid > 0 else ""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass
class Holder:
    """Who holds (or last held) the lock, as recorded in the lock file or lease."""

    host: str
    pid: int
    since: float
    expires: float
    token: str
    operation: str
    boot_id: str = ""
    pid_ns: str = ""
    start_ticks: int | None = None
    released: bool = False
    backup_id: int | None = None
    """The backup id this holder is creating (recorded before its first file is published)."""
    reserved: int = 0
    """Backup ids up to this one may still be written by an earlier holder that lost its lease
    alive: no create may use them (see `Lease.reserved`)."""

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"host {self.host}, pid {self.pid}, since {since} ({self.operation})"

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        try:
            raw = json.loads(data.decode("utf-8"))
            ticks = raw.get("start_ticks")
            backup_id = raw.get("backup_id")
            return cls(str(raw["host"]), int(raw["pid"]), float(raw["since"]), float(raw["expires"]),
                       str(raw["token"]), str(raw.get("operation", "")), str(raw.get("boot_id", "")),
                       str(raw.get("pid_ns", "")), int(ticks) if ticks is not None else None,
                       bool(raw.get("released", False)), int(backup_id) if backup_id is not None else None,
                       int(raw.get("reserved", 0)))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            return None

    def same_machine(self) -> bool:
        """Whether this holder's pid can be checked from here: same host name, same boot
        and same pid namespace (where those are known on both sides)."""
        if self.host != socket.gethostname():
            return False
        for recorded, here in ((self.boot_id, _boot_id()), (self.pid_ns, _pid_namespace())):
            if recorded and here and recorded != here:
                return False
        return True

    def process_gone(self) -> bool:
        """Whether the recorded process no longer exists (only meaningful on the same machine)."""
        if not _pid_alive(self.pid):
            return True
        ticks = _start_ticks(self.pid)
        return self.start_ticks is not None and ticks is not None and ticks != self.start_ticks


def _new_holder(operation: str, ttl: float) -> Holder:
    now = time.time()
    pid = os.getpid()
    return Holder(socket.gethostname(), pid, now, now + ttl, uuid.uuid4().hex, operation,
                  _boot_id(), _pid_namespace(), _start_ticks(pid))


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Staleness(enum.Enum):
    """Why a lease no longer binds anyone: only RELEASED is the normal end of a lease,
    every other is a take-over worth a warning."""

    UNREADABLE = enum.auto()
    """Not written by rbackup's atomic create: there is no holder to protect."""
    RELEASED = enum.auto()
    EXPIRED = enum.auto()
    PROCESS_GONE = enum.auto()
    """Its holder's process on this machine no longer exists."""
    LEFT_BEHIND = enum.auto()
    """This process's own lease that it no longer holds (its release failed)."""


@dataclass(frozen=True)
class StaleLease:
    """A lease that binds no one: why (for decisions) and how it reads (for the log)."""

    kind: Staleness
    detail: str


def stale_reason(holder: Holder | None, now: float) -> StaleLease | None:
    """Why a lease no longer binds anyone, or None while its holder is in force."""
    if holder is None:
        return StaleLease(Staleness.UNREADABLE, "unreadable lease")
    if holder.released:
        return StaleLease(Staleness.RELEASED, "released")
    if holder.expires < now:
        return StaleLease(Staleness.EXPIRED, f"expired {now - holder.expires:.0f}s ago")
    if holder.same_machine():
        if holder.process_gone():
            return StaleLease(Staleness.PROCESS_GONE, f"process {holder.pid} on this machine is gone")
        if holder.pid == os.getpid() and not _is_active(holder.token):
            return StaleLease(Staleness.LEFT_BEHIND, "left behind by this process (its release failed)")
    return None


_active_lock = threading.Lock()
_active_tokens: set[str] = set()
"""Tokens of the leases this process holds right now: a lease of ours that is not among
them was left behind (say, its release failed) and binds no one."""


def _is_active(token: str) -> bool:
    with _active_lock:
        return token in _active_tokens


def _set_active(token: str, active: bool) -> None:
    with _active_lock:
        (_active_tokens.add if active else _active_tokens.discard)(token)


class WriterLock(Protocol):
    """The writer lock while it is held: who holds it, and a check that it still does."""

    holder: Holder
    can_be_taken_over: bool
    """False for a flock (held until its holder exits); True for a lease, which a writer that
    stalls past `lock_ttl` loses without knowing until its next check."""

    reserved: int
    """Backup ids up to this one must not be created under this lock: a writer that lost the
    lock while alive (stalled past `lock_ttl`) may still be writing one of them.  0 for a flock."""
    took_over_live_holder: bool
    """Whether this lock was taken from a holder that may still be alive (its lease expired), so
    that leftovers of an unfinished backup must not be reused either."""

    def claim(self, backup_id: int) -> None:
        """Record, before the first file of backup `backup_id` is published, that this writer
        creates it (and keeps the ids below it reserved), so that a successor that takes the
        lock over while this writer stalls picks a higher id.  LockError if this writer lost
        the lock, or could not record it in time."""

    def check(self, what: str, *, ask_store: bool = True) -> None:
        """Raise LockError unless this writer still holds the lock.

        Called right before every step that could damage another writer's
        work (publishing a file, the meta commit, deleting): a writer that
        stalled past `lock_ttl` and was taken over stops there.
        `ask_store=False` checks only what this process knows (the heartbeat's
        verdict and the lease's remaining time, no request).
        """


@dataclass
class _FlockHeld:
    holder: Holder
    can_be_taken_over: bool = False
    reserved: int = 0
    took_over_live_holder: bool = False

    def claim(self, backup_id: int) -> None:
        """The kernel releases a flock only when its holder is gone: no id needs reserving."""

    def check(self, what: str, *, ask_store: bool = True) -> None:
        """A flock cannot be taken over while its holder lives: nothing to check."""


@contextlib.contextmanager
def hold_writer_lock(env: BackupEnv, operation: str, *, timeout: float = 0.0,
                     ttl: float = 300.0) -> Iterator[WriterLock]:
    """Hold the backup directory's writer lock for the duration of the block.

    Raises LockError naming the holder if another writer keeps it for longer
    than `timeout` seconds (0: fail at once).
    """
    local = env.local_path("")
    if local is not None:
        with _flock(local, operation, timeout, ttl) as holder:
            yield _FlockHeld(holder)
    else:
        with Lease(env, operation, timeout, ttl) as lease:
            yield lease


@contextlib.contextmanager
def writer_lock(env: BackupEnv, operation: str, *, timeout: float = 0.0, ttl: float = 300.0) -> Iterator[Holder]:
    """`hold_writer_lock`, for callers that only need to know the holder."""
    with hold_writer_lock(env, operation, timeout=timeout, ttl=ttl) as held:
        yield held.holder


def _busy(where: str, holder: Holder | None) -> LockError:
    who = holder.describe() if holder else "an unknown holder"
    return LockError(f"backup directory {where} is locked by another writer: {who}",
                     asdict(holder) if holder else None)


def _read_flock_holder(fd: int) -> Holder | None:
    # The holder rewrites the file right after locking: retry a torn read briefly.
    for _ in range(5):
        holder = Holder.parse(os.pread(fd, _MAX_LOCK_FILE, 0))
        if holder is not None:
            return holder
        time.sleep(0.01)
    return None


@contextlib.contextmanager
def _flock(root: str, operation: str, timeout: float, ttl: float) -> Iterator[Holder]:
    path = os.path.join(root, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise translate_os_error(exc, f"cannot open the writer lock {path}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise translate_os_error(exc, f"cannot lock {path}") from None
                if time.monotonic() >= deadline:
                    raise _busy(root, _read_flock_holder(fd)) from None
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        holder = _new_holder(operation, ttl)
        data = holder.encode()
        try:
            # Write, then cut: a reader never finds the file empty in between.
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except OSError as exc:  # informational only: the flock is what excludes
            log.warning("could not record the lock holder in %s: %s", path, exc)
        try:
            yield holder
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class Lease:
    """The generation lease of an object store (see the module docstring)."""

    can_be_taken_over = True

    def __init__(self, env: BackupEnv, operation: str, timeout: float, ttl: float) -> None:
        self.env = env
        self.operation = operation
        self.timeout = timeout
        self.ttl = ttl
        self.holder = _new_holder(operation, ttl)
        self.generation: int | None = None
        self.reserved = 0
        """See `WriterLock.reserved`: inherited from the lease this one superseded."""
        self.took_over_live_holder = False
        self.lost = threading.Event()
        """Set when a heartbeat or a check finds that another writer took the lease over."""
        self._valid_until = 0.0
        """time.monotonic() at which the lease as last written expires (from its writer's view)."""
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._io = threading.Lock()

    # -- helpers -----------------------------------------------------------------
    def _generations(self) -> list[int]:
        found = []
        for info in self.env.list(LEASE_DIR):
            name = info.path.rpartition("/")[2]
            if name.isdigit() and len(name) == _LEASE_DIGITS:
                found.append(int(name))
        return sorted(found)

    def _read(self, generation: int) -> Holder | None:
        return Holder.parse(self.env.read_bytes(lease_path(generation), _MAX_LOCK_FILE))

    # -- taking and giving back ------------------------------------------------------
    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            generations = self._generations()
            if generations:
                top = generations[-1]
                try:
                    current = self._read(top)
                except NotFound:
                    continue  # a loser cleaning up its own attempt: look again
                reason = stale_reason(current, time.time())
                if reason is None:
                    if time.monotonic() >= deadline:
                        raise _busy(self.env.describe(), current)
                    time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
                    continue
                if reason.kind is not Staleness.RELEASED:
                    log.warning("taking over the lock of %s: %s (%s)", self.env.describe(),
                                current.describe() if current else "?", reason.detail)
                self._inherit(current, reason.kind)
                candidate = top + 1
            else:
                self._inherit(None, Staleness.RELEASED)  # no lease yet: nothing to inherit
                candidate = 1
            written_at = self._stamp()
            _set_active(self.holder.token, True)  # before it can be seen: ours is never "left behind"
            try:
                self.env.create_exclusive(lease_path(candidate), self.holder.encode(), sync=True)
            except AlreadyExists:
                _set_active(self.holder.token, False)
                continue  # another writer got this generation: see who, and whether it is alive
            except BaseException:
                _set_active(self.holder.token, False)
                raise
            try:
                newer = [g for g in self._generations() if g > candidate]
                if newer:
                    # We re-created a generation that had been superseded and cleaned up.
                    self.env.delete([lease_path(candidate)])
                elif not self.env.capabilities.conditional_create:
                    # Best effort (the store cannot arbitrate): let a racing writer's PUT land,
                    # then read back; whoever's token is there holds the lease.
                    time.sleep(BEST_EFFORT_SETTLE)
                    newer = [] if self._holds(candidate) else [candidate]
            except BaseException:
                _set_active(self.holder.token, False)
                raise
            if newer:
                _set_active(self.holder.token, False)
                continue
            self.generation = candidate
            self._valid_until = written_at + self.ttl
            older = [lease_path(g) for g in generations if g < candidate]
            if older:
                try:
                    self.env.delete(older)
                except BackupError as exc:
                    log.info("could not remove superseded leases of %s: %s", self.env.describe(), exc)
            break
        self._beat = threading.Thread(target=self._heartbeat, name="rbackup-lock-heartbeat", daemon=True)
        self._beat.start()

    def _inherit(self, previous: Holder | None, reason: Staleness) -> None:
        """Carry the ids the superseded lease reserved into ours, plus the id its holder was
        creating if that holder may still be alive: a lease that merely expired may belong to
        a writer that stalled and will resume with requests in flight (a dead process, a
        released lease or this process's own leftover lease cannot write any more)."""
        may_live = previous is None or reason is Staleness.EXPIRED
        reserved = previous.reserved if previous is not None else 0
        if may_live and previous is not None and previous.backup_id is not None:
            reserved = max(reserved, previous.backup_id)
        self.reserved = reserved
        self.took_over_live_holder = may_live
        self.holder.reserved = reserved

    def claim(self, backup_id: int) -> None:
        """See `WriterLock.claim`.  The record is written into our lease, then the lease is
        checked: a successor that took it over before our write landed is found (a higher
        generation), and one that could still have read the lease as it was before (expired
        on its clock) is excluded by requiring the old lease to be valid for another quarter
        ttl after the write."""
        assert self.generation is not None
        with self._io:
            if not self.lost.is_set():
                old_left = self._valid_until
                old_expires = self.holder.expires
                self.holder.backup_id = backup_id
                self.holder.reserved = self.reserved = max(self.reserved, backup_id - 1)
                written_at = self._stamp()
                self.env.write_bytes(lease_path(self.generation), self.holder.encode())
                self._valid_until = written_at + self.ttl
                left = min(old_left - time.monotonic(), old_expires - time.time())
                if left < self.ttl / 4 or self._superseded():
                    self._mark_lost()
        self.check(f"backup {backup_id}: recording it in the lease", ask_store=False)

    def _stamp(self) -> float:
        """Set the expiry of the lease about to be written; returns time.monotonic() before it."""
        mono = time.monotonic()
        self.holder.expires = time.time() + self.ttl
        return mono

    def _holds(self, generation: int) -> bool:
        """Whether lease `generation` carries our token (NotFound: it does not)."""
        try:
            current = self._read(generation)
        except NotFound:
            return False
        return current is not None and current.token == self.holder.token

    def _superseded(self) -> bool:
        """Whether another writer took the lease over: a higher generation exists, or (on a
        store that cannot arbitrate) our own generation now carries another token."""
        assert self.generation is not None
        if any(g > self.generation for g in self._generations()):
            return True
        return not self._holds(self.generation)

    def _mark_lost(self) -> None:
        if not self.lost.is_set():
            self.lost.set()
            log.error("the lock of %s was taken over by another writer while %s (pid %d) still held it: "
                      "it stalled for longer than lock_ttl=%ss; it stops before writing anything more",
                      self.env.describe(), self.operation, os.getpid(), self.ttl)

    def check(self, what: str, *, ask_store: bool = True) -> None:
        """See `WriterLock.check`.  Our own view expires a quarter ttl early, so that a step
        begun just before the expiry is not still in flight when a successor starts."""
        if self.generation is None:
            raise LockError(f"{what}: the lock of {self.env.describe()} is not held")
        left = min(self._valid_until - time.monotonic(), self.holder.expires - time.time())
        if not self.lost.is_set() and left < self.ttl / 4:
            log.error("%s: the lease on %s expires in %.1fs (lock_ttl=%ss): renewals failed or the process "
                      "stalled", what, self.env.describe(), left, self.ttl)
            self._mark_lost()
        if not self.lost.is_set() and ask_store:
            with self._io:
                if self._superseded():
                    self._mark_lost()
        if self.lost.is_set():
            raise LockError(f"{what}: this writer ({self.operation}, pid {os.getpid()}) no longer holds the "
                            f"lock of {self.env.describe()}: its lease expired or another writer took it over "
                            f"(it stalled, or could not renew, for about lock_ttl={self.ttl}s); stopped before "
                            f"it could damage another writer's work", asdict(self.holder))

    def _heartbeat(self) -> None:
        assert self.generation is not None
        while not self._stop.wait(self.ttl / 3):
            try:
                with self._io:
                    if self._stop.is_set() or self.lost.is_set():
                        return
                    if self._superseded():
                        self._mark_lost()
                        return
                    written_at = self._stamp()
                    self.env.write_bytes(lease_path(self.generation), self.holder.encode())
                    self._valid_until = written_at + self.ttl
            except BackupError as exc:
                log.warning("could not renew the lock of %s: %s", self.env.describe(), exc)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        _set_active(self.holder.token, False)
        if self.generation is None or self.lost.is_set():
            return
        with self._io:
            try:
                if self._superseded():
                    self._mark_lost()
                    return
                self.holder.released = True
                self.env.write_bytes(lease_path(self.generation), self.holder.encode())
            except BackupError as exc:
                # The lease then expires after lock_ttl (or at once for writers on this machine
                # once this process has exited).
                log.warning("could not release the lock of %s: %s", self.env.describe(), exc)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = [
    "LEASE_DIR",
    "LOCK_NAME",
    "Holder",
    "Lease",
    "StaleLease",
    "Staleness",
    "WriterLock",
    "hold_writer_lock",
    "is_lock_file",
    "lease_path",
    "stale_reason",
    "writer_lock",
]
