"""Hostile or damaged backup directories.

Damage (a flipped byte, a truncated or missing file, a garbled meta file) is
reported for exactly the backup and file concerned, restore refuses, and the
other backups stay usable.  Hostility (meta files naming paths outside the
backup directory, symlinks leading out of it, FIFOs, oversized meta files,
arbitrary mutations of meta files) never makes rbackup read or write outside
the backup directory and the restore target, never hangs, and only ever
raises rbackup's own errors.  A canary file outside both directories holds
distinctive bytes: they must never appear in a restore target, and the canary
must never change.
"""
from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbackup import BackupEngine, BackupEngineReadOnly, BackupError, Corruption, NotFound
from rbackup.env.local import LocalEnv
from rbackup.format.checksum import crc32c

from .crash_worker import (
    World,
    engine_options,
    orphans,
    read_db,
)

CANARY = b"CANARY-3f9c1e-must-never-be-read-" * 1200  # ~40 KB, recognisable anywhere


@pytest.fixture
def site(world: World, scratch: Path) -> Site:
    return Site.make(world, scratch)


class Site:
    """A backup directory (backups 1-3 of A, B, C), a restore target and a canary, side by
    side in one parent whose entries are watched: nothing may appear next to them."""

    def __init__(self, world: World, root: Path) -> None:
        self.world = world
        self.root = root
        self.bk = root / "bk"
        self.target = root / "target"
        self.canary_dir = root / "outside"
        self.canary = self.canary_dir / "secret.sst"

    @classmethod
    def make(cls, world: World, scratch: Path) -> Site:
        site = cls(world, scratch / f"site-{uuid.uuid4().hex[:6]}")
        site.root.mkdir()
        shutil.copytree(world.tmpl3, site.bk)
        site.canary_dir.mkdir()
        site.canary.write_bytes(CANARY)
        site.entries = sorted(os.listdir(site.root))
        site.canary_stat = site.canary.stat()
        return site

    def meta(self, backup_id: int) -> Path:
        return self.bk / "meta" / str(backup_id)

    def entry(self, backup_id: int, prefix: str, index: int = 0) -> str:
        """The `index`-th file of a backup's meta file that starts with `prefix`."""
        lines = [ln.split(" ")[0] for ln in self.meta(backup_id).read_text().splitlines()]
        return [p for p in lines if p.startswith(prefix)][index]

    def only_in(self, backup_id: int) -> str:
        """A shared file backup `backup_id` uses and no other backup does."""
        mine = {ln.split(" ")[0] for ln in self.meta(backup_id).read_text().splitlines()}
        others = set()
        for other in (1, 2, 3):
            if other != backup_id and self.meta(other).exists():
                others |= {ln.split(" ")[0] for ln in self.meta(other).read_text().splitlines()}
        return sorted(p for p in mine - others if p.startswith("shared_checksum/"))[0]

    def engine(self) -> BackupEngine:
        return BackupEngine(engine_options(str(self.bk), None))

    def read_only(self) -> BackupEngineReadOnly:
        return BackupEngineReadOnly(engine_options(str(self.bk), None))

    def assert_contained(self) -> None:
        """The canary is unchanged, nothing new appeared beside the directories, and the
        canary's bytes are nowhere in the restore target."""
        assert self.canary.read_bytes() == CANARY
        st_now = self.canary.stat()
        assert (st_now.st_mtime_ns, st_now.st_ino) == (self.canary_stat.st_mtime_ns, self.canary_stat.st_ino)
        assert sorted(os.listdir(self.canary_dir)) == ["secret.sst"]
        assert sorted(set(os.listdir(self.root)) - {"target"}) == [e for e in self.entries if e != "target"]
        self.assert_target_clean()

    def assert_target_clean(self) -> None:
        marker = CANARY[:64]
        for dirpath, _, names in os.walk(self.target):
            for name in names:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    with open(path, "rb") as fh:
                        assert marker not in fh.read(), f"canary bytes restored into {path}"


