"""Unknown storage options are an InvalidArgument naming them, in every backend the
registry can build: a misspelt option silently dropped would leave a setting the
user believes in (a wrong endpoint, a default part size) without a word."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rbackup import BackupableDBOptions, BackupEngine
from rbackup.env.encrypted import EncryptedEnv
from rbackup.env.local import LocalEnv
from rbackup.env.memory import MemoryEnv
from rbackup.env.registry import open_env
from rbackup.errors import InvalidArgument


def _urls(tmp_path: Path) -> dict[str, str]:
    return {
        "local": str(tmp_path / "b"),
        "file": f"file://{tmp_path}/b",
        "memory": "memory://storage-options-test",
        "s3": "s3://bucket/prefix",
        "hdfs": "hdfs://namenode:8020/backups",
        "mirror": "mirror://offsite",
    }


PLUGINS = {"s3": "rbackup_s3", "hdfs": "rbackup_hdfs", "mirror": "rbackup_mirror"}


@pytest.mark.parametrize("store", ["local", "file", "memory", "s3", "hdfs", "mirror"])
def test_an_unknown_option_is_refused_by_name(store: str, tmp_path: Path) -> None:
    if store in PLUGINS:
        pytest.importorskip(PLUGINS[store])
    options: dict[str, Any] = {"compresion": "zstd"}
    if store == "mirror":
        options.update(primary=str(tmp_path / "p"), replica=str(tmp_path / "r"))
    with pytest.raises(InvalidArgument, match=r"unknown storage_options \['compresion'\]"):
        open_env(_urls(tmp_path)[store], storage_options=options)


def test_the_encryption_option_is_known_and_the_store_still_refuses_the_rest(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(bytes(range(32)))
    with pytest.raises(InvalidArgument, match=r"unknown storage_options \['compresion'\]"):
        open_env(str(tmp_path / "b"), storage_options={"encryption_key_file": str(key_file), "compresion": 1})
    env = open_env(str(tmp_path / "b"), storage_options={"encryption_key_file": str(key_file)})
    assert isinstance(env, EncryptedEnv)
    env.close()


def test_known_options_still_build_the_env(tmp_path: Path) -> None:
    assert isinstance(open_env(str(tmp_path / "b"), storage_options={}), LocalEnv)
    assert isinstance(open_env("memory://storage-options-known", storage_options=None), MemoryEnv)


def test_s3_refuses_a_misspelt_s3fs_option_and_takes_the_real_ones() -> None:
    rbackup_s3 = pytest.importorskip("rbackup_s3")
    with pytest.raises(InvalidArgument, match=r"s3://bucket/p: unknown storage_options \['endpoint_ur1'\]"):
        rbackup_s3.S3Env("s3://bucket/p", storage_options={"endpoint_ur1": "http://127.0.0.1:1"})
    env = rbackup_s3.S3Env("s3://bucket/p", storage_options={
        "endpoint_url": "http://127.0.0.1:1", "key": "k", "secret": "s", "client_kwargs": {"region_name": "x"},
        "part_size": 16 << 20, "use_listings_cache": True})
    assert env.settings.part_size == 16 << 20
    env.close()


def test_object_lock_options_are_taken_before_s3_checks_the_rest() -> None:
    object_lock = pytest.importorskip("rbackup_s3.object_lock")
    env = object_lock.ObjectLockS3Env("s3://bucket/p", storage_options={
        "object_lock_mode": "governance", "object_lock_days": 1, "endpoint_url": "http://127.0.0.1:1"})
    env.close()
    with pytest.raises(InvalidArgument, match=r"unknown storage_options \['object_lock_dayz'\]"):
        object_lock.ObjectLockS3Env("s3://bucket/p", storage_options={
            "object_lock_mode": "governance", "object_lock_days": 1, "object_lock_dayz": 2})


def test_an_engine_refuses_the_option_before_touching_the_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="compresion"):
        BackupEngine.open(BackupableDBOptions(str(tmp_path / "b"), storage_options={"compresion": "zstd"}))
    assert not (tmp_path / "b").exists()
