"""``edgeva bench paper``: every experiment of the paper's section 5, one command.

Cases (each with 1, 2 and 3 apps: reid, + SORT tracking, + RoI):
- ``A``: the monolith, one process per app, nothing shared (``monolith.py``);
- ``B``: edgeva, one agent, modules shared;
- ``C``: edgeva, two agents each held to its own CPU, decode+detect on the first (15 fps input);
- ``videopipe``: VideoPipe as the paper emulated it, placed on the same two CPUs (15 fps input);
- ``edgeeye``: EdgeEye's placement as a plain deployment (3 apps).
Then the largest number of cameras A and B each sustain, the per-hop overhead along a
four-module pipeline across two agents (edgeva vs VideoPipe), the paper's Table 2, and with
``--scalability`` 2 to 5 agents. Writes the JSON, plots and a Markdown report.

Workload: CASE A and B run the paper's (detection on every frame of every pipeline, where the
monolith's duplicate work shows); the two-device cases and the camera counts run the demo's
tuning (detection on every 2nd frame), the same args in every system compared.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeva.bench.out import write_json
from edgeva.bench.paper import apps as A
from edgeva.bench.paper.stats import summarize

FPS_B, FPS_C = 10.0, 15.0  # the clip's rate; the paper's input rate for its distributed runs
SPLIT_CPUS = {"dev1": [0], "dev2": [1]}
VP_PLACEMENT = {"decoder": [0], "detector": [0], "*": [1]}  # the same split as CASE C


def _case(per_app: dict[str, dict]) -> dict:
    """A case's row: its slowest app (as the paper plots), plus every app."""
    rows = list(per_app.values())
    if not rows:
        return {"fps": 0.0, "latency_ms": {"p50": None, "p95": None}, "dropped_ratio": 1.0, "lagging": True,
                "apps": {}}
    worst = max(rows, key=lambda r: (r["latency_ms"]["p95"] or 1e9))
    return {"fps": min(r["fps"] for r in rows), "latency_ms": worst["latency_ms"],
            "dropped_ratio": max(r["dropped_ratio"] for r in rows), "lagging": any(r["lagging"] for r in rows),
            "apps": per_app}


def _edgeva_rows(events: dict[str, list], deps: list[dict], fps: float, seconds: float) -> dict[str, dict]:
    rows = {}
    for d in deps:
        series = [(t, lat) for t, lat, _ in events.get(d["app"], [])]
        r = summarize(series, int(fps * seconds), seconds)
        r["lagging"] = r["lagging"] or r["fps"] < 0.9 * fps  # back-pressure: the source fell behind
        rows[d["app"]] = r
    return rows


def _inproc_rows(series_by_app: dict[str, list], offered: int, fps: float, seconds: float) -> dict[str, dict]:
    rows = {}
    for app, series in series_by_app.items():
        r = summarize(series, int(fps * seconds), seconds)
        r["offered_by_source"] = offered
        r["lagging"] = r["lagging"] or r["fps"] < 0.9 * fps
        rows[app] = r
    return rows


def _bound_fps(modules: dict[str, dict], fps: float) -> float | None:
    """Pipelining bound of a two-device split: 1 / the busiest device's time per frame (the
    sum of its modules' p50 processing times: they share its CPU)."""
    per_dev = [sum((m.get("proc_ms") or {}).get("p50") or 0.0 for m in mods.values()) for mods in modules.values()]
    per_dev = [x for x in per_dev if x > 0]
    return round(min(fps, 1000.0 / max(per_dev)), 2) if per_dev else None


def _gaps(events: list, path: tuple[str, ...]) -> dict[str, float]:
    """Median gap between one module's t_out and the next one's t_in, per hop of ``path``."""
    gaps: dict[str, list[float]] = {}
    for _t, _lat, hops in events:
        at = {h[0].rsplit("-", 1)[0]: h for h in hops or []}  # instance "tracker-1a2b..." -> "tracker"
        for a, b in zip(path, path[1:], strict=False):
            if a in at and b in at:
                gaps.setdefault(f"{a}->{b}", []).append((at[b][1] - at[a][2]) / 1e6)
    return {k: round(statistics.median(v), 3) for k, v in gaps.items()}


