"""``edgeva agent --password-file``: the broker password from a file (a mounted Kubernetes
Secret in docker/k3s/daemonset.yaml), against mosquitto with a password file."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from edgeva.agent.mqtt import MqttOptions
from edgeva.control.client import EdgevaClient
from edgeva.control.processes import agent_argv
from tests.agent_harness import ROOT
from tests.brokers import Broker


def _agent(broker: Broker, tmp_path: Path, device: str, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEVA_")}
    return subprocess.Popen(
        [*agent_argv(device, broker.url), "--state-dir", str(tmp_path / "state"), "--username", "agent", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_agent_reads_its_password_from_a_file(mosquitto_auth: Broker, tmp_path: Path) -> None:
    device = f"pwfile-{uuid.uuid4().hex[:6]}"
    secret = tmp_path / "agent.pw"
    secret.write_text(mosquitto_auth.users["agent"] + "\n")  # as `echo` or a Secret writes it
    proc = _agent(mosquitto_auth, tmp_path, device, "--password-file", str(secret))
    try:
        options = MqttOptions(username="agent", password=mosquitto_auth.users["agent"])
        with EdgevaClient(mosquitto_auth.url, device, options=options) as client:
            state = client.wait_state(online=True, timeout=30)
        assert state.device == device and proc.poll() is None
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out


def test_password_file_errors_say_what_and_where(mosquitto_auth: Broker, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pw"
    proc = _agent(mosquitto_auth, tmp_path, "pwfile-x", "--password-file", str(missing))
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2 and f"--password-file {missing}" in out, out

    empty = tmp_path / "empty.pw"
    empty.write_text("\n")
    proc = _agent(mosquitto_auth, tmp_path, "pwfile-x", "--password-file", str(empty))
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "first line is empty" in out, out

    proc = _agent(mosquitto_auth, tmp_path, "pwfile-x", "--password-file", str(empty), "--password", "p")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "not both" in out, out
