"""FsspecEnv: the BackupEnv over any fsspec filesystem.

This is the fallback for every protocol without a dedicated backend and the
base that store-specific backends refine (S3 overrides writes and commits;
HDFS uses it as is with `atomic_rename=True` over pyarrow's ArrowFSWrapper).

fsspec promises little that a backup engine can lean on: `mv` may be copy
plus delete, `"xb"` may be ignored, a writer that fails half-way may still
publish what it had, and listings may be cached.  So the defaults are
conservative and each promise of the contract is kept with the strongest
primitive the declared `Capabilities` allow:

- publish: temp name `.<name>.tmp` plus `mv` where renames are atomic
  (RocksDB's own naming, so its GC recognises leftovers); a publish that must
  not replace (`open_write_new`) renames a private temp with the store's
  rename that refuses an existing name where a subclass has one
  (`_rename_new`: HDFS), else looks first and renames; on stores that
  honour fsspec's deferred commit (`autocommit=False`: s3fs, gcsfs, adlfs)
  the final name is written directly and published by `commit()` or thrown
  away by `discard()`; on the rest, temp name plus `mv` again, which may be
  a copy but still shows the final name only once complete;
- create-if-absent: `open(path, "xb")` where the store declares conditional
  create, else exists-then-publish, which is best effort (a racing writer
  can slip in between) and documented as such;
- listings and stats drop fsspec's directory cache first, so another
  client's write is never hidden, and a directory that cannot be listed is
  an error, never an empty one (fsspec's generic `find` omits it).

Every exception leaves as an `rbackup.errors` exception whose message names
the full URL (credentials removed).
"""
from __future__ import annotations

import abc
import errno
import io
import logging
import posixpath
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import (
    AlreadyExists,
    BackupError,
    InvalidArgument,
    NotFound,
    NotSupported,
    PermissionDenied,
    StorageError,
)
from ..format.tempnames import exclusive_temp_path, temp_path

if TYPE_CHECKING:
    import fsspec

from .base import (
    OBJECT_STORE_BUFFER_SIZE,
    AtomicWriter,
    BackupEnv,
    Capabilities,
    FileInfo,
    ReadStream,
    check_path,
    translate_os_error,
)

log = logging.getLogger(__name__)

CONSERVATIVE = Capabilities(
    atomic_rename=False,
    conditional_create=False,
    durable_sync=False,
    directories=False,
    concurrency=8,
    transfer_width=4,
    buffer_size=OBJECT_STORE_BUFFER_SIZE,
)
"""What an unknown fsspec store is assumed to offer: nothing but plain reads and writes."""

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchUpload"})
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "403",
        "Forbidden",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AccountProblem",
    }
)


def _generic_find(fs: Any) -> bool:
    """Whether `fs.find` is fsspec's walk of `ls` calls, which omits what it cannot list."""
    from fsspec.asyn import AsyncFileSystem
    from fsspec.spec import AbstractFileSystem

    cls = type(fs)
    if isinstance(fs, AsyncFileSystem):
        return cls._find is AsyncFileSystem._find and cls._walk is AsyncFileSystem._walk
    return cls.find is AbstractFileSystem.find and cls.walk is AbstractFileSystem.walk


def redact_url(url: str) -> str:
    """`url` without a password in its user-info part (`ftp://u:pw@h/x` -> `ftp://u@h/x`).

    The URL ends up in every error message and log line, which must never
    carry a secret.
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}@{host}" if parts.username else host
    return urlunsplit(parts._replace(netloc=netloc))


def client_error_info(exc: BaseException) -> dict[str, Any] | None:
    """The `Error` part of a botocore-style ClientError in `exc` or its causes.

    s3fs, gcsfs and adlfs wrap the service's error in an OSError whose
    `__cause__` keeps the original; the error code there (NoSuchBucket,
    AccessDenied, ...) says more than the OSError subclass.  Duck-typed, so
    the core does not import botocore.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            return response["Error"]
        current = current.__cause__
    return None


def error_code(exc: BaseException) -> str | None:
    """The store's error code (e.g. "PreconditionFailed") behind `exc`, if any."""
    info = client_error_info(exc)
    return str(info.get("Code")) if info and info.get("Code") is not None else None


