"""Deployments checked before they reach a device: ``edgeva check`` (every error, with its
path, the agent's own first), the typed JSON Schema through ``check-jsonschema``, and
``edgeva deploy`` refusing locally."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pydantic
import pytest

from edgeva.cli import main
from edgeva.control.commands.schema import module_registry
from edgeva.control.demo.apps import demo_apps
from edgeva.schemas.check import check_deployment
from edgeva.schemas.deployment import parse_deployment
from edgeva.schemas.errors import EdgevaError
from edgeva.schemas.graph import validate_graph
from tests.agent_harness import ROOT, AgentProc, Commander, Watcher

CASES = ROOT / "tests" / "data" / "deployments"
SCHEMA = ROOT / "schemas" / "json" / "deployment.json"
BIN = Path(sys.executable).parent
REGISTRY = module_registry(builtin=True)

#: Files whose every error is pinned: (code, path), in order (the agent's answer first).
EVERY_ERROR = {
    "bad_many.json": [
        ("bad_request", "modules.publish.policy"),
        ("unknown_type", "modules.extra.type"),
        ("bad_args", "modules.decoder.args.fps"),
        ("bad_args", "modules.decoder.args.fsp"),
        ("bad_args", "modules.detector.args.backend"),
        ("bad_args", "modules.detector.args.score_threshold"),
        ("unknown_output", "modules.decoder.outputs[1]"),
    ],
    "bad_listing1.json": [
        ("bad_request", "Decoder_1.runtime_args.speed"),
        ("bad_request", "Publish_1"),
    ],
    "bad_app_name.json": [("bad_request", "app"), ("bad_args", "modules.decoder.args.loop")],
    "bad_wiring.json": [("bad_wiring", "modules.dec.outputs[0]")],  # decoder -> roi (tests/test_ports.py)
}


def readme_examples() -> list[dict]:
    """The deployments README.md shows (its ```json blocks holding "modules")."""
    blocks = re.findall(r"```json\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    found = [json.loads(b) for b in blocks if '"modules"' in b]  # a broken example fails here
    return [d for d in found if isinstance(d, dict) and "modules" in d]


def far_example() -> dict:
    """README's app spanning devices (cam-01, edge-02)."""
    return next(d for d in readme_examples() if any("device" in m for m in d["modules"].values()))


@pytest.fixture
def cases(tmp_path) -> Path:
    """The case directory plus README's examples, as files."""
    out = tmp_path / "cases"
    out.mkdir()
    for p in CASES.glob("*.json"):
        (out / p.name).write_bytes(p.read_bytes())
    for i, dep in enumerate(readme_examples()):
        name = out / f"readme_{dep['app']}.json"
        name = out / f"readme_{dep['app']}_{i}.json" if name.exists() else name
        name.write_text(json.dumps(dep, indent=2))
    return out


def pairs(errors: list) -> list[tuple[str, str | None]]:
    return [(e["code"], e["path"]) if isinstance(e, dict) else (e.code, e.path) for e in errors]


def agent_first_error(payload: bytes) -> EdgevaError | None:
    """What the agent's own functions say of a single-device deploy (no fleet)."""
    try:
        validate_graph(parse_deployment(payload), REGISTRY, {"dev"}, "dev")
    except EdgevaError as e:
        return e
    return None


def run(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


# -- the checker against the agent's own functions ----------------------------------------------------

INLINE = [
    b'{"app": "a", "modules": {}}',
    b'{"app": "a"}',
    b'[1, 2]',
    b'{"app": "a", "modules": {"d": {"type": "decoder", "args": {"type": "decoder", "source": "synthetic"}}}}',
    b'{"app": "a", "modules": {"d": {"type": "decoder"}}}',
    b'{"app": "a", "modules": {"p": {"type": "publish", "outputs": ["p"]}}}',
    b'{"app": "a", "modules": {"p": {"type": "publish", "outputs": ["q", "q"]}, "q": {"type": "publish"}}}',
    b'{"app": "a", "modules": {"p": {"type": "publish", "device": "elsewhere"}}}',
    b'{"app": "a", "modules": {"p": {"type": "publish", "args": {"max_rate": 1, "max_rate": 2}}}}',
    b'{"app": "a", "$schema": 3, "modules": {"p": {"type": "publish"}}}',
]


ALL = [p.read_bytes() for p in sorted(CASES.glob("*.json"))] + [json.dumps(d).encode() for d in readme_examples()]
ALL_IDS = [p.name for p in sorted(CASES.glob("*.json"))] + [f"readme{i}" for i in range(len(readme_examples()))]


@pytest.mark.parametrize("payload", ALL + INLINE, ids=ALL_IDS + [f"inline{i}" for i in range(len(INLINE))])
def test_first_error_is_the_agents(payload):
    """The checker's first error is the one the agent's own functions raise (on every case
    file, README's examples and a few more)."""
    want = agent_first_error(payload)
    got = check_deployment(payload, REGISTRY, local_device="dev", fleet={})
    if want is None:
        assert got.ok, pairs(got.errors)
    else:
        assert pairs(got.errors)[0] == (want.code, want.path)
        assert not any("more error" in e.message for e in got.errors)


def test_not_json_and_every_duplicate():
    assert pairs(check_deployment(b'{"app": ', REGISTRY).errors) == [("bad_json", None)]
    dup = b'{"app": "a", "app": "b", "modules": {"p": {"type": "publish", "outputs": [], "outputs": []}}}'
    assert pairs(check_deployment(dup, REGISTRY).errors) == [
        ("duplicate_name", "app"), ("duplicate_name", "modules.p.outputs")]


def test_schema_key_is_for_editors_only():
    data = {"$schema": "schemas/json/deployment.json", "app": "a", "modules": {"p": {"type": "publish"}}}
    assert parse_deployment(json.dumps(data)).model_dump(exclude_none=True)["app"] == "a"
    listing = {"$schema": "x.json", "app": "a", "P": {"publish_args": {}}}
    assert parse_deployment(json.dumps(listing)).modules["P"].type == "publish"


# -- through the CLI -------------------------------------------------------------------------------------


def test_edgeva_check_cli_lists_every_error(tmp_path):
    out = run("edgeva", "check", "--json", str(CASES))
    assert out.returncode == 1, out.stderr
    reports = {Path(r["file"]).name: r for r in json.loads(out.stdout)["files"]}
    assert sorted(reports) == sorted(p.name for p in CASES.glob("*.json"))
    for name, want in EVERY_ERROR.items():
        assert pairs(reports[name]["errors"]) == want, name
    assert reports["good_listing1.json"]["ok"] and reports["good_listing1.json"]["app"] == "paper"
    # people's form: one line per error, with its path
    text = run("edgeva", "check", str(CASES / "bad_many.json"))
    assert text.returncode == 1
    assert "bad_many.json: 7 errors" in text.stdout
    for code, path in EVERY_ERROR["bad_many.json"]:
        assert f"error {code} at {path}: " in text.stdout
    good = run("edgeva", "check", str(CASES / "good_listing1.json"), str(CASES / "good_synthetic_schema_key.json"))
    assert good.returncode == 0 and good.stdout.count(": ok (app") == 2
    assert run("edgeva", "check", str(tmp_path / "none.json")).returncode == 2


def test_fleet_file_devices(tmp_path):
    far = tmp_path / "far.json"
    far.write_text(json.dumps(far_example()))
    fleet = tmp_path / "fleet.txt"
    # what `mosquitto_sub -v -t 'edgeva/v1/+/state'` prints
    fleet.write_text(
        'edgeva/v1/cam-01/state {"device": "cam-01", "status": "online", "data_addr": "tcp://10.0.0.11:5600"}\n'
        'edgeva/v1/edge-02/state {"device": "edge-02", "status": "offline"}\n')
    out = run("edgeva", "check", "--json", "--device", "cam-01", "--fleet", str(fleet), str(far))
    errs = json.loads(out.stdout)["files"][0]["errors"]
    assert pairs(errs) == [("unknown_device", "modules.detector.device"), ("unknown_device", "modules.publish.device")]
    assert "offline" in errs[0]["message"]
    fleet.write_text(json.dumps([{"device": "cam-01", "status": "online", "data_addr": "tcp://10.0.0.11:5600"},
                                 {"device": "edge-02", "status": "online"}]))
    out = run("edgeva", "check", "--json", "--device", "cam-01", "--fleet", str(fleet), str(far))
    assert pairs(json.loads(out.stdout)["files"][0]["errors"]) == [("setup_failed", "devices.edge-02")]
    fleet.write_text(json.dumps({"cam-01": {"device": "cam-01", "status": "online", "data_addr": "tcp://a:1"},
                                 "edge-02": {"device": "edge-02", "status": "online", "data_addr": "tcp://b:1"}}))
    assert run("edgeva", "check", "--device", "cam-01", "--fleet", str(fleet), str(far)).returncode == 0
    fleet.write_text("not a state\n")
    assert run("edgeva", "check", "--fleet", str(fleet), str(far)).returncode == 2


# -- the same verdict as a live agent ----------------------------------------------------------------------


@pytest.mark.slow
def test_same_verdict_as_a_live_agent(amqtt_broker, tmp_path, cases):
    """Every file of the case directory, deployed to a real agent behind the embedded broker and
    checked offline with the fleet's retained states: same verdict, the agent's error first."""
    device = f"chk-{uuid.uuid4().hex[:6]}"
    w = Watcher(amqtt_broker.url)
    agent = AgentProc(amqtt_broker.url, device, tmp_path / "agent", w)
    try:
        cmd = Commander(w, device)
        states = {t: ms[-1] for t, ms in w.msgs.items() if t.endswith("/state") and ms and ms[-1]}
        fleet = tmp_path / "fleet.txt"
        fleet.write_text("".join(f"{t} {json.dumps(s)}\n" for t, s in states.items()))
        out = run("edgeva", "check", "--json", "--device", device, "--fleet", str(fleet), str(cases))
        checked = {Path(r["file"]).name: r for r in json.loads(out.stdout)["files"]}
        verdicts = {}
        for path in sorted(cases.glob("*.json")):
            text = path.read_text()
            # the agent replies on reply/<request_id>: give every payload one, as its first key
            text = re.sub(r'"request_id":\s*"[^"]*",?', "", text, count=1)
            reply = cmd.send("deploy", text.replace("{", '{"request_id": "@RID@", ', 1), timeout=90)
            if reply["ok"]:
                cmd.send("remove", {"app": reply["result"]["app"]})
            report = checked[path.name]
            verdicts[path.name] = reply["ok"]
            if (not reply["ok"] and reply["error"]["code"] == "setup_failed" and report["ok"]
                    and path.name.startswith("readme_")):
                # a README example whose module could not start here (a camera or stream that
                # is not on this machine): beyond what an offline check can know
                continue
            assert reply["ok"] == report["ok"], (path.name, reply, report)
            if not reply["ok"]:
                err = reply["error"]
                assert pairs(report["errors"])[0] == (err["code"], err["path"]), (path.name, err, report)
        for name, ok in verdicts.items():
            if not name.startswith("readme_"):
                assert ok == name.startswith("good_"), name
        # README's deployment (decoder, detector, tracker, publish) ran; its app spanning
        # devices names devices this fleet does not have
        assert verdicts["readme_tracking.json"]
        assert pairs(checked["readme_far.json"]["errors"])[0] == ("unknown_device", "modules.decoder.device")
        assert sum(not ok for ok in verdicts.values()) >= 10
    finally:
        agent.stop()
        w.close()


# -- the typed JSON Schema through check-jsonschema -----------------------------------------------------------


def schema_verdict(tmp_path: Path, name: str, data: dict | str, schema: Path = SCHEMA) -> subprocess.CompletedProcess:
    f = tmp_path / name
    f.write_text(data if isinstance(data, str) else json.dumps(data))
    return run("check-jsonschema", "--schemafile", str(schema), str(f))


def test_check_jsonschema_accepts_readme_and_demo_apps(tmp_path):
    examples = readme_examples()
    assert len(examples) >= 2
    apps = demo_apps(video=tmp_path / "annotated.mp4")
    assert [a["app"] for a in apps] == ["tracking", "roi", "reid"]
    for i, dep in enumerate([*examples, *apps]):
        out = schema_verdict(tmp_path, f"ok{i}.json", dep)
        assert out.returncode == 0, (dep, out.stdout)
    assert run("check-jsonschema", "--schemafile", str(SCHEMA), str(CASES / "good_synthetic_schema_key.json")).returncode == 0
    # the paper's Listing 1 form has a schema of its own, typed the same way
    listing1 = ROOT / "schemas" / "json" / "deployment_listing1.json"
    assert run("check-jsonschema", "--schemafile", str(listing1), str(CASES / "good_listing1.json")).returncode == 0
    bad = run("check-jsonschema", "--schemafile", str(listing1), str(CASES / "bad_listing1.json"))
    assert bad.returncode == 1 and "$.Decoder_1.runtime_args: Additional properties are not allowed ('speed'" in bad.stdout
    typo = {"app": "p", "Decoder_1": {"decoder_args": {"source": "synthetic", "fsp": 1}}}
    out = schema_verdict(tmp_path, "typo.json", typo, listing1)
    assert out.returncode == 1 and "$.Decoder_1.decoder_args: Additional properties are not allowed ('fsp'" in out.stdout


@pytest.mark.parametrize("case,where", [
    ("bad_unknown_arg.json", "$.modules.decoder.args: Additional properties are not allowed ('fsp' was unexpected)"),
    ("bad_fps_type.json", "$.modules.decoder.args.fps: 'ten' is not of type"),
    ("bad_unknown_type.json", "$.modules.publish.type: 'publisher' is not one of"),
])
def test_check_jsonschema_refuses(case, where):
    out = run("check-jsonschema", "--schemafile", str(SCHEMA), str(CASES / case))
    assert out.returncode == 1
    assert where in out.stdout, out.stdout


def test_module_schema_files_type_args(tmp_path):
    dec = ROOT / "schemas" / "json" / "modules" / "decoder.json"
    assert schema_verdict(tmp_path, "a.json", {"source": "synthetic", "fps": 5}, dec).returncode == 0
    assert schema_verdict(tmp_path, "b.json", {"fps": 5}, dec).returncode == 1  # source required
    assert schema_verdict(tmp_path, "c.json", {"source": "x", "fps": -1}, dec).returncode == 1


# -- a third-party module type -------------------------------------------------------------------------------------


@pytest.fixture
def plugin_env(tmp_path) -> dict:
    """The test package tests/data/plugin/edgeva_blur, installed-looking (a dist-info with an
    ``edgeva.modules`` entry point) in a directory only the subprocesses see."""
    site = tmp_path / "site"
    (site / "edgeva_blur").mkdir(parents=True)
    src = ROOT / "tests" / "data" / "plugin" / "edgeva_blur" / "__init__.py"
    (site / "edgeva_blur" / "__init__.py").write_text(src.read_text())
    info = site / "edgeva_blur-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: edgeva-blur\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[edgeva.modules]\nblur = edgeva_blur:Blur\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


BLUR_APP = {"app": "soft", "modules": {
    "decoder": {"type": "decoder", "args": {"source": "synthetic"}, "outputs": ["blur"]},
    "blur": {"type": "blur", "args": {"kernel": 7}}}}


def test_third_party_type_in_schema_export_and_check(plugin_env, tmp_path):
    out_dir = tmp_path / "json"
    exported = run("edgeva", "schema", "export", str(out_dir), env=plugin_env)
    assert exported.returncode == 0, exported.stderr
    blur = json.loads((out_dir / "modules" / "blur.json").read_text())
    assert blur["properties"]["kernel"]["maximum"] == 99 and blur["additionalProperties"] is False
    dep_schema = json.loads((out_dir / "deployment.json").read_text())
    assert "blur" in dep_schema["$defs"]["ModuleSpec"]["properties"]["type"]["enum"]
    schema = out_dir / "deployment.json"
    assert schema_verdict(tmp_path, "g.json", BLUR_APP, schema).returncode == 0
    bad = json.loads(json.dumps(BLUR_APP))
    bad["modules"]["blur"]["args"] = {"kernel": 100, "radius": 2}
    refused = schema_verdict(tmp_path, "b.json", bad, schema)
    assert refused.returncode == 1 and "$.modules.blur.args" in refused.stdout
    # the committed schema (built-in types) does not know it
    assert schema_verdict(tmp_path, "g2.json", BLUR_APP).returncode == 1

    (tmp_path / "good.json").write_text(json.dumps(BLUR_APP))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    out = run("edgeva", "check", "--json", str(tmp_path / "good.json"), str(tmp_path / "bad.json"), env=plugin_env)
    good_r, bad_r = json.loads(out.stdout)["files"]
    assert good_r["ok"] and pairs(bad_r["errors"]) == [
        ("bad_args", "modules.blur.args.kernel"), ("bad_args", "modules.blur.args.radius")]
    assert "known args: kernel, sigma" in bad_r["errors"][1]["message"]
    without = run("edgeva", "check", "--json", str(tmp_path / "good.json"))
    assert pairs(json.loads(without.stdout)["files"][0]["errors"]) == [("unknown_type", "modules.blur.type")]

    ref = tmp_path / "modules.md"
    assert run("edgeva", "schema", "docs", str(ref), env=plugin_env).returncode == 0
    assert "## blur" in ref.read_text() and "| `kernel` | integer | `5` | >= 1, <= 99 |" in ref.read_text()


# -- edgeva deploy checks first ----------------------------------------------------------------------------------


def test_deploy_prints_every_error_and_sends_nothing(mosquitto, capsys):
    from tests.test_client import Responder

    responder = Responder(mosquitto)
    try:
        argv = ["deploy", str(CASES / "bad_many.json"), "--device", "dev1", "--broker", mosquitto.url]
        assert main(argv) == 1
        err = capsys.readouterr().err
        for code, path in EVERY_ERROR["bad_many.json"]:
            assert f"error {code} at {path}: " in err
        assert "more error" not in err and "nothing was sent" in err
        assert responder.received == []
        # --no-check: the device decides (the stand-in agent here accepts any graph)
        assert main([*argv, "--no-check"]) == 1  # its shape is still checked locally
        assert main(["deploy", str(CASES / "bad_unknown_type.json"), "--device", "dev1",
                     "--broker", mosquitto.url, "--no-check"]) == 0
        assert responder.received[-1]["body"]["modules"]["publish"]["type"] == "publisher"
    finally:
        responder.close()


# -- the module reference ----------------------------------------------------------------------------------------


def test_committed_module_reference_is_current():
    from edgeva.schemas.reference import render_reference

    current = (ROOT / "docs" / "modules.md").read_text(encoding="utf-8")
    assert render_reference(REGISTRY) == current, "run: edgeva schema docs --builtin (make schemas)"


def test_reference_follows_the_configs_and_its_examples_are_valid():
    from pydantic import Field, create_model

    from edgeva.schemas.reference import example_args, render_reference

    text = render_reference(REGISTRY)
    for name, cls in REGISTRY.items():
        config = cls.config_class
        assert f"\n## {name}\n" in text
        minimal = example_args(config)
        config.model_validate({"type": name, **minimal})  # the section's example deploys
        for field, info in config.model_fields.items():
            if field == "type":
                continue
            assert f"| `{field}` |" in text, (name, field)
            for example in info.examples or []:  # every declared example is a valid value
                config.model_validate({"type": name, **minimal, field: example})
    # every top-level row's example (declared or derived from type and range) is valid too
    sections = dict(re.findall(r"\n## (\S+)\n(.*?)(?=\n## |\Z)", text, re.S))
    for name, cls in REGISTRY.items():
        minimal = example_args(cls.config_class)
        rows = re.findall(r"^\| `(\w+)` \|.*\| (`.*`|) \|$", sections[name], re.M)
        assert len(rows) == len(cls.config_class.model_fields) - 1, name
        for field, cell in rows:
            if not cell:
                continue
            try:
                cls.config_class.model_validate({"type": name, **minimal, field: json.loads(cell[1:-1])})
            except pydantic.ValidationError as e:  # only a rule tying args together may refuse it
                assert all(err["loc"][:1] != (field,) for err in e.errors()), (name, field, cell)
    # an arg added to a config (as another branch may) appears with its type, default, range
    grown = create_model("TrackerConfig", __base__=REGISTRY["tracker"].config_class,
                         queue_depth=(int, Field(4, ge=1, le=64, description="frames held back")))
    row = "| `queue_depth` | integer | `4` | >= 1, <= 64 | frames held back | `4` |"
    assert row in render_reference({**REGISTRY, "tracker": grown}) and row not in text
