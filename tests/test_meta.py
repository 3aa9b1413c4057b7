"""Meta files: RocksDB's writer byte for byte, its reader rule for rule (spec §2),
plus the path checks that keep a hostile meta file inside the backup directory."""
from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbackup.errors import Corruption, InvalidArgument, NotSupported
from rbackup.format.meta import (
    MAX_APP_METADATA,
    MAX_META_FILE_SIZE,
    SCHEMA_2_VERSION,
    TEMPERATURES,
    BackupMeta,
    MetaFileEntry,
    _checked_lines,
    _plain_lines,
    parse_meta,
    serialize_meta,
)

# Real `ldb backup` 7.8.3 output (spec §2)
LDB_SAMPLE = b"""1795493846
3
5
shared_checksum/000025_sISUZRZ68FLI3EMDPGB10_983.sst crc32 499410350
shared_checksum/000018_sOKS087MG4EBHJV8LZN8P_1013.sst crc32 636270548
private/1/MANIFEST-000027 crc32 2113241127
private/1/CURRENT crc32 4132812863
private/1/OPTIONS-000029 crc32 3679531975
"""

SST = "shared_checksum/000025_sISUZRZ68FLI3EMDPGB10_983.sst"


def v2(*file_lines: str, header: str = "", footer: str = "", version: str = "2.1", count: int | None = None) -> bytes:
    """A schema-2 meta file for backup 1 with the given file lines."""
    n = sum(1 for line in file_lines if "ni::excluded true" not in line) if count is None else count
    text = f"schema_version {version}\n1700000000\n42\n{header}{n}\n"
    text += "".join(line + "\n" for line in file_lines) + footer
    return text.encode()


def v1(*file_lines: str, header: str = "", count: int | None = None) -> bytes:
    n = len(file_lines) if count is None else count
    return (f"1700000000\n42\n{header}{n}\n" + "".join(line + "\n" for line in file_lines)).encode()


# --------------------------------------------------------------------------- the ldb sample


def test_ldb_sample_parses() -> None:
    meta = parse_meta(LDB_SAMPLE, 1)
    assert meta.timestamp == 1795493846
    assert meta.sequence_number == 3
    assert meta.app_metadata == b""
    assert meta.schema_version == "1"
    assert [f.path for f in meta.files] == [
        SST,
        "shared_checksum/000018_sOKS087MG4EBHJV8LZN8P_1013.sst",
        "private/1/MANIFEST-000027",
        "private/1/CURRENT",
        "private/1/OPTIONS-000029",
    ]
    assert meta.files[3] == MetaFileEntry("private/1/CURRENT", 4132812863)
    assert all(f.size is None and f.temperature is None and not f.excluded for f in meta.files)


def test_ldb_sample_reserializes_byte_identically() -> None:
    assert serialize_meta(parse_meta(LDB_SAMPLE, 1)) == LDB_SAMPLE


def test_ldb_sample_belongs_to_backup_1_only() -> None:
    with pytest.raises(Corruption, match=r"backup 2: meta file line 6: .*private/1/MANIFEST-000027"):
        parse_meta(LDB_SAMPLE, 2)


# --------------------------------------------------------------------------- writer


def test_schema1_writer_format() -> None:
    meta = BackupMeta(
        timestamp=1700000000,
        sequence_number=99,
        files=[
            MetaFileEntry("shared_checksum/000012_sX_5.sst", 0, size=5, temperature="kHot"),
            MetaFileEntry("private/7/CURRENT", 4294967295),
        ],
        app_metadata=b"\x00\xab",
    )
    # schema 1 has no room for size or temperature; RocksDB drops them too
    assert serialize_meta(meta) == (
        b"1700000000\n99\nmetadata 00AB\n2\n"
        b"shared_checksum/000012_sX_5.sst crc32 0\n"
        b"private/7/CURRENT crc32 4294967295\n"
    )


