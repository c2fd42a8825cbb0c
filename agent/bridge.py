"""The agent's MQTT side: commands in, replies/state/metrics/events out.

Commands are queued by paho's network thread and executed by one worker thread per tenant, so
a slow deploy never stalls the connection (keep-alives, other replies) nor another tenant's
commands, and two commands of one tenant never interleave (``AgentCore`` keeps tenants' commands
apart: modules are never shared across tenants, app names are reserved while deployed).
Replies go to the MQTT 5 response topic (with the correlation data) when the request named one
under the sender's own reply topics (any other is refused: ``_check_response_topic``), else to
``edgeva/v1/{device}/{tenant}/reply/{request_id}``.

Apps spanning devices (modules with a ``device`` other than this one). The agent that receives
such a deploy, from any MQTT client, coordinates it: it checks the whole graph against the
fleet's retained states (a device that is offline or unknown: ``unknown_device``, nothing
starts), sends every other device its part (the whole graph with every ``device`` filled in and
``part_of: {coordinator, hold: true}``) as a deploy on that device's command topic with the
same tenant, starts its own part, and once every part runs sends each a ``start`` (their
sources were held so that no frame leaves before its consumer listens; a part first waits
for its links to be up, ``link_timeout``) and lets its own sources go. It replies ok only
then; if a part fails or does not answer within ``part_timeout``, every part started is
removed again and the reply carries the part's error, its path prefixed with
``devices.<device>.``. ``stop``/``remove``/``start`` of the app on the coordinator reach every
online part; ``update`` is applied where the module runs (on a part: by a deploy of the new
graph with the fleet token, ``_adopt_part``) and the new graph then sent to every
online part (``_update``); a part that receives an ``update`` forwards it to its coordinator
and relays the reply (``_forward``, off the command worker: the coordinator's phases need it).
A restarted part asks its coordinator whether the app still exists, and for its current graph
(``part`` in the ``status`` reply), before restoring it (``restore``). While it waits for a part,
that tenant's command worker here is busy: two agents coordinating apps of one tenant through
each other at the same moment wait for each other until the part timeout, and both deploys are
rolled back (other tenants' commands go on). Parts are accepted only with the fleet token.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeva.agent.core import AgentCore, App, remote_devices
from edgeva.agent.dataplane.quietlog import QuietLog
from edgeva.agent.fit import fit_metrics, fit_state
from edgeva.agent.fleet import FleetView, pipeline_hops
from edgeva.agent.mqtt import MqttError, MqttOptions, Will, close, connect, is_v5, subscribe_wait
from edgeva.agent.outbox import Outbox
from edgeva.agent.peers import Peers
from edgeva.agent.replies import MUTATING, ReplyCache
from edgeva.agent.restore_gate import RestoreGate
from edgeva.agent.settings import default
from edgeva.schemas.commands import (
    RemoveCommand,
    StartCommand,
    StatusCommand,
    StopCommand,
    UpdateCommand,
    error_reply,
    extract_request_id,
    ok_reply,
    parse_command,
)
from edgeva.schemas.deployment import REQUEST_ID_PATTERN, Deployment, PartOf
from edgeva.schemas.errors import (
    BAD_REQUEST,
    FORBIDDEN,
    INTERNAL,
    LIMIT,
    SETUP_FAILED,
    TIMEOUT,
    UNKNOWN_DEVICE,
    EdgevaError,
    shown,
)
from edgeva.schemas.graph import validate_graph
from edgeva.schemas.metrics import DeviceMetrics, HopMetrics, TenantMetrics
from edgeva.schemas.topics import (
    cmd_subscription,
    cmd_topic,
    cmd_topic_tenant,
    device_metrics_topic,
    device_topic,
    events_topic,
    parse_cmd_topic,
    parse_topic,
    reply_subscription,
    reply_topic,
    state_topic,
    tenant_metrics_topic,
)

log = logging.getLogger("edgeva.bridge")
# Other agents' states tell where peers listen; their metrics give per-hop times of apps that
# span devices, so only an agent with a data plane listens to them (every agent hearing every
# agent's metrics grows the broker's traffic with the square of the fleet).
FLEET_STATES, FLEET_METRICS = "edgeva/v1/+/state", "edgeva/v1/+/metrics"
PART_TIMEOUT_S: float = default("part_timeout")  # --part-timeout
LINK_TIMEOUT_S: float = default("link_timeout")  # --link-timeout
RESTORE_ASK_S = 5.0  # a restarting part asks its coordinator whether the app still exists
FLUSH_SETTLE_S = 2.0  # buffered events go out this long after a reconnect
#: Largest command payload read: a deployment is a few KiB; anything near the broker's own limit
#: (256 MiB for mosquitto) would only cost memory and parse time.
MAX_COMMAND_BYTES = 1 << 20
#: What is kept of a command over MAX_COMMAND_BYTES until its refusal: its request id is read
#: from the first 4 KiB (``extract_request_id``).
OVERSIZED_HEAD = 4096
#: MQTT 5: the largest packet the broker may send this agent (CONNECT Maximum Packet Size);
#: the broker drops a bigger message for us instead of sending it. paho reads each packet
#: whole before any callback (two to three copies of it at once), so this bounds what one
#: message costs the agent before it is sized. Big enough for the largest retained state or
#: device metrics of a device at its limits; a command between MAX_COMMAND_BYTES and this
#: still gets a ``bad_request`` reply. MQTT 3.1.1 has no such property (see docs/security.md).
MAX_INBOUND_PACKET = 8 << 20
#: QoS of the agent's subscriptions. 0: a QoS 1 message over MAX_INBOUND_PACKET is never sent
#: to us but stays in mosquitto's in-flight window for us (2.0.11), and 20 of them (its
#: ``max_inflight_messages``) stalled every later command, every tenant's. QoS 1 bought nothing:
#: the agent connects with a clean start, so the broker resends nothing after a reconnect, and
#: within one connection TCP delivers QoS 0 as surely (a repeat is still answered, not
#: applied twice: agent.replies).
SUB_QOS = 0
MAX_TENANT_WORKERS = 64  # tenants whose commands run at once (a thread each)
TENANT_QUEUE = 256  # commands one tenant may have waiting
TENANT_QUEUE_BYTES = 8 << 20  # bytes of payload one tenant may have waiting (8 commands of the largest size)
WORKER_IDLE_S = 30.0  # a tenant's worker thread ends after this long without commands
MAX_FORWARDS = 4  # updates one tenant may have waiting on a coordinator at once (a thread each)
CONVERGE_EVERY_S = 3.0  # how often parts that missed an update, or a coordinator's word, are retried


def _part_error(device: str, reply: dict) -> EdgevaError:
    err = reply.get("error") or {}
    path = err.get("path")
    return EdgevaError(err.get("code", INTERNAL), f"device {device!r}: {err.get('message', 'failed')}",
                       f"devices.{device}" + (f".{path}" if path else ""))


class _Retry:
    """A callable queued on a tenant's command worker by the agent itself (see _converge_loop)."""

    __slots__ = ("fn", "what")

    def __init__(self, fn: Callable[[], None], what: str) -> None:
        self.fn, self.what = fn, what

    def __call__(self) -> None:
        self.fn()


