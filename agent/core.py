"""The agent's brain, without MQTT: apps, shared module instances, and the commands on them.

Every command is checked whole before anything changes, and undone if a step fails: a bad
deploy leaves what ran before running, untouched. Module instances are keyed by identity
(``schemas.graph``): a module that another app already runs is not started twice; the running
one gains a user (and its output ring a consumer).

Commands are serialised by the caller (one worker thread); callbacks from the supervisor
(events, metrics, status) take ``self.lock``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.appmetrics import AppStats
from agent.dataplane.ring import RingError, ring_stats, sweep_segments
from agent.dataplane.segment import segment_name
from agent.store import DesiredState
from agent.supervisor import Instance, Supervisor
from modules.registry import load_registry
from schemas import runner as R
from schemas.commands import (
    MetricsCommand,
    RemoveCommand,
    StartCommand,
    StatusCommand,
    StopCommand,
    UpdateCommand,
)
from schemas.deployment import Deployment
from schemas.errors import (
    BAD_ARGS,
    CONFLICT,
    FORBIDDEN,
    NOT_FOUND,
    SETUP_FAILED,
    EdgevaError,
    from_validation_error,
)
from schemas.graph import ValidatedGraph, validate_graph
from schemas.metrics import P2, DeviceMetrics, ModuleMetrics, TenantMetrics
from schemas.state import AppState, DeviceState, ModuleState

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

    @property
    def key(self) -> str:
        return f"{self.tenant}/{self.deployment.app}"


def _last_module(graph: ValidatedGraph) -> str:
    """The module that ends an app: the last one without outputs in topological order. An
    app's end-to-end latency and frame count are measured there (once per frame, even when
    the graph ends in several branches)."""
    return [n for n in graph.order if not graph.downstream[n]][-1]


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
        nslots: int = 8,
        metrics_interval: float = 1.0,
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
        self.store = DesiredState(state_dir)
        swept = sweep_segments(self.prefix)
        if swept:
            log.info("swept %d shared-memory segments left by a previous run", len(swept))
        self.sup = Supervisor(self._on_event, self._on_metrics, self._on_change)

    # -- commands ------------------------------------------------------------------------------
    def deploy(self, tenant: str, dep: Deployment, persist: bool = True) -> dict:
        """Start an app; shares running modules. Identical redeploy: ok, unchanged."""
        with self.lock:
            existing = self.apps.get(dep.app)
            if existing is not None:
                self._own(tenant, existing)
                same = existing.deployment.model_dump(exclude={"request_id"}) == dep.model_dump(exclude={"request_id"})
                if same and existing.status == "running":
                    return self._app_result(existing, unchanged=True)
                if not same:
                    raise EdgevaError(CONFLICT, f"app {dep.app!r} is already deployed with another graph: remove it first", "app")
            graph = validate_graph(dep, self.registry, {self.device}, self.device)
            app = existing or App(tenant, dep)
        started = self._start_app(app, graph)
        if persist:
            self.store.put(tenant, dep, "running")
        self.state_changed()
        return self._app_result(app, started=started)

    def _start_app(self, app: App, graph: ValidatedGraph) -> list[str]:
        """Start what the app needs that is not running yet; returns the instances started."""
        ids = graph.identities()
        started: list[str] = []
        names: dict[str, str] = {}
        try:
            for local in graph.order:
                ident = ids[local]
                with self.lock:
                    inst_name = self.by_identity.get(ident)
                    inst = self.sup.instances.get(inst_name) if inst_name else None
                if inst is not None and inst.status not in ("failed", "ended", "stopped"):
                    names[local] = inst_name
                    continue
                spec = self._spec(ident, graph, local, names, app)
                try:
                    self.sup.start(spec)
                except RuntimeError as e:
                    self.sup.stop(ident)
                    raise EdgevaError(SETUP_FAILED, f"module {local!r} ({graph.spec(local).type}) failed to start: {e}",
                                      f"modules.{local}") from None
                with self.lock:
                    self.by_identity[ident] = ident
                started.append(ident)
                names[local] = ident
        except BaseException:
            for name in reversed(started):
                self.sup.stop(name)
                with self.lock:
                    self.by_identity.pop(name, None)
            self.state_changed()
            raise
        with self.lock:
            app.modules = names
            app.sinks = {names[_last_module(graph)]}
            app.status, app.error = "running", None
            self.apps[app.deployment.app] = app
            for inst in set(names.values()):
                self.users.setdefault(inst, set()).add(app.deployment.app)
            self._tell_apps(set(names.values()))
        for name in started:  # the whole app is up: held sources may start
            inst = self.sup.instances.get(name)
            if inst is not None and inst.spec.hold:
                inst.spec = inst.spec.model_copy(update={"hold": False})  # a restart must not wait
                self.sup.send(inst, R.GoMsg())
        return started

    def _spec(self, ident: str, graph: ValidatedGraph, local: str, names: dict[str, str], app: App) -> R.RunnerSpec:
        spec = graph.spec(local)
        inputs = []
        for up in graph.upstream[local]:
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
            app.modules, app.sinks = {}, set()
            self._tell_apps(shared)
        # Downstream first: consumers detach before their producer goes away.
        for inst in reversed(self._start_order(orphans)):
            self.sup.stop(inst)
            with self.lock:
                for ident, name in list(self.by_identity.items()):
                    if name == inst:
                        del self.by_identity[ident]
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
        self.store.remove(cmd.app)
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

    def start(self, tenant: str, cmd: StartCommand) -> dict:
        app = self._get(tenant, cmd.app)
        if app.status == "running":
            return self._app_result(app, unchanged=True)
        graph = validate_graph(app.deployment, self.registry, {self.device}, self.device)
        self._start_app(app, graph)
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
        cls = self.registry[spec.type].config_class
        try:
            config = cls.model_validate({"type": spec.type, **new_args})
        except Exception as e:
            raise from_validation_error(e, ("args",), BAD_ARGS) from None
        inst_name = app.modules[cmd.module]
        with self.lock:
            others = sorted(self.users.get(inst_name, set()) - {cmd.app})
        if others:
            raise EdgevaError(CONFLICT, f"module {cmd.module!r} is shared with apps {', '.join(others)}: "
                                        "updating it would change them too; deploy a module with its own args instead",
                              f"modules.{cmd.module}")
        new_dep = dep.model_copy(update={"modules": {**dep.modules, cmd.module: spec.model_copy(update={"args": new_args})}})
        graph = validate_graph(new_dep, self.registry, {self.device}, self.device)
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
        with self.lock:
            old_ids = {v: k for k, v in self.by_identity.items()}
            for local, ident in graph.identities().items():
                inst = app.modules[local]
                self.by_identity.pop(old_ids.get(inst, ""), None)
                self.by_identity[ident] = inst
            app.deployment = new_dep
        self.store.put(tenant, new_dep, "running")
        self.state_changed()
        return {"app": cmd.app, "module": cmd.module, "args": new_args, "applied_live": not restarted}

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

    def _app_result(self, app: App, **extra) -> dict:
        mods = {}
        for local, inst_name in app.modules.items():
            inst = self.sup.instances.get(inst_name)
            mods[local] = {
                "instance": inst_name,
                "status": inst.status if inst else "stopped",
                "shared_with": sorted(self.users.get(inst_name, set()) - {app.deployment.app}),
                "pid": inst.pid if inst else None,
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
        self.state_changed()

    # -- state and metrics --------------------------------------------------------------------------
    def device_state(self, data_addr: str | None = None) -> DeviceState:
        with self.lock:
            apps: dict[str, dict[str, AppState]] = {}
            for name, app in self.apps.items():
                apps.setdefault(app.tenant, {})[name] = AppState(
                    modules=sorted(set(app.modules.values())), status=app.status, error=app.error)
            mods = {
                name: ModuleState(
                    type=inst.spec.type, apps=sorted(self.apps[a].key for a in self.users.get(name, ()) if a in self.apps),
                    pid=inst.pid, status=inst.status if inst.status != "ended" else "stopped", restarts=inst.restarts,
                )
                for name, inst in self.sup.instances.items()
            }
        return DeviceState(device=self.device, status="online", ts=time.time(), data_addr=data_addr,
                           apps=apps, modules=mods, version=VERSION)

    def _module_metrics(self) -> dict[str, ModuleMetrics]:
        pid_name = {inst.pid: name for name, inst in self.sup.instances.items()}
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
                        who = pid_name.get(c.pid, f"pid:{c.pid}")
                        occ[who] = round(c.pending / st.nslots, 3)
                        drops[who] = c.dropped
            out[name] = ModuleMetrics(
                type=inst.spec.type,
                frames_in=m.frames_in if m else 0, frames_out=m.frames_out if m else 0,
                proc_ms=_last_proc(inst),
                occupancy=occ, dropped=drops, restarts=inst.restarts,
            )
        return out

    def _app_dropped(self, app: App, mods: dict[str, ModuleMetrics]) -> int:
        mine = set(app.modules.values())
        return sum(n for inst in mine for who, n in mods.get(inst, ModuleMetrics(type="")).dropped.items() if who in mine)

    def tenant_metrics(self, tenant: str, peek: bool = False, mods: dict | None = None) -> TenantMetrics:
        mods = self._module_metrics() if mods is None else mods
        with self.lock:
            apps = {n: a for n, a in self.apps.items() if a.tenant == tenant}
            out_apps = {}
            for n, a in apps.items():
                a.stats.dropped = self._app_dropped(a, mods)
                if peek:
                    saved = a.stats.interval
                    out_apps[n] = a.stats.snapshot()
                    a.stats.interval = saved
                else:
                    out_apps[n] = a.stats.snapshot()
            used = {i for a in apps.values() for i in a.modules.values()}
        return TenantMetrics(device=self.device, tenant=tenant, ts=time.time(), interval_s=self.metrics_interval,
                             apps=out_apps, modules={k: v for k, v in mods.items() if k in used})

    def device_metrics(self, mods: dict | None = None) -> DeviceMetrics:
        mods = self._module_metrics() if mods is None else mods
        return DeviceMetrics(device=self.device, ts=time.time(), interval_s=self.metrics_interval, modules=mods)

    def tenants(self) -> set[str]:
        with self.lock:
            return {a.tenant for a in self.apps.values()}

    # -- lifecycle --------------------------------------------------------------------------------
    def restore(self) -> None:
        """Bring back the desired state saved by a previous run (reboot, crash)."""
        for tenant, dep, status in self.store.load():
            try:
                if status == "running":
                    self.deploy(tenant, dep, persist=False)
                else:
                    with self.lock:
                        self.apps[dep.app] = App(tenant, dep, status="stopped")
            except EdgevaError as e:
                log.error("could not restore app %s/%s: %s", tenant, dep.app, e.message)
                with self.lock:
                    self.apps[dep.app] = App(tenant, dep, status="failed", error=e.message)

    def close(self) -> None:
        self.sup.close()
