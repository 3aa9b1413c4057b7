"""Storage envs: the BackupEnv contract and the envs that ship with the core."""
from .base import AtomicWriter, BackendFactory, BackupEnv, Capabilities, FileInfo, ReadStream, check_path
from .encrypted import EncryptedEnv
from .fsspec_env import FsspecEnv
from .local import LocalEnv
from .memory import MemoryEnv
from .wrappers import ReadOnlyEnv, WrapperEnv

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
