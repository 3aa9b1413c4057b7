"""`copy_backups` / `rbackup copy`: replication between backup directories, on real DBs and stores."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from rbackup import AlreadyExists, BackupableDBOptions, BackupEngine, BackupEngineReadOnly, Corruption, NotFound
from rbackup.env import LocalEnv
from rbackup.env.registry import open_env
from rbackup.replicate import copy_backups
from rbackup.testing.doubles import CountingEnv, FaultInjectionEnv, fail_nth

from .db_fixtures import files_under, read_all


def make_backups(live_db, backup_dir: str, n: int) -> list[int]:
    """n backups that share SST files with each other."""
    with BackupEngine(BackupableDBOptions(backup_dir)) as engine:
        ids = []
        for i in range(n):
            live_db.add(300, prefix=f"r{i}-", seed=i)
            ids.append(engine.create_new_backup(live_db.db, app_metadata=f"round {i}"))
    return ids


def restored(backup_dir: str, tmp_path: Path, backup_id: int, storage_options=None) -> dict:
    target = str(tmp_path / f"restored-{backup_id}")
    with BackupEngineReadOnly(BackupableDBOptions(backup_dir, storage_options=storage_options)) as engine:
        engine.verify_backup(backup_id, True)
        engine.restore_db_from_backup(backup_id, target)
    return read_all(target)


def test_copy_is_incremental_verified_and_byte_identical(tmp_path, live_db) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_backups(live_db, src, 2)
    report = copy_backups(src, dst, [1])
    assert report.copied == [1] and report.files_reused == 0
    first_files = report.files_copied

    counting = CountingEnv(LocalEnv(dst))
    report = copy_backups(src, counting)
    assert report.copied == [2] and report.already_present == [1]
    # Backup 2 shares backup 1's SSTs: those were neither read back nor sent again.
    assert report.files_reused >= 1
    sent_shared = [p for p in counting.writes if p.startswith("shared_checksum/")]
    with BackupEngineReadOnly(BackupableDBOptions(src)) as engine:
        b1 = {f.relative_filename for f in engine.get_backup_info(True)[0].files}
    assert not set(sent_shared) & b1
    assert report.files_copied < first_files + len(b1)

    # Same meta files byte for byte, same files, and both backups restore with all their data.
    for backup_id in (1, 2):
        assert Path(dst, "meta", str(backup_id)).read_bytes() == Path(src, "meta", str(backup_id)).read_bytes()
    assert {f for f in files_under(dst) if not f.startswith("rbackup.lock")} == \
           {f for f in files_under(src) if not f.startswith("rbackup.lock")}
    assert restored(dst, tmp_path, 2) == live_db.written

    again = copy_backups(src, dst)
    assert again.copied == [] and again.already_present == [1, 2] and again.files_copied == 0


def test_copy_checks_crc_on_the_way_and_publishes_nothing_bad(tmp_path, live_db) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_backups(live_db, src, 1)
    sst = next(Path(src, "shared_checksum").iterdir())
    data = bytearray(sst.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes: only the CRC can tell
    sst.write_bytes(bytes(data))
    with pytest.raises(Corruption, match=f"backup 1: checksum mismatch in .*{sst.name}"):
        copy_backups(src, dst)
    assert not Path(dst, "shared_checksum", sst.name).exists()
    assert not Path(dst, "meta", "1").exists()


def test_interrupted_copy_resumes_without_resending(tmp_path, live_db) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_backups(live_db, src, 1)
    faulty = FaultInjectionEnv(LocalEnv(dst), fail_on=fail_nth("commit", 2))
    with pytest.raises(Exception, match="injected fault"):
        copy_backups(src, faulty, workers=1)
    assert not Path(dst, "meta", "1").exists()  # the meta file is committed last
    # (a fault at commit leaves the temp file, as a crash would: GC's business, not a resume's)
    published = {f for f in files_under(dst) if f.startswith(("shared", "private")) and ".tmp" not in f}
    assert len(published) == 2

    # A leftover with the right size but wrong bytes must be replaced, not trusted.
    bad = next(iter(sorted(published)))
    size = Path(dst, bad).stat().st_size
    Path(dst, bad).write_bytes(b"\0" * size)

    counting = CountingEnv(LocalEnv(dst))
    report = copy_backups(src, counting)
    assert report.copied == [1] and report.files_resumed == 1
    assert [p for p in published if p in counting.writes] == [bad]
    assert restored(dst, tmp_path, 1) == live_db.written


def test_copy_never_replaces_or_deletes_at_the_destination(tmp_path, live_db) -> None:
    src, other, dst = str(tmp_path / "src"), str(tmp_path / "other"), str(tmp_path / "dst")
    make_backups(live_db, src, 2)
    make_backups(live_db, other, 1)
    copy_backups(other, dst)  # dst's backup 1 is not src's backup 1
    before = {f: Path(dst, f).read_bytes() for f in files_under(dst)}
    with pytest.raises(AlreadyExists, match=r"backup 1 exists in .* with other content"):
        copy_backups(src, dst)
    assert all(Path(dst, f).read_bytes() == data for f, data in before.items())
    # Copying only backup 2 works, and dst's own backup 1 is untouched.
    copy_backups(src, dst, [2])
    assert restored(dst, tmp_path, 2) == live_db.written
    assert Path(dst, "meta", "1").read_bytes() == before["meta/1"]


def test_copy_refuses_unknown_and_corrupt_backups(tmp_path, live_db) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_backups(live_db, src, 2)
    with pytest.raises(NotFound, match="backup 7 not found"):
        copy_backups(src, dst, [7])
    Path(src, "private", "2", "CURRENT").unlink()
    with pytest.raises(Corruption, match=r"backup 2 in .* is corrupt"):
        copy_backups(src, dst, [2])
    report = copy_backups(src, dst)  # all: the corrupt one is left out and reported
    assert report.copied == [1] and list(report.skipped_corrupt) == [2]


@pytest.mark.skipif(shutil.which("ldb") is None, reason="Debian's rocksdb-tools (ldb) is not installed")
def test_copied_directory_restores_with_ldb(tmp_path, live_db) -> None:
    src, dst, target = str(tmp_path / "src"), str(tmp_path / "dst"), str(tmp_path / "by-ldb")
    make_backups(live_db, src, 2)
    copy_backups(src, dst)
    out = subprocess.run(["ldb", "--ignore_unknown_options", f"--db={target}", f"--backup_dir={dst}", "restore"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert "restore from backup OK" in out.stdout + out.stderr
    shutil.copy(Path(dst, "private", "2", "rocksdict-config.json"), target)  # see test_interop_ldb
    assert read_all(target) == live_db.written


def test_copy_local_to_s3_and_back(tmp_path, live_db, s3_bucket_url) -> None:
    url, options = s3_bucket_url
    src, back = str(tmp_path / "src"), str(tmp_path / "back")
    make_backups(live_db, src, 2)
    report = copy_backups(src, f"{url}/replica", destination_storage_options=options)
    assert report.copied == [1, 2]
    assert restored(f"{url}/replica", tmp_path, 2, options) == live_db.written
    assert copy_backups(src, f"{url}/replica", destination_storage_options=options).already_present == [1, 2]

    report = copy_backups(f"{url}/replica", back, [2], source_storage_options=options)
    assert report.copied == [2]
    assert Path(back, "meta", "2").read_bytes() == Path(src, "meta", "2").read_bytes()
    assert restored(back, tmp_path, 2) == live_db.written


def test_copy_s3_to_s3(tmp_path, live_db, s3_bucket_url) -> None:
    url, options = s3_bucket_url
    src = str(tmp_path / "src")
    make_backups(live_db, src, 1)
    copy_backups(src, f"{url}/a", destination_storage_options=options)
    with open_env(f"{url}/a", storage_options=options) as a, open_env(f"{url}/b", storage_options=options) as b:
        assert copy_backups(a, b).copied == [1]
    assert restored(f"{url}/b", tmp_path, 1, options) == live_db.written


def test_cli_copy(tmp_path, live_db) -> None:
    from tests.test_cli import failed, ok

    live_db.db.close()
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    for _ in range(2):
        ok("create", "--db", live_db.path, "--backup-dir", src, "-q")
    out = ok("copy", "--from", src, "--to", dst, "--backup-id", "1")
    assert out.stdout.startswith("copied backups 1: ")
    doc = json.loads(ok("copy", "--from", src, "--to", f"file://{dst}", "--json").stdout)
    assert doc["copied"] == [2] and doc["already_present"] == [1]
    ok("verify", "--backup-dir", dst, "--checksum")
    assert "backup 9 not found" in failed(1, "copy", "--from", src, "--to", dst, "--backup-id", "9")
    assert "same backup directory" in failed(2, "copy", "--from", src, "--to", src)
