"""Apps that span devices (modules with a ``device`` other than this one): their coordination.

The agent that receives such a deploy, from any MQTT client, coordinates it: it checks the whole
graph against the fleet's retained states (a device that is offline or unknown:
``unknown_device``, nothing starts), sends every other device its part (the whole graph with
every ``device`` filled in and ``part_of: {coordinator, hold: true}``) as a deploy on that
device's command topic with the same tenant, starts its own part, and once every part runs sends
each a ``start`` (their sources were held so that no frame leaves before its consumer listens; a
part first waits for its links to be up, ``link_timeout``) and lets its own sources go. It
replies ok only then; if a part fails or does not answer within ``part_timeout``, every part
started is removed again and the reply carries the part's error, its path prefixed with
``devices.<device>.``. ``stop``/``remove``/``start`` of the app on the coordinator reach every
online part; ``update`` is applied where the module runs (on a part: by a deploy of the new
graph with the fleet token, ``_adopt_part``) and the new graph then sent to every online part
(``_update``); a part that receives an ``update`` forwards it to its coordinator and relays the
reply (``forward``, off the command worker: the coordinator's phases need it). A restarted part
asks its coordinator whether the app still exists, and for its current graph (``part`` in the
``status`` reply), before restoring it (``keep_part``). While it waits for a part, that tenant's
command worker is busy: two agents coordinating apps of one tenant through each other at the
same moment wait for each other until the part timeout, and both deploys are rolled back (other
tenants' commands go on). Parts are accepted only with the fleet token.

``Coordinator`` knows no MQTT: the bridge (``agent.bridge``) owns it and hands it how to send a
command to another agent and wait for its reply (``request``), how to run work on a tenant's
command worker in order with that tenant's commands (``submit``), and whether a tenant's saved
apps are back (``ready``).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edgeva.agent.core import AgentCore, App, remote_devices
from edgeva.agent.fleet import FleetView, pipeline_hops
from edgeva.agent.settings import default
from edgeva.schemas.commands import (
    RemoveCommand,
    StartCommand,
    StopCommand,
    UpdateCommand,
    error_reply,
    ok_reply,
)
from edgeva.schemas.deployment import Deployment, PartOf
from edgeva.schemas.errors import (
    FORBIDDEN,
    INTERNAL,
    LIMIT,
    SETUP_FAILED,
    TIMEOUT,
    UNKNOWN_DEVICE,
    EdgevaError,
)
from edgeva.schemas.graph import validate_graph
from edgeva.schemas.metrics import HopMetrics

log = logging.getLogger("edgeva.bridge")  # the bridge's logger, as before the split: operators grep it
PART_TIMEOUT_S: float = default("part_timeout")  # --part-timeout
LINK_TIMEOUT_S: float = default("link_timeout")  # --link-timeout
RESTORE_ASK_S = 5.0  # a restarting part asks its coordinator whether the app still exists
MAX_FORWARDS = 4  # updates one tenant may have waiting on a coordinator at once (a thread each)
CONVERGE_EVERY_S = 3.0  # how often parts that missed an update, or a coordinator's word, are retried

#: ``request(device, tenant, verb, payload, timeout)``: send a command to another agent and wait
#: for its reply (a dict; a timeout or a failure to send reads as an error reply)
Request = Callable[[str, str, str, dict, float], dict]
#: ``submit(tenant, fn, what)``: run ``fn`` on the tenant's command worker, in order with its commands
Submit = Callable[[str, Callable[[], None], str], None]


def _part_error(device: str, reply: dict) -> EdgevaError:
    err = reply.get("error") or {}
    path = err.get("path")
    return EdgevaError(err.get("code", INTERNAL), f"device {device!r}: {err.get('message', 'failed')}",
                       f"devices.{device}" + (f".{path}" if path else ""))


class Coordinator:
    """Coordinates the apps spanning devices deployed here, and runs this device's parts of
    apps coordinated elsewhere (see the module's docstring). Owned by ``AgentBridge``."""

    def __init__(
        self,
        core: AgentCore,
        fleet: FleetView,
        request: Request,
        submit: Submit,
        ready: Callable[[str], bool],
        state_changed: Callable[[], None],
        part_timeout: float = PART_TIMEOUT_S,
        link_timeout: float = LINK_TIMEOUT_S,
        fleet_token: str | None = None,
    ) -> None:
        """``part_timeout``: how long a coordinator waits for a part's reply; ``link_timeout``:
        how long a starting part waits for the links its relays use (keep it under
        ``part_timeout``). ``fleet_token``: the secret every agent of the fleet shares; a deploy
        carrying ``part_of`` (agent to agent) is accepted only with it, so that a tenant cannot
        forge parts (None: parts are refused). ``ready(tenant)``: whether the tenant's saved apps
        are back (no retry of its apps runs before); ``state_changed()``: the device state must
        be published again."""
        self.core, self.fleet, self.device = core, fleet, core.device
        self._send, self._submit, self._ready, self._state_changed = request, submit, ready, state_changed
        self.part_timeout, self.link_timeout = part_timeout, link_timeout
        self.fleet_token = fleet_token or None
        self._lock = threading.Lock()
        self._forwards: dict[str, int] = {}  # tenant -> updates waiting on a coordinator (under _lock)
        # Apps spanning devices that are not yet one graph everywhere (see _converge_loop):
        # coordinated here, (tenant, app) -> parts that missed an update; parts here,
        # (tenant, app) -> the coordinator that has not answered since this agent restarted.
        self._unconverged: dict[tuple[str, str], set[str]] = {}
        self._unconfirmed: dict[tuple[str, str], str] = {}
        self._retrying: set[tuple[str, str, str]] = set()  # retries queued on a tenant's worker
        self._graphs: dict[str, tuple[Deployment, Any]] = {}
        self._stop = threading.Event()

    def start(self) -> None:
        """Start retrying what did not converge (``_converge_loop``), until ``stop()``."""
        threading.Thread(target=self._converge_loop, name="converge", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _request(self, device: str, tenant: str, verb: str, payload: dict, timeout: float | None = None) -> dict:
        """``request`` with the part timeout by default."""
        return self._send(device, tenant, verb, payload, self.part_timeout if timeout is None else timeout)

    # -- what the bridge's dispatch asks ------------------------------------------------------------
    def remote_parts(self, app: App) -> set[str]:
        """The other devices of an app coordinated here; empty for a part or an app of this
        device alone (commands on those are the core's)."""
        if app.deployment.part_of is not None:
            return set()
        return remote_devices(app.deployment, self.device)

    def start_part(self, tenant: str, cmd: StartCommand) -> dict:
        """A part's ``start``: its coordinator's go, once the links its relays use are up."""
        return self.core.start(tenant, cmd, link_timeout=self.link_timeout)

    def status_part(self, app: App) -> dict | None:
        """What a restarting part adopts (``part`` of a ``status`` reply) for an app
        coordinated here, without the fleet token (a tenant reads it); None for any other."""
        if app.deployment.part_of is None and remote_devices(app.deployment, self.device):
            return self._part(app.deployment, hold=False, token=False)
        return None

    def deploy(self, tenant: str, dep: Deployment) -> dict:
        """A deploy spanning devices: a coordinator's part (``part_of``), or an operator's app to
        coordinate from here."""
        core = self.core
        if dep.part_of is not None:  # a coordinator's part: it checked the fleet already
            dep = self._authentic_part(dep)
            existing = core.apps.get(dep.app)
            if (existing is not None and existing.tenant == tenant and existing.deployment.part_of is not None
                    and existing.deployment.part_of.coordinator == dep.part_of.coordinator
                    and existing.deployment.model_dump(exclude={"request_id", "part_of"})
                    != dep.model_dump(exclude={"request_id", "part_of"})):
                return self._adopt_part(tenant, existing, dep)  # its coordinator's newer graph (an update)
            return core.deploy(tenant, dep, known_devices=None, hold=dep.part_of.hold)
        remote = remote_devices(dep, self.device)
        if not remote:
            return core.deploy(tenant, dep)
        known = self.fleet.online() | {self.device}
        core.paths.check_deployment(tenant, dep, core.registry, self.device)  # before any config reads a file
        validate_graph(dep, core.registry, None, self.device)  # types, args, graph first: the precise errors
        for name, m in dep.modules.items():
            if m.device and m.device not in known:
                why = "offline" if self.fleet.state(m.device) is not None else "unknown (no agent announced it)"
                raise EdgevaError(UNKNOWN_DEVICE, f"device {m.device!r} is {why}; nothing was deployed",
                                  f"modules.{name}.device")
        _graph, existing = core.check(tenant, dep, known)
        for d in sorted(remote):
            st = self.fleet.state(d)
            if st is None or st.data_addr is None:
                raise EdgevaError(SETUP_FAILED, f"device {d!r} has no data plane (its agent runs without --data-bind)",
                                  f"devices.{d}")
        if existing is not None and existing.status == "running":
            return core.app_result(existing, unchanged=True)
        return self._coordinate(tenant, dep, remote,
                                lambda: core.deploy(tenant, dep, known_devices=known, hold=True), undo="remove")

    def _adopt_part(self, tenant: str, app: App, dep: Deployment) -> dict:
        """A running part gets its coordinator's newer graph (checked authentic): a module of
        it on this device whose args changed is updated in place first (refused: nothing is
        recorded, the coordinator gets the error), then the whole graph is recorded."""
        result: dict = {}
        for name, spec in dep.modules.items():
            old = app.deployment.modules.get(name)
            if (old is not None and spec.device == self.device and old.type == spec.type
                    and old.args != spec.args):
                result = self.core.update(tenant, UpdateCommand(app=dep.app, module=name, args=spec.args))
        return {**result, **self.core.adopt(tenant, dep)}

    def _authentic_part(self, dep: Deployment) -> Deployment:
        """``dep`` without its token if it carries this fleet's token, else ``FORBIDDEN``: only
        agents send parts (a forged one skipped the fleet check, and each made-up peer cost a
        listener, its threads and a ring)."""
        po = dep.part_of
        assert po is not None
        if self.fleet_token is None:
            raise EdgevaError(FORBIDDEN, "part_of is sent by agents only, and this agent has no fleet token: "
                              "start every agent with the same --fleet-token (env EDGEVA_FLEET_TOKEN)", "part_of")
        if po.token is None or not hmac.compare_digest(po.token.encode(), self.fleet_token.encode()):
            raise EdgevaError(FORBIDDEN, "part_of is sent by agents only: the fleet token is missing or wrong",
                              "part_of.token")
        return dep.model_copy(update={"part_of": po.model_copy(update={"token": None})})  # never stored

    def _part(self, dep: Deployment, hold: bool, token: bool = True) -> dict:
        """What every part of an app coordinated here gets: the whole graph, every ``device``
        filled in, ``part_of`` this agent with the fleet token (JSON, without a request id).
        ``token=False``: without it, for replies a tenant reads."""
        part = dep.model_copy(update={
            "request_id": None,
            "modules": {n: m.model_copy(update={"device": m.device or self.device}) for n, m in dep.modules.items()},
            "part_of": PartOf(coordinator=self.device, hold=hold, token=self.fleet_token if token else None),
        }).model_dump(mode="json")
        part.pop("request_id")
        if part["part_of"]["token"] is None:
            del part["part_of"]["token"]
        return part

    # -- an update sent to a part goes to its coordinator -------------------------------------------
    def forward_to(self, tenant: str, verb: str, cmd: Any) -> str | None:
        """The coordinator an ``update`` sent to this part goes to (it propagates it to every
        part), or None: not an update, or not a part of this tenant's app. Every ``update`` of
        a part goes there: a coordinator changes a part's module with a deploy carrying the
        fleet token (``_adopt_part``), never with an ``update``. (Coordinators' updates were
        once told apart by their request ids, which a tenant chooses: an ``update`` sent
        straight to a part with an id like ``<coordinator>.x`` changed that part alone.)"""
        if verb != "update":
            return None
        app = self.core.apps.get(cmd.app)
        if app is None or app.tenant != tenant:
            return None  # the usual not_found/forbidden
        po = app.deployment.part_of
        if po is None or po.coordinator == self.device:
            return None
        return po.coordinator

    def forward(self, coord: str, tenant: str, cmd: UpdateCommand, request_id: str | None,
                answer: Callable[[bytes], None]) -> None:
        """Send an operator's ``update`` to the app's coordinator ``coord`` on a thread of its
        own and hand its reply (JSON, for ``request_id``) to ``answer``, on that thread. Off the
        command worker: the coordinator sends this part the new graph while we wait. At most
        ``MAX_FORWARDS`` per tenant (more: ``limit``, raised here): each waits a minute or more on
        the coordinator, and a flood of updates must cost only the tenant that sends it, not the
        agent's threads."""
        with self._lock:
            n = self._forwards.get(tenant, 0)
            if n >= MAX_FORWARDS:
                raise EdgevaError(LIMIT, f"{n} updates of this tenant already wait on their coordinators "
                                  f"(at most {MAX_FORWARDS}); retry when one is answered", "app")
            self._forwards[tenant] = n + 1
        try:
            threading.Thread(target=self._forward, args=(coord, tenant, cmd, request_id, answer),
                             name="forward", daemon=True).start()
        except BaseException:
            self._forward_done(tenant)
            raise

    def _forward_done(self, tenant: str) -> None:
        with self._lock:
            left = self._forwards.pop(tenant, 1) - 1
            if left > 0:
                self._forwards[tenant] = left

    def _forward(self, coord: str, tenant: str, cmd: UpdateCommand, request_id: str | None,
                 answer: Callable[[bytes], None]) -> None:
        try:
            answer(self._forward_once(coord, tenant, cmd, request_id))
        finally:
            self._forward_done(tenant)

    def _forward_once(self, coord: str, tenant: str, cmd: UpdateCommand, request_id: str | None) -> bytes:
        try:
            if coord not in self.fleet.online():
                raise EdgevaError(UNKNOWN_DEVICE, f"the coordinator of app {cmd.app!r}, device {coord!r}, is offline: "
                                  "an update now would leave the parts with different graphs; retry when it is back",
                                  "app")
            # The coordinator waits on the module's device, then on each part (up to 15 s each).
            timeout = self.part_timeout + 15.0 * (1 + len(remote_devices(self.core.get_app(tenant, cmd.app).deployment,
                                                                          coord)))
            r = self._request(coord, tenant, "update", cmd.model_dump(mode="json", exclude={"request_id"}),
                              timeout=timeout)
            if r.get("ok"):
                return ok_reply(request_id, {**(r.get("result") or {}), "coordinator": coord})
            err = r.get("error") or {}
            return error_reply(request_id, EdgevaError(err.get("code", INTERNAL), f"coordinator {coord!r}: "
                                                       f"{err.get('message', 'failed')}", err.get("path")))
        except EdgevaError as e:
            return error_reply(request_id, e)
        except Exception as e:
            log.exception("forwarding update of %s to %s failed", cmd.app, coord)
            return error_reply(request_id, EdgevaError(INTERNAL, f"{type(e).__name__}: {e}"))

    # -- commands on an app coordinated here --------------------------------------------------------
    def _coordinate(self, tenant: str, dep: Deployment, remote: set[str], start_local, undo: str) -> dict:
        """Start every part (held), then let them all go; on any failure undo every part."""
        payload = self._part(dep, hold=True)
        done: list[str] = []
        local = False
        parts: dict[str, dict] = {}
        try:
            for d in sorted(remote):
                r = self._request(d, tenant, "deploy", payload)
                if not r.get("ok"):
                    raise _part_error(d, r)
                done.append(d)
                parts[d] = r.get("result", {})
            result = start_local()
            local = True
            for d in done:  # every part runs: sources may go (downstream listens everywhere)
                r = self._request(d, tenant, "start", {"app": dep.app})  # it waits for its links
                if not r.get("ok"):
                    raise _part_error(d, r)
            app = self.core.apps.get(dep.app)
            if app is not None:
                self.core.wait_links(app, self.link_timeout)
            self.core.release(dep.app)
        except BaseException:
            for d in done:
                r = self._request(d, tenant, undo, {"app": dep.app}, timeout=15.0)
                if not r.get("ok"):
                    log.error("rollback: %s of part on %s failed: %s", undo, d, r.get("error"))
            if local:
                cmd = RemoveCommand(app=dep.app) if undo == "remove" else StopCommand(app=dep.app)
                getattr(self.core, undo)(tenant, cmd)
            raise
        return {**result, "parts": parts}

    def command(self, tenant: str, verb: str, cmd: Any, app: App, remote: set[str]) -> dict:
        """start/stop/remove/update of an app this agent coordinates (``remote``: its other
        devices, ``remote_parts``)."""
        core = self.core
        if verb == "start":
            if app.status == "running":
                return core.start(tenant, cmd)
            return self._coordinate(tenant, app.deployment, remote,
                                    lambda: core.start(tenant, StartCommand(app=cmd.app), hold=True), undo="stop")
        if verb == "update":
            assert isinstance(cmd, UpdateCommand)
            return self._update(tenant, cmd, app, remote)
        result = getattr(core, verb)(tenant, cmd)
        parts = {}
        for d in sorted(remote):
            if d not in self.fleet.online():  # do not wait on a device known to be down
                parts[d] = {"error": {"code": UNKNOWN_DEVICE, "message": f"device {d!r} is offline; its part "
                                      "is dropped when its agent restarts (it asks this coordinator)"}}
                continue
            r = self._request(d, tenant, verb, {"app": cmd.app}, timeout=min(15.0, self.part_timeout))
            parts[d] = r.get("result") if r.get("ok") else {"error": r.get("error")}
        return {**result, "parts": parts}

    def _update(self, tenant: str, cmd: UpdateCommand, app: App, remote: set[str]) -> dict:
        """``update`` of a module of an app this agent coordinates: the module's device applies
        it, then every part gets the new graph (it records it and also receives on the new
        stream names), then every part sends on the new names (``start``). Every part's
        desired state stays the same graph: a restarted part computes the names the others use."""
        core = self.core
        spec = app.deployment.modules.get(cmd.module)
        where = (spec.device if spec is not None else None) or self.device
        if where == self.device:
            result = core.update(tenant, cmd)
        else:
            # The module's device gets the new graph as a part (fleet token), which it applies
            # in place (``_adopt_part``): an ``update`` sent to a part always goes to its
            # coordinator, whoever sends it.
            new = {**spec.args, **cmd.args}  # type: ignore[union-attr]
            dep = app.deployment
            new_dep = dep.model_copy(update={"modules": {**dep.modules, cmd.module: spec.model_copy(update={"args": new})}})
            r = self._request(where, tenant, "deploy", self._part(new_dep, hold=False))
            if not r.get("ok"):
                raise _part_error(where, r)
            result = {**r.get("result", {}), "device": where}
            core.adopt(tenant, new_dep)
        part = self._part(app.deployment, hold=False)
        parts: dict[str, Any] = {}
        online = self.fleet.online()
        for d in sorted(remote - {where} - online):  # not waited for: it gets the graph when back
            parts[d] = {"error": {"code": UNKNOWN_DEVICE, "message": f"device {d!r} is offline; its part adopts "
                                  "the new graph when it is back (this coordinator retries, and a restarting "
                                  "agent asks it)"}}
        for d in sorted((remote & online) - {where}):  # phase 1: record, listen on both names
            r = self._request(d, tenant, "deploy", part, timeout=min(15.0, self.part_timeout))
            parts[d] = r.get("result") if r.get("ok") else {"error": r.get("error")}
        for d in sorted((remote & online) | ({where} - {self.device})):  # phase 2: send on the new names
            r = self._request(d, tenant, "start", {"app": cmd.app}, timeout=min(15.0, self.part_timeout))
            if not r.get("ok"):
                parts[d] = {"error": r.get("error")}
        core.switch_streams(app)
        # parts that did not answer (or are offline); a part that answered with a refusal is
        # not retried: it would refuse again
        missed = {d for d, p in parts.items() if isinstance(p, dict) and isinstance(p.get("error"), dict)
                  and p["error"].get("code") in (TIMEOUT, INTERNAL, UNKNOWN_DEVICE)} - {where}
        with self._lock:
            if missed:  # retried by _converge_loop until each of them has the new graph
                self._unconverged.setdefault(app.key_pair, set()).update(missed)
            else:
                self._unconverged.pop(app.key_pair, None)
        return {**result, "parts": parts}

    # -- restore ----------------------------------------------------------------------------------
    def keep_part(self, tenant: str, dep: Deployment) -> bool | Deployment:
        """Whether a saved app comes back (``AgentCore.restore``'s ``keep``): an app of this
        device, or coordinated here, does; a part of an app spanning devices only if its
        coordinator still has the app (it may have been removed while this device was off, and
        its part could not be told), asked with a ``status`` command. A coordinator that is
        offline or does not answer in time keeps the part (it cannot be told apart from a slow
        one; ``_converge_loop`` asks again). The coordinator's answer carries the app's current
        graph (``part``): one updated while this device was down replaces the saved one (the
        ``Deployment`` returned), so that this part uses the stream names the others use."""
        if dep.part_of is None or dep.part_of.coordinator == self.device:
            return True
        coord = dep.part_of.coordinator
        deadline = time.monotonic() + 2.0  # its retained state arrives right after our subscribe
        while self.fleet.state(coord) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        answered, verdict = self._ask_coordinator(tenant, dep)
        if not answered:  # kept as saved; _converge_loop asks again until the coordinator answers
            with self._lock:  # tenants restore in parallel
                self._unconfirmed[(tenant, dep.app)] = coord
        return verdict

    def restored(self, tenant: str) -> None:
        """``tenant``'s apps are back: mark those restored without their coordinator's word
        (the state says so: ``awaiting_coordinator``)."""
        with self._lock:
            unconfirmed = [(name, coord) for (t, name), coord in self._unconfirmed.items() if t == tenant]
        with self.core.lock:
            for name, coord in unconfirmed:
                app = self.core.apps.get(name)
                if app is not None and app.tenant == tenant:
                    app.awaiting_coordinator = coord
        self._state_changed()

    def _ask_coordinator(self, tenant: str, dep: Deployment) -> tuple[bool, bool | Deployment]:
        """Ask the coordinator of the part ``dep`` whether it still has the app, and its graph:
        (answered, verdict); verdict True: keep ``dep``, False: the app is gone, a
        ``Deployment``: the coordinator's newer graph. Not answered: keep ``dep``."""
        assert dep.part_of is not None
        coord = dep.part_of.coordinator
        st = self.fleet.state(coord)
        if st is None or st.status != "online":
            log.warning("app %s/%s: coordinator %s is %s; part kept as saved", tenant, dep.app, coord,
                        "unknown" if st is None else st.status)
            return False, True
        r = self._request(coord, tenant, "status", {"app": dep.app}, timeout=RESTORE_ASK_S)
        if r.get("ok"):
            part = (r.get("result") or {}).get("part")
            if part is None:
                return True, True
            try:
                current = Deployment.model_validate(part)
            except ValueError as e:
                log.warning("app %s/%s: coordinator %s sent an unreadable graph (%s); saved one kept",
                            tenant, dep.app, coord, e)
                return True, True
            mask = {"request_id", "part_of"}
            if current.model_dump(exclude=mask) == dep.model_dump(exclude=mask):
                return True, True
            log.info("app %s/%s: the coordinator's graph changed while this device was away; adopting it",
                     tenant, dep.app)
            return True, current
        code = (r.get("error") or {}).get("code")
        if code in ("not_found", "forbidden"):
            return True, False
        log.warning("app %s/%s: coordinator %s did not say (%s); part kept as saved", tenant, dep.app, coord, code)
        return False, True

    # -- convergence of apps spanning devices ------------------------------------------------------
    def _converge_loop(self) -> None:
        """Every ``CONVERGE_EVERY_S``: a part that missed an update coordinated here (it was
        unreachable, or offline and back without a restart) gets the app's current graph once
        its device is online; a part restored here without its coordinator's word asks it
        again once it is online; an app that failed when it was restored is tried again when
        its back-off is over. Each retry runs on its tenant's command worker, in order with
        that tenant's commands, so it never races an operator's update of the same app."""
        while not self._stop.wait(CONVERGE_EVERY_S):
            online = self.fleet.online()
            ready = self._ready  # per tenant: one tenant's slow restore holds up no other's
            with self._lock:
                work = [((t, a), d, self._converge_part) for (t, a), ds in self._unconverged.items()
                        if ready(t) for d in sorted(ds & online)]
                work += [((t, a), c, self._confirm_part) for (t, a), c in self._unconfirmed.items()
                         if c in online and ready(t)]
            # apps that failed when restored at boot, tried again with the modules' back-off
            work += [((t, a), self.device, self._retry_restore) for t, a in self.core.restores_due() if ready(t)]
            for (tenant, name), device, fn in work:
                key = (tenant, name, device)
                with self._lock:
                    if key in self._retrying:
                        continue
                    self._retrying.add(key)
                self._submit(tenant, lambda k=key, f=fn: self._retry(k, f), f"retry {name} on {device}")

    def _retry(self, key: tuple[str, str, str], fn: Callable[[str, str, str], None]) -> None:
        try:
            fn(*key)
        finally:
            with self._lock:
                self._retrying.discard(key)

    def _retry_restore(self, tenant: str, name: str, _device: str) -> None:
        self.core.retry_restore(tenant, name)

    def _converge_part(self, tenant: str, name: str, device: str) -> None:
        """Send ``device`` the current graph of app ``name`` (coordinated here), then its go."""
        app = self.core.apps.get(name)
        if app is None or app.tenant != tenant or app.deployment.part_of is not None \
                or device not in remote_devices(app.deployment, self.device):
            with self._lock:  # removed or changed meanwhile: nothing left to converge
                self._unconverged.pop((tenant, name), None)
            return
        timeout = min(15.0, self.part_timeout)
        r = self._request(device, tenant, "deploy", self._part(app.deployment, hold=False), timeout=timeout)
        if r.get("ok"):
            r = self._request(device, tenant, "start", {"app": name}, timeout=timeout)
        if not r.get("ok"):
            log.info("app %s/%s: part on %s still without the current graph (%s); retried later", tenant, name,
                     device, (r.get("error") or {}).get("code"))
            return
        log.info("app %s/%s: part on %s has the current graph", tenant, name, device)
        with self._lock:
            left = self._unconverged.get((tenant, name), set())
            left.discard(device)
            if not left:
                self._unconverged.pop((tenant, name), None)

    def _confirm_part(self, tenant: str, name: str, coord: str) -> None:
        """Ask the coordinator again about a part restored without its word; act on the answer."""
        app = self.core.apps.get(name)
        if app is None or app.tenant != tenant or app.deployment.part_of is None:
            with self._lock:
                self._unconfirmed.pop((tenant, name), None)
            return
        answered, verdict = self._ask_coordinator(tenant, app.deployment)
        if not answered:
            return
        with self._lock:
            self._unconfirmed.pop((tenant, name), None)
        with self.core.lock:
            app.awaiting_coordinator = None
        self._state_changed()
        if verdict is False:
            log.info("app %s/%s: removed, its coordinator %s no longer has it", tenant, name, coord)
            self.core.remove(tenant, RemoveCommand(app=name))
        elif isinstance(verdict, Deployment):
            self.core.adopt(tenant, verdict)
            if app.status == "running":
                self.core.start(tenant, StartCommand(app=name))  # send on the new stream names

    # -- per-hop metrics ----------------------------------------------------------------------------
    def hops(self, app: App) -> list[HopMetrics] | None:
        """Per-hop times of an app coordinated here (``AgentCore.hops_for``), from the fleet's
        device metrics; None for any other app."""
        dep = app.deployment
        if dep.part_of is not None or not remote_devices(dep, self.device) or app.status != "running":
            return None
        cached = self._graphs.get(app.key)
        if cached is None or cached[0] is not dep:
            cached = self._graphs[app.key] = (dep, self.core.graph(app.tenant, dep))
        return pipeline_hops(cached[1], self.fleet.metrics)
