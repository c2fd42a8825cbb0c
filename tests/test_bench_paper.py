"""``edgeva bench paper``'s parts: the statistics, VideoPipe's merged graph, and short real runs
of the monolith (CASE A) and of VideoPipe (real module processes, HTTP between them)."""

from __future__ import annotations

import pytest

from edgeva.bench.paper import apps as A
from edgeva.bench.paper.stats import smooth, summarize
from edgeva.bench.paper.videopipe import merge


def test_lag_is_latency_growing_not_latency_high():
    flat = [(t / 10, 500.0 + (t % 3)) for t in range(200)]
    growing = [(t / 10, 50.0 + 40.0 * t / 10) for t in range(200)]  # +40 ms every second
    assert not summarize(flat, 200, 20.0)["lagging"]
    s = summarize(growing, 200, 20.0)
    assert s["lagging"] and s["lag_ms_per_s"] == pytest.approx(40.0, rel=0.01)
    assert summarize(flat, 400, 20.0)["dropped_ratio"] == 0.5


def test_smoothing_drops_the_top_5_percent_first():
    series = [(float(t), 10.0) for t in range(95)] + [(95.0 + t, 10_000.0) for t in range(5)]
    assert max(v for _, v in smooth(series, 10)) == pytest.approx(10.0)


def test_videopipe_merges_the_apps_as_edgeva_shares_them():
    deps = A.scenario(3, "synthetic", 5.0)
    graph, ends = merge(deps)
    types = sorted(m["type"] for m in graph["modules"].values())
    # one decoder, one detector and one tracker serve the three apps; no sinks
    assert types == ["decoder", "detector", "reid", "roi", "tracker"]
    assert sorted(a for apps in ends.values() for a in apps) == ["reid", "roi", "tracking"]
    by_type = {m["type"]: n for n, m in graph["modules"].items()}
    # the three apps run through one tracker (reid takes tracks), and fan out after it
    assert [graph["modules"][o]["type"] for o in graph["modules"][by_type["detector"]]["outputs"]] == ["tracker"]
    assert sorted(graph["modules"][o]["type"] for o in graph["modules"][by_type["tracker"]]["outputs"]) == ["reid", "roi"]
    assert ends[by_type["tracker"]] == ["tracking"]


def test_scenarios_end_in_a_latency_sink_and_streams_get_their_own_decoder():
    deps = A.scenario(3, "synthetic", 5.0, stream="cam7")
    for d in deps:
        assert d["app"].startswith("cam7-")
        assert d["modules"][A.SINK]["args"] == {"fields": [], "hops": True}
        assert d["modules"]["decoder"]["args"]["source_id"] == "cam7"
        assert not [m for n, m in d["modules"].items() if m["type"] == "publish" and n != A.SINK]
    placed = A.place(deps[2], A.CASE_C, A.SECOND)
    assert {n: m["device"] for n, m in placed["modules"].items()} == {
        "decoder": "dev1", "detector": "dev1", "tracker": "dev2", "roi": "dev2", A.SINK: "dev2"}


@pytest.mark.slow
def test_videopipe_runs_one_frame_at_a_time_and_splits_each_hop():
    from edgeva.bench.paper.videopipe import run_videopipe

    deps = A.scenario(1, "synthetic", 20.0)  # faster than the pipeline: the source must drop
    res = run_videopipe(deps, 5.0)
    done = res["apps"]["reid"]
    assert done and res["offered"] > len(done), (res["offered"], len(done))
    hops = {(h["from"].rsplit("-", 1)[0], h["to"].rsplit("-", 1)[0]) for h in res["hops"]}
    assert hops == {("decoder", "detector"), ("detector", "tracker"), ("tracker", "reid")}
    assert all(h["serialise_ms"] > 0 and h["network_ms"] >= 0 and h["deserialise_ms"] > 0 for h in res["hops"])


@pytest.mark.slow
def test_monolith_runs_each_app_in_its_own_process():
    from edgeva.bench.paper.monolith import run_monolith

    res = run_monolith(A.scenario(2, "synthetic", 5.0), 5.0)
    assert len(res) == 2 and all("series" in r and r["series"] and r["offered"] > 0 for r in res), res


def test_single_device_cases_detect_every_frame_and_the_demo_tuning_every_second():
    # The paper's claim (the monolith's duplicate detection) needs its workload; the camera
    # counts and the two-device cases run the demo's args: both must reach the deployments.
    paper = A.scenario(3, "synthetic", 10.0)
    demo = A.scenario(3, "synthetic", 10.0, tuning=A.DEMO)
    assert all(d["modules"]["detector"]["args"].get("interval", 1) == 1 for d in paper)
    assert all(d["modules"]["detector"]["args"]["interval"] == 2 for d in demo)


def test_max_streams_skips_the_probes_it_knows_and_stops_at_the_first_failure():
    from edgeva.bench.paper.run import _max_streams

    tried: list[int] = []

    def sustains(n: int) -> bool:
        tried.append(n)
        return n < 3

    n, probes = _max_streams(sustains, print, known={1: True})
    assert (n, probes, tried) == (2, {1: True, 2: True, 3: False}, [2, 3])


def test_agents_record_each_devices_link_metrics_and_the_arrays_each_stream_carried():
    """Device metrics (``edgeva/v1/{device}/metrics``) feed the link timings, the modules' figures
    (while recording) and which arrays crossed; a tenant's metrics topic does not."""
    import json
    import shutil
    from types import SimpleNamespace

    from edgeva.bench.paper.agents import Agents
    from edgeva.bench.paper.run import _split_edgeva

    ag = Agents({"dev1": None})
    try:
        link = {"serialise_ms": {"p50": 0.2}, "arrays": {"detector-1a2b": [], "decoder-9f": ["frame"]}}
        dm = {"links": {"dev2": link}, "modules": {"detector-1a2b": {"frames_in": 3}}}
        ag._on(None, None, SimpleNamespace(topic="edgeva/v1/dev1/default/metrics", payload=json.dumps({"apps": {}})))
        assert ag.links == {}
        ag._on(None, None, SimpleNamespace(topic="edgeva/v1/dev1/metrics", payload=json.dumps(dm)))
        assert ag.links == {} and ag.modules == {} and ag.arrays == {}  # not recording: the apps may be going
        ag.recording = True
        ag._on(None, None, SimpleNamespace(topic="edgeva/v1/dev1/metrics", payload=json.dumps(dm)))
        assert ag.links == {"dev1": dm["links"]} and ag.modules == {"dev1": dm["modules"]}
        assert ag.arrays == {"dev1": {"dev2": {"detector": [], "decoder": ["frame"]}}}
    finally:
        shutil.rmtree(ag.tmp, ignore_errors=True)
    hops = _split_edgeva({"decoder->detector": 1.0, "detector->tracker": 2.0}, ("decoder", "detector", "tracker"),
                         link, {"deserialise_ms": {"p50": 0.3}}, ag.arrays["dev1"]["dev2"])
    assert hops[1] == {"hop": "detector->tracker", "kind": "link", "total_ms": 2.0, "serialise_ms": 0.2,
                       "deserialise_ms": 0.3, "network_ms": 1.5, "arrays": []}
    assert "arrays" not in hops[0]
