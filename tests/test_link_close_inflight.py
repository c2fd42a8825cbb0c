"""A link's close waits for the message its sender thread has in hand, not only for its queue.

The sender thread takes a message off the queue and retries it in slices while the peer reads
nothing (``_inflight``); the queue is empty then. ``close(drain=...)`` must count that message
as not yet sent: a close that only looked at the queue would end the link at once and the
message, a lossless stream's last, would be dropped. A raw nng peer that starts reading only
after the close began shows it.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pynng

from edgeva.agent.dataplane.link import Link
from edgeva.schemas.message import Message

FRAME = np.zeros((1024, 1024), np.uint8)  # 1 MiB: a few fill the socket buffers


def test_close_drains_the_message_in_the_senders_hands() -> None:
    addr = f"ipc:///tmp/edgeva-test-inflight-{os.getpid()}-{time.monotonic_ns()}.ipc"
    with pynng.Pair0(recv_timeout=2000) as peer:
        peer.listen(addr)
        link = Link.dial(addr, max_message_size=4 << 20, name="inflight")
        try:
            deadline = time.monotonic() + 10
            while not link.connected:
                assert time.monotonic() < deadline, "never connected"
                time.sleep(0.01)
            # Send one at a time until one is not taken within 0.5 s: it is the sender thread's
            # now (in flight), with nothing queued behind it.
            sent = 0
            while True:
                assert sent < 200, "the peer's buffers never filled"
                link.send("s", Message(sent, "cam", arrays={"frame": FRAME}), timeout=5)
                sent += 1
                t = time.monotonic() + 0.5
                while link.messages_sent < sent and time.monotonic() < t:
                    time.sleep(0.005)
                if link.messages_sent < sent:
                    break
            closer = threading.Thread(target=link.close, kwargs={"drain": 10.0})
            closer.start()
            time.sleep(0.5)  # several send slices: a close that ignored it has dropped it by now
            got = 0
            try:
                while True:
                    peer.recv()
                    got += 1
            except pynng.Timeout:
                pass
            closer.join(15)
            assert not closer.is_alive()
            assert got == sent, f"the peer got {got} of {sent} messages (link stats {link.stats()})"
        finally:
            link.close(drain=0)
