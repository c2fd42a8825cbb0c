"""``edgeva agent``: run this device's agent until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from edgeva.control.commands._common import DEFAULT_BROKER, EXIT_UNREACHABLE, fail


def _fleet_token(args: argparse.Namespace) -> str | None:
    """The fleet token from --fleet-token-file (first line) or --fleet-token / EDGEVA_FLEET_TOKEN."""
    if args.fleet_token_file:
        return Path(args.fleet_token_file).read_text().strip() or None
    return args.fleet_token or None


def _csv(values: list[str] | None) -> list[str] | None:
    """Repeated and comma-separated values as one list (None when the flag was not given)."""
    return None if values is None else [v.strip() for x in values for v in x.split(",") if v.strip()]


def _positive(text: str) -> float:
    """An argparse type: a number of seconds > 0."""
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds > 0")
    return v


def _run(args: argparse.Namespace) -> int:
    from edgeva.agent.bridge import AgentBridge
    from edgeva.agent.limits import TenantLimits
    from edgeva.agent.mqtt import MqttError, MqttOptions
    from edgeva.agent.paths import PathPolicy
    from edgeva.agent.store import default_state_dir
    from edgeva.agent.supervisor import RestartPolicy

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
        from edgeva.agent.dataplane.link import LinkTLS

        tls_files = (args.link_tls_ca, args.link_tls_cert, args.link_tls_key)
        if any(tls_files) and not all(tls_files):
            return fail(2, "edgeva agent: --link-tls-ca, --link-tls-cert and --link-tls-key go together")
        tls = LinkTLS(*tls_files) if all(tls_files) else None
        peers = {"bind": args.data_bind, "advertise": args.data_advertise, "tls": tls,
                 "tls_check_name": args.link_tls_check_name, "max_message_size": int(args.link_max_mb * (1 << 20))}
    # The metrics port first: a bad one stops the agent before it touches anything (shared
    # memory of a previous run, the broker).
    exporter = None
    if args.metrics_port is not None:
        if not 0 <= args.metrics_port <= 65535:
            return fail(2, f"edgeva agent: --metrics-port {args.metrics_port}: a TCP port is 0..65535")
        from edgeva.agent.exporter import MetricsServer

        try:
            exporter = MetricsServer(args.metrics_port, args.metrics_host).start()
        except OSError as e:
            return fail(2, f"edgeva agent: --metrics-port {args.metrics_port} on {args.metrics_host}: {e}")
        logging.getLogger("edgeva.agent").info(
            "Prometheus metrics on http://%s:%d/metrics", args.metrics_host, exporter.port)
    try:
        bridge = AgentBridge(
            {"device": args.device, "state_dir": state_dir, "prefix": args.prefix,
             "nslots": args.slots, "metrics_interval": args.metrics_interval,
             "link_slot_bytes": int(args.link_slot_mb * (1 << 20)),
             "paths": PathPolicy.make(
                 media_dirs=args.media_dir, tenant_media_root=args.tenant_media_root, output_root=args.output_root,
                 url_schemes=_csv(args.url_scheme), url_hosts=_csv(args.url_host)),
             "limits": TenantLimits(max_apps=args.max_apps, max_modules=args.max_modules,
                                    max_slot_bytes=int(args.max_slot_mb * (1 << 20)),
                                    max_shm_bytes=int(args.max_shm_mb * (1 << 20))),
             "restart": RestartPolicy(first_s=args.restart_backoff_first, cap_s=args.restart_backoff_cap)},
            args.broker, options, metrics_period=args.metrics_interval, event_rate=args.event_rate, peers=peers,
            part_timeout=args.part_timeout, link_timeout=args.link_timeout, restore_first=True,
            fleet_token=_fleet_token(args),
        )
    except ValueError as e:
        if exporter is not None:
            exporter.stop()
        return fail(2, f"edgeva agent: {e}")
    if exporter is not None:
        collector, core = exporter.collector, bridge.core
        bridge.metrics_sinks.append(lambda dm, tenants: collector.update(dm, tenants, core.device_state()))
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        bridge.start()
    except MqttError as e:
        bridge.core.close()
        if exporter is not None:
            exporter.stop()
        return fail(EXIT_UNREACHABLE, f"edgeva agent: {e}")
    bridge.restore()
    logging.getLogger("edgeva.agent").info("device %s ready; desired state in %s", args.device, state_dir)
    done.wait()
    bridge.stop()
    if exporter is not None:
        exporter.stop()
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
    p.add_argument("--metrics-port", type=int, metavar="N",
                   help="serve Prometheus metrics at http://HOST:N/metrics (0: a free port; see docs/prometheus.md)")
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="address for --metrics-port; 0.0.0.0 lets a Prometheus on another host scrape "
                        "(the page shows every tenant's apps) (default: %(default)s)")
    p.add_argument("--slots", type=int, default=8, help="slots per ring (default: 8)")
    f = p.add_argument_group(
        "files and URLs tenants' modules may use",
        "Every path a deployment names is confined (see docs/security.md): files read (a decoder's source, a "
        "detector's model) must lie in a media directory, files written (annotate's output) in the tenant's "
        "output directory, URLs need an allowed scheme (and host, when hosts are listed). asset:<name>, "
        "synthetic and cameras are always allowed.")
    env_media = os.environ.get("EDGEVA_MEDIA_DIRS")
    f.add_argument("--media-dir", action="append", metavar="DIR",
                   default=env_media.split(os.pathsep) if env_media else None,
                   help="a directory every tenant may read media from; repeatable (env EDGEVA_MEDIA_DIRS, "
                        "separated by ':'; default: the working directory, none when that is /)")
    f.add_argument("--tenant-media-root", metavar="ROOT", default=os.environ.get("EDGEVA_TENANT_MEDIA_ROOT"),
                   help="each tenant also reads ROOT/<tenant> (env EDGEVA_TENANT_MEDIA_ROOT)")
    f.add_argument("--output-root", metavar="ROOT", default=os.environ.get("EDGEVA_OUTPUT_ROOT"),
                   help="each tenant writes files only under ROOT/<tenant> (env EDGEVA_OUTPUT_ROOT; default: ./out)")
    f.add_argument("--url-scheme", action="append", metavar="SCHEME",
                   help="URL scheme a source may use; repeatable or comma-separated (default: rtsp,rtsps)")
    f.add_argument("--url-host", action="append", metavar="HOST",
                   help="host a source URL or an inference server URL may name: a name, an IP address or a network "
                        "(192.168.1.0/24); repeatable or comma-separated; '*' for any host (default: none, so that "
                        "no tenant reaches other hosts of the network through its modules)")
    lim = p.add_argument_group("per-tenant limits", "What one tenant may take of this device (docs/security.md).")
    lim.add_argument("--max-apps", type=int, default=32, metavar="N", help="apps per tenant (default: 32)")
    lim.add_argument("--max-modules", type=int, default=64, metavar="N", help="module instances per tenant, and modules one app may declare (default: 64)")
    lim.add_argument("--max-slot-mb", type=float, default=64.0, metavar="MB",
                     help="largest output message of a tenant's module: frame and crops (default: 64)")
    lim.add_argument("--max-shm-mb", type=float, default=2048.0, metavar="MB",
                     help="shared memory all of a tenant's rings may take (default: 2048)")
    r = p.add_argument_group(
        "restarts", "A module that dies is restarted at once a few times, then with exponential back-off, "
        "forever (its state says backoff, the last error and the next attempt); an operator's stop stops it.")
    r.add_argument("--restart-backoff-first", type=_positive, default=1.0, metavar="S",
                   help="first back-off wait, doubled at each failure (default: 1)")
    r.add_argument("--restart-backoff-cap", type=_positive, default=300.0, metavar="S",
                   help="longest back-off wait (default: 300, as Kubernetes)")
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
    g.add_argument("--fleet-token", metavar="SECRET", default=os.environ.get("EDGEVA_FLEET_TOKEN"),
                   help="secret shared by every agent of the fleet (env EDGEVA_FLEET_TOKEN): a part of an app "
                        "spanning devices is accepted only with it, so that tenants cannot forge parts; "
                        "without it this agent refuses parts sent to it")
    g.add_argument("--fleet-token-file", metavar="FILE", help="read the fleet token from FILE (keeps it out of ps)")
    g.add_argument("--part-timeout", type=float, default=45.0, metavar="S",
                   help="how long a coordinating agent waits for another device's part to answer (default: 45)")
    g.add_argument("--link-timeout", type=float, default=15.0, metavar="S",
                   help="how long a starting part waits for its links to peers to be up before it fails "
                        "(a TLS peer from another CA never connects); keep it under --part-timeout (default: 15)")
    p.set_defaults(func=_run)
