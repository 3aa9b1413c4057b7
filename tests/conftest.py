"""Shared fixtures, and which tests are `slow`.

`pytest -m "not slow"` is the contributor's inner loop: the pure and local tests. A test is slow when it
runs a sweep of kills or faults, races real processes, or talks to a real server over HTTP; rather than
mark each one by hand (and forget the next), the kinds are named here once.
"""
from __future__ import annotations

import pytest

pytest_plugins = ["tests.db_fixtures", "tests.s3_fixtures", "tests.crash_worker"]

SLOW_MODULES = frozenset({
    "test_crash",        # SIGKILL and in-process fault sweeps
    "test_faults",       # store faults over HTTP, retries with back-off
    "test_concurrency",  # racing writer processes
    "test_cli",          # the installed console script, one process per command
})
SLOW_FIXTURES = frozenset({
    "moto_server",       # a real S3 server over HTTP
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if isinstance(item, pytest.Function) else ""
        if module in SLOW_MODULES or SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
