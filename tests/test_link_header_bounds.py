"""A link peer's header cannot cost the receiver memory or time (issue 20, hole 12).

Every size in a frame's msgpack header is bounded before it is allocated
(``agent.dataplane.codec``: ``MAX_HEADER_BYTES``, ``MAX_CONTAINER_LEN``, ``MAX_STR_BYTES``,
``MAX_ARRAYS``, ``MAX_HOPS``, ``MAX_NAME``). A raw-pynng peer sends headers that claim or hold
huge lists, maps, strings, binaries, hops, arrays and names (each frame under the 16 MiB link
limit); before the bounds one 14 MiB frame of empty lists was decoded as a valid message for
+1.1 GB of RSS and 3 s of the link's receive thread. Each must be refused quickly, counted
``bad``, cost the receiving process little memory (its peak RSS, from /proc/self/status), and
the good frames between them arrive, in order.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import numpy as np

from edgeva.agent.dataplane.link import Link
from tests import link_peer as P

CTX = mp.get_context("spawn")
WARM = 6
MAX_GROWTH_MB = 48  # the worst header under MAX_HEADER_BYTES costs ~20 MB, once, transiently


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    raise KeyError(key)


def _wait(pred, timeout: float, what) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out: {what()}"
        time.sleep(0.01)


def test_huge_header_claims_are_refused_quickly_counted_and_cost_little_memory() -> None:
    link = Link.listen("tcp://127.0.0.1:0", name="bounds")
    got: list[int] = []
    wrong: list[int] = []
    lock = threading.Lock()

    def handler(r) -> None:
        m = r.message
        with lock:
            got.append(m.frame_id)
            if not np.array_equal(m.arrays["frame"], P.pixels(m.frame_id)):
                wrong.append(m.frame_id)

    link.on("cam", handler)
    warmed, go, q = CTX.Event(), CTX.Event(), CTX.Queue()
    peer = CTX.Process(target=P.run_bomber, args=(link.address, "cam", WARM, warmed, go, q), daemon=True)
    peer.start()
    try:
        # Warm-up: 14 MiB messages of garbage bring nng's and malloc's buffers to their size.
        assert warmed.wait(60)
        _wait(lambda: link.stats()["bad"] >= WARM, 30, lambda: link.stats())
        time.sleep(0.2)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        base = _status("VmRSS")
        t0 = time.monotonic()
        go.set()
        _, bombs, goods = q.get(timeout=60)
        _wait(lambda: len(got) >= goods, 30, lambda: f"good frames {got}, stats {link.stats()}")
        took = time.monotonic() - t0
        growth = _status("VmHWM") - base
        st = link.stats()
        print(f"{bombs} header bombs refused in {took:.2f} s (sending included); peak RSS +{growth} MB")
        assert got == list(range(goods)) and not wrong, (got, wrong)
        assert st["bad"] == WARM + bombs, st
        assert growth < MAX_GROWTH_MB, f"peak RSS grew {growth} MB over {bombs} header bombs"
        assert took < 8.0, f"{bombs} header bombs held the link for {took:.1f} s"
        assert link._dispatcher is not None and link._dispatcher.is_alive()
    finally:
        go.set()
        peer.join(10)
        if peer.is_alive():
            peer.kill()
        link.close()


def test_the_encoder_refuses_a_header_the_decoder_would() -> None:
    """A module or sender learns at the source: a header over ``MAX_HEADER_BYTES`` is refused
    by the ring's and the link's encoder (nothing is sent), one just under it round-trips."""
    import pytest

    from edgeva.agent.dataplane.codec import MAX_HEADER_BYTES, HeaderTooLarge, decode, encode
    from edgeva.agent.dataplane.link import LinkMessageTooLarge
    from edgeva.schemas.message import Message

    big = Message(1, "cam", fields={"blob": b"x" * MAX_HEADER_BYTES})
    with pytest.raises(HeaderTooLarge, match="over 262144 B"):
        encode(big)
    ok = Message(1, "cam", fields={"blob": b"x" * (MAX_HEADER_BYTES - 200)})
    assert decode(encode(ok)).fields["blob"] == ok.fields["blob"]
    link = Link.listen("tcp://127.0.0.1:0", name="enc")
    try:
        with pytest.raises(LinkMessageTooLarge, match="header"):
            link.send("cam", big, timeout=0.1)
        assert link.stats()["messages_sent"] == 0 and link.stats()["queued"] == 0
        # Refused as it is, without first growing the stream's buffer to max_message_size (no
        # buffer takes such a header: that would cost memory and re-encodes for nothing).
        assert len(link._streams["cam"].scratch) < 4 * MAX_HEADER_BYTES, len(link._streams["cam"].scratch)
    finally:
        link.close()
