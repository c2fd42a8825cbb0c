"""A private mosquitto for benchmarks: ``with Mosquitto(workdir) as m: m.url``.

The embedded amqtt broker (``control.broker``) is pure Python and speaks MQTT 3.1.1 only; a
fleet of agents, or a run that restarts its broker, wants the broker edge devices really use.
This starts Debian's ``mosquitto`` on 127.0.0.1 and a free port, anonymous, with ``$SYS``
statistics every second (``sys_interval``), and stops it on exit. ``restart()`` stops and
starts it on the same port (a broker outage).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from edgeva.control.broker import free_port, wait_port
from edgeva.control.processes import stop_process

MOSQUITTO = "/usr/sbin/mosquitto"
INSTALL_HINT = "mosquitto is missing: run tools/install-system-packages.sh (needs root or sudo)"


def mosquitto_binary() -> str:
    """Path of the mosquitto binary; ``FileNotFoundError`` with the install hint when absent."""
    path = MOSQUITTO if os.access(MOSQUITTO, os.X_OK) else shutil.which("mosquitto")
    if not path:
        raise FileNotFoundError(INSTALL_HINT)
    return path


class Mosquitto:
    """mosquitto on ``127.0.0.1:port`` (a free one unless given), config and log in ``workdir``."""

    def __init__(self, workdir: Path, port: int | None = None, extra: str = "") -> None:
        self.workdir, self.port, self.extra = Path(workdir), port or free_port(), extra
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        """Start it and return once it accepts connections; ``RuntimeError`` with its log if not."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf, logf = self.workdir / "mosquitto.conf", self.workdir / "mosquitto.log"
        # As root mosquitto drops to user `mosquitto`, which cannot read a private temp dir.
        me = pwd.getpwuid(os.getuid()).pw_name
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nuser {me}\nallow_anonymous true\npersistence false\n"
            f"sys_interval 1\nmax_queued_messages 100000\nlog_dest file {logf}\n"
            "log_type error\nlog_type warning\n" + self.extra
        )
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        if not wait_port("127.0.0.1", self.port, timeout=5.0):
            self.stop()
            log = logf.read_text() if logf.exists() else ""
            raise RuntimeError(f"mosquitto did not listen on {self.port}: {log[-2000:]}")
        return self

    def stop(self, kill: bool = False) -> None:
        """Stop it (``kill``: SIGKILL, as a crash or a power cut would)."""
        if self.proc is None:
            return
        stop_process(self.proc, kill=kill)
        self.proc = None

    def restart(self) -> None:
        """Stop, then start on the same port (clients reconnect by themselves)."""
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
