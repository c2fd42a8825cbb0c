"""``edgeva bench soak``, shortened: faults are injected, sampled and accounted for."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.agent_harness import ROOT


@pytest.mark.slow
def test_short_soak_kills_modules_restarts_broker_and_accounts_for_both(tmp_path):
    out, plot = tmp_path / "soak.json", tmp_path / "soak.png"
    proc = subprocess.run(
        [sys.executable, "-m", "edgeva.cli", "bench", "soak", "--minutes", "0.8", "--kill-every", "15",
         "--broker-every", "25", "--broker-down", "2", "--sample-every", "2", "--json", str(out),
         "--plot", str(plot)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.exists(), proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    s = res["summary"]
    assert len(res["kills"]) >= 2 and len({k["module"] for k in res["kills"]}) >= 2, res["kills"]
    assert all(k["module"].split("-")[0] != "decoder" for k in res["kills"])
    # every kill came back as exactly one restart, and nothing ended up failed
    assert s["restarts"] == s["kills"] and s["restarts_accounted"], s
    assert len(res["outages"]) >= 1 and s["back_online_after_outages"], res["outages"]
    last = res["samples"][-1]
    assert "agent" in last["rss_mb"] and len(last["rss_mb"]) >= 7, last["rss_mb"]  # agent + 6 modules
    assert last["shm_mb"] > 0 and last["segments"] >= 3 and last["fds"] > 0, last
    assert 0 < last["shm_touched_mb"] <= last["shm_mb"], last
    assert set(last["apps"]) == {"tracking", "roi", "reid"}, last["apps"]
    assert plot.stat().st_size > 10_000
