"""The broker configurations edgeva ships: docs/mosquitto (what the tests run), the Ansible
role's templates and compose's docker/mosquitto.

- the tenant rules are the same four everywhere: write ``cmd/#``, read ``reply/#``, ``events/#``
  and ``metrics``; never read ``cmd/#`` (agents send parts there with the fleet token), never
  write ``reply/#`` (issue 20, hole 1);
- ``message_size_limit`` is one value everywhere, below 2 MiB, above the agent's command cap,
  and holds the agent's retained state (issue 20, hole 6);
- compose's broker, run by mosquitto as shipped, keeps a tenant off its command topics, out of
  its reply topics, and drops a 2 MiB publish.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from pydantic import BaseModel

from edgeva.agent.bridge import MAX_COMMAND_BYTES
from edgeva.cli import build_parser
from edgeva.control.testing import Watcher
from edgeva.schemas.errors import MAX_MESSAGE
from edgeva.schemas.state import AppState, DeviceState, ModuleState
from tests.brokers import Broker, _run_mosquitto

ROOT = Path(__file__).resolve().parent.parent
DOCS_ACL = ROOT / "docs/mosquitto/acl"
DOCS_CONF = ROOT / "docs/mosquitto/edgeva.conf"
ROLE = ROOT / "ansible/roles/mosquitto"
DEV = ROOT / "docker/mosquitto"
MiB = 1 << 20
RULE = re.compile(r"^(pattern|topic)\s+(?:(read|write|readwrite|deny)\s+)?(\S+)\s*$")


def _rules(lines: list[str], tenant: str) -> set[tuple[str, str]]:
    """``(access, topic)`` of the ``pattern``/``topic`` lines, the tenant's name written ``%u``."""
    out = set()
    for line in lines:
        m = RULE.match(line.strip().replace(f"/{tenant}/", "/%u/"))
        if m:
            out.add((m.group(2) or "readwrite", m.group(3)))
    return out


def _block(text: str, start: str, end: str) -> list[str]:
    """The lines after the first line equal to ``start`` up to the next one matching ``end``."""
    lines = text.splitlines()
    i = lines.index(start)
    j = next((k for k in range(i + 1, len(lines)) if re.match(end, lines[k])), len(lines))
    return lines[i + 1:j]


def test_shipped_acls_give_tenants_the_same_rules() -> None:
    """docs/mosquitto/acl's patterns, the role's per-tenant block and compose's ``acme`` are
    the same rules: the split that keeps a tenant off command topics and out of replies."""
    docs = {r for r in _rules(DOCS_ACL.read_text().splitlines(), "%u")
            if r[1].startswith("edgeva/v1/+/%u/")}
    role = _rules(_block((ROLE / "templates/acl.j2").read_text(), "{% for t in mosquitto_tenants %}",
                         r"\{% endfor"), "{{ t.name }}")
    dev = _rules(_block((DEV / "acl").read_text(), "user acme", r"^user "), "acme")
    want = {("write", "edgeva/v1/+/%u/cmd/#"), ("read", "edgeva/v1/+/%u/reply/#"),
            ("read", "edgeva/v1/+/%u/events/#"), ("read", "edgeva/v1/+/%u/metrics")}
    assert docs == want, f"docs/mosquitto/acl: {sorted(docs)}"
    assert role == want, f"acl.j2's tenant block: {sorted(role)}"
    assert dev == want, f"docker/mosquitto/acl's acme: {sorted(dev)}"


def _size_limits() -> dict[str, int]:
    """``message_size_limit`` of each shipped configuration (0: not set)."""
    def conf(path: Path) -> int:
        m = re.search(r"(?m)^message_size_limit\s+(\d+)\s*$", path.read_text())
        return int(m.group(1)) if m else 0

    role = re.search(r"(?m)^mosquitto_message_size_limit:\s*(\d+)\s*$", (ROLE / "defaults/main.yml").read_text())
    template = (ROLE / "templates/mosquitto.conf.j2").read_text()
    uses = "message_size_limit {{ mosquitto_message_size_limit | int }}" in template
    return {"docs/mosquitto/edgeva.conf": conf(DOCS_CONF), "docker/mosquitto/mosquitto.conf": conf(DEV / "mosquitto.conf"),
            "ansible role": int(role.group(1)) if role and uses else 0}


