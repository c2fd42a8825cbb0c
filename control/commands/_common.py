"""What every device sub-command shares: connection options, one request, printing, exit codes.

Exit codes: 0 the device said ok; 1 it refused (``error <code> at <path>: <message>``) or the
input file is invalid; 2 usage error; 3 the broker is unreachable or the device did not answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, get_args

from edgeva.agent.settings import DEFAULT_BROKER, AgentSettings, default
from edgeva.schemas.errors import EdgevaError
from edgeva.schemas.topics import DEFAULT_TENANT

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
#: how long a command waits for the device's reply unless it says (``add_verb(timeout=...)``) or ``--timeout`` does
REPLY_TIMEOUT_S = 10.0
#: the MQTT versions ``--protocol`` takes, as ``edgeva agent``'s (agent/settings.py)
PROTOCOLS = list(get_args(AgentSettings.model_fields["protocol"].annotation))

Payload = dict[str, Any]
Render = Callable[[argparse.Namespace, Payload], None]


class UsageError(Exception):
    """Bad command-line input: printed with the command name, exit code 2."""


class InvalidInput(Exception):
    """An input file the device would refuse, caught before sending: exit code 1."""


def add_connection_args(p: argparse.ArgumentParser, timeout: float = REPLY_TIMEOUT_S) -> None:
    """``--device`` and everything needed to reach it; defaults come from the environment."""
    p.add_argument("--device", required=True, help="device id (as given to `edgeva agent --device`)")
    p.add_argument("--tenant", default=os.environ.get("EDGEVA_TENANT", DEFAULT_TENANT),
                   help="tenant whose apps to address (env EDGEVA_TENANT; default: %(default)s)")
    p.add_argument("--broker", default=os.environ.get("EDGEVA_BROKER", DEFAULT_BROKER),
                   help="mqtt://HOST:PORT or mqtts://HOST:PORT (env EDGEVA_BROKER; default: %(default)s)")
    p.add_argument("--username", default=os.environ.get("EDGEVA_USERNAME"),
                   help="broker user, usually the tenant (env EDGEVA_USERNAME)")
    p.add_argument("--password", default=os.environ.get("EDGEVA_PASSWORD"),
                   help="broker password (env EDGEVA_PASSWORD: keeps it out of the process list)")
    p.add_argument("--tls-ca", metavar="PEM", help="CA certificate(s) to verify the broker (mqtts://)")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate (mqtts://)")
    p.add_argument("--tls-key", metavar="PEM", help="client certificate's key (mqtts://)")
    p.add_argument("--tls-insecure", action="store_true",
                   help="do not check that the broker's certificate names its host")
    p.add_argument("--protocol", choices=PROTOCOLS, default=default("protocol"),
                   help="MQTT version; auto tries 5 then 3.1.1 (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=timeout, metavar="S",
                   help="seconds to wait for the device's reply (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the raw JSON reply")


def open_client(args: argparse.Namespace) -> Any:
    """An ``EdgevaClient`` built from the connection arguments."""
    from edgeva.agent.mqtt import MqttOptions
    from edgeva.control.client import EdgevaClient

    options = MqttOptions(
        username=args.username, password=args.password, ca=args.tls_ca, cert=args.tls_cert,
        key=args.tls_key, insecure=args.tls_insecure, protocol=args.protocol,
        client_id_prefix="edgeva-cli",
    )
    return EdgevaClient(args.broker, args.device, args.tenant, options=options)


def fail(code: int, message: str) -> int:
    """Print ``message`` on stderr, return ``code``."""
    print(message, file=sys.stderr)
    return code


def guarded(command: str, body: Callable[[], int]) -> int:
    """Run ``body``, turning the known failures into a message and an exit code."""
    from edgeva.agent.mqtt import MqttError
    from edgeva.control.client import BadReply

    try:
        return body()
    except UsageError as exc:
        return fail(EXIT_USAGE, f"edgeva {command}: error: {exc}")
    except MqttError as exc:  # includes RequestTimeout
        return fail(EXIT_UNREACHABLE, f"edgeva {command}: {exc}")
    except BadReply as exc:
        return fail(EXIT_REFUSED, f"edgeva {command}: {exc}")
    except InvalidInput as exc:
        return fail(EXIT_REFUSED, str(exc))
    except EdgevaError as exc:
        # raised before anything is sent: a device/tenant/app name that cannot be a topic part
        return fail(EXIT_USAGE, f"edgeva {command}: error: {exc.message}")
    except ValueError as exc:  # a malformed --broker URL
        return fail(EXIT_USAGE, f"edgeva {command}: error: {exc}")


def print_reply(args: argparse.Namespace, reply: Payload, render: Render | None) -> int:
    """Print a reply (raw with ``--json``) and return its exit code."""
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    elif reply.get("ok"):
        (render or render_generic)(args, reply.get("result") or {})
    if reply.get("ok"):
        return EXIT_OK
    err = reply.get("error") or {}
    where = f" at {err['path']}" if err.get("path") else ""
    return fail(EXIT_REFUSED, f"error {err.get('code')}{where}: {err.get('message')}")


def run_request(
    args: argparse.Namespace, verb: str, payload: Callable[[], Payload], render: Render | None = None
) -> int:
    """Build the payload, send ``cmd/{verb}``, print the reply; every failure -> exit code."""

    def body() -> int:
        data = payload()  # before connecting: a usage error costs no broker round trip
        with open_client(args) as client:
            reply = client.request(verb, data, timeout=args.timeout)
        return print_reply(args, reply, render)

    return guarded(verb, body)


def add_verb(
    subparsers: argparse._SubParsersAction,
    verb: str,
    help: str,
    *,
    app: str = "required",
    app_help: str | None = None,
    payload: Callable[[argparse.Namespace], Payload] | None = None,
    render: Render | None = None,
    timeout: float = REPLY_TIMEOUT_S,
) -> argparse.ArgumentParser:
    """Register ``edgeva VERB --device ID [--app A]`` sending ``{"app": A}`` (or ``payload``).

    ``app`` is ``"required"``, ``"optional"`` (omitted = every app of the tenant) or ``"none"``.
    Returns the parser so that a command can add its own options.
    """
    p = subparsers.add_parser(verb, help=help, description=help)
    add_connection_args(p, timeout=timeout)
    if app != "none":
        default_help = "application name" + ("" if app == "required" else " (default: all)")
        p.add_argument("--app", required=app == "required", help=app_help or default_help)

    def default_payload(args: argparse.Namespace) -> Payload:
        return {"app": args.app} if getattr(args, "app", None) is not None else {}

    build = payload or default_payload
    p.set_defaults(func=lambda args: run_request(args, verb, lambda: build(args), render))
    return p


# -- readable output ------------------------------------------------------------------------


def fmt(value: Any) -> str:
    """A scalar for a table cell: numbers rounded, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    if isinstance(value, list | tuple):
        return ",".join(fmt(v) for v in value) or "-"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart."""
    cells = [list(headers)] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def tree(value: Any, indent: int = 0) -> list[str]:
    """Nested dicts/lists as indented ``key: value`` lines (YAML-like, for people)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item and not _flat_list(item):
                lines.append(f"{pad}{key}:")
                lines.extend(tree(item, indent + 2))
            else:
                lines.append(f"{pad}{key}: {json.dumps(item) if isinstance(item, dict) else fmt(item)}")
    elif isinstance(value, list):
        for item in value:
            sub = tree(item, indent + 2)
            lines.append(f"{pad}- {sub[0].strip() if sub else ''}")
            lines.extend(sub[1:])
    else:
        lines.append(f"{pad}{fmt(value)}")
    return lines


