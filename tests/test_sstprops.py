"""rbackup.format.sstprops and rbackup.format._snappy against real SSTs and real tools.

Ground truth comes from RocksDB itself, never from the reader under test:
`sst_dump --show_properties` (format_version <= 5), the `table_file_creation`
events RocksDB logs with every SST's properties (all formats, including the
fv6 files rocksdict writes by default), and the names `ldb backup` gives.
"""
from __future__ import annotations

import io
import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import rocksdict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbackup.errors import BackupError, Corruption, NotSupported
from rbackup.format import _snappy, sstprops

from .rbpeer import needs_rbpeer, peer

N_KEYS = 600
SESSION_ID = re.compile(r"[0-9A-Z]{20}")
FUZZ = settings(max_examples=300, deadline=500,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------- fixtures

def _key(i: int) -> bytes:
    return f"key{i:06d}".encode()


def _value(i: int) -> bytes:
    return b"v" * 40 + str(i).encode()


# name -> (format_version or None for the default, compression or None, table)
CONFIGS = {
    "fv2": (2, None, None),
    "fv3": (3, None, None),
    "fv4": (4, None, None),
    "fv5": (5, None, None),
    "fv5-none": (5, "none", None),
    "fv5-lz4": (5, "lz4", None),
    "fv5-zstd": (5, "zstd", None),
    "fv6": (6, None, None),
    "fv6-none": (None, "none", None),
    "fv6-snappy": (None, "snappy", None),
    "fv6-lz4": (None, "lz4", None),
    "fv6-zstd": (None, "zstd", None),
    "plain": (None, None, "plain"),
    "cuckoo": (None, None, "cuckoo"),
}
SST_DUMP_CONFIGS = [name for name, (fv, _, table) in CONFIGS.items()
                    if fv is not None and fv <= 5 and table is None]


def _options(fv: int | None, compression: str | None, table: str | None) -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    if fv is not None:
        bbo = rocksdict.BlockBasedOptions()
        bbo.set_format_version(fv)
        opts.set_block_based_table_factory(bbo)
    if compression is not None:
        opts.set_compression_type(getattr(rocksdict.DBCompressionType, compression)())
    if table is not None:
        opts.set_allow_mmap_reads(True)  # both table types require it
    if table == "plain":
        opts.set_prefix_extractor(rocksdict.SliceTransform.create_fixed_prefix(3))
        opts.set_plain_table_factory(rocksdict.PlainTableFactoryOptions())
    elif table == "cuckoo":
        opts.set_cuckoo_table_factory(rocksdict.CuckooTableOptions())
    return opts


def _write_and_flush(path: Path, opts: rocksdict.Options, batches: int = 1) -> None:
    """One DB session writing `batches` SSTs of N_KEYS keys each."""
    db = rocksdict.Rdict(str(path), opts)
    try:
        for b in range(batches):
            for i in range(b * N_KEYS, (b + 1) * N_KEYS):
                db[_key(i)] = _value(i)
            db.flush()
    finally:
        db.close()


def _ssts(path: Path) -> list[Path]:
    return sorted(path.glob("*.sst"))


@pytest.fixture(scope="module")
def dbs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sstprops")
    made = {}
    for name, cfg in CONFIGS.items():
        _write_and_flush(root / name, _options(*cfg))
        made[name] = root / name
    # rocksdict's own defaults (not raw mode): what most users produce.
    db = rocksdict.Rdict(str(root / "default"))
    for i in range(N_KEYS):
        db[f"k{i}"] = i
    db.flush()
    db.close()
    made["default"] = root / "default"
    return made


@pytest.fixture(scope="module")
def sst_bytes(dbs) -> dict[str, bytes]:
    return {name: _ssts(dbs[name])[0].read_bytes() for name in ("fv5", "fv6", "default")}


def _props(path: Path) -> dict[str, bytes]:
    with path.open("rb") as f:
        return sstprops.read_table_properties(f, path.stat().st_size)


def _sid(path: Path) -> str | None:
    with path.open("rb") as f:
        return sstprops.read_session_id(f, path.stat().st_size)


def _sid_of(data: bytes) -> str | None:
    return sstprops.read_session_id(io.BytesIO(data), len(data))


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _decode_uvarint(b: bytes) -> int:
    n = shift = 0
    for byte in b:
        n |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return n
    raise AssertionError(f"bad varint {b!r}")


def _logged_tables(db: Path) -> tuple[list[str], dict[int, dict]]:
    """The session ids RocksDB logged at open, and each SST's logged properties."""
    sessions, tables = [], {}
    # oldest first: LOG.old.<micros> files, then the current LOG
    for log in sorted(db.glob("LOG*"), key=lambda p: (p.name == "LOG", p.name)):
        for line in log.read_text(errors="replace").splitlines():
            if "DB Session ID:" in line:
                sessions.append(line.split("DB Session ID:")[1].strip())
            if "EVENT_LOG_v1" in line and '"table_file_creation"' in line:
                event = json.loads(line.split("EVENT_LOG_v1", 1)[1])
                tables[event["file_number"]] = event["table_properties"]
    return sessions, tables


# ------------------------------------------------- cross-checks with RocksDB

# EVENT_LOG json key -> table property name, string-valued / varint-valued.
LOGGED_STRINGS = {
    "db_session_id": "rocksdb.creating.session.identity",
    "db_id": "rocksdb.creating.db.identity",
    "column_family_name": "rocksdb.column.family.name",
    "compression": "rocksdb.compression",
    "comparator": "rocksdb.comparator",
}
LOGGED_NUMBERS = {
    "num_entries": "rocksdb.num.entries",
    "data_size": "rocksdb.data.size",
    "num_data_blocks": "rocksdb.num.data.blocks",
    "raw_key_size": "rocksdb.raw.key.size",
    "format_version": "rocksdb.format.version",
    "orig_file_number": "rocksdb.original.file.number",
}


@pytest.mark.parametrize("name", [*CONFIGS, "default"])
def test_properties_match_rocksdb_event_log(dbs, name):
    sessions, logged = _logged_tables(dbs[name])
    (sst,) = _ssts(dbs[name])
    want = logged[int(sst.stem)]
    props = _props(sst)
    sid = _sid(sst)
    assert SESSION_ID.fullmatch(sid)
    assert sid == want["db_session_id"] == sessions[-1]
    for key, prop in LOGGED_STRINGS.items():
        if want[key]:  # plain/cuckoo log some as "" and do not store them
            assert props[prop].decode() == want[key], prop
    for key, prop in LOGGED_NUMBERS.items():
        assert _decode_uvarint(props[prop]) == want[key], prop


def _sst_dump(sst: Path) -> str:
    out = subprocess.run(["sst_dump", "--show_properties", f"--file={sst}"],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout


@pytest.mark.skipif(shutil.which("sst_dump") is None, reason="sst_dump (RocksDB tools) not on PATH")
@pytest.mark.parametrize("name", SST_DUMP_CONFIGS)
def test_properties_match_sst_dump(dbs, name):
    (sst,) = _ssts(dbs[name])
    dump = _sst_dump(sst)
    shown = dict(re.findall(r"^  ([^:\n]+): (.*)$", dump, re.M))
    props = _props(sst)
    assert _sid(sst) == shown["DB session identity"]
    assert props["rocksdb.creating.db.identity"].decode() == shown["DB identity"]
    assert props["rocksdb.compression"].decode() == shown["SST file compression algo"]
    assert _decode_uvarint(props["rocksdb.num.entries"]) == int(shown["# entries"])
    assert _decode_uvarint(props["rocksdb.data.size"]) == int(shown["data block size"])
    # user-collected properties, which sst_dump prints raw in hex
    for prop, hexval in re.findall(r"^  # (rocksdb\.[^:]+): 0x([0-9A-F]*)$", dump, re.M):
        assert props[prop].hex().upper() == hexval, prop


@pytest.mark.skipif(shutil.which("ldb") is None, reason="ldb (RocksDB tools) not on PATH")
def test_names_match_ldb_backup(tmp_path):
    db = tmp_path / "db"
    _write_and_flush(db, _options(5, None, None), batches=2)
    subprocess.run(["ldb", "--ignore_unknown_options", f"--db={db}", "backup",
                    f"--backup_dir={tmp_path / 'bk'}"], capture_output=True, timeout=60, check=True)
    ldb_names = sorted(p.name for p in (tmp_path / "bk" / "shared_checksum").iterdir())
    ours = sorted(f"{sst.stem}_s{_sid(sst)}_{sst.stat().st_size}.sst" for sst in _ssts(db))
    assert len(ours) == 2
    assert ours == ldb_names


def test_session_id_is_per_db_session(tmp_path):
    """SSTs of one session share the id; a reopened DB writes with a new one."""
    db = tmp_path / "db"
    _write_and_flush(db, _options(None, None, None), batches=2)
    first = {_sid(sst) for sst in _ssts(db)}
    assert len(first) == 1
    rdict = rocksdict.Rdict(str(db), _options(None, None, None))
    rdict[b"later"] = b"x"
    rdict.flush()
    rdict.close()
    newest = _ssts(db)[-1]
    sessions, logged = _logged_tables(db)
    assert _sid(newest) not in first
    assert _sid(newest) == sessions[-1] == logged[int(newest.stem)]["db_session_id"]


def test_sst_file_writer_output(tmp_path):
    path = tmp_path / "ext.sst"
    writer = rocksdict.SstFileWriter(rocksdict.Options(raw_mode=True))
    writer.open(str(path))
    for i in range(100):
        writer[_key(i)] = _value(i)
    writer.finish()
    assert SESSION_ID.fullmatch(_sid(path))
    assert "rocksdb.external_sst_file.version" in _props(path)


# ------------------------------------------- what the blocks look like on disk

def _trailer_types(sst: Path) -> dict[str, int]:
    """Compression type byte of the metaindex and of each block it names, plus
    the index block (named in the metaindex for fv >= 6, in the footer before)."""
    data = sst.read_bytes()
    with sst.open("rb") as f:
        footer = sstprops._parse_footer(f, len(data))
    meta = sstprops._parse_block(data[footer.metaindex_offset:][:footer.metaindex_size], "m")
    if footer.format_version < 6:
        _, pos = sstprops._varint(data, len(data) - 52, len(data) - 12, 64, "h")
        _, pos = sstprops._varint(data, pos, len(data) - 12, 64, "h")
        meta[b"rocksdb.index"] = data[pos:len(data) - 12]  # the second footer handle
    types = {"metaindex": data[footer.metaindex_offset + footer.metaindex_size]}
    for name, handle in meta.items():
        offset, size = sstprops._decode_handle(handle, "h")
        types[name.decode()] = data[offset + size]
    return types


@pytest.mark.parametrize("name, index_type", [
    ("fv5", 1), ("fv5-none", 0), ("fv5-lz4", 4), ("fv5-zstd", 7),
    ("fv6", 1), ("fv6-none", 0), ("fv6-snappy", 1), ("fv6-lz4", 4), ("fv6-zstd", 7),
    ("default", None),  # its small index did not compress well enough, so is stored raw
])
def test_properties_block_is_never_compressed(dbs, name, index_type):
    """Empirical: RocksDB stores meta blocks raw whatever the compression, while
    the index block is compressed like data blocks."""
    types = _trailer_types(_ssts(dbs[name])[0])
    assert types["metaindex"] == 0
    assert types["rocksdb.properties"] == 0
    if index_type is not None:
        assert types["rocksdb.index"] == index_type


class _CountingReader(io.BytesIO):
    reads: list[tuple[int, int]]

    def read(self, n: int = -1) -> bytes:
        start = self.tell()
        out = super().read(n)
        self.reads.append((start, len(out)))
        return out


@pytest.mark.parametrize("name", ["fv5", "fv6", "default", "plain"])
def test_reads_only_the_tail(dbs, name):
    sst = _ssts(dbs[name])[0]
    data = sst.read_bytes()
    f = _CountingReader(data)
    f.reads = []
    sstprops.read_session_id(f, len(data))
    assert sum(n for _, n in f.reads) < 4096 < len(data)
    tail = _props(sst).get("rocksdb.tail.start.offset")
    if tail is not None:  # block-based: no data or index block is ever read
        assert min(start for start, _ in f.reads) >= _decode_uvarint(tail)


# --------------------------------------- synthetic tails (rebuilt real SSTs)

def _block(entries: dict[bytes, bytes]) -> bytes:
    """A block with restart interval 1, as MetaIndexBuilder writes them."""
    body, restarts = bytearray(), []
    for key, value in sorted(entries.items()):
        restarts.append(len(body))
        body += _uvarint(0) + _uvarint(len(key)) + _uvarint(len(value)) + key + value
    restarts = restarts or [0]
    return bytes(body) + b"".join(r.to_bytes(4, "little") for r in restarts) + \
        len(restarts).to_bytes(4, "little")


def _rebuild(sst: bytes, *, props: dict[bytes, bytes] | None = None, payload: bytes | None = None,
             ctype: int = 0, fv: int | None = None, props_name: bytes = b"rocksdb.properties",
             magic: int = 0x88E241B785F4CFF7) -> bytes:
    """Re-tail a real block-based SST with a new properties block and footer.

    The original blocks stay in place; a new properties block (`payload` as
    stored, or `props` encoded raw), metaindex and footer are appended.
    """
    with io.BytesIO(sst) as f:
        footer = sstprops._parse_footer(f, len(sst))
        meta = sstprops._parse_block(
            sstprops._read_block(f, footer, footer.metaindex_offset, footer.metaindex_size, "m"), "m")
        if props is None:
            offset, size = sstprops._decode_handle(meta[b"rocksdb.properties"], "h")
            props = sstprops._parse_block(sstprops._read_block(f, footer, offset, size, "p"), "p")
    fv = footer.format_version if fv is None else fv
    payload = _block(props) if payload is None else payload
    out = bytearray(sst[:footer.footer_offset])
    props_offset = len(out)
    out += payload + bytes([ctype]) + bytes(4)
    meta = {k: v for k, v in meta.items() if k != b"rocksdb.properties"}
    meta[props_name] = _uvarint(props_offset) + _uvarint(len(payload))
    metaindex = _block(meta)
    meta_offset = len(out)
    out += metaindex + bytes(5)
    if fv >= 6:
        part2 = b"\x3e\x00\x7a\x00" + bytes(4) + (7).to_bytes(4, "little") + \
            len(metaindex).to_bytes(4, "little") + bytes(24)
    else:
        part2 = (_uvarint(meta_offset) + _uvarint(len(metaindex)) + b"\0\0").ljust(40, b"\0")
    return bytes(out + b"\x01" + part2 + fv.to_bytes(4, "little") + magic.to_bytes(8, "little"))


@pytest.mark.parametrize("which", ["fv5", "fv6"])
def test_rebuild_roundtrip(sst_bytes, which):
    """The test's own tail builder is faithful (guards the tests below)."""
    data = sst_bytes[which]
    assert _sid_of(_rebuild(data)) == _sid_of(data)


@pytest.mark.parametrize("which", ["fv5", "fv6"])
def test_snappy_compressed_properties_block(sst_bytes, which):
    data = sst_bytes[which]
    raw_props = _block({k.encode(): v for k, v in _props_of(data).items()})
    rebuilt = _rebuild(data, payload=snappy_compress(raw_props), ctype=1)
    assert _props_of(rebuilt) == _props_of(data)
    assert _sid_of(rebuilt) == _sid_of(data)


def _props_of(data: bytes) -> dict[str, bytes]:
    return sstprops.read_table_properties(io.BytesIO(data), len(data))


@pytest.mark.parametrize("ctype, name", [(2, "zlib"), (3, "bzip2"), (4, "lz4"), (5, "lz4hc"),
                                         (6, "xpress"), (7, "zstd"), (0x80, "0x80")])
def test_other_compression_is_not_supported(sst_bytes, ctype, name):
    with pytest.raises(NotSupported, match=name):
        _sid_of(_rebuild(sst_bytes["fv6"], ctype=ctype))


def test_missing_or_empty_session_id_is_none(sst_bytes):
    props = {k.encode(): v for k, v in _props_of(sst_bytes["fv5"]).items()}
    del props[b"rocksdb.creating.session.identity"]
    assert _sid_of(_rebuild(sst_bytes["fv5"], props=props)) is None
    props[b"rocksdb.creating.session.identity"] = b""
    assert _sid_of(_rebuild(sst_bytes["fv5"], props=props)) is None


def test_uuid_session_id_of_old_sst_file_writer(sst_bytes):
    """RocksDB 6.12-6.2x SstFileWriter stored a UUID; BackupEngine uses it as is."""
    uuid = "4f1c2b0e-8a9d-4c6e-9f7a-0123456789ab"
    props = {b"rocksdb.creating.session.identity": uuid.encode()}
    assert _sid_of(_rebuild(sst_bytes["fv5"], props=props)) == uuid


@pytest.mark.parametrize("value", [b"../../etc/passwd", b"ABC_DEF", b"\xff" * 20, b"A" * 65])
def test_session_id_unsafe_for_a_name_is_not_supported(sst_bytes, value):
    props = {b"rocksdb.creating.session.identity": value}
    with pytest.raises(NotSupported):
        _sid_of(_rebuild(sst_bytes["fv5"], props=props))


def test_old_properties_block_name(sst_bytes):
    data = sst_bytes["fv5"]
    assert _sid_of(_rebuild(data, props_name=b"rocksdb.stats")) == _sid_of(data)


def test_no_properties_block_is_corruption(sst_bytes):
    with pytest.raises(Corruption, match="no properties block"):
        _sid_of(_rebuild(sst_bytes["fv5"], props_name=b"rocksdb.something.else"))


def test_format_version_7_footer(sst_bytes):
    """fv7 (RocksDB >= 10's default) keeps the fv6 footer and raw meta blocks."""
    assert _sid_of(_rebuild(sst_bytes["fv6"], fv=7)) == _sid_of(sst_bytes["fv6"])


@pytest.mark.parametrize("magic, fv, error, match", [
    (0xDB4775248B80FB57, 5, NotSupported, "legacy block-based"),
    (0x1234567890ABCDEF, 5, Corruption, "bad SST magic"),
    (0x88E241B785F4CFF7, 0, NotSupported, "format_version 0"),
    (0x88E241B785F4CFF7, 8, NotSupported, "format_version 8"),
    (0x926789D0C5F17873, 5, NotSupported, "cuckoo SST has format_version 5"),
])
def test_footer_errors(sst_bytes, magic, fv, error, match):
    with pytest.raises(error, match=match):
        _sid_of(_rebuild(sst_bytes["fv5"], magic=magic, fv=fv))


def test_bad_extended_magic(sst_bytes):
    data = bytearray(sst_bytes["fv6"])
    data[-52] ^= 0xFF
    with pytest.raises(Corruption, match="extended magic"):
        _sid_of(bytes(data))


@pytest.mark.parametrize("size", [0, 1, 47, 48, 52])
def test_too_short(size):
    """Below 48 bytes nothing is an SST; a block-based footer needs 53."""
    data = (bytes(size) + (0x88E241B785F4CFF7).to_bytes(8, "little"))[-size:] if size else b""
    with pytest.raises(Corruption, match="too short"):
        _sid_of(data)


def test_lying_file_size(sst_bytes):
    data = sst_bytes["fv6"]
    with pytest.raises(Corruption):
        sstprops.read_session_id(io.BytesIO(data), len(data) + 1000)
    with pytest.raises(Corruption):
        sstprops.read_session_id(io.BytesIO(data), -1)


def test_huge_handle_is_rejected_without_allocating(sst_bytes):
    data = sst_bytes["fv5"]
    tail = b"\x01" + (_uvarint(1 << 62) + _uvarint(1 << 62)).ljust(40, b"\0") + data[-12:]
    with pytest.raises(Corruption, match="outside"):
        _sid_of(data[:-53] + tail)


def test_huge_block_entry_lengths(sst_bytes):
    entry = _uvarint(0) + _uvarint(0xFFFFFFFF) + _uvarint(0xFFFFFFFF) + b"x"
    payload = entry + (0).to_bytes(4, "little") + (1).to_bytes(4, "little")
    with pytest.raises(Corruption, match="past"):
        _sid_of(_rebuild(sst_bytes["fv5"], payload=payload))


def test_key_expansion_is_bounded(sst_bytes, monkeypatch):
    """Shared prefixes re-materialise keys; their total is capped."""
    monkeypatch.setattr(sstprops, "MAX_META_BLOCK", 4096)
    body = _uvarint(0) + _uvarint(200) + _uvarint(0) + b"k" * 200
    for length in range(200, 300):  # each key is the previous one plus a byte
        body += _uvarint(length) + _uvarint(1) + _uvarint(0) + b"x"
    payload = body + (0).to_bytes(4, "little") + (1).to_bytes(4, "little")
    with pytest.raises(Corruption, match="expand"):
        _sid_of(_rebuild(sst_bytes["fv5"], payload=payload))


def test_duplicate_key_is_corruption(sst_bytes):
    entry = _uvarint(0) + _uvarint(1) + _uvarint(1) + b"kv"
    payload = entry * 2 + (0).to_bytes(4, "little") + (1).to_bytes(4, "little")
    with pytest.raises(Corruption, match="duplicate"):
        _sid_of(_rebuild(sst_bytes["fv5"], payload=payload))


# ------------------------------------------------------------------- snappy

def snappy_compress(data: bytes) -> bytes:
    """A greedy Snappy encoder (test-only) that emits every element kind."""
    out = bytearray(_uvarint(len(data)))

    def literal(chunk: bytes) -> None:
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        else:
            width = (n.bit_length() + 7) // 8
            out.append((59 + width) << 2)
            out.extend(n.to_bytes(width, "little"))
        out.extend(chunk)

    def copy(offset: int, length: int) -> None:
        while length:
            if 4 <= length <= 11 and offset < 2048:
                out.extend([(offset >> 8) << 5 | (length - 4) << 2 | 1, offset & 0xFF])
                return
            n = min(length, 64)
            if offset < 65536:
                out.extend(bytes([(n - 1) << 2 | 2]) + offset.to_bytes(2, "little"))
            else:
                out.extend(bytes([(n - 1) << 2 | 3]) + offset.to_bytes(4, "little"))
            length -= n

    seen: dict[bytes, int] = {}
    start = pos = 0
    while pos + 4 <= len(data):
        candidate = seen.get(data[pos:pos + 4])
        seen[data[pos:pos + 4]] = pos
        if candidate is None:
            pos += 1
            continue
        if start < pos:
            literal(data[start:pos])
        length = 4
        while pos + length < len(data) and data[candidate + length] == data[pos + length]:
            length += 1
        copy(pos - candidate, length)
        pos += length
        start = pos
    if start < len(data):
        literal(data[start:])
    return bytes(out)


SNAPPY_VECTORS = [
    (b"\x00", b""),
    (b"\x05\x10hello", b"hello"),
    # literal "ab", then copy-1 offset 2 length 6 (overlapping: period 2)
    (b"\x08\x04ab\x09\x02", b"abababab"),
    # literal "a", copy-2 offset 1 length 64 (run-length)
    (b"\x41\x00a\xfe\x01\x00", b"a" * 65),
    # literal "xyz", copy-4 offset 3 length 3
    (b"\x06\x08xyz\x0b\x03\x00\x00\x00", b"xyzxyz"),
    # 61-byte literal with a 1-byte length, 300-byte literal with a 2-byte length
    (b"\x3d\xf0\x3c" + b"L" * 61, b"L" * 61),
    (b"\xac\x02\xf4\x2b\x01" + b"M" * 300, b"M" * 300),
]


@pytest.mark.parametrize("compressed, expected", SNAPPY_VECTORS)
def test_snappy_vectors(compressed, expected):
    assert _snappy.decompress(compressed, 1 << 20) == expected


@pytest.mark.parametrize("compressed, match", [
    (b"", "varint"),
    (b"\x80\x80\x80\x80\x80\x01", "varint"),
    (b"\xff\xff\xff\xff\x1f", "32 bits"),
    (b"\x05\x10hel", "past the end"),
    (b"\x02\x10hello", "longer than the declared"),
    (b"\x06\x10hello", "produced 5 bytes, header declared 6"),
    (b"\x04\x01\x00", "offset 0"),
    (b"\x09\x00a\x09\x05", "offset 5"),
    (b"\x05\xf0", "truncated literal length"),
    (b"\x05\x02\x01", "truncated copy"),
    (b"\x80\x80\x80\x08\x00", "impossible"),
])
def test_snappy_rejects(compressed, match):
    with pytest.raises(Corruption, match=match):
        _snappy.decompress(compressed, 1 << 30)


def test_snappy_output_limit():
    with pytest.raises(Corruption, match="exceeds the limit"):
        _snappy.decompress(snappy_compress(b"a" * 1000), 999)


def test_snappy_encoder_covers_copy4():
    data = random.Random(0).randbytes(70000) * 2
    compressed = snappy_compress(data)
    assert bytes([63 << 2 | 3]) + (70000).to_bytes(4, "little") in compressed[70000:]
    assert _snappy.decompress(compressed, len(data)) == data


@pytest.mark.slow
@FUZZ
@given(st.lists(st.sampled_from([b"a", b"ab", b"abc", b"rocksdb.", b"\x00", b"xyzw"]), max_size=200),
       st.binary(max_size=200))
def test_snappy_roundtrip(pieces, noise):
    data = b"".join(pieces) + noise + b"".join(reversed(pieces))
    assert _snappy.decompress(snappy_compress(data), len(data)) == data


def _index_handles(index: bytes) -> list[tuple[int, int]]:
    """Data block handles from an index block with restart interval 1 (fv >= 4:
    no value length; a restart entry holds the full handle)."""
    num_restarts = int.from_bytes(index[-4:], "little")
    end = len(index) - 4 - 4 * num_restarts
    handles, pos = [], 0
    while pos < end:
        shared, pos = sstprops._varint(index, pos, end, 32, "i")
        non_shared, pos = sstprops._varint(index, pos, end, 32, "i")
        assert shared == 0
        pos += non_shared
        offset, pos = sstprops._varint(index, pos, end, 64, "i")
        size, pos = sstprops._varint(index, pos, end, 64, "i")
        handles.append((offset, size))
    return handles


def test_snappy_on_real_rocksdb_blocks(dbs):
    """Decode the Snappy index block and data blocks RocksDB wrote; the keys and
    values must be exactly those written (this also exercises key-delta decoding
    with restart interval 16)."""
    sst = _ssts(dbs["fv6-snappy"])[0]
    data = sst.read_bytes()
    with sst.open("rb") as f:
        footer = sstprops._parse_footer(f, len(data))
        meta = sstprops._parse_block(
            sstprops._read_block(f, footer, footer.metaindex_offset, footer.metaindex_size, "m"), "m")
        index_offset, index_size = sstprops._decode_handle(meta[b"rocksdb.index"], "h")
        assert data[index_offset + index_size] == 1
        index = sstprops._read_block(f, footer, index_offset, index_size, "index")
        found = {}
        for offset, size in _index_handles(index):
            assert data[offset + size] == 1
            block = sstprops._read_block(f, footer, offset, size, "data")
            found.update({k[:-8]: v for k, v in sstprops._parse_block(block, "data").items()})
    assert found == {_key(i): _value(i) for i in range(N_KEYS)}


# -------------------------------------------------------------------- fuzz

def _only_backup_errors(data: bytes, size: int | None = None) -> None:
    try:
        sstprops.read_session_id(io.BytesIO(data), len(data) if size is None else size)
    except BackupError:
        pass


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data):
    _only_backup_errors(data)


@FUZZ
@given(st.sampled_from(["fv5", "fv6", "default"]),
       st.lists(st.tuples(st.integers(1, 1200), st.integers(1, 255)), min_size=1, max_size=8),
       st.integers(0, 64), st.integers(-8, 8))
def test_fuzz_mutated_real_tails(sst_bytes, which, flips, cut, size_delta):
    """Bit flips in the tail (footer, metaindex, properties), truncation, lying sizes."""
    data = bytearray(sst_bytes[which])
    for back, mask in flips:
        data[-min(back, len(data))] ^= mask
    data = bytes(data[:len(data) - cut])
    _only_backup_errors(data)
    _only_backup_errors(data, max(0, len(data) + size_delta))


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_properties_payload(sst_bytes, payload):
    """Arbitrary properties-block bytes, stored raw and as 'snappy'."""
    _only_backup_errors(_rebuild(sst_bytes["fv5"], payload=payload))
    _only_backup_errors(_rebuild(sst_bytes["fv5"], payload=payload, ctype=1))


@needs_rbpeer
@pytest.mark.slow
def test_names_match_rocksdb_11_backup_of_format_version_7_ssts(tmp_path):
    """Real fv7 SSTs with zstd data blocks (RocksDB 11.1.2's defaults): the names its BackupEngine gives."""
    db = tmp_path / "db"
    peer("makedb", str(db), "2000", "3", "0", "--compression", "zstd", "--format-version", "7")
    peer("backup", str(db), str(tmp_path / "bk"), "--format-version", "7")
    for sst in _ssts(db):
        assert _props(sst)["rocksdb.format.version"] == b"\x07"
    peer_names = sorted(p.name for p in (tmp_path / "bk" / "shared_checksum").iterdir())
    ours = sorted(f"{sst.stem}_s{_sid(sst)}_{sst.stat().st_size}.sst" for sst in _ssts(db))
    assert len(ours) == 3
    assert ours == peer_names
