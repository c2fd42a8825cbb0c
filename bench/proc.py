"""What the benchmarks read about processes and shared memory, from /proc and /dev/shm.

Shared by ``bench soak`` and ``bench chaos``: the processes under a root, their private and
shared resident memory, their descriptors, an agent's ``/dev/shm`` segments; and, for a bench
that kills agents, a child subreaper (orphans come back to the bench, where they can be counted)
and reaping the orphans that died.
"""

from __future__ import annotations

import ctypes
import os

PR_SET_CHILD_SUBREAPER = 36


def parents() -> dict[int, int]:
    """pid -> parent pid of every process (from /proc)."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def descendants(root: int) -> list[int]:
    """``root`` and every process under it (from /proc)."""
    kids: dict[int, list[int]] = {}
    for pid, ppid in parents().items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def memory_mb(pid: int) -> tuple[float, float] | None:
    """(private, shared) resident MB of a process: ``RssAnon`` (its own heap: where a leak
    shows) and ``RssShmem`` (ring pages it has touched: grows as ring slots come into use, up
    to the rings' fixed size, which ``/dev/shm`` reserved accounts for)."""
    got: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssShmem:")):
                    got[line.split(":")[0]] = int(line.split()[1]) / 1024
    except OSError:
        return None
    return (got["RssAnon"], got.get("RssShmem", 0.0)) if "RssAnon" in got else None


def fds(pid: int) -> int:
    """Open descriptors of ``pid`` (0 when it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def shm(prefix: str) -> tuple[float, float, int]:
    """An agent's segments (``edgeva.<prefix>.*``): MB touched (allocated blocks; rings are sparse
    until their slots are written), MB reserved (their sizes: what a leak would grow), and how
    many there are."""
    touched, reserved, count = 0, 0, 0
    for name in os.listdir("/dev/shm"):
        if name.startswith(f"edgeva.{prefix}."):
            try:
                st = os.stat(f"/dev/shm/{name}")
            except OSError:
                continue
            touched += st.st_blocks * 512
            reserved += st.st_size
            count += 1
    return touched / (1 << 20), reserved / (1 << 20), count


def become_subreaper() -> bool:
    """Orphans of this process's children (a SIGKILLed agent's modules, its forkserver) are
    re-parented here instead of to init, so that a bench can count what an agent left behind.
    False where the kernel refuses (not Linux)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def proc_state(pid: int) -> str:
    """The state letter of ``pid`` (R, S, T stopped, Z zombie...); "" when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def reap_orphans(keep: set[int]) -> int:
    """Reap this process's dead children that are not in ``keep`` (the ``Popen`` objects the
    caller waits for itself): adopted orphans that exited. Returns how many were reaped."""
    me, n = os.getpid(), 0
    for pid, ppid in parents().items():
        if ppid == me and pid not in keep and proc_state(pid) == "Z":
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    n += 1
            except ChildProcessError:
                pass
    return n
