"""The pure MANIFEST reader: RocksDB's log format and VersionEdit replay, on hand-made and real MANIFESTs."""
from __future__ import annotations

import io
import os

import pytest
import rocksdict

from rbackup.errors import Corruption, NotSupported
from rbackup.format import logformat, manifest
from rbackup.format.logformat import BLOCK_SIZE, encode_records, read_records


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def lp(data: bytes) -> bytes:
    return varint(len(data)) + data


IKEY = lp(b"key" + bytes(8))


def new_file4(level: int, number: int, size: int, *custom: tuple[int, bytes]) -> bytes:
    body = varint(manifest.NEW_FILE4) + varint(level) + varint(number) + varint(size) + IKEY + IKEY
    body += varint(1) + varint(9)
    for tag, value in custom:
        body += varint(tag) + lp(value)
    return body + varint(manifest.NF_TERMINATE)


def header_edit() -> bytes:
    return (varint(manifest.COMPARATOR) + lp(b"leveldb.BytewiseComparator") + varint(manifest.LOG_NUMBER) + varint(4)
            + varint(manifest.NEXT_FILE_NUMBER) + varint(20) + varint(manifest.LAST_SEQUENCE) + varint(77))


def replay_log(*records: bytes) -> manifest.DbVersion:
    return manifest.read_manifest(io.BytesIO(encode_records(list(records))), "MANIFEST-000001")


# --- the log format ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("recyclable", [None, 7])
def test_records_round_trip_across_blocks(recyclable):
    records = [b"", b"a" * 10, os.urandom(BLOCK_SIZE * 2 + 123), b"b" * (BLOCK_SIZE - 7 - 11), b"tail"]
    data = encode_records(records, recyclable_log_number=recyclable)
    assert len(data) > 3 * BLOCK_SIZE
    assert list(read_records(io.BytesIO(data), "log", recyclable)) == records


@pytest.mark.parametrize("cut", [1, 5, 9, 200])
def test_a_torn_tail_ends_the_log_quietly(cut):
    data = encode_records([b"first", b"x" * 300])
    assert list(read_records(io.BytesIO(data[:-cut]), "log")) == [b"first"]


def test_a_torn_fragmented_record_ends_the_log_quietly():
    data = encode_records([b"first", os.urandom(BLOCK_SIZE + 10)])
    assert list(read_records(io.BytesIO(data[:BLOCK_SIZE + 3]), "log")) == [b"first"]


def test_a_bad_checksum_before_the_end_is_corruption_naming_the_file_and_offset():
    data = bytearray(encode_records([b"first", b"second", b"third"]))
    data[7 + 5 + 7 + 2] ^= 1  # a byte of "second"'s payload
    with pytest.raises(Corruption, match=r"MANIFEST-000009: checksum mismatch .* offset 12"):
        list(read_records(io.BytesIO(bytes(data)), "MANIFEST-000009"))


def test_records_of_a_recycled_logs_previous_life_end_it():
    old = encode_records([b"old1", b"old2", b"old3"], recyclable_log_number=3)
    new = encode_records([b"new1"], recyclable_log_number=8)
    assert list(read_records(io.BytesIO(new + old[len(new):]), "000008.log", 8)) == [b"new1"]


def test_unknown_record_types_ignorable_or_not():
    def physical(kind: int, payload: bytes) -> bytes:
        body = bytes([kind]) + payload
        return logformat.mask_crc(logformat.crc32c(body)).to_bytes(4, "little") + len(payload).to_bytes(2, "little") \
            + body
    ignorable = physical(0x80 | 60, b"future") + encode_records([b"r"])
    assert list(read_records(io.BytesIO(ignorable), "log")) == [b"r"]
    with pytest.raises(Corruption, match="unknown record type 60"):
        list(read_records(io.BytesIO(physical(60, b"?") + encode_records([b"r"])), "log"))
    with pytest.raises(NotSupported, match="compressed WAL"):
        list(read_records(io.BytesIO(physical(logformat.SET_COMPRESSION, b"\x07")), "000004.log"))


