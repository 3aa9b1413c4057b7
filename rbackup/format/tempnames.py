"""Every temporary name rbackup writes, spelled in one place.

A crash can leave any of these behind, and whoever cleans up recognises them by
their shape, so each is defined once here and used by every env, by garbage
collection, by restore and by the checkpoint code:

- in a backup directory, RocksDB's `<dir>/.<name>.tmp` (`temp_path`), which
  every env publishes through where it renames; and
  `<dir>/.<name>.<12 hex>.tmp` (`exclusive_temp_path`), private to one call,
  which every env's create-if-absent writes before linking or renaming it
  onto the name (concurrent creators sharing `.<name>.tmp` would overwrite
  each other's bytes).  Both contain `.tmp`, which is all RocksDB's GC
  looks for (`is_temp_name`); in `meta/` ours recognises exactly these two
  shapes of a meta commit (`is_meta_temp_name`);
- in a restore target, CURRENT's copy (`RESTORE_CURRENT_TEMP`, renamed onto
  CURRENT last), the in-progress marker's (`RESTORE_MARKER_TEMP`) and an
  OPTIONS file's rewrite (`rewrite_temp_path`);
- beside a DB, RocksDB's checkpoint staging directory `<dir>.tmp`
  (`CHECKPOINT_TEMP_SUFFIX`).

Pure: names in, names out, no I/O; storage code may import it.
"""
from __future__ import annotations

import os
import re
import secrets

from ..errors import InvalidArgument

__all__ = [
    "CHECKPOINT_TEMP_SUFFIX",
    "RESTORE_CURRENT_TEMP",
    "RESTORE_MARKER_TEMP",
    "TEMP_SUFFIX",
    "exclusive_temp_path",
    "is_meta_temp_name",
    "is_temp_name",
    "rewrite_temp_path",
    "temp_path",
]

TEMP_SUFFIX = ".tmp"
CHECKPOINT_TEMP_SUFFIX = TEMP_SUFFIX
"""RocksDB builds a checkpoint in `<dir>.tmp` and renames it to `<dir>`: a kill can leave that."""
RESTORE_CURRENT_TEMP = "CURRENT.tmp"
"""Restore writes the backup's CURRENT here and renames it onto CURRENT last: its commit."""
RESTORE_MARKER_TEMP = "CURRENT.rbackup-marker.tmp"
"""Restore writes its in-progress marker here, then renames it onto CURRENT."""
_EXCLUSIVE_HEX = 12

_META_TEMP = re.compile(r"\.[1-9][0-9]{0,9}(\.[0-9a-f]+)?\.tmp")


def _split(path: str) -> tuple[str, str]:
    """(`<dir>/` or "", name) of a store path ('/') or an OS path (os.sep)."""
    head, sep, name = path.rpartition("/")
    if not sep and os.sep != "/":
        head, sep, name = path.rpartition(os.sep)
    if not name:
        raise InvalidArgument(f"no file name in {path!r}")
    return head + sep, name


def temp_path(path: str) -> str:
    """`<dir>/.<name>.tmp`: RocksDB's temp name, which its GC knows to delete
    (docs/format.md §1; BE:517-528, 573-576)."""
    head, name = _split(path)
    return f"{head}.{name}{TEMP_SUFFIX}"


def exclusive_temp_path(path: str) -> str:
    """`<dir>/.<name>.<12 hex>.tmp`: a temp name no other call uses, for create-if-absent."""
    head, name = _split(path)
    return f"{head}.{name}.{secrets.token_hex(_EXCLUSIVE_HEX // 2)}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    """RocksDB's GC treats any name containing `.tmp` as a leftover temp file."""
    return TEMP_SUFFIX in name


def is_meta_temp_name(name: str) -> bool:
    """A meta commit's temp file in `meta/`: `temp_path` or `exclusive_temp_path` of `meta/<id>`.
    Other non-canonical names in meta/ are left alone, as RocksDB leaves them."""
    return _META_TEMP.fullmatch(name) is not None


def rewrite_temp_path(path: str) -> str:
    """Where restore writes a rewritten copy of `path` (an OPTIONS file) before renaming it back."""
    return f"{path}.rbackup{TEMP_SUFFIX}"
