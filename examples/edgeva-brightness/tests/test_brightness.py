"""The ``brightness`` module type, tested the way a third-party author would: only with the
fixtures of edgeva's pytest plugin (``edgeva``, ``edgeva_agent_factory``, ...), against a real
embedded broker and a real ``edgeva agent`` process that finds the type through this package's
``edgeva.modules`` entry point."""

from __future__ import annotations

import numpy as np
import pytest
from edgeva_brightness.module import Brightness, BrightnessConfig

from edgeva.modules.base import ModuleContext, ModuleError
from edgeva.schemas.message import Message

DECODER = {"type": "decoder", "args": {"source": "synthetic", "fps": 20, "width": 160, "height": 120}}


def graph(app: str, **args) -> dict:
    return {"app": app, "modules": {
        "dec": {**DECODER, "outputs": ["bright"]},
        "bright": {"type": "brightness", "args": args, "outputs": ["pub"]},
        "pub": {"type": "publish", "args": {}},
    }}


def test_brightness_of_a_frame_without_an_agent():
    mod = Brightness(BrightnessConfig(threshold=100), ModuleContext(name="b"))
    grey = np.full((120, 160, 3), 80, np.uint8)
    out = mod.process(Message(7, arrays={"frame": grey}))
    assert out.fields == {"brightness": 80.0, "dark": True} and out.frame_id == 7 and not out.arrays
    with pytest.raises(ModuleError, match="no 'frame' array"):
        mod.process(Message(8))


def test_deployed_module_reports_brightness_and_takes_a_new_threshold(edgeva):
    result = edgeva.deploy(graph("bright", threshold=10))
    assert set(result["modules"]) == {"dec", "bright", "pub"}
    events = edgeva.wait_events("bright", n=5)
    assert all(0 < e["brightness"] < 255 and e["dark"] is False for e in events)
    ids = [e["frame_id"] for e in events]
    assert ids == sorted(ids)

    # the synthetic pattern is mid-grey: with a threshold above it, every frame is dark
    edgeva.request("update", {"app": "bright", "module": "bright", "args": {"threshold": 250}})
    edgeva.wait_events("bright", n=5, pred=lambda e: e["dark"])

    am = edgeva.wait_metrics("bright", lambda am: am.frames >= 10 and am.latency_ms.p50 is not None)
    assert am.latency_ms.p50 > 0
    edgeva.remove("bright")


def test_bad_args_are_refused_with_where(edgeva):
    with pytest.raises(AssertionError, match=r"bad_args.*modules\.bright\.args\.threshold"):
        edgeva.deploy(graph("too-bright", threshold=300))


def test_two_agents_from_the_factory(edgeva_agent_factory, edgeva_watcher):
    a, b = edgeva_agent_factory(), edgeva_agent_factory()
    assert a.device != b.device and a.state_dir != b.state_dir
    for agent in (a, b):
        state = edgeva_watcher.get(f"edgeva/v1/{agent.device}/state")[-1]
        assert state["status"] == "online"
