"""``edgeva agent``: run this device's agent until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from control.commands._common import DEFAULT_BROKER, EXIT_UNREACHABLE, fail


def _run(args: argparse.Namespace) -> int:
    from agent.bridge import AgentBridge
    from agent.mqtt import MqttError, MqttOptions
    from agent.store import default_state_dir

    password = args.password
    if args.password_file:
        if password:
            return fail(2, "edgeva agent: give --password (EDGEVA_PASSWORD) or --password-file "
                           "(EDGEVA_PASSWORD_FILE), not both")
        try:
            # the first line, without its line end: a file written by `echo` or a mounted Secret
            password = Path(args.password_file).read_text(encoding="utf-8").split("\n", 1)[0].rstrip("\r")
        except (OSError, UnicodeDecodeError) as e:
            return fail(2, f"edgeva agent: --password-file {args.password_file}: {e}")
        if not password:
            return fail(2, f"edgeva agent: --password-file {args.password_file}: the first line is empty")
    options = MqttOptions(
        username=args.username, password=password, ca=args.tls_ca, cert=args.tls_cert,
        key=args.tls_key, insecure=args.tls_insecure, protocol=args.protocol,
        client_id_prefix=f"edgeva-agent-{args.device}",
    )
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir(args.device)
    peers = None
    if args.data_bind:
        from agent.dataplane.link import LinkTLS

        tls_files = (args.link_tls_ca, args.link_tls_cert, args.link_tls_key)
        if any(tls_files) and not all(tls_files):
            return fail(2, "edgeva agent: --link-tls-ca, --link-tls-cert and --link-tls-key go together")
        tls = LinkTLS(*tls_files) if all(tls_files) else None
        peers = {"bind": args.data_bind, "advertise": args.data_advertise, "tls": tls,
                 "tls_check_name": args.link_tls_check_name, "max_message_size": int(args.link_max_mb * (1 << 20))}
    try:
        bridge = AgentBridge(
            {"device": args.device, "state_dir": state_dir, "prefix": args.prefix,
             "nslots": args.slots, "metrics_interval": args.metrics_interval,
             "link_slot_bytes": int(args.link_slot_mb * (1 << 20))},
            args.broker, options, metrics_period=args.metrics_interval, event_rate=args.event_rate, peers=peers,
            part_timeout=args.part_timeout, link_timeout=args.link_timeout, restore_first=True,
        )
    except ValueError as e:
        return fail(2, f"edgeva agent: {e}")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        bridge.start()
    except MqttError as e:
        bridge.core.close()
        return fail(EXIT_UNREACHABLE, f"edgeva agent: {e}")
    bridge.restore()
    logging.getLogger("edgeva.agent").info("device %s ready; desired state in %s", args.device, state_dir)
    done.wait()
    bridge.stop()
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("agent", help="run the device agent (hosts modules, obeys MQTT commands)")
    p.add_argument("--device", required=True, help="this device's id (letters, digits, _ . -)")
    p.add_argument("--broker", default=os.environ.get("EDGEVA_BROKER", DEFAULT_BROKER),
                   help="mqtt://HOST:PORT or mqtts://HOST:PORT (env EDGEVA_BROKER; default: %(default)s)")
    p.add_argument("--state-dir", help="where the desired state lives (default: ~/.local/state/edgeva/DEVICE)")
    p.add_argument("--prefix", help="shared-memory name prefix (default: the device id)")
    p.add_argument("--username", default=os.environ.get("EDGEVA_USERNAME"), help="broker user (env EDGEVA_USERNAME)")
    p.add_argument("--password", default=os.environ.get("EDGEVA_PASSWORD"), help="broker password (env EDGEVA_PASSWORD)")
    p.add_argument("--password-file", metavar="FILE", default=os.environ.get("EDGEVA_PASSWORD_FILE"),
                   help="read the broker password from FILE's first line, e.g. a mounted Kubernetes "
                        "Secret (env EDGEVA_PASSWORD_FILE)")
    p.add_argument("--tls-ca", metavar="PEM", help="CA certificate(s) to verify the broker")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate")
    p.add_argument("--tls-key", metavar="PEM", help="client certificate's key")
    p.add_argument("--tls-insecure", action="store_true", help="do not check the broker's host name")
    p.add_argument("--protocol", choices=["auto", "5", "3.1.1"], default="auto", help="MQTT version (default: auto)")
    p.add_argument("--metrics-interval", type=float, default=2.0, metavar="S", help="seconds between metrics (default: 2)")
    p.add_argument("--event-rate", type=float, default=100.0, metavar="N", help="events per second per app at most (default: 100)")
    p.add_argument("--slots", type=int, default=8, help="slots per ring (default: 8)")
    g = p.add_argument_group(
        "links to other agents (apps spanning devices)",
        "Without --data-bind the agent has no data plane and refuses apps that span devices. Of two "
        "agents, the one whose device id sorts first listens (one port per peer, announced in its "
        "retained state) and the other dials it.")
    g.add_argument("--data-bind", metavar="tcp://HOST:PORT", default=os.environ.get("EDGEVA_DATA_BIND"),
                   help="host to listen on for peers' links and first port to try (0: any free port; N: "
                        "N, N+1, ... one per peer) (env EDGEVA_DATA_BIND); tls+tcp:// with the --link-tls-* files")
    g.add_argument("--data-advertise", metavar="HOST", help="host peers dial (default: the --data-bind host)")
    g.add_argument("--link-tls-ca", metavar="PEM", help="links over mutual TLS: CA that signs every agent's certificate")
    g.add_argument("--link-tls-cert", metavar="PEM", help="this agent's link certificate")
    g.add_argument("--link-tls-key", metavar="PEM", help="this agent's link certificate's key")
    g.add_argument("--link-tls-check-name", action="store_true",
                   help="also require a listener's certificate to name its device id (subjectAltName)")
    g.add_argument("--link-max-mb", type=float, default=16.0, metavar="MB",
                   help="largest message on a link, same on every agent (default: 16)")
    g.add_argument("--link-slot-mb", type=float, default=8.0, metavar="MB",
                   help="slot size of rings fed by a link: the largest message a peer's module may send "
                        "here (default: 8, a 1080p RGB frame fits)")
    g.add_argument("--part-timeout", type=float, default=45.0, metavar="S",
                   help="how long a coordinating agent waits for another device's part to answer (default: 45)")
    g.add_argument("--link-timeout", type=float, default=15.0, metavar="S",
                   help="how long a starting part waits for its links to peers to be up before it fails "
                        "(a TLS peer from another CA never connects); keep it under --part-timeout (default: 15)")
    p.set_defaults(func=_run)
