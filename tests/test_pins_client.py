"""Pins of ``EdgevaClient``'s subscriptions (issue 25, survivors of ``make mutants`` on
control/client.py): filters shared by several subscriptions are counted, a subscription's queue
keeps the newest messages, ``get`` times out with what it waited for. Real mosquitto, a plain
paho publisher."""

from __future__ import annotations

import time
import uuid

import paho.mqtt.client as mqtt
import pytest

from edgeva.control.client import EdgevaClient, Incoming, Subscription
from tests.brokers import Broker


def _publisher(broker: Broker) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def test_a_filter_shared_by_two_subscriptions_lives_until_both_close(mosquitto: Broker) -> None:
    device = f"cl-{uuid.uuid4().hex[:6]}"
    topic = f"edgeva/v1/{device}/default/events/a"
    pub = _publisher(mosquitto)
    try:
        with EdgevaClient(mosquitto.url, device) as dev:
            base = dict(dev._filters)  # the v5 inbox
            one, two = dev.subscribe(topic), dev.subscribe(topic)
            assert dev._filters == {**base, topic: 2}
            pub.publish(topic, b"1", qos=1).wait_for_publish(5)
            assert one.get(5).payload == b"1" and two.get(5).payload == b"1"
            one.close()
            one.close()  # twice: counted once
            assert dev._filters == {**base, topic: 1}
            pub.publish(topic, b"2", qos=1).wait_for_publish(5)
            assert two.get(5).payload == b"2"  # still subscribed at the broker
            two.close()
            assert dev._filters == base
            with pytest.raises(TimeoutError, match=f"no message on {topic} within 0.2s"):
                two.get(0.2)
    finally:
        pub.loop_stop()
        pub.disconnect()


def test_a_full_subscription_keeps_the_newest_messages(mosquitto: Broker) -> None:
    with EdgevaClient(mosquitto.url, f"cl-{uuid.uuid4().hex[:6]}") as dev:
        sub = Subscription(dev, ["x"], maxsize=2)
        for i in range(5):
            sub._put(Incoming("x", str(i).encode()))
        assert [sub.get(0).payload for _ in range(2)] == [b"3", b"4"]
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            sub.get(0.2)
        assert time.monotonic() - t0 >= 0.15