def _longest(model: type[BaseModel], **given: Any) -> BaseModel:
    """``model`` with ``given`` and every other optional text or number at its longest (a
    message: schemas.errors.MAX_MESSAGE), unvalidated: the largest JSON it can take."""
    fields: dict[str, Any] = dict(given)
    for name, f in model.model_fields.items():
        if name in fields:
            continue
        kind = str(f.annotation)
        if "str" in kind:
            fields[name] = "e" * MAX_MESSAGE
        elif "float" in kind:
            fields[name] = 1.2345678901234567e9
        elif "int" in kind:
            fields[name] = 2**31
    return model.model_construct(**fields)


def _worst_state_per_tenant(apps: int, modules: int) -> int:
    """Bytes one tenant at ``apps``/``modules`` adds to the agent's retained state, every name
    at its longest (64), every app listing every module, every module used by every app."""
    def state(tenants: int) -> int:
        app_states: dict[str, dict[str, Any]] = {}
        mods: dict[str, Any] = {}
        for t in range(tenants):
            tenant = f"{t:02d}" + "t" * 62
            names = [f"{a:02d}" + "a" * 62 for a in range(apps)]
            ids = [f"{'x' * 64}-{t:04x}{m:012x}" for m in range(modules)]
            app_states[tenant] = {n: _longest(AppState, modules=ids, status="failed") for n in names}
            for i in ids:
                mods[i] = _longest(ModuleState, type="x" * 64, apps=[f"{tenant}/{n}" for n in names],
                                   status="restarting")
        return len(DeviceState.model_construct(device="d" * 64, status="online", ts=1.7e9, data_addr="x" * 300,
                                               links={}, apps=app_states, modules=mods,
                                               version="0.0.0").model_dump_json(warnings=False))
    return state(2) - state(1)


def test_shipped_message_size_limit_holds_commands_and_states_not_2mib() -> None:
    """One value everywhere; above the agent's own command cap (1 MiB) with room for what a
    coordinator adds to a forwarded part; below 2 MiB; and at least three tenants at the
    agent's default per-tenant limits fit in its retained state, every name at its longest."""
    limits = _size_limits()
    assert len(set(limits.values())) == 1 and 0 not in limits.values(), f"message_size_limit: {limits}"
    limit = next(iter(limits.values()))
    assert MAX_COMMAND_BYTES + 256 * 1024 <= limit < 2 * MiB, limit
    args = build_parser().parse_args(["agent", "--device", "x"])
    per_tenant = _worst_state_per_tenant(args.max_apps, args.max_modules)
    print(f"retained state per tenant at --max-apps {args.max_apps} --max-modules {args.max_modules}, "
          f"longest names: {per_tenant} B; message_size_limit {limit} B holds {limit // per_tenant}")
    assert limit // per_tenant >= 3, f"{per_tenant} B per tenant: the limit holds {limit // per_tenant}"


@pytest.fixture(scope="module")
def dev_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """compose's mosquitto (docker/mosquitto: its configuration, password file and ACL) on a
    free port; users cam-01 (an agent), acme (a tenant), ops (the administrator)."""
    work = tmp_path_factory.mktemp("dev-broker")
    for name in ("passwd", "acl"):
        shutil.copy(DEV / name, work / name)
        (work / name).chmod(0o600)
    # the listener, persistence and logging are the harness's; everything else as shipped
    keep = [line.replace("/mosquitto/config/", f"{work}/") for line in (DEV / "mosquitto.conf").read_text().splitlines()
            if not re.match(r"(listener|persistence|log_dest)\b", line)]
    users = {"cam-01": "dev-cam-01", "acme": "dev-acme", "ops": "dev-ops"}
    yield from _run_mosquitto(work, "\n".join(keep) + "\n", users)


