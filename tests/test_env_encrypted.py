"""EncryptedEnv: the conformance kit over local disk and S3, then what only encryption has
(no plaintext at rest, wrong keys, tampering of every kind, marker rules, flat memory)."""
from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from rbackup_s3 import S3Env

from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly, Corruption, PermissionDenied
from rbackup.env import LocalEnv, MemoryEnv
from rbackup.env.encrypted import (
    CHUNK_OVERHEAD,
    ENCRYPTION_MARKER,
    HEADER_SIZE,
    EncryptedEnv,
    load_key_file,
    plaintext_size,
)
from rbackup.errors import InvalidArgument, NotFound
from rbackup.replicate import copy_backups
from rbackup.testing import BackendConformance

from .db_fixtures import files_under, read_all

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SMALL_CHUNK = 4096


class TestEncryptedLocalContract(BackendConformance):
    def make_env(self, tmp_path: Path) -> EncryptedEnv:
        return EncryptedEnv(LocalEnv(tmp_path / "backup"), key=KEY)


class TestEncryptedSmallChunksContract(BackendConformance):
    """Many chunks per file: every boundary case of the chunking is crossed."""

    large_file_size = 2 << 20
    chunk_size = 10_000  # the kit's write size: not a multiple of the cipher chunk

    def make_env(self, tmp_path: Path) -> EncryptedEnv:
        return EncryptedEnv(MemoryEnv(), key=KEY, chunk_size=SMALL_CHUNK)


class TestEncryptedS3Contract(BackendConformance):
    large_file_size = 12 << 20

    @pytest.fixture(autouse=True)
    def _bucket(self, s3_bucket_url: tuple[str, dict[str, Any]]) -> None:
        self.s3 = s3_bucket_url

    def make_env(self, tmp_path: Path) -> EncryptedEnv:
        url, options = self.s3
        return EncryptedEnv(S3Env(f"{url}/enc", storage_options={**options, "part_size": 5 << 20}), key=KEY)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "backup"


@pytest.fixture
def env(root: Path) -> EncryptedEnv:
    return EncryptedEnv(LocalEnv(root), key=KEY, chunk_size=SMALL_CHUNK)


