"""The rule every backup-relative path obeys, kept with the pure code.

Paths in a backup directory are relative to its root, '/'-separated, never
absolute and never containing '..'.  Meta-file parsing and every env apply
`check_path`, so a hostile meta file cannot steer any backend outside its root;
the envs get it through the `BackupEnv` contract (`rbackup.env.base`), which
re-exports it.
"""
from __future__ import annotations

from ..errors import InvalidArgument

__all__ = ["check_path"]


def check_path(path: str) -> str:
    """Reject anything that could escape the root; return the normalised path.

    Hostile meta files are the threat: `../../x`, `/etc/x` and
    `private/1/../../x` all fail here, before any store sees them.
    """
    if not isinstance(path, str) or not path:
        raise InvalidArgument(f"invalid backup path {path!r}: empty")
    if "\\" in path or "\x00" in path:
        raise InvalidArgument(f"invalid backup path {path!r}: backslash or NUL")
    if path.startswith("/"):
        raise InvalidArgument(f"invalid backup path {path!r}: absolute")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        raise InvalidArgument(f"invalid backup path {path!r}: '.', '..' or empty component")
    return path.rstrip("/") if path != "/" else path