def test_schema2_writer_format() -> None:
    meta = BackupMeta(
        timestamp=1,
        sequence_number=0,
        files=[
            MetaFileEntry("shared_checksum/000014_sY_9.sst", 17, excluded=True),
            MetaFileEntry("shared_checksum/000012_sX_5.sst", 3, size=5, temperature="kCold"),
            MetaFileEntry("shared/000013.sst", None),
            MetaFileEntry("private/7/CURRENT", 4),
        ],
    )
    assert serialize_meta(meta, 2) == (
        b"schema_version 2.1\n1\n0\n3\n"
        b"shared_checksum/000012_sX_5.sst crc32 3 temp kCold size 5\n"
        b"shared/000013.sst\n"
        b"private/7/CURRENT crc32 4\n"
        b"shared_checksum/000014_sY_9.sst ni::excluded true\n"
    )
    assert SCHEMA_2_VERSION == "2.1"


def test_no_metadata_line_when_empty() -> None:
    assert b"metadata" not in serialize_meta(BackupMeta(1, 2, []))
    assert serialize_meta(BackupMeta(1, 2, [])) == b"1\n2\n0\n"


def test_schema_version_bounds() -> None:
    meta = BackupMeta(1, 2, [])
    with pytest.raises(InvalidArgument):
        serialize_meta(meta, 0)
    with pytest.raises(InvalidArgument):
        serialize_meta(meta, -1)
    with pytest.raises(NotSupported):
        serialize_meta(meta, 3)


def test_binary_metadata_round_trips() -> None:
    # BinaryMetadata
    data = b"abc\ndef\0ghi"
    for version in (1, 2):
        raw = serialize_meta(BackupMeta(5, 6, [], app_metadata=data), version)
        assert raw.endswith(b"5\n6\nmetadata 6162630A64656600676869\n0\n")  # uppercase hex
        assert parse_meta(raw, 1).app_metadata == data


def test_metadata_too_large() -> None:
    # MetadataTooLarge: 1 MiB is fine, 1 MiB + 1 is InvalidArgument
    ok = serialize_meta(BackupMeta(1, 2, [], app_metadata=b"x" * MAX_APP_METADATA))
    assert parse_meta(ok, 1).app_metadata == b"x" * MAX_APP_METADATA
    with pytest.raises(InvalidArgument):
        serialize_meta(BackupMeta(1, 2, [], app_metadata=b"x" * (MAX_APP_METADATA + 1)))
    assert MAX_APP_METADATA == 1048576


@pytest.mark.parametrize(
    "meta,version",
    [
        (BackupMeta(1, 2, [MetaFileEntry("private/1/CURRENT", None)]), 1),  # schema 1 needs crc
        (BackupMeta(1, 2, [MetaFileEntry(SST, 1, excluded=True)]), 1),  # excluded needs schema 2
        (BackupMeta(1, 2, [MetaFileEntry(SST, -1)]), 2),
        (BackupMeta(1, 2, [MetaFileEntry(SST, 1 << 32)]), 2),
        (BackupMeta(1, 2, [MetaFileEntry(SST, 1, size=-1)]), 2),
        (BackupMeta(1, 2, [MetaFileEntry(SST, 1, temperature="kWarmish")]), 2),
        (BackupMeta(1, 2, [MetaFileEntry(SST, 1, temperature="kUnknown")]), 2),
        (BackupMeta(1, 2, [MetaFileEntry(SST, 1), MetaFileEntry(SST, 1)]), 2),
        (BackupMeta(1, 2, [MetaFileEntry("private/1/a b", 1)]), 2),
        (BackupMeta(1, 2, [MetaFileEntry("private/1/a\nb", 1)]), 2),
        (BackupMeta(1, 2, [MetaFileEntry("../x", 1)]), 2),
        (BackupMeta(1, 2, [MetaFileEntry("private/1/x", 1), MetaFileEntry("private/2/y", 1)]), 2),
        (BackupMeta(1, 2, [MetaFileEntry("private/1/000012.sst", 1), MetaFileEntry("shared/000012.sst", 1)]), 2),
        (BackupMeta(-1, 2, []), 1),
        (BackupMeta(1, 1 << 64, []), 1),
        (BackupMeta(1, 2, [], app_metadata="text"), 1),  # type: ignore[arg-type]
    ],
)
def test_writer_rejects(meta: BackupMeta, version: int) -> None:
    with pytest.raises(InvalidArgument):
        serialize_meta(meta, version)


