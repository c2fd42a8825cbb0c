"""The pytest plugin (control/pytest_plugin.py) as pytest loads it: through the ``pytest11``
entry point, into every run of the venv. Its fixtures at work: examples/edgeva-brightness's
tests and tests/test_prometheus.py."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

# what tests/conftest.py (tests/brokers.py) already defines: the plugin must not shadow it
PROJECT_FIXTURES = {"mosquitto", "mosquitto_auth", "amqtt_broker", "mqtt_broker"}
EXPECTED = {"edgeva", "edgeva_broker", "edgeva_watcher", "edgeva_agent_factory", "edgeva_agent", "edgeva_client"}


def test_registered_under_pytest11():
    eps = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert eps.get("edgeva") == "edgeva.control.pytest_plugin"


def test_importing_the_plugin_is_cheap():
    """Loaded into every pytest run: it must not pull in MQTT, the broker, numpy or Prometheus."""
    heavy = ("paho", "amqtt", "numpy", "prometheus_client", "pydantic", "edgeva.agent", "edgeva.modules", "edgeva.control.testing")
    code = ("import sys; import edgeva.control.pytest_plugin; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} or m in {heavy!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_fixtures_are_prefixed_and_found_without_a_conftest(tmp_path):
    (tmp_path / "test_x.py").write_text("def test_x(): pass\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "--fixtures", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    # the section after its header line, up to the next plugin's header (pytest-xdist's follows)
    section = run.stdout.split("fixtures defined from edgeva.control.pytest_plugin", 1)[1].split("\n", 1)[1]
    section = section.split("\n---", 1)[0].split("\n===", 1)[0]
    names = {line.split()[0] for line in section.splitlines() if line and not line.startswith((" ", "-", "="))}
    assert names == EXPECTED, run.stdout[-2000:]
    assert not names & PROJECT_FIXTURES
