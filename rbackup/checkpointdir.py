"""Where the checkpoint of an open Rdict goes, and which leftover checkpoints may be removed.

(A backup that pins a live DB's files in place, an open Rdict's or a `LiveDbPath`'s, stages the
MANIFEST prefix, CURRENT, OPTIONS and WALs it copies in the same kind of locked directory beside the
DB, so its leftover is cleaned up the same way.)

A checkpoint hard-links the DB's SSTs, so it must sit on the DB's filesystem:
beside the DB's real directory (symlinks resolved), else in the temp directory,
else, for a DB that is the root of its own volume, inside the DB directory
itself (RocksDB ignores names it does not parse, as it ignores our
`.rbackup-checkpoint-*` directory there).

A killed backup leaves its checkpoint behind, and its hard links keep the space
of SSTs the DB deleted since; the next backup removes it.  Which ones are dead
cannot be told by pid: a backup in another pid namespace (a container) or on
another host sharing the filesystem has a pid that means nothing here.  So each
checkpoint has a lock file, `<checkpoint>.lock`, on which its backup holds an
open-file-description (OFD) lock for as long as the checkpoint exists; the
kernel (or the NFS lock manager) releases it when that process dies, however it
dies.  OFD rather than `flock`: NFS turns `flock` into a POSIX lock, which
belongs to the process, so another thread's running backup would look dead to
the cleanup of this one; OFD locks belong to the open file, here and over NFS.  A checkpoint is
dead exactly when its lock can be taken; one without a lock file (an older
rbackup made it, or its lock file was lost) is not provably dead and stays,
with a warning naming it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import struct
import tempfile
import uuid
from collections.abc import Iterator

from .errors import NotSupported, StorageError
from .format.tempnames import CHECKPOINT_TEMP_SUFFIX

log = logging.getLogger("rbackup")

PREFIX = ".rbackup-checkpoint-"
LOCK_SUFFIX = ".lock"


@contextlib.contextmanager
def checkpoint_dir(db_path: str, *, same_filesystem: bool = True) -> Iterator[str]:
    """Yield a not-yet-existing directory path for the checkpoint of the DB at
    `db_path`, its lock held; the checkpoint and its lock file are removed after.
    `same_filesystem=False`: for copies only (a live DB's staged MANIFEST prefix, CURRENT,
    OPTIONS and WALs), so beside the DB or in the temp directory, never inside the DB's own."""
    parent = _place_for(db_path) if same_filesystem else _staging_place_for(db_path)
    remove_dead_checkpoints(parent)
    path, fd = _locked_name(parent)
    try:
        yield path
    finally:
        for leftover in (path, path + CHECKPOINT_TEMP_SUFFIX):
            shutil.rmtree(leftover, ignore_errors=True)
        _unlink_quiet(path + LOCK_SUFFIX)
        os.close(fd)  # last: the lock guarded the directory until it was gone


def _place_for(db_path: str) -> str:
    real = os.path.realpath(db_path)
    try:
        db_dev = os.stat(real).st_dev
    except OSError as exc:
        raise StorageError(f"cannot stat the DB directory {db_path}: {exc}") from exc
    candidates = (os.path.dirname(real), tempfile.gettempdir(), real)
    for candidate in candidates:
        try:
            if os.stat(candidate).st_dev == db_dev and os.access(candidate, os.W_OK):
                return candidate
        except OSError:
            continue
    raise NotSupported(f"no writable directory on the filesystem of {db_path} to hold a checkpoint "
                       f"(tried {', '.join(candidates)})")


def _staging_place_for(db_path: str) -> str:
    candidates = (os.path.dirname(os.path.realpath(db_path)), tempfile.gettempdir())
    for candidate in candidates:
        if os.access(candidate, os.W_OK):
            return candidate
    raise NotSupported(f"no writable directory to stage the live files of {db_path} in "
                       f"(tried {', '.join(candidates)})")


def _locked_name(parent: str) -> tuple[str, int]:
    """A fresh checkpoint path whose lock file exists and is locked by us."""
    while True:
        path = os.path.join(parent, f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}")
        lock_path = path + LOCK_SUFFIX
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot create the checkpoint lock {lock_path}: {exc}") from exc
        try:
            # A cleaner may have taken the lock in the instant before ours and
            # removed the file: then this inode guards nothing, start again.
            if _try_lock(fd) and os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                return path, fd
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock the checkpoint lock {lock_path}: {exc}") from exc
        os.close(fd)


def _try_lock(fd: int) -> bool:
    """Take an exclusive OFD lock on the whole file without waiting; False if anyone holds one."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def remove_dead_checkpoints(directory: str) -> None:
    """Remove the checkpoints in `directory` whose lock nobody holds, and their lock files."""
    try:
        names = os.listdir(directory)
    except OSError as exc:
        log.warning("cannot list %s for leftover checkpoints: %s", directory, exc)
        return
    for name in sorted(n for n in names if n.startswith(PREFIX)):
        path = os.path.join(directory, name)
        if name.endswith(LOCK_SUFFIX):
            _remove_if_dead(path[:-len(LOCK_SUFFIX)])
        elif not os.path.lexists(_base(path) + LOCK_SUFFIX) and os.path.isdir(path):
            log.warning("leaving the checkpoint %s alone: it has no lock file, so whether the backup that "
                        "made it still runs cannot be told; delete it once no backup of this DB runs", path)


def _base(path: str) -> str:
    return path.removesuffix(CHECKPOINT_TEMP_SUFFIX)


def _remove_if_dead(path: str) -> None:
    lock_path = path + LOCK_SUFFIX
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return  # gone meanwhile, or not ours to judge
    try:
        try:
            if not _try_lock(fd):
                return  # held: its backup is running
        except OSError as exc:
            log.warning("cannot test the lock of the checkpoint %s: %s", path, exc)
            return
        log.info("removing the checkpoint %s left by a backup that died", path)
        for leftover in (path, path + CHECKPOINT_TEMP_SUFFIX):
            shutil.rmtree(leftover, ignore_errors=True)
        _unlink_quiet(lock_path)
    finally:
        os.close(fd)


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
