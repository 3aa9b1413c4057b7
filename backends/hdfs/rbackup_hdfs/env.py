"""HdfsEnv: rbackup's BackupEnv on HDFS, over pyarrow's libhdfs binding.

The store is `pyarrow.fs.HadoopFileSystem` wrapped in fsspec's
`ArrowFSWrapper` (exactly what fsspec's own `hdfs://` implementation is) and
driven by the generic `FsspecEnv`; this module adds only what HDFS changes.
What each promise of the contract rests on, as pyarrow really does it:

- publish: FsspecEnv's temp name `.<name>.tmp` plus rename.  A new name
  appears whole in one NameNode rename, atomic and logged in the edit log
  before the call returns.  Replacing an existing name is not one step:
  when HDFS refuses to rename onto an existing file, pyarrow's `move`
  deletes the destination and renames again, so the name is briefly absent
  (never partial).  The engine replaces only CURRENT-like small files and its
  own lock lease.
- durability: pyarrow binds libhdfs's `hdfsFlush` (Java `flush()`), never
  `hflush` or `hsync`.  `close()` returns once every DataNode of the write
  pipeline acknowledged every packet and the NameNode completed the file:
  the data is on `replication` DataNodes, in their memory, not fsynced, so
  `durable_sync` is False and the `sync` flags change nothing (DataNodes run
  with dfs.datanode.synconclose=true do fsync on close).
- create-if-absent: not atomic, see `HdfsEnv.create_exclusive`.
- listings are never cached (ArrowFSWrapper has no listing cache).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
import secrets
import shutil
import subprocess
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import pyarrow.fs
from fsspec.implementations.arrow import ArrowFSWrapper

from rbackup.env.base import Capabilities, check_path
from rbackup.env.fsspec_env import FsspecEnv
from rbackup.errors import AlreadyExists, BackupError, InvalidArgument, NotFound

from .config import HdfsLocation, HdfsSettings, hadoop_fs_kwargs, parse_hdfs_url
from .errors import translate_hdfs_error

log = logging.getLogger(__name__)

Connector = Callable[..., pyarrow.fs.FileSystem]
"""Called with `pyarrow.fs.HadoopFileSystem`'s keyword arguments; returns a pyarrow file system."""


