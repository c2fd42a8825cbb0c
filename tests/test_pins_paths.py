"""Pins of path confinement against sibling folders that share a prefix (issue 25): ``media``
is not ``media-private``, tenant ``acme`` is not ``acme2``. A string-prefix check (``startswith``
on the resolved path) passes every case refused here. Real directories and files, resolved
through symbolic links as the agent resolves them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import pytest
from pydantic import BaseModel, Field

from edgeva.agent.paths import PathPolicy
from edgeva.schemas.errors import EdgevaError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for d in ("media", "media-private", "tenants/acme", "tenants/acme2", "out/acme", "out/acme2"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "clip.mp4").write_bytes(b"x")
    (tmp_path / "media" / "link.mp4").symlink_to(tmp_path / "media-private" / "clip.mp4")
    return tmp_path


@pytest.fixture
def policy(tree: Path) -> PathPolicy:
    return PathPolicy.make(media_dirs=[tree / "media"], tenant_media_root=tree / "tenants",
                           output_root=tree / "out")


def _refused(policy: PathPolicy, tenant: str, kind: str, value: str) -> str:
    with pytest.raises(EdgevaError) as e:
        policy.check(tenant, kind, value, "modules.m.args.x")
    assert e.value.code == "bad_args" and e.value.path == "modules.m.args.x"
    return str(e.value)


def test_the_folders_themselves_are_allowed(tree: Path, policy: PathPolicy) -> None:
    policy.check("acme", "source", str(tree / "media" / "clip.mp4"), "w")
    policy.check("acme", "read", str(tree / "tenants" / "acme" / "clip.mp4"), "w")
    policy.check("acme", "output", str(tree / "out" / "acme" / "v.mp4"), "w")
    policy.check("acme2", "read", str(tree / "tenants" / "acme2" / "clip.mp4"), "w")


@pytest.mark.parametrize("kind", ["source", "read"])
def test_a_sibling_media_folder_sharing_the_prefix_is_outside(tree: Path, policy: PathPolicy, kind: str) -> None:
    msg = _refused(policy, "acme", kind, str(tree / "media-private" / "clip.mp4"))
    assert "outside the media directories" in msg
    # ... also reached through ".." from inside, or a link inside media pointing there
    _refused(policy, "acme", kind, str(tree / "media" / ".." / "media-private" / "clip.mp4"))
    _refused(policy, "acme", kind, str(tree / "media" / "link.mp4"))


def test_a_tenant_reads_no_media_of_a_tenant_whose_name_extends_its_own(tree: Path, policy: PathPolicy) -> None:
    _refused(policy, "acme", "read", str(tree / "tenants" / "acme2" / "clip.mp4"))
    _refused(policy, "acme", "source", str(tree / "tenants" / "acme2" / "clip.mp4"))


def test_a_tenant_writes_no_output_of_a_tenant_whose_name_extends_its_own(tree: Path, policy: PathPolicy) -> None:
    msg = _refused(policy, "acme", "output", str(tree / "out" / "acme2" / "v.mp4"))
    assert "outside this tenant's output directory" in msg
    assert not (tree / "out" / "acme2" / "v.mp4").exists()


def test_a_tenant_reads_no_output_of_a_tenant_whose_name_extends_its_own(tree: Path) -> None:
    # media = the whole tree (holds the output root): another tenant's outputs are refused,
    # the tenant's own are not, and "acme2" is another tenant for "acme"
    policy = PathPolicy.make(media_dirs=[tree], output_root=tree / "out")
    policy.check("acme", "read", str(tree / "out" / "acme" / "clip.mp4"), "w")
    msg = _refused(policy, "acme", "read", str(tree / "out" / "acme2" / "clip.mp4"))
    assert "reads only its own outputs" in msg
    _refused(policy, "acme2", "read", str(tree / "out" / "acme" / "clip.mp4"))


# -- hosts a module may reach (killing the survivors of `make mutants` on agent/paths.py) ----------
def test_no_host_is_reachable_until_the_operator_lists_one(tmp_path: Path) -> None:
    policy = PathPolicy.make(media_dirs=[tmp_path])
    assert not policy.host_allowed("10.0.0.5")
    msg = _refused(policy, "acme", "source", "rtsp://10.0.0.5/cam")
    assert "connects to no host until its operator lists them" in msg
    assert "connects to no host" in _refused(policy, "acme", "server", "10.0.0.5:8001")


def test_listed_hosts_names_networks_and_any(tmp_path: Path) -> None:
    policy = PathPolicy.make(media_dirs=[tmp_path], url_hosts=["cam.local", "10.1.0.0/16", "192.168.1.7"])
    for host in ("cam.local", "10.1.2.3", "192.168.1.7"):
        assert policy.host_allowed(host), host
        policy.check("acme", "source", f"rtsp://{host}:554/x", "w")
        policy.check("acme", "server", f"{host}:8001", "w")
        policy.check("acme", "server", f"grpc://{host}:8001/v2", "w")
    for host in ("cam.local.evil", "10.2.0.1", "192.168.1.8", "not-an-ip"):
        assert not policy.host_allowed(host), host
        msg = _refused(policy, "acme", "source", f"rtsp://{host}/x")
        assert "is not one this device may connect to" in msg
        _refused(policy, "acme", "server", f"{host}:8001")
    assert "URL scheme 'http' is not allowed" in _refused(policy, "acme", "source", "http://cam.local/x")
    anyhost = PathPolicy.make(media_dirs=[tmp_path], url_hosts=["*"])
    assert anyhost.host_allowed("anything.example") and anyhost.host_allowed("8.8.8.8")


def test_a_types_default_server_is_not_the_tenants_choice(tmp_path: Path) -> None:
    from edgeva.modules.registry import load_registry

    registry = load_registry()
    policy = PathPolicy.make(media_dirs=[tmp_path])  # no host listed
    args = {"backend": "triton", "model_name": "m"}
    policy.check_args("acme", "detector", args, registry, "modules.det.args")  # default url: not checked
    with pytest.raises(EdgevaError, match="connects to no host") as e:
        policy.check_args("acme", "detector", {**args, "url": "10.9.9.9:8001"}, registry, "modules.det.args")
    assert e.value.path == "modules.det.args.url"


def test_default_media_is_the_working_directory_never_the_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert PathPolicy.make().media_dirs == (tmp_path.resolve(),)
    monkeypatch.chdir("/")
    assert PathPolicy.make().media_dirs == ()
    _refused(PathPolicy.make(), "acme", "read", "/etc/hostname")


def test_an_output_dir_is_made_private_even_if_it_existed_open(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "acme").mkdir(parents=True, mode=0o755)
    (out / "acme").chmod(0o755)
    policy = PathPolicy.make(media_dirs=[tmp_path], output_root=out)
    policy.check("acme", "output", str(out / "acme" / "v.mp4"), "w")
    assert (out / "acme").stat().st_mode & 0o777 == 0o700
    policy.check("globex", "output", str(out / "globex" / "v.mp4"), "w")  # made here
    assert (out / "globex").stat().st_mode & 0o777 == 0o700


def test_a_default_path_of_a_type_is_checked_like_a_given_one(tmp_path: Path) -> None:
    from pydantic import BaseModel, Field

    class Cfg(BaseModel):
        model: str = Field("/etc/hostname", json_schema_extra={"edgeva_path": "read"})
        needed: str = Field(json_schema_extra={"edgeva_path": "read"})

    policy = PathPolicy.make(media_dirs=[tmp_path])
    ok = str(tmp_path / "m.onnx")
    with pytest.raises(EdgevaError) as e:  # the type's default lies outside the media dirs
        policy.check_args("acme", "t", {"needed": ok}, {"t": Cfg}, "modules.m.args")
    assert e.value.path == "modules.m.args.model"
    policy.check_args("acme", "t", {"needed": ok, "model": ok}, {"t": Cfg}, "modules.m.args")
    policy.check_args("acme", "t", {"model": ok}, {"t": Cfg}, "modules.m.args")  # missing: the schema's job


def test_networks_may_be_written_with_host_bits_and_the_policy_is_frozen(tmp_path: Path) -> None:
    import dataclasses

    policy = PathPolicy.make(media_dirs=[tmp_path], url_hosts=["192.168.1.7/24"])
    assert policy.host_allowed("192.168.1.200") and not policy.host_allowed("192.168.2.1")
    with pytest.raises(ValueError, match="--url-host 'x/y': not a network"):
        PathPolicy.make(url_hosts=["x/y"])
    with pytest.raises(dataclasses.FrozenInstanceError):  # shared by the agent's threads
        policy.url_hosts = frozenset({"*"})  # type: ignore[misc]


def test_sources_that_are_never_files_and_the_messages_of_an_empty_policy(tmp_path: Path, monkeypatch) -> None:
    policy = PathPolicy.make(media_dirs=[tmp_path], url_hosts=["cam.local"])
    for ok in ("synthetic", "0", "/dev/video2", "asset:vtest.mp4"):
        policy.check("acme", "source", ok, "w")
    # hosts listed, no network: another host is "not one this device may connect to"
    assert "is not one this device may connect to" in _refused(policy, "acme", "source", "rtsp://cam2.local/x")
    # a URL whose host cannot be parsed reaches no host (and is no crash)
    assert "is not one" in _refused(policy, "acme", "source", "rtsp://[::1/x")
    no_schemes = PathPolicy.make(media_dirs=[tmp_path], url_schemes=[], url_hosts=["*"])
    assert "(allowed: none;" in _refused(no_schemes, "acme", "source", "rtsp://cam.local/x")
    monkeypatch.chdir("/")
    assert "(none are configured;" in _refused(PathPolicy.make(), "acme", "read", "/etc/hostname")


def test_a_server_default_does_not_stop_the_check_of_the_args_after_it(tmp_path: Path) -> None:
    from pydantic import BaseModel, Field

    class Cfg(BaseModel):
        url: str = Field("localhost:1", json_schema_extra={"edgeva_path": "server"})
        model: str = Field("asset:m", json_schema_extra={"edgeva_path": "read"})

    policy = PathPolicy.make(media_dirs=[tmp_path])
    with pytest.raises(EdgevaError) as e:
        policy.check_args("acme", "t", {"model": "/etc/hostname"}, {"t": Cfg}, "modules.m.args")
    assert e.value.path == "modules.m.args.model"


def test_a_deployment_is_checked_past_modules_of_other_devices_and_unknown_types(tmp_path: Path) -> None:
    from edgeva.modules.registry import load_registry
    from edgeva.schemas.deployment import parse_deployment

    dep = parse_deployment({"app": "a", "modules": {
        "a_remote": {"type": "decoder", "device": "other", "args": {"source": "/etc/hostname"}, "outputs": ["c_local"]},
        "b_unknown": {"type": "nosuch", "args": {}},
        "c_local": {"type": "decoder", "args": {"source": "/etc/hostname"}},
    }})
    policy = PathPolicy.make(media_dirs=[tmp_path])
    with pytest.raises(EdgevaError) as e:
        policy.check_deployment("acme", dep, load_registry(), "here")
    assert e.value.path == "modules.c_local.args.source"


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root: a directory owned by another user")
def test_an_output_dir_of_another_owner_is_not_changed(tmp_path: Path) -> None:
    import os
    import pwd

    out = tmp_path / "out"
    theirs = out / "acme"
    theirs.mkdir(parents=True)
    theirs.chmod(0o755)
    os.chown(theirs, pwd.getpwnam("nobody").pw_uid, -1)
    PathPolicy.make(media_dirs=[tmp_path], output_root=out).check("acme", "output", str(theirs / "v.mp4"), "w")
    assert theirs.stat().st_mode & 0o777 == 0o755  # not ours to change


@pytest.mark.parametrize("mode", [0o701, 0o640, 0o750, 0o707])
def test_an_output_dir_with_any_group_or_other_bit_is_made_private(tmp_path: Path, mode: int) -> None:
    out = tmp_path / "out"
    (out / "acme").mkdir(parents=True)
    (out / "acme").chmod(mode)
    PathPolicy.make(media_dirs=[tmp_path], output_root=out).check("acme", "output", str(out / "acme" / "v"), "w")
    assert (out / "acme").stat().st_mode & 0o777 == 0o700


SECRET = "/etc/hostname"
FAR = "10.9.9.9:8001"


@pytest.mark.parametrize("args, where", [
    ({"model": SECRET}, "model"),  # flat, the default backend (onnx)
    ({"backend": "onnx", "model": SECRET}, "model"),
    ({"backend": {"type": "onnx", "model": SECRET}}, "backend.model"),
    ({"backend": "triton", "model_name": "m", "url": FAR}, "url"),
    ({"backend": {"type": "triton", "model_name": "m", "url": FAR}}, "backend.url"),
])
def test_a_detector_backends_paths_are_confined_in_either_form(tmp_path: Path, args: dict, where: str) -> None:
    """A backend's args live in its own config (``modules/detectors``): written flat beside the
    backend's name or inside ``backend``, each is checked where the deployment wrote it."""
    from edgeva.modules.registry import load_registry

    policy = PathPolicy.make(media_dirs=[tmp_path])
    with pytest.raises(EdgevaError) as e:
        policy.check_args("acme", "detector", args, load_registry(), "modules.det.args")
    assert e.value.code == "bad_args" and e.value.path == f"modules.det.args.{where}"


