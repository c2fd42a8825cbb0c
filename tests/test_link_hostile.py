"""Hostile link peers (issue 15, holes 4 and 5): a raw-pynng peer process sends garbage, lying
headers, wrong types, truncated and oversized frames and wrong stream ids; the link counts each
as bad (or unrouted), keeps its receive thread, and delivers the good stream intact. Through a
real pipeline (link -> ring -> tracker process -> publish process -> supervisor), neither a
frame that used to kill the link's thread nor a peer's bytes field that used to kill the
supervisor's reader stops anything.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time

import numpy as np

from edgeva.agent.dataplane.link import Link
from edgeva.agent.dataplane.relay import LinkToRing
from edgeva.agent.dataplane.segment import segment_name
from edgeva.agent.supervisor import Supervisor
from edgeva.schemas import runner as R
from tests import link_peer as P

CTX = mp.get_context("spawn")
MAX = 1 << 20


def _send_all(addr: str, payloads: list[bytes]) -> None:
    import pynng

    with pynng.Pair0(send_timeout=5000) as sock:
        sock.dial(addr, block=True)
        for p in payloads:
            sock.send(p)
        time.sleep(1.0)  # nng has no linger: let the last ones leave


def _wait(pred, timeout: float, what) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.02)


def test_raw_peer_garbage_is_counted_and_the_good_stream_goes_on() -> None:
    link = Link.listen("tcp://127.0.0.1:0", max_message_size=MAX, name="hostile")
    got: list[int] = []
    wrong: list[int] = []

    def handler(r) -> None:
        m = r.message
        got.append(m.frame_id)
        if not np.array_equal(m.arrays["frame"], P.pixels(m.frame_id)) or m.fields["i"] != m.frame_id:
            wrong.append(m.frame_id)

    link.on("good", handler)
    stop, q = CTX.Event(), CTX.Queue()
    n = 60
    peer = CTX.Process(target=P.run_peer, args=(link.address, "good", n, stop, 2 * MAX, q), daemon=True)
    peer.start()
    try:
        kind, counts = q.get(timeout=30)
        assert kind == "sent" and counts["bad"] > 60 and counts["unrouted"] > 0
        # Every good frame before the oversized one, then more after nng redialled.
        _wait(lambda: len(got) >= n + 5, 30, lambda: f"{len(got)} good frames; stats {link.stats()}")
        st = link.stats()
        assert got[:n] == list(range(n)), got[:n]
        assert got[n:] == sorted(set(got[n:])) and got[n] >= n  # later ones in order, none twice
        assert not wrong
        assert st["bad"] == counts["bad"], (st, counts)
        assert st["unrouted"] == counts["unrouted"], (st, counts)
        assert st["connects"] >= 2, st  # the oversized message dropped the connection; nng redialled
        m = link.metrics()
        assert (m.bad, m.unrouted) == (counts["bad"], counts["unrouted"])
        assert link._dispatcher is not None and link._dispatcher.is_alive()
    finally:
        stop.set()
        peer.join(5)
        if peer.is_alive():
            peer.kill()
        link.close()


class _Pipeline:
    """peer -> Link -> LinkToRing -> tracker process -> publish process -> supervisor, whose
    event callback writes JSON as the MQTT bridge does."""

    def __init__(self, middle: dict | None = None) -> None:
        tag = f"h{os.getpid()}{int(time.monotonic() * 1000) % 100000}"
        middle = middle or {"type": "tracker"}
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.link = Link.listen("tcp://127.0.0.1:0", max_message_size=MAX, name="hostile")
        self.relay = LinkToRing(self.link, "cam", segment_name(tag, "in"), slot_size=64 << 10)
        self.sup = Supervisor(self._on_event, lambda *_: None, lambda *_: None)
        self.tracker = self.sup.start(R.RunnerSpec(
            name=middle["type"], type=middle["type"], config=middle, device="t",
            inputs=[R.InputSpec(ring=self.relay.producer.name)], output_ring=segment_name(tag, "trk"),
        ))
        self.publish = self.sup.start(R.RunnerSpec(
            name="publish", type="publish", config={"type": "publish"}, device="t",
            inputs=[R.InputSpec(ring=self.tracker.ring)], output_ring=segment_name(tag, "pub"),
        ))

    def _on_event(self, _inst, event: dict) -> None:
        text = json.dumps(event, separators=(",", ":"))  # what agent.bridge does with it
        with self.lock:
            self.events.append(json.loads(text))

    def ids(self) -> list[int]:
        with self.lock:
            return [e["frame_id"] for e in self.events]

    def send(self, payloads: list[bytes]) -> None:
        peer = CTX.Process(target=_send_all, args=(self.link.address, payloads), daemon=True)
        peer.start()
        self._peer = peer

    def close(self) -> None:
        self._peer.join(5)
        self.sup.close()
        self.relay.close()
        self.link.close()


def _good(i: int, seq: int, **fields) -> bytes:
    return P.good_frame("cam", i, seq, detections=[], **fields)


def test_overflowing_shape_and_wrong_types_from_a_peer_stop_nothing() -> None:
    """Hole 4: shape [2**63, -2] used to raise OverflowError in the link's receive thread (every
    stream from that peer stopped); hops of 5 passed and crashed the tracker."""
    p = _Pipeline()
    try:
        env = P.envelope(b"cam", 0)
        killer = env + P.body(P.header(10, arrays=[["frame", "|u1", [2**63, -2], 0]]), P.pixels(0).tobytes())
        hops5 = env + P.body(P.header(11, hops=5, fields={"detections": [], "i": 11}))
        no_hops = env + P.body({k: v for k, v in P.header(12, fields={"detections": []}).items() if k != "hops"})
        frames = [_good(i, i) for i in range(10)] + [killer, hops5, no_hops] + [_good(i, i) for i in range(10, 20)]
        p.send(frames)
        _wait(lambda: len(p.ids()) >= 20, 30, lambda: f"events {p.ids()}, link {p.link.stats()}, "
              f"tracker {p.tracker.status} restarts {p.tracker.restarts} {p.tracker.error}")
        assert p.ids() == list(range(20))
        assert p.link.stats()["bad"] == 3
        assert p.tracker.restarts == 0 and p.tracker.status == "running", p.tracker.error
    finally:
        p.close()


def test_a_frame_a_module_cannot_use_is_refused_and_counted_not_a_crash() -> None:
    """A well-formed frame without the array the next module needs (a detector gets no
    'frame'): the module refuses that one input (ModuleError) and goes on; no restart."""
    p = _Pipeline({"type": "detector", "backend": "onnx", "threads": 1})
    try:
        env = P.envelope(b"cam", 0)
        no_frame = [env + P.body(P.header(100 + i)) for i in range(3)]
        frames = [_good(i, i) for i in range(5)] + no_frame + [_good(i, i) for i in range(5, 10)]
        p.send(frames)
        _wait(lambda: len(p.ids()) >= 10, 60, lambda: f"events {p.ids()}, detector {p.tracker.status} "
              f"restarts {p.tracker.restarts} {p.tracker.error}")
        assert p.ids() == list(range(10))
        det = p.tracker
        _wait(lambda: det.last_metrics is not None and det.last_metrics.counters.get("refused_inputs") == 3,
              10, lambda: f"counters {det.last_metrics and det.last_metrics.counters}")
        assert det.restarts == 0 and det.status == "running", det.error
    finally:
        p.close()


def test_bytes_in_a_peers_fields_never_stop_the_supervisor() -> None:
    """Hole 5: a msgpack bin field (valid on the wire) went into an event, json.dumps raised in
    the supervisor's reader thread, and after that no event, restart or readiness was seen."""
    p = _Pipeline()
    try:
        frames = [_good(i, i) for i in range(5)]
        frames.append(_good(5, 5, blob=b"\x00\xff", nan=float("nan")))
        frames += [_good(i, i) for i in range(6, 12)]
        p.send(frames)
        _wait(lambda: len(p.ids()) >= 12, 30, lambda: f"events {p.ids()}; reader alive {p.sup._thread.is_alive()}")
        assert p.ids() == list(range(12))
        ev = p.events[5]
        assert ev["blob"] == "base64:AP8=" and ev["nan"] is None
        # The reader still serves everything else: a new module becomes ready.
        extra = p.sup.start(R.RunnerSpec(
            name="publish2", type="publish", config={"type": "publish"}, device="t",
            inputs=[R.InputSpec(ring=p.tracker.ring)], output_ring=p.publish.spec.output_ring + "2",
        ), timeout=15)
        assert extra.status == "running"
    finally:
        p.close()
