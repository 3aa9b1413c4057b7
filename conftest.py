"""Shared fixtures, and which tests are `slow`.

`pytest -m "not slow"` is the contributor's inner loop: the pure and local tests. A test is slow when it
runs a sweep of kills or faults, races real processes, or talks to a real server over HTTP; rather than
mark each one by hand (and forget the next), the kinds are named here once.
"""
from __future__ import annotations

import pytest

pytest_plugins = ["tests.db_fixtures", "tests.s3_fixtures", "tests.s3_servers", "tests.hdfs_fixtures",
                  "tests.crash_worker"]

SLOW_MODULES = frozenset({
    "test_crash",        # SIGKILL and in-process fault sweeps
    "test_faults",       # store faults over HTTP, retries with back-off
    "test_concurrency",  # racing writer processes
    "test_cli",          # the installed console script, one process per command
    "test_writer_races",  # racing CLI writers and a stopped writer on three S3 servers
    "test_s3_stores",     # SeaweedFS and s3rver over HTTP
})
SLOW_FIXTURES = frozenset({
    "moto_server",       # a real S3 server over HTTP
    "real_hdfs",         # a MiniDFSCluster and libhdfs's JVM
    "seaweedfs_server",  # SeaweedFS (weed server -s3), started per session
    "s3rver_server",     # s3rver (npm), installed on first use
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if isinstance(item, pytest.Function) else ""
        if module in SLOW_MODULES or SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
