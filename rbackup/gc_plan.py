"""Deciding, without I/O, what garbage collection deletes (RocksDB's GarbageCollect).

Given the directory listing, the files valid backups reference and the ids of
the valid backups, a file is garbage when it is

- under `shared/` or `shared_checksum/` and no valid backup references it;
- under `private/<child>/` where `<child>` is a temp name or the id of no valid
  backup (a failed create, a deleted or corrupt backup); the directory goes too;
- a meta commit's temp file in `meta/` (a commit killed between its temp file
  and the link or rename).

Anything else (`meta/<id>` itself, the lock, names rbackup does not know) is
left alone: a meta file is deleted only by deleting its backup.

Unlike RocksDB, a backup whose meta file this version cannot read (NotSupported:
a newer format or feature) is not garbage: its `private/<id>/` stays, and while
such a backup exists no shared file goes, since which ones it uses is unknown.
RocksDB deletes both as for a corrupt backup, so an older engine destroys the
backups a newer one made; deleting such a backup stays the user's call
(`delete_backup`).
"""
from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from .format.naming import (
    META_DIR,
    PRIVATE_DIR,
    SHARED_CHECKSUM_DIR,
    SHARED_DIR,
    is_meta_temp_name,
    is_temp_name,
    parse_backup_id,
)

__all__ = ["GcPlan", "plan_garbage_collection"]


@dataclass(frozen=True)
class GcPlan:
    doomed: list[str]
    """Files to delete, in listing order."""
    private_dirs: list[str]
    """`private/<child>` directories emptied by the deletes, to remove afterwards (sorted)."""


def plan_garbage_collection(listing: Iterable[str], referenced: Collection[str],
                            valid_ids: Collection[int], *, unreadable_ids: Collection[int] = ()) -> GcPlan:
    """`unreadable_ids`: backups whose meta file this version cannot read (see above)."""
    doomed: list[str] = []
    private_dirs: set[str] = set()
    kept_ids = {*valid_ids, *unreadable_ids}
    for path in listing:
        top, _, rest = path.partition("/")
        if top in (SHARED_DIR, SHARED_CHECKSUM_DIR) and rest:
            if path not in referenced and not unreadable_ids:
                doomed.append(path)
        elif top == PRIVATE_DIR and "/" in rest:
            child = rest.split("/", 1)[0]
            child_id = parse_backup_id(child)
            if is_temp_name(child) or (child_id is not None and child_id not in kept_ids):
                doomed.append(path)
                private_dirs.add(f"{PRIVATE_DIR}/{child}")
        elif top == META_DIR and is_meta_temp_name(rest):
            doomed.append(path)
    return GcPlan(doomed, sorted(private_dirs))
