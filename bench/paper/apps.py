"""The paper's scenarios as edgeva deployments, built from the demo's apps (same modules, same
models, same args), each ending in a ``publish`` sink that reports every frame's latency.

- ``scenario(k)``: the first ``k`` of reid, tracking (SORT), roi (the paper's 1, 2 and 3
  application scenarios; reid + SORT tracking is its dual scenario);
- ``place(dep, split)``: the same graph with a ``device`` per module;
- ``CASE_C``: the paper's split (decode and detect on the first device, the app logic on the
  second); ``EDGEEYE``: EdgeEye's (section 5.3.1: decode and app logic on the camera, the
  inference services, detector and reid, on a server).
"""

from __future__ import annotations

import copy

from edgeva.control.demo.apps import CLIP, Tuning, demo_apps

ORDER = ("reid", "tracking", "roi")
SINK = "bench_out"
FIRST, SECOND = "dev1", "dev2"
CASE_C = {"decoder": FIRST, "detector": FIRST}  # everything else on SECOND
EDGEEYE = {"detector": SECOND, "reid": SECOND}  # everything else on FIRST
# The paper's workload: every pipeline runs object detection on every frame (its section 5.2.1:
# "the repeated execution of Object Detection for every pipeline"). The demo detects every 2nd
# frame; the module's default, used here, is every frame. Everything else as the demo.
PAPER = Tuning(interval=1)
DEMO = Tuning()  # the demo's: detection on every 2nd frame (max streams, the product as shipped)


def scenario(k: int, source: str = CLIP, fps: float = 10.0, stream: str = "",
             tuning: Tuning = PAPER) -> list[dict]:
    """Deployments of the first ``k`` apps; ``stream`` names a separate camera (own decoder)."""
    by_name = {d["app"]: d for d in demo_apps(source, fps, None, tuning)}
    return [with_sink(by_name[name], stream) for name in ORDER[:k]]


def with_sink(dep: dict, stream: str = "") -> dict:
    """The app minus its own publish modules, plus a sink after each module that ends it."""
    dep = copy.deepcopy(dep)
    mods = dep["modules"]
    for name in [n for n, m in mods.items() if m["type"] in ("publish", "annotate")]:
        del mods[name]
    for m in mods.values():
        m["outputs"] = [o for o in m.get("outputs", []) if o in mods]
    for m in mods.values():
        if not m["outputs"]:
            m["outputs"] = [SINK]
    mods[SINK] = {"type": "publish", "args": {"fields": [], "hops": True}, "outputs": []}
    if stream:
        dep["app"] = f"{stream}-{dep['app']}"
        for m in mods.values():
            if m["type"] == "decoder":
                m["args"]["source_id"] = stream
    return dep


def place(dep: dict, split: dict[str, str], default: str) -> dict:
    """``dep`` with ``device`` set on every module (``split`` by module name, else ``default``)."""
    dep = copy.deepcopy(dep)
    for name, m in dep["modules"].items():
        m["device"] = split.get(name, split.get(m["type"], default))
    return dep


def terminal_sources(dep: dict) -> tuple[str, ...]:
    """Module names in graph order from the decoder to the sink (the app's main path)."""
    mods = dep["modules"]
    order, name = [], next(n for n, m in mods.items() if m["type"] == "decoder")
    while name != SINK:
        order.append(name)
        outs = mods[name]["outputs"]
        name = outs[0] if outs else SINK
    return tuple(order)
