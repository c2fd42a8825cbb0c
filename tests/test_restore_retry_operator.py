"""An operator's word ends a restore retry (issue 21): an app that failed when its agent
restored it is tried again with back-off until it runs, unless an operator removes or stops it
meanwhile. Then it stays removed (gone from the state and from the saved desired state) or
stopped, even once its camera's file is back and several back-off periods have passed."""
from __future__ import annotations

import json
import shutil
import signal
import time
import uuid

import pytest

from tests.agent_harness import AgentProc, Commander, Watcher

CLIP = "modules/assets/vtest.mp4"


def _app(ms: list) -> dict | None:
    return ms[-1].get("apps", {}).get("default", {}).get("cam") if ms else None


@pytest.mark.slow
@pytest.mark.parametrize("verb", ["remove", "stop"])
def test_operator_remove_or_stop_ends_the_restore_retry(mosquitto, tmp_path, verb):
    dev = f"rr-{uuid.uuid4().hex[:6]}"
    media = tmp_path / "media"
    media.mkdir()
    clip = media / "cam.mp4"
    shutil.copy(CLIP, clip)
    w = Watcher(mosquitto.url)
    extra = ("--media-dir", str(media), "--restart-backoff-first", "0.5", "--restart-backoff-cap", "1")
    agent = AgentProc(mosquitto.url, dev, tmp_path / dev, w, *extra)
    state, ev = f"edgeva/v1/{dev}/state", f"edgeva/v1/{dev}/default/events/cam"
    try:
        app = {"app": "cam", "modules": {
            "dec": {"type": "decoder", "args": {"source": str(clip), "loop": True, "fps": 10}, "outputs": ["pub"]},
            "pub": {"type": "publish", "args": {}}}}
        assert Commander(w, dev).send("deploy", app)["ok"]
        w.wait(ev, lambda ms: len(ms) >= 3, timeout=60)
        agent.kill(signal.SIGKILL)  # the box restarts while the camera's file is away
        clip.rename(media / "away.mp4")
        agent = AgentProc(mosquitto.url, dev, tmp_path / dev, w, *extra)
        # retried: two states that say failed, each with when the next attempt is
        w.wait(state, lambda ms: sum(1 for m in ms if (_app([m]) or {}).get("status") == "failed"
                                     and (_app([m]) or {}).get("next_attempt_ts")) >= 2, timeout=60)
        r = Commander(w, dev).send(verb, {"app": "cam"})
        assert r["ok"], r
        (media / "away.mp4").replace(clip)  # the file is back: a retry would now succeed
        n = len(w.get(ev))
        time.sleep(6)  # several back-off periods (capped at 1 s) and converge rounds
        st = w.get(state)[-1]
        if verb == "remove":
            assert _app([st]) is None, st
            saved = {a for f in (tmp_path / dev / "tenants").glob("*.json")
                     for a in json.loads(f.read_text())["apps"]}
            assert "cam" not in saved, saved
        else:
            assert _app([st])["status"] == "stopped", st
            assert not _app([st]).get("next_attempt_ts"), st
        assert len(w.get(ev)) == n, "the app ran again after the operator's word"
    finally:
        agent.stop()
        w.close()
