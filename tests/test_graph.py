"""Deployment graph checks (each error: its code and path) and module identity for sharing."""

from __future__ import annotations

from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from edgeva.modules.base import ModuleConfig
from edgeva.schemas.deployment import Deployment, from_listing1, parse_deployment
from edgeva.schemas.errors import EdgevaError, format_path
from edgeva.schemas.graph import validate_graph


class DecoderConfig(ModuleConfig):
    type: Literal["decoder"] = "decoder"
    source: str
    fps: float = Field(10, gt=0)


class DetectorConfig(ModuleConfig):
    type: Literal["detector"] = "detector"
    threshold: float = Field(0.4, ge=0, le=1)


class TrackerConfig(ModuleConfig):
    type: Literal["tracker"] = "tracker"
    algorithm: Literal["sort", "centroid"] = "sort"


class FakeTrackerModule:  # registries may hold Module classes: config_class is used
    config_class = TrackerConfig


REGISTRY = {"decoder": DecoderConfig, "detector": DetectorConfig, "tracker": FakeTrackerModule}


def dep(modules: dict, app: str = "a") -> Deployment:
    return Deployment.model_validate({"app": app, "modules": modules})


def check(modules: dict, known=None, local="cam-01", app="a"):
    return validate_graph(dep(modules, app), REGISTRY, known, local)


def fails(modules: dict, known=None) -> tuple[str, str | None, str]:
    with pytest.raises(EdgevaError) as info:
        check(modules, known)
    return info.value.code, info.value.path, info.value.message


PIPE = {
    "dec": {"type": "decoder", "args": {"source": "rtsp://cam1"}, "outputs": ["det"]},
    "det": {"type": "detector", "args": {"threshold": 0.5}, "outputs": ["trk"]},
    "trk": {"type": "tracker", "args": {}},
}


def test_valid_graph():
    g = check(PIPE)
    assert g.order == ["dec", "det", "trk"]
    assert g.upstream == {"dec": [], "det": ["dec"], "trk": ["det"]}
    assert g.downstream["dec"] == ["det"]
    assert g.configs["dec"] == DecoderConfig(source="rtsp://cam1")
    assert g.devices == {"dec": "cam-01", "det": "cam-01", "trk": "cam-01"}
    assert g.identity("dec").startswith("decoder-")


def test_order_is_topological_whatever_the_declaration_order():
    g = check({k: PIPE[k] for k in ("trk", "det", "dec")})
    assert g.order == ["dec", "det", "trk"]


def test_unknown_type():
    code, path, msg = fails({**PIPE, "x": {"type": "yolo"}})
    assert (code, path) == ("unknown_type", "modules.x.type")
    assert "decoder, detector, tracker" in msg


@pytest.mark.parametrize(
    ("args", "path", "words"),
    [
        ({"source": "s", "thresh": 1}, "modules.dec.args.thresh", "known args: fps, source"),
        ({}, "modules.dec.args.source", "required"),
        ({"source": "s", "fps": "fast"}, "modules.dec.args.fps", "number"),
        ({"source": "s", "fps": 0}, "modules.dec.args.fps", "greater than 0"),
        ({"source": "s", "type": "decoder"}, "modules.dec.args.type", "beside"),
    ],
)
def test_bad_args(args, path, words):
    code, got, msg = fails({**PIPE, "dec": {**PIPE["dec"], "args": args}})
    assert (code, got) == ("bad_args", path)
    assert words in msg


class FlatArgsConfig(ModuleConfig):
    type: Literal["flat"] = "flat"

    @classmethod
    def known_args(cls) -> list[str]:  # args it takes beyond its fields (a detector's backend args)
        return ["gain", "url"]


def test_an_unknown_arg_hint_lists_the_args_a_config_says_it_takes():
    dep = Deployment.model_validate({"app": "a", "modules": {"f": {"type": "flat", "args": {"gian": 2}}}})
    with pytest.raises(EdgevaError) as info:
        validate_graph(dep, {"flat": FlatArgsConfig}, None, "local")
    assert (info.value.path, info.value.message) == ("modules.f.args.gian", "unknown field (known args: gain, url)")


def test_registry_name_differs_from_config_literal():
    with pytest.raises(EdgevaError) as info:
        validate_graph(dep({"t": {"type": "trk2"}}), {"trk2": TrackerConfig}, None, "c")
    assert (info.value.code, info.value.path) == ("bad_args", "modules.t.type")


