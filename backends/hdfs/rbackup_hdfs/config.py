"""The HDFS glue that needs no cluster: URL parsing and option mapping.

Everything here is pure, so it is unit-tested without a NameNode; what it
produces is exactly the keyword arguments of `pyarrow.fs.HadoopFileSystem`,
which hands them to libhdfs's `hdfsBuilder`.  Two facts of libhdfs shape it:

- the NameNode may be a host, an HA nameservice, `"default"` (fs.defaultFS
  from core-site.xml) or a whole file system URI such as `viewfs://cluster`
  (libhdfs uses a name containing `://` as the URI itself);
- port 0 means "from the Hadoop configuration", which is what a nameservice,
  viewfs and the default NameNode need (and a plain host then gets 8020).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from rbackup.env.base import check_path, refuse_unknown_options
from rbackup.env.fsspec_env import redact_url
from rbackup.errors import InvalidArgument

from .clientconf import client_conf

SCHEMES = ("hdfs", "viewfs")
DEFAULT_NAMENODE = "default"
"""libhdfs's name for fs.defaultFS of the Hadoop configuration."""


@dataclass(frozen=True)
class HdfsLocation:
    """A backup directory in HDFS, split the way libhdfs wants it."""

    scheme: str
    namenode: str
    """pyarrow's `host`: a host, an HA nameservice, "default", or "viewfs://<mount table>"."""
    port: int
    """0: from the Hadoop configuration."""
    path: str
    """Absolute path of the backup directory in the file system, without a trailing '/'."""
    user: str | None
    """The user named in the URL (`hdfs://alice@nn/...`), if any."""
    url: str
    """The URL again, normalised, for messages (HDFS URLs never carry a secret)."""


def parse_hdfs_url(url: str) -> HdfsLocation:
    """`hdfs://[user@]host[:port]/path`, `hdfs:///path`, `viewfs://cluster/path` -> HdfsLocation.

    Query strings are refused rather than ignored: options go in
    `storage_options`, where they are checked.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unterminated IPv6 address; not echoed, it may hold a secret
        raise InvalidArgument(f"malformed HDFS URL ({exc})") from None
    scheme = parts.scheme.lower()
    if "://" not in url or scheme not in SCHEMES:
        raise InvalidArgument(f"not an HDFS URL: {redact_url(url)!r} "
                              "(expected hdfs://namenode:8020/path, hdfs:///path or viewfs://cluster/path)")
    if parts.password is not None:
        raise InvalidArgument(f"{redact_url(url)}: HDFS URLs carry no password "
                              "(Kerberos: pass the ticket cache as storage_options kerb_ticket)")
    if parts.query or parts.fragment:
        raise InvalidArgument(f"{url}: no query or fragment allowed; pass HDFS options as storage_options")
    userinfo, _, hostport = parts.netloc.rpartition("@")
    host, port = _split_host_port(hostport, url)
    path = parts.path.rstrip("/")
    if not path:
        raise InvalidArgument(f"{url}: no directory given (e.g. hdfs://namenode:8020/backups/db1)")
    try:
        check_path(path[1:])
    except InvalidArgument:
        raise InvalidArgument(f"{url}: the path must be absolute, without '.', '..' or '//'") from None
    if scheme == "viewfs":
        if port:
            raise InvalidArgument(f"{url}: a viewfs URL names a mount table, not host:port")
        namenode = f"viewfs://{host}" if host else "viewfs:///"
    elif host:
        namenode = host
    elif port:
        raise InvalidArgument(f"{url}: a port without a host")
    else:
        namenode = DEFAULT_NAMENODE
    return HdfsLocation(scheme, namenode, port, path, userinfo or None, f"{scheme}://{parts.netloc}{path}")


def _split_host_port(hostport: str, url: str) -> tuple[str, int]:
    """Keep the host's case (nameservice ids are configuration keys) and IPv6 brackets
    (libhdfs appends ":port" to the host as given)."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise InvalidArgument(f"{url}: unterminated IPv6 address")
        host, rest = hostport[: end + 1], hostport[end + 1 :]
        if rest and not rest.startswith(":"):
            raise InvalidArgument(f"{url}: garbage after the IPv6 address")
        port_text = rest[1:]
    else:
        host, _, port_text = hostport.partition(":")
    if not port_text:
        return host, 0
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidArgument(f"{url}: invalid port {port_text!r}")
    return host, int(port_text)


