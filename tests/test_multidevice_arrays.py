"""Two real agents: a split app's link carries only the arrays the far side's modules use, and a
relay shared by two apps carries what either uses, recomputed as apps join and leave.

Device A decodes (one decoder, shared by both apps); device B runs ``publish`` (reads fields
only: no frame crosses) and, in a second app, ``annotate`` (draws the frame: it crosses). A's
device metrics say which arrays each stream carried (``links.<peer>.arrays``) and left out.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import cv2
import pytest

from tests.agent_harness import AgentProc, Commander, Watcher

pytestmark = pytest.mark.slow

DEC = {"type": "decoder", "args": {"source": "synthetic", "fps": 20, "width": 160, "height": 120}}
FRAME = 160 * 120 * 3
BIND = ("--data-bind", "tcp://127.0.0.1:0", "--fleet-token", "test-fleet")


def _link(w: Watcher, a: str, b: str) -> dict:
    return (w.get(f"edgeva/v1/{a}/metrics")[-1]["links"]).get(b, {})


def _per_message(w: Watcher, a: str, b: str, seconds: float = 1.5) -> float:
    """Bytes A sent to B per message over the next ``seconds``."""
    first = _link(w, a, b)
    time.sleep(seconds)
    last = _link(w, a, b)
    n = last["messages_sent"] - first["messages_sent"]
    assert n > 5, (first, last)
    return (last["bytes_sent"] - first["bytes_sent"]) / n


def _decoder_stream(link: dict) -> str:
    (stream,) = [s for s in link.get("arrays_left_out", {}) | link.get("arrays", {}) if s.startswith("decoder-")]
    return stream


def test_the_link_carries_the_frame_only_while_a_far_module_reads_it(mosquitto, tmp_path: Path) -> None:
    uid = uuid.uuid4().hex[:6]
    w = Watcher(mosquitto.url)
    a, b = f"a-{uid}", f"b-{uid}"
    out = tmp_path / "out"
    agents = [AgentProc(mosquitto.url, a, tmp_path / a, w, *BIND),
              AgentProc(mosquitto.url, b, tmp_path / b, w, *BIND, "--output-root", str(out))]
    try:
        meta = {"app": "meta", "modules": {"dec": {**DEC, "device": a, "outputs": ["pub"]},
                                           "pub": {"type": "publish", "args": {}, "device": b}}}
        # deploys go to B: it coordinates, A's part (the relay) is set up before B's modules run
        r = Commander(w, b).send("deploy", meta)
        assert r["ok"], r
        w.wait(f"edgeva/v1/{b}/default/events/meta", lambda ms: len(ms) >= 10, timeout=60)
        link = w.wait(f"edgeva/v1/{a}/metrics",
                      lambda ms: any(v == ["frame"] for v in ms[-1]["links"].get(b, {}).get("arrays_left_out", {}).values()),
                      timeout=30)[-1]["links"][b]
        stream = _decoder_stream(link)
        assert link["arrays"][stream] == []  # publish reads fields: no array crossed
        assert _per_message(w, a, b) < 4096  # a 57.6 KB frame per message did not go

        video = {"app": "video", "modules": {"dec": {**DEC, "device": a, "outputs": ["draw"]},
                                             "draw": {"type": "annotate", "device": b,
                                                      "args": {"output": str(out / "default" / "v.mp4")}}}}
        r = Commander(w, b).send("deploy", video)
        assert r["ok"], r
        assert r["result"]["parts"][a]["started"] == []  # the decoder and its relay are shared
        w.wait(f"edgeva/v1/{a}/metrics",
               lambda ms: ms[-1]["links"].get(b, {}).get("arrays", {}).get(stream) == ["frame"], timeout=30)
        assert _per_message(w, a, b) > FRAME  # now the frame goes, for annotate

        r = Commander(w, b).send("remove", {"app": "video"})
        assert r["ok"], r
        time.sleep(1.0)
        assert _per_message(w, a, b) < 4096  # annotate gone: the frame is left out again
        w.wait(f"edgeva/v1/{b}/default/events/meta", lambda ms: len(ms) >= 60, timeout=60)  # meta never stopped
    finally:
        for ag in agents:
            ag.stop()
        w.close()
    cap = cv2.VideoCapture(str(out / "default" / "v.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames > 5  # annotate drew the frames that crossed
