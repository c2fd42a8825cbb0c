"""``edgeva broker --port N [--host 127.0.0.1]``: run the embedded MQTT broker until Ctrl-C."""

from __future__ import annotations

import argparse
import threading

from edgeva.agent.settings import DEFAULT_BROKER_HOST, DEFAULT_BROKER_PORT


def _run(args: argparse.Namespace) -> int:
    from edgeva.control.broker import EmbeddedBroker

    broker = EmbeddedBroker(args.port, args.host)
    try:
        broker.start()
    except RuntimeError as exc:
        print(f"edgeva broker: {exc}")
        return 3
    print(f"edgeva broker listening on {broker.url} (MQTT 3.1.1, anonymous, QoS 1, retained, "
          "last will); Ctrl-C stops it", flush=True)
    try:
        threading.Event().wait()  # the broker runs in its own thread; Ctrl-C ends the wait
    finally:
        broker.stop()
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "broker", help="run the embedded MQTT broker (amqtt: 3.1.1, no auth; use mosquitto "
        "for tenants and ACLs)")
    p.add_argument("--port", type=int, default=DEFAULT_BROKER_PORT, help="TCP port (default: %(default)s)")
    p.add_argument("--host", default=DEFAULT_BROKER_HOST,
                   help="address to bind (default: %(default)s; 0.0.0.0 for every interface: "
                        "anyone reaching it can command every agent)")
    p.set_defaults(func=_run)
