"""The BackupEnv contract: the only door between the engine and a store.

The engine needs very little from a store, so the contract is small (restic's
backend interface and fsspec's AbstractFileSystem were the models): streaming
read, atomic publish of a whole file, create-if-absent for commits and locks,
recursive listing with sizes, stat, bulk delete, and directory upkeep for the
stores that have directories.  Each backend states its `Capabilities` so the
engine can pick safe behaviour (e.g. how wide to run transfers) without
knowing which store it talks to.

Paths are always relative to the env's root, '/'-separated, never absolute and
never containing '..'; `check_path` enforces that in one place so a hostile
meta file cannot steer any backend outside its root.
"""
from __future__ import annotations

import abc
import errno
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import (
    AlreadyExists,
    BackupError,
    FileTooLarge,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StorageError,
)
from ..format.paths import check_path as check_path  # re-exported: the contract names it; the rule itself is pure

if TYPE_CHECKING:
    from typing_extensions import Buffer


DISK_BUFFER_SIZE = 4 << 20
"""The copy buffer that suits a disk or HDFS: few, large reads."""
OBJECT_STORE_BUFFER_SIZE = 1 << 20
"""Object stores run 16 files wide and buffer their own parts: 1 MiB here keeps a
backup to S3 under ~200 MB of RSS at no measured cost in throughput."""


@dataclass(frozen=True)
class Capabilities:
    """What a store can promise; the engine adapts to it, never to a store's name."""

    atomic_rename: bool = False
    """Publish goes through a temp name plus rename (local disk, HDFS)."""
    conditional_create: bool = False
    """`create_exclusive` is atomic against other clients (O_EXCL, If-None-Match)."""
    exclusive_publish: bool = False
    """`open_write_new` is atomic against other clients (S3: If-None-Match on the PUT); else it
    looks just before publishing, which a flock makes exact."""
    durable_sync: bool = False
    """An fsync-like call makes written data survive a power loss.  Without it the engine
    logs once per env, when a write asks for `sync=True`, that its sync is best effort."""
    directories: bool = False
    """The store has real directories that must be created and removed (`makedirs`,
    `remove_dir`, `sync_dir` do real work); nothing else is inferred from it."""
    concurrency: int = 1
    """Requests at once this store serves well: the engine reads meta files this many at a
    time when it loads a backup directory (1 on local disk, where parsing holds the GIL and one
    thread is fastest; a round trip each on a remote store), and S3 sizes its connection pool by it."""
    transfer_width: int = 1
    """Files the engine copies at once on this store, at least: the width is
    `max(max_background_operations, transfer_width)`.  Object stores are latency-bound and
    want many (S3: 16); disks and HDFS are bandwidth-bound and follow max_background_operations."""
    buffer_size: int = OBJECT_STORE_BUFFER_SIZE
    """Preferred copy buffer per transfer thread, in bytes (`io_buffer_size` overrides it):
    big for disks (fewer syscalls), small for wide object-store transfers, which buffer
    their own parts."""


class ReadStream(Protocol):
    """What `open_read` returns: the engine streams with `readinto` into its own
    buffers (no copy per chunk) and uses `read` for small files."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readinto(self, buffer: Buffer, /) -> int | None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None, /) -> Any: ...


class BackendFactory(Protocol):
    """The constructor the registry calls for a URL's protocol: every backend
    class registered under the `rbackup.backends` entry point has it."""

    def __call__(self, url: str, *, storage_options: dict[str, Any] | None = None) -> BackupEnv: ...


def refuse_unknown_options(what: str, options: Iterable[str], known: Iterable[str]) -> None:
    """Raise `InvalidArgument` naming every option of `options` not in `known`.

    Every backend calls it on its `storage_options`: a misspelt option that
    was silently dropped would leave a setting the user thinks is in force
    (a `part_sise` keeps the default part size without a word)."""
    accepted = set(known)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InvalidArgument(f"{what}: unknown storage_options {unknown}; accepted: {sorted(accepted) or 'none'}")


@dataclass(frozen=True)
class FileInfo:
    path: str
    """Relative to the env root, '/'-separated."""
    size: int


@dataclass(frozen=True)
class StoredChecksum:
    """A file's CRC-32C as the store itself computed it over the bytes it received, and the
    size of the object it holds now (both read from one answer of the store)."""

    size: int
    crc32c: int
    """Unmasked CRC-32C of the whole file, as RocksDB's meta files record it."""


