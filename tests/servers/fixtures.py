"""Real inference servers for the detector's ``triton`` backend, as pytest fixtures.

Import the fixtures in the test module that needs them::

    from tests.servers.fixtures import mlserver_fixture, pytriton_fixture  # noqa: F401

and ask for ``mlserver_centernet`` / ``pytriton_centernet`` in test arguments (the fixtures
are named apart from their functions so that the arguments do not shadow the import).

- ``mlserver_centernet``: Seldon MLServer 1.7.1 serving the bundled CenterNet (model
  ``centernet``, input ``images``, output ``detections``) on free HTTP and gRPC ports, from
  ``.venv-mlserver``. If that venv is missing the fixture FAILS: run
  ``tools/make-mlserver-venv.sh`` (CI does, before pytest).
- ``mlserver_reid``: the same, serving the bundled re-id embedding (model ``reid``, input
  ``input`` [N, 3, 256, 128], output ``output`` [N, 1280]) for the reid ``triton`` backend.
- ``pytriton_centernet``: a real Triton 2.51 on the CPU (PyTriton) with the same model, from
  ``.venv-pytriton``, which ``make test`` builds (``tools/make-pytriton-venv.sh``); SKIPS, with
  the reason the build recorded, only where it could not be installed.
  Its shared-memory API needs ``headers`` with the access token (``server.headers(protocol)``).

Both are session-scoped (MLServer starts in ~1 s, Triton in ~3-5 s) and stopped at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MLSERVER_VENV = ROOT / ".venv-mlserver"
PYTRITON_VENV = ROOT / ".venv-pytriton"
TOKEN = "edgeva-test"


@dataclass(frozen=True)
class Server:
    """Where a test server listens. ``http``/``grpc`` are ``host:port``."""

    name: str
    http: str
    grpc: str
    model: str = "centernet"
    token: str | None = None

    def url(self, protocol: str) -> str:
        return self.http if protocol == "http" else self.grpc

    def headers(self, protocol: str) -> dict[str, str]:
        """Headers that unlock a restricted API (PyTriton's shared-memory endpoints)."""
        if not self.token:
            return {}
        key = "triton-access-token" if protocol == "http" else "triton-grpc-protocol-triton-access-token"
        return {key: self.token}


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (free when asked; a race is unlikely in tests)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _clean_env() -> dict[str, str]:
    """The test process's env minus what would make the server's venv import from ours."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_ready(proc: subprocess.Popen, http: str, model: str, grpc_port: int, log: Path,
                timeout: float) -> None:
    url = f"http://{http}/v2/models/{model}/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _stop(proc)
            pytest.fail(f"test server exited with {proc.returncode}; log {log}:\n{_tail(log)}", pytrace=False)
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    socket.create_connection(("127.0.0.1", grpc_port), timeout=1).close()
                    return
        except OSError:
            pass
        time.sleep(0.1)
    _stop(proc)
    pytest.fail(f"test server not ready after {timeout}s; log {log}:\n{_tail(log)}", pytrace=False)


def _tail(log: Path, n: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    # The server runs in its own session: signal its process group (workers, tritonserver).
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def _mlserver(tmp_path_factory: pytest.TempPathFactory, folder: str, model: str) -> Iterator[Server]:
    """Run MLServer on the model folder ``tests/servers/<folder>`` until the session ends."""
    exe = MLSERVER_VENV / "bin" / "mlserver"
    if not exe.exists():
        pytest.fail(f"{exe} is missing: run tools/make-mlserver-venv.sh (once; CI runs it "
                    "before pytest) to create .venv-mlserver", pytrace=False)
    http_port, grpc_port, metrics_port = free_ports(3)
    env = _clean_env() | {
        "MLSERVER_HOST": "127.0.0.1",
        "MLSERVER_HTTP_PORT": str(http_port),
        "MLSERVER_GRPC_PORT": str(grpc_port),
        "MLSERVER_METRICS_PORT": str(metrics_port),
        "EDGEVA_TEST_THREADS": "2",
    }
    work = tmp_path_factory.mktemp(folder)
    log = work / "mlserver.log"
    with open(log, "wb") as out:
        # cwd: a fresh dir, so that MLServer does not pick up a stray .env file.
        proc = subprocess.Popen([str(exe), "start", str(HERE / folder)], cwd=work,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    http = f"127.0.0.1:{http_port}"
    _wait_ready(proc, http, model, grpc_port, log, timeout=60)
    try:
        yield Server("mlserver", http, f"127.0.0.1:{grpc_port}", model=model)
    finally:
        _stop(proc)


@pytest.fixture(scope="session", name="mlserver_centernet")
def mlserver_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _mlserver(tmp_path_factory, "mlserver_centernet", "centernet")


@pytest.fixture(scope="session", name="mlserver_reid")
def mlserver_reid_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _mlserver(tmp_path_factory, "mlserver_reid", "reid")


@pytest.fixture(scope="session", name="pytriton_centernet")
def pytriton_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    py = PYTRITON_VENV / "bin" / "python"
    if not py.exists():
        why = PYTRITON_VENV.with_name(PYTRITON_VENV.name + ".unavailable")
        reason = why.read_text().strip() if why.exists() else "not built yet (make test builds it)"
        pytest.skip(f"{PYTRITON_VENV.name} is absent: {reason}; tools/make-pytriton-venv.sh creates it")
    http_port, grpc_port, metrics_port = free_ports(3)
    work = tmp_path_factory.mktemp("pytriton")
    log = work / "pytriton.log"
    cmd = [str(py), str(HERE / "pytriton_centernet.py"), "--http-port", str(http_port),
           "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
           "--access-token", TOKEN]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=_clean_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    http = f"127.0.0.1:{http_port}"
    _wait_ready(proc, http, "centernet", grpc_port, log, timeout=120)
    try:
        yield Server("triton", http, f"127.0.0.1:{grpc_port}", token=TOKEN)
    finally:
        _stop(proc)
