"""From a backup location to a BackupEnv.

Backends register under the entry-point group `rbackup.backends`, keyed by
URL protocol; the core registers `file`, `local` and `memory` itself, and the
S3 and HDFS plug-ins register exactly as a third party's would.  A protocol
without a registered backend falls back to the generic fsspec env with
conservative capabilities, so any store fsspec knows works at once.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from ..errors import InvalidArgument, NotSupported
from .base import BackendFactory, BackupEnv, Capabilities

log = logging.getLogger("rbackup")

GROUP = "rbackup.backends"

KNOWN_PLUGINS = {"s3": "rbackup-s3", "s3a": "rbackup-s3", "hdfs": "rbackup-hdfs",
                 "viewfs": "rbackup-hdfs"}
"""Protocols with a first-party plug-in: a missing one is named in the error."""


def split_protocol(location: str | os.PathLike) -> tuple[str, str]:
    """("s3", "s3://b/p") / ("file", "/plain/path"); a plain path is local disk."""
    text = os.fspath(location)
    if "://" in text:
        protocol = text.split("://", 1)[0].lower()
        if protocol in ("file", "local"):
            return "file", text.split("://", 1)[1]
        return protocol, text
    return "file", text


@dataclass(frozen=True)
class BackendInfo:
    protocol: str
    target: str
    """module:Class the entry point names."""
    distribution: str | None
    capabilities: Capabilities | None
    error: str | None = None


def _entry_points() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name.lower(), ep)
    return found


def backend_class(protocol: str) -> type[BackupEnv] | None:
    ep = _entry_points().get(protocol)
    if ep is None:
        return None
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, BackupEnv)):
        raise NotSupported(f"entry point {ep.name} = {ep.value} in group {GROUP} is not a BackupEnv subclass")
    return cls


ENCRYPTION_KEY_FILE = "encryption_key_file"
"""The storage option that wraps any backend in an EncryptedEnv; the backend never sees it."""


def open_env(backup_dir: str | os.PathLike, *, storage_options: dict[str, Any] | None = None) -> BackupEnv:
    """The env for a path or URL: a registered backend, else generic fsspec;
    wrapped in an EncryptedEnv when the options name an encryption key file."""
    options = dict(storage_options or {})
    key_file = options.pop(ENCRYPTION_KEY_FILE, None)
    env = _open_store(backup_dir, options)
    if key_file is None:
        return env
    from .encrypted import EncryptedEnv  # only for encrypted stores

    try:
        return EncryptedEnv.from_key_file(env, key_file)
    except BaseException:
        env.close()
        raise


def _open_store(backup_dir: str | os.PathLike, storage_options: dict[str, Any]) -> BackupEnv:
    protocol, location = split_protocol(backup_dir)
    if not location:
        raise InvalidArgument(f"empty backup location {os.fspath(backup_dir)!r}")
    cls = backend_class(protocol)
    if cls is not None:
        log.debug("backup_dir %s: backend %s.%s", protocol, cls.__module__, cls.__name__)
        factory: BackendFactory = cls  # type: ignore[assignment]  # checked by the conformance kit
        return factory(location, storage_options=storage_options or {})
    if protocol in KNOWN_PLUGINS:
        raise NotSupported(f"no backend installed for {protocol}:// URLs: "
                           f"pip install {KNOWN_PLUGINS[protocol]} (or rbackup[{KNOWN_PLUGINS[protocol][8:]}])")
    # fsspec (about 0.1 s to import) only for a protocol no backend registers
    import fsspec

    from .fsspec_env import FsspecEnv

    if protocol not in fsspec.available_protocols():
        raise NotSupported(f"unknown storage protocol {protocol!r} in {location!r}: no rbackup backend "
                           "and no fsspec implementation is registered for it")
    log.info("backup_dir %s: no rbackup backend for %s://, using generic fsspec with conservative "
             "capabilities", location, protocol)
    try:
        return FsspecEnv.from_url(location, storage_options=storage_options or {})
    except ImportError as exc:
        raise NotSupported(f"{protocol}:// needs a package that is not installed: {exc}") from exc


def list_backends() -> list[BackendInfo]:
    """Every registered backend with its capabilities, for `rbackup backends`."""
    infos = []
    for name, ep in sorted(_entry_points().items()):
        dist = getattr(getattr(ep, "dist", None), "name", None)
        try:
            cls = ep.load()
            caps = getattr(cls, "capabilities", None)
            infos.append(BackendInfo(name, ep.value, dist, caps if isinstance(caps, Capabilities) else None))
        except Exception as exc:
            infos.append(BackendInfo(name, ep.value, dist, None, f"{type(exc).__name__}: {exc}"))
    return infos
