"""Where tenants' modules may read and write: the agent confines every path a deployment names.

A module config marks the args that are paths with ``json_schema_extra={"edgeva_path": KIND}``:

- ``source`` (decoder ``source``): a media source. ``synthetic``, a camera (``0``,
  ``/dev/video0``) and ``asset:<name>`` (a clip bundled with edgeva) are always allowed; a URL
  only with an allowed scheme (``--url-scheme``, default rtsp, rtsps) and a host the operator
  listed (``--url-host``: names, IP addresses or networks such as ``192.168.1.0/24``; ``*``
  for any host; none listed: no URL); any other ``word:`` prefix (FFmpeg protocols such as
  ``concat:``, ``file:``, ``subfile:``) is refused; anything else is a file to read.
- ``read`` (detector and reid ``model``, reid gallery ``image``): a file to read
  (``asset:<name>`` and ``base64:`` data pass). Models nested in a config (a list of
  templates) are walked, and so is the chosen member of a discriminated union (a detector's
  ``backend``), whether its args are inside the field or flat beside its name.
- ``server`` (the triton backends' ``url``, ``host:port``): a server a module connects to; its
  host must be listed like a URL source's (``--url-host``). Checked when the tenant gives it
  (the default is the type author's, not the tenant's).
- ``output`` (annotate ``output``): a file to create or truncate; ``mjpeg://HOST:PORT`` (a
  server, not a path) passes.

Files read must lie, after resolving ``~``, ``..`` and symbolic links (relative paths are relative
to the agent's working directory, as the module process sees them), inside one of the media
directories (``--media-dir``, every tenant) or the tenant's own (``--tenant-media-root
ROOT``: ``ROOT/<tenant>``). Files written must lie inside the tenant's output directory
(``--output-root ROOT``: ``ROOT/<tenant>``, made on first use); inside the output root a tenant
reads only its own directory (the default media directory contains it). Defaults: media = the agent's
working directory (none when that is ``/``), output root = ``./out``. The check runs before a
module's config is validated, so that not even whether a file exists leaks.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel

from edgeva.agent.settings import default
from edgeva.schemas.deployment import Deployment
from edgeva.schemas.errors import BAD_ARGS, EdgevaError, shown

PATH_MARK = "edgeva_path"
DEFAULT_SCHEMES: tuple[str, ...] = tuple(default("url_scheme"))  # --url-scheme
ANY_HOST = "*"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PROTOCOL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # FFmpeg reads "concat:a|b", "file:x", ...
_CAMERA = re.compile(r"^\d+$|^/dev/video\d+$")
_ASSET = re.compile(r"^asset:[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
_MJPEG = "mjpeg://"


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``Model``, ``list[Model]``, ``Model | None``... or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _tagged_members(info: Any) -> dict[Any, type[BaseModel]]:
    """Tag -> model of a field holding one of several models told apart by a discriminator
    (a detector's ``backend``); empty for any other field."""
    key = info.discriminator
    if not isinstance(key, str):
        return {}
    return {m.model_fields[key].default: m for m in get_args(info.annotation) if key in getattr(m, "model_fields", ())}


def _url_host(value: str) -> str:
    try:
        return (urlsplit(value).hostname or "").lower()
    except ValueError:  # a malformed IPv6 literal, a bad port: no host to allow
        return ""


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise ValueError(f"--url-host {text!r}: not a network (e.g. 192.168.1.0/24): {e}") from None


def make_private_dir(path: Path) -> None:
    """``path`` (and its parents) made if missing; ``path`` itself 0700: a tenant's outputs
    (its annotated video) are no other local user's to read."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        path.chmod(0o700)  # made earlier, before outputs were private


def _under(path: Path, dirs: Iterable[Path]) -> bool:
    return any(path == d or path.is_relative_to(d) for d in dirs)


@dataclass(frozen=True)
class PathPolicy:
    """What tenants' modules may read and write (see the module docstring).

    ``media_dirs``: readable by every tenant; ``tenant_media_root``: ``ROOT/<tenant>`` readable
    by that tenant; ``output_root``: ``ROOT/<tenant>`` writable by that tenant;
    ``output_dirs``: explicit per-tenant output directories (win over ``output_root``; the demo
    writes its video straight into ``--out``); ``url_schemes``/``url_hosts``: URLs a source may
    name (``url_hosts``: names and IP addresses, ``url_networks``: networks; ``*`` in
    ``url_hosts``: any host; both empty: no URL at all)."""

    media_dirs: tuple[Path, ...] = ()
    tenant_media_root: Path | None = None
    output_root: Path | None = None
    output_dirs: Mapping[str, Path] = field(default_factory=dict)
    url_schemes: frozenset[str] = frozenset(DEFAULT_SCHEMES)
    url_hosts: frozenset[str] = frozenset()
    url_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    cwd: Path = field(default_factory=Path.cwd)

    @classmethod
    def make(cls, media_dirs: Iterable[str | Path] | None = None, tenant_media_root: str | Path | None = None,
             output_root: str | Path | None = None, output_dirs: Mapping[str, str | Path] | None = None,
             url_schemes: Iterable[str] | None = None, url_hosts: Iterable[str] | None = None) -> PathPolicy:
        """A policy with the defaults filled in: media = the working directory (none when it
        is ``/``: that would be every file), output root = ``./out``, no URL host; paths
        resolved now. ``url_hosts`` entries with a ``/`` are networks (``10.0.0.0/8``);
        ``ValueError`` names a bad one."""
        cwd = Path.cwd().resolve()
        if media_dirs is None:
            media_dirs = [] if cwd == Path("/") else [cwd]
        res = lambda p: (cwd / Path(p).expanduser()).resolve()  # noqa: E731
        return cls(
            media_dirs=tuple(res(d) for d in media_dirs),
            tenant_media_root=res(tenant_media_root) if tenant_media_root else None,
            output_root=res(output_root if output_root is not None else default("output_root")),
            output_dirs={t: res(d) for t, d in (output_dirs or {}).items()},
            url_schemes=frozenset(s.lower() for s in (url_schemes if url_schemes is not None else DEFAULT_SCHEMES)),
            url_hosts=frozenset(h.lower() for h in (url_hosts or ()) if "/" not in h),
            url_networks=tuple(_network(h) for h in (url_hosts or ()) if "/" in h),
            cwd=cwd,
        )

    # -- what a tenant may use ------------------------------------------------------------------
    def read_dirs(self, tenant: str) -> list[Path]:
        dirs = list(self.media_dirs)
        if self.tenant_media_root is not None:
            dirs.append(self.tenant_media_root / tenant)
        return dirs

    def output_dir(self, tenant: str) -> Path | None:
        if tenant in self.output_dirs:
            return self.output_dirs[tenant]
        return self.output_root / tenant if self.output_root is not None else None

    def _resolve(self, value: str) -> Path:
        return (self.cwd / Path(value).expanduser()).resolve()

    # -- checks -------------------------------------------------------------------------------
    def check(self, tenant: str, kind: str, value: str, where: str) -> None:
        """Raise ``EdgevaError(bad_args, path=where)`` unless ``tenant`` may use ``value``."""
        if kind == "source":
            self._source(tenant, value, where)
        elif kind == "server":
            self._server(value, where)
        elif kind == "output":
            self._write(tenant, value, where)
        else:
            self._read(tenant, value, where)

    def _source(self, tenant: str, value: str, where: str) -> None:
        if value == "synthetic" or _CAMERA.match(value) or _ASSET.match(value):
            return
        url = _URL.match(value)
        if url:
            scheme = url.group(1).lower()
            if scheme not in self.url_schemes:
                allowed = ", ".join(sorted(self.url_schemes)) or "none"
                raise EdgevaError(BAD_ARGS, f"source {shown(value)}: URL scheme {scheme!r} is not allowed on this "
                                  f"device (allowed: {allowed}; the agent's --url-scheme)", where)
            self._host(value, _url_host(value), where)
            return
        if value.startswith("asset:"):
            raise EdgevaError(BAD_ARGS, f"source {shown(value)}: asset:<name> names a bundled clip, a plain "
                              "file name", where)
        if _PROTOCOL.match(value):
            raise EdgevaError(BAD_ARGS, f"source {shown(value)}: not a file, a camera or a URL (FFmpeg "
                              "protocols such as concat:, file:, subfile: are refused)", where)
        self._read(tenant, value, where)

    def host_allowed(self, host: str) -> bool:
        """Whether a module may connect to ``host`` (a name or an IP address, as written)."""
        if ANY_HOST in self.url_hosts or host in self.url_hosts:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.url_networks)

    def _host(self, value: str, host: str, where: str) -> None:
        # A tenant must not reach other hosts of the network through its modules (a decoder's
        # open is a port scanner: it connects where it is told). The operator lists where the
        # cameras and servers are; with no list, nothing is reached.
        if self.host_allowed(host):
            return
        if not self.url_hosts and not self.url_networks:
            raise EdgevaError(BAD_ARGS, f"{shown(value)}: this device connects to no host until its operator "
                              "lists them (the agent's --url-host HOST or NETWORK/BITS; '*' for any host)", where)
        raise EdgevaError(BAD_ARGS, f"{shown(value)}: host {shown(host)} is not one this device may connect to "
                          "(the agent's --url-host list)", where)

    def _server(self, value: str, where: str) -> None:
        """A server a module connects to: ``host:port`` or ``scheme://host:port[/...]``."""
        self._host(value, _url_host(value if "://" in value else f"//{value}"), where)

    def _read(self, tenant: str, value: str, where: str) -> None:
        if _ASSET.match(value) or value.startswith("base64:"):  # bundled, or the data itself
            return
        dirs = self.read_dirs(tenant)
        path = self._resolve(value)
        if not _under(path, dirs):
            shown_dirs = ", ".join(str(d) for d in dirs) or "none are configured"
            raise EdgevaError(BAD_ARGS, f"{shown(value)} is outside the media directories this tenant may read "
                              f"({shown_dirs}; the agent's --media-dir / --tenant-media-root)", where)
        # The default media directory (the working directory) holds the output root: what
        # other tenants wrote there (their annotated videos) is theirs alone.
        outputs = [d for d in (self.output_root, *self.output_dirs.values()) if d is not None]
        own = self.output_dir(tenant)
        if _under(path, outputs) and not (own is not None and _under(path, [own])):
            raise EdgevaError(BAD_ARGS, f"{shown(value)} lies in the tenants' output directories; a tenant "
                              "reads only its own outputs", where)

    def _write(self, tenant: str, value: str, where: str) -> None:
        if value.startswith(_MJPEG):
            return
        out = self.output_dir(tenant)
        if out is None or not _under(self._resolve(value), [out]):
            raise EdgevaError(BAD_ARGS, f"{shown(value)} is outside this tenant's output directory "
                              f"({out or 'none is configured'}; the agent's --output-root); write e.g. "
                              f"{os.path.relpath(out / 'video.mp4', self.cwd) if out else 'nothing'}", where)
        make_private_dir(out)  # so that a video straight in it can be written

    def check_deployment(self, tenant: str, dep: Deployment, registry: Mapping[str, Any], device: str) -> None:
        """Check every path arg of the modules of ``dep`` that run on ``device`` (another
        device's agent checks its own); unknown types are left to ``validate_graph``."""
        for name, spec in dep.modules.items():
            if spec.device not in (None, device) or spec.type not in registry:
                continue
            self.check_args(tenant, spec.type, spec.args, registry, f"modules.{name}.args")

    def check_args(self, tenant: str, type_name: str, args: Mapping[str, Any], registry: Mapping[str, Any],
                   where: str) -> None:
        """Check the path args (given, or their defaults) of one module of type ``type_name``,
        and those of the models nested in them (a reid gallery's template images)."""
        self._check_model(tenant, getattr(registry[type_name], "config_class", registry[type_name]), args, where)

    def _check_model(self, tenant: str, cls: type[BaseModel], args: Mapping[str, Any], where: str) -> None:
        for fname, info in cls.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            kind = extra.get(PATH_MARK)
            if kind == "server" and fname not in args:
                continue  # the type's default server is its author's choice, not the tenant's
            value = args.get(fname, None if info.is_required() else info.default)
            if kind is not None:
                if isinstance(value, str):
                    self.check(tenant, str(kind), value, f"{where}.{fname}")
                continue
            members = _tagged_members(info)
            if members:
                if isinstance(value, Mapping):  # the model's args inside the field
                    member = members.get(value.get(info.discriminator))
                    if member is not None:
                        self._check_model(tenant, member, value, f"{where}.{fname}")
                    continue
                # Flat: the field holds the tag (or is left out: the default's), the model's
                # args lie beside it, where the config's validator picks them up.
                tag = value if fname in args else getattr(info.get_default(call_default_factory=True),
                                                           str(info.discriminator), None)
                member = members.get(tag) if isinstance(tag, str) else None
                if member is not None:
                    self._check_model(tenant, member, args, where)
                continue
            nested = _nested_model(info.annotation)
            if nested is None:
                continue
            items = enumerate(value) if isinstance(value, list) else [(None, value)]
            for i, item in items:
                if isinstance(item, Mapping):
                    self._check_model(tenant, nested, item, f"{where}.{fname}" + (f"[{i}]" if i is not None else ""))