def translate_store_error(exc: BaseException, what: str) -> BackupError:
    """Map any store exception to the rbackup hierarchy; `what` names the operation and URL."""
    if isinstance(exc, BackupError):
        return exc
    if isinstance(exc, IsADirectoryError):
        return NotFound(f"{what}: a directory, not a file")
    info = client_error_info(exc)
    if info is not None:
        code = str(info.get("Code", ""))
        message = info.get("Message") or code
        if code == "NoSuchBucket":
            bucket = info.get("BucketName")
            name = f"bucket {bucket!r}" if bucket else "the bucket"
            return NotFound(f"{what}: {name} does not exist (NoSuchBucket)")
        if code in _NOT_FOUND_CODES:
            return NotFound(f"{what}: not found ({code})")
        if code in _DENIED_CODES:
            return PermissionDenied(f"{what}: permission denied ({code}: {message})")
        if code == "PreconditionFailed" and info.get("Condition") == "If-None-Match":
            return AlreadyExists(f"{what}: already exists")
        return StorageError(f"{what}: {code}: {message}")
    return translate_os_error(exc, what)


class _StreamReader(io.RawIOBase):
    """A store's read stream that raises only rbackup errors naming the file.

    `read` and `readinto` go straight to the store's file object (no extra
    buffering, no per-byte work); only exceptions are translated, by the env's
    own `_error`, as for every other call (a backend's translation applies).
    """

    def __init__(self, raw: Any, env: FsspecEnv, path: str) -> None:
        super().__init__()
        self._raw = raw
        self._env = env
        self._path = path

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self._raw.readinto(buffer)
        except Exception as exc:
            raise self._env._error(exc, self._path, "read") from exc

    def read(self, size: int | None = -1) -> bytes:
        try:
            # None, not -1, for "all": pyarrow's streams reject a negative size.
            return self._raw.read(None if size is None or size < 0 else size)
        except Exception as exc:
            raise self._env._error(exc, self._path, "read") from exc

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        if not self.closed:
            try:
                self._raw.close()
            finally:
                super().close()


class _FileWriter(AtomicWriter):
    """What every fsspec writer shares: errors name the file, a writer publishes
    at most once, a failed publish cleans up, and cleanup never raises (it runs
    while another exception is on its way out).  Parents are made by
    `FsspecEnv._open_in_dir`."""

    def __init__(self, env: FsspecEnv, path: str, target: str) -> None:
        self._env = env
        self._path = path
        self._done = False
        try:
            self._file = env._open_in_dir(target, self._open)
        except Exception as exc:
            raise env._error(exc, path, "write") from exc

    @abc.abstractmethod
    def _open(self, target: str) -> Any:
        """The store's writable file for `target` (parents already made)."""

    @abc.abstractmethod
    def _publish(self) -> None:
        """Make the whole file appear under its final name."""

    @abc.abstractmethod
    def _discard(self) -> None:
        """Drop everything written, publishing nothing."""

    def write(self, data: bytes | memoryview) -> int:
        try:
            return self._file.write(data)
        except Exception as exc:
            raise self._env._error(exc, self._path, "write") from exc

    def commit(self) -> None:
        if self._done:
            raise StorageError(f"write {self._env.describe(self._path)}: writer already finished")
        try:
            self._publish()
        except Exception as exc:
            self.abort()
            raise self._env._error(exc, self._path, "write") from exc
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._discard()
        except FileNotFoundError:
            pass
        except Exception:
            log.warning("could not clean up the aborted write of %s", self._env.describe(self._path), exc_info=True)


class _RenamingWriter(_FileWriter):
    """Write `<dir>/.<name>.tmp`, then `mv` it over the final name.

    Where the store declares `atomic_rename` (local disk, HDFS) readers see
    the old file or the whole new one.  It is also the fallback for stores
    that publish as they write (memory, sftp): there `mv` may be copy plus
    delete, but the final name still appears only once the data is complete,
    and a crash leaves only a `.tmp` file, which RocksDB's GC removes.
    """

    def __init__(self, env: FsspecEnv, path: str, tmp_path: str | None = None) -> None:
        self._tmp_path = tmp_path or temp_path(path)
        self._tmp = env._full(self._tmp_path)
        super().__init__(env, path, self._tmp)

    def _open(self, target: str) -> Any:
        return self._env.fs.open(target, "wb")

    def _publish(self) -> None:
        self._file.close()
        self._env._rename_replacing(self._tmp, self._env._full(self._path))

    def _discard(self) -> None:
        try:
            self._file.close()
        finally:
            self._env.fs.rm_file(self._tmp)