def test_a_middle_fragment_without_a_start_is_corruption():
    whole = encode_records([os.urandom(BLOCK_SIZE * 2)])
    with pytest.raises(Corruption, match="no start"):
        list(read_records(io.BytesIO(bytes(BLOCK_SIZE) + whole[BLOCK_SIZE:]), "log"))


# --- VersionEdits and replay ------------------------------------------------------------------------------------

def test_replay_files_column_families_and_logs():
    side = varint(manifest.COLUMN_FAMILY) + varint(1)
    v = replay_log(
        header_edit() + new_file4(0, 10, 1000) + new_file4(0, 11, 1100),
        varint(manifest.COLUMN_FAMILY_ADD) + lp(b"side") + side + varint(manifest.LOG_NUMBER) + varint(4),
        side + new_file4(1, 12, 1200) + varint(manifest.LOG_NUMBER) + varint(9),
        varint(manifest.DELETED_FILE) + varint(0) + varint(10) + new_file4(6, 13, 1300)
        + varint(manifest.LOG_NUMBER) + varint(12) + varint(manifest.LAST_SEQUENCE) + varint(99),
    )
    assert [(t.number, t.level, t.size) for t in v.tables()] == [(11, 0, 1100), (12, 1, 1200), (13, 6, 1300)]
    assert {cf.name: cf.log_number for cf in v.column_families.values()} == {"default": 12, "side": 9}
    assert v.min_wal_number() == 9 and v.last_sequence == 99 and v.next_file_number == 20
    two_phase = replay_log(header_edit() + varint(manifest.LOG_NUMBER) + varint(12),
                           varint(manifest.MIN_LOG_NUMBER_TO_KEEP) + varint(7))
    assert two_phase.min_wal_number() == 7


def test_a_dropped_column_family_takes_its_files_with_it():
    side = varint(manifest.COLUMN_FAMILY) + varint(3)
    v = replay_log(header_edit(), varint(manifest.COLUMN_FAMILY_ADD) + lp(b"gone") + side,
                   side + new_file4(0, 15, 10), side + varint(manifest.COLUMN_FAMILY_DROP))
    assert v.tables() == [] and list(v.column_families) == [0]


def test_an_atomic_group_cut_off_by_the_end_is_dropped():
    def member(remaining: int, number: int) -> bytes:
        return varint(manifest.IN_ATOMIC_GROUP) + varint(remaining) + new_file4(0, number, 1)
    whole = replay_log(header_edit(), member(1, 30), member(0, 31))
    assert [t.number for t in whole.tables()] == [30, 31]
    cut = replay_log(header_edit(), member(1, 30))
    assert cut.tables() == []


def test_blob_files_live_while_linked_or_not_all_garbage():
    def addition(number: int, count: int) -> bytes:
        return (varint(manifest.BLOB_FILE_ADDITION) + varint(number) + varint(count) + varint(count * 10)
                + lp(b"") + lp(b"") + varint(0))

    def garbage(number: int, count: int) -> bytes:
        return varint(manifest.BLOB_FILE_GARBAGE) + varint(number) + varint(count) + varint(count * 10) + varint(0)
    linked = (manifest.NF_OLDEST_BLOB, varint(40))
    v = replay_log(header_edit() + addition(40, 5) + addition(41, 5) + addition(42, 5) + new_file4(0, 50, 1, linked),
                   garbage(40, 5) + garbage(41, 5) + garbage(42, 2))
    assert [b.number for b in v.blobs()] == [40, 42]


def test_ignorable_future_tags_are_skipped_and_others_refused():
    future = varint(manifest.SAFE_IGNORE_MASK + 77) + lp(b"whatever")
    assert replay_log(header_edit() + future + new_file4(0, 10, 1)).tables()[0].number == 10
    with pytest.raises(NotSupported, match="MANIFEST-000001 \\(record 0\\): VersionEdit tag 77 is unknown"):
        replay_log(header_edit() + varint(77) + lp(b"x"))
    with pytest.raises(NotSupported, match="SST #10 carries field 99"):
        replay_log(header_edit() + new_file4(0, 10, 1, (99, b"must-know")))