def assert_usable(site: Site, backup_id: int, data: dict[str, bytes]) -> None:
    with site.read_only() as ro:
        ro.verify_backup(backup_id, True)
        target = site.root / f"ok-{backup_id}-{uuid.uuid4().hex[:6]}"
        ro.restore_db_from_backup(backup_id, str(target))
        assert read_db(str(target)) == data
        shutil.rmtree(target)


# -- damage ---------------------------------------------------------------------------------------------
def test_flipped_byte_is_found_by_checksum_verify_and_refused_by_restore(site: Site) -> None:
    """As in RocksDB: sizes are unchanged, so only a checksum verify (and restore, which
    always checks) find it; the message names the backup and the file."""
    victim = site.entry(2, "shared_checksum/", 5)  # in backups 2 and 3, not 1
    data = bytearray((site.bk / victim).read_bytes())
    data[len(data) // 2] ^= 0x40
    (site.bk / victim).write_bytes(bytes(data))
    with site.read_only() as ro:
        assert ro.get_corrupted_backups() == []  # RocksDB does not read data at open either
        ro.verify_backup(2, False)
        for backup_id in (2, 3):
            with pytest.raises(Corruption, match=rf"backup {backup_id}: checksum mismatch in {victim}"):
                ro.verify_backup(backup_id, True)
            with pytest.raises(Corruption, match=rf"backup {backup_id}: checksum mismatch in {victim}"):
                ro.restore_db_from_backup(backup_id, str(site.target))
            with pytest.raises(Exception, match="Corruption"):
                read_db(str(site.target))  # the failed restore left a target that will not open
    assert_usable(site, 1, site.world.data["A"])


def test_truncated_file(site: Site) -> None:
    """Truncated while an engine is open: verify (even without checksums) names it.
    Truncated before the engine opened: the size is learnt from the listing, as RocksDB
    does for schema 1, so a checksum verify (and restore) find it."""
    victim = site.entry(2, "private/2/MANIFEST")
    with site.read_only() as ro:
        os.truncate(site.bk / victim, (site.bk / victim).stat().st_size // 2)
        with pytest.raises(Corruption, match=rf"backup 2: {victim} is \d+ bytes, expected \d+"):
            ro.verify_backup(2, False)
    with site.read_only() as ro:
        with pytest.raises(Corruption, match=rf"backup 2: checksum mismatch in {victim}"):
            ro.verify_backup(2, True)
        with pytest.raises(Corruption, match="backup 2"):
            ro.restore_db_from_backup(2, str(site.target))
        ro.verify_backup(3, True)
    assert_usable(site, 1, site.world.data["A"])
    assert_usable(site, 3, site.world.data["C"])


def test_missing_file(site: Site) -> None:
    """Missing when the engine opens: the backup is corrupt (get_corrupted_backups, as
    RocksDB), its verify and restore say which file; missing later: verify says so."""
    victim = site.only_in(3)
    with site.read_only() as ro:
        gone = site.entry(2, "private/2/OPTIONS")
        (site.bk / gone).unlink()
        with pytest.raises(NotFound, match=rf"backup 2: file missing: {gone}"):
            ro.verify_backup(2, False)
    (site.bk / victim).unlink()
    with site.engine() as eng:
        assert eng.get_corrupted_backups() == [2, 3]
        assert [i.backup_id for i in eng.get_backup_info()] == [1]
        for backup_id, name in ((2, gone), (3, victim)):
            with pytest.raises(Corruption, match=rf"backup {backup_id} is corrupt: .*{name}"):
                eng.verify_backup(backup_id)
            with pytest.raises(Corruption, match=rf"backup {backup_id} is corrupt: .*{name}"):
                eng.restore_db_from_backup(backup_id, str(site.target))
        eng.garbage_collect()  # drops what only the corrupt backups used, keeps backup 1 whole
    assert_usable(site, 1, site.world.data["A"])
    assert orphans(LocalEnv(str(site.bk))) == []


@pytest.mark.parametrize("garble", ["junk", "truncated", "bad_count", "bad_crc_field", "empty", "binary"])
def test_garbled_meta_file(site: Site, garble: str) -> None:
    """A damaged meta file makes exactly that backup corrupt; GC then keeps every file the
    other backups need (backup 3 shares most of backup 2's files)."""
    meta = site.meta(2)
    text = meta.read_bytes()
    meta.write_bytes({
        "junk": b"this is not a meta file\n",
        "truncated": text[: len(text) // 2],
        "bad_count": b"\n".join(ln if i != 2 else str(int(ln) + 1).encode()  # schema 1: 3rd line
                                for i, ln in enumerate(text.split(b"\n"))),
        "bad_crc_field": text.replace(b" crc32 ", b" crc33 ", 1),
        "empty": b"",
        "binary": os.urandom(300),
    }[garble])
    with site.engine() as eng:
        assert eng.get_corrupted_backups() == [2]
        with pytest.raises(BackupError, match="backup 2"):
            eng.verify_backup(2)
        with pytest.raises(BackupError, match="backup 2"):
            eng.restore_db_from_backup(2, str(site.target))
        eng.garbage_collect()
    assert_usable(site, 1, site.world.data["A"])
    assert_usable(site, 3, site.world.data["C"])


def test_oversized_meta_file_is_a_corrupt_backup_not_an_unopenable_directory(site: Site) -> None:
    """A meta file larger than the engine will read (64 MiB, sparse here) is that backup's
    problem: the others can still be listed and restored."""
    with open(site.bk / "meta" / "4", "wb") as fh:
        fh.truncate(65 << 20)
    with site.engine() as eng:
        assert eng.get_corrupted_backups() == [4]
        assert [i.backup_id for i in eng.get_backup_info()] == [1, 2, 3]
    assert_usable(site, 3, site.world.data["C"])


def test_fifo_in_place_of_a_file_never_hangs(site: Site) -> None:
    victim = site.only_in(3)
    (site.bk / victim).unlink()
    os.mkfifo(site.bk / victim)
    old = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(20)
    try:
        with site.engine() as eng:
            assert eng.get_corrupted_backups() == [3]
            with pytest.raises(BackupError):
                eng.restore_db_from_backup(3, str(site.target))
            eng.garbage_collect()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert_usable(site, 2, site.world.data["B"])


def _timeout(signum: int, frame: Any) -> None:
    raise TimeoutError("hung")


# -- escapes ----------------------------------------------------------------------------------------------
def point_meta_at(site: Site, backup_id: int, hostile: str) -> None:
    """Make one of the backup's shared entries name `hostile`, with the canary's crc, so a
    read that got through would even pass the checksum."""
    meta = site.meta(backup_id)
    victim = site.entry(backup_id, "shared_checksum/", 0)
    lines = meta.read_text().splitlines()
    lines = [f"{hostile} crc32 {crc32c(CANARY)}" if ln.startswith(victim + " ") else ln for ln in lines]
    meta.write_text("\n".join(lines) + "\n")


def hostile_paths(site: Site) -> list[str]:
    rel = os.path.relpath(site.canary, site.bk)  # ../outside/secret.sst
    return [
        rel,
        f"../../{rel}",
        "../../x",
        str(site.canary),
        "/etc/x",
        f"private/1/../../{rel}",
        f"shared_checksum/../{rel}",
        "shared_checksum/../../outside/secret.sst",
        f"shared_checksum//{rel}",
        f"./{rel}",
        f"shared_checksum/{rel}",
        "shared_checksum/..",
        "private/1/..",
        "private/2/../1/MANIFEST-000005",
        "shared_checksum\\..\\..\\outside\\secret.sst",
        "shared_checksum/secret.sst\x00.sst",
    ]


def test_meta_file_naming_paths_outside_is_rejected(site: Site) -> None:
    """Each hostile path: the backup is corrupt, restore refuses with Corruption, GC and
    delete never touch the canary, and the other backups stay usable."""
    paths = hostile_paths(site)
    original = site.meta(1).read_bytes()
    for hostile in paths:
        site.meta(1).write_bytes(original)
        point_meta_at(site, 1, hostile)
        with site.read_only() as ro:
            assert ro.get_corrupted_backups() == [1], hostile
            with pytest.raises(Corruption, match="backup 1"):
                ro.restore_db_from_backup(1, str(site.target))
            with pytest.raises(Corruption):
                ro.verify_backup(1, True)
        site.assert_contained()
    with site.engine() as eng:
        eng.garbage_collect()
        eng.delete_backup(1)
    site.assert_contained()
    assert_usable(site, 3, site.world.data["C"])


def test_symlinked_file_out_of_the_backup_dir_is_never_read(site: Site) -> None:
    """A shared file replaced by a symlink to the canary (same size, so it lists fine):
    verify and restore refuse it as corrupt instead of reading through it; deleting the
    backup removes the link, never the canary."""
    for victim in (site.only_in(3), "private/3/rocksdict-config.json"):
        path = site.bk / victim
        saved = path.read_bytes()
        path.unlink()
        os.symlink(site.canary, path)
        with site.read_only() as ro:
            if victim.startswith("shared"):  # (the side file is not in the meta file: restore reads it)
                with pytest.raises(Corruption, match="symlink leaves the backup directory"):
                    ro.verify_backup(3, True)
            with pytest.raises(Corruption, match="symlink leaves the backup directory"):
                ro.restore_db_from_backup(3, str(site.target))
        site.assert_contained()
        path.unlink()
        path.write_bytes(saved)
    os.symlink(site.canary, site.bk / "shared_checksum" / "000777_sABCDEFGHIJKLMNOPQRST_9.sst")
    with site.engine() as eng:
        eng.delete_backup(3)  # GC removes the unreferenced link itself
    assert not (site.bk / "shared_checksum" / "000777_sABCDEFGHIJKLMNOPQRST_9.sst").is_symlink()
    site.assert_contained()
    assert_usable(site, 2, site.world.data["B"])


def attempt(action: Callable[[], object]) -> str:
    try:
        action()
    except BackupError:
        return "refused"
    return "done"


@pytest.mark.parametrize("linked", ["shared_checksum", "private", "meta", "private/3"])
def test_symlinked_directory_out_of_the_backup_dir(site: Site, linked: str) -> None:
    """A directory of the backup dir replaced by a symlink to a directory outside: rbackup
    neither reads from, writes into nor deletes from it, whatever it is asked to do (the
    listing does not descend into it, so its backups look damaged and are refused)."""
    outside = site.canary_dir
    moved = site.root / "moved"
    shutil.move(str(site.bk / linked), moved)
    for entry in os.listdir(moved):  # the outside dir now has the real files plus the canary
        shutil.move(str(moved / entry), outside / entry)
    moved.rmdir()
    os.symlink(outside, site.bk / linked)
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in outside.iterdir()}

    def writer() -> None:
        with site.engine() as eng:
            # refused where it would have to write into the link; private/3: backup 4 is made inside
            attempt(lambda: eng.create_new_backup(site.world.dbs["C"]))
            attempt(eng.garbage_collect)
            attempt(lambda: eng.delete_backup(1))

    def reader() -> None:
        with site.read_only() as ro:  # backup 3 has files behind the link in every case
            assert attempt(lambda: ro.restore_db_from_backup(3, str(site.target))) == "refused"
            assert attempt(lambda: ro.verify_backup(3, True)) == "refused"

    outcomes = [attempt(writer), attempt(reader)]
    after = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in outside.iterdir()}
    assert after == before, f"rbackup wrote or deleted outside the backup directory ({outcomes})"
    assert site.canary.read_bytes() == CANARY
    site.assert_target_clean()


def test_symlink_planted_at_a_temp_name_is_not_written_through(site: Site) -> None:
    """`shared_checksum/.<name>.tmp` pointing at the canary, where the next create writes
    that file's temp copy: the create fails instead of truncating and writing the canary."""
    victim = site.only_in(3)
    folder, name = victim.split("/")
    with site.engine() as eng:
        eng.delete_backup(3)  # its own SSTs go, so the next create of C copies them again
        assert not (site.bk / victim).exists()
        os.symlink(site.canary, site.bk / folder / f".{name}.tmp")
        site.entries = sorted(os.listdir(site.root))
        with pytest.raises(Corruption, match="symlink leaves the backup directory"):
            eng.create_new_backup(site.world.dbs["C"])
        eng.garbage_collect()
    site.assert_contained()
    assert_usable(site, 2, site.world.data["B"])


# -- fuzz -------------------------------------------------------------------------------------------------
@st.composite
def mutated_meta(draw: st.DrawFn, original: bytes, hostile: list[str]) -> bytes:
    lines = original.split(b"\n")
    kind = draw(st.sampled_from(["flip", "splice", "line", "line", "truncate"]))
    if kind == "flip":
        out = bytearray(original)
        for _ in range(draw(st.integers(1, 8))):
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    if kind == "splice":
        i = draw(st.integers(0, len(original)))
        j = draw(st.integers(i, len(original)))
        return original[:i] + draw(st.binary(max_size=40)) + original[j:]
    if kind == "truncate":
        return original[: draw(st.integers(0, len(original)))]
    out = list(lines)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(out) - 1))
        choice = draw(st.sampled_from(["hostile", "hostile", "text", "drop", "dup", "swap", "number"]))
        if choice == "hostile":
            out[i] = f"{draw(st.sampled_from(hostile))} crc32 {crc32c(CANARY)}".encode("utf-8", "surrogatepass")
        elif choice == "text":
            out[i] = draw(st.text(max_size=60)).encode("utf-8", "surrogatepass")
        elif choice == "drop" and len(out) > 1:
            del out[i]
        elif choice == "dup":
            out.insert(i, out[i])
        elif choice == "swap":
            j = draw(st.integers(0, len(out) - 1))
            out[i], out[j] = out[j], out[i]
        else:
            out[i] = str(draw(st.one_of(st.integers(-5, 20), st.integers(-(2**70), 2**70)))).encode()
    return b"\n".join(out)


