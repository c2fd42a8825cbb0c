"""Control-plane schemas: deployments (both forms), commands, replies, topics, JSON Schema files."""

from __future__ import annotations

import json

import pytest

from edgeva.control.commands import schema as schema_cmd
from edgeva.schemas.commands import (
    COMMAND_MODELS,
    ErrorReply,
    OkReply,
    UpdateCommand,
    error_reply,
    extract_request_id,
    ok_reply,
    parse_command,
    parse_reply,
)
from edgeva.schemas.deployment import Deployment, from_listing1, parse_deployment
from edgeva.schemas.errors import ERROR_CODES, EdgevaError, format_path
from edgeva.schemas.export import check_json_schemas, expected_files, export_json_schemas
from edgeva.schemas.metrics import DeviceMetrics, TenantMetrics
from edgeva.schemas.state import DeviceState
from edgeva.schemas.topics import (
    VERBS,
    cmd_subscription,
    cmd_topic,
    device_metrics_topic,
    events_topic,
    parse_cmd_topic,
    reply_topic,
    state_topic,
    tenant_metrics_topic,
)

NATIVE = {
    "request_id": "r1",
    "app": "tracking",
    "modules": {
        "Decoder_1": {"type": "decoder", "args": {"source": "clip.mp4"}, "outputs": ["Inference_1"]},
        "Inference_1": {"type": "inference", "args": {}, "device": "cam-02", "policy": "drop_oldest"},
    },
}
LISTING1 = {
    "Decoder_1": {"decoder_args": {"source": "clip.mp4"}, "runtime_args": {"outputs": ["Inference_1"]}},
    "Inference_1": {
        "inference_args": {},
        "runtime_args": {"device": "cam-02", "policy": "drop_oldest"},
    },
}


def err(fn, *args, **kw) -> EdgevaError:
    with pytest.raises(EdgevaError) as info:
        fn(*args, **kw)
    return info.value


# ---- deployments -------------------------------------------------------------------------


def test_listing1_equals_native():
    native = parse_deployment(json.dumps(NATIVE))
    assert from_listing1(LISTING1, "tracking", request_id="r1") == native
    assert parse_deployment(json.dumps(LISTING1), app="tracking").modules == native.modules
    # Listing 1 may carry its own request_id and app
    assert parse_deployment({**LISTING1, "request_id": "r1", "app": "tracking"}) == native


def test_listing1_errors_have_paths():
    bad = {"D": {"decoder_args": {}, "runtime_args": {"outputs": [], "gpu": 1}}}
    e = err(from_listing1, bad, "a")
    assert (e.code, e.path) == ("bad_request", "D.runtime_args.gpu")
    e = err(from_listing1, {"D": {"decoder_args": {}, "x_args": {}}}, "a")
    assert (e.code, e.path) == ("bad_request", "D")
    e = err(from_listing1, {"D": {"decoder_args": {}, "extra": 1}}, "a")
    assert (e.code, e.path) == ("bad_request", "D.extra")
    assert err(parse_deployment, json.dumps(LISTING1)).path == "app"  # no app anywhere
    assert err(from_listing1, {**LISTING1, "app": "x"}, "y").path == "app"


def test_duplicate_keys_refused():
    text = (
        '{"app": "a", "modules": {"detector": {"type": "detector"},'
        ' "detector": {"type": "tracker"}}}'
    )
    e = err(parse_deployment, text)
    assert (e.code, e.path) == ("duplicate_name", "modules.detector")
    e = err(parse_deployment, '{"app": "a", "modules": {"d": {"type": "t", "args": {"x": 1, "x": 2}}}}')
    assert (e.code, e.path) == ("duplicate_name", "modules.d.args.x")
    e = err(parse_deployment, '{"D": {"decoder_args": {}}, "D": {"decoder_args": {}}}', "a")
    assert (e.code, e.path) == ("duplicate_name", "D")


@pytest.mark.parametrize(
    ("payload", "code", "path"),
    [
        (b"\xff\xfe", "bad_json", None),
        (b"{", "bad_json", None),
        (b'{"app": "a", "modules": {"d": {"type": "t", "args": {"x": NaN}}}}', "bad_json", None),
        (b"[]", "bad_request", None),
        (b'{"app": "a", "modules": {}}', "bad_request", "modules"),
        (b'{"app": "a/b", "modules": {"d": {"type": "t"}}}', "bad_request", "app"),
        (b'{"app": "a", "modules": {"d": {"type": "t", "outputs": "x"}}}', "bad_request",
         "modules.d.outputs"),
        (b'{"app": "a", "modules": {"d": {"type": "t", "policy": "lossy"}}}', "bad_request",
         "modules.d.policy"),
        (b'{"app": "a", "modules": {"d": {"type": "t", "gpu": 1}}}', "bad_request", "modules.d.gpu"),
        (b'{"app": "a", "modules": {"d.1": {"type": "t", "device": "+"}}}', "bad_request",
         'modules["d.1"].device'),
        (b'{"app": "a", "request_id": "x/#", "modules": {"d": {"type": "t"}}}', "bad_request",
         "request_id"),
    ],
)
def test_deployment_errors(payload, code, path):
    e = err(parse_deployment, payload)
    assert (e.code, e.path) == (code, path)
    assert e.message


