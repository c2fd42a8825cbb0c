"""An app that cannot start when its agent restores it at boot (issue 21) comes back with no
command sent, and a split app's stream reaches its far part once it runs:

- ``missing``: the camera's file is away (a media disk not mounted yet): the deployment fails its
  checks; before, the app stayed ``failed`` for good. Now it is tried again with the modules'
  back-off, its state saying when (``next_attempt_ts``).
- ``unreadable``: the file is there but cannot be read yet: the decoder fails its setup and waits
  in back-off. Before, the stream to the peer was never relayed (the module had no ring when the
  app was restored) until the app was deployed again.
"""
from __future__ import annotations

import shutil
import signal
import uuid

import pytest

from tests.agent_harness import AgentProc, Commander, Watcher
from tests.test_multidevice import BIND

CLIP = "modules/assets/vtest.mp4"


def _app_state(ms: list) -> dict:
    return ms[-1].get("apps", {}).get("default", {}).get("far", {})


def _dec_status(ms: list) -> str | None:
    return next((m.get("status") for m in ms[-1].get("modules", {}).values() if m.get("type") == "decoder"), None)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["missing", "unreadable"])
def test_app_that_fails_at_restore_comes_back_and_its_stream_reaches_the_peer(mosquitto, tmp_path, fault):
    uid = uuid.uuid4().hex[:6]
    a, b = f"a-{uid}", f"b-{uid}"
    media = tmp_path / "media"
    media.mkdir()
    clip = media / "cam.mp4"
    shutil.copy(CLIP, clip)
    w = Watcher(mosquitto.url)
    extra_a = (*BIND, "--media-dir", str(media), "--restart-backoff-first", "0.5", "--restart-backoff-cap", "2")
    agents = {a: AgentProc(mosquitto.url, a, tmp_path / a, w, *extra_a),
              b: AgentProc(mosquitto.url, b, tmp_path / b, w, *BIND)}
    try:
        app = {"app": "far", "modules": {
            "dec": {"type": "decoder", "args": {"source": str(clip), "loop": True, "fps": 10}, "device": a,
                    "outputs": ["pub"]},
            "pub": {"type": "publish", "args": {}, "device": b, "policy": "drop_oldest"}}}
        r = Commander(w, a).send("deploy", app)
        assert r["ok"], r
        ev = f"edgeva/v1/{b}/default/events/far"
        w.wait(ev, lambda ms: len(ms) >= 5, timeout=60)
        # the box restarts while its camera's file is away or unreadable
        agents[a].kill(signal.SIGKILL)
        w.wait(f"edgeva/v1/{a}/state", lambda ms: ms[-1]["status"] == "offline", timeout=30)
        clip.rename(media / "away.mp4")
        if fault == "unreadable":
            clip.write_bytes(b"not a video yet" * 100)
        agents[a] = AgentProc(mosquitto.url, a, tmp_path / a, w, *extra_a)
        if fault == "missing":  # the app failed; the state says when it is tried again, and again
            st = w.wait(f"edgeva/v1/{a}/state", lambda ms: sum(
                1 for m in ms if _app_state([m]).get("status") == "failed" and _app_state([m]).get("next_attempt_ts")) >= 2,
                timeout=60)
            assert "no such video file" in _app_state(st)["error"], st[-1]
        else:  # the app runs; its decoder waits in back-off
            w.wait(f"edgeva/v1/{a}/state", lambda ms: _dec_status(ms) == "backoff", timeout=60)
        n = len(w.get(ev))
        (media / "away.mp4").replace(clip)  # the file is back: the next attempt starts the decoder ...
        w.wait(f"edgeva/v1/{a}/state", lambda ms: _app_state(ms).get("status") == "running"
               and _dec_status(ms) == "running", timeout=60)
        w.wait(ev, lambda ms: len(ms) >= n + 5, timeout=60)  # ... and its stream reaches b
        st = w.get(f"edgeva/v1/{a}/state")[-1]
        assert _app_state([st]).get("next_attempt_ts") is None, st
    finally:
        for ag in agents.values():
            ag.stop()
        w.close()
