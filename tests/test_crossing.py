"""Which arrays cross a link (``schemas/crossing.py``): those a module beyond it can use.

The paper's split (decoder, detector | tracker, roi, publish) sends no frame; a far-side
annotate or reid gets it; a type that declares no ports gets every array; a shared relay sends
what any of its apps uses."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import pytest

from edgeva.bench.paper import apps as A
from edgeva.modules.base import ModuleConfig
from edgeva.modules.registry import load_registry
from edgeva.schemas.crossing import crossing_arrays, link_arrays, union, used_arrays
from edgeva.schemas.deployment import Deployment
from edgeva.schemas.graph import ValidatedGraph, validate_graph
from edgeva.schemas.ports import Ports

REG: dict[str, Any] = dict(load_registry())
DEC = {"type": "decoder", "args": {"source": "synthetic", "fps": 5, "width": 160, "height": 120}}
ZONE = {"polygons": {"door": [[0, 0], [80, 0], [80, 60], [0, 60]]}}
REID = {"type": "reid", "args": {"gallery": [{"name": "p", "image": "asset:demo_person.png"}]}}
FAR = "far"


def chain(*specs: tuple[str, dict, str], registry: dict | None = None) -> ValidatedGraph:
    """``(name, spec, device)`` triples, each feeding the next, validated as the agent does."""
    mods = {}
    for i, (name, spec, dev) in enumerate(specs):
        mods[name] = {**spec, "device": dev, "outputs": [specs[i + 1][0]] if i + 1 < len(specs) else []}
    return validate_graph(Deployment.model_validate({"app": "p", "modules": mods}), registry or REG, None, "near")


def crossing(g: ValidatedGraph) -> dict[tuple[str, str], Any]:
    return link_arrays(g)


def test_the_papers_split_sends_no_frame_to_a_far_side_that_reads_detections() -> None:
    """decoder -> detector | tracker (forward_frame) -> roi -> publish: the tracker would pass
    the frame on, but nothing after it reads it: only names that are no arrays cross."""
    roi = A.place(A.scenario(3, tuning=A.DEMO)[2], A.CASE_C, A.SECOND)
    g = validate_graph(Deployment.model_validate(roi), REG, None, A.FIRST)
    got = link_arrays(g)
    assert got == {("detector", A.SECOND): frozenset({"detections"})}
    assert "frame" not in got[("detector", A.SECOND)]


def test_nothing_crosses_after_the_tracker() -> None:
    g = chain(("dec", DEC, "near"), ("det", {"type": "detector"}, "near"),
              ("trk", {"type": "tracker", "args": {"forward_frame": True}}, "near"),
              ("roi", {"type": "roi", "args": ZONE}, FAR), ("out", {"type": "publish"}, FAR))
    assert crossing(g) == {("trk", FAR): frozenset({"tracks", "detections"})}


@pytest.mark.parametrize("far", [{"type": "annotate", "args": {"output": "/tmp/x.mp4"}},
                                 REID])
def test_a_far_side_module_that_reads_the_frame_gets_it(far: dict) -> None:
    """The tracker passes the frame on (forward_frame) to a far-side annotate or reid."""
    g = chain(("dec", DEC, "near"), ("det", {"type": "detector"}, "near"),
              ("trk", {"type": "tracker", "args": {"forward_frame": True}}, FAR), ("end", far, FAR))
    assert "frame" in crossing(g)[("det", FAR)]


def test_a_tracker_that_does_not_pass_the_frame_stops_it() -> None:
    """Without forward_frame the tracker passes no frame on: nothing after it can use one."""
    g = chain(("dec", DEC, "near"), ("det", {"type": "detector"}, "near"),
              ("trk", {"type": "tracker"}, FAR), ("roi", {"type": "roi", "args": ZONE}, FAR))
    assert crossing(g) == {("det", FAR): frozenset({"detections"})}


def test_an_undeclared_type_beyond_the_link_gets_every_array() -> None:
    class OpaqueConfig(ModuleConfig):
        type: Literal["opaque"] = "opaque"

    reg = {**REG, "opaque": OpaqueConfig}
    g = chain(("dec", DEC, "near"), ("det", {"type": "detector"}, "near"), ("x", {"type": "opaque"}, FAR),
              registry=reg)
    assert crossing(g) == {("det", FAR): None}
    # ... also through a declared module that forwards its whole input to it
    class RelayConfig(ModuleConfig):
        type: Literal["whole"] = "whole"
        ports: ClassVar[Ports] = Ports(consumes="detections", forwards="message")

    reg["whole"] = RelayConfig
    g = chain(("dec", DEC, "near"), ("det", {"type": "detector"}, "near"), ("w", {"type": "whole"}, FAR),
              ("x", {"type": "opaque"}, FAR), registry=reg)
    assert crossing(g) == {("det", FAR): None}


def test_passes_and_forwards_carry_only_what_is_used_further() -> None:
    p = {
        "src": Ports(arrays="frame crops", forwards="nothing"),
        "a": Ports(consumes="detections", passes="frame crops"),  # passes both when present
        "b": Ports(consumes="crops"),  # uses crops only
        "c": Ports(consumes="x", forwards="message"),  # everything below it uses
        "d": Ports(consumes="tensor + y"),
        "sink": Ports(forwards="nothing"),
    }
    down = {"src": ["a"], "a": ["b"], "b": ["sink"], "sink": [], "c": ["d"], "d": []}
    order = ["src", "a", "b", "sink", "c", "d"]
    used = used_arrays(p, down, order)
    assert used["a"] == frozenset({"detections", "crops"})  # frame passed, but nobody reads it
    assert used["b"] == frozenset({"crops"})
    assert used["sink"] == frozenset()
    assert used["c"] == frozenset({"x", "tensor", "y"})
    # an undeclared module below a passing one: every name it passes
    used = used_arrays({**p, "b": None}, down, order)
    assert used["a"] == frozenset({"detections", "frame", "crops"})
    assert used["b"] is None
    devices = {"src": "n", "a": "f", "b": "f", "sink": "f", "c": "f", "d": "f"}
    assert crossing_arrays(used, down, devices, "src", "f") == used["a"]
    assert crossing_arrays(used, down, devices, "src", "elsewhere") == frozenset()


def test_a_shared_relay_sends_the_union_of_its_apps() -> None:
    """Two apps share the detector -> far relay: roi alone needs no frame; reid joins and needs
    it; the union is what goes."""
    roi = chain(("dec", DEC, "near"), ("det", {"type": "detector"}, "near"),
                ("trk", {"type": "tracker", "args": {"forward_frame": True}}, FAR),
                ("roi", {"type": "roi", "args": ZONE}, FAR))
    reid = chain(("dec", DEC, "near"), ("det", {"type": "detector"}, "near"),
                 ("trk", {"type": "tracker", "args": {"forward_frame": True}}, FAR),
                 ("reid", REID, FAR))
    assert roi.identity("det") == reid.identity("det")  # one relay, two users
    a, b = link_arrays(roi)[("det", FAR)], link_arrays(reid)[("det", FAR)]
    assert "frame" not in a and "frame" in b
    assert "frame" in union([a, b])  # type: ignore[operator]
    assert union([a, None]) is None
    assert union([]) == frozenset()
