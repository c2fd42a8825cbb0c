"""``edgeva agent``: run this device's agent until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from pydantic import ValidationError

from edgeva.agent.settings import AgentSettings, mb_to_bytes
from edgeva.control.commands._common import EXIT_UNREACHABLE, fail
from edgeva.control.commands._flags import add_model_flags, flag_errors, model_from_args

#: the argument groups of ``edgeva agent --help`` (a setting's ``Flag.group``): title, description
GROUPS = {
    "paths": (
        "files and URLs tenants' modules may use",
        "Every path a deployment names is confined (see docs/security.md): files read (a decoder's source, a "
        "detector's model) must lie in a media directory, files written (annotate's output) in the tenant's "
        "output directory, URLs need an allowed scheme (and host, when hosts are listed). asset:<name>, "
        "synthetic and cameras are always allowed."),
    "limits": ("per-tenant limits", "What one tenant may take of this device (docs/security.md)."),
    "restarts": (
        "restarts",
        "A module that dies is restarted at once a few times, then with exponential back-off, "
        "forever (its state says backoff, the last error and the next attempt); an operator's stop stops it."),
    "links": (
        "links to other agents (apps spanning devices)",
        "Without --data-bind the agent has no data plane and refuses apps that span devices. Of two "
        "agents, the one whose device id sorts first listens (one port per peer, announced in its "
        "retained state) and the other dials it."),
}


def _fleet_token(s: AgentSettings) -> str | None:
    """The fleet token from --fleet-token-file (first line) or --fleet-token / EDGEVA_FLEET_TOKEN."""
    if s.fleet_token_file:
        return Path(s.fleet_token_file).read_text().strip() or None
    return s.fleet_token or None


def _run(args: argparse.Namespace) -> int:
    from edgeva.agent.bridge import AgentBridge
    from edgeva.agent.limits import TenantLimits
    from edgeva.agent.mqtt import MqttError, MqttOptions
    from edgeva.agent.paths import PathPolicy
    from edgeva.agent.store import default_state_dir
    from edgeva.agent.supervisor import RestartPolicy

    try:  # each value was checked as it was parsed; this makes the typed settings of them
        s = model_from_args(AgentSettings, args)
    except ValidationError as e:
        return fail(2, f"edgeva agent: {flag_errors(e)}")
    password = s.password
    if s.password_file:
        if password:
            return fail(2, "edgeva agent: give --password (EDGEVA_PASSWORD) or --password-file "
                           "(EDGEVA_PASSWORD_FILE), not both")
        try:
            # the first line, without its line end: a file written by `echo` or a mounted Secret
            password = Path(s.password_file).read_text(encoding="utf-8").split("\n", 1)[0].rstrip("\r")
        except (OSError, UnicodeDecodeError) as e:
            return fail(2, f"edgeva agent: --password-file {s.password_file}: {e}")
        if not password:
            return fail(2, f"edgeva agent: --password-file {s.password_file}: the first line is empty")
    options = MqttOptions(
        username=s.username, password=password, ca=s.tls_ca, cert=s.tls_cert,
        key=s.tls_key, insecure=s.tls_insecure, protocol=s.protocol,
        client_id_prefix=f"edgeva-agent-{s.device}",
    )
    state_dir = Path(s.state_dir) if s.state_dir else default_state_dir(s.device)
    peers = None
    if s.data_bind:
        from edgeva.agent.dataplane.link import LinkTLS

        tls_files = (s.link_tls_ca, s.link_tls_cert, s.link_tls_key)
        if any(tls_files) and not all(tls_files):
            return fail(2, "edgeva agent: --link-tls-ca, --link-tls-cert and --link-tls-key go together")
        tls = LinkTLS(*tls_files) if all(tls_files) else None  # type: ignore[arg-type]  # all given
        peers = {"bind": s.data_bind, "advertise": s.data_advertise, "tls": tls,
                 "tls_check_name": s.link_tls_check_name, "max_message_size": mb_to_bytes(s.link_max_mb)}
    # The metrics port first: a bad one stops the agent before it touches anything (shared
    # memory of a previous run, the broker). Its range was checked as the flag was parsed.
    exporter = None
    if s.metrics_port is not None:
        from edgeva.agent.exporter import MetricsServer

        try:
            exporter = MetricsServer(s.metrics_port, s.metrics_host).start()
        except OSError as e:
            return fail(2, f"edgeva agent: --metrics-port {s.metrics_port} on {s.metrics_host}: {e}")
        logging.getLogger("edgeva.agent").info(
            "Prometheus metrics on http://%s:%d/metrics", s.metrics_host, exporter.port)
    try:
        bridge = AgentBridge(
            {"device": s.device, "state_dir": state_dir, "prefix": s.prefix,
             "nslots": s.slots, "metrics_interval": s.metrics_interval,
             "link_slot_bytes": mb_to_bytes(s.link_slot_mb),
             "paths": PathPolicy.make(
                 media_dirs=s.media_dir, tenant_media_root=s.tenant_media_root, output_root=s.output_root,
                 url_schemes=s.url_scheme, url_hosts=s.url_host),
             "limits": TenantLimits(max_apps=s.max_apps, max_modules=s.max_modules,
                                    max_slot_bytes=mb_to_bytes(s.max_slot_mb),
                                    max_shm_bytes=mb_to_bytes(s.max_shm_mb)),
             "restart": RestartPolicy(first_s=s.restart_backoff_first, cap_s=s.restart_backoff_cap)},
            s.broker, options, metrics_period=s.metrics_interval, event_rate=s.event_rate, peers=peers,
            part_timeout=s.part_timeout, link_timeout=s.link_timeout, restore_first=True,
            fleet_token=_fleet_token(s),
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
    logging.getLogger("edgeva.agent").info("device %s ready; desired state in %s", s.device, state_dir)
    done.wait()
    bridge.stop()
    if exporter is not None:
        exporter.stop()
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """``edgeva agent``: one flag per field of ``AgentSettings`` (agent/settings.py), where each
    setting's default, bounds and help live."""
    p = subparsers.add_parser("agent", help="run the device agent (hosts modules, obeys MQTT commands)")
    add_model_flags(p, AgentSettings, GROUPS)
    p.set_defaults(func=_run)
