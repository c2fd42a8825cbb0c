"""``edgeva metrics --device ID [--app A] [--watch]``: per-app and per-module metrics.

Without ``--watch``: one ``cmd/metrics`` request, printed as tables. With ``--watch``: that
request (it proves the agent answers), then a redraw on every message of
``edgeva/v1/{device}/{tenant}/metrics`` (and ``edgeva/v1/{device}/metrics`` with
``--device-wide``) until Ctrl-C, or ``--count`` refreshes. FPS is computed between two
messages, so the first view shows ``-``.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from edgeva.control.commands._common import (
    EXIT_OK,
    Payload,
    add_verb,
    guarded,
    open_client,
    print_reply,
    render_generic,
    table,
)
from edgeva.schemas.metrics import DeviceMetrics, TenantMetrics

HELP = "show an app's (or all the tenant's apps') metrics; --watch keeps redrawing"
_CLEAR = "\x1b[H\x1b[2J"


def _fps(tm: TenantMetrics, prev: TenantMetrics | None, app: str) -> float | None:
    if prev is None or app not in prev.apps or tm.ts <= prev.ts:
        return None
    return (tm.apps[app].frames - prev.apps[app].frames) / (tm.ts - prev.ts)


def metrics_view(
    tm: TenantMetrics,
    prev: TenantMetrics | None = None,
    modules: set[str] | None = None,
    device: DeviceMetrics | None = None,
) -> str:
    """The compact view: one row per app, one per module (only ``modules`` when given),
    and with ``device`` the device's CPU, memory and links."""
    apps = table(
        ["APP", "FRAMES", "FPS", "DROPPED", "P50 MS", "P95 MS", "P99 MS", "EVENTS", "LAGGING"],
        [[name, a.frames, _fps(tm, prev, name), a.dropped, a.latency_ms.p50, a.latency_ms.p95,
          a.latency_ms.p99, a.events, a.lagging] for name, a in sorted(tm.apps.items())],
    )
    mods = table(
        ["MODULE", "TYPE", "IN", "OUT", "PROC P50", "PROC P95", "OCCUPANCY", "DROPS", "RESTARTS"],
        [[name, m.type, m.frames_in, m.frames_out, m.proc_ms.p50, m.proc_ms.p95,
          # the fullest consumer is the one that matters: it is the next to drop or block
          f"{max(m.occupancy.values()):.0%}" if m.occupancy else None,
          sum(m.dropped.values()), m.restarts]
         for name, m in sorted(tm.modules.items()) if modules is None or name in modules],
    )
    parts = [f"device {tm.device}, tenant {tm.tenant}, every {tm.interval_s:g}s", apps, "", mods]
    if device is not None:
        cpu = f"{device.cpu_percent:.0f}%" if device.cpu_percent is not None else "-"
        mem = f"{device.mem_mb:.0f} MB" if device.mem_mb is not None else "-"
        parts += ["", f"device cpu {cpu}, memory {mem}"]
        if device.links:
            parts.append(table(
                ["PEER", "UP", "SENT B", "RECV B", "DROPPED", "SER P50", "NET P50", "DESER P50"],
                [[peer, lk.connected, lk.bytes_sent, lk.bytes_received, lk.dropped,
                  lk.serialise_ms.p50, lk.network_ms.p50, lk.deserialise_ms.p50]
                 for peer, lk in sorted(device.links.items())],
            ))
    return "\n".join(parts)


def render_metrics(args: argparse.Namespace, result: Payload) -> None:
    """A ``cmd/metrics`` reply (a ``TenantMetrics``) as tables."""
    try:
        print(metrics_view(TenantMetrics.model_validate(result)))
    except ValidationError:
        render_generic(args, result)


def _app_modules(client: object, args: argparse.Namespace) -> set[str] | None:
    """Instance names of ``--app``'s modules, from a status reply (None: show them all)."""
    reply = client.request("status", {"app": args.app}, timeout=args.timeout)  # type: ignore[attr-defined]
    try:
        mods = reply["result"]["apps"][args.app]["modules"]
        return {m["instance"] for m in mods.values()}
    except (KeyError, TypeError, AttributeError):
        return None


def _watch(args: argparse.Namespace) -> int:
    payload = {"app": args.app} if args.app else {}
    redraw = sys.stdout.isatty() and not args.json

    def body() -> int:
        with open_client(args) as client:
            first = client.request("metrics", payload, timeout=args.timeout)
            if not first.get("ok"):
                return print_reply(args, first, None)
            modules = _app_modules(client, args) if args.app else None
            prev: TenantMetrics | None = None
            device: DeviceMetrics | None = None
            try:
                current: TenantMetrics | None = TenantMetrics.model_validate(first["result"])
            except ValidationError:
                current = None
            shown = 0
            stream = client.watch_metrics(args.app, device_wide=args.device_wide)
            while True:
                if current is not None:
                    if args.json:
                        print(current.model_dump_json(), flush=True)
                    else:
                        view = metrics_view(current, prev, modules, device)
                        print((_CLEAR if redraw else "\n") + view, flush=True)
                    shown += 1
                    if args.count and shown >= args.count:
                        return EXIT_OK
                msg = next(stream)
                if isinstance(msg, DeviceMetrics):
                    device = msg
                    if args.json:
                        print(msg.model_dump_json(), flush=True)
                    continue
                prev, current = current, msg

    return guarded("metrics", body)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_verb(subparsers, "metrics", HELP, app="optional", render=render_metrics)
    p.add_argument("--watch", action="store_true", help="keep redrawing as metrics arrive")
    p.add_argument("--device-wide", action="store_true",
                   help="with --watch: also the device's CPU, memory and links (needs read "
                        "access to edgeva/v1/{device}/metrics)")
    p.add_argument("--count", type=int, default=0, metavar="N",
                   help="with --watch: stop after N refreshes (default: until Ctrl-C)")
    default = p.get_default("func")
    p.set_defaults(func=lambda args: _watch(args) if args.watch else default(args))
