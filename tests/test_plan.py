"""plan: each DB file's destination and whether it must be copied, from plain records (no storage)."""
from __future__ import annotations

import pytest

from rbackup.errors import Corruption
from rbackup.format.naming import FileKind
from rbackup.plan import NamingFacts, SourceFile, needs_crc_for_name, needs_naming_facts, plan_backup

SID = "ABCDEFGHIJ0123456789"
FILES = [
    SourceFile("000007.sst", "/ckpt/000007.sst", 100, FileKind.TABLE),
    SourceFile("000008.sst", "/ckpt/000008.sst", 200, FileKind.TABLE),
    SourceFile("000009.blob", "/ckpt/000009.blob", 300, FileKind.BLOB),
    SourceFile("MANIFEST-000005", "/ckpt/MANIFEST-000005", 60, FileKind.MANIFEST),
    SourceFile("CURRENT", "/ckpt/CURRENT", 16, FileKind.CURRENT),
]
FACTS = {"000007.sst": NamingFacts(SID), "000008.sst": NamingFacts(None, 42), "000009.blob": NamingFacts(None, 43)}


def plan(referenced: dict[str, tuple[int, int | None]] | None = None, *, share: bool = True, checksum: bool = True):
    return plan_backup(FILES, 3, share_table_files=share, share_files_with_checksum=checksum, facts=FACTS,
                       referenced=referenced or {})


def test_first_backup_copies_everything_to_rocksdbs_names() -> None:
    assert [(p.dest, p.copy, p.expected_crc32c) for p in plan()] == [
        (f"shared_checksum/000007_s{SID}_100.sst", True, None),
        ("shared_checksum/000008_42_200.sst", True, 42),
        ("shared_checksum/000009_43_300.blob", True, 43),
        ("private/3/MANIFEST-000005", True, None),
        ("private/3/CURRENT", True, None),
    ]


def test_other_sharing_options_use_shared_or_private() -> None:
    assert [p.dest for p in plan(checksum=False)][:3] == ["shared/000007.sst", "shared/000008.sst",
                                                          "shared/000009.blob"]
    assert all(p.dest.startswith("private/3/") for p in plan(share=False))


def test_a_file_a_valid_backup_holds_is_reused_with_its_recorded_crc() -> None:
    held = {f"shared_checksum/000007_s{SID}_100.sst": (100, 77), "shared_checksum/000008_42_200.sst": (200, 42)}
    planned = {p.dest: p for p in plan(held)}
    assert not planned[f"shared_checksum/000007_s{SID}_100.sst"].copy
    assert planned[f"shared_checksum/000007_s{SID}_100.sst"].expected_crc32c == 77
    assert not planned["shared_checksum/000008_42_200.sst"].copy
    assert planned["shared_checksum/000009_43_300.blob"].copy


def test_a_held_file_of_another_size_or_crc_is_corruption_not_reuse() -> None:
    with pytest.raises(Corruption, match="is 99 bytes"):
        plan({"shared/000007.sst": (99, None)}, checksum=False)
    with pytest.raises(Corruption, match="has crc32c 41"):
        plan({"shared_checksum/000008_42_200.sst": (200, 41)})


def test_which_files_need_naming_facts_and_a_crc() -> None:
    sst, blob, manifest = FILES[0], FILES[2], FILES[3]
    assert needs_naming_facts(sst, share_table_files=True, share_files_with_checksum=True)
    assert not needs_naming_facts(sst, share_table_files=True, share_files_with_checksum=False)
    assert not needs_naming_facts(manifest, share_table_files=True, share_files_with_checksum=True)
    assert needs_crc_for_name(blob, SID) and needs_crc_for_name(sst, None) and not needs_crc_for_name(sst, SID)