class _NoClobberWriter(_RenamingWriter):
    """`open_write_new` on a store with a rename that refuses an existing name (HDFS's `rename2`
    without OVERWRITE: `FsspecEnv._rename_new`).

    The data goes to a temp name private to this writer (`.<name>.<12 hex>.tmp`: two writers
    publishing the same name never share a temp), and that one rename publishes it: the check
    that the name is free is the publish itself, atomic against every other client, where the
    generic `open_write_new` looks first and then renames (replacing a file that appeared in
    between).  A refusal raises AlreadyExists and the temp is removed by the abort.
    """

    def __init__(self, env: FsspecEnv, path: str) -> None:
        self._size = 0
        super().__init__(env, path, exclusive_temp_path(path))

    def write(self, data: bytes | memoryview) -> int:
        n = super().write(data)
        self._size += n
        return n

    def _publish(self) -> None:
        self._file.close()
        size = self._size
        self._env._publish_new(self._path, self._tmp_path, lambda: self._env.stat(self._path).size == size)


class _DeferredWriter(_FileWriter):
    """Write the final name through fsspec's deferred commit (`autocommit=False`).

    fsspec's buffered files (s3fs, gcsfs, adlfs) and local files then publish
    only on `commit()` and throw everything away on `discard()`: that is what
    makes an aborted write leave nothing, where a plain `close()` (or the
    garbage collector closing an abandoned file) would publish the partial
    data.  (fsspec stages local files in the system temp directory, so their
    commit is a rename only on the same file system: declare `atomic_rename`
    for local disk.)
    """

    def __init__(self, env: FsspecEnv, path: str) -> None:
        super().__init__(env, path, env._full(path))

    def _open(self, target: str) -> Any:
        return self._env._open_deferred(target)

    def _publish(self) -> None:
        self._file.close()
        self._file.commit()

    def _discard(self) -> None:
        _discard(self._file)


def _discard(file: Any) -> None:
    """Throw away a deferred (autocommit=False) file without publishing anything."""
    from fsspec.spec import AbstractBufferedFile  # fsspec is imported by whoever made `file`

    if isinstance(file, AbstractBufferedFile):
        file.discard()
        # close() would first flush the buffered tail to the store.
        file.closed = True
    else:
        file.close()
        file.discard()


