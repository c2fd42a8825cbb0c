"""The agent's per-tenant buffers on their own (fast; tests/test_security_bridge.py drives them
through real agents and mosquitto): the reply cache (agent/replies.py), the offline outbox
(agent/outbox.py), and the topic helper that says whose state a message is."""

from __future__ import annotations

from edgeva.agent.outbox import Outbox
from edgeva.agent.replies import ReplyCache
from edgeva.schemas.topics import device_topic


class _Offline:
    """A paho client as the outbox sees it while the broker is away."""

    def is_connected(self) -> bool:
        return False


class _Info:
    """paho's MQTTMessageInfo as the outbox uses it: ``rc``, and ``is_published()`` once the
    broker acknowledged it (a test sets ``acked``)."""

    def __init__(self, owner: _Online) -> None:
        self.rc, self.owner = 0, owner

    def is_published(self) -> bool:
        return self.owner.acked


class _Online:
    def __init__(self) -> None:
        self.sent: list[tuple[str, object, int]] = []
        self.acked = False

    def is_connected(self) -> bool:
        return True

    def publish(self, topic: str, payload: object, qos: int = 0):
        self.sent.append((topic, payload, qos))
        return _Info(self)


def test_reply_cache_a_tenant_pushes_out_only_its_own() -> None:
    c = ReplyCache(per_tenant=3, total=5)
    c.put("acme", "keep", b"acme's reply")
    for i in range(100):
        c.put("globex", f"g{i}", b"x")
    assert c.get("acme", "keep") == b"acme's reply"
    assert c.get("globex", "g99") == b"x" and c.get("globex", "g96") is None  # its own oldest went
    for t in ("t1", "t2", "t3"):  # past the device-wide cap the biggest holder gives way
        c.put(t, "r", b"y")
    assert len(c) <= 5 and c.get("acme", "keep") == b"acme's reply"


def test_reply_cache_bounds_bytes_per_tenant() -> None:
    c = ReplyCache(tenant_bytes=10)
    c.put("acme", "big", b"z" * 11)  # bigger than a tenant may keep: not kept
    assert c.get("acme", "big") is None
    c.put("acme", "a", b"123456")
    c.put("acme", "b", b"123456")
    assert c.get("acme", "a") is None and c.get("acme", "b") == b"123456"


def test_outbox_a_tenant_pushes_out_only_its_own_and_each_keeps_its_order() -> None:
    o = Outbox(per_tenant=3, total_bytes=1 << 20)
    off = _Offline()
    o.publish(off, "globex", "g/1", "one")
    for i in range(10):
        o.publish(off, "acme", f"a/{i}", "x")
    assert o.waiting("globex") == 1 and o.waiting("acme") == 3
    assert o.dropped_by_tenant == {"acme": 7}
    on = _Online()
    assert o.flush(on) == 4 and len(o) == 0
    assert [t for t, _, _ in on.sent] == ["g/1", "a/7", "a/8", "a/9"] and {q for _, _, q in on.sent} == {1}


def test_outbox_device_wide_bytes_go_from_the_biggest_holder() -> None:
    o = Outbox(per_tenant=100, tenant_bytes=100, total_bytes=30)
    off = _Offline()
    o.publish(off, "globex", "g", "0123456789")
    for _ in range(5):
        o.publish(off, "acme", "a", "0123456789")
    assert o.waiting("globex") == 1 and o.waiting("acme") == 2
    o.publish(off, "acme", "a", "z" * 101)  # bigger than a tenant may keep: dropped at once
    assert o.waiting("acme") == 2 and o.dropped_by_tenant["acme"] == 4


def test_device_topic_names_the_device_of_states_and_metrics_only() -> None:
    assert device_topic("edgeva/v1/cam-a/state") == ("cam-a", "state")
    assert device_topic("edgeva/v1/cam-a/metrics") == ("cam-a", "metrics")
    for other in ("edgeva/v1/cam-a/acme/metrics", "edgeva/v1/cam a/state", "edgeva/v2/cam-a/state",
                  "edgeva/v1/cam-a/cmd", "edgeva/v1/+/state"):
        assert device_topic(other) is None, other


def test_outbox_new_events_queue_behind_the_flushed_backlog_until_it_is_acknowledged() -> None:
    """paho sends QoS 1 a window at a time and QoS 0 at once: an event published at QoS 0 right
    after a flush overtook the backlog (bench chaos: frame 421 before 344..420). Until the last
    flushed message is acknowledged, new events of that tenant go at QoS 1, in line."""
    o = Outbox()
    for i in range(3):
        o.publish(_Offline(), "acme", f"a/{i}", "x")
    on = _Online()
    o.flush(on)
    o.publish(on, "acme", "a/3", "x")  # backlog still in flight
    o.publish(on, "globex", "g/0", "x")  # another tenant had no backlog
    on.acked = True
    o.publish(on, "acme", "a/4", "x")  # the backlog is acknowledged: live again
    assert on.sent == [("a/0", "x", 1), ("a/1", "x", 1), ("a/2", "x", 1), ("a/3", "x", 1),
                       ("g/0", "x", 0), ("a/4", "x", 0)]
