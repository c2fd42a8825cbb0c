"""Filters of the mosquitto role: the cameras' broker accounts, and password hashes.

``mosquitto_password_hash``: a mosquitto 2.0 password-file hash, reproducible run to run.

``mosquitto_passwd`` draws a random salt each time, so a password file it writes changes on
every run and the play could never report no change. This filter computes the same format
(``$7$<iterations>$<salt>$<hash>``: PBKDF2-HMAC-SHA512, 64-byte key, base64) with a salt derived
from a seed (the broker and the user name): unique per broker and user, as a salt must be, and
stable, so that an unchanged password gives an unchanged file.
"""

from __future__ import annotations

import base64
import hashlib

# mosquitto_passwd's own default
ITERATIONS = 101


def mosquitto_password_hash(password: str, seed: str, iterations: int = ITERATIONS) -> str:
    """The ``$7$`` hash of ``password`` with a 12-byte salt derived from ``seed``."""
    if not password:
        raise ValueError("mosquitto_password_hash: empty password")
    salt = hashlib.sha512(f"edgeva-mosquitto-salt:{seed}".encode()).digest()[:12]
    key = hashlib.pbkdf2_hmac("sha512", str(password).encode(), salt, int(iterations), 64)
    b64 = base64.b64encode
    return f"$7${int(iterations)}${b64(salt).decode()}${b64(key).decode()}"


def mosquitto_agent_accounts(hosts: list, hostvars) -> list[dict]:
    """The broker accounts of the cameras ``hosts``: ``{name, device, password}`` from each
    camera's ``edgeva_device`` (default: its inventory name), ``edgeva_mqtt_username`` (default:
    the device id) and ``edgeva_mqtt_password``, as the edgeva role reads them."""
    out = []
    for host in hosts:
        hv = hostvars[host]
        device = str(hv.get("edgeva_device") or host)
        out.append({"name": str(hv.get("edgeva_mqtt_username") or device), "device": device,
                    "password": str(hv.get("edgeva_mqtt_password") or "")})
    return out


TLS_KEYS = {"cafile": "ca.pem", "certfile": "cert.pem", "keyfile": "key.pem"}


def mosquitto_tls_files(listeners: list) -> list[dict]:
    """The TLS files the listeners name: ``{src, name}``, ``name`` being ``<port>-ca.pem``,
    ``<port>-cert.pem`` or ``<port>-key.pem`` (where the configuration expects them)."""
    return [{"src": str(lst[key]), "name": f"{lst['port']}-{name}"}
            for lst in listeners for key, name in TLS_KEYS.items() if lst.get(key)]


class FilterModule:
    """Ansible's entry point for filter plugins."""

    def filters(self) -> dict:
        return {"mosquitto_password_hash": mosquitto_password_hash,
                "mosquitto_agent_accounts": mosquitto_agent_accounts,
                "mosquitto_tls_files": mosquitto_tls_files}