def test_the_bulk_check_of_plain_entries_accepts_nothing_the_entry_checks_refuse() -> None:
    """serialize_meta checks a backup's plain entries (path and CRC-32C only) all at once with C
    loops, and falls back to the entry-by-entry checks otherwise: same bytes, same refusals."""
    plain = [MetaFileEntry(f"shared_checksum/{i:06d}_sSESSION_{i}.sst", i * 7919 % (1 << 32)) for i in range(500)]
    plain += [MetaFileEntry("private/3/MANIFEST-000010", 0), MetaFileEntry("private/3/CURRENT", (1 << 32) - 1)]
    assert _plain_lines(plain) == _checked_lines(plain, 1)[0] == _checked_lines(plain, 2)[0]
    refused = [
        [MetaFileEntry(SST, True)],  # a bool is no CRC
        [MetaFileEntry(SST, -1)], [MetaFileEntry(SST, 1 << 32)], [MetaFileEntry(SST, None)],
        [MetaFileEntry(b"shared_checksum/x_s1.sst", 1)],  # type: ignore[arg-type]
        [MetaFileEntry(SST, 1), MetaFileEntry(SST, 1)],
        [MetaFileEntry(SST, 1), MetaFileEntry(SST, 2)],
        [MetaFileEntry("private/1/000012.sst", 1), MetaFileEntry("shared/000012.sst", 1)],
        [MetaFileEntry("private/1/x", 1), MetaFileEntry("private/2/y", 1)],
        [MetaFileEntry("private/1/a b", 1)], [MetaFileEntry("../x", 1)],
        [MetaFileEntry(SST, 1, size=5)], [MetaFileEntry(SST, 1, temperature="kWarm")],
        [MetaFileEntry(SST, 1, excluded=True)],
    ]
    for files in refused:
        assert _plain_lines(plain + files) is None, files


# --------------------------------------------------------------------------- reader: lines and header


def test_final_line_without_newline_is_discarded() -> None:
    with pytest.raises(Corruption, match="backup 1: meta file: file count is 5 but 4"):
        parse_meta(LDB_SAMPLE[:-1], 1)
    # a file with no newline at all has no lines at all
    with pytest.raises(Corruption):
        parse_meta(b"1795493846", 1)


def test_empty_and_truncated_headers() -> None:
    for data in (b"", b"\n", b"1\n", b"1\n2\n", b"schema_version 2\n1\n2\n"):
        with pytest.raises(Corruption, match="backup 4: meta file"):
            parse_meta(data, 4)
    assert parse_meta(b"1\n2\n0\n", 4).files == []


@pytest.mark.parametrize("version", ["3", "23.45.67", "1", "2x", "20", "", " 2", "2\r", "1.2"])
def test_unsupported_schema_versions(version: str) -> None:
    # MetaSchemaVersion2_NotSupported
    with pytest.raises(NotSupported, match="backup 1: meta file line 1: unsupported schema version"):
        parse_meta(v2(version=version), 1)


@pytest.mark.parametrize("version", ["2", "2.0", "2.1", "2.5.70", "2."])
def test_supported_schema_versions(version: str) -> None:
    meta = parse_meta(v2(f"{SST} crc32 1", version=version), 1)
    assert meta.schema_version == version
    assert meta.files == [MetaFileEntry(SST, 1)]


def test_schema_version_only_on_first_line() -> None:
    with pytest.raises(Corruption):
        parse_meta(b"1\n2\nschema_version 2\n0\n", 1)


def test_timestamp_and_seq_use_strtoull() -> None:
    def header(ts: str, seq: str) -> tuple[int, int]:
        meta = parse_meta(f"{ts}\n{seq}\n0\n".encode(), 1)
        return meta.timestamp, meta.sequence_number

    assert header("123abc", "  77") == (123, 77)
    assert header("x", "+5") == (0, 5)
    assert header("-1", "18446744073709551615") == ((1 << 64) - 1, (1 << 64) - 1)
    assert header("99999999999999999999999", "0" * 5000 + "7") == ((1 << 64) - 1, 7)
    assert header("9" * 10000, "-") == ((1 << 64) - 1, 0)
    # after a schema_version line the timestamp line may even be empty
    meta = parse_meta(b"schema_version 2\n\n\n0\n", 1)
    assert (meta.timestamp, meta.sequence_number) == (0, 0)