def translate_os_error(exc: BaseException, what: str) -> BackupError:
    """Map an OSError (or a store exception that subclasses it) to our hierarchy."""
    if isinstance(exc, BackupError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"{what}: not found")
    if isinstance(exc, FileExistsError):
        return AlreadyExists(f"{what}: already exists")
    if isinstance(exc, PermissionError):
        return PermissionDenied(f"{what}: permission denied ({exc})")
    if isinstance(exc, NotADirectoryError):
        return InvalidArgument(f"{what}: a path component is not a directory")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return StorageError(f"{what}: no space left on device")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


class AtomicWriter(abc.ABC):
    """A file being written: nothing is visible under its name until `commit`.

    Use as a context manager: a clean exit commits, an exception aborts, so a
    failed or interrupted copy can never leave a half file under a real name.
    """

    @abc.abstractmethod
    def write(self, data: bytes | memoryview) -> int:
        ...

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the whole file appear under its name (durably, if asked to sync)."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard everything written; safe to call more than once or after commit fails."""

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class _NewFileWriter(AtomicWriter):
    """`open_write_new` for stores without an atomic create: look, then publish."""

    def __init__(self, env: BackupEnv, path: str, inner: AtomicWriter) -> None:
        self._env = env
        self._path = path
        self._inner = inner

    def write(self, data: bytes | memoryview) -> int:
        return self._inner.write(data)

    def commit(self) -> None:
        try:
            taken = self._env.exists(self._path)
        except BaseException:
            self._inner.abort()
            raise
        if taken:
            self._inner.abort()
            raise AlreadyExists(f"write {self._env.describe(self._path)}: already exists")
        self._inner.commit()

    def abort(self) -> None:
        self._inner.abort()


