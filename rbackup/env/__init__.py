"""Storage envs: the BackupEnv contract and the envs that ship with the core.

The envs are imported on first use (PEP 562): importing `rbackup.env.base`, which
every module of the engine does, must not import fsspec (about 0.1 s) for a backup
to local disk, nor the encrypted env for a store that is not encrypted."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import AtomicWriter, BackendFactory, BackupEnv, Capabilities, FileInfo, ReadStream, check_path

if TYPE_CHECKING:
    from .encrypted import EncryptedEnv
    from .fsspec_env import FsspecEnv
    from .local import LocalEnv
    from .memory import MemoryEnv
    from .wrappers import ReadOnlyEnv, WrapperEnv

_LAZY = {"EncryptedEnv": "encrypted", "FsspecEnv": "fsspec_env", "LocalEnv": "local", "MemoryEnv": "memory",
         "ReadOnlyEnv": "wrappers", "WrapperEnv": "wrappers"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
