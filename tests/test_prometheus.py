"""``edgeva agent --metrics-port``: a real scrape of a running agent, parsed by prometheus_client.

The agents here come from the pytest plugin's fixtures (control/pytest_plugin.py) with the
embedded broker; the page is fetched over HTTP and parsed with
``prometheus_client.parser.text_string_to_metric_families``.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode
from urllib.request import urlopen

import pytest

from edgeva.agent.exporter import EdgevaCollector
from edgeva.control.broker import free_port
from edgeva.control.client import EdgevaClient
from edgeva.control.testing import Commander, scrape
from edgeva.schemas.metrics import (
    P2,
    P3,
    AppMetrics,
    DeviceMetrics,
    HopMetrics,
    LinkMetrics,
    ModuleMetrics,
    TenantMetrics,
)
from edgeva.schemas.state import AppState, DeviceState

DEC = {"type": "decoder", "args": {"source": "synthetic", "fps": 20, "width": 160, "height": 120}}


def app(name: str, device: str | None = None, sink: str | None = None) -> dict:
    where = {"device": device} if device else {}
    return {"app": name, "modules": {
        "dec": {**DEC, **where, "outputs": ["pub"]},
        "pub": {"type": "publish", "args": {}, **({"device": sink} if sink else {})},
    }}


def samples(fams: dict, family: str, sample: str | None = None, **labels: str) -> list:
    """Samples of ``family`` (named ``sample``, default the family's own name) whose labels
    include ``labels``."""
    fam = fams.get(family)
    if fam is None:
        return []
    name = sample or family
    return [s for s in fam.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def value(fams: dict, family: str, sample: str | None = None, **labels: str) -> float:
    found = samples(fams, family, sample, **labels)
    assert len(found) == 1, f"{sample or family}{labels}: {len(found)} samples in {fams.get(family)}"
    return found[0].value


def scrape_until(url: str, pred, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        fams = scrape(url)
        if pred(fams):
            return fams
        if time.monotonic() > deadline:
            raise AssertionError(f"scrape of {url} never satisfied the condition: {sorted(fams)}")
        time.sleep(0.2)


@pytest.fixture
def edgeva_agent(edgeva_agent_factory):
    """The plugin's agent, with Prometheus metrics on a free port (overrides the plugin's)."""
    return edgeva_agent_factory(metrics_port=0)


@pytest.mark.slow
def test_scrape_has_per_app_module_series_that_move(edgeva, edgeva_broker):
    dev = edgeva.device
    url = edgeva.agent.metrics_url
    edgeva.deploy(app("cam"))
    # a second tenant's app on the same camera: its series carry its tenant (and it gets its own
    # module instances: modules are shared within a tenant only)
    with EdgevaClient(edgeva_broker.url, dev, tenant="acme") as acme:
        reply = acme.request("deploy", app("acme-cam"))
        assert reply["ok"], reply
    edgeva.wait_events("cam", n=5)
    app_labels = {"device": dev, "tenant": "default", "app": "cam"}

    def ready(f: dict) -> bool:
        return bool(samples(f, "edgeva_app_frames_per_second", **app_labels)) and bool(
            samples(f, "edgeva_app_frames", "edgeva_app_frames_total", app="acme-cam", tenant="acme"))

    first = scrape_until(url, ready)
    f0 = value(first, "edgeva_app_frames", "edgeva_app_frames_total", **app_labels)
    # a later metrics tick of the agent (0.5 s): waited for, not slept (a busy machine is slower)
    second = scrape_until(url, lambda f: value(f, "edgeva_app_frames", "edgeva_app_frames_total", **app_labels) > f0)

    # per app: counters that grow, fps, latency quantiles in seconds, no drops, running
    assert first["edgeva_app_frames"].type == "counter"
    f1 = value(first, "edgeva_app_frames", "edgeva_app_frames_total", **app_labels)
    f2 = value(second, "edgeva_app_frames", "edgeva_app_frames_total", **app_labels)
    assert f2 > f1 > 0
    assert 5 < value(second, "edgeva_app_frames_per_second", **app_labels) < 40  # decoder at 20 fps
    for q in ("0.5", "0.95", "0.99"):
        assert 0 < value(second, "edgeva_app_latency_seconds", quantile=q, **app_labels) < 5
    assert value(second, "edgeva_app_dropped_frames", "edgeva_app_dropped_frames_total", **app_labels) == 0
    assert value(second, "edgeva_app_events", "edgeva_app_events_total", **app_labels) >= 5
    assert value(second, "edgeva_app_lagging", **app_labels) == 0
    assert value(second, "edgeva_app_up", **app_labels) == 1
    assert value(second, "edgeva_app_up", device=dev, tenant="acme", app="acme-cam") == 1
    print(f"scrapes 1.5 s apart: frames_total {f1:g} -> {f2:g}, fps "
          f"{value(second, 'edgeva_app_frames_per_second', **app_labels):.1f}, latency p50 "
          f"{value(second, 'edgeva_app_latency_seconds', quantile='0.5', **app_labels) * 1e3:.2f} ms")

    # which module instances each app uses: each tenant's own (modules are shared within a
    # tenant only), one series per instance
    used = {s.labels["module"] for s in samples(second, "edgeva_app_module_info", **app_labels)}
    acme_used = {s.labels["module"] for s in samples(second, "edgeva_app_module_info",
                                                     tenant="acme", app="acme-cam")}
    decoder = next(m for m in used if m.startswith("decoder-"))
    assert len(used) == 2 and len(acme_used) == 2 and not used & acme_used, (used, acme_used)
    publish = next(m for m in used if m.startswith("publish-"))
    mod = {"device": dev, "module": decoder, "type": "decoder"}
    out1 = value(first, "edgeva_module_frames_out", "edgeva_module_frames_out_total", **mod)
    out2 = value(second, "edgeva_module_frames_out", "edgeva_module_frames_out_total", **mod)
    assert out2 > out1
    assert value(second, "edgeva_module_processing_seconds", quantile="0.5", **mod) > 0
    assert value(second, "edgeva_module_restarts", "edgeva_module_restarts_total", **mod) == 0
    occ = value(second, "edgeva_module_queue_occupancy_ratio", consumer=publish, **mod)
    assert 0 <= occ <= 1
    assert value(second, "edgeva_module_frames_in", "edgeva_module_frames_in_total", device=dev, module=publish,
                 type="publish") > 0
    assert samples(second, "process_resident_memory_bytes")  # the agent process itself

    # a removed app's series go with the next tick
    edgeva.remove("cam")
    gone = scrape_until(url, lambda f: not samples(f, "edgeva_app_up", **app_labels))
    assert value(gone, "edgeva_app_up", device=dev, tenant="acme", app="acme-cam") == 1


@pytest.mark.slow
def test_scrape_has_link_times_of_an_app_spanning_two_agents(edgeva_agent_factory, edgeva_watcher):
    bind = ("--data-bind", "tcp://127.0.0.1:0", "--fleet-token", "prometheus-test-fleet")
    a = edgeva_agent_factory(None, *bind, metrics_port=0)
    b = edgeva_agent_factory(None, *bind, metrics_port=0)
    r = Commander(edgeva_watcher, b.device).send("deploy", app("split", device=a.device, sink=b.device))
    assert r["ok"], r
    link_a, link_b = {"device": a.device, "peer": b.device}, {"device": b.device, "peer": a.device}

    def moving(f: dict) -> bool:
        return bool(samples(f, "edgeva_link_serialise_seconds", quantile="0.5", **link_a))

    fa1 = scrape_until(a.metrics_url, moving)
    fb = scrape_until(b.metrics_url, lambda f: bool(samples(f, "edgeva_link_deserialise_seconds", quantile="0.5",
                                                            **link_b)))
    sent0 = value(fa1, "edgeva_link_sent_bytes", "edgeva_link_sent_bytes_total", **link_a)
    fa2 = scrape_until(a.metrics_url, lambda f: value(f, "edgeva_link_sent_bytes", "edgeva_link_sent_bytes_total",
                                                      **link_a) > sent0)
    assert value(fa2, "edgeva_link_up", **link_a) == 1
    sent1 = value(fa1, "edgeva_link_sent_bytes", "edgeva_link_sent_bytes_total", **link_a)
    assert value(fa2, "edgeva_link_sent_bytes", "edgeva_link_sent_bytes_total", **link_a) > sent1 > 0
    assert value(fb, "edgeva_link_network_seconds", quantile="0.5", **link_b) > 0
    assert value(fb, "edgeva_link_deserialise_seconds", quantile="0.5", **link_b) > 0
    assert value(fb, "edgeva_link_received_messages", "edgeva_link_received_messages_total", **link_b) > 0
    # B coordinates the app (the deploy went to it): per-hop times along its path, link included
    split = {"device": b.device, "tenant": "default", "app": "split"}
    def hops_of(f: dict) -> dict[str, str]:
        return {s.labels["hop"]: s.labels["hop_device"] for s in samples(f, "edgeva_app_hop_seconds", **split)}

    # the link hop and the far part's hops arrive with different metrics ticks: wait for both
    fb = scrape_until(b.metrics_url, lambda f: {f"{a.device}->{b.device}", "dec"} <= set(hops_of(f)))
    hops = hops_of(fb)
    assert hops.get(f"{a.device}->{b.device}") == b.device and hops.get("dec") == a.device, hops


def _tool(name: str) -> str:
    """prometheus / promtool: beside this Python (make setup puts them in .venv/bin) or on PATH."""
    here = Path(sys.executable).parent / name
    path = str(here) if here.exists() else shutil.which(name)
    if not path:
        pytest.fail(f"{name} is missing: run `make setup` (tools/install-prometheus.sh .venv/bin)", pytrace=False)
    return path


def _promql(base: str, expr: str) -> list:
    with urlopen(f"{base}/api/v1/query?{urlencode({'query': expr})}", timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


@pytest.mark.slow
def test_real_prometheus_scrapes_the_agent_and_answers_the_dashboard(edgeva, tmp_path):
    """A real Prometheus (Debian's 2.42) scrapes ``--metrics-port`` every second; promtool lints
    the page against the naming conventions; every query of the Grafana dashboard is valid
    PromQL and, for a running single-device app, the app and module panels have data."""
    url = edgeva.agent.metrics_url
    edgeva.deploy(app("cam"))
    edgeva.wait_events("cam", n=3)
    page = scrape_until(url, lambda f: bool(samples(f, "edgeva_app_latency_seconds", app="cam")))
    assert page["edgeva_app_latency_seconds"].type == "summary"
    with urlopen(url, timeout=5) as resp:
        text = resp.read()
    lint = subprocess.run([_tool("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()

    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: edgeva\n    static_configs: [{{targets: ['127.0.0.1:{edgeva.agent.metrics_port}']}}]\n")
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed in the finally
    prom = subprocess.Popen([_tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # two scrapes of a moving counter: rate() has something to say
            try:
                moving = _promql(base, 'rate(edgeva_app_frames_total{app="cam"}[10s]) > 0')
            except OSError:
                moving = []
            if moving:
                break
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(0.5)
        assert moving[0]["metric"]["device"] == edgeva.device and moving[0]["metric"]["tenant"] == "default"
        up = _promql(base, 'up{job="edgeva"}')
        assert up and up[0]["value"][1] == "1"

        dash = json.loads((Path(__file__).resolve().parent.parent / "control/grafana/edgeva.json").read_text())
        subst = {"$device": ".*", "$tenant": ".*", "$app": ".*", "$__rate_interval": "10s", "$__range": "1m"}
        empty = []
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for k, v in subst.items():
                    expr = expr.replace(k, v)
                result = _promql(base, expr)  # valid PromQL, or the assertion names it
                # links need two devices, lag needs 10 s of history: the rest must show this app
                if not result and "edgeva_link_" not in expr and "lag_ratio" not in expr:
                    empty.append((panel["title"], expr))
        assert not empty, f"dashboard panels without data for a running app: {empty}"
    finally:
        prom.terminate()
        prom.wait(10)
        log.close()


def test_metrics_port_in_use_or_out_of_range_is_refused(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for bad, says in ((str(port), f"--metrics-port {port} on 127.0.0.1"), ("70000", "0..65535")):
            run = subprocess.run(
                [sys.executable, "-m", "edgeva.cli", "agent", "--device", f"port-{uuid.uuid4().hex[:8]}",
                 "--broker", "mqtt://127.0.0.1:1",
                 "--state-dir", str(tmp_path / "state"), "--metrics-port", bad],
                capture_output=True, text=True, timeout=60)
            assert run.returncode == 2, run.stderr
            assert says in run.stderr
            assert not (tmp_path / "state").exists()  # refused before the agent touched anything


def _device(links: dict | None = None, **mods: ModuleMetrics) -> DeviceMetrics:
    return DeviceMetrics(device="d1", ts=time.time(), interval_s=1.0, modules=mods, links=links or {})


def test_collector_renders_what_the_agent_computed():
    """Without processes: the exporter's mapping of the metrics schemas, on edge cases a live
    run rarely shows (no latency sample yet, a redeployed app, hops, links)."""
    col = EdgevaCollector()
    assert list(col.collect()) == []  # before the first tick: nothing, not zeros
    t0 = 1000.0
    hops = [HopMetrics(kind="module", name="dec", device="d1", ms=2.0),
            HopMetrics(kind="link", name="d1->d2", device="d2", ms=None)]
    tm = TenantMetrics(device="d1", tenant="t", ts=t0, interval_s=1.0,
                       apps={"a": AppMetrics(frames=10, latency_ms=P3(), hops=hops)})
    link = LinkMetrics(connected=True, bytes_sent=100, serialise_ms=P2(p50=0.5, p95=1.5))
    state = DeviceState(device="d1", status="online", ts=t0, apps={"t": {"a": AppState(modules=["m1"], status="stopped")}})
    col.update(_device({"d2": link}, m1=ModuleMetrics(type="decoder", occupancy={"m2": 0.25}, dropped={"m2": 3})),
               {"t": tm}, state)
    fams = {f.name: f for f in col.collect()}
    assert "edgeva_app_latency_seconds" not in fams  # no sample in the interval: absent, not 0
    assert "edgeva_app_frames_per_second" not in fams  # needs two ticks
    assert [(s.labels["hop"], s.value) for s in fams["edgeva_app_hop_seconds"].samples] == [("dec", 0.002)]
    assert fams["edgeva_app_up"].samples[0].value == 0  # stopped
    assert fams["edgeva_link_serialise_seconds"].samples[0].labels == {"device": "d1", "peer": "d2", "quantile": "0.5"}
    assert [s.value for s in fams["edgeva_link_serialise_seconds"].samples] == [0.0005, 0.0015]
    assert fams["edgeva_module_dropped_frames"].samples[0].labels["consumer"] == "m2"

    tm2 = tm.model_copy(update={"ts": t0 + 2, "apps": {"a": AppMetrics(frames=30, latency_ms=P3(p50=10, p95=20, p99=30),
                                                                       lag_ms_per_min=120.0)}})
    col.update(_device(), {"t": tm2}, state)
    fams = {f.name: f for f in col.collect()}
    assert fams["edgeva_app_frames_per_second"].samples[0].value == 10.0  # 20 frames in 2 s
    assert [s.value for s in fams["edgeva_app_latency_seconds"].samples] == [0.01, 0.02, 0.03]
    assert fams["edgeva_app_lag_ratio"].samples[0].value == pytest.approx(0.002)  # 120 ms a minute
    assert "edgeva_link_up" not in fams  # the link went: its series too

    tm3 = tm2.model_copy(update={"ts": t0 + 3, "apps": {"a": AppMetrics(frames=2)}})  # redeployed: counter restarts
    col.update(_device(), {"t": tm3}, state)
    fams = {f.name: f for f in col.collect()}
    assert "edgeva_app_frames_per_second" not in fams


def test_grafana_dashboard_queries_only_series_the_exporter_serves():
    """Every metric the shipped dashboard queries is one the exporter emits (a renamed series
    would leave a panel empty), and its template variables come from ``edgeva_app_up``."""
    dash = json.loads((Path(__file__).resolve().parent.parent / "control/grafana/edgeva.json").read_text())
    col = EdgevaCollector()
    p2 = P2(p50=1.0, p95=2.0)
    mods = {"m1": ModuleMetrics(type="decoder", proc_ms=p2, occupancy={"m2": 0.5}, dropped={"m2": 1}, restarts=1)}
    link = LinkMetrics(connected=True, serialise_ms=p2, network_ms=p2, deserialise_ms=p2)
    am = AppMetrics(frames=5, latency_ms=P3(p50=1, p95=2, p99=3), lag_ms_per_min=1.0,
                    hops=[HopMetrics(kind="module", name="dec", device="d1", ms=1.0)])
    state = DeviceState(device="d1", status="online", ts=1.0, apps={"t": {"a": AppState(modules=["m1"], status="running")}})
    for ts in (1.0, 2.0):
        col.update(_device({"d2": link}, **mods), {"t": TenantMetrics(device="d1", tenant="t", ts=ts, interval_s=1,
                                                                       apps={"a": am})}, state)
    served = {s.name for fam in col.collect() for s in fam.samples}
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)]
    queried = {name for e in exprs for name in re.findall(r"\bedgeva_[a-z_]+", e)}
    assert len(exprs) > 15 and queried
    assert queried <= served, f"the dashboard queries series nobody serves: {sorted(queried - served)}"
    assert {v["name"] for v in dash["templating"]["list"]} >= {"device", "tenant", "app"}
