"""The agent's MQTT side: commands in, replies/state/metrics/events out.

Commands are queued by paho's network thread and executed by one worker thread per tenant, so
a slow deploy never stalls the connection (keep-alives, other replies) nor another tenant's
commands, and two commands of one tenant never interleave (``AgentCore`` keeps tenants' commands
apart: modules are never shared across tenants, app names are reserved while deployed).
Replies go to the MQTT 5 response topic (with the correlation data) when the request named one
under the sender's own reply topics (any other is refused: ``_check_response_topic``), else to
``edgeva/v1/{device}/{tenant}/reply/{request_id}``.

Apps spanning devices (modules with a ``device`` other than this one) are coordinated by the
``Coordinator`` this bridge owns (``agent.coordinator``: parts, forwarding an update to the
coordinator, the two-phase update, restore and convergence); the bridge hands it the commands
that concern such apps and sends, for it, commands to other agents (``request``) and work on a
tenant's command worker (``submit``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeva.agent.coordinator import LINK_TIMEOUT_S, PART_TIMEOUT_S, Coordinator
from edgeva.agent.core import AgentCore, remote_devices
from edgeva.agent.dataplane.quietlog import QuietLog
from edgeva.agent.fit import fit_metrics, fit_state
from edgeva.agent.fleet import FleetView
from edgeva.agent.mqtt import MqttError, MqttOptions, Will, close, connect, is_v5, subscribe_wait
from edgeva.agent.outbox import Outbox
from edgeva.agent.peers import Peers
from edgeva.agent.replies import MUTATING, ReplyCache
from edgeva.agent.restore_gate import RestoreGate
from edgeva.agent.settings import default
from edgeva.schemas.commands import (
    StatusCommand,
    error_reply,
    extract_request_id,
    ok_reply,
    parse_command,
)
from edgeva.schemas.deployment import REQUEST_ID_PATTERN, Deployment
from edgeva.schemas.errors import BAD_REQUEST, INTERNAL, TIMEOUT, EdgevaError, shown
from edgeva.schemas.metrics import DeviceMetrics, TenantMetrics
from edgeva.schemas.topics import (
    cmd_subscription,
    cmd_topic,
    cmd_topic_tenant,
    device_metrics_subscription,
    device_metrics_topic,
    device_topic,
    events_topic,
    parse_cmd_topic,
    parse_topic,
    reply_prefix,
    reply_subscription,
    reply_topic,
    state_subscription,
    state_topic,
    tenant_metrics_topic,
)

log = logging.getLogger("edgeva.bridge")
# Other agents' states tell where peers listen; their metrics give per-hop times of apps that
# span devices, so only an agent with a data plane listens to them (every agent hearing every
# agent's metrics grows the broker's traffic with the square of the fleet).
FLEET_STATES, FLEET_METRICS = state_subscription(), device_metrics_subscription()
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


class _Retry:
    """A callable queued on a tenant's command worker by the agent itself (``submit``: the
    coordinator's retries)."""

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
        self.outbox = Outbox()  # events while the broker is away, per tenant
        self.replies = ReplyCache()  # a repeated request id is answered, not applied again (per tenant)
        self.buckets: dict[tuple[str, str], _Bucket] = {}
        self._stop = threading.Event()
        self._state_dirty = threading.Event()
        self.fleet = FleetView()
        self.peers = Peers(self.device, **(peers or {"bind": None}), on_change=self._state_dirty.set)
        if self.peers.enabled and data_addr is None:
            self.data_addr = self.peers.address
        self.core = AgentCore(**core_args, emit_event=self._emit_event, state_changed=self._state_dirty.set,
                              peers=self.peers)
        self.coordinator = Coordinator(self.core, self.fleet, request=self.request, submit=self.submit,
                                       ready=self._restored.is_open, state_changed=self._state_dirty.set,
                                       part_timeout=part_timeout, link_timeout=link_timeout,
                                       fleet_token=fleet_token)
        self.core.hops_for = self.coordinator.hops
        self.client: mqtt.Client | None = None
        self._cmd_sub = cmd_subscription(self.device)
        self._pending: dict[str, list] = {}  # request id of a command to a peer -> [event, reply]
        self._reply_subs: set[str] = set()
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
        self.coordinator.start()
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
            if isinstance(item, _Retry):  # the agent's own retry (``submit``), in order with the tenant's commands
                try:
                    item()
                except Exception:
                    log.exception("retry for tenant %s failed", tenant)
                if self._state_dirty.is_set():
                    self._publish_state()
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
            coord = self.coordinator.forward_to(tenant, verb, cmd)
            if coord is not None:  # replied by that thread once the coordinator answered
                self.coordinator.forward(coord, tenant, cmd, request_id,
                                         functools.partial(self._forwarded, tenant, request_id, props))
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
        """Run a parsed command: the core's, unless it concerns an app spanning devices (the
        coordinator's)."""
        core, coordinator = self.core, self.coordinator
        if verb == "deploy":
            assert isinstance(cmd, Deployment)
            if cmd.part_of is not None or remote_devices(cmd, self.device):
                return coordinator.deploy(tenant, cmd)
            return core.deploy(tenant, cmd)
        if verb in ("start", "stop", "remove", "update"):
            app = core.get_app(tenant, cmd.app)
            remote = coordinator.remote_parts(app)
            if remote:
                return coordinator.command(tenant, verb, cmd, app, remote)
            if verb == "start" and app.deployment.part_of is not None:  # the coordinator's go
                return coordinator.start_part(tenant, cmd)
        if verb == "status":
            assert isinstance(cmd, StatusCommand)
            result = core.status(tenant, cmd)
            app = core.apps[cmd.app] if cmd.app is not None else None
            if app is not None and (part := coordinator.status_part(app)) is not None:
                result["part"] = part  # what a restarting part adopts
            return result
        handler = {"update": core.update, "start": core.start, "stop": core.stop, "remove": core.remove,
                   "status": core.status, "metrics": core.metrics}[verb]
        return handler(tenant, cmd)

    def _forwarded(self, tenant: str, request_id: str | None, props: Properties | None, reply: bytes) -> None:
        """The coordinator's reply to an update this part forwarded (``Coordinator.forward``)."""
        self._reply(tenant, request_id, reply, props)
        if self._state_dirty.is_set():
            self._publish_state()

    # -- for the coordinator ------------------------------------------------------------------------
    def submit(self, tenant: str, fn: Callable[[], None], what: str) -> None:
        """Run ``fn`` on ``tenant``'s command worker, in order with that tenant's commands
        (dropped, and logged, as a command would be when its queue is full); the state is
        published after it if it changed."""
        self._enqueue(tenant, _Retry(fn, what))

    def request(self, device: str, tenant: str, verb: str, payload: dict, timeout: float) -> dict:
        """Send a command to another agent and wait for its reply (a dict; a timeout, or a
        subscription the broker refused, reads as an error reply)."""
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

    def restore(self) -> None:
        """Bring back the desired state, each tenant's on its own thread; a tenant's commands
        are answered once its own apps are back (a tenant with none: at once), whatever the
        other tenants' apps do. A part of an app spanning devices comes back only if its
        coordinator still has the app, with the coordinator's current graph
        (``Coordinator.keep_part``)."""
        try:
            plan = self.core.restore_plan()
            self._restored.plan(plan)
            self.core.restore(keep=self.coordinator.keep_part, done=self._tenant_restored, plan=plan)
        finally:
            self._restored.set()

    def _tenant_restored(self, tenant: str) -> None:
        """``tenant``'s apps are back: the coordinator marks those restored without their
        coordinator's word, then its commands run."""
        try:
            self.coordinator.restored(tenant)
        finally:
            self._restored.open(tenant)

    def _check_response_topic(self, tenant: str, props: Properties | None) -> Properties | None:
        """Refuse an MQTT 5 response topic outside this tenant's own reply topics on this device.
        The agent publishes with its own broker rights, which reach every tenant's topics: used
        as given, a tenant could make it write into another tenant's events. On refusal the
        reply goes to ``reply/{request_id}`` (the props are dropped) and the command is not run."""
        topic = getattr(props, "ResponseTopic", None) if props is not None else None
        if not topic:
            return props
        t = parse_topic(topic)
        if t is None or t.kind != "reply" or t.device != self.device or t.tenant != tenant:
            raise _ResponseTopicError(BAD_REQUEST, f"response topic {shown(topic)} refused: replies go only to "
                                      f"{reply_prefix(self.device, tenant)}<id> (<id>: {REQUEST_ID_PATTERN}); "
                                      "nothing was done", "response_topic")
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
        self.coordinator.stop()
        self._restored.set()
        self.core.close()
        if self.client is not None:
            offline = json.dumps({"device": self.device, "status": "offline", "ts": time.time()})
            self.client.publish(state_topic(self.device), offline, qos=1, retain=True).wait_for_publish(2)
            close(self.client)
