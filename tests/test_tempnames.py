"""tempnames: every temporary name in one place, and GC recognises what the envs leave."""
from __future__ import annotations

import re

import pytest

from rbackup.errors import InvalidArgument
from rbackup.format.tempnames import (
    RESTORE_CURRENT_TEMP,
    RESTORE_MARKER_TEMP,
    exclusive_temp_path,
    is_meta_temp_name,
    is_temp_name,
    rewrite_temp_path,
    temp_path,
)


def test_temp_path_on_store_and_os_paths() -> None:
    assert temp_path("meta/1") == "meta/.1.tmp"
    assert temp_path("LOCK") == ".LOCK.tmp"
    assert temp_path("/b/shared/000010.sst") == "/b/shared/.000010.sst.tmp"
    with pytest.raises(InvalidArgument):
        temp_path("meta/")


def test_exclusive_temp_paths_are_private_to_each_call_and_still_rocksdb_temps() -> None:
    names = {exclusive_temp_path("meta/12") for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert re.fullmatch(r"meta/\.12\.[0-9a-f]{12}\.tmp", name)
        assert is_temp_name(name) and is_meta_temp_name(name.split("/")[1])


def test_gc_knows_both_meta_commit_temps_and_nothing_else_in_meta() -> None:
    assert is_meta_temp_name(temp_path("meta/3").split("/")[1])
    assert is_meta_temp_name(exclusive_temp_path("meta/3").split("/")[1])
    for other in ("3", ".3", "3.tmp", ".0.tmp", ".03.tmp", ".3.XYZ.tmp", "notes.tmp"):
        assert not is_meta_temp_name(other), other


def test_restore_temps_are_temps() -> None:
    for name in (RESTORE_CURRENT_TEMP, RESTORE_MARKER_TEMP, rewrite_temp_path("OPTIONS-000007")):
        assert is_temp_name(name)