def _flat_list(value: Any) -> bool:
    return isinstance(value, list) and all(not isinstance(v, dict | list) for v in value)


def render_generic(_args: argparse.Namespace, result: Payload) -> None:
    """``ok`` and the result as indented lines."""
    print("ok")
    for line in tree(result, 2):
        print(line)


def app_lines(result: Payload) -> list[str] | None:
    """An app result (``{"app", "status", "modules": {name: {...}}, ...}``) as a header line
    and a table of its modules; None when the result has another shape."""
    if not isinstance(result.get("app"), str):
        return None
    status = result.get("status") or ("removed" if result.get("removed") else "ok")
    head = f"app {result['app']}: {status}"
    if result.get("error"):
        head += f" ({result['error']})"
    mods = result.get("modules") if isinstance(result.get("modules"), dict) else {}
    rows = [
        [name, m.get("instance"), m.get("status"), m.get("pid"), m.get("shared_with")]
        for name, m in mods.items() if isinstance(m, dict)
    ]
    if not rows:
        return [head]
    body = table(["MODULE", "INSTANCE", "STATUS", "PID", "SHARED WITH"], rows)
    return [head] + ["  " + line for line in body.splitlines()]


_APP_KEYS = ("app", "status", "error", "modules", "removed")


def render_app(_args: argparse.Namespace, result: Payload) -> None:
    """An app result, readable; unknown shapes fall back to the generic view."""
    lines = app_lines(result)
    if lines is None:
        render_generic(_args, result)
        return
    print("\n".join(lines))
    extra = {k: v for k, v in result.items() if k not in _APP_KEYS}
    for line in tree(extra, 2):
        print(line)