def _client(broker: Broker, user: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4().hex[:6]}",
                    protocol=mqtt.MQTTv5)
    c.username_pw_set(user, broker.users[user])
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def _pub(c: mqtt.Client, topic: str, payload: bytes) -> None:
    """QoS 1, waiting for the broker's acknowledgement (it acknowledges what its ACL drops)."""
    c.publish(topic, payload, qos=1).wait_for_publish(10)


def test_shipped_dev_broker_keeps_tenants_off_commands_and_replies_and_drops_2mib(dev_broker: Broker) -> None:
    """A tenant subscribed to its own ``cmd/#`` receives no command (the agent's, carrying a
    part's fleet token, nor its own); its publish on its reply topic reaches nobody; its 2 MiB
    command is dropped while a 1 MiB one (the agent's cap) goes through. Each refusal is
    followed by a control on the same connection that is delivered, so nothing was missed."""
    base = "edgeva/v1/cam-01/acme"
    url = dev_broker.url
    ops = Watcher(url, mqtt.MQTTv5, topic=f"{base}/#", username="ops", password=dev_broker.users["ops"])
    spy = Watcher(url, mqtt.MQTTv5, username="acme", password=dev_broker.users["acme"],
                  topics=(f"{base}/cmd/#", f"{base}/reply/#"))
    agent, acme = _client(dev_broker, "cam-01"), _client(dev_broker, "acme")
    try:
        part = b'{"request_id": "p1", "app": "a", "part_of": {"coordinator": "cam-02", "token": "fleet-secret"}}'
        _pub(agent, f"{base}/cmd/deploy", part)
        _pub(acme, f"{base}/cmd/status", b'{"request_id": "own-1"}')
        _pub(agent, f"{base}/reply/control-1", b'{"request_id": "control-1", "ok": true}')
        spy.wait(f"{base}/reply/control-1", timeout=10)  # delivered after the commands, in order
        ops.wait(f"{base}/cmd/deploy", timeout=10)  # the commands went through the broker
        ops.wait(f"{base}/cmd/status", timeout=10)
        assert not spy.get(f"{base}/cmd/deploy"), "a tenant read a part (and its fleet token) on its cmd/#"
        assert not spy.get(f"{base}/cmd/status"), "a tenant read its own command topic"

        _pub(acme, f"{base}/reply/forged-1", b'{"request_id": "forged-1", "ok": true}')
        _pub(acme, f"{base}/cmd/status", b'{"request_id": "after-forged"}')
        ops.wait(f"{base}/cmd/status", lambda m: any(p.get("request_id") == "after-forged" for p in m), timeout=10)
        assert not ops.get(f"{base}/reply/forged-1"), "a tenant wrote into its reply topic"

        big = b"x" * (2 * MiB)
        # QoS 0: mosquitto 2.0 acknowledges a dropped QoS 1 publish with reason 0x95, which paho
        # reads as a malformed PUBACK: it reconnects and sends the message again, forever
        acme.publish(f"{base}/cmd/deploy", big, qos=0).wait_for_publish(10)
        _pub(acme, f"{base}/cmd/update", b"y" * MAX_COMMAND_BYTES)  # the agent's cap: delivered
        got = ops.wait(f"{base}/cmd/update", timeout=20)
        assert len(got[0]) == MAX_COMMAND_BYTES
        assert not [m for m in ops.get(f"{base}/cmd/deploy") if isinstance(m, bytes) and len(m) == len(big)], \
            "the broker delivered a 2 MiB publish"
    finally:
        for c in (agent, acme):
            c.loop_stop()
            c.disconnect()
        ops.close()
        spy.close()
