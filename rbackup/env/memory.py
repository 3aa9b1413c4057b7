"""MemoryEnv: a thread-safe in-process store for tests and dry runs.

It behaves like an object store (no directories, atomic whole-object
publish, atomic create-if-absent), so the engine's paths for stores without
directories are exercised in every fast test.  Named stores live in a
class-level registry, like fsspec's memory file system, so two envs opened on
`memory://name` see the same files; an unnamed env gets a private store.
"""
from __future__ import annotations

import io
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import AlreadyExists, InvalidArgument, NotFound
from .base import (
    OBJECT_STORE_BUFFER_SIZE,
    AtomicWriter,
    BackupEnv,
    Capabilities,
    FileInfo,
    ReadStream,
    check_path,
    refuse_unknown_options,
)

_PROTOCOL = "memory://"


@dataclass
class _Store:
    """The files of one memory store: path -> bytes, guarded by one lock."""

    files: dict[str, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class MemoryEnv(BackupEnv):
    """An in-memory store; `MemoryEnv("name")` or `MemoryEnv(url="memory://name")` share one."""

    capabilities = Capabilities(
        atomic_rename=False,
        conditional_create=True,
        durable_sync=False,
        directories=False,
        concurrency=8,  # meta files are read 8 at a time, like a remote store's
        transfer_width=4,  # an object store stand-in: wide transfers run in every fast test
        buffer_size=OBJECT_STORE_BUFFER_SIZE,
    )

    _registry: ClassVar[dict[str, _Store]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, root: str = "", *, url: str | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        name = url if root == "" and url is not None else root
        refuse_unknown_options(_PROTOCOL + name.removeprefix(_PROTOCOL), storage_options or {}, ())
        if name.startswith(_PROTOCOL):
            name = name[len(_PROTOCOL):]
        name = name.strip("/")
        self.name = name
        if not name:
            self.url = _PROTOCOL + "(private)"
            self._store = _Store()
            return
        self.url = _PROTOCOL + name
        with MemoryEnv._registry_lock:
            self._store = MemoryEnv._registry.setdefault(name, _Store())

    @classmethod
    def discard(cls, name: str) -> None:
        """Forget a named store (its files go once no env uses it); tests call this."""
        with cls._registry_lock:
            cls._registry.pop(name.removeprefix(_PROTOCOL).strip("/"), None)

    # -- the contract -----------------------------------------------------------
    def open_read(self, path: str) -> ReadStream:
        path = check_path(path)
        with self._store.lock:
            data = self._store.files.get(path)
        if data is None:
            raise NotFound(f"{self.describe(path)}: not found")
        # BytesIO over bytes shares the buffer: no copy until someone writes to it.
        return io.BytesIO(data)

    def open_write(self, path: str, *, sync: bool = True) -> AtomicWriter:
        return _MemoryWriter(self, check_path(path))

    def create_exclusive(self, path: str, data: bytes, *, sync: bool = True) -> None:
        path = check_path(path)
        content = bytes(data)
        with self._store.lock:
            if path in self._store.files:
                raise AlreadyExists(f"{self.describe(path)}: already exists")
            self._store.files[path] = content

    def list(self, prefix: str = "") -> list[FileInfo]:
        start = check_path(prefix) + "/" if prefix else ""
        with self._store.lock:
            found = [FileInfo(p, len(d)) for p, d in self._store.files.items() if p.startswith(start)]
        found.sort(key=lambda info: info.path)
        return found

    def stat(self, path: str) -> FileInfo:
        path = check_path(path)
        with self._store.lock:
            data = self._store.files.get(path)
        if data is None:
            raise NotFound(f"{self.describe(path)}: not found")
        return FileInfo(path, len(data))

    def delete(self, paths: Iterable[str]) -> None:
        targets = [check_path(p) for p in paths]
        with self._store.lock:
            for path in targets:
                self._store.files.pop(path, None)

    def makedirs(self, path: str = "") -> None:
        if path:
            check_path(path)

    def remove_dir(self, path: str) -> None:
        if path:
            check_path(path)

    def _publish(self, path: str, data: bytes) -> None:
        with self._store.lock:
            self._store.files[path] = data


class _MemoryWriter(AtomicWriter):
    def __init__(self, env: MemoryEnv, path: str) -> None:
        self._env = env
        self._path = path
        self._buf: io.BytesIO | None = io.BytesIO()
        self._done = False

    def write(self, data: bytes | memoryview) -> int:
        if self._buf is None:
            raise InvalidArgument(f"{self._env.describe(self._path)}: writer already closed")
        return self._buf.write(data)

    def commit(self) -> None:
        if self._done:
            return
        if self._buf is None:
            raise InvalidArgument(f"{self._env.describe(self._path)}: writer already aborted")
        # getvalue() hands over BytesIO's own bytes object when nothing else holds it.
        self._env._publish(self._path, self._buf.getvalue())
        self._buf = None
        self._done = True

    def abort(self) -> None:
        if not self._done:
            self._buf = None