def ensure_hadoop_classpath(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set CLASSPATH from `hadoop classpath --glob` when it is unset.

    libhdfs starts its JVM with the CLASSPATH environment variable and fails
    with only "HDFS connection failed" (plus a NoClassDefFoundError on stderr)
    without Hadoop's jars on it; the `hadoop` command knows them.  Nothing is
    done once CLASSPATH is set, or without a `hadoop` on PATH or in
    $HADOOP_HOME/bin.
    """
    if environ.get("CLASSPATH"):
        return
    hadoop = shutil.which("hadoop", path=environ.get("PATH"))
    home = environ.get("HADOOP_HOME")
    if hadoop is None and home and os.access(os.path.join(home, "bin", "hadoop"), os.X_OK):
        hadoop = os.path.join(home, "bin", "hadoop")
    if hadoop is None:
        return
    try:
        done = subprocess.run([hadoop, "classpath", "--glob"], capture_output=True, text=True,
                              timeout=120, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not get Hadoop's classpath from %s: %s", hadoop, exc)
        return
    environ["CLASSPATH"] = done.stdout.strip()
    log.info("CLASSPATH for libhdfs set from `%s classpath --glob`", hadoop)


def connect_hadoop(location: HdfsLocation, settings: HdfsSettings,
                   factory: Connector | None = None) -> pyarrow.fs.FileSystem:
    """The pyarrow file system for `location`; load and connection failures become rbackup errors."""
    kwargs = hadoop_fs_kwargs(location, settings)
    if factory is None:
        ensure_hadoop_classpath()
        factory = pyarrow.fs.HadoopFileSystem
    log.debug("connecting to %s (namenode %r, port %d) as %s", location.url, location.namenode,
              location.port, settings.user or "the login user")
    try:
        return factory(**kwargs)
    except (OSError, ValueError) as exc:  # pyarrow: OSError (ArrowIOError), ArrowInvalid
        raise translate_hdfs_error(exc, f"connect {location.url}") from exc


def exclusive_temp_name(path: str) -> str:
    """`dir/.name.<random>.tmp`: a temp name no other creator uses, still one RocksDB's GC
    recognises as a leftover (it has `.tmp` in it)."""
    folder, name = posixpath.split(path)
    return posixpath.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")


class HdfsEnv(FsspecEnv):
    """The backup directory `hdfs://namenode:port/path` (or `hdfs:///path`, `viewfs://cluster/path`).

    `storage_options` are the fields of `HdfsSettings` (`user`, `kerb_ticket`,
    `replication`, `buffer_size`, `default_block_size`, `extra_conf`,
    `concurrency`).  libhdfs itself needs JAVA_HOME, libhdfs.so (HADOOP_HOME
    or ARROW_LIBHDFS_DIR), Hadoop's jars on CLASSPATH (found with the `hadoop`
    command when unset) and usually HADOOP_CONF_DIR; without them the
    constructor raises NotSupported naming what is missing.

    `connect` replaces `pyarrow.fs.HadoopFileSystem` (same keyword arguments):
    the tests pass one returning `pyarrow.fs.LocalFileSystem()`, which runs
    this env's whole code path over ArrowFSWrapper on local disk.
    """

    capabilities = Capabilities(atomic_rename=True, conditional_create=False, durable_sync=False,
                                directories=True, concurrency=HdfsSettings.concurrency)
    """The defaults, for `rbackup backends`; an instance reflects its own settings."""

    def __init__(self, url: str, *, storage_options: Mapping[str, Any] | None = None,
                 connect: Connector | None = None) -> None:
        location = parse_hdfs_url(url)
        settings = HdfsSettings.from_options(storage_options, url_user=location.user)
        arrow_fs = connect_hadoop(location, settings, connect)
        super().__init__(
            ArrowFSWrapper(arrow_fs, skip_instance_cache=True),
            location.path,
            url=location.url,
            capabilities=dataclasses.replace(HdfsEnv.capabilities, concurrency=settings.concurrency),
        )
        self.location = location
        self.settings = settings

    @classmethod
    def from_url(cls, url: str, storage_options: dict[str, Any] | None = None) -> HdfsEnv:
        return cls(url, storage_options=storage_options)

    def _error(self, exc: BaseException, path: str, action: str) -> BackupError:
        return translate_hdfs_error(exc, f"{action} {self.describe(path)}")

    def create_exclusive(self, path: str, data: bytes, *, sync: bool = True) -> None:
        """Create `path` holding `data` unless it exists: as safe as pyarrow allows, not atomic.

        HDFS has an atomic create-if-absent (create with overwrite=false) and a
        rename that refuses an existing destination, but pyarrow exposes
        neither: libhdfs always creates with overwrite=true, and pyarrow's
        `move` deletes an existing destination and renames again.  So:

        1. AlreadyExists if `path` exists;
        2. write `data` whole to a temp name private to this call, so racing
           creators never write into one file;
        3. AlreadyExists (temp removed) if `path` appeared meanwhile;
        4. rename the temp onto `path`;
        5. read `path` back: other bytes mean a racing creator's rename
           replaced ours, and this call reports AlreadyExists.

        Guarantee: the name never holds a partial or mixed file, and whatever
        it holds is the data of a creator that returned successfully.  Two
        creators can both succeed, the first one's file then being replaced,
        only if one of them passes step 3 before the other's rename and
        renames after the other's read-back.  Hence
        `capabilities.conditional_create` is False.
        """
        path = check_path(path)
        if self.exists(path):
            raise AlreadyExists(f"create {self.describe(path)}: already exists")
        tmp_path = exclusive_temp_name(path)
        full, tmp = self._full(path), self._full(tmp_path)
        try:
            self.fs.makedirs(posixpath.dirname(full), exist_ok=True)
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            appeared = self.fs.exists(full)
            if not appeared:
                self.fs.mv(tmp, full)
        except Exception as exc:
            self._remove_quietly(tmp_path)
            raise self._error(exc, path, "create") from exc
        if appeared:
            self._remove_quietly(tmp_path)
            raise AlreadyExists(f"create {self.describe(path)}: already exists")
        if not self._holds(path, data):
            raise AlreadyExists(f"create {self.describe(path)}: another writer created it at the same time")

    def _holds(self, path: str, data: bytes) -> bool:
        """Whether `path` holds exactly `data` (False if it is gone or differs)."""
        try:
            return self.read_bytes(path, len(data)) == data
        except (NotFound, InvalidArgument):
            return False

    def _remove_quietly(self, path: str) -> None:
        """Drop a temp file after a failure that is already being reported."""
        try:
            self.fs.rm_file(self._full(path))
        except FileNotFoundError:
            pass
        except Exception:
            log.warning("could not remove temp file %s", self.describe(path), exc_info=True)
