"""``edgeva bench fleet``: real agents against a real mosquitto, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.agent_harness import ROOT


@pytest.mark.slow
def test_small_fleet_answers_status_deploys_and_does_not_fan_out_metrics(tmp_path):
    out = tmp_path / "fleet.json"
    proc = subprocess.run(
        [sys.executable, "-m", "edgeva.cli", "bench", "fleet", "--agents", "6", "--sizes", "3,6",
         "--workers", "2", "--idle", "3", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.exists(), proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert [s["agents"] for s in res["sizes"]] == [3, 6]
    for size in res["sizes"]:
        n = size["agents"]
        assert size["status_answered"] == n, size
        dep = size["deploy"]
        assert dep["devices"] == n // 2 and dep["ok"] == dep["devices"] and dep["removed"] == dep["devices"], dep
        assert dep["first_events_ms"] is not None, dep
        # Every agent publishes device metrics; if every agent also listened to every other
        # agent's metrics the broker would send about N times what it receives.
        idle = size["broker_idle"]
        assert idle["msgs_in_per_s"] > 0, idle
        assert idle["msgs_out_per_s"] <= 1.5 * idle["msgs_in_per_s"] + 1, idle
    assert set(res["growth"]) >= {"status_ms_per_agent", "broker_out_msgs_per_s_per_agent"}
    assert "status of all 6: 6 answered" in proc.stdout