def test_app_argument_and_payload_must_agree():
    assert parse_deployment({"modules": {"d": {"type": "t"}}}, app="x").app == "x"
    assert err(parse_deployment, {"app": "y", "modules": {"d": {"type": "t"}}}, app="x").path == "app"


def test_models_are_strict_and_specs_default():
    d = Deployment.model_validate({"app": "a", "modules": {"d": {"type": "t"}}})
    spec = d.modules["d"]
    assert (spec.args, spec.outputs, spec.device, spec.policy, d.request_id) == ({}, [], None, None, None)


# ---- errors ------------------------------------------------------------------------------


def test_error_codes_and_paths():
    assert len(ERROR_CODES) == 16 and "forbidden" in ERROR_CODES and "bad_wiring" in ERROR_CODES
    e = EdgevaError("not_found", "no app 'x'", "app")
    assert e.to_dict() == {"code": "not_found", "message": "no app 'x'", "path": "app"}
    with pytest.raises(ValueError):
        EdgevaError("nope", "x")  # type: ignore[arg-type]
    assert format_path(("modules", "det", "outputs", 0)) == "modules.det.outputs[0]"
    assert format_path(("modules", "cam.1", "args")) == 'modules["cam.1"].args'


# ---- commands and replies ----------------------------------------------------------------


def test_every_verb_has_a_model():
    assert set(COMMAND_MODELS) == set(VERBS)


def test_parse_commands():
    upd = parse_command("update", b'{"request_id": "r", "app": "a", "module": "roi", "args": {"k": 1}}')
    assert isinstance(upd, UpdateCommand) and upd.args == {"k": 1}
    assert parse_command("stop", {"request_id": "r", "app": "a"}).app == "a"
    assert parse_command("status", b"{}").app is None
    assert parse_command("metrics", b'{"app": "a"}').app == "a"
    assert parse_command("deploy", json.dumps({**LISTING1, "app": "t"})).app == "t"
    e = err(parse_command, "update", b'{"request_id": "r", "app": "a", "module": "roi"}')
    assert (e.code, e.path) == ("bad_request", "args")
    e = err(parse_command, "start", b'{"app": "a", "force": true}')
    assert (e.code, e.path) == ("bad_request", "force")
    assert err(parse_command, "reboot", b"{}").path == "verb"
    assert err(parse_command, "start", b"nope").code == "bad_json"
    assert err(parse_command, "remove", b'{"app": "a", "app": "b"}').code == "duplicate_name"


def test_replies_round_trip():
    ok = parse_reply(ok_reply("r1", {"apps": ["a"]}))
    assert isinstance(ok, OkReply) and ok.result == {"apps": ["a"]}
    bad = parse_reply(error_reply("r1", EdgevaError("cycle", "a -> b -> a", "modules.b.outputs[0]")))
    assert isinstance(bad, ErrorReply) and bad.error.code == "cycle"
    assert json.loads(error_reply(None, EdgevaError("internal", "x"))) == {
        "request_id": None, "ok": False, "error": {"code": "internal", "message": "x", "path": None},
    }
    assert err(parse_reply, b'{"request_id": "r", "ok": false, "result": {}}').code == "bad_request"


def test_extract_request_id_is_best_effort():
    assert extract_request_id(b'{"request_id": "r-1", "app": 5}') == "r-1"
    assert extract_request_id(b'{"request_id": "a/b"}') is None
    assert extract_request_id(b"[1]") is None
    assert extract_request_id(b"\xff") is None


# ---- topics ------------------------------------------------------------------------------


