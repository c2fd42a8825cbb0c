"""``EdgevaClient`` against a broker that stops answering (issue 25: survivors of ``make mutants``
on control/client.py): a private mosquitto, frozen with SIGSTOP, still completes TCP handshakes
(the kernel does) but answers no MQTT packet. The client gives up after its default timeouts,
5 s to connect and 5 s for a SUBACK, and says so. Each test waits those 5 s."""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeva.agent import mqtt as m
from edgeva.control.broker import free_port, wait_port
from edgeva.control.client import EdgevaClient
from tests.brokers import _mosquitto_path


class Frozen:
    """A private mosquitto that can be frozen (SIGSTOP) and thawed (SIGCONT)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nuser {pwd.getpwuid(os.getuid()).pw_name}\n"
                        "persistence false\nallow_anonymous true\n")
        self.proc = subprocess.Popen([_mosquitto_path(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        assert wait_port("127.0.0.1", self.port, timeout=5.0), "mosquitto did not listen"
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def frozen(tmp_path: Path) -> Iterator[Frozen]:
    broker = Frozen(tmp_path)
    yield broker
    broker.close()


def test_a_subscription_the_broker_never_acknowledges_fails_after_5_s(frozen: Frozen) -> None:
    device = f"fz-{uuid.uuid4().hex[:6]}"
    with EdgevaClient(frozen.url, device, options=m.MqttOptions(protocol="3.1.1")) as dev:
        frozen.freeze()
        topic = f"edgeva/v1/{device}/default/events/+"
        with pytest.raises(m.MqttError, match=f"^no SUBACK for {re.escape(topic)} within 5s$"):
            dev.subscribe(topic)
        assert dev._filters == {} and dev._subs == []


def test_a_broker_that_never_accepts_the_connection_fails_it_after_5_s(frozen: Frozen) -> None:
    frozen.freeze()
    t0 = time.monotonic()
    # paho's own connect timeout (the same 5 s) or the client's deadline, whichever ends first
    with pytest.raises(m.MqttError, match=f"^cannot reach broker at 127.0.0.1:{frozen.port}: "):
        EdgevaClient(frozen.url, "fz-conn", options=m.MqttOptions(protocol="3.1.1"))
    assert 4.6 <= time.monotonic() - t0 < 5.7


def test_a_subscription_acknowledged_too_late_is_given_back(frozen: Frozen) -> None:
    # the SUBSCRIBE waits in the frozen broker's socket: the client gives up, and once the broker
    # runs again it must not keep a subscription nobody holds (here: a second copy of each
    # message to the overlapping wider filter)
    device = f"fz-{uuid.uuid4().hex[:6]}"
    base = f"edgeva/v1/{device}/default/events"
    with EdgevaClient(frozen.url, device) as dev:  # MQTT 5: mosquitto sends a copy per match
        assert dev.v5
        wide = dev.subscribe(f"{base}/+")
        frozen.freeze()
        with pytest.raises(m.MqttError, match="no SUBACK"):
            dev.subscribe(f"{base}/a", timeout=0.3)
        frozen.thaw()
        for topic, payload in ((f"{base}/a", b"1"), (f"{base}/b", b"end")):
            dev._client.publish(topic, payload, qos=1).wait_for_publish(5)
        got = [wide.get(5).payload]
        while got[-1] != b"end":
            got.append(wide.get(5).payload)
        assert got == [b"1", b"end"]
        assert dev._filters == {f"{base}/+": 1, dev.inbox: 1}