def run_paper(quick: bool, video: str | None, json_path: str | None, out_dir: str, scalability: bool,
              say: Callable[[str], None] = print) -> dict:
    from edgeva.bench.paper.agents import Agents
    from edgeva.bench.paper.monolith import run_monolith
    from edgeva.bench.paper.report import write_plots, write_report
    from edgeva.bench.paper.table2 import run_table2
    from edgeva.bench.paper.videopipe import merge, run_videopipe
    from edgeva.control.demo.apps import CLIP

    src = video or CLIP
    secs = 10.0 if quick else 60.0
    probe_secs = 8.0 if quick else 30.0  # each max-streams probe: an overload shows within seconds
    t_start = time.monotonic()
    cases: dict[str, dict] = {"A": {}, "B": {}, "C": {}, "videopipe": {}, "edgeeye": {}}
    series: dict[str, dict] = {c: {} for c in cases}  # for the plots: case -> apps_k -> app -> [(t, ms)]
    steps = 18 + (4 if scalability else 0)
    done = [0]

    def step(text: str) -> None:
        done[0] += 1
        say(f"[{done[0]:2d}/{steps}] {time.monotonic() - t_start:6.0f} s  {text}")

    for k in (1, 2, 3):
        deps = A.scenario(k, src, FPS_B)
        res = run_monolith(deps, secs)
        per = {d["app"]: res[i] for i, d in enumerate(deps)}
        rows = {}
        for app, r in per.items():
            if "series" not in r:
                raise RuntimeError(f"CASE A {app}: {r.get('error')}")
            rows[app] = summarize(r["series"], int(FPS_B * secs), secs)
            rows[app]["lagging"] = rows[app]["lagging"] or rows[app]["fps"] < 0.9 * FPS_B
            series["A"].setdefault(f"apps_{k}", {})[app] = r["series"]
        cases["A"][f"apps_{k}"] = _case(rows)
        step(f"CASE A, {k} app(s): {_line(cases['A'][f'apps_{k}'])}")

    with Agents({"dev1": None}) as ag:
        for k in (1, 2, 3):
            deps = A.scenario(k, src, FPS_B)
            ev = ag.run(deps, secs)
            cases["B"][f"apps_{k}"] = _case(_edgeva_rows(ev, deps, FPS_B, secs))
            series["B"][f"apps_{k}"] = {a: [(t, lat) for t, lat, _ in v] for a, v in ev.items()}
            step(f"CASE B, {k} app(s): {_line(cases['B'][f'apps_{k}'])}")
        # Cameras at the demo's tuning (the product as shipped). It costs less per camera than
        # the paper's workload above, so one camera that held there holds here: not re-probed.
        known = {1: True} if not cases["B"]["apps_3"]["lagging"] else {}
        max_b, probes_b = _max_streams(lambda n: _b_streams(ag, src, n, probe_secs), say, known=known)
    step(f"max streams, CASE B: {max_b} ({probes_b})")
    max_a, probes_a = _max_streams(lambda n: _a_streams(src, n, probe_secs), say, limit=max_b + 1)
    step(f"max streams, CASE A: {max_a} ({probes_a})")

    overhead: dict[str, Any] = {}
    with Agents(SPLIT_CPUS, data=True) as ag:
        for k in (1, 2, 3):
            deps = [A.place(d, A.CASE_C, A.SECOND) for d in A.scenario(k, src, FPS_C, tuning=A.DEMO)]
            ev = ag.run(deps, secs)
            row = _case(_edgeva_rows(ev, deps, FPS_C, secs))
            row["bound_fps"] = _bound_fps(ag.modules, FPS_C)
            row["links"] = {d: {p: {**{x: (v.get(x) or {}).get("p50") for x in ("serialise_ms", "network_ms", "deserialise_ms")},
                                    "arrays": ag.arrays.get(d, {}).get(p, {})}
                                for p, v in links.items()} for d, links in ag.links.items()}
            cases["C"][f"apps_{k}"] = row
            series["C"][f"apps_{k}"] = {a: [(t, lat) for t, lat, _ in v] for a, v in ev.items()}
            step(f"CASE C, {k} app(s): {_line(row)}, pipelining bound {row['bound_fps']} fps")
        deps = [A.place(d, A.EDGEEYE, A.FIRST) for d in A.scenario(3, src, FPS_C, tuning=A.DEMO)]
        ev = ag.run(deps, secs)
        cases["edgeeye"]["apps_3"] = _case(_edgeva_rows(ev, deps, FPS_C, secs))
        step(f"EdgeEye placement, 3 apps: {_line(cases['edgeeye']['apps_3'])}")
        roi = A.place(A.scenario(3, src, 5.0, tuning=A.DEMO)[2], A.CASE_C, A.SECOND)
        path = A.terminal_sources(roi)
        ev = ag.run([roi], secs / 2)
        gaps = _gaps(ev.get(roi["app"], []), path)
        link = ag.links.get("dev1", {}).get("dev2", {})
        recv = ag.links.get("dev2", {}).get("dev1", {})
        overhead["edgeva_hops"] = _split_edgeva(gaps, path, link, recv, ag.arrays.get("dev1", {}).get("dev2", {}))
    step(f"overhead, edgeva (4 modules over 2 agents): {overhead['edgeva_hops']}")

    for k in (1, 2, 3):
        deps = A.scenario(k, src, FPS_C, tuning=A.DEMO)
        vp = run_videopipe(deps, secs, VP_PLACEMENT)
        cases["videopipe"][f"apps_{k}"] = _case(_inproc_rows(vp["apps"], vp["offered"], FPS_C, secs))
        series["videopipe"][f"apps_{k}"] = vp["apps"]
        step(f"VideoPipe, {k} app(s): {_line(cases['videopipe'][f'apps_{k}'])}")
    vp = run_videopipe([A.scenario(3, src, 5.0, tuning=A.DEMO)[2]], secs / 2, VP_PLACEMENT)
    graph, _ = merge([A.scenario(3, src, 5.0, tuning=A.DEMO)[2]])
    overhead["videopipe_hops"] = _split_videopipe(vp["hops"], graph)
    step(f"overhead, VideoPipe: {overhead['videopipe_hops']}")

    table2 = run_table2(4.0 if quick else 20.0, say=lambda s: None)
    step("Table 2: " + "; ".join(f"{row}: " + ", ".join(f"{m} {v.get('ips')} inf/s" for m, v in r.items())
                                 for row, r in table2.items()))
    scal = _scalability(src, secs, step) if scalability else None

    result = {
        "cases": cases,
        "max_streams": {"A": max_a, "B": max_b, "probes": {"A": probes_a, "B": probes_b}},
        "overhead_ms": {
            "edgeva": round(sum(h["total_ms"] for h in overhead["edgeva_hops"]), 3),
            "videopipe": round(sum(h["total_ms"] for h in overhead["videopipe_hops"]), 3),
            "per_hop": overhead,
        },
        "table2": table2,
        "scalability": scal,
        "settings": {"quick": quick, "seconds_per_run": secs, "seconds_per_probe": probe_secs,
                     "tuning": {"single_device": vars(A.PAPER), "max_streams": vars(A.DEMO),
                                "two_devices": vars(A.DEMO)},
                     "max_streams_B_1_from_case_B": bool(known), "source": src, "fps_single_device": FPS_B,
                     "fps_distributed": FPS_C, "split_cpus": SPLIT_CPUS, "videopipe_cpus": VP_PLACEMENT},
        "machine": {"cpus": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
                    "processor": platform.processor() or platform.machine()},
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }
    result["checks"] = _checks(result)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result["plots"] = write_plots(result, series, out)
    result["report"] = str(write_report(result, out / "paper_report.md"))
    if json_path:
        write_json(json_path, result)
    return result


