"""Detector backends own their configs (``modules/detectors/``): a discriminated union in the
detector's config, the flat form deployments wrote before still accepted, another backend's
arg refused at its path naming its backend, one identity for equal configs in either form, the
union in the JSON Schema and the module reference, no import of the detector by a backend, and
a third-party backend (and embedder) registered from an entry point."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest

import edgeva.modules.detector as detector_module
from edgeva.modules.detector import DetectorConfig
from edgeva.modules.registry import load_registry
from edgeva.schemas.check import check_deployment
from edgeva.schemas.deployment import Deployment
from edgeva.schemas.errors import EdgevaError
from edgeva.schemas.export import module_schema
from edgeva.schemas.graph import check_args, validate_graph
from edgeva.schemas.reference import render_reference

ROOT = Path(__file__).resolve().parents[1]
TRITON = {"url": "gpu-box:8001", "protocol": "grpc", "model_name": "yolo", "timeout_s": 30.0}


def refused(args: dict) -> EdgevaError:
    with pytest.raises(EdgevaError) as e:
        check_args("detector", args, DetectorConfig, ("modules", "det"))
    assert e.value.code == "bad_args"
    return e.value


# -- the flat form and the nested one ----------------------------------------------------------

@pytest.mark.parametrize("args, path, says", [
    # an arg of another backend, flat: at its path, naming the backend it belongs to
    ({"backend": "opencv-hog", "model": "x.onnx"}, "model", "model is only for backend onnx"),
    ({"url": "gpu-box:8001"}, "url", "url is only for backend triton (this detector's backend is onnx)"),
    ({"backend": "triton", "model_name": "m", "hog_scale": 0.5}, "hog_scale", "only for backend opencv-hog"),
    ({"backend": "onnx", "shared_memory": "system"}, "shared_memory", "only for backend triton"),
    # flat beside a nested backend: one place per arg
    ({"backend": {"type": "onnx"}, "model": "x.onnx"}, "model", "goes inside backend"),
    # nested: unknown to the chosen backend, at its path inside backend (no tag in the path)
    ({"backend": {"type": "opencv-hog", "model": "x.onnx"}}, "backend.model", "unknown field"),
    # values and required args at the path the deployment wrote them
    ({"backend": "triton", "model_name": "m", "timeout_s": 1000}, "timeout_s", "less than or equal to 300"),
    ({"backend": {"type": "triton", "model_name": "m", "timeout_s": 1000}}, "backend.timeout_s", "300"),
    ({"backend": "triton"}, "model_name", "field required"),
    ({"backend": {"type": "triton"}}, "backend.model_name", "field required"),
    ({"backend": "tensorflow"}, "backend", "unknown backend (installed: onnx, opencv-hog, triton), got 'tensorflow'"),
    ({"backend": {"model": "x.onnx"}}, "backend", "backend needs its type"),
    ({"backend": 3}, "backend", "a backend's name"),
    ({"treshold": 0.3}, "treshold", "unknown field"),
])
def test_an_arg_is_refused_at_the_path_it_was_written(args: dict, path: str, says: str) -> None:
    e = refused(args)
    assert e.path == f"modules.det.args.{path}" and says in e.message, e


def test_edgeva_check_lists_a_wrong_backend_arg_with_the_other_errors() -> None:
    dep = {"app": "a", "modules": {"det": {"type": "detector", "args": {
        "backend": "opencv-hog", "model": "x.onnx", "score_threshold": 2, "hog_scale": 9}}}}
    errs = check_deployment(dep, load_registry()).errors
    assert sorted((e.path, e.message.split(",")[0]) for e in errs if ".args." in (e.path or "")) == [
        ("modules.det.args.hog_scale", "Input should be less than or equal to 4"),
        ("modules.det.args.model", "model is only for backend onnx (this detector's backend is opencv-hog)"),
        ("modules.det.args.score_threshold", "Input should be less than or equal to 1"),
    ]


def test_an_unknown_arg_hint_lists_the_backend_args_too() -> None:
    hint = "(known args: backend, binary, channel_order, class_names, class_offset, classes, crop_classes, " \
        "crop_size, crops, cuda_device, detr_activation, forward_frame, graph_optimization, headers, hog_scale, " \
        "input_mean, input_name, input_scale, input_size, input_std, interval, max_batch, max_crops, " \
        "max_frame_size, model, model_name, model_version, nms_contain, nms_iou, output_format, output_name, " \
        "protocol, provider_fallback, providers, resize, score_threshold, shared_memory, threads, timeout_s, url)"
    assert refused({"modle": "x.onnx"}).message == "unknown field " + hint
    dep = {"app": "a", "modules": {"det": {"type": "detector", "args": {"modle": "x.onnx"}}}}
    assert [e.message for e in check_deployment(dep, load_registry()).errors if e.path == "modules.det.args.modle"] \
        == ["unknown field " + hint]


def identities(args: dict) -> tuple[DetectorConfig, str]:
    dep = Deployment.model_validate({"app": "a", "modules": {
        "dec": {"type": "decoder", "args": {"source": "synthetic"}, "outputs": ["det"]},
        "det": {"type": "detector", "args": args}}})
    g = validate_graph(dep, load_registry(), None, "local")
    return g.configs["det"], g.identity("det")


def test_both_forms_are_one_config_and_one_identity() -> None:
    flat = identities({"backend": "triton", **TRITON, "score_threshold": 0.5})
    nested = identities({"backend": {"type": "triton", **TRITON}, "score_threshold": 0.5})
    assert flat == nested  # equal configs, so the agent shares one running instance
    assert flat[0].backend.url == "gpu-box:8001" and flat[0].score_threshold == 0.5
    default = identities({})
    assert default == identities({"backend": "onnx"}) == identities({"backend": {"type": "onnx"}})
    assert default[1] != identities({"backend": "onnx", "model": "asset:other.onnx"})[1]
    assert default[1] != identities({"backend": "opencv-hog"})[1]
    c = flat[0]
    assert DetectorConfig.model_validate(c.model_dump()) == c  # a dump reads back (nested)
    assert DetectorConfig.model_validate(c) == c


def test_what_the_agent_sends_a_module_reads_back_as_the_same_config() -> None:
    from edgeva.modules.detectors.triton import TritonConfig

    # the agent sends a module model_dump(mode="json", exclude_unset=True) of its config
    for c in (DetectorConfig.model_validate({"type": "detector"}),
              DetectorConfig.model_validate({"type": "detector", "backend": "triton", **TRITON}),
              DetectorConfig.model_validate({"type": "detector", "backend": {"type": "opencv-hog", "hog_scale": 0.5}}),
              DetectorConfig(backend=TritonConfig(model_name="m"))):  # built in code
        sent = c.model_dump(mode="json", exclude_unset=True)
        assert sent["backend"]["type"] == c.backend.type and DetectorConfig.model_validate(sent) == c


# -- schema and docs -----------------------------------------------------------------------------

def test_the_schema_lists_each_backend_and_takes_both_forms() -> None:
    schema = module_schema("detector", DetectorConfig)
    forms = schema["properties"]["backend"]["anyOf"]
    assert forms[0]["enum"] == ["onnx", "opencv-hog", "triton"]
    members = {schema["$defs"][r["$ref"].rsplit("/", 1)[-1]]["properties"]["type"]["const"]:
               schema["$defs"][r["$ref"].rsplit("/", 1)[-1]] for r in forms[1]["oneOf"]}
    assert set(members) == {"onnx", "opencv-hog", "triton"}
    assert set(members["onnx"]["properties"]) == {"type", "model", "graph_optimization", "providers",
                                                  "provider_fallback"}
    assert set(members["opencv-hog"]["properties"]) == {"type", "hog_scale"}
    assert {"url", "model_name", "shared_memory", "headers"} <= set(members["triton"]["properties"])
    assert all(m["required"][0] == "type" and m["additionalProperties"] is False for m in members.values())
    check = jsonschema.Draft202012Validator(schema)
    for good in ({}, {"model": "x.onnx"}, {"backend": "triton", **TRITON}, {"backend": {"type": "triton", **TRITON}},
                 {"backend": "opencv-hog", "hog_scale": 0.5}, {"backend": {"type": "onnx", "model": "x.onnx"}}):
        assert not list(check.iter_errors(good)), good
        DetectorConfig.model_validate({"type": "detector", **good})  # the agent agrees
    for bad in ({"backend": "opencv-hog", "model": "x.onnx"}, {"url": "h:1"}, {"backend": "triton"},
                {"backend": {"type": "onnx"}, "model": "x.onnx"}, {"backend": {"type": "onnx", "url": "h:1"}},
                {"backend": {"model": "x.onnx"}}, {"backend": "tensorflow"}, {"hog_scale": 9}):
        assert list(check.iter_errors(bad)), bad
        with pytest.raises(ValueError):
            DetectorConfig.model_validate({"type": "detector", **bad})


def test_the_reference_lists_each_backends_args_under_its_name() -> None:
    text = render_reference(load_registry())
    section = text[text.index("## detector"):text.index("## publish")]
    for row in ("`backend.model` (onnx)", "`backend.graph_optimization` (onnx)", "`backend.hog_scale` (opencv-hog)",
                "`backend.url` (triton)", "`backend.model_name` (triton) | string | required"):
        assert row in section, row
    assert "`backend.type`" not in section and "| `model` |" not in section


# -- one direction of imports --------------------------------------------------------------------

PLUGIN_DIRS = ("modules/detectors", "modules/embedders")


def test_backends_and_embedders_import_nothing_of_the_modules_that_use_them() -> None:
    # Not even for type hints: the backend's own config and DetectorArgs say what it reads.
    for d in PLUGIN_DIRS:
        for f in sorted((ROOT / d).glob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.ImportFrom):
                    assert node.module not in ("edgeva.modules.detector", "edgeva.modules.reid"), f
    code = textwrap.dedent("""
        import importlib, sys
        for m in ("edgeva.modules.detectors.onnx", "edgeva.modules.detectors.hog",
                  "edgeva.modules.detectors.triton", "edgeva.modules.embedders.onnx",
                  "edgeva.modules.embedders.hsv", "edgeva.modules.embedders.triton"):
            importlib.import_module(m)
        from edgeva.modules.detectors import load_backends
        load_backends()
        print(sorted(m for m in sys.modules if m in ("edgeva.modules.detector", "edgeva.modules.reid")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- a third-party backend and embedder ----------------------------------------------------------

PLUGIN = '''
from typing import Literal

import numpy as np
from pydantic import Field

from edgeva.modules.detectors import Backend, BackendConfig
from edgeva.modules.embedders import Embedder, l2_normalise


class BoxConfig(BackendConfig):
    type: Literal["box"] = "box"
    side: int = Field(40, ge=1, le=1000, description="side of the one box it finds")


class BoxBackend(Backend):
    """Finds one box at (10, 10) in every frame: a frame backend."""
    config_class = BoxConfig
    takes_tensor = False

    def __init__(self, config, args, log):
        self.side, self.threads = config.side, args.threads

    def infer_frames(self, frames):
        return [np.array([[10, 10, 10 + self.side, 10 + 2 * self.side, 0.9, 0]], np.float32) for _ in frames]


class OtherConfig(BackendConfig):
    type: Literal["other"] = "other"


class Misnamed(BoxBackend):
    config_class = OtherConfig


class MeanColour(Embedder):
    dim = 3

    @classmethod
    def from_args(cls, args):
        return cls()

    def embed(self, crops):
        return l2_normalise(crops.reshape(len(crops), -1, 3).mean(axis=1).astype(np.float32) + 1)
'''

SCRIPT = '''
import json
import numpy as np
from pydantic import ValidationError
from edgeva.modules.base import ModuleContext
from edgeva.modules.detector import BACKEND_CONFIGS, Detector, DetectorConfig
from edgeva.modules.reid import Reid, ReidConfig
from edgeva.schemas.export import module_schema
from edgeva.schemas.message import Message

out = {"backends": {k: v.__module__ for k, v in BACKEND_CONFIGS.items()}}
flat = DetectorConfig.model_validate({"type": "detector", "backend": "box", "side": 20, "threads": 1})
assert flat == DetectorConfig.model_validate({"type": "detector", "backend": {"type": "box", "side": 20}, "threads": 1})
d = Detector(flat, ModuleContext("det"))
d.setup()
out["detections"] = d.process(Message(0, "s", arrays={"frame": np.zeros((120, 160, 3), np.uint8)})).fields["detections"]
d.close()
try:
    DetectorConfig.model_validate({"type": "detector", "backend": "opencv-hog", "side": 3})
except ValidationError as e:
    out["wrong"] = [(err["loc"], err["msg"]) for err in e.errors()]
out["schema_enum"] = module_schema("detector", DetectorConfig)["properties"]["backend"]["anyOf"][0]["enum"]
gallery = [{"name": "p", "image": "asset:demo_person.png"}]
try:
    ReidConfig.model_validate({"type": "reid", "gallery": gallery, "backend": "mean"})
except ValidationError as e:
    out["no_threshold"] = e.errors()[0]["msg"]
r = Reid(ReidConfig.model_validate({"type": "reid", "gallery": gallery, "backend": "mean", "threshold": 0.5}),
         ModuleContext("reid"))
r.setup()
out["reid_parts"] = [type(p).__name__ for p in r._parts]
r.close()
print(json.dumps(out))
'''


def test_a_third_party_backend_and_embedder_register_from_entry_points(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "edgeva_box").mkdir(parents=True)
    (site / "edgeva_box" / "__init__.py").write_text(PLUGIN)
    info = site / "edgeva_box-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: edgeva-box\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [edgeva.detector_backends]
        box = edgeva_box:BoxBackend
        misnamed = edgeva_box:Misnamed
        onnx = edgeva_box:BoxBackend
        broken = edgeva_box_missing:Nothing

        [edgeva.embedders]
        mean = edgeva_box:MeanColour
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    # built-ins first and kept (a plugin cannot take "onnx"); misnamed and broken left out, logged
    assert out["backends"] == {"onnx": "edgeva.modules.detectors.onnx", "opencv-hog": "edgeva.modules.detectors.hog",
                               "triton": "edgeva.modules.detectors.triton", "box": "edgeva_box"}
    assert "broken" in run.stderr and "misnamed" in run.stderr
    assert out["detections"] == [[10.0, 10.0, 30.0, 50.0, 0.9, 0]]
    assert out["wrong"] == [[["side"], "side is only for backend box (this detector's backend is opencv-hog)"]]
    assert out["schema_enum"] == ["onnx", "opencv-hog", "triton", "box"]
    assert "backend 'mean' needs an explicit threshold" in out["no_threshold"]
    assert out["reid_parts"] == ["MeanColour"]
    assert set(detector_module.BACKEND_CONFIGS) == {"onnx", "opencv-hog", "triton"}  # this process: built-ins only
