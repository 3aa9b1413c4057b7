"""Backup-directory and DB-file names, as RocksDB spells them (spec §1, §3)."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbackup.errors import InvalidArgument
from rbackup.format.naming import (
    META_DIR,
    PRIVATE_DIR,
    SHARED_CHECKSUM_DIR,
    SHARED_DIR,
    SIDE_FILES,
    FileKind,
    classify,
    db_filename_from_backup_name,
    file_number,
    is_shareable,
    is_temp_name,
    is_valid_session_id,
    meta_path,
    parse_backup_id,
    private_dir,
    private_file_path,
    shared_checksum_file_path,
    shared_checksum_name,
    shared_file_path,
    temp_path,
)

SID = "ISUZRZ68FLI3EMDPGB10"  # a real session id, from the ldb 7.8.3 sample in spec §2

# The regexes of backup_engine_test.cc ShareTableFilesWithChecksumsNewNaming
LEGACY_SST = re.compile(r"[0-9]+_[0-9]+_[0-9]+[.]sst")
SESSION_SST = re.compile(r"[0-9]+_s[0-9A-Z]{20}[.]sst")
SESSION_SIZE_SST = re.compile(r"[0-9]+_s[0-9A-Z]{20}_[0-9]+[.]sst")
LEGACY_BLOB = re.compile(r"[0-9]+_[0-9]+_[0-9]+[.]blob")


def test_dir_constants() -> None:
    assert (META_DIR, PRIVATE_DIR, SHARED_DIR, SHARED_CHECKSUM_DIR) == (
        "meta",
        "private",
        "shared",
        "shared_checksum",
    )
    assert SIDE_FILES == ("rocksdict-config.json",)


def test_meta_and_private_paths() -> None:
    assert meta_path(1) == "meta/1"
    assert meta_path(4294967295) == "meta/4294967295"
    assert private_dir(3) == "private/3"
    for bad in (0, -1, 1 << 32, True, "1", 1.0):
        with pytest.raises(InvalidArgument):
            meta_path(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            private_dir(bad)  # type: ignore[arg-type]


def test_temp_names_match_rocksdb() -> None:
    # BE:517-528, 573-576 and the NoDoubleCopy test's expected file set
    assert temp_path("meta/1") == "meta/.1.tmp"
    assert temp_path("shared/000009.sst") == "shared/.000009.sst.tmp"
    assert temp_path("shared_checksum/000012_sX_1.sst") == "shared_checksum/.000012_sX_1.sst.tmp"
    assert temp_path("LATEST_BACKUP") == ".LATEST_BACKUP.tmp"
    with pytest.raises(InvalidArgument):
        temp_path("meta/")
    assert is_temp_name(".1.tmp")
    assert is_temp_name("3.tmp")
    assert is_temp_name(".000009.sst.tmp")
    assert is_temp_name("x.tmpfoo")  # RocksDB only looks for the substring
    assert not is_temp_name("000009.sst")
    assert not is_temp_name("1")


@pytest.mark.parametrize(
    "name,expected",
    [
        ("1", 1),
        ("42", 42),
        ("4294967295", 4294967295),
        ("0", None),
        ("01", None),
        ("4294967296", None),
        ("99999999999", None),
        (".1.tmp", None),
        ("1.tmp", None),
        ("x", None),
        ("", None),
        ("+1", None),
        ("-1", None),
        (" 1", None),
        ("1 ", None),
        ("1\n", None),
        ("\u0661", None),  # a non-ASCII digit (ARABIC-INDIC ONE)
        ("1_0", None),
    ],
)
def test_parse_backup_id(name: str, expected: int | None) -> None:
    assert parse_backup_id(name) == expected


@given(st.integers(1, 0xFFFFFFFF))
@settings(max_examples=100)
def test_parse_backup_id_round_trip(n: int) -> None:
    assert parse_backup_id(str(n)) == n
    assert meta_path(n) == f"meta/{n}"


@pytest.mark.parametrize(
    "name,kind,number",
    [
        ("000012.sst", FileKind.TABLE, 12),
        ("12.sst", FileKind.TABLE, 12),
        ("000012.ldb", FileKind.TABLE, 12),
        ("1234567.sst", FileKind.TABLE, 1234567),
        ("000013.blob", FileKind.BLOB, 13),
        ("MANIFEST-000027", FileKind.MANIFEST, 27),
        ("CURRENT", FileKind.CURRENT, None),
        ("OPTIONS-000029", FileKind.OPTIONS, 29),
        ("000003.log", FileKind.WAL, 3),
        ("000000.log", FileKind.WAL, 0),
        ("18446744073709551615.sst", FileKind.TABLE, (1 << 64) - 1),
        ("18446744073709551616.sst", FileKind.OTHER, None),  # overflows uint64: not a file number
        ("IDENTITY", FileKind.OTHER, None),
        ("LOCK", FileKind.OTHER, None),
        ("LOG", FileKind.OTHER, None),
        ("LOG.old.1700000000", FileKind.OTHER, None),
        ("OPTIONS-000005.dbtmp", FileKind.OTHER, None),
        ("rocksdict-config.json", FileKind.OTHER, None),
        ("MANIFEST-", FileKind.OTHER, None),
        (".sst", FileKind.OTHER, None),
        ("x12.sst", FileKind.OTHER, None),
        ("000012.sst.tmp", FileKind.OTHER, None),
        ("000012_s1_2.sst", FileKind.OTHER, None),
        ("CURRENT.tmp", FileKind.OTHER, None),
    ],
)
def test_classify(name: str, kind: FileKind, number: int | None) -> None:
    assert classify(name) is kind
    assert file_number(name) == number


def test_only_tables_and_blobs_are_shareable() -> None:
    assert {k for k in FileKind if is_shareable(k)} == {FileKind.TABLE, FileKind.BLOB}


def test_session_id_naming_is_the_default() -> None:
    name = shared_checksum_name("000025.sst", size=983, session_id=SID)
    assert name == f"000025_s{SID}_983.sst"  # exactly as ldb 7.8.3 named it
    assert SESSION_SIZE_SST.fullmatch(name)
    # the "_S" part is the file size
    assert int(name.rsplit("_", 1)[1].split(".")[0]) == 983


def test_legacy_naming() -> None:
    name = shared_checksum_name("000012.sst", size=1013, crc32c=636270548)
    assert name == "000012_636270548_1013.sst"
    assert LEGACY_SST.fullmatch(name)
    assert shared_checksum_name("000012.sst", size=0, crc32c=0) == "000012_0_0.sst"
    assert shared_checksum_name("000012.ldb", size=5, crc32c=7) == "000012_7_5.ldb"


def test_blobs_always_use_legacy_naming() -> None:
    name = shared_checksum_name("000013.blob", size=77, session_id=SID, crc32c=4294967295)
    assert name == "000013_4294967295_77.blob"
    assert LEGACY_BLOB.fullmatch(name)
    with pytest.raises(InvalidArgument):
        shared_checksum_name("000013.blob", size=77, session_id=SID)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 1},  # legacy without crc
        {"size": 1, "crc32c": -1},
        {"size": 1, "crc32c": 1 << 32},
        {"size": 1, "crc32c": True},
        {"size": -1, "crc32c": 1},
        {"size": 1, "session_id": ""},
        {"size": 1, "session_id": "a/b"},
        {"size": 1, "session_id": "a b"},
        {"size": 1, "session_id": "a_b"},
        {"size": 1, "session_id": "a.b"},
    ],
)
def test_shared_checksum_name_rejects(kwargs: dict) -> None:
    with pytest.raises(InvalidArgument):
        shared_checksum_name("000012.sst", **kwargs)


@pytest.mark.parametrize("name", ["MANIFEST-000001", "CURRENT", "OPTIONS-000005", "000003.log", "x", "a/1.sst", ""])
def test_only_tables_and_blobs_get_shared_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        shared_checksum_name(name, size=1, crc32c=1)


def test_session_ids() -> None:
    assert is_valid_session_id(SID)
    assert is_valid_session_id("4a2c9e1c-7d6b-4a8e-9c7f-3f2b1a0e9d8c")
    for bad in ("", "a_b", "a.b", "a/b", "a b", "a\n"):
        assert not is_valid_session_id(bad)


@pytest.mark.parametrize(
    "backup_name,db_name",
    [
        (f"000025_s{SID}_983.sst", "000025.sst"),
        (f"000025_s{SID}.sst", "000025.sst"),  # kUseDbSessionId without the size flag
        ("000012_636270548_1013.sst", "000012.sst"),
        ("000013_4294967295_77.blob", "000013.blob"),
        ("000012_1_2_3.sst", "000012.sst"),
        ("000012.sst", "000012.sst"),  # no '_': unchanged
        ("000012_x", "000012"),  # no '.' after the '_': RocksDB's erase drops the rest
        ("a.b_c", "a.b"),
    ],
)
def test_db_filename_from_backup_name(backup_name: str, db_name: str) -> None:
    assert db_filename_from_backup_name(backup_name) == db_name


@given(
    st.integers(0, 10**12),
    st.sampled_from(["sst", "blob", "ldb"]),
    st.integers(0, 1 << 40),
    st.integers(0, 0xFFFFFFFF),
    st.text("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=20, max_size=20),
)
@settings(max_examples=200)
def test_names_map_back(number: int, ext: str, size: int, crc: int, sid: str) -> None:
    db_name = f"{number:06d}.{ext}"
    for name in (
        shared_checksum_name(db_name, size=size, crc32c=crc),
        shared_checksum_name(db_name, size=size, session_id=sid, crc32c=crc),
    ):
        assert db_filename_from_backup_name(name) == db_name
        assert classify(db_filename_from_backup_name(name)) is classify(db_name)


def test_backup_relative_paths() -> None:
    assert shared_file_path("000009.sst") == "shared/000009.sst"
    assert shared_checksum_file_path("000012_1_2.sst") == "shared_checksum/000012_1_2.sst"
    assert private_file_path(3, "CURRENT") == "private/3/CURRENT"
    for bad in ("", ".", "..", "a/b", "a\\b", "a\x00b"):
        with pytest.raises(InvalidArgument):
            shared_file_path(bad)
        with pytest.raises(InvalidArgument):
            shared_checksum_file_path(bad)
        with pytest.raises(InvalidArgument):
            private_file_path(3, bad)
    with pytest.raises(InvalidArgument):
        private_file_path(0, "CURRENT")
