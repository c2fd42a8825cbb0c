"""``edgeva bench hop``: every transport runs end to end, and a broken one fails, never hangs.

Tiny payloads and sample counts keep this to a few seconds; no timing is asserted (the machine
is shared and noisy): the ratios are read from the benchmark's output, not checked here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from edgeva.bench.hop.report import add_ratios, format_table, to_json
from edgeva.bench.hop.run import Plan, pin_cpus, run_hop
from edgeva.bench.hop.transports import REGISTRY, transports
from edgeva.bench.hop.transports.base import Received, Receiver, Sender, Transport

EXPECTED = {"ring", "shm-pipe", "mp-queue", "http-msgpack", "nng-tcp"}
TINY = {"frame": Plan(3, 20, 30, msg_timeout_s=5.0), "meta": Plan(3, 20, 30, msg_timeout_s=5.0)}
SMALL_FRAME = (36, 64, 3)


# -- deliberately broken transports (module level: the spawned children import them) ------


class _NullSender(Sender):
    def send(self, frame_id: int, t0_ns: int, src: Any) -> None:
        pass


class _HangingSender(Sender):
    def send(self, frame_id: int, t0_ns: int, src: Any) -> None:
        time.sleep(3600)  # both ends stuck, ignoring every timeout


class _DyingReceiver(Receiver):
    def recv(self, timeout: float) -> Received | None:
        os._exit(3)  # a crash that reports nothing, like a segfault


class _HangingReceiver(Receiver):
    def recv(self, timeout: float) -> Received | None:
        time.sleep(3600)  # ignores its timeout
        return None


class CrashTransport(Transport):
    name = "test-crash"
    order = 900

    def sender(self) -> Sender:
        return _NullSender()

    def receiver(self) -> Receiver:
        return _DyingReceiver()


class HangTransport(Transport):
    name = "test-hang"
    order = 901

    def sender(self) -> Sender:
        return _HangingSender()  # only the parent's deadline can end this case

    def receiver(self) -> Receiver:
        return _HangingReceiver()


@pytest.fixture
def broken() -> Iterator[None]:
    REGISTRY[CrashTransport.name] = CrashTransport
    REGISTRY[HangTransport.name] = HangTransport
    try:
        yield
    finally:
        REGISTRY.pop(CrashTransport.name, None)
        REGISTRY.pop(HangTransport.name, None)


MARK = f"t{os.getpid()}"  # in this process's segment names: other runs on the host are not ours


def _shm_leftovers() -> set[str]:
    """This test process's bench segments in /dev/shm (the ring names carry the creating pid;
    shm-pipe's carry MARK, see ``_marked_names``). Other benches on the same host may run now."""
    mine = (f"edgeva.bench.hop{os.getpid()}-", f"edgeva-bench-{MARK}")
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(mine)}
    except FileNotFoundError:
        return set()


@pytest.fixture
def _marked_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """shm-pipe names its segment edgeva-bench-<12 hex of a uuid4> in this process: put MARK first."""
    import uuid
    from types import SimpleNamespace

    from edgeva.bench.hop.transports import shm_pipe

    monkeypatch.setattr(shm_pipe, "uuid", SimpleNamespace(
        uuid4=lambda: SimpleNamespace(hex=MARK + uuid.uuid4().hex)))


def test_registry_has_the_contract_transports() -> None:
    assert set(transports()) >= EXPECTED | {"ring-direct"}
    assert next(iter(transports())) == "ring"  # the baseline comes first in tables


def test_all_transports_both_payloads(_marked_names: None) -> None:
    before = _shm_leftovers()
    results = run_hop(sorted(EXPECTED), frame_shape=SMALL_FRAME, plans=TINY, rounds=2)
    add_ratios(results)
    doc = json.loads(json.dumps(to_json(results, quick=True)))  # must be plain JSON
    failed = {f"{r['transport']}/{r['payload']}": r["error"] for r in doc["results"] if not r["ok"]}
    assert not failed
    got = {(r["transport"], r["payload"]) for r in doc["results"]}
    assert got == {(t, p) for t in EXPECTED for p in ("frame", "meta")}
    for r in doc["results"]:
        for key in ("p50_us", "p99_us", "fps", "cpu_us"):
            assert isinstance(r[key], float) and r[key] > 0, (r["transport"], key, r[key])
        assert r["p99_us"] >= r["p50_us"]
        assert r["p50_vs_ring"] > 0
        assert r["rounds"] == 2 and min(r["p50_rounds_us"]) <= r["p50_us"] <= max(r["p50_rounds_us"])
    assert doc["quick"] is True and doc["host"]["cpu_count"] >= 1
    assert "ring" in format_table(results)
    assert _shm_leftovers() <= before  # nothing left in /dev/shm


