"""Real MQTT brokers for tests (imported by tests/conftest.py).

Fixtures (all session-scoped: a broker starts in ~10 ms but there is no reason to restart it;
tests keep apart by device id):

- ``mosquitto``: mosquitto 2 (MQTT 5 and 3.1.1), anonymous, on 127.0.0.1 and a free port.
- ``mosquitto_auth``: mosquitto with a password file and the tenant ACL of docs/protocol.md;
  ``.users`` maps user -> password: ``agent`` (may do anything under edgeva/v1), tenants
  ``acme`` and ``globex`` (their own cmd/reply/events/metrics topics only), ``observer``
  (reads everything, writes nothing). The ACL is the one edgeva ships, docs/mosquitto/acl.
- ``amqtt_broker``: the embedded broker (``control.broker.EmbeddedBroker``, MQTT 3.1.1): the
  pytest plugin's ``edgeva_broker`` (control/pytest_plugin.py) under the name tests use.
- ``mqtt_broker``: parametrised over ``mosquitto`` and ``amqtt_broker``: a test using it runs
  once per broker.

Each yields a ``Broker`` with ``.host``, ``.port``, ``.url`` (``mqtt://127.0.0.1:PORT``),
``.kind`` and ``.v5`` (whether it speaks MQTT 5).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeva.control.broker import free_port, wait_port
from edgeva.control.processes import stop_process
from edgeva.control.testing import Broker

__all__ = ["Broker", "amqtt_broker", "mosquitto", "mosquitto_auth", "mqtt_broker"]

MOSQUITTO = "/usr/sbin/mosquitto"
INSTALL_HINT = "mosquitto is missing: run tools/install-system-packages.sh (needs root or sudo)"

# The tenant ACL edgeva ships (docs/mosquitto/acl), plus an operator who reads everything (a
# test's eyes: retained states, every tenant's replies).
SHIPPED_ACL = Path(__file__).resolve().parent.parent / "docs" / "mosquitto" / "acl"
TENANT_ACL = SHIPPED_ACL.read_text() + """
# tests only: sees everything, commands nothing
user observer
topic read edgeva/v1/#
"""


def _mosquitto_path() -> str:
    path = MOSQUITTO if os.access(MOSQUITTO, os.X_OK) else shutil.which("mosquitto")
    if not path:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return path


def _run_mosquitto(workdir: Path, extra: str = "", users: dict[str, str] | None = None) -> Iterator[Broker]:
    binary = _mosquitto_path()
    port = free_port()
    # Run as root, mosquitto drops to user `mosquitto`, which cannot read files in our private
    # temp dir: tell it to stay who we are.
    me = pwd.getpwuid(os.getuid()).pw_name
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        f"user {me}\n"
        "persistence false\n"
        f"log_dest file {workdir / 'mosquitto.log'}\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
        + extra
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        if not wait_port("127.0.0.1", port, timeout=5.0):
            proc.kill()
            _, err = proc.communicate(timeout=5)
            log = (workdir / "mosquitto.log").read_text() if (workdir / "mosquitto.log").exists() else ""
            pytest.fail(f"mosquitto did not listen on {port}: {err.decode()} {log}", pytrace=False)
        yield Broker("127.0.0.1", port, "mosquitto", True, users or {})
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """mosquitto 2, anonymous, MQTT 5 (3.1.1 clients welcome too)."""
    yield from _run_mosquitto(tmp_path_factory.mktemp("mosquitto"), "allow_anonymous true\n")


@pytest.fixture(scope="session")
def mosquitto_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """mosquitto with passwords and the tenant ACL; ``.users``: agent, acme, globex."""
    workdir = tmp_path_factory.mktemp("mosquitto-auth")
    users = {"agent": "agent-secret", "acme": "acme-secret", "globex": "globex-secret",
             "observer": "observer-secret"}
    passwd = workdir / "passwd"
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    for i, (user, password) in enumerate(users.items()):
        flags = ["-c"] if i == 0 else []
        subprocess.run([tool, "-b", *flags, str(passwd), user, password], check=True,
                       capture_output=True)
    passwd.chmod(0o600)  # mosquitto 2.0 warns about world-readable password files
    acl = workdir / "acl"
    acl.write_text(TENANT_ACL)
    acl.chmod(0o600)
    extra = f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
    yield from _run_mosquitto(workdir, extra, users)


@pytest.fixture(scope="session")
def amqtt_broker(edgeva_broker: Broker) -> Broker:
    """The embedded amqtt broker: MQTT 3.1.1 only, anonymous (the plugin's ``edgeva_broker``)."""
    return edgeva_broker


@pytest.fixture(params=["mosquitto", "amqtt_broker"])
def mqtt_broker(request: pytest.FixtureRequest) -> Broker:
    """Each real broker in turn: mosquitto (MQTT 5) and amqtt (3.1.1)."""
    return request.getfixturevalue(request.param)