def _line(row: dict) -> str:
    lat = row["latency_ms"]
    return (f"{row['fps']:5.2f} fps, p50 {lat['p50']} ms, p95 {lat['p95']} ms, "
            f"dropped {row['dropped_ratio']:.0%}{', LAGGING' if row['lagging'] else ''}")


def _b_streams(ag: Any, src: str, n: int, secs: float) -> bool:
    deps = [d for i in range(n) for d in A.scenario(3, src, FPS_B, stream=f"cam{i}", tuning=A.DEMO)]
    rows = _edgeva_rows(ag.run(deps, secs), deps, FPS_B, secs)
    return not any(r["lagging"] for r in rows.values())


def _a_streams(src: str, n: int, secs: float) -> bool:
    from edgeva.bench.paper.monolith import run_monolith

    deps = [d for i in range(n) for d in A.scenario(3, src, FPS_B, stream=f"cam{i}", tuning=A.DEMO)]
    res = run_monolith(deps, secs)
    for r in res:
        if "series" not in r:
            return False
        s = summarize(r["series"], int(FPS_B * secs), secs)
        if s["lagging"] or s["fps"] < 0.9 * FPS_B:
            return False
    return True


def _max_streams(sustains: Callable[[int], bool], say: Callable[[str], None], limit: int = 8,
                 known: dict[int, bool] | None = None) -> tuple[int, dict]:
    """The largest number of cameras (each with the three apps) that runs without lag;
    ``known``: probes already answered (not run again)."""
    probes: dict[int, bool] = {}
    n = 0
    while n < limit:
        ok = (known or {}).get(n + 1)
        if ok is None:
            ok = sustains(n + 1)
        probes[n + 1] = ok
        if not ok:
            break
        n += 1
    return n, probes


