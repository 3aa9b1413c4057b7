"""gc_plan: what garbage collection deletes, judged from a listing and sets (no storage)."""
from __future__ import annotations

from rbackup.gc_plan import plan_garbage_collection

LISTING = [
    "meta/1", "meta/3", "meta/.4.tmp", "meta/.4.1f2e.tmp", "meta/notes",
    "shared_checksum/000007_sSID_100.sst", "shared_checksum/000008_sSID_200.sst",
    "shared/000009.sst", "shared/000010.sst",
    "private/1/CURRENT", "private/1/MANIFEST-000005",
    "private/2/CURRENT",
    "private/3/CURRENT",
    "private/4.tmp/CURRENT",
    "private/odd/CURRENT",
    "rbackup.lock",
]
REFERENCED = {"shared_checksum/000007_sSID_100.sst", "shared/000009.sst", "private/1/CURRENT",
              "private/1/MANIFEST-000005", "private/3/CURRENT"}


def test_unreferenced_shared_files_private_dirs_of_no_valid_backup_and_meta_temps_go() -> None:
    plan = plan_garbage_collection(LISTING, REFERENCED, valid_ids={1, 3})
    assert plan.doomed == [
        "meta/.4.tmp", "meta/.4.1f2e.tmp",
        "shared_checksum/000008_sSID_200.sst", "shared/000010.sst",
        "private/2/CURRENT", "private/4.tmp/CURRENT",
    ]
    assert plan.private_dirs == ["private/2", "private/4.tmp"]


def test_meta_files_unknown_names_and_the_lock_are_never_garbage() -> None:
    plan = plan_garbage_collection(LISTING, set(), valid_ids=set())
    assert not {"meta/1", "meta/3", "meta/notes", "private/odd/CURRENT", "rbackup.lock"} & set(plan.doomed)
    # with no valid backup, every shared file and every numbered private directory goes
    assert {"shared/000009.sst", "private/1/CURRENT", "private/3/CURRENT"} <= set(plan.doomed)


def test_a_corrupt_backup_keeps_nothing_of_its_own_but_shared_files_another_holds() -> None:
    """Backup 3 is corrupt (not valid): its private files go, the shared file 1 still uses stays."""
    plan = plan_garbage_collection(LISTING, REFERENCED - {"private/3/CURRENT"}, valid_ids={1})
    assert "private/3/CURRENT" in plan.doomed and "shared_checksum/000007_sSID_100.sst" not in plan.doomed


def test_a_backup_this_version_cannot_read_keeps_its_private_files_and_every_shared_file() -> None:
    """Backup 3's meta file is NotSupported (a newer RocksDB's): which shared files it uses is
    unknown, so none goes; the rest of the plan is unchanged."""
    plan = plan_garbage_collection(LISTING, REFERENCED - {"private/3/CURRENT"}, valid_ids={1}, unreadable_ids={3})
    assert plan.doomed == ["meta/.4.tmp", "meta/.4.1f2e.tmp", "private/2/CURRENT", "private/4.tmp/CURRENT"]
    assert plan.private_dirs == ["private/2", "private/4.tmp"]


def test_an_empty_directory_plans_nothing() -> None:
    plan = plan_garbage_collection([], set(), set())
    assert plan.doomed == [] and plan.private_dirs == []