@dataclass(frozen=True)
class HdfsSettings:
    """The `storage_options` of an HDFS backup_dir; unknown keys are refused."""

    user: str | None = None
    """Connect as this user (simple authentication); None: the login user or Kerberos principal."""
    kerb_ticket: str | None = None
    """Path of the Kerberos ticket cache (what `klist` shows, e.g. /tmp/krb5cc_1000)."""
    replication: int = 0
    """Replicas per block of the files rbackup writes; 0 keeps the cluster's dfs.replication
    (pyarrow's own default, 3, would override it, e.g. on a one-DataNode cluster)."""
    buffer_size: int = 0
    """libhdfs read/write buffer in bytes; 0 uses Hadoop's default."""
    default_block_size: int | None = None
    """HDFS block size of new files; None keeps dfs.blocksize."""
    extra_conf: Mapping[str, Any] = field(default_factory=dict)
    """Hadoop configuration overriding core-site.xml/hdfs-site.xml (HA, RPC timeouts, ...);
    values are stored as the strings Hadoop reads."""
    concurrency: int = 8
    """Requests at once, as `Capabilities.concurrency` means for every store: meta files read at
    once.  How many files are copied at once is `transfer_width`."""
    transfer_width: int = 4
    """Files copied at once, at least (`Capabilities.transfer_width`; a larger
    max_background_operations wins).  One HDFS write stream is bound by its DataNode pipeline's
    packet acknowledgements, not by the network: closing a file waits for every packet to be
    acknowledged by every replica, and that wait took ~70% of a one-file-at-a-time backup on the
    test cluster (2x the throughput at 2 files, 2.4x at 4, less at 8 on 2 cores).  1 copies one
    file at a time, as RocksDB's max_background_operations=1 does."""

    def __post_init__(self) -> None:
        if not 0 <= self.replication <= 32767:
            raise InvalidArgument(f"replication must be 0 (cluster default) to 32767, got {self.replication}")
        if self.buffer_size < 0:
            raise InvalidArgument(f"buffer_size must be >= 0, got {self.buffer_size}")
        if self.default_block_size is not None and self.default_block_size <= 0:
            raise InvalidArgument(f"default_block_size must be positive, got {self.default_block_size}")
        if self.concurrency < 1:
            raise InvalidArgument(f"concurrency must be positive, got {self.concurrency}")
        if self.transfer_width < 1:
            raise InvalidArgument(f"transfer_width must be positive, got {self.transfer_width}")
        if self.kerb_ticket is not None:
            object.__setattr__(self, "kerb_ticket", os.fspath(self.kerb_ticket))
        conf = {str(k): _conf_value(v) for k, v in dict(self.extra_conf or {}).items()}
        object.__setattr__(self, "extra_conf", conf)

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None, *, url_user: str | None = None) -> HdfsSettings:
        """Settings from `storage_options`, taking the user from the URL unless given there too."""
        options = dict(options or {})
        refuse_unknown_options("HDFS", options, (f.name for f in dataclasses.fields(cls)))
        if url_user is not None:
            if options.get("user") not in (None, url_user):
                raise InvalidArgument(f"user {url_user!r} in the URL but {options['user']!r} in storage_options")
            options["user"] = url_user
        return cls(**options)


def _conf_value(value: Any) -> str:
    """Hadoop configuration values are strings; Python's True must become "true"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def hadoop_fs_kwargs(location: HdfsLocation, settings: HdfsSettings,
                     site_keys: Collection[str] = ()) -> dict[str, Any]:
    """The keyword arguments of `pyarrow.fs.HadoopFileSystem` for this location and settings;
    `site_keys`: the keys the client's configuration files set (`clientconf.site_keys`), which
    keep their values where rbackup would tune them (`clientconf.TUNED`)."""
    return {
        "host": location.namenode,
        "port": location.port,
        "user": settings.user,
        "replication": settings.replication,
        "buffer_size": settings.buffer_size,
        "default_block_size": settings.default_block_size,
        "kerb_ticket": settings.kerb_ticket,
        "extra_conf": client_conf(settings.extra_conf, site_keys) or None,
    }
