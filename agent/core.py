"""The agent's brain, without MQTT: apps, shared module instances, and the commands on them.

Every command is checked whole before anything changes, and undone if a step fails: a bad
deploy leaves what ran before running, untouched. Module instances are keyed by identity
(``schemas.graph``): a module that another app already runs is not started twice; the running
one gains a user (and its output ring a consumer).

Apps spanning devices: every agent that runs a part of such an app holds the whole graph
(every module's ``device`` filled in) and starts only its own modules. An edge from a module
here to one on a peer becomes a ``RingToLink`` relay (the module's output ring -> the link,
stream = the module's identity); an edge from a peer's module to one here becomes a
``LinkToRing`` relay (the stream -> a local ring ``edgeva.<prefix>.in.<identity>``) that the
local module consumes like any ring. Relays are keyed by (direction, peer, stream) and shared
between apps like instances: each counts its apps and stops when the last one goes. Which
agent coordinates, and how parts are sent, is the coordinator's business (``agent.coordinator``).

Tenants are kept apart: identities include the tenant (modules are shared only within a
tenant), each tenant has limits (``agent.limits``), and the caller runs one tenant's commands at
a time but several tenants' at once (app names are reserved while deployed, relays are made and
dropped under ``self.lock``); callbacks from the supervisor (events, metrics, status) take
``self.lock``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeva.agent.appmetrics import AppStats
from edgeva.agent.dataplane.link import LinkError
from edgeva.agent.dataplane.relay import LinkToRing, RingToLink
from edgeva.agent.dataplane.ring import RingError, ring_stats, sweep_segments
from edgeva.agent.dataplane.segment import segment_name, shm_free_bytes, shm_uncommitted_bytes
from edgeva.agent.limits import TenantLimits, mib
from edgeva.agent.paths import PathPolicy
from edgeva.agent.peers import Peers
from edgeva.agent.settings import default, mb_to_bytes
from edgeva.agent.store import DesiredState
from edgeva.agent.supervisor import Instance, RestartPolicy, Supervisor
from edgeva.modules.registry import load_registry
from edgeva.schemas import runner as R
from edgeva.schemas.commands import (
    MetricsCommand,
    RemoveCommand,
    StartCommand,
    StatusCommand,
    StopCommand,
    UpdateCommand,
)
from edgeva.schemas.crossing import Needed, link_arrays, union
from edgeva.schemas.deployment import Deployment
from edgeva.schemas.errors import (
    BAD_ARGS,
    CONFLICT,
    FORBIDDEN,
    LIMIT,
    NOT_FOUND,
    SETUP_FAILED,
    EdgevaError,
)
from edgeva.schemas.graph import ValidatedGraph, check_args, validate_graph
from edgeva.schemas.metrics import P2, DeviceMetrics, ModuleMetrics, TenantMetrics
from edgeva.schemas.state import AppState, DeviceState, ModuleState

log = logging.getLogger("edgeva.agent")
VERSION = "0.1.0"


@dataclass
class App:
    tenant: str
    deployment: Deployment
    status: str = "running"  # running | stopped | failed
    error: str | None = None
    modules: dict[str, str] = field(default_factory=dict)  # local name -> instance name
    sinks: set[str] = field(default_factory=set)  # instance names ending the app
    stats: AppStats = field(default_factory=AppStats)
    relays: set[tuple[str, str, str]] = field(default_factory=set)  # keys of the relays it uses
    held: list[str] = field(default_factory=list)  # sources started held, waiting for start
    waiting: bool = False  # started with hold, not released yet (a part waiting for its go)
    awaiting_coordinator: str | None = None  # a part restored without its coordinator's word
    #: out relays to rename once every part listens on the new name (key -> new stream)
    renames: dict[tuple[str, str, str], str] = field(default_factory=dict)
    #: an app that failed when it was restored at boot is tried again (``retry_restore``):
    #: the attempts so far, and when the next one is due (monotonic, and wall clock for the state)
    restore_attempts: int = 0
    restore_due: float | None = None
    next_attempt_ts: float | None = None

    @property
    def key(self) -> str:
        return f"{self.tenant}/{self.deployment.app}"

    @property
    def key_pair(self) -> tuple[str, str]:
        return self.tenant, self.deployment.app


@dataclass
class Relay:
    """A ``RingToLink`` ("out") or ``LinkToRing`` ("in") shared by the apps in ``users``."""

    obj: RingToLink | LinkToRing
    users: set[str] = field(default_factory=set)
    upstream: str | None = None  # out: the local instance whose ring it reads
    policy: str = "block"
    #: the tenant whose apps use it (streams are module identities, which include the tenant)
    tenant: str = ""
    #: in: shared memory of the ring it fills, charged to ``tenant``'s --max-shm-mb
    ring_bytes: int = 0
    #: out: app -> the arrays its modules beyond the link use (``schemas.crossing``; None: all)
    needs: dict[str, Needed] = field(default_factory=dict)

    @property
    def sends(self) -> Needed:
        """The arrays an out relay sends: what any of its apps uses (all when it knows none)."""
        return union(self.needs.values()) if self.needs else None


def _last_module(graph: ValidatedGraph) -> str:
    """The module that ends an app: the last one without outputs in topological order. An
    app's end-to-end latency and frame count are measured there (once per frame, even when
    the graph ends in several branches)."""
    return [n for n in graph.order if not graph.downstream[n]][-1]


def remote_devices(dep: Deployment, device: str) -> set[str]:
    """Devices other than ``device`` that ``dep`` places modules on."""
    return {m.device for m in dep.modules.values() if m.device and m.device != device}


def _last_proc(inst: Instance) -> P2:
    """Processing time of the last interval that had samples."""
    if not inst.proc_history:
        return P2()
    p50, p95 = inst.proc_history[-1]
    return P2(p50=round(p50, 3), p95=round(p95, 3))


class AgentCore:
    """Apps and instances of one device. ``emit_event(tenant, app, event)`` and
    ``state_changed()`` are how it talks to the outside (the MQTT bridge)."""

    def __init__(
        self,
        device: str,
        state_dir: Path,
        prefix: str | None = None,
        emit_event: Callable[[str, str, dict], None] = lambda t, a, e: None,
        state_changed: Callable[[], None] = lambda: None,
        nslots: int = default("slots"),
        metrics_interval: float = default("metrics_interval"),
        peers: Peers | None = None,
        link_slot_bytes: int = mb_to_bytes(default("link_slot_mb")),
        paths: PathPolicy | None = None,
        limits: TenantLimits | None = None,
        restart: RestartPolicy | None = None,
    ) -> None:
        self.device = device
        self.prefix = prefix or device
        self.emit_event, self.state_changed = emit_event, state_changed
        self.nslots, self.metrics_interval = nslots, metrics_interval
        self.lock = threading.RLock()
        self.registry = load_registry()
        self.apps: dict[str, App] = {}  # app name -> App (app names are device-wide)
        self.by_identity: dict[str, str] = {}  # current identity -> instance name
        self.users: dict[str, set[str]] = {}  # instance name -> app names
        self.peers = peers or Peers(device, None)
        self.link_slot_bytes = link_slot_bytes
        #: where tenants' modules may read and write (default: PathPolicy.make())
        self.paths = paths if paths is not None else PathPolicy.make()
        self.limits = limits or TenantLimits()
        self._deploying: dict[str, str] = {}  # app name -> tenant deploying it right now
        #: app name -> tenant whose saved app it is, until that tenant's restore brought it back
        #: (tenants' restores run in parallel with other tenants' commands: see ``restore``)
        self._restoring: dict[str, str] = {}
        self.relays: dict[tuple[str, str, str], Relay] = {}  # (in|out, peer, stream) -> relay
        #: out relays of modules restored in back-off (no ring yet): instance -> key -> (app, policy)
        self._pending_out: dict[str, dict[tuple[str, str, str], tuple[str, str, Needed]]] = {}
        #: app -> per-hop metrics of an app spanning devices (``Coordinator.hops``, which sees the fleet)
        self.hops_for: Callable[[App], list | None] = lambda app: None
        self.store = DesiredState(state_dir)
        swept = sweep_segments(self.prefix)
        if swept:
            log.info("swept %d shared-memory segments left by a previous run", len(swept))
        self.sup = Supervisor(self._on_event, self._on_metrics, self._on_change, restart=restart)

    # -- commands ------------------------------------------------------------------------------
    def _graph(self, tenant: str, dep: Deployment, known_devices: set[str] | None = None) -> ValidatedGraph:
        """``validate_graph`` with the tenant in every identity: modules are shared only within
        a tenant, so that no tenant can pace, fill or see another's instances (docs/security.md)."""
        graph = validate_graph(dep, self.registry, known_devices, self.device)
        graph.scope = tenant
        return graph

    def check(self, tenant: str, dep: Deployment, known_devices: set[str] | None) -> tuple[ValidatedGraph, App | None]:
        """Check a deploy whole; returns its graph and the app already deployed under that name
        (same graph) or None. Raises ``EdgevaError``."""
        self._check_declared(tenant, dep)
        with self.lock:
            existing = self.apps.get(dep.app)
            if existing is not None:
                self._own(tenant, existing)
                mask = {"request_id", "part_of"}
                if existing.deployment.model_dump(exclude=mask) != dep.model_dump(exclude=mask):
                    raise EdgevaError(CONFLICT, f"app {dep.app!r} is already deployed with another graph: remove it first", "app")
        self.paths.check_deployment(tenant, dep, self.registry, self.device)  # before any config reads a file
        graph = self._graph(tenant, dep, known_devices)
        if remote_devices(dep, self.device) and not self.peers.enabled:
            path = next(f"modules.{n}.device" for n, m in dep.modules.items() if m.device and m.device != self.device)
            raise EdgevaError(SETUP_FAILED, f"device {self.device!r} has no data plane for links to other devices: "
                                            "start its agent with --data-bind tcp://HOST:PORT", path)
        return graph, existing

    def deploy(self, tenant: str, dep: Deployment, persist: bool = True,
               known_devices: set[str] | None | bool = True, hold: bool = False, unattended: bool = False) -> dict:
        """Start an app (this device's modules of it); shares running modules. Identical
        redeploy: ok, unchanged. ``known_devices``: devices modules may name (True: this one
        only; None: any, for parts and restores). ``hold``: sources wait for ``release``.
        ``unattended`` (restore at boot): a module failing setup is retried with back-off and
        sources wait for their input, instead of refusing the deploy."""
        known = {self.device} if known_devices is True else known_devices
        with self.lock:  # tenants' commands run in parallel: one app name, one deploy at a time
            if self._deploying.get(dep.app, tenant) != tenant or self._restoring.get(dep.app, tenant) != tenant:
                raise EdgevaError(CONFLICT, f"app {dep.app!r} is being deployed by another tenant", "app")
            self._deploying[dep.app] = tenant
        try:
            graph, existing = self.check(tenant, dep, known)  # type: ignore[arg-type]
            if existing is not None and existing.status == "running":
                return self._app_result(existing, unchanged=True)
            if existing is None:
                with self.lock:
                    n = sum(1 for a in self.apps.values() if a.tenant == tenant)
                if n >= self.limits.max_apps:
                    raise EdgevaError(LIMIT, f"tenant {tenant!r} has {n} apps on this device, the most it may have "
                                      "(the agent's --max-apps): remove one first", "app")
            app = existing or App(tenant, dep)
            app.deployment = dep
            started = self._start_app(app, graph, hold=hold, unattended=unattended)
            if persist:
                self.store.put(tenant, dep, "running")
            self.state_changed()
            return self._app_result(app, started=started, held=bool(app.held))
        finally:
            with self.lock:
                self._deploying.pop(dep.app, None)

    def release(self, name: str) -> list[str]:
        """Let the held sources of app ``name`` produce (every part of it runs)."""
        with self.lock:
            app = self.apps.get(name)
            if app is None:
                return []
            held, app.held, app.waiting = app.held, [], False
        for iname in held:
            inst = self.sup.instances.get(iname)
            if inst is not None and inst.spec.hold:
                inst.spec = inst.spec.model_copy(update={"hold": False})  # a restart must not wait
                self.sup.send(inst, R.GoMsg())
        return held

    def _start_app(self, app: App, graph: ValidatedGraph, hold: bool = False, unattended: bool = False) -> list[str]:
        """Start what the app needs here that is not running yet (its modules on this device
        and the relays to and from peers); returns the instances started."""
        ids = graph.identities()
        started: list[str] = []
        names: dict[str, str] = {}
        touched: list[tuple[str, str, str]] = []  # relays this app started to use
        mine = [n for n in graph.order if graph.devices[n] == self.device]
        crossing = link_arrays(graph)  # (module, peer) -> the arrays its messages carry there
        self._check_module_count(app.tenant, [ids[n] for n in mine])
        try:
            for local in mine:
                ident = ids[local]
                with self.lock:
                    inst_name = self.by_identity.get(ident)
                    inst = self.sup.instances.get(inst_name) if inst_name else None
                if inst is not None and inst.status not in ("failed", "ended", "stopped"):
                    names[local] = inst_name
                    for up in graph.upstream[local]:  # the in relays feeding it: this app uses them too
                        if graph.devices[up] != self.device:
                            self._in_ring(app, graph.devices[up], ids[up], touched, local, started)
                    continue
                spec = self._spec(ident, graph, local, names, app, touched, started)
                try:
                    if unattended:
                        spec = spec.model_copy(update={"unattended": True})
                    self.sup.start(spec, retry_setup=unattended)
                except RuntimeError as e:
                    self.sup.stop(ident)
                    raise EdgevaError(SETUP_FAILED, f"module {local!r} ({graph.spec(local).type}) failed to start: {e}",
                                      f"modules.{local}") from None
                with self.lock:
                    self.by_identity[ident] = ident
                started.append(ident)
                names[local] = ident
                self._check_output_size(app.tenant, local, ident, started)
            for local in mine:  # edges to peers: this module's ring -> the link
                for down in graph.downstream[local]:
                    peer = graph.devices[down]
                    if peer == self.device:
                        continue
                    inst = self.sup.instances[names[local]]
                    policy = graph.spec(down).policy or ("drop_oldest" if inst.live else "block")
                    key = ("out", peer, ids[local])
                    arrays = crossing[(local, peer)]
                    if inst.ring is None:  # restored in back-off: no ring to relay yet
                        log.warning("module %s restored in back-off: its stream to %s is relayed once it runs",
                                    inst.name, peer)
                        with self.lock:
                            self._pending_out.setdefault(inst.name, {})[key] = (app.deployment.app, policy, arrays)
                        continue
                    self._use_out_relay(key, app, touched, inst, policy, arrays)
            if started:
                self._check_device_shm()  # every ring of this deploy exists (sparse): all of them must fit
        except BaseException as e:
            self._drop_relays(app.deployment.app, touched, "out")
            for name in reversed(started):
                self.sup.stop(name)
                with self.lock:
                    self.by_identity.pop(name, None)
            self._drop_relays(app.deployment.app, touched, "in")
            self.state_changed()
            if isinstance(e, (LinkError, RingError)):
                raise EdgevaError(SETUP_FAILED, f"links of app {app.deployment.app!r}: {e}", "modules") from None
            raise
        last = _last_module(graph)
        with self.lock:
            app.modules = names
            app.sinks = {names[last]} if last in names else set()
            app.relays |= set(touched)
            app.status, app.error = "running", None
            self.apps[app.deployment.app] = app
            for inst in set(names.values()):
                self.users.setdefault(inst, set()).add(app.deployment.app)
            self._tell_apps(set(names.values()))
            app.held = [n for n in started if n in self.sup.instances and self.sup.instances[n].spec.hold]
            app.waiting = hold
        if not hold:  # the whole app is up: held sources may start
            self.release(app.deployment.app)
        return started

    # -- limits ------------------------------------------------------------------------------------
    def _tenant_instances(self, tenant: str) -> set[str]:
        with self.lock:
            return {i for a in self.apps.values() if a.tenant == tenant for i in a.modules.values()}

    def _check_declared(self, tenant: str, dep: Deployment) -> None:
        """Refuse, before any other check, a deployment that declares more modules than the
        tenant may run: identical modules collapse into one instance, so counting instances
        alone let one app declare 26,001 modules (every one checked, hashed and saved) and run
        two. The whole graph counts, every device's modules included: each part holds it."""
        n = len(dep.modules)
        if n > self.limits.max_modules:
            raise EdgevaError(LIMIT, f"app {dep.app!r} declares {n} modules; tenant {tenant!r} may declare "
                              f"{self.limits.max_modules} in one app, identical ones included (the agent's "
                              "--max-modules)", "modules")

    def _check_module_count(self, tenant: str, idents: list[str]) -> None:
        """Refuse, before starting anything, a graph that takes a tenant past ``max_modules``."""
        have = self._tenant_instances(tenant)
        with self.lock:
            running = {self.by_identity.get(i) for i in idents} - {None}
        new = len(set(idents)) - len(running)
        if len(have) + new > self.limits.max_modules:
            raise EdgevaError(LIMIT, f"this deploy would start {new} modules; tenant {tenant!r} runs {len(have)} and "
                              f"may run {self.limits.max_modules} (the agent's --max-modules)", "modules")

    def _check_output_size(self, tenant: str, local: str, ident: str, started: list[str]) -> None:
        """A module just became ready (its ring exists, sparse, nothing written): its output
        slot and the tenant's rings together must stay within the limits."""
        inst = self.sup.instances.get(ident)
        if inst is None:
            return
        if inst.slot_size > self.limits.max_slot_bytes:
            raise EdgevaError(LIMIT, f"module {local!r} outputs messages of up to {mib(inst.slot_size)} (frame and "
                              f"crop sizes), over the {mib(self.limits.max_slot_bytes)} a tenant's module may "
                              "(the agent's --max-slot-mb): use a smaller width/height or crop_size", f"modules.{local}")
        total = self._tenant_shm(tenant, started)
        if total > self.limits.max_shm_bytes:
            raise EdgevaError(LIMIT, f"tenant {tenant!r}'s rings would take {mib(total)} of shared memory, over its "
                              f"{mib(self.limits.max_shm_bytes)} (the agent's --max-shm-mb)", f"modules.{local}")

    def _tenant_shm(self, tenant: str, started: list[str] | tuple[str, ...] = ()) -> int:
        """Shared memory of ``tenant``'s rings: its modules' output rings (those of its apps and
        ``started``, not yet in an app) and the rings its link streams are received into."""
        with self.lock:
            names = self._tenant_instances(tenant) | set(started)
            total = sum(i.slot_size * self.nslots for n in names if (i := self.sup.instances.get(n)) is not None)
            return total + sum(r.ring_bytes for r in self.relays.values() if r.tenant == tenant)

    def _check_in_ring(self, tenant: str, started: list[str], where: str, peer: str) -> int:
        """A ring that will receive a link stream for ``tenant`` (``--link-slot-mb`` x slots):
        charged to the tenant like its modules' rings, and refused before it is made when it
        would take the tenant past ``--max-shm-mb`` (link-fed rings once counted for no one: ten
        of them reserved 640 MiB under a 128 MiB limit). Returns its size."""
        need = self.link_slot_bytes * self.nslots
        total = self._tenant_shm(tenant, started) + need
        if total > self.limits.max_shm_bytes:
            raise EdgevaError(LIMIT, f"the ring receiving {where}'s input from {peer!r} ({mib(need)}: --link-slot-mb x "
                              f"--slots) would take tenant {tenant!r}'s rings to {mib(total)} of shared memory, over "
                              f"its {mib(self.limits.max_shm_bytes)} (the agent's --max-shm-mb)", f"modules.{where}")
        return need

    def _check_device_shm(self) -> None:
        """Every segment in /dev/shm is sparse until written: refuse a deploy whose rings,
        with every other segment's unwritten pages, would not fit in what is free (a frame
        written to a page that is not there is a SIGBUS in the module that writes it)."""
        free = shm_free_bytes()
        if free is None:
            return
        owed = shm_uncommitted_bytes()
        if owed > free:
            raise EdgevaError(LIMIT, f"not enough shared memory: the rings on this device still need {mib(owed)} "
                              f"and /dev/shm has {mib(free)} free (Docker: --shm-size; or fewer ring slots, "
                              "smaller frames)", "modules")

    # -- relays ------------------------------------------------------------------------------------
    def _use_relay(self, key: tuple[str, str, str], app: App, touched: list, make: Callable[[], Relay]) -> Relay:
        with self.lock:  # made and registered at once: _drop_relays releases unused peer links
            relay = self.relays.get(key)
            if relay is None:
                relay = self.relays[key] = make()
                log.info("relay %s %s stream %s started", key[0], key[1], key[2])
        if app.deployment.app not in relay.users:
            relay.users.add(app.deployment.app)
            touched.append(key)
        return relay

    def _use_out_relay(self, key: tuple[str, str, str], app: App, touched: list, inst: Instance, policy: str,
                       arrays: Needed) -> Relay:
        """The out relay ``key`` (made on first use), with ``app`` among its users: from the next
        message it reads on, it sends the arrays ``app``'s modules beyond the link use too."""
        with self.lock:  # joined and widened at once: no message goes out between the two
            relay = self._use_relay(key, app, touched, lambda: Relay(
                RingToLink(inst.ring, self.peers.get(key[1]), key[2], policy, arrays=arrays),  # type: ignore[arg-type]
                upstream=inst.name, policy=policy, tenant=app.tenant))
            relay.needs[app.deployment.app] = arrays
            relay.obj.keep(relay.sends)  # type: ignore[union-attr]
        return relay

    def _drop_relays(self, app_name: str, keys, kind: str) -> None:
        """``app_name`` no longer uses the ``kind`` relays among ``keys``; stop unused ones."""
        for key in list(keys):
            if key[0] != kind:
                continue
            with self.lock:
                relay = self.relays.get(key)
                if relay is None:
                    continue
                relay.users.discard(app_name)
                relay.needs.pop(app_name, None)
                if relay.users:
                    if isinstance(relay.obj, RingToLink):  # what the others still use
                        relay.obj.keep(relay.sends)
                    continue
                del self.relays[key]
            if isinstance(relay.obj, RingToLink):
                relay.obj.stop()
            else:
                relay.obj.close()
            log.info("relay %s %s stream %s stopped", *key)
            with self.lock:
                if not any(k[1] == key[1] for k in self.relays):  # its port, threads, buffers go with it
                    self.peers.release(key[1])

    def _in_ring(self, app: App, peer: str, stream: str, touched: list, where: str,
                 started: list[str]) -> str:
        """The local ring that carries ``peer``'s stream ``stream`` (made on first use, if the
        tenant's shared memory allows: ``_check_in_ring``) to module ``where`` of ``app``."""
        ring = segment_name(self.prefix, "in", stream)

        def make() -> Relay:  # under self.lock: checked and made at once
            need = self._check_in_ring(app.tenant, started, where, peer)
            return Relay(LinkToRing(self.peers.get(peer), stream, ring, slot_size=self.link_slot_bytes,
                                    nslots=self.nslots), tenant=app.tenant, ring_bytes=need)

        self._use_relay(("in", peer, stream), app, touched, make)
        return ring

    def relay_drops(self, key: tuple[str, str, str]) -> int:
        """Messages an out relay lost: skipped in the ring, dropped from the link's queue."""
        relay = self.relays.get(key)
        if relay is None or not isinstance(relay.obj, RingToLink):
            return 0
        pl = self.peers.links.get(key[1])
        link = pl.link if pl is not None else None
        by_stream = link.stats()["dropped_by_stream"] if link is not None else {}
        return relay.obj.ring_dropped + by_stream.get(key[2], 0)

    def _spec(self, ident: str, graph: ValidatedGraph, local: str, names: dict[str, str], app: App,
              touched: list, started: list[str]) -> R.RunnerSpec:
        spec = graph.spec(local)
        inputs = []
        for up in graph.upstream[local]:
            if graph.devices[up] != self.device:  # a peer's module: its stream, through a local ring
                ring = self._in_ring(app, graph.devices[up], graph.identity(up), touched, local, started)
                # Lossless by default: a live upstream's sender already drops what we cannot take.
                inputs.append(R.InputSpec(ring=ring, policy=spec.policy or "block"))
                continue
            up_inst = self.sup.instances[names[up]]
            policy = spec.policy or ("drop_oldest" if up_inst.live else "block")
            inputs.append(R.InputSpec(ring=up_inst.ring, policy=policy))
        return R.RunnerSpec(
            name=ident,
            type=spec.type,
            # Only what the operator set: a config may refuse options of another variant
            # (a backend, an algorithm) even at their default values.
            config=graph.configs[local].model_dump(mode="json", exclude_unset=True),
            device=self.device,
            inputs=inputs,
            output_ring=segment_name(self.prefix, ident),
            nslots=self.nslots,
            apps=[app.key],
            sink_for=[app.key] if local == _last_module(graph) else [],
            metrics_interval=self.metrics_interval,
            log_level=logging.getLevelName(logging.getLogger().level),
            hold=self.registry[spec.type].is_source,
            **({"hang_timeout": spec.hang_timeout} if spec.hang_timeout is not None else {}),
        )

    def _tell_apps(self, instances: set[str]) -> None:
        """Tell instances which apps use them and which they end (sharing changed)."""
        for name in instances:
            inst = self.sup.instances.get(name)
            if inst is None:
                continue
            apps = sorted(self.apps[a].key for a in self.users.get(name, ()))
            sinks = sorted(self.apps[a].key for a in self.users.get(name, ()) if name in self.apps[a].sinks)
            inst.spec = inst.spec.model_copy(update={"apps": apps, "sink_for": sinks})
            self.sup.send(inst, R.AppsMsg(apps=apps, sink_for=sinks))

    def _release_app(self, app: App) -> list[str]:
        """Drop the app's use of its instances; stop those nobody uses any more."""
        with self.lock:
            orphans, shared = [], set()
            for inst in set(app.modules.values()):
                users = self.users.get(inst, set())
                users.discard(app.deployment.app)
                if users:
                    shared.add(inst)
                else:
                    self.users.pop(inst, None)
                    orphans.append(inst)
            app.modules, app.sinks, app.held = {}, set(), []
            relays, app.relays = app.relays, set()
            self._tell_apps(shared)
        self._drop_relays(app.deployment.app, relays, "out")  # before their producers stop
        # Downstream first: consumers detach before their producer goes away.
        for inst in reversed(self._start_order(orphans)):
            self.sup.stop(inst)
            with self.lock:
                for ident, name in list(self.by_identity.items()):
                    if name == inst:
                        del self.by_identity[ident]
        self._drop_relays(app.deployment.app, relays, "in")  # after their consumers stopped
        return orphans

    def _start_order(self, names: list[str]) -> list[str]:
        # Instance names are unique and started upstream-first: process start order is a
        # topological order.
        order = list(self.sup.instances)
        return sorted(names, key=lambda n: order.index(n) if n in order else -1)

    def remove(self, tenant: str, cmd: RemoveCommand) -> dict:
        """Stop an app and forget it; shared modules keep running for the others."""
        app = self._get(tenant, cmd.app)
        stopped = self._release_app(app)
        with self.lock:
            del self.apps[cmd.app]
        self.store.remove(tenant, cmd.app)
        self.state_changed()
        return {"app": cmd.app, "removed": True, "stopped_modules": stopped}

    def stop(self, tenant: str, cmd: StopCommand) -> dict:
        """Stop an app but keep it deployed (``start`` brings it back)."""
        app = self._get(tenant, cmd.app)
        if app.status == "stopped":
            return {"app": cmd.app, "status": "stopped", "unchanged": True}
        stopped = self._release_app(app)
        app.status = "stopped"
        self.store.put(tenant, app.deployment, "stopped")
        self.state_changed()
        return {"app": cmd.app, "status": "stopped", "stopped_modules": stopped}

    def start(self, tenant: str, cmd: StartCommand, hold: bool = False, link_timeout: float | None = None) -> dict:
        """Start a stopped app; on a running app whose sources are held, let them go (once
        the links of its relays are up, waiting up to ``link_timeout`` s when given); on a
        running app whose graph changed (``adopt``), send on the new stream names."""
        app = self._get(tenant, cmd.app)
        if app.status == "running":
            if app.waiting and link_timeout is not None:
                self.wait_links(app, link_timeout)
            renamed = self.switch_streams(app)
            released = self.release(cmd.app)
            extra = {"renamed_streams": renamed} if renamed else {}
            return self._app_result(app, unchanged=not released and not renamed, released=released, **extra)
        self.paths.check_deployment(tenant, app.deployment, self.registry, self.device)  # flags may have changed
        graph = self._graph(tenant, app.deployment)
        self._start_app(app, graph, hold=hold)
        self.store.put(tenant, app.deployment, "running")
        self.state_changed()
        return self._app_result(app)

    def update(self, tenant: str, cmd: UpdateCommand) -> dict:
        """Merge new args over a module's args; applied live if the module can, else the
        module restarts with them (its consumers re-attach by themselves)."""
        app = self._get(tenant, cmd.app)
        dep = app.deployment
        if cmd.module not in dep.modules:
            raise EdgevaError(NOT_FOUND, f"app {cmd.app!r} has no module {cmd.module!r}", "module")
        if app.status != "running":
            raise EdgevaError(CONFLICT, f"app {cmd.app!r} is {app.status}: start it first", "app")
        spec = dep.modules[cmd.module]
        new_args = {**spec.args, **cmd.args}
        if spec.device in (None, self.device):
            self.paths.check_args(tenant, spec.type, new_args, self.registry, "args")
        config = check_args(spec.type, new_args, self.registry[spec.type].config_class)
        new_dep = dep.model_copy(update={"modules": {**dep.modules, cmd.module: spec.model_copy(update={"args": new_args})}})
        if cmd.module not in app.modules:  # runs on another device: this part records the graph
            self.adopt(tenant, new_dep)
            return {"app": cmd.app, "module": cmd.module, "args": new_args, "recorded": True}
        inst_name = app.modules[cmd.module]
        with self.lock:
            others = sorted(self.users.get(inst_name, set()) - {cmd.app})
        if others:
            raise EdgevaError(CONFLICT, f"module {cmd.module!r} is shared with apps {', '.join(others)}: "
                                        "updating it would change them too; deploy a module with its own args instead",
                              f"modules.{cmd.module}")
        old_graph = self._graph(tenant, dep)
        graph = self._graph(tenant, new_dep)
        res = self.sup.update(inst_name, config.model_dump(mode="json", exclude_unset=True))
        restarted = False
        if not res.applied:
            if res.message:  # the module refused the config: nothing changed
                raise EdgevaError(BAD_ARGS, f"module {cmd.module!r} refused the update: {res.message}", "args")
            inst = self.sup.instances[inst_name]
            spec2 = inst.spec.model_copy(update={"config": config.model_dump(mode="json", exclude_unset=True)})
            self.sup.stop(inst_name)
            try:
                self.sup.start(spec2)
            except RuntimeError as e:
                # Put the old config back so the app keeps running as before.
                self.sup.start(inst.spec)
                raise EdgevaError(SETUP_FAILED, f"module {cmd.module!r} failed with the new args: {e}",
                                  f"modules.{cmd.module}") from None
            restarted = True
        else:
            self.sup.instances[inst_name].spec = self.sup.instances[inst_name].spec.model_copy(
                update={"config": config.model_dump(mode="json", exclude_unset=True)})
        self._rekey(app, old_graph, graph)
        with self.lock:
            app.deployment = new_dep
        self.store.put(tenant, new_dep, "running")
        self.state_changed()
        return {"app": cmd.app, "module": cmd.module, "args": new_args, "applied_live": not restarted}

    def _rekey(self, app: App, old: ValidatedGraph, new: ValidatedGraph) -> None:
        """The app's graph changed (an ``update``): identities of the changed module and of
        everything downstream of it change, hence the names of the link streams they feed.
        Running instances keep their names (re-keyed by identity); in relays also receive the
        new stream names at once; out relays are renamed by ``switch_streams``, once every part
        of the app listens on the new names (the coordinator's ``start``). A restart of any
        part then computes the same names as the parts that kept running."""
        old_ids, new_ids = old.identities(), new.identities()
        renamed = {old_ids[n]: new_ids[n] for n in new_ids if n in old_ids and old_ids[n] != new_ids[n]}
        crossing = link_arrays(new)
        with self.lock:
            for key in app.relays:  # what the new graph uses beyond each link (an arg may change it)
                relay = self.relays.get(key)
                if key[0] == "out" and relay is not None and isinstance(relay.obj, RingToLink):
                    uses = [crossing[(n, key[1])] for n, i in old_ids.items() if i == key[2] and (n, key[1]) in crossing]
                    if uses:
                        relay.needs[app.deployment.app] = union(uses)
                        relay.obj.keep(relay.sends)
            inst_ident = {v: k for k, v in self.by_identity.items()}
            for local, inst in app.modules.items():
                self.by_identity.pop(inst_ident.get(inst, ""), None)
                self.by_identity[new_ids[local]] = inst
            for key in sorted(app.relays):
                direction, peer, stream = key
                new_stream = renamed.get(stream)
                relay = self.relays.get(key)
                if new_stream is None or relay is None:
                    continue
                if direction == "in":
                    relay.obj.add_stream(new_stream)  # type: ignore[union-attr]
                    new_key = ("in", peer, new_stream)
                    self.relays[new_key] = self.relays.pop(key)
                    app.relays.discard(key)
                    app.relays.add(new_key)
                else:
                    app.renames[key] = new_stream

    def adopt(self, tenant: str, dep: Deployment) -> dict:
        """The coordinator's newer graph of a running part (a module was updated on some
        device): record it, receive on the new stream names (see ``_rekey``)."""
        app = self._get(tenant, dep.app)
        old = self._graph(tenant, app.deployment)
        new = self._graph(tenant, dep)
        if app.status == "running":
            self._rekey(app, old, new)
        with self.lock:
            app.deployment = dep
        self.store.put(tenant, dep, app.status)
        self.state_changed()
        return {**self._app_result(app), "adopted": True}

    def switch_streams(self, app: App) -> list[str]:
        """Send on the stream names of the app's current graph (after ``adopt``/``update``)."""
        renamed = []
        with self.lock:
            renames, app.renames = app.renames, {}
            for key, new_stream in sorted(renames.items()):
                relay = self.relays.pop(key, None)
                if relay is None:
                    continue
                new_key = ("out", key[1], new_stream)
                self.relays[new_key] = relay
                app.relays.discard(key)
                app.relays.add(new_key)
                relay.obj.retarget(new_stream)  # type: ignore[union-attr]
                renamed.append(new_stream)
        return renamed

    def wait_links(self, app: App, timeout: float) -> None:
        """Wait until the link to every peer the app's relays use is up; ``SETUP_FAILED`` if
        one is not within ``timeout`` s (a TLS peer whose certificate does not verify never
        connects: its frames would go nowhere)."""
        peers = sorted({k[1] for k in app.relays})
        deadline = time.monotonic() + timeout
        for peer in peers:
            pl = self.peers.get(peer)
            while not pl.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            if not pl.connected:
                st = pl.stats()
                why = {"auth_failed": "TLS handshakes fail: the certificates are not signed by one CA, or a "
                                      "certificate does not name its device",
                       "unknown_address": "its link address is not known (no retained state with it)"}.get(
                    st.get("state", ""), st.get("state", "not connected"))
                raise EdgevaError(SETUP_FAILED, f"link between {self.device!r} and {peer!r} is not up after "
                                                f"{timeout:g}s: {why}", "links." + peer)

    def status(self, tenant: str, cmd: StatusCommand) -> dict:
        with self.lock:
            apps = {n: a for n, a in self.apps.items() if a.tenant == tenant}
            if cmd.app is not None:
                apps = {cmd.app: self._get(tenant, cmd.app)}
            return {"device": self.device, "apps": {n: self._app_result(a) for n, a in apps.items()}}

    def metrics(self, tenant: str, cmd: MetricsCommand) -> dict:
        m = self.tenant_metrics(tenant, peek=True)
        if cmd.app is not None:
            self._get(tenant, cmd.app)
            m.apps = {cmd.app: m.apps[cmd.app]} if cmd.app in m.apps else {}
        return m.model_dump(mode="json")

    def finish(self, timeout: float = 10.0) -> bool:
        """End every source's stream and wait until every module has drained it and exited
        (their final metrics are in). For a clean end of a bounded run (demo, benchmarks).
        Returns whether everything ended within ``timeout``."""
        for inst in list(self.sup.instances.values()):
            if self.registry[inst.spec.type].is_source:
                self.sup.send(inst, R.FinishMsg())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(i.status in ("ended", "failed", "stopped") for i in self.sup.instances.values()):
                time.sleep(0.1)  # the supervisor thread delivers the last metrics
                return True
            time.sleep(0.05)
        return False

    # -- helpers ----------------------------------------------------------------------------------
    def _own(self, tenant: str, app: App) -> None:
        if app.tenant != tenant:
            raise EdgevaError(FORBIDDEN, f"app {app.deployment.app!r} belongs to another tenant", "app")

    def _get(self, tenant: str, name: str) -> App:
        with self.lock:
            app = self.apps.get(name)
        if app is None:
            raise EdgevaError(NOT_FOUND, f"no app named {name!r} on device {self.device!r}", "app")
        self._own(tenant, app)
        return app

    def get_app(self, tenant: str, name: str) -> App:
        """The tenant's app ``name``; ``not_found`` if there is none, ``forbidden`` if it is
        another tenant's (what a command on it replies)."""
        return self._get(tenant, name)

    def app_result(self, app: App, **extra) -> dict:
        """What a command's reply says of ``app``: its status, error and modules (``extra`` added)."""
        return self._app_result(app, **extra)

    def graph(self, tenant: str, dep: Deployment) -> ValidatedGraph:
        """The graph of ``dep`` as this agent runs it for ``tenant`` (identities scoped to the tenant)."""
        return self._graph(tenant, dep)

    def _app_result(self, app: App, **extra) -> dict:
        mods = {}
        for local, inst_name in app.modules.items():
            inst = self.sup.instances.get(inst_name)
            mods[local] = {
                "instance": inst_name,
                "status": inst.status if inst else "stopped",
                "shared_with": sorted(self.users.get(inst_name, set()) - {app.deployment.app}),
                "pid": inst.pid if inst else None,
                "info": dict(inst.info) if inst else {},
            }
        return {"app": app.deployment.app, "status": app.status, "error": app.error, "modules": mods, **extra}

    # -- supervisor callbacks ---------------------------------------------------------------------
    def _apps_of(self, inst: Instance) -> list[App]:
        with self.lock:
            return [self.apps[a] for a in self.users.get(inst.name, ()) if a in self.apps]

    def _on_event(self, inst: Instance, event: dict) -> None:
        for app in self._apps_of(inst):
            app.stats.events += 1
            self.emit_event(app.tenant, app.deployment.app, event)

    def _on_metrics(self, inst: Instance, msg: R.MetricsMsg) -> None:
        if not msg.sink:
            return
        for app in self._apps_of(inst):
            if inst.name in app.sinks and app.key in inst.spec.sink_for:
                for frame_id, _source, ms, t_done in msg.sink:
                    app.stats.add(frame_id, ms, now=t_done)

    def _on_change(self, inst: Instance) -> None:
        if inst.status == "running" and inst.restarts:
            self._reattach_relays(inst)
        if inst.status == "running" and inst.ring is not None:
            self._start_pending_relays(inst)
        self.state_changed()

    def _start_pending_relays(self, inst: Instance) -> None:
        """A module restored in back-off runs at last: start the out relays its apps wait for."""
        with self.lock:
            pending = self._pending_out.pop(inst.name, {})
        for key, (name, policy, arrays) in pending.items():
            with self.lock:
                app = self.apps.get(name)
            if app is None or inst.name not in app.modules.values():
                continue  # removed or redeployed meanwhile
            touched: list[tuple[str, str, str]] = []
            try:
                self._use_out_relay(key, app, touched, inst, policy, arrays)
            except (RingError, LinkError) as e:
                log.error("relay to %s for %s could not start: %s", key[1], inst.name, e)
                continue
            with self.lock:
                app.relays |= set(touched)
            log.info("module %s runs: its stream to %s is relayed", inst.name, key[1])

    def _reattach_relays(self, inst: Instance) -> None:
        """A restarted module has a new ring under the same name: its out relays re-attach."""
        with self.lock:
            keys = [k for k, r in self.relays.items() if r.upstream == inst.name]
        for key in keys:
            with self.lock:
                relay = self.relays.get(key)
            if relay is None:
                continue
            relay.obj.stop()  # type: ignore[union-attr]
            try:
                relay.obj = RingToLink(inst.ring, self.peers.get(key[1]), key[2], relay.policy,  # type: ignore[arg-type]
                                       arrays=relay.sends)
            except (RingError, LinkError) as e:
                log.error("relay to %s for %s could not re-attach: %s", key[1], inst.name, e)

    # -- state and metrics --------------------------------------------------------------------------
    def device_state(self, data_addr: str | None = None) -> DeviceState:
        """This device's retained state (``links``: where it listens for each peer)."""
        with self.lock:
            apps: dict[str, dict[str, AppState]] = {}
            for name, app in self.apps.items():
                apps.setdefault(app.tenant, {})[name] = AppState(
                    modules=sorted(set(app.modules.values())), status=app.status, error=app.error,
                    awaiting_coordinator=app.awaiting_coordinator,
                    next_attempt_ts=app.next_attempt_ts if app.status == "failed" else None)
            mods = {
                name: ModuleState(
                    type=inst.spec.type, apps=sorted(self.apps[a].key for a in self.users.get(name, ()) if a in self.apps),
                    pid=inst.pid, status=inst.status if inst.status != "ended" else "stopped", restarts=inst.restarts,
                    error=inst.error[:600] if inst.error and inst.status != "running" else None,
                    backoff_s=inst.backoff_s if inst.status == "backoff" else None,
                    next_attempt_ts=inst.next_attempt_ts,
                )
                for name, inst in self.sup.instances.items()
            }
        return DeviceState(device=self.device, status="online", ts=time.time(), data_addr=data_addr,
                           links=dict(self.peers.listening), apps=apps, modules=mods, version=VERSION)

    def module_metrics(self) -> dict[str, ModuleMetrics]:
        """Per module instance: frames, processing time, ring occupancy and drops per consumer."""
        pid_name = {inst.pid: name for name, inst in self.sup.instances.items()}
        me = os.getpid()  # the agent's own consumers are out relays: reported as link:<peer>
        with self.lock:
            relay_drops: dict[str, dict[str, int]] = {}
            for key, r in self.relays.items():
                if r.upstream is not None:
                    relay_drops.setdefault(r.upstream, {})[f"link:{key[1]}"] = self.relay_drops(key)
        out = {}
        for name, inst in list(self.sup.instances.items()):
            m = inst.last_metrics
            occ, drops = {}, {}
            if inst.ring:
                try:
                    st = ring_stats(inst.ring)
                except RingError:
                    st = None
                if st is not None:
                    for c in st.consumers:
                        if c.pid == me:
                            continue
                        who = pid_name.get(c.pid, f"pid:{c.pid}")
                        occ[who] = round(c.pending / st.nslots, 3)
                        drops[who] = c.dropped
            out[name] = ModuleMetrics(
                type=inst.spec.type,
                frames_in=m.frames_in if m else 0, frames_out=m.frames_out if m else 0,
                proc_ms=_last_proc(inst),
                occupancy=occ, dropped={**drops, **relay_drops.get(name, {})}, restarts=inst.restarts,
                status=inst.status, next_attempt_ts=inst.next_attempt_ts,
                counters=m.counters if m else {},
            )
        return out

    def _app_dropped(self, app: App, mods: dict[str, ModuleMetrics]) -> int:
        mine = set(app.modules.values())
        links = {f"link:{k[1]}" for k in app.relays if k[0] == "out"}
        # frames a link-fed ring of the app could not take (a peer ignoring its pause)
        with self.lock:
            fed = [r.obj for k, r in self.relays.items() if k[0] == "in" and k in app.relays]
        lost_in = sum(getattr(obj, "dropped", 0) for obj in fed)
        return lost_in + sum(n for inst in mine for who, n in mods.get(inst, ModuleMetrics(type="")).dropped.items()
                             if who in mine or who in links)

    def tenant_metrics(self, tenant: str, peek: bool = False, mods: dict | None = None) -> TenantMetrics:
        mods = self.module_metrics() if mods is None else mods
        with self.lock:
            apps = {n: a for n, a in self.apps.items() if a.tenant == tenant}
            out_apps = {}
            for n, a in apps.items():
                a.stats.dropped = self._app_dropped(a, mods)
                # samples arrive a module's report at a time: hold the last percentiles over
                # up to two and a half ticks without a report rather than publish nulls
                out_apps[n] = a.stats.snapshot(hold_s=2.5 * self.metrics_interval, peek=peek)
                out_apps[n].hops = self.hops_for(a)
            used = {i for a in apps.values() for i in a.modules.values()}
        return TenantMetrics(device=self.device, tenant=tenant, ts=time.time(), interval_s=self.metrics_interval,
                             apps=out_apps, modules={k: v for k, v in mods.items() if k in used})

    def device_metrics(self, mods: dict | None = None) -> DeviceMetrics:
        mods = self.module_metrics() if mods is None else mods
        links = self.peers.metrics()
        with self.lock:
            outs = [(k[1], k[2], r.obj) for k, r in self.relays.items() if isinstance(r.obj, RingToLink)]
        for peer, stream, relay in outs:  # which arrays cross each link, per stream
            if peer in links:
                links[peer].arrays[stream] = sorted(relay.crossed)
                links[peer].arrays_left_out[stream] = sorted(relay.left_out)
        return DeviceMetrics(device=self.device, ts=time.time(), interval_s=self.metrics_interval, modules=mods,
                             links=links)

    def tenants(self) -> set[str]:
        with self.lock:
            return {a.tenant for a in self.apps.values()}

    # -- lifecycle --------------------------------------------------------------------------------
    def restore_plan(self) -> dict[str, list[tuple[Deployment, str]]]:
        """The desired state saved by a previous run, by tenant: (deployment, status) of each of
        its apps. Their names stay reserved for their tenants until ``restore`` brought them back,
        so that another tenant's command, answered meanwhile, cannot take one."""
        plan = self.store.load()
        with self.lock:
            for tenant, apps in plan.items():
                for dep, _ in apps:
                    self._restoring[dep.app] = tenant
        return plan

    def restore(self, keep: Callable[[str, Deployment], bool | Deployment] = lambda t, d: True,
                done: Callable[[str], None] = lambda t: None,
                plan: dict[str, list[tuple[Deployment, str]]] | None = None) -> None:
        """Bring back the desired state saved by a previous run (reboot, crash): ``plan``
        (default: ``restore_plan()``). Each tenant's apps come back on a thread of their own,
        one after the other, and the tenants all at once: one tenant's apps (a camera that
        does not answer, a coordinator that is away) then delay only that tenant; ``done(tenant)``
        is called once its apps are back (the bridge then runs its commands). Returns when every
        tenant's are. ``keep(tenant, dep)`` False: the app is forgotten instead (a part whose
        coordinator removed the app); a ``Deployment``: the app's graph is now that one (a part
        whose coordinator updated the app meanwhile), saved and restored instead."""
        plan = self.restore_plan() if plan is None else plan
        threads = [threading.Thread(target=self._restore_tenant, args=(tenant, apps, keep, done),
                                    name=f"restore-{tenant}", daemon=True) for tenant, apps in plan.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _restore_tenant(self, tenant: str, apps: list[tuple[Deployment, str]],
                        keep: Callable[[str, Deployment], bool | Deployment], done: Callable[[str], None]) -> None:
        try:
            for dep, status in apps:
                try:
                    self._restore_app(tenant, dep, status, keep)
                except Exception:  # one app's bug must not keep the tenant's others (or commands) away
                    log.exception("could not restore app %s/%s", tenant, dep.app)
                finally:
                    with self.lock:
                        self._restoring.pop(dep.app, None)
        finally:
            done(tenant)

    def _restore_app(self, tenant: str, dep: Deployment, status: str,
                     keep: Callable[[str, Deployment], bool | Deployment]) -> None:
        verdict = keep(tenant, dep)
        if verdict is False:
            log.info("app %s/%s: dropped, its coordinator no longer has it", tenant, dep.app)
            self.store.remove(tenant, dep.app)
            return
        if isinstance(verdict, Deployment):
            dep = verdict
            self.store.put(tenant, dep, status)
        try:
            if status == "running":  # of an app spanning devices: this device's part only
                self.deploy(tenant, dep, persist=False, known_devices=None, unattended=True)
            else:
                self._check_declared(tenant, dep)  # a start would refuse it: say so now
                self._put_app(App(tenant, dep, status="stopped"))
        except EdgevaError as e:
            # It ran when it was saved: what fails now is the box (a media disk not mounted yet,
            # a peer still booting, shared memory still held), so it is tried again with the
            # modules' back-off, forever, until it runs or an operator deploys, stops or removes it.
            log.error("could not restore app %s/%s: %s", tenant, dep.app, e.message)
            app = App(tenant, dep, status="failed", error=e.message)
            self._restore_later(app)
            self._put_app(app)

    def _restore_later(self, app: App) -> None:
        """Schedule the next attempt at a failed restored app (the supervisor's back-off)."""
        delay = self.sup.restart.delay(app.restore_attempts)
        app.restore_due = time.monotonic() + delay
        app.next_attempt_ts = time.time() + delay

    def restores_due(self) -> list[tuple[str, str]]:
        """(tenant, app) of the failed restored apps whose next attempt is due."""
        now = time.monotonic()
        with self.lock:
            return [(a.tenant, name) for name, a in self.apps.items()
                    if a.status == "failed" and a.restore_due is not None and a.restore_due <= now]

    def retry_restore(self, tenant: str, name: str) -> bool:
        """Try again to start app ``name`` of ``tenant`` that failed when it was restored;
        True once it runs. Nothing is done when an operator deployed, stopped or removed it
        meanwhile (the app is no longer the failed restored one). Run it on the tenant's
        command worker, in order with the tenant's commands."""
        with self.lock:
            app = self.apps.get(name)
            if app is None or app.tenant != tenant or app.status != "failed" or app.restore_due is None:
                return False
            app.restore_due = None  # one attempt at a time
        try:
            self.deploy(tenant, app.deployment, persist=False, known_devices=None, unattended=True)
        except EdgevaError as e:
            with self.lock:
                if self.apps.get(name) is app and app.status == "failed":
                    app.restore_attempts += 1
                    app.error = e.message
                    self._restore_later(app)
            log.warning("app %s/%s still cannot be restored (attempt %d, next in %.0f s): %s", tenant, name,
                        app.restore_attempts, self.sup.restart.delay(app.restore_attempts), e.message)
            self.state_changed()
            return False
        log.info("app %s/%s restored after %d failed attempts", tenant, name, app.restore_attempts + 1)
        with self.lock:
            app.restore_attempts, app.next_attempt_ts = 0, None
        self.state_changed()
        return True

    def _put_app(self, app: App) -> None:
        """Record a restored app that does not run, unless another tenant's app has its name
        (two state files naming one app: the first tenant restored keeps it)."""
        with self.lock:
            other = self.apps.get(app.deployment.app)
            if other is None or other.tenant == app.tenant:
                self.apps[app.deployment.app] = app
                return
        log.error("app %s/%s not restored: another tenant's app has its name", app.tenant, app.deployment.app)

    def close(self) -> None:
        with self.lock:
            keys = list(self.relays)
        for key in keys:
            if key[0] == "out":
                self._drop_all(key)
        self.sup.close()
        for key in keys:
            if key[0] == "in":
                self._drop_all(key)
        self.peers.close()

    def _drop_all(self, key: tuple[str, str, str]) -> None:
        with self.lock:
            relay = self.relays.pop(key, None)
        if relay is not None:
            relay.obj.stop() if isinstance(relay.obj, RingToLink) else relay.obj.close()
