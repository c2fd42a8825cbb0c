"""``EdgevaClient``'s subscriptions and streams, exactly (issue 25: survivors of ``make mutants``
on control/client.py): what a subscription yields and when it stops, that a closed one is given
back to the broker, state and metrics streams skip what does not fit and time out with what they
waited for. Real mosquitto (MQTT 5); messages are published on the client's own connection where
ordering matters (one connection: the broker handles its packets in order)."""

from __future__ import annotations

import dataclasses
import queue
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from edgeva.agent import mqtt as m
from edgeva.control.client import EdgevaClient, Incoming, RequestTimeout, Subscription
from edgeva.schemas.metrics import AppMetrics, DeviceMetrics, TenantMetrics
from edgeva.schemas.state import DeviceState
from tests.brokers import Broker


@pytest.fixture
def dev(mosquitto: Broker) -> Iterator[EdgevaClient]:
    with EdgevaClient(mosquitto.url, f"st-{uuid.uuid4().hex[:6]}") as client:
        yield client


def send(dev: EdgevaClient, topic: str, payload: str | bytes, retain: bool = False) -> None:
    dev._client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)


def bounded(call: Callable[[], object], limit: float = 5.0) -> object:
    """``call()`` in a thread: what it returned or raised; a call still running after ``limit``
    seconds fails the test instead of hanging it."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(call())
        except Exception as exc:  # handed to the test
            out.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(limit)
    assert not worker.is_alive(), f"still running after {limit} s"
    return out[0]


def drain_until(sub: Subscription, marker: bytes) -> list[bytes]:
    """The payloads up to and including ``marker``."""
    got: list[bytes] = []
    while not got or got[-1] != marker:
        got.append(sub.get(5).payload)
    return got


def test_iterating_a_subscription_yields_until_it_is_closed(dev: EdgevaClient) -> None:
    topic = f"edgeva/v1/{dev.device}/default/events/it"
    sub = dev.subscribe(topic)
    assert not sub.closed
    for p in (b"1", b"2", b"3"):
        send(dev, topic, p)
    seen: list[bytes] = []

    def read() -> None:  # in a thread: a loop that does not end must fail the test, not hang it
        for msg in sub:
            seen.append(msg.payload)
            if len(seen) == 2:
                sub.close()
            if len(seen) > 2:
                break  # the close did not end the loop

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive() and seen == [b"1", b"2"] and sub.closed
    assert topic not in dev._filters and sub not in dev._subs


def test_a_closed_subscription_gets_nothing_more(dev: EdgevaClient) -> None:
    topic = f"edgeva/v1/{dev.device}/default/events/x"
    drops: list[object] = []
    on_disconnect = dev._client.on_disconnect
    dev._client.on_disconnect = lambda c, u, f, rc, p: (drops.append(rc), on_disconnect(c, u, f, rc, p))
    one, two = dev.subscribe(topic), dev.subscribe(topic)
    one.close()  # the filter stays (two uses it): nothing to send to the broker
    assert dev._subs == [two]
    send(dev, topic, b"after")
    assert two.get(5).payload == b"after"
    with pytest.raises(TimeoutError):
        one.get(0.1)
    assert drops == []  # the connection never dropped (an empty UNSUBSCRIBE is a protocol error)


def test_closing_the_narrower_of_two_overlapping_filters_unsubscribes_it(dev: EdgevaClient) -> None:
    # mosquitto sends one copy per matching subscription: a filter left at the broker after its
    # subscription closed shows up as a duplicate on the wider one
    base = f"edgeva/v1/{dev.device}/default/events"
    narrow, wide = dev.subscribe(f"{base}/a"), dev.subscribe(f"{base}/+")
    send(dev, f"{base}/a", b"1")
    send(dev, f"{base}/b", b"end")
    assert drain_until(wide, b"end") == [b"1", b"1", b"end"]
    narrow.close()
    send(dev, f"{base}/a", b"2")
    send(dev, f"{base}/b", b"end")
    assert drain_until(wide, b"end") == [b"2", b"end"]


def test_a_subscription_that_fails_leaves_nothing_behind(dev: EdgevaClient) -> None:
    filters, subs = dict(dev._filters), list(dev._subs)
    dev._client.disconnect()  # the broker is gone: the SUBSCRIBE cannot even be sent
    dev._client.loop_stop()
    with pytest.raises(m.MqttError, match="cannot subscribe"):
        dev.subscribe(f"edgeva/v1/{dev.device}/default/events/x", timeout=0.5)
    assert dev._filters == filters and dev._subs == subs


def test_a_subscription_keeps_the_newest_1000_messages(dev: EdgevaClient) -> None:
    sub = Subscription(dev, ["x"])
    for i in range(1002):
        sub._put(Incoming("x", str(i).encode()))
    got = [int(sub.get(0).payload) for _ in range(1000)]
    assert got == list(range(2, 1002))
    with pytest.raises(TimeoutError):
        sub.get(0)


def test_a_full_queue_that_its_reader_empties_meanwhile_still_takes_the_message(dev: EdgevaClient) -> None:
    class ReaderWins(queue.Queue):
        """The reader takes the oldest message between the writer's Full and its get_nowait."""

        def get_nowait(self) -> Incoming:
            taken.append(super().get_nowait())
            raise queue.Empty

    taken: list[Incoming] = []
    sub = Subscription(dev, ["x"], maxsize=1)
    sub._queue = ReaderWins(1)
    sub._put(Incoming("x", b"old"))
    sub._put(Incoming("x", b"new"))  # Full, then Empty: the message still goes in
    assert [t.payload for t in taken] == [b"old"] and sub.get(0).payload == b"new"


