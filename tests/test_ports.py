"""Typed module ports (``schemas/ports.py``): each type says what it reads and writes, and the
graph check refuses wiring that feeds a module nothing it can use (``bad_wiring``, at the
``outputs`` entry that feeds it), in the agent (``validate_graph``), in ``edgeva check`` and in
a real deploy; a type that declares nothing is never refused."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, Literal

import pydantic
import pytest

from edgeva.modules.base import ModuleConfig
from edgeva.modules.registry import BUILTIN, load_registry
from edgeva.schemas.check import check_deployment
from edgeva.schemas.deployment import Deployment
from edgeva.schemas.errors import EdgevaError
from edgeva.schemas.export import module_schema
from edgeva.schemas.graph import validate_graph
from edgeva.schemas.ports import Ports, wiring_errors
from edgeva.schemas.reference import render_reference

ROOT = Path(__file__).resolve().parent.parent
REG: dict[str, Any] = dict(load_registry())
DEC = {"type": "decoder", "args": {"source": "synthetic", "fps": 5, "width": 160, "height": 120}}
ZONE = {"polygons": {"door": [[0, 0], [80, 0], [80, 60], [0, 60]]}}
ROI_NEEDS = "roi 'roi' needs tracks or detections; decoder 'dec' gives frame, height, reconnects, width"


def graph(**mods: dict) -> dict:
    """A deployment of ``mods`` (name -> spec); ``"->": [names]`` chains them by outputs."""
    return {"app": "p", "modules": mods}


def chain(*specs: tuple[str, dict]) -> dict:
    """``(name, spec)`` pairs, each feeding the next."""
    mods = {}
    for i, (name, spec) in enumerate(specs):
        mods[name] = {**spec, "outputs": [specs[i + 1][0]] if i + 1 < len(specs) else []}
    return graph(**mods)


def verdict(dep: dict, registry: dict | None = None) -> tuple[str, str | None, str] | None:
    """(code, path, message) of the agent's check, None when it accepts; ``edgeva check``'s
    first error must agree."""
    reg = REG if registry is None else registry
    try:
        validate_graph(Deployment.model_validate(dep), reg, None, "d")
        agent = None
    except EdgevaError as e:
        agent = (e.code, e.path, e.message)
    report = check_deployment(dep, reg)
    first = report.errors[0] if report.errors else None
    assert (first and (first.code, first.path, first.message)) == agent, (report.to_dict(), agent)
    return agent


def test_decoder_to_roi_is_refused_at_the_wiring_with_what_roi_needs() -> None:
    dep = chain(("dec", DEC), ("roi", {"type": "roi", "args": ZONE}), ("pub", {"type": "publish"}))
    assert verdict(dep) == ("bad_wiring", "modules.dec.outputs[0]", ROI_NEEDS)


def test_edgeva_check_refuses_decoder_to_roi(tmp_path: Path) -> None:
    """The issue's case, through the CLI, on the committed case file."""
    case = ROOT / "tests" / "data" / "deployments" / "bad_wiring.json"
    out = subprocess.run([str(Path(sys.executable).parent / "edgeva"), "check", str(case)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"error bad_wiring at modules.dec.outputs[0]: {ROI_NEEDS}" in out.stdout, out.stdout
    fixed = json.loads(case.read_text())
    fixed["modules"]["dec"]["outputs"] = ["det"]
    fixed["modules"]["det"] = {"type": "detector", "outputs": ["trk"]}
    fixed["modules"]["trk"] = {"type": "tracker", "outputs": ["roi"]}
    (tmp_path / "fixed.json").write_text(json.dumps(fixed))
    ok = subprocess.run([str(Path(sys.executable).parent / "edgeva"), "check", str(tmp_path / "fixed.json")],
                        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_the_paper_pipeline_and_pass_through_are_accepted() -> None:
    det, trk, roi = {"type": "detector"}, {"type": "tracker"}, {"type": "roi", "args": ZONE}
    pub = {"type": "publish"}
    assert verdict(chain(("dec", DEC), ("det", det), ("trk", trk), ("roi", roi), ("pub", pub))) is None
    assert verdict(chain(("dec", DEC), ("det", det), ("pub", pub))) is None
    assert verdict(chain(("dec", DEC), ("det", det), ("roi", roi))) is None  # counts detections
    # fields go on through msg.derive: roi after reid still gets the detector's detections
    reid = {"type": "reid", "args": {"backend": "hsv", "gallery": [{"name": "p", "image": "asset:demo_person.png"}]}}
    assert verdict(chain(("dec", DEC), ("det", det), ("reid", reid), ("roi", roi))) is None
    # annotate draws on the frame a tracker passes on with forward_frame
    ann = {"type": "annotate", "args": {"output": "mjpeg://127.0.0.1:0"}}
    fwd = {"type": "tracker", "args": {"forward_frame": True}}
    assert verdict(chain(("dec", DEC), ("det", det), ("trk", fwd), ("ann", ann))) is None
    assert verdict(chain(("dec", DEC), ("det", det), ("trk", fwd), ("reid", reid))) is None
    # two inputs: what reaches a module is the union (frame from one, detections from the other)
    two = graph(dec={**DEC, "outputs": ["det", "ann"]}, det={"type": "detector", "args": {"forward_frame": False},
                "outputs": ["ann"]}, ann=ann)
    assert verdict(two) is None


def test_args_decide_what_goes_on() -> None:
    """Arrays a module passes on only with an arg (``when``), and sinks that pass on nothing."""
    det, ann = {"type": "detector"}, {"type": "annotate", "args": {"output": "mjpeg://127.0.0.1:0"}}
    got = verdict(chain(("dec", DEC), ("det", det), ("trk", {"type": "tracker"}), ("ann", ann)))
    assert got == ("bad_wiring", "modules.trk.outputs[0]", "annotate 'ann' needs frame; tracker 'trk' gives "
                   "detections, height, labels, predicted, reconnects, tracks, width")
    # crops are the detector's only with crops: true, and a tracker drops them (arrays do not
    # survive msg.derive); reid then has neither crops nor a frame
    reid = {"type": "reid", "args": {"backend": "hsv", "gallery": [{"name": "p", "image": "asset:demo_person.png"}]}}
    crops = {"type": "detector", "args": {"crops": True, "forward_frame": False}}
    assert verdict(chain(("dec", DEC), ("det", crops), ("reid", reid))) is None
    no_crops = {"type": "detector", "args": {"forward_frame": False}}
    assert verdict(chain(("dec", DEC), ("det", no_crops), ("reid", reid)))[:2] == ("bad_wiring", "modules.det.outputs[0]")
    got = verdict(chain(("dec", DEC), ("det", crops), ("trk", {"type": "tracker"}), ("reid", reid)))
    assert got[:2] == ("bad_wiring", "modules.trk.outputs[0]")
    assert got[2].startswith("reid 'reid' needs crops + crop_index + detections or frame + tracks or frame + detections;")
    # a tracker passes on the frame it gets (forward_frame), not one it does not get
    fwd = {"type": "tracker", "args": {"forward_frame": True}}
    got = verdict(chain(("dec", DEC), ("det", no_crops), ("trk", fwd), ("ann", ann)))
    assert got[:2] == ("bad_wiring", "modules.trk.outputs[0]") and got[2].startswith("annotate 'ann' needs frame; ")
    # a sink gives no messages at all, whatever reads after it
    got = verdict(chain(("dec", DEC), ("ann", ann), ("pub", {"type": "publish"})))
    assert got == ("bad_wiring", "modules.ann.outputs[0]", "publish 'pub' needs any message; annotate 'ann' "
                   "sends no messages on")
    assert verdict(chain(("dec", DEC), ("pub", {"type": "publish"}))) is None


class MysteryConfig(ModuleConfig):
    """A third-party type written before ports: declares none."""

    type: Literal["mystery"] = "mystery"


class HalfwayConfig(ModuleConfig):
    """A type whose needs depend on an arg: tracks only with ``by_track``."""

    type: Literal["halfway"] = "halfway"
    ports: ClassVar[Ports] = Ports(consumes="frame", produces="halfway")
    by_track: bool = False

    def active_ports(self) -> Ports:
        return Ports(consumes="frame + tracks" if self.by_track else "frame", produces="halfway")


def test_an_undeclared_type_is_never_refused_and_satisfies_what_follows() -> None:
    reg = {**REG, "mystery": MysteryConfig}
    roi, mystery = {"type": "roi", "args": ZONE}, {"type": "mystery"}
    assert verdict(chain(("dec", DEC), ("m", mystery), ("roi", roi)), reg) is None
    assert verdict(chain(("dec", DEC), ("det", {"type": "detector"}), ("trk", {"type": "tracker"}),
                         ("m", mystery)), reg) is None
    # after a tracker (which passes only fields, and the frame when asked): still accepted
    assert verdict(chain(("dec", DEC), ("m", mystery), ("trk", {"type": "tracker"}), ("roi", roi)), reg) is None
    # an undeclared type may give a frame: a tracker asked to forward it then may too
    fwd, ann = {"type": "tracker", "args": {"forward_frame": True}}, {"type": "annotate", "args": {"output": "x.avi"}}
    assert verdict(chain(("dec", DEC), ("m", mystery), ("trk", fwd), ("ann", ann)), reg) is None
    # a config class that is not even a ModuleConfig (a registry may map to any model)
    class Bare(pydantic.BaseModel):
        type: Literal["bare"] = "bare"

    assert verdict(chain(("dec", DEC), ("b", {"type": "bare"}), ("roi", roi)), {**REG, "bare": Bare}) is None


def test_a_type_whose_needs_depend_on_its_args() -> None:
    reg = {**REG, "halfway": HalfwayConfig}
    assert verdict(chain(("dec", DEC), ("h", {"type": "halfway"})), reg) is None
    got = verdict(chain(("dec", DEC), ("h", {"type": "halfway", "args": {"by_track": True}})), reg)
    assert got == ("bad_wiring", "modules.dec.outputs[0]", "halfway 'h' needs frame + tracks; decoder 'dec' "
                   "gives frame, height, reconnects, width")


def test_edgeva_check_lists_every_bad_edge_once() -> None:
    """Every module fed nothing usable, each at its own edge; one bad edge is not repeated at
    every module below it; modules whose args are wrong take part as unknown."""
    roi = {"type": "roi", "args": ZONE}
    dep = graph(dec={**DEC, "outputs": ["trk", "roi"]}, trk={"type": "tracker", "outputs": ["r2"]},
                roi={**roi, "outputs": []}, r2={**roi, "outputs": []})
    report = check_deployment(dep, REG)
    assert [(e.code, e.path) for e in report.errors] == [
        ("bad_wiring", "modules.dec.outputs[0]"), ("bad_wiring", "modules.dec.outputs[1]")]
    dep["modules"]["trk"]["args"] = {"nope": 1}  # unknown ports: what follows it is fine
    report = check_deployment(dep, REG)
    assert [(e.code, e.path) for e in report.errors] == [
        ("bad_args", "modules.trk.args.nope"), ("bad_wiring", "modules.dec.outputs[1]")]


def test_multi_input_message_names_the_inputs() -> None:
    ports = {"a": Ports(produces="x"), "b": Ports(produces="y"), "c": Ports(consumes="z")}
    mods = {"a": SimpleNamespace(type="ta", outputs=["c"]), "b": SimpleNamespace(type="tb", outputs=["q", "c"]),
            "c": SimpleNamespace(type="tc", outputs=[])}
    ups = {"a": [], "b": [], "c": ["b", "a"]}
    errs = wiring_errors(mods, ports, ups, ["a", "b", "c"])
    assert [(e.path, e.message) for e in errs] == [("modules.b.outputs[1]", "tc 'c' needs z; its inputs give x, y")]
    assert wiring_errors(mods, {**ports, "a": Ports(produces="z")}, ups, ["a", "b", "c"]) == []
    sinks = {**ports, "a": Ports(forwards="nothing"), "b": Ports(forwards="nothing")}
    errs = wiring_errors(mods, sinks, ups, ["a", "b", "c"])
    assert [e.message for e in errs] == ["tc 'c' needs z; none of its inputs sends messages on"]
    # one of two inputs sends: named alone
    errs = wiring_errors(mods, {**sinks, "b": Ports(produces="y")}, ups, ["a", "b", "c"])
    assert [e.message for e in errs] == ["tc 'c' needs z; tb 'b' gives y"]


def test_what_goes_on_by_forwards_and_passes() -> None:
    """A module that returns its input passes its arrays on; one that passes an array on only
    passes what arrives; a module that emits messages with nothing in them."""
    def run(*chain_ports: Ports) -> list[str]:
        names = [f"m{i}" for i in range(len(chain_ports))]
        mods = {n: SimpleNamespace(type=f"t{i}", outputs=names[i + 1:i + 2]) for i, n in enumerate(names)}
        ups = {n: names[i - 1:i] for i, n in enumerate(names)}
        return [e.message for e in wiring_errors(mods, dict(zip(names, chain_ports, strict=True)), ups, names)]

    source = Ports(arrays="frame", forwards="nothing")
    needs_frame = Ports(consumes="frame")
    assert run(source, needs_frame) == []  # exactly what it needs
    assert run(source, Ports(consumes="frame", forwards="message"), needs_frame) == []
    assert run(source, Ports(consumes="frame"), needs_frame) == ["t2 'm2' needs frame; t1 'm1' gives no fields or arrays"]
    relay = Ports(forwards="nothing", passes="frame")  # passes the frame on, adds nothing
    assert run(source, relay, needs_frame) == []
    assert run(Ports(produces="x", forwards="nothing"), relay, needs_frame) == [
        "t2 'm2' needs frame; t1 'm1' gives no fields or arrays"]
    assert run(Ports(produces="x", forwards="nothing"), Ports(forwards="nothing"), Ports()) == [
        "t2 'm2' needs any message; t1 'm1' sends no messages on"]


def test_declarations_are_checked_where_they_are_written() -> None:
    assert Ports(consumes="tracks | detections").consumes == (("tracks",), ("detections",))
    assert Ports(consumes="crops + detections | frame").consumes == (("crops", "detections"), ("frame",))
    assert Ports(produces="a, b c").produces == ("a", "b", "c")
    shared = Ports(consumes="frame")  # one instance serves every config of its type: frozen
    with pytest.raises(pydantic.ValidationError):
        shared.consumes = ()  # type: ignore[misc]
    for bad in ({"consumes": "tracks |"}, {"consumes": "a + + b"}, {"produces": "x", "when": {"y": "arg"}},
                {"forwards": "some"}, {"passes": "fr ame!"}, {"extra": 1}):
        with pytest.raises(pydantic.ValidationError):
            Ports(**bad)
    with pytest.raises(TypeError, match="'when' names args it does not have: \\['no_such_arg'\\]"):
        class Typo(ModuleConfig):
            type: Literal["typo"] = "typo"
            ports: ClassVar[Ports] = Ports(arrays="frame", when={"frame": "no_such_arg"})


def test_schema_and_docs_carry_the_ports() -> None:
    roi = module_schema("roi", REG["roi"].config_class)
    assert roi["edgeva_ports"] == {"consumes": [["tracks"], ["detections"]], "produces": ["roi"], "arrays": [],
                                   "passes": [], "forwards": "fields", "when": {}}
    committed = json.loads((ROOT / "schemas" / "json" / "modules" / "tracker.json").read_text())
    assert committed["edgeva_ports"]["consumes"] == [["detections"]]
    assert committed["edgeva_ports"]["when"] == {"frame": "forward_frame"}
    assert "edgeva_ports" not in module_schema("mystery", MysteryConfig)
    docs = (ROOT / "docs" / "modules.md").read_text()
    assert "| [`roi`](#roi) | `RoiConfig` | 5 | tracks or detections | roi |" in docs
    assert "**Ports**: consumes `tracks` or `detections` · produces `roi` · passes on every field of its input." in docs
    assert "**Ports**: consumes nothing (a source) · produces `width`, `height`, `reconnects`, `frame` (array)" in docs
    text = render_reference({"mystery": MysteryConfig})
    assert "| [`mystery`](#mystery) | `MysteryConfig` | 0 | ? | ? |" in text
    assert "**Ports**: not declared (any wiring is accepted)." in text
    # every built-in type declares its ports
    assert all(isinstance(REG[t].config_class.ports, Ports) for t in BUILTIN)


def test_the_example_package_declares_its_ports() -> None:
    pkg = ROOT / "examples" / "edgeva-brightness"
    sys.path.insert(0, str(pkg))
    try:
        from edgeva_brightness.module import BrightnessConfig
    finally:
        sys.path.remove(str(pkg))
    reg = {**REG, "brightness": BrightnessConfig}
    bright = {"type": "brightness"}
    assert verdict(chain(("dec", DEC), ("b", bright), ("pub", {"type": "publish"})), reg) is None
    got = verdict(chain(("dec", DEC), ("det", {"type": "detector", "args": {"forward_frame": False}}), ("b", bright)), reg)
    assert got[:2] == ("bad_wiring", "modules.det.outputs[0]") and got[2].startswith("brightness 'b' needs frame;")


@pytest.mark.slow
def test_a_real_agent_refuses_the_deploy_and_starts_nothing(mosquitto, tmp_path: Path) -> None:
    from tests.agent_harness import AgentProc, Commander, Watcher

    device = f"ports-{uuid.uuid4().hex[:6]}"
    w = Watcher(mosquitto.url)
    agent = AgentProc(mosquitto.url, device, tmp_path / "agent", w)
    try:
        cmd = Commander(w, device)
        dep = json.loads((ROOT / "tests" / "data" / "deployments" / "bad_wiring.json").read_text())
        r = cmd.send("deploy", dep)
        assert r["ok"] is False and r["error"] == {"code": "bad_wiring", "path": "modules.dec.outputs[0]",
                                                    "message": ROI_NEEDS}, r
        assert cmd.send("status", {})["result"]["apps"] == {}
    finally:
        agent.stop()
        w.close()
