"""The pure helpers behind `rbackup`: argument parsing and output shapes, no I/O."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from rbackup.cli_format import (
    backends_table,
    backup_json,
    human_size,
    iso_utc,
    list_json,
    list_table,
    local_time,
    metadata_display,
    metadata_text,
    parse_size,
    parse_storage_options,
    render_table,
    verify_json,
    verify_line,
)
from rbackup.env.base import Capabilities
from rbackup.env.registry import BackendInfo
from rbackup.options import BackupFileInfo, BackupInfo
from rbackup.restore import VerifyResult

TS = 1714564800  # 2024-05-01T12:00:00Z


# -- -o KEY=VALUE ------------------------------------------------------------------------
def test_storage_options_nest_dotted_keys_and_parse_json_values():
    opts = parse_storage_options([
        "client_kwargs.endpoint_url=http://localhost:9000",
        "client_kwargs.region_name=eu-west-1",
        "anon=false",
        "part_size=16777216",
        "config_kwargs.retries={\"max_attempts\": 3}",
        "key=AKIA/with=equals",
    ])
    assert opts == {
        "client_kwargs": {"endpoint_url": "http://localhost:9000", "region_name": "eu-west-1"},
        "anon": False,
        "part_size": 16777216,
        "config_kwargs": {"retries": {"max_attempts": 3}},
        "key": "AKIA/with=equals",
    }


def test_storage_options_quoted_json_keeps_a_numeric_looking_string():
    assert parse_storage_options(['secret="0123"', "token=", "x=null"]) == {"secret": "0123", "token": "", "x": None}


def test_storage_options_later_key_overrides_and_json_objects_merge():
    assert parse_storage_options(["a=1", "a=2"]) == {"a": 2}
    assert parse_storage_options(['c={"x": 1}', "c.y=2"]) == {"c": {"x": 1, "y": 2}}
    assert parse_storage_options(["c.y=2", 'c={"x": 1}']) == {"c": {"x": 1, "y": 2}}


@pytest.mark.parametrize("pairs, message", [
    (["novalue"], "no '='"),
    (["=1"], "empty component"),
    (["a..b=1"], "empty component"),
    (["a.=1"], "empty component"),
    (["a=1", "a.b=2"], "conflicts with 'a'"),
    (["a.b=1", "a=2"], "nested options"),
])
def test_storage_options_errors(pairs, message):
    with pytest.raises(ValueError, match=message):
        parse_storage_options(pairs)


def test_storage_option_errors_never_echo_a_value():
    with pytest.raises(ValueError) as info:
        parse_storage_options(["hunter2-secret"])
    assert "hunter2" not in str(info.value)


# -- sizes -----------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("1048576", 1048576), ("512K", 512 * 1024), ("512k", 512 * 1024), ("10M", 10 * 2**20),
    ("10MiB", 10 * 2**20), ("10mib", 10 * 2**20), ("10MB", 10_000_000), ("1.5G", int(1.5 * 2**30)),
    ("2T", 2 * 2**40), ("100B", 100), (" 7 M ", 7 * 2**20),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "-1", "10X", "M", "1e6", "ten"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize("n, expected", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (123674, "120.8 KiB"),
    (5 * 2**30, "5.0 GiB"), (3 * 2**50, "3.0 PiB"), (2**70, f"{2**70 / 2**50:.1f} PiB"),
])
def test_human_size(n, expected):
    assert human_size(n) == expected


# -- times and metadata ----------------------------------------------------------------
def test_times():
    assert iso_utc(TS) == "2024-05-01T12:00:00Z"
    assert local_time(TS, dt.timezone.utc) == "2024-05-01 12:00:00 UTC"
    assert local_time(TS, dt.timezone(dt.timedelta(hours=2), "CEST")) == "2024-05-01 14:00:00 CEST"


@pytest.mark.parametrize("raw, text, shown", [
    (b"", "", ""),
    (b"nightly v1.4", "nightly v1.4", "nightly v1.4"),
    ("d\u00e9j\u00e0 vu".encode(), "d\u00e9j\u00e0 vu", "d\u00e9j\u00e0 vu"),
    (b"two\nlines", "two\nlines", "hex:74776f0a6c696e6573"),
    (b"\xff\x00", None, "hex:ff00"),
])
def test_metadata(raw, text, shown):
    assert metadata_text(raw) == text
    assert metadata_display(raw) == shown


# -- list ------------------------------------------------------------------------------
FILES = (BackupFileInfo("shared_checksum/000009_s1_100.sst", 100, 0x3367E3DF),
         BackupFileInfo("private/2/CURRENT", 16, None))
B1 = BackupInfo(1, TS, 2048, 3, b"first")
B2 = BackupInfo(2, TS + 60, 116, 2, b"\xff", FILES)


def test_backup_json_shape():
    assert backup_json(B1) == {"id": 1, "timestamp": TS, "time": "2024-05-01T12:00:00Z", "size": 2048,
                               "files": 3, "metadata": "first", "metadata_hex": "6669727374"}
    details = backup_json(B2)
    assert details["metadata"] is None and details["metadata_hex"] == "ff"
    assert details["file_details"] == [
        {"path": "shared_checksum/000009_s1_100.sst", "size": 100, "crc32c": 0x3367E3DF},
        {"path": "private/2/CURRENT", "size": 16, "crc32c": None}]


def test_list_json_document_is_json_and_sorted():
    doc = list_json("s3://b/app", [B1], {7: "meta/7: bad", 3: "missing file"})
    assert json.loads(json.dumps(doc)) == doc
    assert list(doc) == ["backup_dir", "backups", "corrupt"]
    assert doc["backup_dir"] == "s3://b/app"
    assert [b["id"] for b in doc["backups"]] == [1]
    assert doc["corrupt"] == [{"id": 3, "reason": "missing file"}, {"id": 7, "reason": "meta/7: bad"}]


def test_list_table_orders_valid_and_corrupt_by_id():
    table = list_table([B1, BackupInfo(4, TS, 10, 1)], {3: "backup 3: file missing: private/3/CURRENT"},
                       dt.timezone.utc)
    lines = table.split("\n")
    assert lines[0].split() == ["ID", "TIME", "SIZE", "FILES", "METADATA"]
    assert lines[1].split() == ["1", "2024-05-01", "12:00:00", "UTC", "2.0", "KiB", "3", "first"]
    assert lines[2].split()[:2] == ["3", "CORRUPT"] and lines[2].endswith("private/3/CURRENT")
    assert lines[3].split() == ["4", "2024-05-01", "12:00:00", "UTC", "10", "B", "1"]
    assert not any(line.endswith(" ") for line in lines)


def test_list_table_with_files():
    table = list_table([B2], {}, dt.timezone.utc)
    lines = table.split("\n")
    assert "hex:ff" in lines[1]
    assert lines[2].split() == ["FILE", "SIZE", "CHECKSUM"]
    assert lines[3].split() == ["shared_checksum/000009_s1_100.sst", "100", "B", "crc32c", "3367e3df"]
    assert lines[4].split() == ["private/2/CURRENT", "16", "B", "-"]
    assert all(line.startswith("    ") for line in lines[2:])


def test_render_table_alignment():
    assert render_table(["A", "NUM", "LAST"], [["x", "1", "tail"], ["long", "100", ""]], right=(1,)) == (
        "A     NUM  LAST\n"
        "x       1  tail\n"
        "long  100")


def test_backends_table():
    table = backends_table([
        BackendInfo("file", "rbackup.env.local:LocalEnv", "rbackup",
                    Capabilities(atomic_rename=True, conditional_create=True, durable_sync=True,
                                 directories=True, concurrency=4)),
        BackendInfo("xyz", "xyz_plugin:Env", None, None, "ImportError: no module named xyz_plugin"),
    ])
    lines = table.split("\n")
    assert lines[0].split() == ["PROTOCOL", "PACKAGE", "ATOMIC-RENAME", "CONDITIONAL-CREATE", "DURABLE-SYNC",
                                "DIRECTORIES", "CONCURRENCY", "CLASS"]
    assert lines[1].split() == ["file", "rbackup", "yes", "yes", "yes", "yes", "4", "rbackup.env.local:LocalEnv"]
    assert lines[2].split()[:7] == ["xyz", "?", "?", "?", "?", "?", "?"]
    assert lines[2].endswith("xyz_plugin:Env: failed to load: ImportError: no module named xyz_plugin")


def test_verify_line_says_how_each_file_was_checked() -> None:
    assert verify_line(VerifyResult(3, False, 7)) == "backup 3: ok (files and sizes verified)"
    assert verify_line(VerifyResult(3, True, 7, 5, 2, 3 * 2**20)) == (
        "backup 3: ok (checksums verified: 5 from the store's CRC-32C, 2 read back (3.0 MiB))")
    assert verify_line(VerifyResult(4, True, 7, 0, 6, 10)).endswith(
        "0 from the store's CRC-32C, 6 read back (10 B), 1 without a recorded CRC-32C, size only)")


def test_verify_json_has_every_backup_passed_or_not() -> None:
    doc = verify_json("s3://b/app", [VerifyResult(1, True, 7, 5, 2, 100), (2, "backup 2: checksum mismatch in x")])
    assert json.loads(json.dumps(doc)) == {"backup_dir": "s3://b/app", "backups": [
        {"id": 1, "ok": True, "files": 7, "with_checksum": True, "from_store_checksum": 5, "downloaded": 2,
         "bytes_downloaded": 100},
        {"id": 2, "ok": False, "error": "backup 2: checksum mismatch in x"}]}