def test_incoming_is_immutable_and_says_whether_it_was_retained(dev: EdgevaClient) -> None:
    msg = Incoming("t", b"{}")
    assert msg.retained is False and msg.json() == {} and len({msg, Incoming("t", b"{}")}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.payload = b"x"  # type: ignore[misc]
    topic = f"edgeva/v1/{dev.device}/default/events/ret"
    send(dev, topic, b"kept", retain=True)
    try:
        with dev.subscribe(topic) as sub:
            old = sub.get(5)
            send(dev, topic, b"live")
            new = sub.get(5)
        assert (old.payload, old.retained, new.payload, new.retained) == (b"kept", True, b"live", False)
    finally:
        send(dev, topic, b"", retain=True)


def test_closing_the_client_closes_its_subscriptions(mosquitto: Broker) -> None:
    dev = EdgevaClient(mosquitto.url, "closing")
    sub = dev.subscribe("edgeva/v1/closing/default/events/+")
    dev.close()
    assert sub.closed and list(sub) == [] and dev._subs == []


def test_events_of_one_app_or_of_every_app(dev: EdgevaClient) -> None:
    # one subscription at a time: overlapping filters of one client get a copy each (mosquitto)
    ev = f"edgeva/v1/{dev.device}/default/events"
    with dev.subscribe_events() as every:
        send(dev, f"{ev}/a", b'{"n": 1}')
        send(dev, f"{ev}/b", b'{"n": 2}')
        send(dev, f"edgeva/v1/{dev.device}/other/events/a", b'{"n": 3}')  # another tenant
        send(dev, f"{ev}/end", b"{}")
        assert [(m.topic.rsplit("/", 1)[1], m.json()) for m in (every.get(5), every.get(5), every.get(5))] == \
            [("a", {"n": 1}), ("b", {"n": 2}), ("end", {})]
    with dev.subscribe_events("a") as only_a:
        send(dev, f"{ev}/b", b'{"n": 4}')
        send(dev, f"{ev}/a", b'{"n": 5}')
        assert only_a.get(5).json() == {"n": 5}


# -- device state -------------------------------------------------------------------------------


def test_wait_state_skips_what_is_not_a_state_and_waits_online_by_default(dev: EdgevaClient) -> None:
    topic = f"edgeva/v1/{dev.device}/state"
    send(dev, topic, b'{"not": "a state"}', retain=True)
    try:
        online = DeviceState(device=dev.device, status="online").model_dump_json()
        threading.Timer(0.2, send, (dev, topic, online, True)).start()
        assert dev.wait_state(timeout=5).status == "online"
        t0 = time.monotonic()
        exc = bounded(lambda: dev.wait_state(online=False, timeout=0.2))
        assert isinstance(exc, RequestTimeout), exc
        assert str(exc) == f"device {dev.device} is still online after 0.2s (waited for offline)"
        assert time.monotonic() - t0 < 0.8  # the deadline holds after a state came in
    finally:
        send(dev, topic, b"", retain=True)


def test_wait_state_without_any_state_says_so(dev: EdgevaClient) -> None:
    exc = bounded(lambda: dev.wait_state(timeout=0.2))
    assert isinstance(exc, RequestTimeout) and re.match(f"no state from device {dev.device} within 0.2s", str(exc))


# -- metrics ------------------------------------------------------------------------------------


def _tenant(dev: EdgevaClient, *apps: str) -> str:
    return TenantMetrics(device=dev.device, tenant="default", ts=1.0, interval_s=1.0,
                         apps={a: AppMetrics(frames=i + 1) for i, a in enumerate(apps)}).model_dump_json()


def test_watch_metrics_one_app_and_device_wide(dev: EdgevaClient) -> None:
    tm, dm = f"edgeva/v1/{dev.device}/default/metrics", f"edgeva/v1/{dev.device}/metrics"
    stream = dev.watch_metrics(app="b", device_wide=True, idle_timeout=5)
    sender = threading.Timer(0.3, lambda: [send(dev, tm, b'{"bad": 1}'), send(dev, tm, _tenant(dev, "a", "b")),
                                           send(dev, dm, DeviceMetrics(device=dev.device, ts=2.0, interval_s=1.0)
                                                .model_dump_json())])
    sender.start()
    first, second = next(stream), next(stream)
    stream.close()
    sender.join(10)  # its last publish may still wait for its ack: not after the client is gone
    assert isinstance(first, TenantMetrics) and list(first.apps) == ["b"] and first.apps["b"].frames == 2
    assert isinstance(second, DeviceMetrics) and second.ts == 2.0


def test_watch_metrics_of_the_tenant_only_and_its_idle_timeout(dev: EdgevaClient) -> None:
    tm, dm = f"edgeva/v1/{dev.device}/default/metrics", f"edgeva/v1/{dev.device}/metrics"
    stream = dev.watch_metrics(idle_timeout=2)
    sender = threading.Timer(0.3, lambda: [send(dev, dm, DeviceMetrics(device=dev.device, ts=2.0, interval_s=1.0)
                                                .model_dump_json()), send(dev, tm, _tenant(dev, "a", "b"))])
    sender.start()
    got = next(stream)
    stream.close()
    sender.join(10)  # its last publish may still wait for its ack: not after the client is gone
    assert isinstance(got, TenantMetrics) and sorted(got.apps) == ["a", "b"]
    with pytest.raises(RequestTimeout, match=f"^no metrics from device {dev.device} within 0s"):
        next(dev.watch_metrics(idle_timeout=0))
    with pytest.raises(RequestTimeout, match=f"^no metrics from device {dev.device} within 0.2s"):
        next(dev.watch_metrics(idle_timeout=0.2))


def test_subscriptions_come_back_after_the_connection_drops(dev: EdgevaClient) -> None:
    topic = f"edgeva/v1/{dev.device}/default/events/rc"
    qos: list[int] = []
    on_message = dev._client.on_message
    dev._client.on_message = lambda c, u, msg: (qos.append(msg.qos), on_message(c, u, msg))
    with dev.subscribe(topic) as sub:
        dev._client.socket().shutdown(socket.SHUT_RDWR)  # a network drop: paho reconnects
        deadline = time.monotonic() + 10
        while True:  # published until the new connection carries it (and the subscription)
            assert time.monotonic() < deadline, "no delivery after the reconnect"
            if dev._client.is_connected() and dev._client.publish(topic, b"back", qos=2).rc == 0:
                try:
                    assert sub.get(0.5).payload == b"back"
                    break
                except TimeoutError:
                    pass
            time.sleep(0.1)
    assert set(qos) == {1}  # resubscribed at QoS 1 (a QoS 2 publish comes down to it)