class FsspecEnv(BackupEnv):
    """BackupEnv over an fsspec filesystem `fs`, rooted at `root` (a path in `fs`).

    `url` is only used in messages (its password, if any, is dropped).
    `capabilities` describe what `fs` really guarantees; the default assumes
    nothing (no atomic rename, no conditional create, 4 transfers at once).
    The `sync` flags are accepted but fsspec has no fsync, so
    `durable_sync` should stay False unless a subclass adds one.
    """

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        root: str,
        *,
        url: str,
        capabilities: Capabilities | None = None,
    ) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = redact_url(url).rstrip("/")
        self.capabilities = capabilities if capabilities is not None else CONSERVATIVE
        self._prefix = self.root + "/"
        self._deferred_commit: bool | None = None

    @classmethod
    def from_url(cls, url: str, storage_options: dict[str, Any] | None = None) -> FsspecEnv:
        """An env for any fsspec URL (`gcs://b/p`, `sftp://h/p`, `memory://x`, ...)."""
        import fsspec.core  # here, not at the top: S3's native client never needs fsspec

        try:
            fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        except ImportError as exc:
            raise NotSupported(f"{redact_url(url)}: the fsspec implementation is not installed ({exc})") from exc
        except ValueError as exc:
            raise InvalidArgument(f"{redact_url(url)}: {exc}") from exc
        except OSError as exc:  # some connect as they are made (ftp, sftp), or open a file (zip)
            raise translate_store_error(exc, f"connect {redact_url(url)}") from exc
        return cls(fs, root, url=url)

    # -- helpers ---------------------------------------------------------------
    def _full(self, path: str) -> str:
        """The store path of a relative path (validated: nothing escapes the root)."""
        return self._prefix + check_path(path)

    def _error(self, exc: BaseException, path: str, action: str) -> BackupError:
        return translate_store_error(exc, f"{action} {self.describe(path)}")

    def _is_dir(self, full: str) -> bool:
        try:
            return bool(self.fs.isdir(full))
        except Exception:
            return False

    def _open_for_read(self, full: str) -> Any:
        """The store's file object for reading; subclasses tune block sizes here."""
        return self.fs.open(full, "rb")

    def _open_deferred(self, full: str) -> Any:
        """Open `full` for writing with publication deferred to `commit()`.

        `_open`, not `open`: `open(autocommit=False)` also registers the file
        in the filesystem-wide `fs.transaction`, which would keep every file
        ever written alive and let another thread's transaction commit or
        discard ours.
        """
        return self.fs._open(full, "wb", autocommit=False)

    def _defers_commit(self) -> bool:
        """Whether this store really holds back a write until `commit()`.

        Many fsspec stores silently ignore `autocommit=False` and publish as
        they write (memory, arrow, sftp); the only reliable test is to open a
        file and look, once per env, under a temp name nobody reads.
        """
        if self._deferred_commit is None:
            probe = self._full(temp_path("rbackup-probe"))
            try:
                f = self._open_deferred(probe)
                self._deferred_commit = getattr(f, "autocommit", True) is False
                if self._deferred_commit:
                    _discard(f)
                else:
                    f.close()
                    self.fs.rm_file(probe)
            except Exception:
                # Renaming is correct on every store, only slower on some.
                log.debug("%s: deferred-commit probe failed", self.url, exc_info=True)
                self._deferred_commit = False
            log.debug("%s: deferred commit %s", self.url, "honoured" if self._deferred_commit else "ignored")
        return self._deferred_commit

    _open_makes_parents = False
    """Whether opening a file for writing makes its missing parent directories (HDFS's create
    does): then `_open_in_dir` opens first and makes them only if the open says they are missing,
    saving a request per file."""

    def _open_in_dir(self, target: str, open_: Callable[[str], Any]) -> Any:
        """`open_(target)` for writing, `target`'s parent directories made.  Most stores need them
        made first (ArrowFSWrapper over local disk; a no-op on object stores); where the store's
        open makes them (`_open_makes_parents`) they are made only after an open that found them
        missing (ENOENT), and the open tried again."""
        parent = posixpath.dirname(target)
        if not self._open_makes_parents:
            self.fs.makedirs(parent, exist_ok=True)
            return open_(target)
        try:
            return open_(target)
        except FileNotFoundError:
            self.fs.makedirs(parent, exist_ok=True)
            return open_(target)

    def _rename_new(self, source: str, destination: str) -> None:
        """Rename the store path `source` onto `destination` in one step unless `destination`
        exists: then raise FileExistsError and change nothing.

        No fsspec store offers that (`mv` replaces, or copies), so the default raises
        NotSupported.  A subclass whose store has one (HDFS) implements it and declares
        `exclusive_publish` and `atomic_rename`: `open_write_new` then publishes through it."""
        raise NotSupported(f"{self.url}: no rename that refuses an existing name")

    def _rename_replacing(self, source: str, destination: str) -> None:
        """Rename the store path `source` onto `destination`, replacing it if it exists: fsspec's
        `mv` (one step where the store renames atomically; a subclass whose store can replace
        in one request, HDFS, overrides it)."""
        self.fs.mv(source, destination)

    def _publish_new(self, path: str, tmp_path: str, is_ours: Callable[[], bool]) -> None:
        """Rename `tmp_path`, a temp name private to this call, onto `path` with `_rename_new`:
        AlreadyExists if `path` exists.  A refusal whose temp is gone means the rename was ours
        and only its reply was lost (a retried request): success, if `is_ours()` confirms what
        `path` holds (the temp could also have been removed by another writer's garbage
        collection).  rbackup's `exists`, not fsspec's, which says False for any error."""
        try:
            self._rename_new(self._full(tmp_path), self._full(path))
        except FileExistsError:
            if not self.exists(tmp_path) and is_ours():
                return
            raise AlreadyExists(f"write {self.describe(path)}: already exists") from None

    def _create_conditional(self, path: str, data: bytes) -> None:
        """Create-if-absent with the store's own atomic primitive (`"xb"`)."""
        full = self._full(path)
        try:
            with self._open_in_dir(full, lambda target: self.fs.open(target, "xb")) as f:
                f.write(data)
        except Exception as exc:
            raise self._error(exc, path, "create") from exc

    # -- the contract ------------------------------------------------------------
    def open_read(self, path: str) -> ReadStream:
        path = check_path(path)
        full = self._full(path)
        try:
            raw = self._open_for_read(full)
        except Exception as exc:
            error = self._error(exc, path, "read")
            # Not every file system says "is a directory" with IsADirectoryError
            # (pyarrow does not); object stores' errors carry a code instead.
            if type(error) is StorageError and client_error_info(exc) is None and self._is_dir(full):
                error = NotFound(f"read {self.describe(path)}: a directory, not a file")
            raise error from exc
        return _StreamReader(raw, self, path)

    def open_write(self, path: str, *, sync: bool = True) -> AtomicWriter:
        path = check_path(path)
        if not self.capabilities.atomic_rename and self._defers_commit():
            return _DeferredWriter(self, path)
        return _RenamingWriter(self, path)

    def open_write_new(self, path: str, *, sync: bool = True) -> AtomicWriter:
        if self.capabilities.exclusive_publish and self.capabilities.atomic_rename:
            return _NoClobberWriter(self, check_path(path))
        return super().open_write_new(path, sync=sync)

    def create_exclusive(self, path: str, data: bytes, *, sync: bool = True) -> None:
        path = check_path(path)
        if self.capabilities.conditional_create:
            self._create_conditional(path, data)
            return
        # Best effort: another writer can create the name between the check
        # and the publish; the publish itself is still all-or-nothing.
        if self.exists(path):
            raise AlreadyExists(f"create {self.describe(path)}: already exists")
        self.write_bytes(path, data, sync=sync)

    def _find(self, top: str) -> dict[str, dict[str, Any]]:
        """Every file below `top` (full name -> fsspec info), fresh from the store;
        FileNotFoundError where `top` does not exist.  `list` keeps those under `top/`.

        A listing must never leave anything out: a backup whose files are missing from it
        looks corrupt, and garbage collection deletes what only a corrupt backup holds.
        fsspec's generic `find` (fsspec's walk, used by HDFS's ArrowFSWrapper, ftp, sftp,
        webhdfs, http...) omits every directory whose listing fails (its `on_error` is not
        passed down the tree), so for those the walk is done here, one `ls` per directory as
        fsspec's does: a failure is raised, except a directory below `top` that is gone by
        the time it is listed (a concurrent delete took it, with its files).  Stores with a
        `find` of their own (one flat listing: s3fs, gcsfs, adlfs, memory) keep it."""
        self.fs.invalidate_cache()
        if not _generic_find(self.fs):
            found: dict[str, dict[str, Any]] = self.fs.find(top, detail=True)
            return found
        files: dict[str, dict[str, Any]] = {}
        pending, seen = [top], {top.rstrip("/")}
        while pending:
            directory = pending.pop()
            try:
                entries = self.fs.ls(directory, detail=True)
            except FileNotFoundError:
                if directory == top:
                    raise
                continue
            for info in entries:
                name = info["name"].rstrip("/")
                if info.get("type") != "directory":
                    files[name] = info
                elif name not in seen:  # some stores list a directory itself among its entries
                    seen.add(name)
                    pending.append(name)
        return files

    def list(self, prefix: str = "") -> list[FileInfo]:
        top = self._full(prefix) if prefix else self.root
        try:
            found = self._find(top)
        except FileNotFoundError as exc:
            # A missing directory has no files; a missing bucket is an error.
            if error_code(exc) == "NoSuchBucket":
                raise self._error(exc, prefix, "list") from exc
            found = {}
        except Exception as exc:
            raise self._error(exc, prefix, "list") from exc
        below = top + "/"
        files = [
            FileInfo(name[len(self._prefix):], int(info["size"]))
            for name, info in found.items()
            if name.startswith(below) and info.get("type", "file") == "file"
        ]
        files.sort(key=lambda f: f.path)
        return files

    def stat(self, path: str) -> FileInfo:
        path = check_path(path)
        full = self._full(path)
        try:
            self.fs.invalidate_cache(full)
            info = self.fs.info(full)
        except Exception as exc:
            raise self._error(exc, path, "stat") from exc
        if info.get("type") != "file":
            raise NotFound(f"stat {self.describe(path)}: not a file")
        return FileInfo(path, int(info["size"]))

    def delete(self, paths: Iterable[str]) -> None:
        checked = [check_path(p) for p in paths]
        for path in checked:
            try:
                self.fs.rm_file(self._full(path))
            except FileNotFoundError:
                pass
            except Exception as exc:
                raise self._error(exc, path, "delete") from exc

    def makedirs(self, path: str = "") -> None:
        full = self._full(path) if path else self.root
        try:
            self.fs.makedirs(full, exist_ok=True)
        except Exception as exc:
            raise self._error(exc, path, "makedirs") from exc

    def remove_dir(self, path: str) -> None:
        path = check_path(path)
        full = self._full(path)
        try:
            self.fs.invalidate_cache(full)
            # Look first: ArrowFSWrapper's rmdir deletes a directory recursively.
            if self.fs.ls(full, detail=False):
                return
            self.fs.rmdir(full)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise self._error(exc, path, "remove_dir") from exc
        except Exception as exc:
            raise self._error(exc, path, "remove_dir") from exc