def test_unknown_and_duplicate_output():
    code, path, _ = fails({**PIPE, "trk": {"type": "tracker", "outputs": ["det", "publish"]}})
    assert (code, path) == ("unknown_output", "modules.trk.outputs[1]")
    code, path, _ = fails({**PIPE, "det": {**PIPE["det"], "outputs": ["trk", "trk"]}})
    assert (code, path) == ("duplicate_name", "modules.det.outputs[1]")


def test_cycle_names_the_loop():
    code, path, msg = fails({**PIPE, "trk": {"type": "tracker", "outputs": ["det"]}})
    assert (code, path) == ("cycle", "modules.trk.outputs[0]")
    assert "det -> trk -> det" in msg
    code, path, msg = fails({"t": {"type": "tracker", "outputs": ["t"]}})
    assert (code, path, msg) == ("cycle", "modules.t.outputs[0]", "cycle: t -> t")


def test_unknown_device():
    mods = {**PIPE, "trk": {"type": "tracker", "device": "cam-09"}}
    code, path, msg = fails(mods, known={"cam-02"})
    assert (code, path) == ("unknown_device", "modules.trk.device")
    assert "cam-01, cam-02" in msg
    assert check(mods, known=None).devices["trk"] == "cam-09"  # None: placement not checked
    assert check(mods, known={"cam-09"}).devices["trk"] == "cam-09"
    assert check({"d": {**PIPE["dec"], "outputs": [], "device": "cam-01"}}, known=set())


def test_errors_come_in_the_documented_order():
    mods = {
        "dec": {"type": "decoder", "args": {}, "outputs": ["nowhere"], "device": "mars"},
        "x": {"type": "nope", "outputs": ["x"]},
    }
    assert fails(mods, known=set())[0] == "unknown_type"
    mods["x"]["type"] = "tracker"
    assert fails(mods, known=set())[0] == "bad_args"
    mods["dec"]["args"] = {"source": "s"}
    assert fails(mods, known=set())[0] == "unknown_output"
    mods["dec"]["outputs"] = ["x"]
    assert fails(mods, known=set())[0] == "cycle"
    mods["x"]["outputs"] = []
    assert fails(mods, known=set())[0] == "unknown_device"


# ---- identity ----------------------------------------------------------------------------


def test_listing1_and_native_give_equal_deployments_and_identities():
    listing = {
        "Decoder_1": {"decoder_args": {"source": "rtsp://cam1"}, "runtime_args": {"outputs": ["D"]}},
        "D": {"detector_args": {"threshold": 0.5}, "runtime_args": {}},
    }
    native = parse_deployment({"app": "a", "modules": {
        "Decoder_1": {"type": "decoder", "args": {"source": "rtsp://cam1"}, "outputs": ["D"]},
        "D": {"type": "detector", "args": {"threshold": 0.5}},
    }})
    assert from_listing1(listing, "a") == native
    g1 = validate_graph(from_listing1(listing, "a"), REGISTRY, None, "c")
    g2 = validate_graph(native, REGISTRY, None, "c")
    assert g1.identities() == g2.identities()


def test_identity_shared_across_apps_with_other_names():
    other = {
        "Decoder_1": {"type": "decoder", "args": {"source": "rtsp://cam1", "fps": 10.0},
                      "outputs": ["Detector_1"]},
        "Detector_1": {"type": "detector", "args": {"threshold": 0.5}, "outputs": ["count"]},
        "count": {"type": "tracker", "args": {"algorithm": "centroid"}},
    }
    g1, g2 = check(PIPE, app="tracking"), check(other, app="counting")
    assert g1.identity("dec") == g2.identity("Decoder_1")  # fps default 10 == explicit 10.0
    assert g1.identity("det") == g2.identity("Detector_1")
    assert g1.identity("trk") != g2.identity("count")  # other args


def test_identity_differs_with_args_upstream_or_device():
    base = check(PIPE)
    other_src = check({**PIPE, "dec": {**PIPE["dec"], "args": {"source": "rtsp://cam2"}}})
    assert other_src.identity("dec") != base.identity("dec")
    assert other_src.identity("det") != base.identity("det")  # same args, other upstream
    assert other_src.identity("trk") != base.identity("trk")
    moved = check({**PIPE, "det": {**PIPE["det"], "device": "cam-02"}})
    assert moved.identity("dec") == base.identity("dec")
    assert moved.identity("det") != base.identity("det")
    assert check(PIPE, local="cam-02").identity("dec") != base.identity("dec")
    # no upstream vs one upstream
    alone = check({"det": PIPE["det"] | {"outputs": []}})
    assert alone.identity("det") != base.identity("det")


