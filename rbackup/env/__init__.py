"""Storage envs: the BackupEnv contract and the envs that ship with the core."""
from .base import AtomicWriter, BackupEnv, Capabilities, FileInfo, check_path
from .encrypted import EncryptedEnv
from .fsspec_env import FsspecEnv
from .local import LocalEnv
from .memory import MemoryEnv
from .wrappers import CountingEnv, FaultInjectionEnv, InjectedFault, ReadOnlyEnv, WrapperEnv, fail_nth

__all__ = [
    "AtomicWriter",
    "BackupEnv",
    "Capabilities",
    "FileInfo",
    "check_path",
    "EncryptedEnv",
    "FsspecEnv",
    "LocalEnv",
    "MemoryEnv",
    "CountingEnv",
    "FaultInjectionEnv",
    "InjectedFault",
    "ReadOnlyEnv",
    "WrapperEnv",
    "fail_nth",
]