def test_a_detector_backends_paths_inside_the_media_pass(tmp_path: Path) -> None:
    from edgeva.modules.registry import load_registry

    policy, reg, inside = PathPolicy.make(media_dirs=[tmp_path]), load_registry(), str(tmp_path / "m.onnx")
    for args in ({"model": inside}, {"backend": {"type": "onnx", "model": inside}}, {"backend": "opencv-hog"},
                 {"backend": {"type": "triton", "model_name": "m"}},  # the type's default url: not the tenant's
                 # another or no backend: validation refuses them, opening nothing
                 {"backend": "opencv-hog", "model": SECRET}, {"backend": "nope", "model": SECRET},
                 {"backend": {"type": "nope", "model": SECRET}}, {"backend": {"model": SECRET}}):
        policy.check_args("acme", "detector", args, reg, "modules.det.args")


class _Local(BaseModel):
    type: Literal["local"] = "local"
    file: str | None = Field(None, json_schema_extra={"edgeva_path": "read"})


class _Remote(BaseModel):
    type: Literal["remote"] = "remote"
    url: str = Field("localhost:1", json_schema_extra={"edgeva_path": "server"})


class _TwoPlaces(BaseModel):
    """A union field with a path field after it (and one before): each is checked."""

    type: Literal["two"] = "two"
    first: str | None = Field(None, json_schema_extra={"edgeva_path": "read"})
    where: Annotated[Union[_Local, _Remote, None], Field(discriminator="type")] = Field(default_factory=_Local)  # noqa: UP007
    last: str | None = Field(None, json_schema_extra={"edgeva_path": "read"})