def test_topics():
    assert cmd_topic("cam-01", "acme", "deploy") == "edgeva/v1/cam-01/acme/cmd/deploy"
    assert reply_topic("cam-01", "acme", "r:1") == "edgeva/v1/cam-01/acme/reply/r:1"
    assert events_topic("cam-01", "acme", "count") == "edgeva/v1/cam-01/acme/events/count"
    assert tenant_metrics_topic("cam-01", "acme") == "edgeva/v1/cam-01/acme/metrics"
    assert state_topic("cam-01") == "edgeva/v1/cam-01/state"
    assert device_metrics_topic("cam-01") == "edgeva/v1/cam-01/metrics"
    assert cmd_subscription("cam-01") == "edgeva/v1/cam-01/+/cmd/+"
    assert parse_cmd_topic("edgeva/v1/cam-01/acme/cmd/update") == ("cam-01", "acme", "update")
    for bad in ["edgeva/v1/cam-01/acme/cmd/reboot", "edgeva/v1/cam-01/+/cmd/deploy",
                "edgeva/v2/cam-01/acme/cmd/deploy", "edgeva/v1/cam-01/acme/reply/deploy",
                "edgeva/v1/cam-01/acme/cmd/deploy/x", "edgeva/v1//acme/cmd/deploy"]:
        assert err(parse_cmd_topic, bad).path == "topic", bad
    for args in [("cam/1", "t", "deploy"), ("c", "#", "deploy"), ("c", "t", "reboot")]:
        assert err(cmd_topic, *args).code == "bad_request"
    assert err(events_topic, "c", "t", "a+").path == "app"


# ---- state and metrics -------------------------------------------------------------------


def test_state_and_metrics_models():
    offline = DeviceState.model_validate_json('{"device": "cam-01", "status": "offline"}')
    assert offline.apps == {} and offline.modules == {}
    DeviceState.model_validate({
        "device": "cam-01", "status": "online", "ts": 1.0, "data_addr": "tcp://h:5600",
        "apps": {"default": {"count": {"modules": ["decoder-ab"], "status": "running"}}},
        "modules": {"decoder-ab": {"type": "decoder", "apps": ["default/count"], "pid": 12,
                                   "status": "running", "restarts": 0}},
        "version": "0.1.0",
    })
    TenantMetrics.model_validate({
        "device": "c", "tenant": "t", "ts": 1, "interval_s": 5,
        "apps": {"a": {"frames": 10, "latency_ms": {"p50": 1, "p95": 2, "p99": 3}}},
        "modules": {"m": {"type": "decoder", "occupancy": {"det-1": 0.5}, "dropped": {"det-1": 2}}},
    })
    DeviceMetrics.model_validate({
        "device": "c", "ts": 1, "interval_s": 5,
        "links": {"cam-02": {"bytes_sent": 5, "network_ms": {"p50": 0.4}}},
    })
    with pytest.raises(ValueError):
        DeviceState.model_validate({"device": "c", "status": "online", "extra": 1})


# ---- JSON Schema export ------------------------------------------------------------------


def test_export_is_deterministic_and_check_detects_changes(tmp_path):
    configs = schema_cmd.module_configs(builtin=True)
    a, b = tmp_path / "a", tmp_path / "b"
    export_json_schemas(configs, a)
    export_json_schemas(configs, b)
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*.json"))
    assert names == sorted(expected_files(configs)) and "deployment.json" in names
    assert "modules/decoder.json" in names
    for name in names:
        text = (a / name).read_bytes()
        assert text == (b / name).read_bytes() and text.endswith(b"}\n")
    assert check_json_schemas(configs, a) == []
    (a / "state.json").write_text((a / "state.json").read_text().replace("online", "on"))
    (a / "cmd_stop.json").unlink()
    (a / "old.json").write_text("{}\n")
    (a / "modules" / "gone.json").write_text("{}\n")
    assert check_json_schemas(configs, a) == ["cmd_stop.json", "modules/gone.json", "old.json", "state.json"]
    # a new arg in a module config (as another branch may add) is drift in both files
    from pydantic import Field, create_model

    grown = create_model("TrackerConfig", __base__=configs["tracker"],
                         new_arg=(int, Field(3, description="added later")))
    assert check_json_schemas({**configs, "tracker": grown}, a) == [
        "cmd_stop.json", "deployment.json", "deployment_listing1.json", "modules/gone.json",
        "modules/tracker.json", "old.json", "state.json"]


def test_committed_schemas_are_current():
    bad = check_json_schemas(schema_cmd.module_configs(builtin=True))
    assert bad == [], "run: edgeva schema export --builtin (make schemas)"


def test_schema_cli(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    schema_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["schema", "check", str(tmp_path)])
    assert args.func(args) == 1
    args = parser.parse_args(["schema", "export", str(tmp_path)])
    assert args.func(args) == 0
    args = parser.parse_args(["schema", "check", str(tmp_path)])
    assert args.func(args) == 0
    assert "up to date" in capsys.readouterr().out