def test_path_ids_wals_and_the_old_new_file_forms():
    new_file3 = varint(manifest.NEW_FILE3) + varint(2) + varint(21) + varint(1) + varint(500) + IKEY + IKEY \
        + varint(1) + varint(2)
    new_file = varint(manifest.NEW_FILE) + varint(0) + varint(22) + varint(600) + IKEY + IKEY
    wals = (varint(manifest.WAL_ADDITION2) + lp(varint(8) + varint(2) + varint(4096) + varint(1))
            + varint(manifest.WAL_ADDITION) + varint(9) + varint(1))
    v = replay_log(header_edit() + new_file3 + new_file + new_file4(0, 23, 7, (manifest.NF_PATH_ID, b"\x02")) + wals,
                   varint(manifest.WAL_DELETION2) + lp(varint(9)))
    assert [(t.number, t.path_id) for t in v.tables()] == [(21, 1), (22, 0), (23, 2)]
    assert v.wals == {9: None}


@pytest.mark.parametrize("edits,message", [
    ((), "has no next file number, no last sequence number, no log number entry"),
    ((varint(manifest.DELETED_FILE) + varint(0) + varint(5),), "deletes SST #5 from level 0"),
    ((varint(manifest.COLUMN_FAMILY) + varint(4) + new_file4(0, 5, 1),), "column family 4, which does not exist"),
    ((new_file4(0, 5, 1)[:-3],), "runs past the record's end|bad varint"),
])
def test_inconsistent_manifests_are_corruption(edits, message):
    with pytest.raises(Corruption, match=message):
        replay_log(*((header_edit(),) if edits else ()), *edits)


@pytest.mark.parametrize("data", [b"MANIFEST-000005", b"", b"garbage\n", b"MANIFEST-00x\n"])
def test_a_damaged_current_is_corruption(data):
    with pytest.raises(Corruption, match="CURRENT"):
        manifest.parse_current(data)


# --- real DBs ---------------------------------------------------------------------------------------------------

def read_db_version(path: str) -> manifest.DbVersion:
    with open(os.path.join(path, "CURRENT"), "rb") as fh:
        name = manifest.parse_current(fh.read())
    with open(os.path.join(path, name), "rb") as fh:
        return manifest.read_manifest(fh, name)


def test_a_rocksdict_db_with_column_families_and_blob_files(tmp_path):
    path = str(tmp_path / "db")
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_enable_blob_files(True)
    opts.set_min_blob_size(16)
    db = rocksdict.Rdict(path, opts)
    side = db.create_column_family("side", opts)
    for i in range(300):
        db[b"k%05d" % i] = os.urandom(100)
        side[b"s%05d" % i] = os.urandom(8)
    db.flush()
    side.flush()
    for i in range(150):
        db[b"k%05d" % i] = os.urandom(100)
    db.flush()
    db.compact_range(None, None)
    side[b"unflushed"] = b"in the WAL only"
    live = {(f["name"].lstrip("/"), f["level"]) for f in db.live_files()}
    sequence = db.latest_sequence_number()
    db.close()

    v = read_db_version(path)
    assert {(f"{t.number:06d}.sst", t.level) for t in v.tables()} == live
    on_disk = {n for n in os.listdir(path) if n.endswith(".blob")}
    assert {f"{b.number:06d}.blob" for b in v.blobs()} == on_disk and len(on_disk) >= 2
    assert {cf.name for cf in v.column_families.values()} == {"default", "side"}
    assert v.last_sequence <= sequence
    wals = sorted(n for n in os.listdir(path) if n.endswith(".log"))
    assert wals and all(int(n[:-4]) >= v.min_wal_number() for n in wals)
