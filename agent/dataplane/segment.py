"""Shared-memory segments of this agent: naming, opening without the resource-tracker trap,
and sweeping what a crashed run left behind.

Segments are named ``edgeva.<prefix>.<ring>`` (``<prefix>`` is the agent's, so that two agents on
one host never sweep each other's) and created 0600 by ``multiprocessing.shared_memory``.
"""

from __future__ import annotations

import os
import re
import stat
from multiprocessing import resource_tracker, shared_memory

SHM_DIR = "/dev/shm"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


class SegmentError(RuntimeError):
    """A segment cannot be created or attached; the message says which and why."""


def segment_name(prefix: str, *parts: str) -> str:
    """The shared-memory name for a ring: ``edgeva.<prefix>.<part>.<part>...``."""
    name = ".".join(("edgeva", prefix, *parts))
    if not _NAME_RE.match(name):
        raise SegmentError(f"invalid segment name {name!r}: use letters, digits, '_', '.', '-'")
    return name


def _untrack(shm: shared_memory.SharedMemory) -> None:
    # Python < 3.13 registers every attached segment with the process's resource tracker, which
    # unlinks it when that process exits: a consumer's exit would destroy the producer's ring.
    # Lifetime is ours to manage (producer close + sweep), so opt out.
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:  # tracker absent, or already unregistered
        pass


def shm_free_bytes() -> int | None:
    """Free space of the shared-memory filesystem, or None where it cannot be read."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def shm_uncommitted_bytes() -> int:
    """Bytes that segments in /dev/shm may still take: tmpfs files are sparse, so each one's
    free check saw space that the segments made before it will claim once written."""
    total = 0
    try:
        entries = os.scandir(SHM_DIR)
    except OSError:
        return 0
    with entries:
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            total += max(0, st.st_size - st.st_blocks * 512)
    return total


def create_segment(name: str, size: int) -> shared_memory.SharedMemory:
    """Create a new 0600 segment; a leftover of the same name, or too little shared memory,
    is a clear error."""
    free = shm_free_bytes()
    # tmpfs creates the file sparse and only fails when a page is first written: as a SIGBUS
    # ("Bus error") in whichever process writes it. Refuse up front instead, counting what
    # earlier segments (sparse too) will still take. Where the free space cannot be read, the
    # OS's own refusal below is all there is.
    if free is not None:
        owed = shm_uncommitted_bytes()
        if size > free - owed:
            raise SegmentError(
                f"not enough shared memory for {name!r}: it needs {size / 2**20:.1f} MiB, "
                f"{SHM_DIR} has {free / 2**20:.1f} MiB free, {owed / 2**20:.1f} MiB of it owed to existing "
                f"segments (Docker's default is 64 MB: run with --shm-size, or use fewer/smaller ring slots: "
                f"`edgeva agent --slots`)"
            )
    try:
        shm = shared_memory.SharedMemory(name=name, create=True, size=size)
    except FileExistsError:
        raise SegmentError(
            f"shared memory {name!r} already exists: another producer is running, or a crashed "
            f"run left it (the agent sweeps those at start; `edgeva agent` or sweep_segments())"
        ) from None
    except OSError as e:
        raise SegmentError(
            f"cannot create shared memory {name!r} of {size} B: {e.strerror}. /dev/shm may be "
            f"too small (Docker's default is 64 MB: run with --shm-size)"
        ) from None
    _untrack(shm)
    return shm


def open_segment(name: str) -> shared_memory.SharedMemory:
    """Attach to an existing segment; a missing one is a clear error."""
    try:
        shm = shared_memory.SharedMemory(name=name, create=False)
    except FileNotFoundError:
        raise SegmentError(f"no shared memory named {name!r}: is its producer running?") from None
    _untrack(shm)
    return shm


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_segments(prefix: str | None = None) -> list[str]:
    """Names of edgeva segments on this host (of one agent prefix, or all)."""
    head = "edgeva." if prefix is None else f"edgeva.{prefix}."
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(head))
    except FileNotFoundError:
        return []


def own_segment(name: str) -> bool:
    """Whether ``/dev/shm/<name>`` is a regular file owned by this process's user.

    /dev/shm is writable by every local user: a file named like one of ours may be another
    user's (we must not open, trust or remove it) or a symbolic link. Sticky-bit semantics keep
    a file that is ours from being replaced by someone else between this check and our use."""
    try:
        st = os.lstat(os.path.join(SHM_DIR, name))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()


def unlink_segment(name: str) -> bool:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
        return True
    except FileNotFoundError:
        return False
