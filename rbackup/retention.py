"""Retention policies: which backups to keep, decided without I/O (restic's `forget` rules).

A policy is a set of rules; each rule walks the backups newest first and keeps
the newest backup of each period (hour, day, ISO week, month, year) until it
has kept as many periods as it may.  Periods with no backup do not count, so
`keep_daily=7` keeps the last seven *days that have a backup*, not the last
seven calendar days.  `keep_last` keeps the newest N backups, `keep_within`
every backup newer than the newest backup minus a duration (restic measures
it from the newest backup, not from now, so a host that stopped backing up
does not lose its last backups to the clock).  A backup kept by any rule is
kept, and the plan says which rules kept it.  A count of -1 means unlimited,
as in restic.

Periods are calendar periods in UTC, or in the time zone the policy names
(IANA name, via zoneinfo): a backup at 23:30 UTC belongs to the next day in
Berlin.  This module only plans; `BackupEngine.purge_by_policy` acts on the
plan.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidArgument

__all__ = ["RetentionDecision", "RetentionPlan", "RetentionPolicy", "parse_duration", "plan_retention"]

UNLIMITED = -1

PeriodKey = Callable[[datetime], str]
"""Names the period a (zone-local) time falls in; the name is also the reason shown."""

_PERIODS: dict[str, PeriodKey] = {
    "hourly": lambda t: t.strftime("%Y-%m-%dT%H"),
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": lambda t: f"{t.isocalendar()[0]:04d}-W{t.isocalendar()[1]:02d}",
    "monthly": lambda t: t.strftime("%Y-%m"),
    "yearly": lambda t: t.strftime("%Y"),
}


@dataclass(frozen=True)
class RetentionPolicy:
    """What to keep; at least one rule must be set (a typo must not delete everything)."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: timedelta | None = None
    """Keep every backup newer than (newest backup's time - keep_within)."""
    tz: str | None = None
    """IANA time zone for period boundaries (e.g. "Europe/Berlin"); None is UTC."""

    def __post_init__(self) -> None:
        for name in ("keep_last", *(f"keep_{p}" for p in _PERIODS)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < UNLIMITED:
                raise InvalidArgument(f"retention policy: {name} must be an int >= 0 (or -1 for unlimited), "
                                      f"got {value!r}")
        if self.keep_within is not None and (
                not isinstance(self.keep_within, timedelta) or self.keep_within <= timedelta(0)):
            raise InvalidArgument(f"retention policy: keep_within must be a positive timedelta, "
                                  f"got {self.keep_within!r}")
        self.zone()  # an unknown zone fails here, before anything is planned
        if not self.rules() and self.keep_within is None:
            raise InvalidArgument("retention policy has no rule: set at least one of keep_last, keep_hourly, "
                                  "keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within "
                                  "(a policy that keeps nothing would delete every backup)")

    def rules(self) -> dict[str, int]:
        """The count rules that are set, in restic's order: last, hourly ... yearly."""
        counts = {"last": self.keep_last, **{p: getattr(self, f"keep_{p}") for p in _PERIODS}}
        return {name: n for name, n in counts.items() if n != 0}

    def zone(self) -> tzinfo:
        if self.tz is None:
            return timezone.utc
        try:
            return ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise InvalidArgument(f"retention policy: unknown time zone {self.tz!r}") from exc

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {f"keep_{name}": n for name, n in self.rules().items()}
        if self.keep_within is not None:
            out["keep_within_seconds"] = int(self.keep_within.total_seconds())
        out["tz"] = self.tz or "UTC"
        return out


@dataclass(frozen=True)
class RetentionDecision:
    backup_id: int
    timestamp: int
    reasons: tuple[str, ...]
    """Why it is kept, e.g. ("last 1", "daily 2026-12-03"); empty: it goes."""

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


@dataclass(frozen=True)
class RetentionPlan:
    policy: RetentionPolicy
    decisions: tuple[RetentionDecision, ...] = field(default_factory=tuple)
    """Newest first (by timestamp, then id)."""

    @property
    def keep(self) -> list[int]:
        return sorted(d.backup_id for d in self.decisions if d.keep)

    @property
    def remove(self) -> list[int]:
        return sorted(d.backup_id for d in self.decisions if not d.keep)

    def to_json(self) -> dict[str, object]:
        def item(d: RetentionDecision) -> dict[str, object]:
            out: dict[str, object] = {"id": d.backup_id, "timestamp": d.timestamp,
                                      "time": datetime.fromtimestamp(d.timestamp, tz=timezone.utc).isoformat()}
            if d.keep:
                out["reasons"] = list(d.reasons)
            return out

        oldest_first = sorted(self.decisions, key=lambda d: (d.timestamp, d.backup_id))
        return {"policy": self.policy.to_json(),
                "keep": [item(d) for d in oldest_first if d.keep],
                "remove": [item(d) for d in oldest_first if not d.keep]}


def plan_retention(backups: Iterable[tuple[int, int]], policy: RetentionPolicy) -> RetentionPlan:
    """Decide for each (backup_id, timestamp) whether `policy` keeps it, and why.

    Backups are ranked by timestamp (ties: higher id is newer).  Each count
    rule keeps a backup when it is the newest one of a period the rule has
    not kept yet, until the rule's count is used up; counts never go to
    periods without a backup.
    """
    ranked = sorted(set(backups), key=lambda b: (b[1], b[0]), reverse=True)
    zone = policy.zone()
    remaining = dict(policy.rules())
    last_period: dict[str, str] = {}
    reasons: dict[int, list[str]] = {backup_id: [] for backup_id, _ in ranked}
    newest = ranked[0][1] if ranked else 0
    for position, (backup_id, timestamp) in enumerate(ranked):
        local = datetime.fromtimestamp(timestamp, tz=timezone.utc).astimezone(zone)
        for rule, left in remaining.items():
            if left == 0:
                continue
            period = str(position + 1) if rule == "last" else _PERIODS[rule](local)
            if last_period.get(rule) == period:
                continue
            last_period[rule] = period
            remaining[rule] = left - 1 if left > 0 else left
            reasons[backup_id].append(f"{rule} {period}")
        if policy.keep_within is not None and newest - timestamp < policy.keep_within.total_seconds():
            reasons[backup_id].append(f"within {_format_duration(policy.keep_within)} of the newest backup")
    return RetentionPlan(policy, tuple(RetentionDecision(i, t, tuple(reasons[i])) for i, t in ranked))


_DURATION_RE = re.compile(r"(\d+)([wdh])")
_UNITS = {"w": timedelta(weeks=1), "d": timedelta(days=1), "h": timedelta(hours=1)}


def parse_duration(text: str) -> timedelta:
    """`2w`, `7d`, `36h`, `1w3d12h` -> timedelta.  Months and years are refused: they
    have no fixed length, and `m` would be ambiguous between months and minutes."""
    compact = text.strip().lower()
    if not compact or _DURATION_RE.sub("", compact):
        raise InvalidArgument(f"invalid duration {text!r}: use a number of weeks, days and hours, e.g. 30d or 1w12h")
    total = sum((int(n) * _UNITS[unit] for n, unit in _DURATION_RE.findall(compact)), timedelta(0))
    if total <= timedelta(0):
        raise InvalidArgument(f"invalid duration {text!r}: must be positive")
    return total


def _format_duration(delta: timedelta) -> str:
    days, seconds = delta.days, int(delta.seconds)
    hours, rest = divmod(seconds, 3600)
    text = (f"{days}d" if days else "") + (f"{hours}h" if hours else "") + (f"{rest}s" if rest else "")
    return text or "0s"
