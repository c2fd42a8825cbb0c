"""Builds ``control/nodered/flows.json``, the Node-RED operator flows and dashboard.

The flow file is generated so that it cannot drift from what it drives: the deployments of its
``deploy <app>`` inject nodes (and dashboard buttons) are the demo's own (``control.demo.apps``),
and the code of its function nodes lives beside it in ``functions/*.js``, readable and diffable.
``python -m edgeva.control.nodered.build`` rewrites the file; ``--check`` fails when it is stale
(a test runs that). Node ids are derived from names, so a rebuild changes only what changed.

Broker host and port, the target device and tenant come from the environment of Node-RED
(``EDGEVA_MQTT_HOST``, ``EDGEVA_MQTT_PORT``, ``EDGEVA_DEVICE``, ``EDGEVA_TENANT``): see
docs/nodered.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from edgeva.control.demo.apps import ZONE, demo_apps
from edgeva.schemas.topics import (
    PREFIX,
    device_metrics_subscription,
    events_subscription,
    state_subscription,
    tenant_metrics_subscription,
)

HERE = Path(__file__).resolve().parent
FLOWS = HERE / "flows.json"
FUNCTIONS = HERE / "functions"
APPS = ("tracking", "roi", "reid")
# The RoI the "update RoI polygon" inject moves the demo's zone to: the left half of the road.
ALT_ZONE = [[60, 190], [380, 190], [380, 330], [60, 330]]


def node_id(key: str) -> str:
    """A stable 16-hex-digit Node-RED id for ``key``."""
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def deployments() -> dict[str, dict]:
    """The demo's three deployments (they name bundled assets only, no path of this machine,
    so that the flow file runs on any device that has edgeva installed)."""
    return {dep["app"]: dep for dep in demo_apps()}


class Flow:
    """Collects nodes; ``wire`` keeps each node's outputs as Node-RED lists them."""

    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.by_id: dict[str, dict] = {}

    def add(self, key: str, type_: str, tab: str | None, x: int | None = None, y: int | None = None,
            nout: int = 0, **fields) -> str:
        nid = node_id(key)
        node = {"id": nid, "type": type_}
        if tab is not None:
            node["z"] = node_id(tab)
        node.update(fields)
        if x is not None:
            node["x"], node["y"] = x, y
            node["wires"] = [[] for _ in range(nout)]
        assert nid not in self.by_id, key
        self.nodes.append(node)
        self.by_id[nid] = node
        return nid

    def wire(self, src: str, dst: str, port: int = 0) -> None:
        self.by_id[src]["wires"][port].append(dst)


def js(name: str) -> str:
    return (FUNCTIONS / f"{name}.js").read_text()


def function(f: Flow, key: str, tab: str, x: int, y: int, name: str, outputs: int,
             init: str = "", labels: list[str] | None = None) -> str:
    return f.add(key, "function", tab, x, y, outputs, name=name, func=js(key), outputs=outputs,
                 timeout=0, noerr=0, initialize=js(init) if init else "", finalize="", libs=[],
                 outputLabels=labels or [])


def inject(f: Flow, key: str, tab: str, x: int, y: int, name: str, topic: str, payload,
           repeat: str = "", once: bool = False) -> str:
    ptype = "json" if isinstance(payload, dict) else "str"
    text = json.dumps(payload, indent=1) if isinstance(payload, dict) else payload
    return f.add(key, "inject", tab, x, y, 1, name=name,
                 props=[{"p": "payload"}, {"p": "topic", "vt": "str"}], repeat=repeat,
                 crontab="", once=once, onceDelay="1", topic=topic, payload=text,
                 payloadType=ptype)


def mqtt_in(f: Flow, key: str, tab: str, x: int, y: int, topic: str, qos: str, broker: str) -> str:
    return f.add(key, "mqtt in", tab, x, y, 1, name=topic, topic=topic, qos=qos, datatype="utf8",
                 broker=broker, nl=False, rap=True, rh=0, inputs=0)


def debug(f: Flow, key: str, tab: str, x: int, y: int, name: str) -> str:
    return f.add(key, "debug", tab, x, y, 0, name=name, active=True, tosidebar=True,
                 console=False, tostatus=False, complete="payload", targetType="msg",
                 statusVal="", statusType="auto")


