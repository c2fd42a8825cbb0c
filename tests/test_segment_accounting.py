"""Shared-memory segments' own accounting and edges (issue 25, `make mutants` of
agent/dataplane/segment.py): the bytes that sparse segments still owe, counted exactly and
without following links or tripping on a segment removed mid-count; the free-space check at its
exact boundary; whether a pid is alive (probing, never signalling); a missing /dev/shm.

The accounting runs over a private folder on the same tmpfs as /dev/shm (``SHM_DIR`` pointed at
it), so that other tests' segments do not move the numbers.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeva.agent.dataplane import segment
from edgeva.agent.dataplane.segment import SegmentError

KIB = 1024


def test_pid_alive_probes_without_signalling_and_sees_a_reaped_child_gone() -> None:
    # First in the file: a probe that sent a real signal would hang up the child here, before any
    # other test could signal a process that matters.
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert segment.pid_alive(child.pid) is True
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.2)  # still running: signal 0 only checks
    finally:
        child.kill()
        child.wait()
    assert segment.pid_alive(child.pid) is False


@pytest.mark.parametrize("pid", [0, -1])
def test_pid_alive_is_false_for_pids_that_name_groups(pid: int) -> None:
    # kill(0, ...) and kill(-1, ...) reach our process group / every process: never "alive"
    assert segment.pid_alive(pid) is False


def test_a_process_of_another_user_is_alive() -> None:
    # kill(pid, 0) on another user's process fails with EPERM: it exists. Run from a child that
    # is not root (init is root's), so that the probe cannot signal init whatever it sends.
    if os.stat("/proc/1").st_uid == os.geteuid() and os.geteuid() != 0:
        pytest.skip("init runs as this user: no other user's process to probe")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            out = b"1" if segment.pid_alive(1) is True else b"0"
        except BaseException as e:  # noqa: BLE001 - anything is a failure, reported to the parent
            out = repr(e).encode()[:200]
        os.write(w, out)
        os._exit(0)
    os.close(w)
    try:
        got = os.read(r, 256)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert got == b"1"


@pytest.fixture
def shm_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private folder on the tmpfs of /dev/shm, as the segments' folder."""
    d = Path(tempfile.mkdtemp(dir=segment.SHM_DIR if os.path.isdir(segment.SHM_DIR) else None,
                              prefix="segtest-"))
    monkeypatch.setattr(segment, "SHM_DIR", str(d))
    try:
        yield d
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def _sparse(path: Path, size: int, written: int = 0) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        if written:
            f.write(b"\1" * written)


def test_uncommitted_bytes_are_each_segments_unwritten_pages_exactly(shm_dir: Path) -> None:
    assert segment.shm_uncommitted_bytes() == 0
    _sparse(shm_dir / "edgeva.t.sparse", 1024 * KIB)  # nothing written: all of it owed
    _sparse(shm_dir / "edgeva.t.half", 1024 * KIB, 512 * KIB)  # half written
    _sparse(shm_dir / "edgeva.t.full", 64 * KIB, 64 * KIB)  # all written: nothing owed
    _sparse(shm_dir / "edgeva.t.tiny", 100, 100)  # one page for 100 B: nothing owed, never less
    assert segment.shm_uncommitted_bytes() == 1024 * KIB + 512 * KIB


def test_uncommitted_bytes_do_not_follow_a_link(shm_dir: Path, tmp_path: Path) -> None:
    # /dev/shm is everyone's: a link there to a huge sparse file must not count as owed to us
    big = tmp_path / "huge"
    _sparse(big, 1 << 40)
    (shm_dir / "edgeva.t.link").symlink_to(big)
    assert segment.shm_uncommitted_bytes() < 64 * KIB


def test_a_segment_removed_while_counting_is_skipped(shm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another agent's sweep (or a producer's close) removes a segment between the folder's
    # listing and its stat: the count goes on with the others.
    _sparse(shm_dir / "a-gone", 1024 * KIB)
    _sparse(shm_dir / "b-kept", 256 * KIB)
    real = os.scandir

    class Racing:
        def __init__(self, path: str) -> None:
            self._it = real(path)

        def __enter__(self) -> Racing:
            return self

        def __exit__(self, *exc: object) -> None:
            self._it.close()

        def __iter__(self) -> Iterator[os.DirEntry]:
            for e in sorted(self._it, key=lambda e: e.name):
                if e.name == "a-gone":
                    os.unlink(e.path)
                yield e

    monkeypatch.setattr(segment.os, "scandir", Racing)
    assert segment.shm_uncommitted_bytes() == 256 * KIB


def test_a_missing_shm_folder_reads_as_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(segment, "SHM_DIR", str(tmp_path / "absent"))
    assert segment.shm_free_bytes() is None
    assert segment.shm_uncommitted_bytes() == 0
    assert segment.list_segments() == [] and segment.list_segments("p") == []
    assert segment.own_segment("edgeva.p.r") is False
    assert segment.unlink_segment("edgeva.p.r") is False


def test_own_segment_is_a_regular_file_of_ours_and_unlink_says_whether_it_removed(shm_dir: Path) -> None:
    _sparse(shm_dir / "edgeva.p.r", 4096)
    (shm_dir / "edgeva.p.link").symlink_to(shm_dir / "edgeva.p.r")
    assert segment.own_segment("edgeva.p.r") is True
    assert segment.own_segment("edgeva.p.link") is False
    assert segment.own_segment("edgeva.p.none") is False
    assert segment.unlink_segment("edgeva.p.r") is True
    assert segment.unlink_segment("edgeva.p.r") is False


def _name(what: str) -> str:
    return segment.segment_name(f"segtest{os.getpid()}", what)


@pytest.mark.parametrize("free,owed", [(48 * KIB, 16 * KIB), (32 * KIB, 0)])
def test_a_segment_fits_to_the_last_byte_of_free_minus_owed(monkeypatch: pytest.MonkeyPatch, free: int,
                                                            owed: int) -> None:
    # The real figures move with every other test's segments: pin them to check the rule alone.
    monkeypatch.setattr(segment, "shm_free_bytes", lambda: free)
    monkeypatch.setattr(segment, "shm_uncommitted_bytes", lambda: owed)
    with pytest.raises(SegmentError, match="not enough shared memory"):
        segment.create_segment(_name("over"), free - owed + 1)
    shm = segment.create_segment(_name("exact"), free - owed)
    try:
        assert shm.size >= free - owed
    finally:
        shm.close()
        segment.unlink_segment(shm.name)


def test_an_os_refusal_to_create_is_a_segment_error() -> None:
    with pytest.raises(SegmentError, match="cannot create shared memory"):
        segment.create_segment("edgeva." + "x" * 300, 4096)  # longer than a file name may be


def test_attach_works_where_the_resource_tracker_cannot_be_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    name = _name("untracked")
    shm = segment.create_segment(name, 4096)
    try:
        def absent(name: str, rtype: str) -> None:
            raise OSError("no resource tracker")

        monkeypatch.setattr(segment.resource_tracker, "unregister", absent)
        peer = segment.open_segment(name)
        monkeypatch.undo()
        segment._untrack(peer)  # what the absent tracker could not do: keep it from unlinking at exit
        shm.buf[:4] = b"ring"
        assert bytes(peer.buf[:4]) == b"ring"
        peer.close()
    finally:
        shm.close()
        segment.unlink_segment(name)