def test_broken_transports_fail_without_hanging(broken: None) -> None:
    t0 = time.monotonic()
    plan = Plan(1, 2, 2, msg_timeout_s=2.0, start_timeout_s=30.0, case_timeout_s=60.0)
    results = run_hop(["test-crash", "shm-pipe"], ["meta"], plans={"meta": plan}, rounds=1)
    # Both ends stuck and deaf to their timeouts: only the parent's deadline ends the case.
    stuck = Plan(1, 2, 2, msg_timeout_s=2.0, start_timeout_s=30.0, case_timeout_s=4.0)
    results += run_hop(["test-hang"], ["meta"], plans={"meta": stuck}, rounds=1)
    by = {r.transport: r for r in results}
    assert not by["test-crash"].ok and "consumer died (exit code 3)" in by["test-crash"].error
    assert by["shm-pipe"].ok  # a failure does not spoil the cases after it
    assert not by["test-hang"].ok and "timed out" in by["test-hang"].error
    assert time.monotonic() - t0 < 60
    add_ratios(results)
    table = format_table(results)
    assert "FAILED" in table and "test-crash" in table


@pytest.mark.skipif(pin_cpus() is None, reason="needs two usable CPUs")
def test_producer_and_consumer_run_pinned_to_distinct_cpus_unless_told_not_to() -> None:
    p, c = pin_cpus()
    pinned = run_hop(["shm-pipe"], ["meta"], plans=TINY, rounds=1)[0]
    assert pinned.ok, pinned.error
    assert pinned.extra["cpus"] == {"producer": [p], "consumer": [c]}
    free = run_hop(["shm-pipe"], ["meta"], plans=TINY, rounds=1, pin=False)[0]
    assert free.ok, free.error
    everywhere = sorted(os.sched_getaffinity(0))
    assert free.extra["cpus"] == {"producer": everywhere, "consumer": everywhere}


def test_unknown_transport_is_refused() -> None:
    with pytest.raises(KeyError, match="unknown transport"):
        run_hop(["no-such-transport"])


def test_cli_bench_hop(tmp_path: Any) -> None:
    from edgeva.cli import main

    out = tmp_path / "hop.json"
    png = tmp_path / "hop.png"
    # The CLI has no knob for sample counts: run one fast transport on meta only.
    rc = main(["bench", "hop", "--quick", "--transports", "shm-pipe", "--payloads", "meta",
               "--json", str(out), "--plot", str(png)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert [(r["transport"], r["payload"]) for r in doc["results"]] == [("shm-pipe", "meta")]
    assert set(doc) >= {"results", "host", "quick"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["bench", "hop", "--transports", "nope"]) == 2


def test_payload_sources_are_deterministic() -> None:
    from edgeva.bench.hop.transports.base import Payload, touch

    f1, f2 = Payload("frame", SMALL_FRAME).source(), Payload("frame", SMALL_FRAME).source()
    assert isinstance(f1, np.ndarray) and np.array_equal(f1, f2) and touch(f1) == touch(f2)
    m = Payload("meta").source()
    assert isinstance(m, dict) and len(m["boxes"]) == 20 and all(len(b) == 6 for b in m["boxes"])


def test_ring_direct_moves_frames_written_in_the_slot() -> None:
    """ring-direct: the producer writes each frame into its slot through alloc before t0 (as a
    decoder decodes into it), so the hop is commit + wake-up + view; the consumer still checks
    every frame's content and order (a frame not written into the slot fails the case)."""
    before = _shm_leftovers()
    results = run_hop(["ring", "ring-direct"], ["frame", "meta"], frame_shape=SMALL_FRAME, plans=TINY, rounds=1)
    add_ratios(results)
    by = {(r.transport, r.payload): r for r in results}
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert by["ring-direct", "frame"].p50_vs_ring > 0
    assert _shm_leftovers() <= before
