"""Retention planning on synthetic timelines (pure), and purge_by_policy on real backups."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbackup import BackupableDBOptions, BackupEngine, InvalidArgument
from rbackup.retention import RetentionPolicy, parse_duration, plan_retention

UTC = timezone.utc


def ts(*args: int, tz=UTC) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp())


def timeline(stamps: list[int]) -> list[tuple[int, int]]:
    """Backup ids in time order, as the engine assigns them."""
    return [(i + 1, t) for i, t in enumerate(sorted(stamps))]


def kept(stamps: list[int], **policy) -> list[int]:
    return plan_retention(timeline(stamps), RetentionPolicy(**policy)).keep


# -- the policy itself -------------------------------------------------------------------

def test_policy_without_rule_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="no rule"):
        RetentionPolicy()
    with pytest.raises(InvalidArgument, match="no rule"):
        RetentionPolicy(keep_daily=0, tz="Europe/Berlin")


@pytest.mark.parametrize("bad", [{"keep_daily": -2}, {"keep_last": True}, {"keep_weekly": 1.5},
                                 {"keep_within": timedelta(0)}, {"keep_within": 7},
                                 {"keep_last": 1, "tz": "Mars/Olympus"}])
def test_bad_policies_are_refused(bad) -> None:
    with pytest.raises(InvalidArgument):
        RetentionPolicy(**bad)


def test_parse_duration() -> None:
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("1w3d12h") == timedelta(days=10, hours=12)
    for bad in ["", "7", "3m", "1y", "d", "0d", "7d x"]:
        with pytest.raises(InvalidArgument):
            parse_duration(bad)


# -- the rules ---------------------------------------------------------------------------

def test_keep_last() -> None:
    stamps = [ts(2026, 1, d) for d in range(1, 11)]
    assert kept(stamps, keep_last=3) == [8, 9, 10]
    assert kept(stamps, keep_last=-1) == list(range(1, 11))
    assert kept([], keep_last=3) == []


def test_daily_keeps_the_newest_of_each_day_and_skips_empty_days() -> None:
    # Two backups a day on Jan 1, 2, 5, 9 (days 3-4 and 6-8 have none).
    stamps = [ts(2026, 1, d, h) for d in (1, 2, 5, 9) for h in (6, 18)]
    plan = plan_retention(timeline(stamps), RetentionPolicy(keep_daily=3))
    # The newest of each of the three newest days *that have backups*: Jan 9, 5, 2.
    assert plan.keep == [4, 6, 8]
    assert plan.remove == [1, 2, 3, 5, 7]
    reasons = {d.backup_id: d.reasons for d in plan.decisions}
    assert reasons[8] == ("daily 2026-01-09",)
    assert reasons[4] == ("daily 2026-01-02",)


def test_a_backup_kept_by_any_rule_is_kept_with_every_reason() -> None:
    stamps = [ts(2026, m, d, 12) for m in (1, 2, 3) for d in (1, 15)]
    plan = plan_retention(timeline(stamps), RetentionPolicy(keep_last=2, keep_monthly=3))
    assert plan.keep == [2, 4, 5, 6]
    reasons = {d.backup_id: d.reasons for d in plan.decisions}
    assert reasons[6] == ("last 1", "monthly 2026-03")
    assert reasons[5] == ("last 2",)
    assert reasons[4] == ("monthly 2026-02",)
    assert reasons[2] == ("monthly 2026-01",)
    assert reasons[1] == ()


def test_weekly_uses_iso_weeks_across_the_year_boundary() -> None:
    # 2026-12-31 (Thu) and 2027-01-02 (Sat) are both in ISO week 2026-W53; 2027-01-04 is 2027-W01.
    stamps = [ts(2026, 12, 28), ts(2026, 12, 31), ts(2027, 1, 2), ts(2027, 1, 4)]
    plan = plan_retention(timeline(stamps), RetentionPolicy(keep_weekly=2))
    assert plan.keep == [3, 4]
    assert {d.backup_id: d.reasons for d in plan.decisions}[3] == ("weekly 2026-W53",)


def test_yearly_and_hourly() -> None:
    stamps = [ts(y, 6, 1) for y in range(2018, 2027)] + [ts(2026, 6, 1, 0, 30), ts(2026, 6, 1, 1, 10)]
    assert kept(stamps, keep_yearly=3) == [7, 8, 11]
    assert kept(stamps, keep_hourly=2) == [10, 11]


def test_leap_day_is_its_own_day_and_month_end() -> None:
    stamps = [ts(2028, 2, 28, 23), ts(2028, 2, 29, 1), ts(2028, 2, 29, 22), ts(2028, 3, 1, 0, 5)]
    plan = plan_retention(timeline(stamps), RetentionPolicy(keep_daily=2, keep_monthly=2))
    reasons = {d.backup_id: d.reasons for d in plan.decisions}
    assert reasons[4] == ("daily 2028-03-01", "monthly 2028-03")
    assert reasons[3] == ("daily 2028-02-29", "monthly 2028-02")
    assert plan.remove == [1, 2]


def test_periods_follow_the_given_time_zone() -> None:
    # 23:30 UTC on Jan 1 is 00:30 on Jan 2 in Berlin: UTC sees one day, Berlin two.
    stamps = [ts(2026, 1, 1, 10), ts(2026, 1, 1, 23, 30)]
    assert kept(stamps, keep_daily=5) == [2]
    assert kept(stamps, keep_daily=5, tz="Europe/Berlin") == [1, 2]


def test_dst_change_days_and_hours() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 2026-10-25: clocks go back at 03:00 CEST -> 02:00 CET, so 02:xx local happens twice.
    first = ts(2026, 10, 25, 0, 30, tz=UTC)   # 02:30 CEST
    second = ts(2026, 10, 25, 1, 30, tz=UTC)  # 02:30 CET, the same local hour label
    third = ts(2026, 10, 25, 22, 59, tz=UTC)  # 23:59 CET, still Oct 25 locally
    fourth = ts(2026, 10, 25, 23, 1, tz=UTC)  # 00:01 on Oct 26 locally
    plan = plan_retention(timeline([first, second, third, fourth]),
                          RetentionPolicy(keep_hourly=10, keep_daily=10, tz="Europe/Berlin"))
    reasons = {d.backup_id: d.reasons for d in plan.decisions}
    # The repeated wall-clock hour is one period: only the later of the two is kept.
    assert reasons[2] == ("hourly 2026-10-25T02",)
    assert reasons[1] == ()
    assert reasons[3] == ("hourly 2026-10-25T23", "daily 2026-10-25")
    assert reasons[4] == ("hourly 2026-10-26T00", "daily 2026-10-26")
    # Spring forward (2026-03-29 02:00 -> 03:00): the day is 23 hours long, still one day.
    spring = [int(datetime(2026, 3, 29, h, tzinfo=berlin).timestamp()) for h in (1, 3, 23)]
    assert kept(spring, keep_daily=1, tz="Europe/Berlin") == [3]


def test_keep_within_counts_from_the_newest_backup_not_now() -> None:
    stamps = [ts(2020, 1, d) for d in range(1, 11)]  # long ago: `now` must not matter
    plan = plan_retention(timeline(stamps), RetentionPolicy(keep_within=timedelta(days=3)))
    assert plan.keep == [8, 9, 10]
    assert plan.decisions[0].reasons == ("within 3d of the newest backup",)


def test_equal_timestamps_rank_by_id() -> None:
    t = ts(2026, 5, 5)
    assert plan_retention([(1, t), (2, t), (3, t)], RetentionPolicy(keep_daily=1)).keep == [3]


def test_plan_json_is_serialisable() -> None:
    plan = plan_retention(timeline([ts(2026, 1, 1), ts(2026, 1, 2)]),
                          RetentionPolicy(keep_last=1, keep_within=timedelta(hours=36), tz="UTC"))
    doc = json.loads(json.dumps(plan.to_json()))
    assert doc["policy"] == {"keep_last": 1, "keep_within_seconds": 36 * 3600, "tz": "UTC"}
    assert [k["id"] for k in doc["keep"]] == [1, 2]
    assert doc["remove"] == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2_000_000_000), max_size=40),
       st.integers(min_value=0, max_value=5), st.integers(min_value=0, max_value=5),
       st.integers(min_value=0, max_value=5), st.integers(min_value=1, max_value=5))
def test_properties(stamps, last, daily, monthly, weekly) -> None:
    policy = RetentionPolicy(keep_last=last, keep_daily=daily, keep_monthly=monthly, keep_weekly=weekly)
    plan = plan_retention(timeline(stamps), policy)
    assert sorted(plan.keep + plan.remove) == list(range(1, len(stamps) + 1))
    if stamps:
        assert len(stamps) in plan.keep  # the newest backup is always kept by every count rule
    # Each rule keeps at most its count, and every kept backup says why.
    for rule, n in policy.rules().items():
        assert sum(any(r.startswith(rule + " ") for r in d.reasons) for d in plan.decisions) <= n
    # More of a rule never keeps fewer backups.
    bigger = RetentionPolicy(keep_last=last, keep_daily=daily + 1, keep_monthly=monthly, keep_weekly=weekly)
    assert set(plan.keep) <= set(plan_retention(timeline(stamps), bigger).keep)


# -- on a real backup directory ----------------------------------------------------------

def test_purge_by_policy_on_an_engine(tmp_path, live_db) -> None:
    from rbackup.format.meta import parse_meta, serialize_meta

    db = live_db.db
    backup_dir = tmp_path / "backups"
    with BackupEngine(BackupableDBOptions(str(backup_dir))) as engine:
        ids = []
        for i in range(5):
            live_db.add(20, prefix=f"round{i}-", seed=i)
            ids.append(engine.create_new_backup(db))
    # Give the backups a synthetic history: one per day, Jan 1..5 2026 (the meta timestamp is the
    # backup's time; rewriting it keeps the directory valid because nothing else depends on it).
    for i, backup_id in enumerate(ids):
        path = backup_dir / "meta" / str(backup_id)
        meta = parse_meta(path.read_bytes(), backup_id)
        meta.timestamp = ts(2026, 1, 1 + i, 12)
        path.write_bytes(serialize_meta(meta))
    with BackupEngine(BackupableDBOptions(str(backup_dir))) as engine:
        dry = engine.purge_by_policy(RetentionPolicy(keep_daily=2), dry_run=True)
        assert (dry.keep, dry.remove) == ([4, 5], [1, 2, 3])
        assert [b.backup_id for b in engine.get_backup_info()] == ids  # dry run deleted nothing
        plan = engine.purge_by_policy(RetentionPolicy(keep_daily=2, keep_last=3))
        assert plan.remove == [1, 2]
        assert [b.backup_id for b in engine.get_backup_info()] == [3, 4, 5]
        with pytest.raises(InvalidArgument):
            engine.purge_by_policy(RetentionPolicy)  # type: ignore[arg-type]
    assert not (backup_dir / "private" / "1").exists()
    with BackupEngine(BackupableDBOptions(str(backup_dir))) as engine:
        engine.verify_backup(3, True)


def test_cli_purge_by_policy(tmp_path, live_db) -> None:
    from tests.test_cli import failed, listing, ok

    live_db.db.close()
    bdir = str(tmp_path / "backups")
    for _ in range(3):
        ok("create", "--db", live_db.path, "--backup-dir", bdir, "-q")

    dry = json.loads(ok("purge", "--backup-dir", bdir, "--keep-daily", "1", "--dry-run", "--json").stdout)
    assert dry["dry_run"] is True and dry["policy"] == {"keep_daily": 1, "tz": "UTC"}
    assert dry["keep"][-1]["id"] == 3 and dry["keep"][-1]["reasons"][0].startswith("daily ")
    assert sorted([k["id"] for k in dry["keep"]] + [r["id"] for r in dry["remove"]]) == [1, 2, 3]
    assert [b["id"] for b in listing(bdir)["backups"]] == [1, 2, 3]  # a dry run deletes nothing

    text = ok("purge", "--backup-dir", bdir, "--keep-last", "2", "--dry-run").stdout.splitlines()
    assert text == ["keep        2  last 2", "keep        3  last 1", "remove      1", "would delete backups 1"]
    assert ok("purge", "--backup-dir", bdir, "--keep-last", "2").stdout == "deleted backups 1\n"
    assert [b["id"] for b in listing(bdir)["backups"]] == [2, 3]

    assert ok("purge", "--backup-dir", bdir, "--keep-within", "1w", "-q").stdout == ""
    assert "no rule" in failed(2, "purge", "--backup-dir", bdir)
    assert "no rule" in failed(2, "purge", "--backup-dir", bdir, "--keep-daily", "0", "--tz", "UTC")
    assert "--keep cannot be combined" in failed(2, "purge", "--backup-dir", bdir, "--keep", "1", "--keep-daily", "1")
    assert "unknown time zone" in failed(2, "purge", "--backup-dir", bdir, "--keep-daily", "1", "--tz", "Nowhere/X")
    assert "invalid duration" in failed(2, "purge", "--backup-dir", bdir, "--keep-within", "3m")
    assert [b["id"] for b in listing(bdir)["backups"]] == [2, 3]