def _split_edgeva(gaps: dict[str, float], path: tuple[str, ...], link: dict, recv: dict,
                  arrays: dict[str, list[str]] | None = None) -> list[dict]:
    """Each hop's overhead; the one that crosses devices split with the links' own timings, and
    the arrays that crossed it (``arrays``: module type -> the arrays its stream carried)."""
    hops = []
    for a, b in zip(path, path[1:], strict=False):
        total = gaps.get(f"{a}->{b}")
        if total is None:
            continue
        if a == "detector":  # the hop that crosses devices (decode+detect | the rest)
            ser = (link.get("serialise_ms") or {}).get("p50") or 0.0
            deser = (recv.get("deserialise_ms") or {}).get("p50") or 0.0
            hops.append({"hop": f"{a}->{b}", "kind": "link", "total_ms": total, "serialise_ms": ser,
                         "deserialise_ms": deser, "network_ms": round(max(0.0, total - ser - deser), 3),
                         "arrays": (arrays or {}).get(a, [])})
        else:
            hops.append({"hop": f"{a}->{b}", "kind": "ring", "total_ms": total, "serialise_ms": 0.0,
                         "deserialise_ms": 0.0, "network_ms": 0.0, "runtime_ms": total})
    return hops


def _split_videopipe(records: list[dict], graph: dict) -> list[dict]:
    by: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        by.setdefault((r["from"], r["to"]), []).append(r)
    hops = []
    for (a, b), rs in by.items():
        med = {k: round(statistics.median(r[k] for r in rs), 3) for k in ("serialise_ms", "network_ms", "deserialise_ms")}
        hops.append({"hop": f"{a.rsplit('-', 1)[0]}->{b.rsplit('-', 1)[0]}", "kind": "http",
                     "total_ms": round(sum(med.values()), 3), **med})
    order = {n.rsplit("-", 1)[0]: i for i, n in enumerate(graph["modules"])}
    return sorted(hops, key=lambda h: order.get(h["hop"].split("->")[0], 0))


def _scalability(src: str, secs: float, step: Callable[[str], None]) -> dict:
    """2 to 5 agents, one camera each, dual app (reid + tracking) at 3 fps: each camera's
    decoder and detector on its own agent, its app logic on the next agent."""
    from edgeva.bench.paper.agents import Agents

    out = {}
    for n in range(2, 6):
        devs = {f"dev{i + 1}": None for i in range(n)}
        names = list(devs)
        with Agents(devs, data=True) as ag:
            deps = []
            for i in range(n):
                for d in A.scenario(2, src, 3.0, stream=f"cam{i}", tuning=A.DEMO):
                    split = {"decoder": names[i], "detector": names[i]}
                    deps.append(A.place(d, split, names[(i + 1) % n]))
            rows = _edgeva_rows(ag.run(deps, secs), deps, 3.0, secs)
        slowest = max(rows.values(), key=lambda r: r["latency_ms"]["p50"] or 0)
        out[str(n)] = {"slowest_app_latency_ms": slowest["latency_ms"], "fps": slowest["fps"],
                       "lagging": any(r["lagging"] for r in rows.values())}
        step(f"scalability, {n} agents: slowest app p50 {slowest['latency_ms']['p50']} ms")
    return out


def _checks(r: dict) -> dict:
    """The issue's claims, each true or false on this run."""
    c = r["cases"]
    b3, a3 = c["B"]["apps_3"], c["A"]["apps_3"]
    ma, mb = r["max_streams"]["A"], r["max_streams"]["B"]
    c3, vp3 = c["C"]["apps_3"], c["videopipe"]["apps_3"]
    bound = c3.get("bound_fps")
    return {
        "B_holds_3_apps": not b3["lagging"],
        "A_lags_or_drops_3_apps": a3["lagging"] or a3["dropped_ratio"] > 0.05,
        "max_streams_B_over_A": round(mb / ma, 2) if ma else (float("inf") if mb else 0.0),
        "max_streams_ratio_ok": mb >= 2.5 * ma and mb > 0,
        "C_fps_over_bound": round(c3["fps"] / bound, 3) if bound else None,
        "C_at_least_90pct_of_bound": bool(bound) and c3["fps"] >= 0.9 * bound,
        "C_over_videopipe_fps": round(c3["fps"] / vp3["fps"], 2) if vp3["fps"] else None,
        "C_median_latency_below_videopipe": (c3["latency_ms"]["p50"] or 1e9) < (vp3["latency_ms"]["p50"] or 0),
        "overhead_edgeva_over_videopipe": round(r["overhead_ms"]["edgeva"] / r["overhead_ms"]["videopipe"], 3)
        if r["overhead_ms"]["videopipe"] else None,
        "overhead_at_most_quarter": r["overhead_ms"]["edgeva"] <= 0.25 * r["overhead_ms"]["videopipe"],
    }
