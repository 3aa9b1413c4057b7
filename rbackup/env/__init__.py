"""Storage envs: the BackupEnv contract and the envs that ship with the core.

The envs are imported on first use (PEP 562): importing `rbackup.env.base`, which
every module of the engine does, must not import fsspec (about 0.1 s) for a backup
to local disk, nor the encrypted env for a store that is not encrypted."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports
from .base import AtomicWriter, BackendFactory, BackupEnv, Capabilities, FileInfo, ReadStream, check_path

if TYPE_CHECKING:
    from .encrypted import EncryptedEnv
    from .fsspec_env import FsspecEnv
    from .local import LocalEnv
    from .memory import MemoryEnv
    from .wrappers import ReadOnlyEnv, WrapperEnv

_LAZY = {"EncryptedEnv": "encrypted", "FsspecEnv": "fsspec_env", "LocalEnv": "local", "MemoryEnv": "memory",
         "ReadOnlyEnv": "wrappers", "WrapperEnv": "wrappers"}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "AtomicWriter",
    "BackendFactory",
    "BackupEnv",
    "Capabilities",
    "EncryptedEnv",
    "FileInfo",
    "FsspecEnv",
    "LocalEnv",
    "MemoryEnv",
    "ReadOnlyEnv",
    "ReadStream",
    "WrapperEnv",
    "check_path",
]