def comment(f: Flow, key: str, tab: str, x: int, y: int, name: str, info: str = "") -> str:
    return f.add(key, "comment", tab, x, y, 0, name=name, info=info)


def link_pair(f: Flow, key: str, out_tab: str, out_xy: tuple[int, int], in_tab: str,
              in_xy: tuple[int, int], name: str) -> tuple[str, str]:
    """A link out (on ``out_tab``) and its link in (on ``in_tab``): wires across tabs."""
    out_id, in_id = node_id(key + ":out"), node_id(key + ":in")
    f.add(key + ":out", "link out", out_tab, *out_xy, 0, name=name, mode="link", links=[in_id])
    f.add(key + ":in", "link in", in_tab, *in_xy, 1, name=name, links=[out_id])
    return out_id, in_id


def build() -> list[dict]:
    """Every node of flows.json, in a stable order."""
    f = Flow()
    deps = deployments()
    ops, dash = "tab:operator", "tab:dashboard"
    f.add(ops, "tab", None, label="edgeva operator", disabled=False, env=[], info=(
        "Drive edgeva agents over MQTT (docs/protocol.md): deploy the demo apps, move the RoI, "
        "stop / start / remove apps; device state, events and metrics in words. Needs "
        "EDGEVA_MQTT_HOST, EDGEVA_MQTT_PORT and EDGEVA_DEVICE in Node-RED's environment "
        "(docs/nodered.md)."))
    f.add(dash, "tab", None, label="edgeva dashboard", disabled=False, env=[], info=(
        "Node-RED Dashboard 2.0 widgets of the operator dashboard at /dashboard."))
    broker = f.add("broker", "mqtt-broker", None, name="edgeva broker",
                   broker="${EDGEVA_MQTT_HOST}", port="${EDGEVA_MQTT_PORT}", clientid="",
                   autoConnect=True, usetls=False, protocolVersion="5", keepalive="60",
                   cleansession=True, autoUnsubscribe=True, birthTopic="", birthQos="0",
                   birthRetain="false", birthPayload="", birthMsg={}, closeTopic="",
                   closeQos="0", closeRetain="false", closePayload="", closeMsg={}, willTopic="",
                   willQos="0", willRetain="false", willPayload="", willMsg={}, userProps="",
                   sessionExpiry="")

    # -- commands --------------------------------------------------------------------------
    comment(f, "c:commands", ops, 170, 40, "Commands -> EDGEVA_DEVICE (click an inject node)",
            "Each inject node sends one command to the device named by EDGEVA_DEVICE (tenant "
            "EDGEVA_TENANT, default 'default'). Set EDGEVA_FPS / EDGEVA_SOURCE to change every "
            "decoder of a deploy. Replies come back below, matched to their request.")
    cmd = function(f, "command", ops, 560, 200, "send command", 2, init="command_init",
                   labels=["command (MQTT)", "readable"])
    out = f.add("mqtt-out", "mqtt out", ops, 790, 180, 0, name="edgeva cmd", topic="", qos="1",
                retain="false", respTopic="", contentType="", userProps="", correl="", expiry="",
                broker=broker)
    f.wire(cmd, out)
    y = 80
    for app in APPS:
        f.wire(inject(f, f"deploy:{app}", ops, 170, y, f"deploy {app}", "deploy", deps[app]), cmd)
        y += 40
    roi_args = {"app": "roi", "module": "roi", "args": {"polygons": {"crossing": ALT_ZONE}}}
    f.wire(inject(f, "update:roi", ops, 170, y, "update RoI polygon", "update", roi_args), cmd)
    y += 40
    back = {"app": "roi", "module": "roi", "args": {"polygons": {"crossing": ZONE}}}
    f.wire(inject(f, "update:roi-back", ops, 170, y, "reset RoI polygon", "update", back), cmd)
    y += 40
    for verb in ("stop", "start", "remove"):
        for app in APPS:
            f.wire(inject(f, f"{verb}:{app}", ops, 170, y, f"{verb} {app}", verb, {"app": app}), cmd)
            y += 40
    f.wire(inject(f, "status", ops, 170, y, "status", "status", {}), cmd)
    cmd_y = y + 80

    # -- replies ---------------------------------------------------------------------------
    log = function(f, "log", ops, 1110, 420, "readable log", 2, labels=["line", "last lines"])
    f.wire(cmd, log, 1)
    comment(f, "c:replies", ops, 190, cmd_y, "Replies, matched to their request")
    rin = mqtt_in(f, "in:reply", ops, 190, cmd_y + 40, f"{PREFIX}/+/+/reply/#", "1", broker)
    sweep = inject(f, "sweep", ops, 190, cmd_y + 80, "unanswered?", "sweep", "", repeat="5")
    reply = function(f, "reply", ops, 560, cmd_y + 60, "match replies", 1, labels=["reply"])
    f.wire(rin, reply)
    f.wire(sweep, reply)
    f.wire(reply, log)

    # -- monitoring ------------------------------------------------------------------------
    my = cmd_y + 160
    comment(f, "c:monitor", ops, 190, my, "Devices, events and metrics in words")
    sin = mqtt_in(f, "in:state", ops, 190, my + 40, state_subscription(), "1", broker)
    ein = mqtt_in(f, "in:events", ops, 190, my + 100, events_subscription(), "0", broker)
    tin = mqtt_in(f, "in:metrics", ops, 190, my + 160, tenant_metrics_subscription(), "0", broker)
    din = mqtt_in(f, "in:devmetrics", ops, 190, my + 220, device_metrics_subscription(), "0", broker)
    state = function(f, "state", ops, 560, my + 40, "device state", 2, labels=["readable", "refresh"])
    events = function(f, "events", ops, 560, my + 100, "events", 3,
                      labels=["readable", "reid alerts", "refresh"])
    metrics = function(f, "metrics", ops, 560, my + 190, "app metrics", 4,
                       labels=["fps", "latency", "refresh", "readable"])
    tables = function(f, "tables", ops, 850, my + 300, "tables", 4,
                      labels=["devices", "apps", "roi", "app choices"])
    f.wire(sin, state)
    f.wire(ein, events)
    f.wire(tin, metrics)
    f.wire(din, metrics)
    for src, port in ((state, 0), (events, 0), (metrics, 3)):
        f.wire(src, log, port)
    for src, port in ((state, 1), (events, 2), (metrics, 2)):
        f.wire(src, tables, port)
    f.wire(log, debug(f, "debug:log", ops, 1320, 400, "edgeva"))
    http = f.add("http:summary", "http in", ops, 190, my + 300, 1, name="", url="/edgeva/summary",
                 method="get", upload=False, swaggerDoc="")
    summary = function(f, "summary", ops, 560, my + 300, "summary", 1)
    resp = f.add("http:response", "http response", ops, 790, my + 300, 0, name="",
                 statusCode="", headers={"content-type": "application/json"})
    f.wire(http, summary)
    f.wire(summary, resp)

    # -- dashboard -------------------------------------------------------------------------
    ui = f.add("ui:base", "ui-base", None, name="edgeva", path="/dashboard", appIcon="",
               includeClientData=True, acceptsClientConfig=["ui-notification", "ui-control"],
               showPathInSidebar=False, headerContent="page", navigationStyle="default",
               titleBarStyle="default", showReconnectNotification=True,
               notificationDisplayTime=1, showDisconnectNotification=True, allowInstall=False)
    theme = f.add("ui:theme", "ui-theme", None, name="edgeva",
                  colors={"surface": "#1f3b57", "primary": "#0d74ce", "bgPage": "#f4f6f9",
                          "groupBg": "#ffffff", "groupOutline": "#d9d9e0"},
                  sizes={"density": "compact", "pagePadding": "12px", "groupGap": "12px",
                         "groupBorderRadius": "4px", "widgetGap": "8px"})
    page = f.add("ui:page", "ui-page", None, name="Fleet", ui=ui, path="/fleet", icon="cctv",
                 layout="grid", theme=theme,
                 breakpoints=[{"name": "Default", "px": "0", "cols": "3"},
                              {"name": "Tablet", "px": "576", "cols": "6"},
                              {"name": "Small Desktop", "px": "768", "cols": "9"},
                              {"name": "Desktop", "px": "1024", "cols": "12"}],
                 order=1, className="", visible="true", disabled="false")
    groups = {}
    for i, (key, name, width) in enumerate([
        ("devices", "Devices", 6), ("control", "Control", 6), ("apps", "Apps", 12),
        ("fps", "Frames per second", 6), ("latency", "Latency p50 (ms)", 6),
        ("roi", "RoI counts", 6), ("reid", "Re-id alerts", 6), ("log", "Messages", 12),
    ]):
        groups[key] = f.add(f"ui:group:{key}", "ui-group", None, name=name, page=page,
                            width=str(width), height="1", order=i + 1, showTitle=True,
                            className="", visible="true", disabled="false", groupType="default")

    def table(key: str, group: str, x: int, y: int, columns: list[str]) -> str:
        return f.add(key, "ui-table", dash, x, y, 0, group=groups[group], name=key.split(":")[-1],
                     label="", order=1, width="0", height="0", maxrows=0, passthru=False,
                     autocols=False, showSearch=False, deselect=True, selectionType="none",
                     columns=[{"title": c, "key": c, "keyType": "key", "type": "text",
                               "width": "", "align": "start"} for c in columns],
                     mobileBreakpoint="sm", mobileBreakpointType="defaults", action="replace",
                     className="")

    def chart(key: str, group: str, x: int, y: int, label: str, ylabel: str) -> str:
        return f.add(key, "ui-chart", dash, x, y, 1, group=groups[group], name=label, label=label,
                     order=1, chartType="line", category="topic", categoryType="msg",
                     xAxisLabel="", xAxisProperty="", xAxisPropertyType="timestamp",
                     xAxisType="time", xAxisFormat="", xAxisFormatType="auto", xmin="", xmax="",
                     yAxisLabel=ylabel, yAxisProperty="payload", yAxisPropertyType="msg",
                     ymin="0", ymax="", bins=10, action="append", stackSeries=False,
                     pointShape="circle", pointRadius=2, showLegend=True, removeOlder="5",
                     removeOlderUnit="60", removeOlderPoints="", colors=[
                         "#0095FF", "#FF0000", "#FF7F0E", "#2CA02C", "#A347E1", "#D62728",
                         "#FF9896", "#9467BD", "#C5B0D5"],
                     textColor=["#666666"], textColorDefault=True, gridColor=["#e5e5e5"],
                     gridColorDefault=True, width="6", height="5", className="",
                     interpolation="linear")

    def button(key: str, group: str, x: int, y: int, label: str, topic: str, payload,
               order: int, width: int = 2) -> str:
        ptype = "json" if isinstance(payload, dict) else "str"
        text = json.dumps(payload) if isinstance(payload, dict) else payload
        return f.add(key, "ui-button", dash, x, y, 1, group=groups[group], name=label, label=label,
                     order=order, width=str(width), height="1", emulateClick=False, tooltip="",
                     color="", bgcolor="", className="", icon="", iconPosition="left",
                     payload=text, payloadType=ptype, topic=topic, topicType="str",
                     buttonColor="", textColor="", iconColor="", enableClick=True,
                     enablePointerdown=False, pointerdownPayload="", pointerdownPayloadType="str",
                     enablePointerup=False, pointerupPayload="", pointerupPayloadType="str")

    # monitor tab -> dashboard tab
    links = {}
    for i, (key, name) in enumerate([("devices", "devices table"), ("apps", "apps table"),
                                     ("roi", "roi table"), ("choices", "app choices"),
                                     ("fps", "fps points"), ("latency", "latency points"),
                                     ("alerts", "reid alerts"), ("log", "last lines")]):
        links[key] = link_pair(f, f"link:{key}", ops, (1120, my + 360 + 40 * i), dash,
                               (120, 80 + 80 * i), name)
    for port, key in enumerate(("devices", "apps", "roi", "choices")):
        f.wire(tables, links[key][0], port)
    f.wire(metrics, links["fps"][0], 0)
    f.wire(metrics, links["latency"][0], 1)
    f.wire(events, links["alerts"][0], 1)
    f.wire(log, links["log"][0], 1)

    f.wire(links["devices"][1], table("ui:devices", "devices", 380, 80,
                                      ["device", "status", "apps", "modules", "version", "cpu"]))
    f.wire(links["apps"][1], table("ui:apps", "apps", 380, 160,
                                   ["device", "app", "status", "fps", "latency p50 ms", "frames",
                                    "dropped", "events"]))
    f.wire(links["roi"][1], table("ui:roi", "roi", 380, 240,
                                  ["device", "app", "zone", "inside now", "entered", "left"]))
    f.wire(links["fps"][1], chart("ui:fps", "fps", 380, 400, "fps per app", "frames/s"))
    f.wire(links["latency"][1], chart("ui:latency", "latency", 380, 480, "latency per app", "ms"))
    alerts_split = f.add("ui:alerts-split", "switch", dash, 300, 560, 2, name="alert or list",
                         property="topic", propertyType="msg",
                         rules=[{"t": "eq", "v": "alert", "vt": "str"},
                                {"t": "eq", "v": "alerts", "vt": "str"}],
                         checkall="true", repair=False, outputs=2)
    f.wire(links["alerts"][1], alerts_split)
    note = f.add("ui:notify", "ui-notification", dash, 560, 540, 1, ui=ui, position="top right",
                 colorDefault=False, color="#b45309", displayTime="4", showCountdown=True,
                 outputs=1, allowDismiss=True, dismissText="Close", allowConfirm=False,
                 confirmText="Confirm", raw=False, className="", name="reid alert")
    f.wire(alerts_split, note, 0)
    f.wire(alerts_split, table("ui:alerts", "reid", 560, 580,
                               ["time", "device", "app", "person", "similarity", "frame"]), 1)
    f.wire(links["log"][1], table("ui:log", "log", 380, 640, ["time", "what", "message"]))

    # dashboard controls -> "send command"
    comment(f, "c:dash", dash, 160, 40, "Dashboard widgets (fed from the operator tab)")
    to_cmd_out, to_cmd_in = link_pair(f, "link:command", dash, (980, 760), ops, (390, 240),
                                      "dashboard commands")
    f.wire(to_cmd_in, cmd)
    target = f.add("ui:target", "ui-text", dash, 380, 720, 0, group=groups["control"], order=1,
                   width="0", height="0", name="target", label="commands go to",
                   format="{{msg.payload}}", layout="row-spread", style=False, font="", fontSize=16,
                   color="#717171", wrapText=False, className="", value="payload",
                   valueType="msg")
    tell = f.add("ui:target-inject", "inject", dash, 160, 720, 1, name="EDGEVA_DEVICE",
                 props=[{"p": "payload"}], repeat="", crontab="", once=True, onceDelay="1",
                 topic="", payload="EDGEVA_DEVICE", payloadType="env")
    f.wire(tell, target)
    for i, app in enumerate(APPS):
        f.wire(button(f"ui:deploy:{app}", "control", 380, 760 + 40 * i, f"deploy {app}", "deploy",
                      deps[app], order=2 + i), to_cmd_out)
    dash_cmd = f.add("dashboard_command", "function", dash, 720, 900, 1, name="app commands",
                     func=js("dashboard_command"), outputs=1, timeout=0, noerr=0, initialize="",
                     finalize="", libs=[])
    f.wire(dash_cmd, to_cmd_out)
    choose = f.add("ui:choose", "ui-dropdown", dash, 380, 900, 1, group=groups["control"],
                   name="app", label="app", tooltip="", order=5, width="3", height="1",
                   passthru=False, multiple=False, chips=False, clearable=False,
                   options=[{"label": a, "value": a, "type": "str"} for a in APPS], payload="",
                   topic="select", topicType="str", className="", typeIsComboBox=False,
                   msgTrigger="onChange")
    f.wire(links["choices"][1], choose)
    f.wire(choose, dash_cmd)
    for i, verb in enumerate(("stop", "start", "remove", "status")):
        f.wire(button(f"ui:{verb}", "control", 380, 940 + 40 * i, verb, verb, "", order=6 + i,
                      width=1 if verb != "status" else 2), dash_cmd)
    return f.nodes


def render() -> str:
    """flows.json's text."""
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m edgeva.control.nodered.build [--check]``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="fail if flows.json is not up to date")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not FLOWS.exists() or FLOWS.read_text() != text:
            print(f"{FLOWS} is stale: run python -m edgeva.control.nodered.build", file=sys.stderr)
            return 1
        return 0
    FLOWS.write_text(text)
    print(f"wrote {FLOWS} ({len(build())} nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
