"""restore_plan: which target files an incremental restore keeps, judged from plain dicts (no storage)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from rbackup import RestoreMode, RestoreOptions
from rbackup.errors import Corruption, InvalidArgument
from rbackup.restore_plan import RestoreItem, WantedFile, parse_mode, plan_restore, plan_restore_targets

SID = "ABCDEFGHIJ0123456789"
KEEP = RestoreMode.KEEP_LATEST_DB_SESSION_ID_FILES
VERIFY = RestoreMode.VERIFY_CHECKSUM


class DictProbe:
    """Facts from dicts; counts what was asked, so tests see that nothing needless is read."""

    def __init__(self, sids: dict[str, str | None] | None = None, crcs: dict[str, int | None] | None = None) -> None:
        self.sids = sids or {}
        self.crcs = crcs or {}
        self.asked: list[str] = []

    def session_id(self, db_name: str) -> str | None:
        self.asked.append(f"sid {db_name}")
        return self.sids.get(db_name)

    def crc32c(self, db_name: str) -> int | None:
        self.asked.append(f"crc {db_name}")
        return self.crcs.get(db_name)


def sst(n: int, size: int = 1000, crc: int = 7, sid: str = SID) -> WantedFile:
    return WantedFile(f"{n:06d}.sst", f"{n:06d}_s{sid}_{size}.sst", size, crc, True)


def legacy(n: int, size: int = 1000, crc: int = 7, ext: str = "sst") -> WantedFile:
    return WantedFile(f"{n:06d}.{ext}", f"{n:06d}_{crc}_{size}.{ext}", size, crc, True)


def test_purge_all_keeps_nothing_and_reads_nothing() -> None:
    probe = DictProbe({"000001.sst": SID}, {"000001.sst": 7})
    plan = plan_restore([sst(1)], {"000001.sst": 1000}, RestoreMode.PURGE_ALL_FILES, probe)
    assert plan.keep == set() and probe.asked == []


def test_default_mode_is_rocksdbs_purge_all() -> None:
    assert RestoreOptions().mode == RestoreMode.PURGE_ALL_FILES


def test_keep_latest_keeps_matching_session_id_and_size_without_reading_crc() -> None:
    probe = DictProbe({"000001.sst": SID, "000002.sst": "OTHERSESSION00000000"})
    plan = plan_restore([sst(1), sst(2), sst(3)], {"000001.sst": 1000, "000002.sst": 1000}, KEEP, probe)
    assert plan.keep == {"000001.sst"}
    assert probe.asked == ["sid 000001.sst", "sid 000002.sst"]


def test_a_size_mismatch_is_decided_without_reading() -> None:
    probe = DictProbe({"000001.sst": SID}, {"000001.sst": 7})
    plan = plan_restore([sst(1)], {"000001.sst": 999}, KEEP | VERIFY, probe)
    assert plan.keep == set() and probe.asked == []
    assert "size 999" in plan.decisions[0].reason


def test_keep_latest_falls_back_to_copying_legacy_names_and_blobs() -> None:
    probe = DictProbe({"000001.sst": SID}, {"000001.sst": 7, "000002.blob": 7})
    wanted = [legacy(1), legacy(2, ext="blob")]
    plan = plan_restore(wanted, {"000001.sst": 1000, "000002.blob": 1000}, KEEP, probe)
    assert plan.keep == set() and probe.asked == []
    assert len(plan.fallbacks) == 2 and "cannot judge" in plan.fallbacks[0]


def test_keep_latest_does_not_judge_unshared_files() -> None:
    wanted = [WantedFile("000001.sst", "000001.sst", 1000, 7, False)]  # private/<id>/ or shared/
    plan = plan_restore(wanted, {"000001.sst": 1000}, KEEP, DictProbe({"000001.sst": SID}))
    assert plan.keep == set() and plan.fallbacks


def test_verify_keeps_on_crc_match_for_tables_and_blobs() -> None:
    probe = DictProbe(crcs={"000001.sst": 7, "000002.blob": 7, "000003.sst": 8})
    wanted = [legacy(1), legacy(2, ext="blob"), sst(3)]
    plan = plan_restore(wanted, {"000001.sst": 1000, "000002.blob": 1000, "000003.sst": 1000}, VERIFY, probe)
    assert plan.keep == {"000001.sst", "000002.blob"}
    assert "sid 000003.sst" not in probe.asked  # verify alone never trusts session ids


def test_verify_cannot_keep_a_file_without_recorded_crc() -> None:
    wanted = [WantedFile("000001.sst", "000001_s" + SID + "_1000.sst", 1000, None, True)]
    plan = plan_restore(wanted, {"000001.sst": 1000}, VERIFY, DictProbe(crcs={"000001.sst": 7}))
    assert plan.keep == set() and "no crc32c" in plan.decisions[0].reason


def test_both_flags_try_the_session_id_then_the_crc() -> None:
    probe = DictProbe({"000001.sst": "OTHERSESSION00000000", "000002.sst": SID}, {"000001.sst": 7})
    plan = plan_restore([sst(1), sst(2)], {"000001.sst": 1000, "000002.sst": 1000}, KEEP | VERIFY, probe)
    assert plan.keep == {"000001.sst", "000002.sst"}
    assert probe.asked == ["sid 000001.sst", "crc 000001.sst", "sid 000002.sst"]


def test_non_table_files_are_always_copied() -> None:
    wanted = [WantedFile("MANIFEST-000005", "MANIFEST-000005", 10, 1, False),
              WantedFile("000009.log", "000009.log", 10, 1, False)]
    probe = DictProbe(crcs={"MANIFEST-000005": 1, "000009.log": 1})
    plan = plan_restore(wanted, {"MANIFEST-000005": 10, "000009.log": 10}, KEEP | VERIFY, probe)
    assert plan.keep == set() and probe.asked == []


def test_unreadable_session_id_is_not_a_match() -> None:
    plan = plan_restore([sst(1)], {"000001.sst": 1000}, KEEP, DictProbe({"000001.sst": None}))
    assert plan.keep == set()


def test_mode_names_and_bad_modes() -> None:
    assert parse_mode("keep-latest") is KEEP
    assert parse_mode("verify") is VERIFY
    assert parse_mode("full") is RestoreMode.PURGE_ALL_FILES
    with pytest.raises(ValueError):
        parse_mode("fast")
    assert RestoreOptions(mode=1).mode is KEEP  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        RestoreOptions(mode=0x10000)  # type: ignore[arg-type]


# -- where each file goes: plan_restore_targets ------------------------------------------
@dataclass(frozen=True)
class _Located:
    env: str | None
    path: str
    size: int
    crc32c: int | None
    db_name: str


def test_targets_wals_to_wal_dir_current_apart_and_side_files_from_the_own_store() -> None:
    located = [
        _Located("own", "shared_checksum/000007_sSID_100.sst", 100, 1, "000007.sst"),
        _Located("alt", "shared_checksum/000008_sSID_200.sst", 200, 2, "000008.sst"),
        _Located("own", "private/4/000009.log", 50, 3, "000009.log"),
        _Located("own", "private/4/MANIFEST-000005", 60, 4, "MANIFEST-000005"),
        _Located("own", "private/4/CURRENT", 16, 5, "CURRENT"),
    ]
    listing = {"private/4/rocksdict-config.json": 30, "private/4/CURRENT": 16}
    targets = plan_restore_targets(4, located, listing, "own", "/db", "/wal")
    assert targets.current == RestoreItem("private/4/CURRENT", "/db/CURRENT.tmp", 16, 5, "own")
    assert [(i.src, i.dest, i.env) for i in targets.items] == [
        ("shared_checksum/000007_sSID_100.sst", "/db/000007.sst", "own"),
        ("shared_checksum/000008_sSID_200.sst", "/db/000008.sst", "alt"),
        ("private/4/000009.log", "/wal/000009.log", "own"),
        ("private/4/MANIFEST-000005", "/db/MANIFEST-000005", "own"),
        ("private/4/rocksdict-config.json", "/db/rocksdict-config.json", "own"),
    ]
    assert targets.items[-1].crc32c is None and targets.items[-1].size == 30


def test_a_backup_without_current_is_corrupt() -> None:
    with pytest.raises(Corruption, match="backup 4: no CURRENT"):
        plan_restore_targets(4, [_Located("own", "private/4/MANIFEST-000005", 60, 4, "MANIFEST-000005")], {},
                             "own", "/db", "/db")