FUZZ_EXAMPLES = 150


@pytest.mark.slow
def test_fuzzed_meta_files_end_to_end(world: World, scratch: Path) -> None:
    """Hypothesis mutates the meta files of a real backup directory (byte flips, splices,
    truncation, line edits, hostile paths with the canary's crc); opening writable and
    read-only engines, listing, verifying with checksums and restoring every backup only
    ever raise BackupError subclasses, finish within seconds, and never read or write
    outside the backup directory and the restore target."""
    site = Site.make(world, scratch)
    originals = {i: site.meta(i).read_bytes() for i in (1, 2, 3)}
    hostile = hostile_paths(site)
    outcomes: dict[str, int] = {}

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(which=st.sampled_from([1, 2, 3]), data=st.data())
    def run(which: int, data: st.DataObject) -> None:
        for i, text in originals.items():
            site.meta(i).write_bytes(text)
        site.meta(which).write_bytes(data.draw(mutated_meta(originals[which], hostile)))
        old = signal.signal(signal.SIGALRM, _timeout)
        signal.alarm(15)
        try:
            exercise(site, outcomes)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        site.assert_contained()

    run()
    for i, text in originals.items():
        site.meta(i).write_bytes(text)
    print(f"[hostile] fuzzed meta files: {FUZZ_EXAMPLES} examples, outcomes {outcomes}")
    assert outcomes.get("corrupt", 0) > 0 and outcomes.get("succeeded", 0) > 0, outcomes
    assert_usable(site, 3, world.data["C"])


def exercise(site: Site, outcomes: dict[str, int]) -> None:
    def note(what: str) -> None:
        outcomes[what] = outcomes.get(what, 0) + 1

    for make in (site.engine, site.read_only):
        with make() as eng:
            infos = eng.get_backup_info(include_file_details=True)
            corrupt = eng.get_corrupted_backups()
            note("corrupt" if corrupt else "all valid")
            for backup_id in sorted({i.backup_id for i in infos} | set(corrupt)):
                for action in (lambda: eng.verify_backup(backup_id, True),
                               lambda: eng.restore_db_from_backup(backup_id, str(site.target))):
                    try:
                        action()
                        note("succeeded")
                    except BackupError:
                        note("refused")