def test_empty_first_line_is_corruption() -> None:
    with pytest.raises(Corruption, match="line 1: unexpected empty line"):
        parse_meta(b"\n2\n0\n", 1)


def test_count_line_strtoul() -> None:
    # a header line starting with a digit is the count; trailing junk is ignored
    for count_line in (b"1", b"1 files", b"0001", b"1x"):
        meta = parse_meta(b"1\n2\n" + count_line + b"\nprivate/1/CURRENT crc32 1\n", 1)
        assert len(meta.files) == 1
    # stricter than RocksDB, which would truncate this to 1
    with pytest.raises(Corruption, match="out of range"):
        parse_meta(b"1\n2\n4294967297\nprivate/1/CURRENT crc32 1\n", 1)


def test_count_larger_than_lines_is_corruption_without_allocation() -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(Corruption, match="file count is 4294967295 but 1"):
            parse_meta(v1("private/1/CURRENT crc32 1", count=4294967295), 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # the lying count allocated nothing in proportion to it


def test_count_smaller_than_lines_is_corruption() -> None:
    with pytest.raises(Corruption, match="file count is 1 but 2"):
        parse_meta(v1("private/1/CURRENT crc32 1", "private/1/OPTIONS-000005 crc32 2", count=1), 1)


def test_header_lines() -> None:
    assert parse_meta(v1(header="metadata 616263\n"), 1).app_metadata == b"abc"
    assert parse_meta(v1(header="metadata 6a4B\n"), 1).app_metadata == b"jK"  # either case
    assert parse_meta(v1(header="metadata \n"), 1).app_metadata == b""
    assert parse_meta(v1(header="metadata 61\nmetadata 62\n"), 1).app_metadata == b"b"  # last wins
    for bad, match in [
        ("metadata 616\n", "odd length"),
        ("metadata 6g\n", "not valid hex"),
        ("metadata 6 62\n", "not valid hex"),
        ("metadata \u00e9\u00e9\n", "not valid hex"),
        ("metadata\n", "expected file count or meta field"),
        ("\n", "empty line"),
        ("foo bar\n", "expected file count or 'metadata'"),  # schema 1 knows only metadata
    ]:
        with pytest.raises(Corruption, match=match):
            parse_meta(v1(header=bad), 1)


def test_schema2_meta_fields() -> None:
    # MetaSchemaVersion2_Restore: unknown meta fields are ignored
    meta = parse_meta(v2(header="metadata 01\nfoo bar baz\nbinary \xff\xfe\n"), 1)
    assert meta.app_metadata == b"\x01"
    with pytest.raises(NotSupported, match=r"line 4: unrecognized non-ignorable meta field 'ni::blah'"):
        parse_meta(v2(header="ni::blah 1\n"), 1)
    with pytest.raises(Corruption, match="line 4: expected file count or meta field"):
        parse_meta(v2(header="nospace\n"), 1)


def test_ignored_fields_are_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    seen: set[str] = set()
    data = v2(f"{SST} crc32 1 zzz 1", header="foo bar\n", footer="// FOOTER\nchecksum 1\n")
    with caplog.at_level(logging.WARNING, logger="rbackup.format.meta"):
        parse_meta(data, 1, ignored_fields=seen)
        parse_meta(data, 1, ignored_fields=seen)
    assert seen == {"meta:foo", "file:zzz", "footer:checksum"}
    assert len(caplog.records) == 3


# --------------------------------------------------------------------------- reader: file lines


def test_schema1_file_lines() -> None:
    for line, match in [
        ("private/1/CURRENT", "checksum missing"),
        ("private/1/CURRENT crc32", "checksum missing"),
        ("private/1/CURRENT md5 1", "unknown checksum type"),
        ("private/1/CURRENT crc32 1 size 5", "extra data"),
        ("private/1/CURRENT crc32 1 x", "extra data"),
        ("private/1/CURRENT  crc32 1", "unknown checksum type"),  # "" then "crc32"
        ("", "empty line"),
    ]:
        with pytest.raises(Corruption, match=f"line 4: {match}"):
            parse_meta(v1(line), 1)
    # a trailing space adds no token (std::getline)
    assert parse_meta(v1("private/1/CURRENT crc32 1 "), 1).files == [MetaFileEntry("private/1/CURRENT", 1)]


@pytest.mark.parametrize(
    "crc", ["01", "-1", "+1", "4294967296", "99999999999999999999", "1x", "0x1", "1_0", "\uff11", "\t1"])
def test_crc_must_round_trip(crc: str) -> None:
    with pytest.raises(Corruption, match="invalid checksum"):
        parse_meta(v1(f"private/1/CURRENT crc32 {crc}"), 1)
    with pytest.raises(Corruption):
        parse_meta(v2(f"private/1/CURRENT crc32 {crc}"), 1)


@pytest.mark.parametrize("crc", ["0", "1", "4294967295", "3808858755"])
def test_crc_accepted(crc: str) -> None:
    assert parse_meta(v1(f"private/1/CURRENT crc32 {crc}"), 1).files[0].crc32c == int(crc)


def test_schema2_file_fields() -> None:
    # MetaSchemaVersion2_Restore: missing crc or size, unknown fields, a footer
    meta = parse_meta(
        v2(
            f"{SST}",
            "shared_checksum/000018_sOKS087MG4EBHJV8LZN8P_1013.sst size 1013 crc32 5 temp kWarm",
            "private/1/CURRENT crc32 7 foo bar temp kFreezing",
            "private/1/MANIFEST-000027 temp kIce crc32 9 size abc",
            "private/1/OPTIONS-000029 crc32 1 crc32 2 size 3 size 4",
            footer="// FOOTER\nchecksum 123\nanother field with spaces\n",
        ),
        1,
    )
    assert meta.files == [
        MetaFileEntry(SST, None),
        MetaFileEntry("shared_checksum/000018_sOKS087MG4EBHJV8LZN8P_1013.sst", 5, 1013, "kWarm"),
        MetaFileEntry("private/1/CURRENT", 7),  # unknown temperature -> unknown
        MetaFileEntry("private/1/MANIFEST-000027", 9, 0, "kIce"),  # size via strtoull
        MetaFileEntry("private/1/OPTIONS-000029", 2, 4),  # last one wins
    ]


def test_schema2_size_field() -> None:
    # MetaSchemaVersion2_SizeCorruption: the size is reported; the engine compares it with the store
    assert parse_meta(v2(f"{SST} crc32 1 size 983"), 1).files[0].size == 983
    assert parse_meta(v2(f"{SST} size 18446744073709551616"), 1).files[0].size == (1 << 64) - 1


def test_schema2_token_count_must_be_odd() -> None:
    for line in (f"{SST} crc32", f"{SST} crc32 1 size", f"{SST}  crc32 1", f"{SST} crc32  1"):
        with pytest.raises(Corruption, match="bad number of fields"):
            parse_meta(v2(line), 1)


def test_empty_crc_tokens() -> None:
    # "crc32 " loses its trailing empty token; "crc32  1" has an extra empty one
    with pytest.raises(Corruption, match="checksum missing"):
        parse_meta(v1("private/1/CURRENT crc32 "), 1)
    with pytest.raises(Corruption, match="extra data"):
        parse_meta(v1("private/1/CURRENT crc32  1"), 1)
    with pytest.raises(Corruption, match="invalid checksum"):
        parse_meta(v2("private/1/CURRENT crc32  crc32 1"), 1)


def test_schema2_empty_field_name_is_an_ignored_field() -> None:
    # tokens: path, "", "1", "crc32", "5": the field named "" is unknown, so ignored
    assert parse_meta(v2(f"{SST}  1 crc32 5"), 1).files == [MetaFileEntry(SST, 5)]


@pytest.mark.parametrize(
    "line",
    [
        f"{SST} crc32 1 ni::future 1",
        f"{SST} ni::excluded maybe",
        f"{SST} ni::excluded TRUE",
    ],
)
def test_schema2_non_ignorable_file_fields(line: str) -> None:
    # MetaSchemaVersion2_NotSupported (file field)
    with pytest.raises(NotSupported, match="backup 1: meta file line 5"):
        parse_meta(v2(line), 1)


def test_excluded_entries() -> None:
    meta = parse_meta(
        v2(
            f"{SST} crc32 1",
            "shared_checksum/000018_sOKS087MG4EBHJV8LZN8P_1013.sst ni::excluded true",
            "shared_checksum/000019_sOKS087MG4EBHJV8LZN8P_1014.sst ni::excluded false crc32 3",
        ),
        1,
    )
    assert [(f.path[16:22], f.excluded, f.crc32c) for f in meta.files] == [
        ("000025", False, 1),
        ("000018", True, None),
        ("000019", False, 3),
    ]
    # an excluded entry is just a path: other fields are checked, then dropped
    line = "shared/000001.sst ni::excluded true crc32 5 size 9 temp kHot"
    assert parse_meta(v2(line), 1).files == [MetaFileEntry("shared/000001.sst", None, excluded=True)]
    with pytest.raises(Corruption, match="invalid checksum"):
        parse_meta(v2("shared/000001.sst ni::excluded true crc32 05"), 1)
    # excluded entries are not counted in N
    with pytest.raises(Corruption, match="file count is 3 but 2"):
        parse_meta(v2(f"{SST} crc32 1", "shared/000001.sst ni::excluded true", "private/1/CURRENT crc32 2", count=3), 1)


def test_footer() -> None:
    base = [f"{SST} crc32 1"]
    assert len(parse_meta(v2(*base, footer="// FOOTER\n"), 1).files) == 1
    assert len(parse_meta(v2(*base, footer="// FOOTER\nx y\nz \n"), 1).files) == 1
    # MetaSchemaVersion2_NotSupported (footer field)
    with pytest.raises(NotSupported, match="line 7: unrecognized non-ignorable footer field"):
        parse_meta(v2(*base, footer="// FOOTER\nni::checksum 1\n"), 1)
    with pytest.raises(Corruption, match="line 7: unexpected empty line"):
        parse_meta(v2(*base, footer="// FOOTER\n\n"), 1)
    with pytest.raises(Corruption, match="line 7: expected footer field"):
        parse_meta(v2(*base, footer="// FOOTER\nnospace\n"), 1)
    # entries after the footer marker are footer fields, so they are not counted
    with pytest.raises(Corruption, match="file count is 2 but 1"):
        parse_meta(v2(*base, footer="// FOOTER\nprivate/1/CURRENT crc32 2\n", count=2), 1)
    # schema 1 has no footer: the marker is a (bad) file line
    with pytest.raises(Corruption, match="line 5: checksum missing for '//'"):
        parse_meta(v1(*base) + b"// FOOTER\n", 1)


# --------------------------------------------------------------------------- reader: hostile paths


@pytest.mark.parametrize(
    "path",
    [
        "../../x",
        "/etc/x",
        "/etc/passwd",
        "private/1/../../x",
        "private/1/..",
        "private/1/.",
        "private/2/x",  # another backup's private file
        "private/01/x",
        "private/0/x",
        "private/1",
        "private/1/",
        "private/1/a/b",
        "private//x",
        "shared/",
        "shared/.",
        "shared/..",
        "shared/a/b",
        "shared//x",
        "shared_checksum/000012.sst",  # no '_': RocksDB would crash mapping it back
        "shared_checksum/_..",  # maps back to "."
        "shared_checksum/_x",  # maps back to ""
        "meta/1",
        "LATEST_BACKUP",
        "x",
        "./shared/x",
        "shared\\x",
        "shared/a\\b",
        "shared/a\x00b",
        "shared/a\x01b",
        "shared/a\tb",
        "shared/a\rb",
        "shared/a\x7fb",
        "SHARED/x",
        "shared_checksumx/y",
        "sharedx/y",
        "private/4294967296/x",
    ],
)
def test_hostile_paths_are_rejected(path: str) -> None:
    for data in (v1(f"{path} crc32 1"), v2(f"{path} crc32 1"), v2(f"{path} ni::excluded true")):
        with pytest.raises(Corruption, match=r"backup 1: meta file line \d+: invalid path"):
            parse_meta(data, 1)


def test_non_utf8_path_is_rejected() -> None:
    with pytest.raises(Corruption, match="invalid path"):
        parse_meta(b"1\n2\n1\nshared/\xff.sst crc32 1\n", 1)


def test_unicode_paths_are_fine() -> None:
    meta = parse_meta("1\n2\n1\nshared/ü.sst crc32 1\n".encode(), 1)
    assert meta.files[0].path == "shared/ü.sst"
    assert serialize_meta(meta) == "1\n2\n1\nshared/ü.sst crc32 1\n".encode()


def test_duplicate_paths_are_rejected() -> None:
    with pytest.raises(Corruption, match=r"line 5: invalid path .*listed twice"):
        parse_meta(v1("private/1/CURRENT crc32 1", "private/1/CURRENT crc32 1"), 1)
    with pytest.raises(Corruption, match="listed twice"):
        parse_meta(v2(f"{SST} crc32 1", f"{SST} ni::excluded true"), 1)


@pytest.mark.parametrize(
    "a,b",
    [
        ("shared_checksum/000012_1_2.sst", "shared_checksum/000012_3_4.sst"),
        ("shared/000012.sst", "shared_checksum/000012_3_4.sst"),
        ("private/1/000012.sst", "shared/000012.sst"),
    ],
)
def test_entries_restoring_to_the_same_db_file_are_rejected(a: str, b: str) -> None:
    with pytest.raises(Corruption, match=r"same DB file '000012\.sst'"):
        parse_meta(v1(f"{a} crc32 1", f"{b} crc32 1"), 1)


def test_meta_file_size_limit() -> None:
    with pytest.raises(Corruption, match="more than"):
        parse_meta(b"1\n" * (MAX_META_FILE_SIZE // 2 + 1), 1)


def test_messages_bound_hostile_text() -> None:
    with pytest.raises(Corruption) as info:
        parse_meta(v1("private/2/" + "x" * 100000 + " crc32 1"), 1)
    assert len(str(info.value)) < 300


# --------------------------------------------------------------------------- speed


def _big_meta(n: int, backup_id: int = 1) -> bytes:
    files = [
        MetaFileEntry(f"shared_checksum/{i:06d}_sISUZRZ68FLI3EMDPGB10_{i * 7}.sst", i * 2654435761 & 0xFFFFFFFF)
        for i in range(n)
    ]
    files += [MetaFileEntry(f"private/{backup_id}/{name}", 1) for name in ("MANIFEST-000001", "CURRENT")]
    return serialize_meta(BackupMeta(1700000000, 1 << 40, files))


@pytest.mark.slow
def test_parse_100k_entries() -> None:
    """A big backup's meta file round-trips (its speed is measured in examples/benchmark.py,
    not asserted here: the machines are shared and timed tests flake)."""
    data = _big_meta(100_000)
    meta = parse_meta(data, 1)
    assert len(meta.files) == 100_002
    assert serialize_meta(meta) == data


# --------------------------------------------------------------------------- fuzz

_DB_NAMES = st.one_of(
    st.builds("{:06d}.sst".format, st.integers(0, 10**7)),
    st.builds("{:06d}.blob".format, st.integers(0, 10**7)),
)


@st.composite
def metas(draw: st.DrawFn, schema: int) -> BackupMeta:
    """A valid BackupMeta for backup 1, writable in `schema`, in the order the writer keeps."""
    numbers = draw(st.lists(st.integers(1, 10**6), unique=True, max_size=12))
    counted: list[MetaFileEntry] = []
    excluded: list[MetaFileEntry] = []
    for number in numbers:
        ext = draw(st.sampled_from(["sst", "blob", "log"]))
        where = draw(st.sampled_from(["shared_checksum", "shared", "private"]))
        db_name = f"{number:06d}.{ext}"
        if where == "shared_checksum":
            sid = draw(st.text("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=20, max_size=20))
            path = f"shared_checksum/{number:06d}_s{sid}_{draw(st.integers(0, 1 << 40))}.{ext}"
        elif where == "shared":
            path = f"shared/{db_name}"
        else:
            path = f"private/1/{db_name}"
        if schema >= 2 and where == "shared_checksum" and draw(st.booleans()):
            excluded.append(MetaFileEntry(path, None, excluded=True))
            continue
        crc = draw(st.integers(0, 0xFFFFFFFF) if schema == 1 else st.none() | st.integers(0, 0xFFFFFFFF))
        size = None if schema == 1 else draw(st.none() | st.integers(0, (1 << 64) - 1))
        temp = None if schema == 1 else draw(st.none() | st.sampled_from(sorted(TEMPERATURES)))
        counted.append(MetaFileEntry(path, crc, size, temp))
    for name in draw(st.lists(st.sampled_from(["CURRENT", "MANIFEST-000005", "OPTIONS-000007"]), unique=True)):
        counted.append(MetaFileEntry(f"private/1/{name}", draw(st.integers(0, 0xFFFFFFFF))))
    return BackupMeta(
        timestamp=draw(st.integers(0, (1 << 64) - 1)),
        sequence_number=draw(st.integers(0, (1 << 64) - 1)),
        files=counted + excluded,
        app_metadata=draw(st.binary(max_size=64)),
        schema_version="1" if schema == 1 else SCHEMA_2_VERSION,
    )


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(metas(1))
def test_round_trip_schema1(meta: BackupMeta) -> None:
    data = serialize_meta(meta, 1)
    assert parse_meta(data, 1) == meta
    assert serialize_meta(parse_meta(data, 1), 1) == data


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(metas(2))
def test_round_trip_schema2(meta: BackupMeta) -> None:
    data = serialize_meta(meta, 2)
    assert parse_meta(data, 1) == meta
    assert serialize_meta(parse_meta(data, 1), 2) == data


def _parse_or_backup_error(data: bytes) -> None:
    try:
        meta = parse_meta(data, 1)
    except (Corruption, NotSupported) as exc:  # anything else fails the test
        assert str(exc).startswith("backup 1: meta file")
        return
    # whatever parses is confined to the backup's own files, and survives a rewrite
    for entry in meta.files:
        parts = entry.path.split("/")
        assert (parts[0] in ("shared", "shared_checksum") and len(parts) == 2) or parts[:2] == ["private", "1"]
        assert parts[-1] not in ("", ".", "..")
    again = parse_meta(serialize_meta(meta, 2), 1)
    assert again.files == [f for f in meta.files if not f.excluded] + [f for f in meta.files if f.excluded]
    assert (again.timestamp, again.sequence_number, again.app_metadata) == (
        meta.timestamp,
        meta.sequence_number,
        meta.app_metadata,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _parse_or_backup_error(data)


_SEEDS = [
    LDB_SAMPLE,
    v2(
        f"{SST} crc32 1 temp kHot size 983",
        "shared_checksum/000018_sOKS087MG4EBHJV8LZN8P_1013.sst ni::excluded true",
        "private/1/CURRENT crc32 7 foo bar",
        header="metadata 6162\nfoo bar\n",
        footer="// FOOTER\nchecksum 123\n",
    ),
]
_TOKENS = [
    b"\n", b" ", b"  ", b"0", b"9", b"-", b"_", b".", b"/", b"..", b"\x00", b"\xff", b"\r",
    b"crc32", b"size", b"temp", b"ni::", b"ni::excluded", b"true", b"metadata", b"// FOOTER",
    b"schema_version ", b"private/1/", b"private/2/", b"shared/", b"shared_checksum/", b"4294967296",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "token", "swap_lines", "truncate"]))
        if op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "replace":
            data[pos : pos + 1] = draw(st.binary(min_size=1, max_size=1))
        elif op == "token":
            data[pos:pos] = draw(st.sampled_from(_TOKENS))
        elif op == "swap_lines":
            lines = bytes(data).split(b"\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
        else:
            del data[pos:]
    return bytes(data)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutations_of_valid_files(data: bytes) -> None:
    _parse_or_backup_error(data)
