"""Bounds by construction (issue 20): every value a tenant controls has a limit in its model.

Walks every field of every registered module type's config, of the deployment and of every
command model, through nested models, lists, dicts and unions (``schemas.bounds``), and fails
on a number without an upper bound, a string, list or dict without a maximum length, or a
path-like string that is marked neither as a path (confined by the agent) nor as a name.
Third-party types are held to the same rule by ``edgeva check`` (a warning per arg)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from edgeva.control.commands.schema import module_registry
from edgeva.modules.base import ModuleConfig
from edgeva.schemas.bounds import pattern_width, unbounded_fields
from edgeva.schemas.check import check_deployment
from edgeva.schemas.commands import COMMAND_MODELS

REGISTRY = module_registry(builtin=False)  # built-in and installed types (the example package)
BUILTIN = module_registry(builtin=True)


def _config(entry: Any) -> type[BaseModel]:
    return getattr(entry, "config_class", entry)


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_module_arg_is_bounded(name: str) -> None:
    found = unbounded_fields(_config(BUILTIN[name]), name)
    assert found == [], "\n".join(map(str, found))


@pytest.mark.parametrize("verb", sorted(COMMAND_MODELS))
def test_every_command_field_is_bounded(verb: str) -> None:
    found = unbounded_fields(COMMAND_MODELS[verb], verb)
    assert found == [], "\n".join(map(str, found))


def test_the_link_frame_header_model_is_bounded() -> None:
    from edgeva.schemas.frame import FrameHeader

    found = unbounded_fields(FrameHeader, "frame")
    assert found == [], "\n".join(map(str, found))


# -- the walker itself: it must find what it claims to --------------------------------------------
class _Inner(BaseModel):
    image: str = Field(max_length=10)  # path-like, unmarked
    n: int = 1  # no maximum


class _Loose(ModuleConfig):
    type: Literal["loose"] = "loose"
    threads: int = Field(2, ge=1)
    ratio: float | None = Field(None, le=1.0)  # bounded through the Optional
    names: list[str] = Field([], max_length=4)  # items unbounded
    table: dict[str, Annotated[int, Field(le=5)]] = Field({}, max_length=4)  # keys unbounded
    model: str = Field("m", max_length=100)  # path-like, unmarked
    model_name: str = Field("m", max_length=100, json_schema_extra={"edgeva_not_path": "a name"})
    inner: list[_Inner] = Field([], max_length=2)
    size: tuple[int, int] = (1, 1)
    anything: Any = None
    ok: Annotated[str, Field(pattern=r"^[a-z]{1,8}$")] = "a"
    loose_pattern: Annotated[str, Field(pattern=r"^[a-z]+$")] = "a"


def test_the_walker_finds_every_unbounded_value() -> None:
    got = {(f.path, f.problem.split(" ")[0]) for f in unbounded_fields(_Loose)}
    assert got == {
        ("threads", "int"),
        ("names[]", "string"),
        ("table{key}", "string"),
        ("model", "path-like"),
        ("inner[].image", "path-like"),
        ("inner[].n", "int"),
        ("size[0]", "int"),
        ("size[1]", "int"),
        ("anything", "typed"),
        ("loose_pattern", "string"),
    }, got


def test_pattern_width() -> None:
    assert pattern_width(r"^[A-Za-z0-9_.-]{1,64}$") == 64
    assert pattern_width(r"^[a-z]+$") is None
    assert pattern_width(r"[a-z]{1,3}") is None  # not anchored: matches inside anything


def test_edgeva_check_reports_a_third_party_types_unbounded_args() -> None:
    """``edgeva check`` holds installed third-party types to the same rule: the deployment
    stays valid (the agent accepts it), each unbounded arg is a warning with its path."""
    registry = {**BUILTIN, "loose": _Loose}
    dep = {"app": "a", "modules": {"l": {"type": "loose", "args": {}}}}
    result = check_deployment(json.dumps(dep), registry)
    assert result.ok, result.errors
    paths = {w["path"] for w in result.to_dict()["warnings"]}
    assert {"modules.l.args.threads", "modules.l.args.model", "modules.l.args.inner[].n"} <= paths, paths
    assert all("'loose' leaves this arg unbounded" in w["message"] for w in result.warnings)
    # built-in types: no warning
    dep = {"app": "a", "modules": {"d": {"type": "decoder", "args": {"source": "synthetic"}}}}
    assert check_deployment(json.dumps(dep), BUILTIN).warnings == []


def test_installed_example_type_is_checked_too() -> None:
    """The example third-party package (examples/edgeva-brightness), when installed, is walked
    like any type; whatever it leaves unbounded is reported, never an exception."""
    if "brightness" not in REGISTRY:
        pytest.skip("examples/edgeva-brightness is not installed")
    dep = {"app": "a", "modules": {"b": {"type": "brightness", "args": {}}}}
    result = check_deployment(json.dumps(dep), REGISTRY)
    expected = {f"modules.b.args.{f.path}" for f in unbounded_fields(_config(REGISTRY["brightness"]))}
    assert {w["path"] for w in result.warnings} == expected


def test_an_event_over_the_size_cap_is_refused_and_the_module_goes_on() -> None:
    """Issue 20: a 60 KB ``source_id`` went into every event. The strings that reach events
    from args are bounded now (``source_id`` <= 128, a live source's default is its URL without
    credentials, cut to 128); and whatever a module builds, an event over ``MAX_EVENT_BYTES``
    is refused in ``ctx.emit`` (from ``process``: that input is refused, the module goes on)."""
    from edgeva.modules.base import MAX_EVENT_BYTES, ModuleContext, ModuleError
    from edgeva.modules.decoder import stream_name
    from edgeva.modules.publish import Publish, PublishConfig
    from edgeva.schemas.message import Message

    sent: list[dict] = []
    pub = Publish(PublishConfig(), ModuleContext("pub", emit=sent.append))
    pub.setup()
    pub.process(Message(1, "cam", fields={"n": 1}))
    with pytest.raises(ModuleError, match=f"event of 10[0-9]{{4}} bytes refused: the limit is {MAX_EVENT_BYTES}"):
        pub.process(Message(2, "cam", fields={"big": ["x" * 98] * 1000}))
    with pytest.raises(ModuleError, match="MAX_EVENT_BYTES"):
        pub.process(Message(3, "s" * MAX_EVENT_BYTES, fields={"n": 3}))
    pub.process(Message(4, "cam", fields={"n": 4}))
    assert [e["frame_id"] for e in sent] == [1, 4]
    assert stream_name("rtsp://admin:secret@cam-1:554/live") == "rtsp://cam-1:554/live"
    assert len(stream_name("rtsp://cam/" + "x" * 5000)) == 128