def test_identity_ignores_upstream_order():
    two = {
        "a": {"type": "decoder", "args": {"source": "1"}, "outputs": ["t"]},
        "b": {"type": "decoder", "args": {"source": "2"}, "outputs": ["t"]},
        "t": {"type": "tracker"},
    }
    swapped = {"b": two["b"], "a": two["a"], "t": two["t"]}
    assert check(two).identity("t") == check(swapped).identity("t")


# ---- random graphs -----------------------------------------------------------------------


POOL = ["dec", "Decoder_1", "det", "trk", "roi.1", "reid", "pub-2", "x", "Y_9"]


@st.composite
def dags(draw):
    n = draw(st.integers(1, 8))
    names = draw(st.permutations(POOL))[:n]
    edges = {(i, j) for i in range(n) for j in range(i + 1, n) if draw(st.booleans())}
    decl = draw(st.permutations(range(n)))  # declaration order unrelated to the edges
    return names, edges, decl


def build(names, edges, decl) -> dict:
    return {
        names[i]: {"type": "tracker",
                   "outputs": [names[j] for j in range(len(names)) if (i, j) in edges]}
        for i in decl
    }


@settings(max_examples=60, deadline=None)
@given(dags())
def test_random_dags_validate(case):
    names, edges, decl = case
    g = check(build(names, edges, decl))
    pos = {name: k for k, name in enumerate(g.order)}
    assert sorted(g.order) == sorted(names)
    assert all(pos[names[i]] < pos[names[j]] for i, j in edges)
    # The rule: same type, config, device and (identities of) upstreams means the same
    # identity. Every module here is a default tracker on one device, so two modules share an
    # identity exactly when their upstream sets are equal up to identity: a canonical form.
    ups = {names[j]: {names[i] for i, k in edges if k == j} for j in range(len(names))}
    canon: dict[str, frozenset] = {}
    for name in g.order:
        canon[name] = frozenset(canon[u] for u in ups[name])
    ids = g.identities()
    assert set(ids) == set(names) and all(v.startswith("tracker-") for v in ids.values())
    for a in names:
        assert ids[a] == g.identity(a)
        for b in names:
            assert (ids[a] == ids[b]) == (canon[a] == canon[b]), (a, b, ups)


@settings(max_examples=60, deadline=None)
@given(dags(), st.data())
def test_random_back_edge_gives_cycle(case, data):
    names, edges, decl = case
    # a back edge j -> i closes a loop along a forward path i -> ... -> j; i == j is a self-loop
    i = data.draw(st.integers(0, len(names) - 1))
    j = data.draw(st.integers(i, len(names) - 1))
    mods = build(names, edges | ({(i, j)} if i < j else set()), decl)
    mods[names[j]]["outputs"].append(names[i])
    code, path, msg = fails(mods)
    assert code == "cycle"
    loop = msg.removeprefix("cycle: ").split(" -> ")
    assert loop[0] == loop[-1] and len(loop) >= 2
    for a, b in zip(loop, loop[1:], strict=False):
        assert b in mods[a]["outputs"]
    edges_at = {format_path(("modules", a, "outputs", k)): (a, b)
                for a, spec in mods.items() for k, b in enumerate(spec["outputs"])}
    assert set(edges_at[path]) <= set(loop)  # the error points at an edge of the loop


def test_a_module_that_takes_input_and_gets_none_is_refused() -> None:
    """A non-source module nobody feeds would wait forever (or crash at every restart, now that
    restarts never give up): refused with its path, by the agent's check and `edgeva check`."""
    from edgeva.modules.registry import load_registry
    from edgeva.schemas.check import check_deployment

    reg = load_registry()
    lone = Deployment.model_validate({"app": "x", "modules": {
        "dec": {"type": "decoder", "args": {"source": "synthetic"}, "outputs": ["pub"]},
        "pub": {"type": "publish", "args": {}},
        "trk": {"type": "tracker", "args": {}}}})
    with pytest.raises(EdgevaError) as e:
        validate_graph(lone, reg, None, "d")
    assert (e.value.code, e.value.path) == ("bad_request", "modules.trk") and "takes input" in e.value.message
    report = check_deployment(lone.model_dump(exclude_none=True), registry=reg)
    assert [(x.code, x.path) for x in report.errors] == [("bad_request", "modules.trk")]
    # fed through a detector (publish forwards nothing: pub -> trk would feed it no detections)
    fed = Deployment.model_validate({"app": "x", "modules": {
        **lone.model_dump(exclude_none=True)["modules"],
        "dec": {"type": "decoder", "args": {"source": "synthetic"}, "outputs": ["pub", "det"]},
        "det": {"type": "detector", "args": {}, "outputs": ["trk"]}}})
    assert validate_graph(fed, reg, None, "d").order[-1] == "trk"
