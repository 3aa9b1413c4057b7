"""Behaviour layered on any env (restic's backend wrappers were the model).

A wrapper is itself a `BackupEnv` holding an inner one, so features that are
not about a particular store are written once and stack on every backend,
including third-party ones:

* `WrapperEnv`: delegates everything; subclasses override only what they change.
* `ReadOnlyEnv`: every mutation raises NotSupported; a read-only engine sits
  on it so that no code path, however buggy, can write or delete.

The test doubles built on `WrapperEnv` (counting, fault injection) live in
`rbackup.testing.doubles`, next to the conformance kit.
"""
from __future__ import annotations

from collections.abc import Iterable

from ..errors import NotSupported
from .base import AtomicWriter, BackupEnv, Capabilities, FileInfo, ReadStream, StoredChecksum


class WrapperEnv(BackupEnv):
    """Delegates everything to `inner`; subclasses override only what they change.

    The conveniences (`read_bytes`, `write_bytes`, `exists`) are inherited, not
    delegated, so they pass through the wrapper's own contract methods.
    """

    def __init__(self, inner: BackupEnv) -> None:
        self.inner = inner

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        return self.inner.capabilities

    @property
    def url(self) -> str:  # type: ignore[override]
        return self.inner.url

    def describe(self, path: str = "") -> str:
        return self.inner.describe(path)

    def open_read(self, path: str) -> ReadStream:
        return self.inner.open_read(path)

    def open_write(self, path: str, *, sync: bool = True) -> AtomicWriter:
        return self.inner.open_write(path, sync=sync)

    def create_exclusive(self, path: str, data: bytes, *, sync: bool = True) -> None:
        self.inner.create_exclusive(path, data, sync=sync)

    def list(self, prefix: str = "") -> list[FileInfo]:
        return self.inner.list(prefix)

    def stat(self, path: str) -> FileInfo:
        return self.inner.stat(path)

    def delete(self, paths: Iterable[str]) -> None:
        self.inner.delete(paths)

    def makedirs(self, path: str = "") -> None:
        self.inner.makedirs(path)

    def remove_dir(self, path: str) -> None:
        self.inner.remove_dir(path)

    def sync_dir(self, path: str = "") -> None:
        self.inner.sync_dir(path)

    def local_path(self, path: str = "") -> str | None:
        return self.inner.local_path(path)

    def stored_checksum(self, path: str) -> StoredChecksum | None:
        """The inner store's: a wrapper that changes the bytes (encryption) must return None."""
        return self.inner.stored_checksum(path)

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"


class ReadOnlyEnv(WrapperEnv):
    """Reads pass through; every mutation raises NotSupported before reaching the store."""

    def _refuse(self, op: str, path: str) -> NotSupported:
        return NotSupported(f"read-only backup env {self.url}: {op} {path!r} refused")

    def open_write(self, path: str, *, sync: bool = True) -> AtomicWriter:
        raise self._refuse("open_write", path)

    def create_exclusive(self, path: str, data: bytes, *, sync: bool = True) -> None:
        raise self._refuse("create_exclusive", path)

    def delete(self, paths: Iterable[str]) -> None:
        raise self._refuse("delete", ", ".join(paths))

    def makedirs(self, path: str = "") -> None:
        raise self._refuse("makedirs", path)

    def remove_dir(self, path: str) -> None:
        raise self._refuse("remove_dir", path)

    def sync_dir(self, path: str = "") -> None:
        """Nothing was written through this env, so there is nothing to make durable."""