class BackupEnv(abc.ABC):
    """Abstract store.  Subclasses raise only `rbackup.errors` exceptions."""

    capabilities: Capabilities = Capabilities()
    url: str = ""
    """Where the env points, for messages; never contains credentials."""

    # -- the contract -------------------------------------------------------
    @abc.abstractmethod
    def open_read(self, path: str) -> ReadStream:
        """A readable binary stream (supports `read` and `readinto`); NotFound if absent."""

    @abc.abstractmethod
    def open_write(self, path: str, *, sync: bool = True) -> AtomicWriter:
        """Start publishing `path`: all of it appears on commit, or nothing does.

        An existing file of that name is replaced on commit.
        """

    def open_write_new(self, path: str, *, sync: bool = True) -> AtomicWriter:
        """Like `open_write`, but the commit never replaces a file: AlreadyExists instead.

        A backup writes its files this way so that a writer which lost the
        lock (it stalled past `lock_ttl`) can never overwrite a file another
        writer made.  Stores with `conditional_create` make the check part of
        the publish (S3: If-None-Match on the PUT); this default checks just
        before the commit, which is exact under a flock and best effort elsewhere.
        """
        return _NewFileWriter(self, path, self.open_write(path, sync=sync))

    @abc.abstractmethod
    def create_exclusive(self, path: str, data: bytes, *, sync: bool = True) -> None:
        """Create `path` holding `data` only if it does not exist: AlreadyExists otherwise.

        This is the commit of a backup (meta/<id>) and the taking of a lock.
        Where `capabilities.conditional_create` is False the check is
        best-effort (exists, then write) and the README says so.
        """

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[FileInfo]:
        """Every file below `prefix` (recursively) with its size; [] if none.

        Temp files are included: garbage collection needs to see them.  Complete or an
        error: a directory that could not be listed must raise, never be left out, since
        the backups whose files a listing lacks look corrupt, and garbage collection
        deletes what only a corrupt backup holds.  A directory deleted while the listing
        runs may be left out (its files are gone).
        """

    def list_sizes(self, prefix: str = "", *, known: Mapping[str, int] | None = None) -> dict[str, int]:
        """`list` as path -> size, in no particular order.

        `known`: sizes the caller already holds for files that cannot have changed size while they
        kept their name (a writer engine passes the `shared_checksum/` files its last load found as the
        meta files say: such a name fixes the file's bytes, and no file is ever written in place).  A store
        that pays a request per file for sizes (a local directory: a `stat` each) may return these for
        the names it still lists instead of asking again; names it no longer lists are left out, and
        new names are asked as usual.  The default ignores `known`: a listing that carries sizes
        (S3, HDFS) costs nothing more."""
        return {info.path: info.size for info in self.list(prefix)}

    @abc.abstractmethod
    def stat(self, path: str) -> FileInfo:
        """Size of one file; NotFound if it does not exist (directories are not files)."""

    @abc.abstractmethod
    def delete(self, paths: Iterable[str]) -> None:
        """Delete files; names that do not exist are ignored (deletion is idempotent)."""

    @abc.abstractmethod
    def makedirs(self, path: str = "") -> None:
        """Create a directory and its parents ("" is the root); a no-op on object stores."""

    @abc.abstractmethod
    def remove_dir(self, path: str) -> None:
        """Remove a directory if it is empty; silently keep it otherwise or if absent."""

    def local_path(self, path: str = "") -> str | None:
        """Where `path` is on this machine's filesystem, else None (the default).

        `local_path("")` is the backup directory itself when it is a local directory;
        `local_path(file)` is a file holding exactly the bytes `open_read(file)` returns
        (None when the store transforms them, as encryption does, even in a local directory).
        Returning a path is a promise the engine acts on, in exactly these places:

        - the writer lock (`lock.hold_writer_lock`) is an `flock` on `<local_path("")>/rbackup.lock`
          (exact, released by the kernel when the process dies) instead of a lease object
          in the store (`create_exclusive` plus a TTL);
        - restore refuses a `db_dir` or `wal_dir` inside `local_path("")`
          (a restore must not write into the backup it reads);
        - `open_backup` links `local_path(file)` into its view instead of
          fetching the file through its cache;
        - the CLI reports a missing `local_path("")` as NotFound instead of an empty list.

        How wide meta files are read is not among them: that is `capabilities.concurrency`."""
        return None

    def stored_checksum(self, path: str) -> StoredChecksum | None:
        """The whole-file CRC-32C the store keeps for `path`, read without reading the data; None
        (the default) to have the file read back instead.

        `verify_backup(..., verify_with_checksum=True)` compares it with the meta file's CRC-32C
        instead of downloading the file.  A store may return one only for a file whose bytes it
        checked against that CRC-32C when they were written (refusing the write otherwise), and
        only once it has shown that it checks (S3: a probe PUT with a wrong checksum must be
        refused): a value a store merely echoes back proves nothing.  What it cannot show is
        damage inside the store after the write; that is the store's own durability promise."""
        check_path(path)
        return None

    def sync_dir(self, path: str = "") -> None:  # noqa: B027 (a no-op unless the store has directories)
        """Make earlier renames in `path` durable; only stores with directories care."""

    def close(self) -> None:  # noqa: B027 (a no-op unless the store holds connections)
        """Release connections and handles."""

    # -- conveniences built on the contract ----------------------------------
    def read_bytes(self, path: str, limit: int) -> bytes:
        """Read a small file whole, refusing one larger than `limit` with `FileTooLarge`
        (a lying store or a tampered directory must not make us allocate without bound)."""
        with self.open_read(path) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise FileTooLarge(f"{self.describe(path)}: larger than {limit} bytes")
        return data

    def write_bytes(self, path: str, data: bytes, *, sync: bool = True) -> None:
        with self.open_write(path, sync=sync) as w:
            w.write(data)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except NotFound:
            return False
        return True

    def describe(self, path: str = "") -> str:
        """A human name for a path in this store, for error messages and logs."""
        base = self.url.rstrip("/")
        return f"{base}/{path}" if path else base

    def __enter__(self) -> BackupEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
