"""edgeva's pytest plugin: test module types and deployments against a real broker and agent.

Installed with the ``edgeva`` package (entry point ``pytest11``: ``edgeva =
control.pytest_plugin``), so every pytest run in that environment has these fixtures; no
conftest is needed. They are all prefixed ``edgeva`` so as not to clash with a project's own,
and this module imports only pytest and the standard library: the rest comes when a fixture
is used. ``pytest -p no:edgeva`` turns it off. See docs/testing.md.

- ``edgeva_broker`` (session): the embedded amqtt broker on a free port of 127.0.0.1
  (``control.testing.Broker``: ``.url``, ``.host``, ``.port``; MQTT 3.1.1).
- ``edgeva_watcher``: a ``control.testing.Watcher`` on the broker: every ``edgeva/v1/#``
  message by topic, ``wait(topic, pred)``.
- ``edgeva_agent_factory``: ``start(device=None, *args, metrics_port=None)`` runs another
  ``edgeva agent`` (a ``control.testing.AgentProcess``) with a fresh temporary state
  directory (``metrics_port=0``: with Prometheus metrics at ``.metrics_url``); all are
  stopped at the end of the test.
- ``edgeva_agent``: one agent, device id ``test-<random>``, metrics every 0.5 s.
- ``edgeva_client``: ``control.client.EdgevaClient`` aimed at ``edgeva_agent``'s device.
- ``edgeva``: a ``control.testing.EdgevaKit`` over those three: ``deploy(graph)``,
  ``wait_events(app, n)``, ``wait_metrics(app, pred)``, ``remove(app)``.

The agent runs in a child process with the same Python (``sys.executable``), so module types
registered by installed packages (entry point group ``edgeva.modules``) are available to it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from edgeva.control.client import EdgevaClient
    from edgeva.control.testing import AgentProcess, Broker, EdgevaKit, Watcher


@pytest.fixture(scope="session")
def edgeva_broker() -> Iterator[Broker]:
    """The embedded amqtt broker on 127.0.0.1 and a free port, for the whole session (tests
    keep apart by device id)."""
    from edgeva.control.broker import EmbeddedBroker
    from edgeva.control.testing import Broker

    broker = EmbeddedBroker(port=0).start()
    try:
        yield Broker(broker.host, broker.port, "amqtt", False)
    finally:
        broker.stop()


@pytest.fixture
def edgeva_watcher(edgeva_broker: Broker) -> Iterator[Watcher]:
    """Records every ``edgeva/v1/#`` message on ``edgeva_broker`` by topic."""
    from edgeva.control.testing import Watcher

    w = Watcher(edgeva_broker.url)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def edgeva_agent_factory(edgeva_broker: Broker, edgeva_watcher: Watcher,
                         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., AgentProcess]]:
    """``start(device=None, *args, metrics_port=None, metrics_interval=0.5)``: run an
    ``edgeva agent`` on ``edgeva_broker`` with its own temporary state directory and return
    it once online. ``args`` go to ``edgeva agent`` as they are; ``metrics_port`` (0: a free
    one) serves Prometheus metrics at the agent's ``.metrics_url``. Each is stopped at teardown."""
    from edgeva.control.testing import AgentProcess

    started: list[AgentProcess] = []

    def start(device: str | None = None, *args: str, metrics_port: int | None = None,
              metrics_interval: float = 0.5) -> AgentProcess:
        device = device or f"test-{uuid.uuid4().hex[:8]}"
        agent = AgentProcess(edgeva_broker.url, device, tmp_path_factory.mktemp(f"agent-{device}"),
                             edgeva_watcher, *args, metrics_interval=metrics_interval, metrics_port=metrics_port)
        started.append(agent)
        return agent

    try:
        yield start
    finally:
        for agent in reversed(started):
            agent.stop()


@pytest.fixture
def edgeva_agent(edgeva_agent_factory: Callable[..., AgentProcess]) -> AgentProcess:
    """One running agent (``.device``, ``.state_dir``, ``.log``), stopped after the test."""
    return edgeva_agent_factory()


@pytest.fixture
def edgeva_client(edgeva_broker: Broker, edgeva_agent: AgentProcess) -> Iterator[EdgevaClient]:
    """The operator's client (``control.client.EdgevaClient``) aimed at ``edgeva_agent``."""
    from edgeva.control.client import EdgevaClient

    client = EdgevaClient(edgeva_broker.url, edgeva_agent.device)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def edgeva(edgeva_broker: Broker, edgeva_agent: AgentProcess, edgeva_client: EdgevaClient) -> Iterator[EdgevaKit]:
    """Deploy graphs to ``edgeva_agent`` and wait for their events and metrics."""
    from edgeva.control.testing import EdgevaKit

    kit = EdgevaKit(edgeva_broker, edgeva_agent, edgeva_client)
    try:
        yield kit
    finally:
        kit.close()