class _Command:
    """A command as it waits for its tenant's worker. ``size``: the payload's size as received;
    of an oversized payload only its head is kept (``payload``), for the request id."""

    __slots__ = ("topic", "payload", "props", "size")

    def __init__(self, topic: str, payload: bytes, props: Properties | None, size: int) -> None:
        self.topic, self.payload, self.props, self.size = topic, payload, props, size


def _what(item: _Command | _Retry) -> str:
    return item.what if isinstance(item, _Retry) else item.topic


def _queued_bytes(item: _Command | _Retry) -> int:
    return len(item.payload) if isinstance(item, _Command) else 0


class _ResponseTopicError(EdgevaError):
    """The request's response topic is not the sender's: reply on the tenant's reply topic."""


#: what may follow ``.../reply/`` in a response topic: a request id, no wildcard or level
REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


class _Bucket:
    """Token bucket: at most ``rate`` events/s per app, bursts of ``2 * rate``."""

    def __init__(self, rate: float) -> None:
        self.rate, self.tokens, self.t = rate, 2 * rate, time.monotonic()
        self.dropped = 0

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(2 * self.rate, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.dropped += 1
        return False


class AgentBridge:
    """Runs an ``AgentCore`` behind an MQTT connection until ``stop()``."""

    def __init__(
        self,
        core_args: dict[str, Any],
        broker: str,
        options: MqttOptions | None = None,
        metrics_period: float = default("metrics_interval"),
        event_rate: float = default("event_rate"),
        data_addr: str | None = None,
        peers: dict[str, Any] | None = None,
        part_timeout: float = PART_TIMEOUT_S,
        link_timeout: float = LINK_TIMEOUT_S,
        restore_first: bool = False,
        fleet_token: str | None = None,
    ) -> None:
        """``peers``: keywords of ``agent.peers.Peers`` (``bind``, ``advertise``, ``tls``, ...);
        None: no data plane (apps spanning devices are refused). ``part_timeout``: how long a
        coordinator waits for a part's reply; ``link_timeout``: how long a starting part waits
        for the links its relays use (keep it under ``part_timeout``). ``restore_first``: commands
        wait until ``restore()`` is done. ``fleet_token``: the secret every agent of the fleet shares;
        a deploy carrying ``part_of`` (agent to agent) is accepted only with it, so that a tenant
        cannot forge parts (None: parts are refused)."""
        self.fleet_token = fleet_token or None
        self.part_timeout, self.link_timeout = part_timeout, link_timeout
        #: a tenant's commands wait until its saved apps are back (``restore``), not other tenants'
        self._restored = RestoreGate(open_all=not restore_first)
        self.device = core_args["device"]
        options = options or MqttOptions(client_id_prefix=f"edgeva-agent-{self.device}")
        if options.max_packet is None:  # MQTT 5: the broker drops what paho would read whole
            options = dataclasses.replace(options, max_packet=MAX_INBOUND_PACKET)
        self.broker, self.options = broker, options
        self.metrics_period, self.event_rate, self.data_addr = metrics_period, event_rate, data_addr
        self._workers: dict[str, queue.Queue] = {}  # tenant -> its command queue (one thread each)
        self._workers_lock = threading.Lock()
        self._queued: dict[str, int] = {}  # tenant -> payload bytes waiting in its queue (under _workers_lock)
        self._drop_log = QuietLog(log)  # dropped commands: a flood must not flood the log
        self._forwards: dict[str, int] = {}  # tenant -> updates waiting on a coordinator (under _workers_lock)
        # Apps spanning devices that are not yet one graph everywhere (see _converge_loop):
        # coordinated here, (tenant, app) -> parts that missed an update; parts here,
        # (tenant, app) -> the coordinator that has not answered since this agent restarted.
        self._unconverged: dict[tuple[str, str], set[str]] = {}
        self._unconfirmed: dict[tuple[str, str], str] = {}
        self._retrying: set[tuple[str, str, str]] = set()  # retries queued on a tenant's worker
        self.outbox = Outbox()  # events while the broker is away, per tenant
        self.replies = ReplyCache()  # a repeated request id is answered, not applied again (per tenant)
        self.buckets: dict[tuple[str, str], _Bucket] = {}
        self._stop = threading.Event()
        self._state_dirty = threading.Event()
        self.fleet = FleetView()
        self.peers = Peers(self.device, **(peers or {"bind": None}), on_change=self._state_dirty.set)
        if self.peers.enabled and data_addr is None:
            self.data_addr = f"{self.peers.scheme}://{self.peers.adv_host}:{self.peers._next_port}"
        self.core = AgentCore(**core_args, emit_event=self._emit_event, state_changed=self._state_dirty.set,
                              peers=self.peers)
        self.core.hops_for = self._hops
        self.client: mqtt.Client | None = None
        self._cmd_sub = cmd_subscription(self.device)
        self._pending: dict[str, list] = {}  # request id of a command to a peer -> [event, reply]
        self._reply_subs: set[str] = set()
        self._graphs: dict[str, tuple[Deployment, Any]] = {}
        #: called with (DeviceMetrics, {tenant: TenantMetrics}) after each metrics tick's publish
        #: (the Prometheus exporter feeds on them: see agent.exporter)
        self.metrics_sinks: list[Callable[[DeviceMetrics, dict[str, TenantMetrics]], None]] = []

    # -- connection --------------------------------------------------------------------------------
    def start(self) -> None:
        offline = json.dumps({"device": self.device, "status": "offline"})
        self.client = connect(
            self.broker, self.options, will=Will(state_topic(self.device), offline),
            on_connect=self._on_connect,
        )
        self.client.on_message = self._on_message
        subscribe_wait(self.client, [cmd_subscription(self.device), *self._fleet_subs()], qos=SUB_QOS)
        self._publish_state()
        threading.Thread(target=self._tick, name="metrics", daemon=True).start()
        threading.Thread(target=self._converge_loop, name="converge", daemon=True).start()
        log.info("agent %s connected to %s (MQTT %s)", self.device, self.broker, "5" if is_v5(self.client) else "3.1.1")

    def _fleet_subs(self) -> tuple[str, ...]:
        return (FLEET_STATES, FLEET_METRICS) if self.peers.enabled else (FLEET_STATES,)

    def _on_connect(self, client: mqtt.Client) -> None:
        # After a reconnect: subscriptions of a clean session are gone, state must be re-told.
        client.subscribe([(t, SUB_QOS) for t in (cmd_subscription(self.device), *self._fleet_subs(), *self._reply_subs)])
        self._state_dirty.set()
        if len(self.outbox):
            # after a broker restart every client reconnects at once: give subscribers a moment
            threading.Timer(FLUSH_SETTLE_S, self.outbox.flush, args=(client,)).start()

    def _on_message(self, client: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        if (about := device_topic(m.topic)) is not None:
            device, kind = about  # filed under the topic's device: a payload cannot speak for another
            if kind == "metrics":
                self.fleet.put_metrics(device, m.payload)
                return
            st = self.fleet.put_state(device, m.payload)
            if st is not None and device != self.device and st.status == "online":
                self.peers.peer_state(device, st.links)
            return
        topic = parse_topic(m.topic)
        if topic is not None and topic.kind == "reply" and not m.retain:
            waiter = self._pending.get(topic.name)  # type: ignore[arg-type]
            if waiter is not None and waiter[2] == m.topic:  # from the device asked, under the tenant asked
                try:
                    reply = json.loads(m.payload)
                except (ValueError, RecursionError):  # a peer's reply is as hostile as a command
                    reply = None
                ok = isinstance(reply, dict) and isinstance(reply.get("error", {}), dict)
                waiter[1] = reply if ok else {"ok": False, "error": {"code": INTERNAL, "message": "unreadable reply"}}
                waiter[0].set()
            return
        # Some brokers (amqtt 0.12) deliver retained messages we never subscribed to: only
        # our own command topics are commands.
        if m.retain or not mqtt.topic_matches_sub(self._cmd_sub, m.topic):
            return
        # Sized here, before anything is queued: a tenant's oversized commands once waited
        # whole in its queue (256 of 24 MiB: gigabytes) for a worker to refuse them. Only the
        # head is kept, enough to read the request id the refusal is sent to.
        payload, size = m.payload, len(m.payload)
        if size > MAX_COMMAND_BYTES:
            payload = bytes(payload[:OVERSIZED_HEAD])
        tenant = cmd_topic_tenant(m.topic)
        if tenant is None:  # a tenant part no reply topic can name: nobody to answer
            self._drop_log.note("command on %s dropped: not a tenant's command topic", shown(m.topic))
            return
        self._enqueue(tenant, _Command(m.topic, payload, getattr(m, "properties", None), size))

    # -- commands ---------------------------------------------------------------------------------
    def _enqueue(self, tenant: str, item: tuple) -> None:
        """Queue a command for its tenant's worker (started on first use): one tenant's slow
        deploy never holds up another's commands; one tenant's commands stay in order."""
        cost = _queued_bytes(item)
        with self._workers_lock:
            q = self._workers.get(tenant)
            if q is None:
                if len(self._workers) >= MAX_TENANT_WORKERS:
                    self._drop_log.note("commands of %d tenants in progress: %s dropped", len(self._workers),
                                        shown(_what(item)))
                    return
                q = self._workers[tenant] = queue.Queue(maxsize=TENANT_QUEUE)
                threading.Thread(target=self._work, args=(tenant, q), name=f"commands-{tenant}", daemon=True).start()
            queued = self._queued.get(tenant, 0)
            if queued + cost > TENANT_QUEUE_BYTES:  # a flood costs that tenant its own commands only
                self._drop_log.note("tenant %s has %d B of commands queued (at most %d B): %s dropped",
                                    tenant, queued, TENANT_QUEUE_BYTES, shown(_what(item)))
                return
            try:
                q.put_nowait(item)
            except queue.Full:
                self._drop_log.note("tenant %s has %d commands queued: %s dropped", tenant, TENANT_QUEUE,
                                    shown(_what(item)))
                return
            self._queued[tenant] = queued + cost

    def _work(self, tenant: str, q: queue.Queue) -> None:
        # A peer's status question must see the restored apps, not an empty agent.
        while not self._restored.wait(tenant, 0.5):
            if self._stop.is_set():
                return
        idle_since = time.monotonic()
        while not self._stop.is_set():
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() - idle_since > WORKER_IDLE_S:
                    with self._workers_lock:  # _enqueue puts under this lock: nothing is lost
                        if q.empty():
                            del self._workers[tenant]
                            return
                continue
            idle_since = time.monotonic()
            with self._workers_lock:
                left = self._queued.pop(tenant, 0) - _queued_bytes(item)
                if left > 0:
                    self._queued[tenant] = left
            if isinstance(item, _Retry):  # the agent's own retry (_converge_loop), in order with the tenant's commands
                try:
                    item()
                except Exception:
                    log.exception("retry for tenant %s failed", tenant)
                continue
            try:
                self._handle(item.topic, item.payload, item.props, item.size)
            except Exception:  # a bug in replying must not end command handling for everyone
                log.exception("command on %s could not be handled", item.topic)

    def _handle(self, topic: str, payload: bytes, props: Properties | None, size: int | None = None) -> None:
        """Run one command and reply. ``size``: the payload's size as received, when ``payload``
        is only its head (an oversized command, cut in ``_on_message``)."""
        t0 = time.monotonic()
        size = len(payload) if size is None else size
        request_id = tenant = None
        # A reply uses the MQTT 5 response topic only once it is checked against the sender's
        # tenant: until then (a refused topic, say an unknown verb) there is none to use.
        checked: Properties | None = None
        try:
            # Inside the try: every byte of the payload is hostile (a JSON nested 1,000 deep
            # once killed this thread from here).
            request_id = extract_request_id(payload[:MAX_COMMAND_BYTES])
            device, tenant, verb = parse_cmd_topic(topic)
            if device != self.device:
                return
            checked = props = self._check_response_topic(tenant, props)
            if size > MAX_COMMAND_BYTES:
                raise EdgevaError(BAD_REQUEST, f"payload of {size} B is over the limit of "
                                  f"{MAX_COMMAND_BYTES} B")
            cmd = parse_command(verb, payload)
            request_id = getattr(cmd, "request_id", None) or request_id
            if verb in MUTATING and (first := self.replies.get(tenant, request_id)) is not None:
                log.info("%s: request %s was already applied; its reply is sent again", topic, request_id)
                self._reply(tenant, request_id, first, props)
                return
            coord = self._forward_to(tenant, verb, cmd)
            if coord is not None:  # replied by that thread once the coordinator answered
                self._start_forward(coord, tenant, cmd, request_id, props)
                return
            result = self._dispatch(tenant, verb, cmd)
            reply = ok_reply(request_id, result)
            if verb in MUTATING:  # a failed one may be retried with the same id
                self.replies.put(tenant, request_id, reply)
        except EdgevaError as e:
            log.info("%s refused: %s", topic, shown(str(e)))
            reply = error_reply(request_id, e)
            if tenant is None and (tenant := cmd_topic_tenant(topic)) is not None:
                try:  # the topic itself was refused: answer its tenant, where it may read
                    checked = self._check_response_topic(tenant, props)
                except EdgevaError:
                    checked = None
        except Exception as e:  # never let one command take the agent down
            log.exception("command %s failed", topic)
            reply = error_reply(request_id, EdgevaError(INTERNAL, f"{type(e).__name__}: {e}"))
        self._reply(tenant, request_id, reply, checked)
        log.debug("%s handled in %.1f ms", topic, (time.monotonic() - t0) * 1e3)
        if self._state_dirty.is_set():
            self._publish_state()

    def _dispatch(self, tenant: str, verb: str, cmd: Any) -> dict:
        core = self.core
        if verb == "deploy":
            assert isinstance(cmd, Deployment)
            return self._deploy(tenant, cmd)
        if verb in ("start", "stop", "remove", "update"):
            app = core._get(tenant, cmd.app)
            remote = remote_devices(app.deployment, self.device) if app.deployment.part_of is None else set()
            if remote:
                return self._coordinated(tenant, verb, cmd, app, remote)
            if verb == "start" and app.deployment.part_of is not None:  # the coordinator's go
                return core.start(tenant, cmd, link_timeout=self.link_timeout)
        if verb == "status":
            assert isinstance(cmd, StatusCommand)
            result = core.status(tenant, cmd)
            app = core.apps[cmd.app] if cmd.app is not None else None
            if app is not None and app.deployment.part_of is None and remote_devices(app.deployment, self.device):
                result["part"] = self._part(app.deployment, hold=False, token=False)  # what a restarting part adopts
            return result
        handler = {"update": core.update, "start": core.start, "stop": core.stop, "remove": core.remove,
                   "status": core.status, "metrics": core.metrics}[verb]
        return handler(tenant, cmd)

    # -- apps spanning devices ----------------------------------------------------------------------
    def _deploy(self, tenant: str, dep: Deployment) -> dict:
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
            return core._app_result(existing, unchanged=True)
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

    def _forward_to(self, tenant: str, verb: str, cmd: Any) -> str | None:
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

    def _start_forward(self, coord: str, tenant: str, cmd: UpdateCommand, request_id: str | None,
                       props: Properties | None) -> None:
        """Run ``_forward`` on a thread of its own, at most ``MAX_FORWARDS`` per tenant: each
        waits a minute or more on the coordinator, and a flood of updates must cost only the
        tenant that sends it (``limit``), not the agent's threads."""
        with self._workers_lock:
            n = self._forwards.get(tenant, 0)
            if n >= MAX_FORWARDS:
                raise EdgevaError(LIMIT, f"{n} updates of this tenant already wait on their coordinators "
                                  f"(at most {MAX_FORWARDS}); retry when one is answered", "app")
            self._forwards[tenant] = n + 1
        try:
            threading.Thread(target=self._forward, args=(coord, tenant, cmd, request_id, props),
                             name="forward", daemon=True).start()
        except BaseException:
            self._forward_done(tenant)
            raise

    def _forward_done(self, tenant: str) -> None:
        with self._workers_lock:
            left = self._forwards.pop(tenant, 1) - 1
            if left > 0:
                self._forwards[tenant] = left

    def _forward(self, coord: str, tenant: str, cmd: UpdateCommand, request_id: str | None,
                 props: Properties | None) -> None:
        """Send an operator's ``update`` to the app's coordinator and relay its reply. Off the
        command worker: the coordinator sends this part the new graph while we wait."""
        try:
            self._forward_once(coord, tenant, cmd, request_id, props)
        finally:
            self._forward_done(tenant)

    def _forward_once(self, coord: str, tenant: str, cmd: UpdateCommand, request_id: str | None,
                      props: Properties | None) -> None:
        try:
            if coord not in self.fleet.online():
                raise EdgevaError(UNKNOWN_DEVICE, f"the coordinator of app {cmd.app!r}, device {coord!r}, is offline: "
                                  "an update now would leave the parts with different graphs; retry when it is back",
                                  "app")
            # The coordinator waits on the module's device, then on each part (up to 15 s each).
            timeout = self.part_timeout + 15.0 * (1 + len(remote_devices(self.core._get(tenant, cmd.app).deployment,
                                                                          coord)))
            r = self._request(coord, tenant, "update", cmd.model_dump(mode="json", exclude={"request_id"}),
                              timeout=timeout)
            if r.get("ok"):
                reply = ok_reply(request_id, {**(r.get("result") or {}), "coordinator": coord})
            else:
                err = r.get("error") or {}
                reply = error_reply(request_id, EdgevaError(err.get("code", INTERNAL), f"coordinator {coord!r}: "
                                                            f"{err.get('message', 'failed')}", err.get("path")))
        except EdgevaError as e:
            reply = error_reply(request_id, e)
        except Exception as e:
            log.exception("forwarding update of %s to %s failed", cmd.app, coord)
            reply = error_reply(request_id, EdgevaError(INTERNAL, f"{type(e).__name__}: {e}"))
        self._reply(tenant, request_id, reply, props)
        if self._state_dirty.is_set():
            self._publish_state()

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

    def _coordinated(self, tenant: str, verb: str, cmd: Any, app: App, remote: set[str]) -> dict:
        """start/stop/remove/update of an app this agent coordinates."""
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
        with self._workers_lock:
            if missed:  # retried by _converge_loop until each of them has the new graph
                self._unconverged.setdefault(app.key_pair, set()).update(missed)
            else:
                self._unconverged.pop(app.key_pair, None)
        return {**result, "parts": parts}

    def _request(self, device: str, tenant: str, verb: str, payload: dict, timeout: float | None = None) -> dict:
        """Send a command to another agent and wait for its reply (a dict; a timeout reads as
        an error reply). ``timeout``: the part timeout by default."""
        timeout = self.part_timeout if timeout is None else timeout
        rid = f"{self.device}.{uuid.uuid4().hex[:12]}"
        sub = reply_subscription(device, tenant)
        try:
            if sub not in self._reply_subs:
                subscribe_wait(self.client, sub, qos=SUB_QOS)
                self._reply_subs.add(sub)
        except MqttError as e:
            return {"ok": False, "error": {"code": INTERNAL, "message": str(e)}}
        waiter: list = [threading.Event(), None, reply_topic(device, tenant, rid)]
        self._pending[rid] = waiter
        try:
            body = json.dumps({**payload, "request_id": rid}, separators=(",", ":"))
            self.client.publish(cmd_topic(device, tenant, verb), body, qos=1)
            if not waiter[0].wait(timeout):
                return {"ok": False, "error": {"code": TIMEOUT, "message": f"no reply to {verb} within {timeout:.0f}s"}}
            return waiter[1]
        finally:
            self._pending.pop(rid, None)

    # -- restore ----------------------------------------------------------------------------------
    def restore(self) -> None:
        """Bring back the desired state, each tenant's on its own thread; a tenant's commands
        are answered once its own apps are back (a tenant with none: at once), whatever the
        other tenants' apps do. A part of an app
        spanning devices comes back only if its coordinator still has the app: the app may
        have been removed while this device was off (its part could not be told). Asked with
        a ``status`` command; a coordinator that is offline or does not answer in time keeps
        the part (it cannot be told apart from a slow one). The coordinator's answer carries the
        app's current graph (``part``): one updated while this device was down replaces the
        saved one, so that this part uses the stream names the others use."""
        try:
            plan = self.core.restore_plan()
            self._restored.plan(plan)
            self.core.restore(keep=self._coordinator_has, done=self._tenant_restored, plan=plan)
        finally:
            self._restored.set()

    def _tenant_restored(self, tenant: str) -> None:
        """``tenant``'s apps are back: mark those restored without their coordinator's word
        (the state says so), then let its commands run."""
        try:
            with self._workers_lock:
                unconfirmed = [(name, coord) for (t, name), coord in self._unconfirmed.items() if t == tenant]
            with self.core.lock:
                for name, coord in unconfirmed:
                    app = self.core.apps.get(name)
                    if app is not None and app.tenant == tenant:
                        app.awaiting_coordinator = coord
            self._state_dirty.set()
        finally:
            self._restored.open(tenant)

    def _coordinator_has(self, tenant: str, dep: Deployment) -> bool | Deployment:
        if dep.part_of is None or dep.part_of.coordinator == self.device:
            return True
        coord = dep.part_of.coordinator
        deadline = time.monotonic() + 2.0  # its retained state arrives right after our subscribe
        while self.fleet.state(coord) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        answered, verdict = self._ask_coordinator(tenant, dep)
        if not answered:  # kept as saved; _converge_loop asks again until the coordinator answers
            with self._workers_lock:  # tenants restore in parallel
                self._unconfirmed[(tenant, dep.app)] = coord
        return verdict

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
            ready = self._restored.is_open  # per tenant: one tenant's slow restore holds up no other's
            with self._workers_lock:
                work = [((t, a), d, self._converge_part) for (t, a), ds in self._unconverged.items()
                        if ready(t) for d in sorted(ds & online)]
                work += [((t, a), c, self._confirm_part) for (t, a), c in self._unconfirmed.items()
                         if c in online and ready(t)]
            # apps that failed when restored at boot, tried again with the modules' back-off
            work += [((t, a), self.device, self._retry_restore) for t, a in self.core.restores_due() if ready(t)]
            for (tenant, name), device, fn in work:
                key = (tenant, name, device)
                with self._workers_lock:
                    if key in self._retrying:
                        continue
                    self._retrying.add(key)
                self._enqueue(tenant, _Retry(lambda k=key, f=fn: self._retry(k, f), f"retry {name} on {device}"))

    def _retry(self, key: tuple[str, str, str], fn: Callable[[str, str, str], None]) -> None:
        try:
            fn(*key)
        finally:
            with self._workers_lock:
                self._retrying.discard(key)
            if self._state_dirty.is_set():
                self._publish_state()

    def _retry_restore(self, tenant: str, name: str, _device: str) -> None:
        self.core.retry_restore(tenant, name)

    def _converge_part(self, tenant: str, name: str, device: str) -> None:
        """Send ``device`` the current graph of app ``name`` (coordinated here), then its go."""
        app = self.core.apps.get(name)
        if app is None or app.tenant != tenant or app.deployment.part_of is not None \
                or device not in remote_devices(app.deployment, self.device):
            with self._workers_lock:  # removed or changed meanwhile: nothing left to converge
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
        with self._workers_lock:
            left = self._unconverged.get((tenant, name), set())
            left.discard(device)
            if not left:
                self._unconverged.pop((tenant, name), None)

    def _confirm_part(self, tenant: str, name: str, coord: str) -> None:
        """Ask the coordinator again about a part restored without its word; act on the answer."""
        app = self.core.apps.get(name)
        if app is None or app.tenant != tenant or app.deployment.part_of is None:
            with self._workers_lock:
                self._unconfirmed.pop((tenant, name), None)
            return
        answered, verdict = self._ask_coordinator(tenant, app.deployment)
        if not answered:
            return
        with self._workers_lock:
            self._unconfirmed.pop((tenant, name), None)
        with self.core.lock:
            app.awaiting_coordinator = None
        self._state_dirty.set()
        if verdict is False:
            log.info("app %s/%s: removed, its coordinator %s no longer has it", tenant, name, coord)
            self.core.remove(tenant, RemoveCommand(app=name))
        elif isinstance(verdict, Deployment):
            self.core.adopt(tenant, verdict)
            if app.status == "running":
                self.core.start(tenant, StartCommand(app=name))  # send on the new stream names

    def _hops(self, app: App) -> list[HopMetrics] | None:
        dep = app.deployment
        if dep.part_of is not None or not remote_devices(dep, self.device) or app.status != "running":
            return None
        cached = self._graphs.get(app.key)
        if cached is None or cached[0] is not dep:
            cached = self._graphs[app.key] = (dep, self.core._graph(app.tenant, dep))
        return pipeline_hops(cached[1], self.fleet.metrics)

    def _check_response_topic(self, tenant: str, props: Properties | None) -> Properties | None:
        """Refuse an MQTT 5 response topic outside this tenant's own reply topics on this device.
        The agent publishes with its own broker rights, which reach every tenant's topics: used
        as given, a tenant could make it write into another tenant's events. On refusal the
        reply goes to ``reply/{request_id}`` (the props are dropped) and the command is not run."""
        topic = getattr(props, "ResponseTopic", None) if props is not None else None
        if not topic:
            return props
        prefix = reply_topic(self.device, tenant, "x")[:-1]
        if not (topic.startswith(prefix) and REQUEST_ID.match(topic[len(prefix):])):
            raise _ResponseTopicError(BAD_REQUEST, f"response topic {shown(topic)} refused: replies go only to "
                                      f"{prefix}<id> (<id>: {REQUEST_ID.pattern}); nothing was done",
                                      "response_topic")
        return props

    def _reply(self, tenant: str | None, request_id: str | None, reply: bytes, props: Properties | None) -> None:
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        if response_topic:
            out = Properties(PacketTypes.PUBLISH)
            corr = getattr(props, "CorrelationData", None)
            if corr is not None:
                out.CorrelationData = corr
            self.client.publish(response_topic, reply, qos=1, properties=out)
        elif tenant is not None and request_id is not None:
            self.client.publish(reply_topic(self.device, tenant, request_id), reply, qos=1)
        else:
            log.warning("no request_id and no response topic: cannot reply (%s)", reply[:200])

    # -- outputs ----------------------------------------------------------------------------------
    def _emit_event(self, tenant: str, app: str, event: dict) -> None:
        bucket = self.buckets.get((tenant, app))
        if bucket is None:
            bucket = self.buckets[(tenant, app)] = _Bucket(self.event_rate)
        if bucket.take() and self.client is not None:
            self.outbox.publish(self.client, tenant, events_topic(self.device, tenant, app),
                                json.dumps(event, separators=(",", ":")))

    def _publish_state(self) -> None:
        self._state_dirty.clear()
        state = self.core.device_state(self.data_addr)
        self.client.publish(state_topic(self.device), fit_state(state), qos=1, retain=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.metrics_period):
            try:
                self.publish_metrics()
                if self._state_dirty.is_set():
                    self._publish_state()
            except Exception:
                log.exception("metrics publication failed")

    def publish_metrics(self) -> None:
        mods = self.core.module_metrics()
        dm = self.core.device_metrics(mods)
        dm.events_waiting, dm.events_dropped_offline = len(self.outbox), self.outbox.dropped
        self.fleet.put_metrics(self.device, dm)
        self.client.publish(device_metrics_topic(self.device), fit_metrics(dm), qos=0)
        per_tenant = {}
        for tenant in self.core.tenants():
            m = per_tenant[tenant] = self.core.tenant_metrics(tenant, mods=mods)
            self.client.publish(tenant_metrics_topic(self.device, tenant), m.model_dump_json(), qos=0)
        for sink in self.metrics_sinks:
            sink(dm, per_tenant)

    def stop(self) -> None:
        """Stop modules (the desired state keeps the apps for the next start), say offline."""
        self._stop.set()
        self._restored.set()
        self.core.close()
        if self.client is not None:
            offline = json.dumps({"device": self.device, "status": "offline", "ts": time.time()})
            self.client.publish(state_topic(self.device), offline, qos=1, retain=True).wait_for_publish(2)
            close(self.client)
