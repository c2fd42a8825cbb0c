"""``edgeva plan FILE... [--deploy]``: propose where each module of some apps should run.

Reads the online devices from their retained states and the measured per-module costs from
their device metrics (``proc_ms`` of running modules; ``--costs FILE`` or built-in defaults
for types nothing runs yet), places the modules (``control.plan``), prints why each went
where, and with ``--deploy`` publishes each app to the device of its first module (that agent
coordinates the parts).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from edgeva.control.commands._common import DEFAULT_BROKER, UsageError, fail, guarded
from edgeva.control.plan import LINK_MS
from edgeva.schemas.topics import (
    DEFAULT_TENANT,
    device_metrics_subscription,
    parse_topic,
    state_subscription,
)

HELP = "propose a placement of apps over the online devices (and deploy it)"


def _observe(args: argparse.Namespace) -> tuple[set[str], list[dict]]:
    from edgeva.agent.mqtt import MqttOptions
    from edgeva.control.client import EdgevaClient

    opts = MqttOptions(username=args.username, password=args.password, client_id_prefix="edgeva-plan")
    online, metrics = set(), {}
    with EdgevaClient(args.broker, "plan", args.tenant, options=opts) as client, \
            client.subscribe(state_subscription(), device_metrics_subscription()) as sub:
        deadline = time.monotonic() + args.listen
        while time.monotonic() < deadline:
            try:
                msg = sub.get(timeout=max(0.05, deadline - time.monotonic()))
            except Exception:
                break
            data = msg.json()
            if not isinstance(data, dict) or "device" not in data:
                continue
            if getattr(parse_topic(msg.topic), "kind", None) == "state":
                (online.add if data.get("status") == "online" else online.discard)(data["device"])
            else:
                metrics[data["device"]] = data
    return online, list(metrics.values())


def _run(args: argparse.Namespace) -> int:
    def body() -> int:
        from edgeva.control.commands.deploy import read_deployment
        from edgeva.control.plan import measured_costs, place
        from edgeva.schemas.deployment import Deployment

        apps = [Deployment.model_validate(read_deployment(f)) for f in args.files]
        if args.devices:
            online, metrics = set(args.devices.split(",")), []
        else:
            online, metrics = _observe(args)
        if not online:
            raise UsageError("no online device seen (is an agent running? try --devices)")
        costs = json.loads(Path(args.costs).read_text()) if args.costs else {}
        costs.update(measured_costs(metrics))
        capacity = {d: args.cores for d in online}
        try:
            plan = place(apps, capacity, costs, link_ms=args.link_ms)
        except ValueError as e:
            raise UsageError(str(e)) from None
        print(plan.explain())
        placed = plan.deployments(apps)
        if args.json:
            print(json.dumps([d.model_dump(mode="json", exclude_none=True) for d in placed], indent=2))
        if not args.deploy:
            return 0
        from edgeva.agent.mqtt import MqttOptions
        from edgeva.control.client import EdgevaClient

        code = 0
        for dep in placed:
            target = next(iter(dep.modules.values())).device
            opts = MqttOptions(username=args.username, password=args.password, client_id_prefix="edgeva-plan")
            with EdgevaClient(args.broker, target, args.tenant, options=opts) as client:
                reply = client.request("deploy", dep.model_dump(mode="json", exclude_none=True), timeout=60)
            if reply.get("ok"):
                print(f"deployed {dep.app} (coordinated by {target})")
            else:
                err = reply.get("error") or {}
                code = fail(1, f"{dep.app}: error {err.get('code')} at {err.get('path')}: {err.get('message')}")
        return code

    return guarded("plan", body)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plan", help=HELP, description=__doc__)
    p.add_argument("files", nargs="+", metavar="FILE", help="deployment files (modules with a device stay there)")
    p.add_argument("--broker", default=os.environ.get("EDGEVA_BROKER", DEFAULT_BROKER), help="mqtt://HOST:PORT")
    p.add_argument("--tenant", default=os.environ.get("EDGEVA_TENANT", DEFAULT_TENANT))
    p.add_argument("--username", default=os.environ.get("EDGEVA_USERNAME"))
    p.add_argument("--password", default=os.environ.get("EDGEVA_PASSWORD"))
    p.add_argument("--devices", help="comma-separated devices to use instead of the online ones (no broker needed)")
    p.add_argument("--costs", metavar="JSON", help='{"type": ms per frame} for types nothing measured yet')
    p.add_argument("--cores", type=float, default=4.0, help="cores per device (default: 4)")
    p.add_argument("--link-ms", type=float, default=LINK_MS,
                   help="cost of a frame crossing a link, ms (default: %(default)g)")
    p.add_argument("--listen", type=float, default=1.5, metavar="S", help="seconds to gather states and metrics")
    p.add_argument("--json", action="store_true", help="also print the placed deployments")
    p.add_argument("--deploy", action="store_true", help="deploy the placement")
    p.set_defaults(func=_run)
