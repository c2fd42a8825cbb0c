#!/usr/bin/env python3
"""Wait until an agent's retained state says ``online`` (the rollout's health check).

Reads the broker URL and credentials from the agent's environment file (``KEY='value'`` lines)
and the password file it names,
connects as the agent's own account (which may read its device's topics) and exits 0 once
``edgeva/v1/<device>/state`` says online, 1 with the reason when it does not within the timeout.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from edgeva.agent.mqtt import MqttError, MqttOptions
from edgeva.control.client import EdgevaClient, RequestTimeout


def read_env(path: str) -> dict[str, str]:
    """``KEY='value'`` lines of an environment file (comments and blank lines skipped)."""
    env: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                env[key] = "".join(shlex.split(value))
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--env-file", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--tls-ca")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    args = ap.parse_args()
    env = read_env(args.env_file)
    password = env.get("EDGEVA_PASSWORD")
    if env.get("EDGEVA_PASSWORD_FILE"):  # as `edgeva agent --password-file` reads it
        with open(env["EDGEVA_PASSWORD_FILE"], encoding="utf-8") as f:
            password = f.read().split("\n", 1)[0].rstrip("\r")
    options = MqttOptions(username=env.get("EDGEVA_USERNAME"), password=password,
                          ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
                          client_id_prefix=f"edgeva-rollout-{args.device}")
    try:
        with EdgevaClient(env["EDGEVA_BROKER"], args.device, options=options,
                          connect_timeout=min(10.0, args.timeout)) as client:
            state = client.wait_state(online=True, timeout=args.timeout)
    except (MqttError, RequestTimeout, OSError) as e:
        print(f"{args.device}: not online: {e}", file=sys.stderr)
        return 1
    print(f"{args.device}: online (edgeva {state.version or '?'}, {len(state.modules)} modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
