"""Why a lease binds no one is a `Staleness`, not prose: only a released lease is taken
without a warning; every other take-over is logged with its reason."""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from rbackup.env.memory import MemoryEnv
from rbackup.lock import Holder, Lease, Staleness, lease_path, stale_reason

NOW = 1_000_000.0


def holder(**changes: object) -> Holder:
    base = Holder("other-host.example", 4242, NOW - 60, NOW + 60, "t" * 32, "create_new_backup")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_each_reason_has_its_kind() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    cases = [
        (None, Staleness.UNREADABLE),
        (holder(released=True), Staleness.RELEASED),
        (holder(expires=NOW - 5), Staleness.EXPIRED),
        (holder(host=here, pid=dead.pid), Staleness.PROCESS_GONE),
        (holder(host=here, pid=os.getpid()), Staleness.LEFT_BEHIND),
    ]
    for lease, kind in cases:
        reason = stale_reason(lease, NOW)
        assert reason is not None and reason.kind is kind, (lease, reason)
    assert stale_reason(holder(), NOW) is None  # another host's unexpired lease binds
    assert "5s ago" in stale_reason(holder(expires=NOW - 5), NOW).detail  # type: ignore[union-attr]


@pytest.mark.parametrize(("lease", "warned"), [
    (holder(released=True, expires=time.time() + 3600), False),
    (holder(expires=time.time() - 5), True),
])
def test_only_a_take_over_of_an_unreleased_lease_warns(lease: Holder, warned: bool,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    env = MemoryEnv()
    env.create_exclusive(lease_path(7), lease.encode())
    taker = Lease(env, "delete_backup", timeout=0, ttl=60)
    with caplog.at_level(logging.WARNING, logger="rbackup.lock"):
        taker.acquire()
    try:
        assert taker.generation == 8
        assert any("taking over" in r.getMessage() for r in caplog.records) is warned
    finally:
        taker.release()