@pytest.mark.parametrize("args, path", [
    ({"where": {"type": "local", "file": SECRET}}, "where.file"),
    ({"where": "local", "file": SECRET}, "file"),
    ({"file": SECRET}, "file"),  # no tag: the default's
    ({"where": "remote", "url": FAR}, "url"),
    ({"where": {"type": "remote", "url": FAR}}, "where.url"),
    # the fields after the union are checked too, whichever form it takes
    ({"where": {"type": "local"}, "last": SECRET}, "last"),
    ({"where": "remote", "last": SECRET}, "last"),
    ({"where": {"type": "nope"}, "last": SECRET}, "last"),
    ({"where": "nope", "last": SECRET}, "last"),
    ({"first": str(Path(__file__)), "last": SECRET}, "last"),  # after a path field that passes
])
def test_every_path_field_is_checked_around_a_union(tmp_path: Path, args: dict, path: str) -> None:
    policy = PathPolicy.make(media_dirs=[Path(__file__).parent])
    with pytest.raises(EdgevaError) as e:
        policy.check_args("acme", "two", args, {"two": _TwoPlaces}, "m")
    assert e.value.path == f"m.{path}"


def test_a_reid_models_path_then_its_server_are_both_checked(tmp_path: Path) -> None:
    from edgeva.modules.registry import load_registry

    policy = PathPolicy.make(media_dirs=[tmp_path])
    args = {"gallery": [{"name": "p", "image": "asset:demo_person.png"}], "backend": "triton", "threshold": 0.5,
            "model": str(tmp_path / "m.onnx"), "triton": {"url": FAR}}
    with pytest.raises(EdgevaError) as e:
        policy.check_args("acme", "reid", args, load_registry(), "modules.r.args")
    assert e.value.path == "modules.r.args.triton.url"
