"""``bench chaos``'s arithmetic, apart from any process: the fault schedule drawn from a seed,
and what the events say afterwards (when each app was down and back, frames lost, frame ids
out of order). Times are seconds on one clock (the bench's monotonic clock from the first fault
window); an event is ``(arrived, frame_id, ts)``, ``ts`` the source's wall-clock time.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

KINDS = ("module_kill", "module_stop", "agent_kill", "broker_down", "link_cut", "camera_down")
GAP_S = (5.0, 20.0)  # quiet time between one fault's end and the next fault
OUTAGE_S = (5.0, 30.0)  # broker, link and camera outages
AGENT_RESTART_S = 1.0  # the bench restarts a killed agent after this, as systemd's RestartSec would
STOP_PAST_HANG_S = 5.0  # a SIGSTOPped module stays stopped this long past its hang timeout
DOWN_GAP_S = 2.0  # no event of an app for this long: the app is down


@dataclass(frozen=True)
class Fault:
    """One planned fault: injected at ``t``, its cause removed at ``t + duration``."""

    t: float
    kind: str
    duration: float


def schedule(seed: int, seconds: float, kinds: Sequence[str] = KINDS, tail_s: float = 20.0,
             hang_timeout_s: float = 10.0) -> list[Fault]:
    """The faults of a run of ``seconds``: one at a time, 5-20 s apart (from the end of the one
    before), every kind once in each run of as many faults as there are kinds (in a drawn
    order), outages 5-30 s; none whose end leaves less than ``tail_s`` to the end of the run
    (the last fault's recovery is judged in that tail). The same seed gives the same list."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"fault kinds: {', '.join(unknown) or 'none given'}; known: {', '.join(KINDS)}")
    rng = random.Random(seed)
    out: list[Fault] = []
    bag: list[str] = []
    t = rng.uniform(*GAP_S)
    while True:
        if not bag:  # kinds drawn from a shuffled bag: every kind once before any comes twice
            bag = list(dict.fromkeys(kinds))
            rng.shuffle(bag)
        kind = bag.pop()
        if kind in ("broker_down", "link_cut", "camera_down"):
            duration = round(rng.uniform(*OUTAGE_S), 1)
        elif kind == "module_stop":
            duration = hang_timeout_s + STOP_PAST_HANG_S
        elif kind == "agent_kill":
            duration = AGENT_RESTART_S
        else:
            duration = 0.0
        if t + duration + tail_s > seconds:
            return out
        out.append(Fault(round(t, 1), kind, duration))
        t += duration + rng.uniform(*GAP_S)


def down_gap_s(arrivals: Sequence[float], start: float, end: float, floor_s: float = DOWN_GAP_S,
               factor: float = 3.0) -> float:
    """How long an app must be silent to count as down: ``factor`` times the longest silence it
    had while it was flowing before any fault (``start`` to ``end``), at least ``floor_s``. On
    a loaded machine an app's events come in bursts a second or two apart, which is not an
    outage."""
    seen = [a for a in arrivals if start <= a <= end]
    longest = max((b - a for a, b in zip(seen, seen[1:], strict=False)), default=0.0)
    return round(max(floor_s, factor * longest), 2)


def down_spans(arrivals: Sequence[float], start: float, end: float, gap_s: float = DOWN_GAP_S) -> list[tuple[float, float | None]]:
    """When an app was down within ``[start, end]``: each silence longer than ``gap_s`` as
    ``(last event before it, first event after it)``, ``None`` if none came before ``end``
    (arrivals sorted; a silence from ``start`` counts from ``start``)."""
    spans: list[tuple[float, float | None]] = []
    prev = start
    for a in arrivals:
        if a < start:
            prev = a
            continue
        if a > end:
            break
        if a - prev > gap_s:
            spans.append((prev, a))
        prev = a
    if end - prev > gap_s:
        spans.append((prev, None))
    return spans


def recovery_s(arrivals: Sequence[float], t_fault: float, t_next: float, t_end: float,
               gap_s: float = DOWN_GAP_S) -> float | None:
    """Seconds from ``t_fault`` until the app's events flowed again for good: the end of the
    last silence that had lasted ``gap_s`` (the app down) before the next fault (``t_next``) and
    lasted past ``t_fault``; 0.0 if the fault never silenced the app; ``None`` if the app was
    still silent at ``t_end`` (the end of the run). A silence that the next fault began is the
    next fault's."""
    last: tuple[float, float | None] | None = None
    for lo, hi in down_spans(arrivals, min(arrivals[0], t_fault) if arrivals else t_fault, t_end, gap_s):
        if lo + gap_s < t_next and (hi is None or hi > t_fault):
            last = (lo, hi)
    if last is None:
        return 0.0
    return None if last[1] is None else round(max(0.0, last[1] - t_fault), 2)


def frames_lost(events: Sequence[tuple[float, int, float]], fault_ts: Sequence[float], fps: float,
                gap_s: float = DOWN_GAP_S) -> tuple[int, list[int]]:
    """Frames an app did not deliver: (before the first fault, per fault). Each hole in its
    frame ids (in arrival order) goes to the last fault injected before the app had been silent
    ``gap_s`` (the attribution ``recovery_s`` uses), so that a long outage's frames count once,
    for the fault that caused it, and holes between faults (frames dropped under load) for the
    fault before them. A frame that arrives late (after a later one) fills its hole again.
    Across a source restart (ids from 0 again, see ``order_faults``) the hole is estimated
    from the source timestamps at ``fps``."""
    before, per = 0, [0] * len(fault_ts)
    missing: dict[int, int] = {}  # frame id -> the fault its hole went to (-1: before any)
    last: tuple[float, int, float] | None = None  # the newest frame so far

    def count(i: int, n: int) -> None:
        nonlocal before
        if i >= 0:
            per[i] += n
        else:
            before += n

    for ev in events:
        arrived, fid, ts = ev
        if last is None:
            last = ev
            continue
        a0, id0, ts0 = last
        i = bisect.bisect_right(fault_ts, a0 + gap_s) - 1
        if fid > id0:
            count(i, fid - id0 - 1)
            missing.update(dict.fromkeys(range(id0 + 1, fid), i))
            last = ev
        elif ts > ts0:  # the source started again from 0
            count(i, max(0, round((ts - ts0) * fps) - 1))
            missing.clear()
            last = ev
        elif fid in missing:  # late, not lost
            count(missing.pop(fid), -1)
    return before, per


def order_faults(events: Sequence[tuple[float, int, float]]) -> list[dict]:
    """Frame ids that went back or repeated, in arrival order. A restarted source numbers its
    frames from 0 again: an id lower than the one before is a new run of the source (not a
    fault) when its frame is newer than every frame seen (``ts``), and a reorder or a
    duplicate otherwise."""
    bad: list[dict] = []
    last_id, newest = None, float("-inf")
    for arrived, fid, ts in events:
        if last_id is not None and fid <= last_id and ts <= newest:
            bad.append({"t": round(arrived, 2), "frame_id": fid, "after": last_id,
                        "kind": "duplicate" if fid == last_id else "reordered"})
        last_id, newest = fid, max(newest, ts)
    return bad


def rate_series(arrivals: Sequence[float], start: float, end: float, bin_s: float = 1.0) -> list[int]:
    """Events per ``bin_s`` from ``start`` to ``end`` (whole bins only: a last partial bin would
    read as a drop): an app's rate over time, for the plot."""
    bins = [0] * max(1, int((end - start) / bin_s))
    for a in arrivals:
        i = int((a - start) / bin_s) if a >= start else -1
        if 0 <= i < len(bins):
            bins[i] += 1
    return bins


def reconnect_wait_s(down_s: float, first_s: float, cap_s: float) -> float:
    """The wait a live source's decoder was in when its camera came back after ``down_s``: its
    reopen attempts wait ``first_s``, doubling up to ``cap_s``; the camera is seen at the end of
    the wait in progress, so that wait bounds how long after its return the frames resume."""
    t, wait = 0.0, first_s
    while True:
        t += wait
        if t >= down_s:
            return wait
        wait = min(cap_s, wait * 2)