def test_plaintext_size_inverts_every_ciphertext_size() -> None:
    for chunk in (SMALL_CHUNK, 1 << 20):
        for plain in list(range(3 * chunk + 3)) if chunk == SMALL_CHUNK else [0, 1, chunk - 1, chunk, chunk + 1]:
            chunks = max(1, -(-plain // chunk))
            assert plaintext_size(HEADER_SIZE + chunks * CHUNK_OVERHEAD + plain, chunk) == plain
    assert plaintext_size(HEADER_SIZE + CHUNK_OVERHEAD - 1, SMALL_CHUNK) is None
    assert plaintext_size(HEADER_SIZE + SMALL_CHUNK + 2 * CHUNK_OVERHEAD, SMALL_CHUNK) is None  # empty non-first chunk
    assert plaintext_size(0, SMALL_CHUNK) is None


def test_nothing_is_stored_in_plaintext(env: EncryptedEnv, root: Path) -> None:
    secret = b"the quick brown fox, a very secret value " * 500
    env.write_bytes("private/1/CURRENT", secret)
    env.create_exclusive("meta/1", b"meta " + secret[:100])
    stored = (root / "private/1/CURRENT").read_bytes()
    assert b"quick brown fox" not in stored and b"quick brown fox" not in (root / "meta/1").read_bytes()
    assert len(stored) == HEADER_SIZE + 6 * CHUNK_OVERHEAD + len(secret)  # 20500 bytes: six 4096-byte chunks
    assert env.stat("private/1/CURRENT").size == len(secret)
    assert sorted(fi.path for fi in env.list("")) == ["meta/1", "private/1/CURRENT"]  # the marker is hidden
    assert (root / ENCRYPTION_MARKER).exists()
    marker = (root / ENCRYPTION_MARKER).read_bytes()
    for write in (lambda: env.write_bytes(ENCRYPTION_MARKER, b"x"),
                  lambda: env.create_exclusive(ENCRYPTION_MARKER, b"x")):
        with pytest.raises(InvalidArgument, match="marker"):
            write()
    env.delete([ENCRYPTION_MARKER])
    assert (root / ENCRYPTION_MARKER).read_bytes() == marker
    # The same plaintext twice gives different ciphertext (fresh file id and nonces).
    env.write_bytes("private/1/again", secret)
    assert (root / "private/1/again").read_bytes() != stored


def test_wrong_key_is_refused_up_front(env: EncryptedEnv, root: Path) -> None:
    env.write_bytes("meta/1", b"x")
    with pytest.raises(PermissionDenied, match="wrong encryption key"):
        EncryptedEnv(LocalEnv(root), key=OTHER_KEY)
    assert EncryptedEnv(LocalEnv(root), key=KEY).read_bytes("meta/1", 10) == b"x"


def _stored(root: Path, path: str) -> bytearray:
    return bytearray((root / path).read_bytes())


def _sealed(n: int) -> int:
    return SMALL_CHUNK + CHUNK_OVERHEAD


@pytest.mark.parametrize("damage", ["flip", "truncate_at_boundary", "truncate_mid", "reorder", "drop_chunk",
                                    "header", "append"])
def test_tampering_is_corruption_never_garbage(env: EncryptedEnv, root: Path, damage: str) -> None:
    data = os.urandom(3 * SMALL_CHUNK + 100)
    env.write_bytes("shared_checksum/a.sst", data)
    raw = _stored(root, "shared_checksum/a.sst")
    sealed = SMALL_CHUNK + CHUNK_OVERHEAD
    chunk = [raw[HEADER_SIZE + i * sealed: HEADER_SIZE + (i + 1) * sealed] for i in range(4)]
    if damage == "flip":
        raw[HEADER_SIZE + sealed + 50] ^= 1
    elif damage == "truncate_at_boundary":  # drops the final chunk: still a plausible size
        raw = raw[:HEADER_SIZE + 3 * sealed]
    elif damage == "truncate_mid":
        raw = raw[:-7]
    elif damage == "reorder":
        raw = raw[:HEADER_SIZE] + chunk[1] + chunk[0] + chunk[2] + chunk[3]
    elif damage == "drop_chunk":
        raw = raw[:HEADER_SIZE] + chunk[0] + chunk[2] + chunk[3]
    elif damage == "header":
        raw[HEADER_SIZE - 1] ^= 1  # the file id
    elif damage == "append":
        raw += chunk[3]
    (root / "shared_checksum/a.sst").write_bytes(bytes(raw))
    with pytest.raises(Corruption, match=r"shared_checksum/a\.sst"), env.open_read("shared_checksum/a.sst") as f:
        f.read()


def test_files_cannot_be_swapped_or_renamed(env: EncryptedEnv, root: Path) -> None:
    env.write_bytes("shared_checksum/a.sst", b"A" * 5000)
    env.write_bytes("shared_checksum/b.sst", b"B" * 5000)
    a, b = (root / "shared_checksum/a.sst").read_bytes(), (root / "shared_checksum/b.sst").read_bytes()
    (root / "shared_checksum/a.sst").write_bytes(b)
    (root / "shared_checksum/b.sst").write_bytes(a)
    for path in ("shared_checksum/a.sst", "shared_checksum/b.sst"):
        with pytest.raises(Corruption, match="fails authentication"):
            env.read_bytes(path, 10_000)
    # Chunks spliced from another file of the same length fail too.
    spliced = a[:HEADER_SIZE] + b[HEADER_SIZE:]
    (root / "shared_checksum/a.sst").write_bytes(spliced)
    with pytest.raises(Corruption):
        env.read_bytes("shared_checksum/a.sst", 10_000)


def test_refuses_directories_it_did_not_encrypt_and_vice_versa(tmp_path: Path, live_db) -> None:
    plain, encrypted = str(tmp_path / "plain"), str(tmp_path / "encrypted")
    with BackupEngine(BackupableDBOptions(plain)) as engine:
        engine.create_new_backup(live_db.db)
    with pytest.raises(InvalidArgument, match="holds unencrypted backups"):
        EncryptedEnv(LocalEnv(plain), key=KEY)
    with BackupEngine(BackupableDBOptions(encrypted, backup_env=EncryptedEnv(LocalEnv(encrypted), key=KEY))) as e:
        e.create_new_backup(live_db.db)
    for engine_type in (BackupEngine, BackupEngineReadOnly):
        with pytest.raises(PermissionDenied, match=r"is encrypted .*encryption_key_file=PATH"):
            engine_type(BackupableDBOptions(encrypted))


def test_engine_round_trip_with_a_key_file(tmp_path: Path, live_db) -> None:
    key_file = tmp_path / "backup.key"
    key_file.write_text(KEY.hex() + "\n")
    assert load_key_file(key_file) == KEY
    options = {"encryption_key_file": str(key_file)}
    backup_dir = str(tmp_path / "backups")
    with BackupEngine(BackupableDBOptions(backup_dir, storage_options=options)) as engine:
        assert isinstance(engine.env, EncryptedEnv)
        engine.create_new_backup(live_db.db)
        live_db.add(500, prefix="second")
        engine.create_new_backup(live_db.db)
        engine.verify_backup(2, True)
        engine.purge_old_backups(1)
    with BackupEngineReadOnly(BackupableDBOptions(backup_dir, storage_options=options)) as engine:
        engine.restore_db_from_latest_backup(str(tmp_path / "restored"))
    assert read_all(str(tmp_path / "restored")) == live_db.written
    # A wrong key file: one clear error, nothing decrypted.
    key_file.write_bytes(OTHER_KEY)
    with pytest.raises(PermissionDenied, match="wrong encryption key"):
        BackupEngineReadOnly(BackupableDBOptions(backup_dir, storage_options=options))
    for bad in (b"short", b"z" * 64):
        key_file.write_bytes(bad)
        with pytest.raises(InvalidArgument, match="32 bytes or 64 hex digits"):
            BackupEngineReadOnly(BackupableDBOptions(backup_dir, storage_options=options))


def test_read_only_engine_on_an_empty_location_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with BackupEngineReadOnly(BackupableDBOptions(str(root), backup_env=EncryptedEnv(LocalEnv(root), key=KEY))) as e:
        assert e.get_backup_info() == []
    assert files_under(str(root)) == set()
    with pytest.raises(NotFound):
        EncryptedEnv(LocalEnv(root), key=KEY).read_bytes("meta/1", 10)


_MEMORY_PROBE = """
import os, resource, sys
from rbackup.env import EncryptedEnv, LocalEnv
def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
env = EncryptedEnv(LocalEnv(sys.argv[1]), key=bytes(range(32)))
env.write_bytes("small", b"m" * 3000)
piece = memoryview(bytearray(4 << 20))
buf = bytearray(4 << 20)
base = peak_mib()
for _ in range(20):  # read_bytes's limit is a bound, not an allocation
    assert env.read_bytes("small", 64 << 20) == b"m" * 3000
small = peak_mib() - base
with env.open_write("big") as w:
    for _ in range(16):  # 64 MiB
        w.write(piece)
with env.open_read("big") as f:
    while f.readinto(buf):
        pass
assert env.stat("big").size == 64 << 20
print(small, peak_mib() - base)
"""


def test_streaming_memory_is_flat(tmp_path: Path) -> None:
    """Peak RSS of a fresh process, so that the chunk buffers (mmap) and the cipher's own
    memory count too: a few chunks whatever the file size, and a small file read with
    `read_bytes`'s 64 MiB limit costs next to nothing."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(tmp_path / "b")], capture_output=True,
                         text=True, check=True).stdout
    small_mib, stream_mib = map(float, out.split())
    assert small_mib < 2 and stream_mib < 8, (small_mib, stream_mib)


def test_small_files_reuse_the_chunk_buffers(tmp_path: Path) -> None:
    """Opening a directory reads every meta file: once warm, a small file read or written
    through the wrapper allocates no chunk buffers (1 MiB each) of its own."""
    env = EncryptedEnv(LocalEnv(tmp_path / "b"), key=KEY)
    env.write_bytes("meta/1", b"m" * 3000)
    with env.open_write("w") as w, env.open_read("meta/1") as r:  # warm: a reader and a writer at once
        w.write(r.read())
    tracemalloc.start()
    try:
        for i in range(10):
            env.write_bytes(f"meta/{i + 2}", b"m" * 3000)
            assert env.read_bytes(f"meta/{i + 2}", 64 << 20) == b"m" * 3000
            with env.open_write(f"w{i}") as w, env.open_read("meta/1") as r:  # a reader and a writer at once
                w.write(r.read())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 << 10, peak


def test_a_finished_reader_or_writer_refuses_use(tmp_path: Path) -> None:
    """Their buffers went back to be reused: a late write or read must fail, not scribble."""
    env = EncryptedEnv(LocalEnv(tmp_path / "b"), key=KEY)
    w = env.open_write("f")
    w.write(b"x" * 10)
    w.commit()
    w.commit()  # as on the inner store: a second commit does nothing
    with pytest.raises(InvalidArgument, match="already finished"):
        w.write(b"y")
    r = env.open_read("f")
    r.close()
    with pytest.raises(ValueError, match="closed"):
        r.read()
    with pytest.raises(ValueError, match="closed"):
        r.readinto(bytearray(10))
    assert env.read_bytes("f", 100) == b"x" * 10


def test_copy_plain_to_encrypted_and_back(tmp_path: Path, live_db) -> None:
    plain, encrypted, back = str(tmp_path / "plain"), str(tmp_path / "enc"), str(tmp_path / "back")
    with BackupEngine(BackupableDBOptions(plain)) as engine:
        engine.create_new_backup(live_db.db)
    copy_backups(plain, EncryptedEnv(LocalEnv(encrypted), key=KEY))
    assert not any(b"MANIFEST" in Path(encrypted, f).read_bytes() for f in files_under(encrypted) if "meta/" in f)
    copy_backups(EncryptedEnv(LocalEnv(encrypted), key=KEY), back)
    assert Path(back, "meta", "1").read_bytes() == Path(plain, "meta", "1").read_bytes()
    with BackupEngineReadOnly(BackupableDBOptions(back)) as engine:
        engine.restore_db_from_latest_backup(str(tmp_path / "restored"))
    assert read_all(str(tmp_path / "restored")) == live_db.written


def test_engine_round_trip_on_s3_by_url(tmp_path: Path, live_db, s3_bucket_url) -> None:
    url, options = s3_bucket_url
    key_file = tmp_path / "k"
    key_file.write_bytes(KEY)
    enc_options = {**options, "encryption_key_file": str(key_file)}
    with BackupEngine(BackupableDBOptions(f"{url}/enc", storage_options=enc_options)) as engine:
        engine.create_new_backup(live_db.db)
    with BackupEngineReadOnly(BackupableDBOptions(f"{url}/enc", storage_options=enc_options)) as engine:
        engine.verify_backup(1, True)
        engine.restore_db_from_backup(1, str(tmp_path / "restored"))
    assert read_all(str(tmp_path / "restored")) == live_db.written
    with pytest.raises(PermissionDenied, match="is encrypted"):
        BackupEngineReadOnly(BackupableDBOptions(f"{url}/enc", storage_options=options))
