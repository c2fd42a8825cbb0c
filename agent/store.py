"""The agent's desired state on disk: which apps of which tenants should run.

Written atomically (temp file + rename) after every change, so a power cut leaves the old or
the new state, never half of one. Read at start to bring the device back as it was.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from pydantic import ValidationError

from schemas.deployment import Deployment

log = logging.getLogger("edgeva.store")


def default_state_dir(device: str) -> Path:
    """``$XDG_STATE_HOME/edgeva/<device>`` (``~/.local/state/edgeva/<device>``)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "edgeva" / device


class DesiredState:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.dir / "desired.json"
        self._lock = threading.Lock()
        self._apps: dict[str, dict] = {}
        if self.path.exists():
            try:
                self._apps = json.loads(self.path.read_text())["apps"]
            except (ValueError, KeyError, OSError) as e:
                bad = self.path.with_suffix(".corrupt")
                self.path.replace(bad)
                log.error("desired state %s unreadable (%s): moved to %s, starting empty", self.path, e, bad)

    def load(self) -> list[tuple[str, Deployment, str]]:
        out = []
        for name, rec in self._apps.items():
            try:
                out.append((rec["tenant"], Deployment.model_validate(rec["deployment"]), rec["status"]))
            except (ValidationError, KeyError) as e:
                log.error("desired state: app %s unreadable, skipped: %s", name, e)
        return out

    def put(self, tenant: str, dep: Deployment, status: str) -> None:
        with self._lock:
            self._apps[dep.app] = {
                "tenant": tenant, "status": status,
                "deployment": dep.model_dump(mode="json", exclude={"request_id"}, exclude_none=True),
            }
            self._write()

    def remove(self, app: str) -> None:
        with self._lock:
            if self._apps.pop(app, None) is not None:
                self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"version": 1, "apps": self._apps}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
