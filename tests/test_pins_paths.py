"""Pins of path confinement against sibling folders that share a prefix (issue 25): ``media``
is not ``media-private``, tenant ``acme`` is not ``acme2``. A string-prefix check (``startswith``
on the resolved path) passes every case refused here. Real directories and files, resolved
through symbolic links as the agent resolves them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.paths import PathPolicy
from schemas.errors import EdgevaError


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
